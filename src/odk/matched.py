"""The parameter-matched control: the dense baseline, thinned to the ODK model's parameter count.

A reviewer's first question about a parameter-reduction method is whether it beats simply a
thinner dense network with as many trainable parameters. The control is the `baseline_name`
network with the widths of the stages in `model.odk_layers` scaled down (the other stages
untouched; the stem follows stage 1) until its trainable parameters are within
`TOLERANCE` of the ODK model's:

1. all ODK stages are scaled together, keeping their 1:2:4:8 proportions, to the widths whose
   parameter count is closest to the target;
2. the widest ODK stage alone is then moved a few channels to come closer still.

Models are built on PyTorch's `meta` device, so counting costs no memory and no random draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import torch

from odk.architecture import STAGE_WIDTHS
from odk.errors import ConfigError
from odk.models import build_model, count_parameters

TOLERANCE = 0.02  # largest relative difference |matched - odk| / odk


@lru_cache(maxsize=256)
def _count(
    baseline_name: str,
    num_classes: int,
    odk_layers: tuple[int, ...] = (),
    num_matrices: int | str = 1,
    r: int = 1,
    widths: tuple[int, ...] | None = None,
) -> int:
    with torch.device("meta"):
        model = build_model(baseline_name, num_classes, odk_layers, num_matrices, r, widths)
    return count_parameters(model)


def odk_parameter_count(
    baseline_name: str, num_classes: int, odk_layers: Sequence[int], num_matrices: int | str, r: int
) -> int:
    """Trainable parameters of the ODK model of these settings."""
    return _count(baseline_name, num_classes, tuple(sorted(odk_layers)), num_matrices, r)


def dense_parameter_count(baseline_name: str, num_classes: int, widths: Sequence[int]) -> int:
    """Trainable parameters of the dense `baseline_name` network with these stage widths."""
    return _count(baseline_name, num_classes, widths=tuple(widths))


def matched_widths(
    baseline_name: str,
    num_classes: int,
    odk_layers: Sequence[int],
    num_matrices: int | str = 1,
    r: int = 1,
) -> list[int]:
    """Stage widths of the dense control whose parameters match the ODK model's within 2%.

    Raises:
        ConfigError: No width fits (the ODK model is smaller than the thinnest control).
    """
    stages = sorted(set(odk_layers))
    target = odk_parameter_count(baseline_name, num_classes, stages, num_matrices, r)
    top = max(stages, key=lambda s: STAGE_WIDTHS[s - 1])

    def proportional(width: int) -> list[int]:
        scale = width / STAGE_WIDTHS[top - 1]
        return [
            max(1, round(w * scale)) if s in stages else w
            for s, w in enumerate(STAGE_WIDTHS, start=1)
        ]

    def count(widths: list[int]) -> int:
        return dense_parameter_count(baseline_name, num_classes, widths)

    widths = _closest(proportional, count, target, STAGE_WIDTHS[top - 1])
    fixed = list(widths)

    def only_top(width: int) -> list[int]:
        fixed[top - 1] = width
        return list(fixed)

    widths = min(
        (widths, _closest(only_top, count, target, STAGE_WIDTHS[top - 1])),
        key=lambda w: abs(count(w) - target),
    )
    error = abs(count(widths) - target) / target
    if error > TOLERANCE:
        raise ConfigError(
            f"model.odk_layers={list(odk_layers)}, model.num_matrices={num_matrices}, "
            f"model.r={r}: no thinner {baseline_name} comes within {TOLERANCE:.0%} of the ODK "
            f"model's {target:,} trainable parameters (closest: {count(widths):,} at stage "
            f"widths {widths}); allowed: settings whose ODK model the thinnest control can match"
        )
    return widths


def _closest(
    widths_of: Callable[[int], list[int]], count: Callable[[list[int]], int], target: int, hi: int
) -> list[int]:
    """`widths_of(w)` for the w in 1..hi whose count is closest to target (count grows with w)."""
    lo_w, hi_w = 1, hi
    while lo_w < hi_w:  # the smallest w whose count reaches the target
        mid = (lo_w + hi_w) // 2
        if count(widths_of(mid)) < target:
            lo_w = mid + 1
        else:
            hi_w = mid
    candidates = [widths_of(w) for w in {max(1, lo_w - 1), lo_w}]
    return min(candidates, key=lambda w: abs(count(w) - target))
