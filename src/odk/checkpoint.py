"""Model files: the trained weights plus what is needed to rebuild the network, nothing else.

A model file (`models/baseline.ckpt`, `models/odk.ckpt`) is a `torch.save`d dict of tensors and
plain values, so it loads with `weights_only=True` (nothing is unpickled but tensors and
builtins). It holds no optimizer state: the ODK file stays as small as the parameter saving
makes it. Lightning's full training checkpoints (for resuming) live elsewhere. The same model
gives the same bytes, whichever process writes it; an empty, damaged or crafted file (a field
of the wrong type, an unknown architecture argument, fewer class names than outputs, a pickle
that refers to code) is refused with one `OdkError` line before any network is built.
"""

from __future__ import annotations

import inspect
import math
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from odk.atomic import atomic_file
from odk.errors import OdkError
from odk.models import build_model

FORMAT = "odk-model"
VERSION = 1
_REQUIRED = ("format", "version", "arch", "classes", "mean", "std", "state_dict")


def save_model(
    path: str | Path,
    model: nn.Module,
    arch: dict[str, Any],
    classes: list[str],
    mean: list[float],
    std: list[float],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a model file atomically (a temporary file renamed into place).

    Args:
        path: Destination file.
        model: The network whose `state_dict` is stored.
        arch: Keyword arguments of `odk.build_model` (`baseline_name`, `num_classes`,
            `odk_layers`, `num_matrices`, `r`).
        classes: Class names, index-aligned with the model's outputs.
        mean: Per-channel normalization mean (pixels in [0, 1]).
        std: Per-channel normalization std.
        extra: Plain values to keep alongside (e.g. the epoch and validation accuracy).
    """
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": dict(arch),
        "classes": list(classes),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "extra": dict(extra or {}),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    atomic_torch_save(payload, path)
    return path


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save` to a temporary sibling of `path`, then rename it into place.

    Saved through a file object, not a file name: `torch.save` names the zip archive inside
    after the file it is given, and the temporary name holds the PID, so the same settings
    would otherwise give different bytes (and a new md5 for DVC) on every run.
    """
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def read_model_file(path: str | Path) -> dict[str, Any]:
    """Read and check a model file without building the network.

    Raises:
        OdkError: The file is missing, is not an odk model file, or is damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise OdkError(f"model file {path} does not exist (run `dvc repro` or `dvc pull` first)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or damaged files
        raise OdkError(
            f"{path} is not a readable odk model file ({load_error(path, exc)})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise OdkError(
            f"{path} is not an odk model file (expected format {FORMAT!r}; "
            "Lightning training checkpoints and plain state_dicts are not accepted)"
        )
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise OdkError(f"{path} is an incomplete odk model file: missing {', '.join(missing)}")
    version = payload["version"]
    if type(version) is not int or version < 1:
        raise OdkError(f"{path} is a damaged odk model file: version {version!r} is not 1, 2, ...")
    if version > VERSION:
        raise OdkError(f"{path} has model-file version {version}; this odk reads up to {VERSION}")
    problem = _payload_problem(payload)
    if problem:
        raise OdkError(f"{path} is a damaged odk model file: {problem}")
    return payload


def load_error(path: Path, exc: Exception) -> str:
    """Why `torch.load(path, weights_only=True)` failed, in a few words.

    torch's own message for a refused pickle advises loading it with `weights_only=False`,
    which would run whatever code the file holds: that advice is never passed on.
    """
    if path.stat().st_size == 0:
        return "empty file"
    if isinstance(exc, pickle.UnpicklingError):
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            return f"it refers to {found.group(1)}, which could run code; refused"
        return "not a PyTorch file: unreadable contents"
    return f"damaged or truncated? {type(exc).__name__}: {_line(exc).split('. ')[0]}"


def _payload_problem(payload: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a model file, or None."""
    arch, classes = payload["arch"], payload["classes"]
    if not isinstance(arch, dict) or not all(isinstance(k, str) for k in arch):
        return "arch is not a mapping of build_model arguments"
    try:
        bound = inspect.signature(build_model).bind(**arch)
    except TypeError as exc:  # an unknown or missing argument
        return f"arch does not fit build_model ({exc})"
    bound.apply_defaults()
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        return "classes is not a list of class names"
    outputs = bound.arguments.get("num_classes")
    if isinstance(outputs, int) and len(classes) != outputs:
        return f"{len(classes)} class names for a network with {outputs} outputs"
    for key in ("mean", "std"):
        values = payload[key]
        numbers = isinstance(values, list) and all(type(v) in (int, float) for v in values)
        if not numbers or len(values) != 3 or not all(math.isfinite(v) for v in values):
            return f"{key} is not three finite numbers (one per RGB channel)"
    if min(payload["std"]) <= 0:
        return "std holds a value <= 0"
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        return "state_dict is not a mapping of names to tensors"
    if not isinstance(payload.get("extra", {}), dict):
        return "extra is not a mapping"
    return None


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network stored in a model file, in eval mode on the CPU.

    Returns:
        The model and the file's metadata (`arch`, `classes`, `mean`, `std`, `extra`).
    """
    payload = read_model_file(path)
    payload.setdefault("extra", {})
    try:
        model = build_model(**payload["arch"])
    except (OdkError, TypeError, ValueError) as exc:
        raise OdkError(f"{path} is a damaged odk model file: its arch is refused ({exc})") from None
    try:
        model.load_state_dict(payload.pop("state_dict"))
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]  # torch lists every key, one per line
        raise OdkError(f"{path} does not match its own architecture: {detail}") from None
    return model.eval(), payload


def _line(exc: BaseException) -> str:
    """The first line of an exception's message, cut to 200 characters."""
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else "no details"
