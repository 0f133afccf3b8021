"""Start-up: `import odk` is lazy, the torch-free stages never import torch, `--help` exits 0.

No test here times anything: what makes `--help` fast is what is (not) imported, and that is
what they check.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import odk
from odk.cli import main

TORCH_FREE = ("odk", "odk.cli", "odk.stages.download", "odk.stages.split", "odk.stages.compare")
HEAVY = ("torch", "lightning", "sklearn", "matplotlib.pyplot")
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_torch_free_modules_do_not_import_torch(module: str) -> None:
    check = f"import sys, {module}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_public_names_import_on_first_use() -> None:
    code = (
        "import sys, odk; before = 'torch' in sys.modules; layer = odk.ODKConv2d; "
        "print(before, 'torch' in sys.modules, layer.__module__, odk.resnet18.__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["False", "True", "odk.layers", "resnet18"], result.stderr
    assert set(odk.__all__) <= set(dir(odk))
    with pytest.raises(AttributeError, match="no attribute 'ODKConv3d'"):
        _ = odk.ODKConv3d


@pytest.mark.parametrize(
    ("stage", "usage"),
    [
        ("download", "usage: python -m odk.stages.download [KEY=VALUE ...]"),
        ("split", "usage: python -m odk.stages.split [KEY=VALUE ...]"),
        ("train", "usage: python -m odk.stages.train {baseline|odk|matched} [--seed N]"),
        ("evaluate", "usage: python -m odk.stages.evaluate {baseline|odk|matched} [--seed N]"),
        ("compare", "usage: python -m odk.stages.compare [KEY=VALUE ...]"),
    ],
)
@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.filterwarnings("ignore:'odk.stages.\\w+' found in sys.modules")
def test_every_stage_has_help_that_exits_0(
    stage: str,
    usage: str,
    flag: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("sys.argv", [stage, flag])
    try:  # as `python -m odk.stages.<stage> --help`, in this process
        runpy.run_module(f"odk.stages.{stage}", run_name="__main__")
    except SystemExit as exc:
        assert exc.code in (0, None)
    captured = capsys.readouterr()
    assert captured.out.startswith(usage) and captured.err == ""


@pytest.mark.parametrize("command", [[], ["predict"], ["export"], ["report"]])
def test_every_command_help_exits_0(command: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main([*command, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: odk {' '.join(command)}".rstrip())


def test_torch_free_stage_rejects_a_bad_setting_without_torch(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    code = (
        "import sys, runpy; sys.argv = ['compare', 'compare.max_accuracy_drop=2']\n"
        "try:\n    runpy.run_module('odk.stages.compare', run_name='__main__')\n"
        "finally:\n    print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 2 and result.stdout.strip() == "False"
    assert result.stderr.startswith("error: compare.max_accuracy_drop=2.0 is not allowed")
