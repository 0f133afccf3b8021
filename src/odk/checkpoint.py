"""Model files: the trained weights plus what is needed to rebuild the network, nothing else.

A model file (`models/baseline.ckpt`, `models/odk.ckpt`) is a `torch.save`d dict of tensors and
plain values, so it loads with `weights_only=True` (nothing is unpickled but tensors and
builtins). It holds no optimizer state: the ODK file stays as small as the parameter saving
makes it. Lightning's full training checkpoints (for resuming) live elsewhere.
"""

from __future__ import annotations

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
    """`torch.save` to a temporary sibling of `path`, then rename it into place."""
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


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
            f"{path} is not a readable odk model file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise OdkError(
            f"{path} is not an odk model file (expected format {FORMAT!r}; "
            "Lightning training checkpoints and plain state_dicts are not accepted)"
        )
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise OdkError(f"{path} is an incomplete odk model file: missing {', '.join(missing)}")
    if payload["version"] > VERSION:
        raise OdkError(
            f"{path} has model-file version {payload['version']}; this odk reads up to {VERSION}"
        )
    return payload


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network stored in a model file, in eval mode on the CPU.

    Returns:
        The model and the file's metadata (`arch`, `classes`, `mean`, `std`, `extra`).
    """
    payload = read_model_file(path)
    model = build_model(**payload["arch"])
    try:
        model.load_state_dict(payload.pop("state_dict"))
    except RuntimeError as exc:
        raise OdkError(f"{path} does not match its own architecture: {exc}") from None
    return model.eval(), payload
