"""The `odk` command line: help, usage errors, and model files it must refuse.

None of these tests needs a trained model: a bad model file is refused before any work.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from odk.cli import main


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "classify image files and folders"),
        (["predict"], "--json"),
        (["export"], "--format {pt2,onnx,torchscript}"),
        (["report"], "--repo PATH"),
    ],
)
def test_every_command_has_help(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: odk {' '.join(argv)}".rstrip()) and expected in out


def test_python_m_odk_is_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "odk", "export", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("usage: odk export")


def test_console_script_is_declared() -> None:
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("odk") == "odk.cli:main"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["train"],
        ["predict"],
        ["predict", "--batch-size", "0", "x.png"],
        ["export", "--format", "tflite", "-o", "m.tflite"],
        ["export", "--format", "onnx"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "usage: odk" in captured.err


def _write_bad_model(path: Path, kind: str) -> None:
    weights = {"conv.weight": torch.zeros(4, 3, 3, 3)}
    if kind == "state_dict":
        torch.save(weights, path)
    elif kind == "lightning":
        torch.save({"state_dict": weights, "epoch": 3, "pytorch-lightning_version": "2.5"}, path)
    elif kind == "text":
        path.write_text("not a checkpoint")


@pytest.mark.parametrize("command", ["predict", "export"])
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "does not exist"),
        ("state_dict", "is not an odk model file"),
        ("lightning", "Lightning training checkpoints and plain state_dicts are not accepted"),
        ("text", "is not a readable odk model file"),
    ],
)
def test_bad_model_files_are_refused(
    tmp_path: Path, command: str, kind: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model.ckpt"
    _write_bad_model(model, kind)
    exported = tmp_path / "out.onnx"
    args = {"predict": [str(tmp_path)], "export": ["--format", "onnx", "-o", str(exported)]}
    assert main([command, "--model", str(model), *args[command]]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and str(model) in err
    assert message in err and len(err.splitlines()) == 1  # one line, no traceback
    assert not exported.exists()


def test_the_default_model_is_the_pipelines_odk_model_of_the_default_seed() -> None:
    from odk.cli import DEFAULT_MODEL
    from odk.config import load_config
    from odk.stages import Run

    params = Path(__file__).resolve().parents[1] / "params.yaml"
    assert Path(DEFAULT_MODEL) == Run("odk", load_config([], params).seeds[0]).model
