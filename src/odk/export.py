"""`odk export`: a model file as a torch.export program, ONNX or TorchScript, without ODK parts.

Formats: `pt2` (`torch.export`, PyTorch's current way to save a model for inference; load it
with `torch.export.load(path).module()`), `onnx` (onnxruntime and other runtimes) and
`torchscript` (legacy: PyTorch deprecates `torch.jit`; kept while PyTorch still runs it).

Every ODK conv is merged into the plain `nn.Conv2d` it computes (`merge_odk_convs`), so the
exported graph holds constant conv weights and no orthogonal map. The normalization stored in
the model file is baked in: the exported model takes RGB pixels in [0, 1], shape
(B, 3, 32, 32), and returns logits (B, num_classes). The file is checked before it replaces
the destination: outputs within `atol` of the checkpoint's, every conv weight a constant. An
output path that is the model file, a folder, or cannot be written is refused in one line.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from odk.atomic import atomic_file
from odk.checkpoint import load_model
from odk.cifar import IMAGE_SIZE
from odk.errors import OdkError
from odk.layers import ODKConv2d, merge_odk_convs

FORMATS = ("pt2", "onnx", "torchscript")
ATOL = 1e-4
_CONV_OPS = {"aten::conv2d", "aten::_convolution"}
_EXPORT_CONV_OPS = ("aten.conv2d.default", "aten.convolution.default")
_INPUT_DOC = f"float32 RGB pixels in [0, 1], shape (B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}); out: logits"


class Normalized(nn.Module):
    """A network preceded by its input normalization: takes pixels in [0, 1]."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1]
        return self.net((x - self.mean) / self.std)


def export_model(
    model_path: str | Path, fmt: str, out: str | Path, atol: float = ATOL, seed: int = 0
) -> dict[str, Any]:
    """Export a model file, verify the result, and move it atomically to `out`.

    Args:
        model_path: An odk model file (`models/odk/seed42.ckpt`).
        fmt: `pt2`, `onnx` or `torchscript`.
        out: Destination file.
        atol: Largest absolute logit difference allowed against the checkpoint.
        seed: Seed of the random verification inputs.

    Returns:
        A summary: `path`, `format`, `merged_convs`, `max_abs_diff`, `bytes`.

    Raises:
        OdkError: Unknown format, unreadable model file, or a check failed.
    """
    if fmt not in FORMATS:
        raise OdkError(f"export format {fmt!r} is not allowed; allowed: {', '.join(FORMATS)}")
    out = Path(out)
    check_output(out, Path(model_path))  # before the slow part: loading, merging, exporting
    model, meta = load_model(model_path)
    merged_convs = sum(isinstance(m, ODKConv2d) for m in model.modules())
    reference = Normalized(model, meta["mean"], meta["std"]).eval()
    plain = Normalized(merge_odk_convs(model), meta["mean"], meta["std"]).eval()
    leftover = [name for name, m in plain.named_modules() if isinstance(m, ODKConv2d)]
    if leftover:
        raise OdkError(f"merging left ODK modules in the model: {', '.join(leftover)}")
    info = {"classes": list(meta["classes"]), "arch": meta["arch"], "input": _INPUT_DOC}

    try:
        with atomic_file(out) as tmp:
            write = {"pt2": _write_pt2, "onnx": _write_onnx, "torchscript": _write_torchscript}
            run_exported = write[fmt](plain, tmp, info)
            diff = _max_abs_diff(reference, run_exported, seed)
            if not diff <= atol:  # also catches NaN
                raise OdkError(
                    f"exported {fmt} model differs from {model_path} by {diff:.3g} (allowed {atol})"
                )
    except OSError as exc:  # a read-only or special file system, a full disk
        raise OdkError(f"cannot write {out}: {exc.strerror or exc}") from None
    return {
        "path": str(out),
        "format": fmt,
        "merged_convs": merged_convs,
        "max_abs_diff": diff,
        "bytes": out.stat().st_size,
    }


def check_output(out: Path, model_path: Path) -> None:
    """Refuse an output path that cannot take the export; create its missing folders.

    Raises:
        OdkError: `out` is the model file itself, a folder, or lies under a file or where
            folders cannot be created.
    """
    if out.exists() and model_path.exists() and os.path.samefile(out, model_path):
        raise OdkError(f"-o {out} is the model file itself (--model); choose another file")
    if out.is_dir():
        raise OdkError(f"-o {out} is a folder; give a file name, e.g. {out / 'model.onnx'}")
    above = next((p for p in out.parents if p.exists() or p.is_symlink()), None)
    if above is not None and not above.is_dir():
        raise OdkError(f"cannot write {out}: {above} is a file, not a folder")
    probe = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")  # atomic_file's name
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise OdkError(f"cannot write {out}: {exc.strerror or exc}") from None


def _example(batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)


@torch.inference_mode()
def _max_abs_diff(reference: nn.Module, run_exported: Any, seed: int) -> float:
    """Largest logit difference on random images, at a batch size other than the traced one."""
    x = _example(5, seed + 1)
    expected = reference(x)
    got = torch.as_tensor(run_exported(x))
    if got.shape != expected.shape:
        raise OdkError(
            f"exported model returns shape {tuple(got.shape)}, expected {expected.shape}"
        )
    return float((got - expected).abs().max())


def _write_pt2(model: nn.Module, path: Path, info: dict[str, Any]) -> Any:
    """`torch.export` with a dynamic batch, saved with the class names; reloaded and checked."""
    batch = torch.export.Dim.DYNAMIC
    with torch.no_grad():
        program = torch.export.export(model, (_example(2, 0),), dynamic_shapes=({0: batch},))
    torch.export.save(program, path, extra_files={"odk.json": json.dumps(info)})
    loaded = torch.export.load(path)
    _check_program_convs(loaded)
    return loaded.module()


def _check_program_convs(program: Any) -> None:
    """Every conv weight of an exported program is a stored tensor, never computed."""
    from torch.export.graph_signature import InputKind

    stored = {
        spec.arg.name
        for spec in program.graph_signature.input_specs
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
    }
    convs = [
        n
        for n in program.graph.nodes
        if n.op == "call_function" and str(n.target) in _EXPORT_CONV_OPS
    ]
    if not convs:
        raise OdkError("the exported program has no convolution: not the expected network")
    computed = [n.name for n in convs if n.args[1].name not in stored]
    if computed:
        raise OdkError(f"conv weights computed in the exported program: {', '.join(computed)}")


def _write_torchscript(model: nn.Module, path: Path, info: dict[str, Any]) -> Any:
    """Trace, save with the class names as an extra file, reload, check the graph."""
    with torch.no_grad(), warnings.catch_warnings():
        # PyTorch 2.9+ calls TorchScript deprecated (FutureWarning) but still runs it
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        traced = torch.jit.trace(model, _example(2, 0), check_trace=False)  # checked below
        torch.jit.save(traced, str(path), _extra_files={"odk.json": json.dumps(info)})
        loaded = torch.jit.load(str(path), map_location="cpu")
    if any(m.original_name == ODKConv2d.__name__ for m in loaded.modules()):
        raise OdkError("an ODKConv2d module is left in the TorchScript model")
    for node in loaded.inlined_graph.nodes():
        if node.kind() in _CONV_OPS:
            weight = list(node.inputs())[1].node()  # aten conv: (input, weight, bias, ...)
            if weight.kind() not in ("prim::GetAttr", "prim::Constant"):
                raise OdkError(
                    f"a conv weight in the TorchScript graph is computed ({weight.kind()})"
                )
    return loaded


def _write_onnx(model: nn.Module, path: Path, info: dict[str, Any]) -> Any:
    """Export with the torch.export-based exporter (dynamic batch), check, open in onnxruntime."""
    import onnx
    import onnxruntime as ort

    batch = torch.export.Dim.DYNAMIC
    program = torch.onnx.export(
        model,
        (_example(2, 0),),
        dynamo=True,  # the torch.export-based exporter; the TorchScript-based one is deprecated
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        verbose=False,
    )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {"odk": json.dumps(info)})
    onnx.checker.check_model(proto)
    _check_onnx_convs(proto)
    onnx.save(proto, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x.numpy()})[0]


def _check_onnx_convs(proto: Any) -> None:
    """Every Conv's weight is a stored initializer or a Constant, never computed at runtime."""
    graph = proto.graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    if not convs:
        raise OdkError("the ONNX graph has no Conv node: the export is not the expected network")
    computed = [n.name for n in convs if n.input[1] not in constants]
    if computed:
        raise OdkError(f"ONNX conv weights computed at runtime: {', '.join(computed)}")
