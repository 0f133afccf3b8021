"""Checks that need more than a setting's own value: the machine, Lightning, the whole file.

`check_trainer` asks Lightning itself whether the `trainer.*` settings can run here: the
precision and strategy must be names in Lightning's own registries, then it builds, without
starting anything, the `Trainer` they describe; and it adds what Lightning lets through but
this project cannot use: more CPU processes than the machine has cores, and pure float16
weights. Lightning imports torch, so these checks run in the train stage, before any work, and
not with the other settings in `odk.config`, which the torch-free stages load too.

`require_settings` makes params.yaml the single source of every setting: a file that lacks one
is refused instead of silently running on a built-in default.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import typing
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from odk.errors import ConfigError

_CHECKED = ("accelerator", "strategy", "devices", "precision")  # each one adds to the last
_WORKING_PRECISIONS = "32-true, bf16-true, 64-true, 16-mixed, bf16-mixed"


def cpu_count() -> int:
    """CPU cores this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_trainer(trainer: Any) -> None:
    """Refuse trainer settings that cannot run on this machine, before any work starts.

    Args:
        trainer: The `trainer` section of the settings (`accelerator`, `devices`,
            `strategy`, `precision`).

    Raises:
        ConfigError: One line naming the first setting that fails, its value and why.
    """
    check_lightning_names(trainer)
    kwargs: dict[str, Any] = {}
    for name in _CHECKED:  # one more setting at a time, so a failure names its setting
        kwargs[name] = getattr(trainer, name)
        try:
            with _quiet():
                built = _lightning_trainer(**kwargs)
        except Exception as exc:  # Lightning raises several types, each with a clear text
            raise ConfigError(_refusal(name, kwargs[name], exc)) from None
    _check_resolved(built, trainer)


def check_lightning_names(trainer: Any) -> None:
    """Refuse a `trainer.precision` or `trainer.strategy` that Lightning does not know.

    The names come from Lightning's registries (the precision literals its `Trainer` accepts,
    its `StrategyRegistry`), so they follow the installed version.

    Raises:
        ConfigError: `setting=value is not allowed; allowed: ...`, in one line.
    """
    from lightning.fabric.connector import _PRECISION_INPUT
    from lightning.fabric.plugins.precision import Precision
    from lightning.pytorch.strategies import StrategyRegistry

    literals = [
        v for literal in typing.get_args(_PRECISION_INPUT) for v in typing.get_args(literal)
    ]
    # Lightning's default, its other names, then the aliases; 16 (an int) and "16" are one here
    literals.sort(key=lambda v: not isinstance(v, str))
    precisions = list(dict.fromkeys(str(p) for p in [Precision.precision, *literals]))
    strategies = ["auto", *StrategyRegistry.available_strategies()]
    for name, value, allowed in [
        ("precision", trainer.precision, precisions),
        ("strategy", trainer.strategy, strategies),
    ]:
        if str(value) not in allowed:
            shown = [a for a in allowed if a != "16-true"]  # known to Lightning, refused below
            why = f"is not allowed; allowed: {', '.join(shown)}"
            raise ConfigError(f"trainer.{name}={value} {why}")


def _lightning_trainer(**kwargs: Any) -> Any:
    import lightning.pytorch as pl

    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, **kwargs)


@contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's device summary and warnings are printed again by the real Trainer."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [log.level for log in loggers]
    try:
        for log in loggers:
            log.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _refusal(name: str, value: Any, exc: Exception) -> str:
    """The one line for a setting Lightning refused."""
    if name == "accelerator":
        allowed = ", ".join(_available_accelerators())
        return (
            f"trainer.accelerator={value} is not available on this machine; allowed here: "
            + allowed
        )
    why = " ".join(str(exc).split())[:300].rstrip(".") or type(exc).__name__
    extra = f"; allowed here: auto or 1..{cpu_count()}" if "CPUAccelerator" in why else ""
    shown = json.dumps(value, separators=(",", ":")) if isinstance(value, list) else value
    return f"trainer.{name}={shown} cannot run here: {why}{extra}"


def _available_accelerators() -> list[str]:
    """`auto` plus every accelerator Lightning finds usable here (`gpu` with CUDA or MPS)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    found = []
    for name in sorted(AcceleratorRegistry.available_accelerators()):
        try:
            if AcceleratorRegistry[name]["accelerator"].is_available():
                found.append(name)
        except Exception:  # e.g. the TPU check imports torch_xla  # noqa: BLE001
            continue
    gpu = ["gpu"] if {"cuda", "mps"} & set(found) else []
    return ["auto", *gpu, *found]


def _check_resolved(built: Any, trainer: Any) -> None:
    """What Lightning accepts but this project cannot run."""
    from lightning.pytorch.accelerators import CPUAccelerator

    cores = cpu_count()
    if isinstance(built.accelerator, CPUAccelerator) and built.num_devices > cores:
        raise ConfigError(
            f"trainer.devices={trainer.devices} asks for {built.num_devices} training processes "
            f"on the CPU, but this machine has {cores} CPU cores; allowed here: auto or 1..{cores}"
        )
    if getattr(built.precision_plugin, "precision", None) == "16-true":
        raise ConfigError(
            f"trainer.precision={trainer.precision} is not allowed: with float16 weights Adam's "
            "step divides by zero (its eps, 1e-8, is 0 in float16) and the loss turns to NaN "
            f"after the first batch; allowed: {_WORKING_PRECISIONS}"
        )


def require_settings(data: Any, schema: type, source: str | Path) -> None:
    """Refuse a settings mapping that lacks any setting of the `schema` dataclass.

    Args:
        data: params.yaml as plain containers, overrides applied.
        schema: The settings dataclass (`odk.config.Config`).
        source: The file, for the message.

    Raises:
        ConfigError: Naming the missing settings (or the empty file).
    """
    if not data:
        raise ConfigError(
            f"{source} holds no settings: every setting must be in the file "
            "(the repository's params.yaml lists them all, with comments)"
        )
    missing = _missing(data, schema, "")
    if missing:
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        shown = ", ".join(missing[:6]) + more
        raise ConfigError(
            f"{source} lacks {shown}: every setting must be in the file "
            "(the repository's params.yaml lists them all, with comments)"
        )


def _missing(data: Any, schema: type, prefix: str) -> list[str]:
    if not isinstance(data, dict):
        return []  # a wrong type, reported by the schema check
    hints = typing.get_type_hints(schema)
    missing = []
    for field in dataclasses.fields(schema):
        key = f"{prefix}{field.name}"
        if field.name not in data:
            missing.append(key)
        elif dataclasses.is_dataclass(hints[field.name]):
            missing += _missing(data[field.name], hints[field.name], f"{key}.")
    return missing
