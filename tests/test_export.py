"""`odk export` of a ResNet-18 with ODK stages 3-4: every format, reloaded and compared.

The model is trained here for a few steps on random data, so its ODK weights and batch-norm
statistics are no longer at their initial values when the export merges them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import odk
from odk.checkpoint import load_model, save_model
from odk.cli import main
from odk.data import normalize
from odk.errors import OdkError
from odk.export import export_model

CLASSES = [f"class_{i}" for i in range(6)]
ARCH = {"baseline_name": "resnet18", "num_classes": 6, "odk_layers": (3, 4), "num_matrices": 1}
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model file of a ResNet-18 (ODK stages 3 and 4) after one Adam step on noise."""
    torch.manual_seed(0)
    model = odk.build_model(**ARCH)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(8) % len(CLASSES)
    loss = F.cross_entropy(model(normalize(images, MEAN, STD)), labels)
    loss.backward()
    optimizer.step()  # moves the orthogonal blocks and batch-norm statistics off their init
    path = tmp_path_factory.mktemp("model") / "odk.ckpt"
    return save_model(path, model.eval(), ARCH, CLASSES, MEAN, STD)


@pytest.fixture(scope="module")
def expected(model_file: Path) -> list[tuple[torch.Tensor, np.ndarray]]:
    """Random pixels in [0, 1] (batches of 1 and 7) and the checkpoint's logits for them."""
    model, meta = load_model(model_file)
    assert any(isinstance(m, odk.ODKConv2d) for m in model.modules())  # there is work to do
    mean = torch.tensor(meta["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(meta["std"]).view(1, 3, 1, 1)
    inputs = [torch.rand(batch, 3, 32, 32) for batch in (1, 7)]  # the batch axis is dynamic
    with torch.no_grad():
        return [(x, model((x - mean) / std).numpy()) for x in inputs]


def _run_torchscript(path: Path) -> tuple[callable, list[str]]:
    extra = {"odk.json": ""}
    module = torch.jit.load(str(path), _extra_files=extra)
    assert not any(m.original_name == "ODKConv2d" for m in module.modules())
    kinds = {node.kind() for node in module.inlined_graph.nodes()}
    assert not {k for k in kinds if "matrix_exp" in k or "linalg" in k or "triu" in k}
    return (lambda x: module(x).detach().numpy()), json.loads(extra["odk.json"])["classes"]


def _run_onnx(path: Path) -> tuple[callable, list[str]]:
    proto = onnx.load(str(path))
    initializers = {i.name for i in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(convs) == 20  # ResNet-18: stem, 16 block convs, 3 downsamples
    assert all(n.input[1] in initializers for n in convs)  # constant weights: no map left
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    classes = json.loads({p.key: p.value for p in proto.metadata_props}["odk"])["classes"]
    return (lambda x: session.run(None, {"images": x.numpy()})[0]), classes


def _run_pt2(path: Path) -> tuple[callable, list[str]]:
    extra = {"odk.json": ""}
    program = torch.export.load(path, extra_files=extra)
    convs = [n for n in program.graph.nodes if str(n.target) == "aten.conv2d.default"]
    assert len(convs) == 20  # ResNet-18: stem, 16 block convs, 3 downsamples
    parameters = program.graph_signature.inputs_to_parameters
    assert all(n.args[1].name in parameters for n in convs)  # stored weights: no map left
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not {t for t in targets if "linalg" in t or "triu" in t or "solve" in t}
    module = program.module()
    return (lambda x: module(x).detach().numpy()), json.loads(extra["odk.json"])["classes"]


RUNNERS = {"pt2": _run_pt2, "torchscript": _run_torchscript, "onnx": _run_onnx}


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", ["pt2", "torchscript", "onnx"])
def test_export_matches_the_checkpoint(
    model_file: Path,
    expected: list[tuple[torch.Tensor, np.ndarray]],
    tmp_path: Path,
    fmt: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "deploy" / f"model.{fmt}"
    assert main(["export", "--model", str(model_file), "--format", fmt, "-o", str(out)]) == 0
    assert "8 ODK convs merged" in capsys.readouterr().out  # stages 3-4: 2 blocks x 2 convs each
    run, classes = RUNNERS[fmt](out)
    assert classes == CLASSES
    for x, logits in expected:
        np.testing.assert_allclose(run(x), logits, atol=1e-4, rtol=0)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left


def test_failed_check_keeps_the_old_file(
    model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bad_merge(model: nn.Module) -> nn.Module:
        merged = odk.merge_odk_convs(model)
        with torch.no_grad():
            merged.fc.bias.add_(1e-3)  # a merge that is slightly wrong
        return merged

    monkeypatch.setattr("odk.export.merge_odk_convs", bad_merge)
    out = tmp_path / "model.pt"
    out.write_text("previous export")
    with pytest.raises(OdkError, match=r"differs from .* by 0\.001\d* \(allowed 0\.0001\)"):
        export_model(model_file, "torchscript", out)
    assert out.read_text() == "previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_unknown_format_is_refused(model_file: Path, tmp_path: Path) -> None:
    with pytest.raises(OdkError, match="format 'tflite' is not allowed; allowed: pt2, onnx, torch"):
        export_model(model_file, "tflite", tmp_path / "model.tflite")


@pytest.mark.parametrize("link", [False, True])
def test_export_onto_the_model_file_is_refused(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], link: bool
) -> None:
    model = tmp_path / "odk.ckpt"
    model.write_bytes(model_file.read_bytes())
    out = model
    if link:  # the same file under another name
        out = tmp_path / "alias.ckpt"
        out.symlink_to(model)
    before = model.read_bytes()
    assert main(["export", "--model", str(model), "--format", "onnx", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: -o {out} is the model file itself (--model); choose another file\n"
    assert model.read_bytes() == before


def _under_a_file(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "notes.txt").write_text("a file")
    out = tmp_path / "notes.txt" / "deploy" / "model.onnx"
    return out, f"error: cannot write {out}: {tmp_path / 'notes.txt'} is a file, not a folder\n"


def _onto_a_folder(tmp_path: Path) -> tuple[Path, str]:
    out = tmp_path / "deploy"
    out.mkdir()
    return out, f"error: -o {out} is a folder; give a file name, e.g. {out / 'model.onnx'}\n"


def _into_sys(tmp_path: Path) -> tuple[Path, str]:
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys here")
    out = Path("/sys/kernel/odk-export.onnx")
    return out, f"error: cannot write {out}: "


@pytest.mark.parametrize("where", [_under_a_file, _onto_a_folder, _into_sys])
def test_unwritable_outputs_are_refused_in_one_line(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where
) -> None:
    out, expected = where(tmp_path)
    assert main(["export", "--model", str(model_file), "--format", "onnx", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1
    assert not out.is_file()
