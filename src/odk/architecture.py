"""The CIFAR ResNets as plain facts: stage widths, blocks per network, the checks of their settings.

`odk.models` builds the networks from these facts, and `odk.config` asks them when it checks
params.yaml. They live apart from `odk.models`, which needs torch for its modules, because the
settings are checked by every stage, the torch-free ones (download, split, compare) included:
this module imports nothing heavy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

from odk.errors import ConfigError

STAGE_WIDTHS = (64, 128, 256, 512)  # output channels of the convs of stages 1..4
# BasicBlocks in each of the four stages.
STAGE_BLOCKS: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
)
# Accepted spellings of the `baseline_name` setting (the research plan writes "Resnet-18"),
# each with the network it names.
BASELINE_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "resnet18": "resnet18",
        "Resnet-18": "resnet18",
        "ResNet-18": "resnet18",
        "resnet34": "resnet34",
        "Resnet-34": "resnet34",
        "ResNet-34": "resnet34",
    }
)


def is_int(value: object) -> bool:
    """An int that is not a bool (Python counts `True` as the int 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_r(r: int, odk_layers: Iterable[int], widths: Sequence[int] = STAGE_WIDTHS) -> None:
    """`model.r` must divide the output channels of every ODK layer: the width of its stage.

    Each ODK layer checks its own `r` (`odk.layers`); this is the same rule stated for the
    settings, so a bad `model.r` stops before any work with the stages and the divisors.

    Raises:
        ConfigError: `r` is not an integer >= 1 or does not divide an ODK stage's width.
    """
    if not is_int(r) or r < 1:
        raise ConfigError(f"model.r={r!r} is not allowed; allowed: an integer >= 1")
    stages = sorted(set(odk_layers))
    if any(widths[s - 1] % r for s in stages):
        where = ", ".join(f"{widths[s - 1]} in stage {s}" for s in stages)
        why = f"r must divide the output channels of every ODK layer ({where})"
        common = math.gcd(*(widths[s - 1] for s in stages))
        divisors = ", ".join(str(d) for d in range(1, common + 1) if common % d == 0)
        raise ConfigError(f"model.r={r} is not allowed: {why}; allowed: {divisors}")


def check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    """The four stage widths as a tuple, each an integer >= 1.

    Raises:
        ConfigError: Not four integers >= 1.
    """
    if (
        isinstance(widths, str | bytes)
        or len(widths) != len(STAGE_WIDTHS)
        or not all(is_int(w) and w >= 1 for w in widths)
    ):
        raise ConfigError(f"widths={widths!r} is not allowed; allowed: four integers >= 1")
    return tuple(widths)


def check_model_settings(
    num_classes: int,
    odk_layers: Iterable[int],
    num_matrices: int | str,
    r: int,
    widths: Sequence[int] = STAGE_WIDTHS,
) -> set[int]:
    """Validate the arguments of a network; return the set of ODK stages.

    Raises:
        ConfigError: A setting out of range (the message names it and what is allowed).
    """
    if not is_int(num_classes) or num_classes < 1:
        raise ConfigError(f"num_classes={num_classes!r} is not allowed; allowed: an integer >= 1")
    stages = list(odk_layers) if not isinstance(odk_layers, str | bytes | int) else None
    if stages is None or not all(is_int(s) and 1 <= s <= len(widths) for s in stages):
        raise ConfigError(
            f"model.odk_layers={odk_layers!r} is not allowed; allowed: a list of stages in 1..4 "
            "(e.g. [3, 4]), or [] for the dense baseline"
        )
    check_r(r, stages, widths)
    if num_matrices != "max" and (not is_int(num_matrices) or num_matrices < 1):
        raise ConfigError(
            f"model.num_matrices={num_matrices!r} is not allowed; allowed: an integer >= 1 "
            "(clamped to each layer's maximum, (in*k*k)//out) or 'max'"
        )
    return set(stages)
