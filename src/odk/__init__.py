"""odk: ResNets with block-orthogonal ("ODK") convolutions, and the pipeline that tests them.

Public API: the layer (`ODKConv2d`), the CIFAR ResNets and their builder, and the parameter
accounting that the pipeline logs. The names are imported on first use (PEP 562), so
`import odk` and the stages that need no network (`download`, `split`, `compare`) do not pay
for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` imports on demand
    from odk.layers import ODKConv2d, merge_odk_convs
    from odk.models import build_model, count_parameters, parameter_report, resnet18, resnet34

_WHERE = {
    "ODKConv2d": "odk.layers",
    "merge_odk_convs": "odk.layers",
    "build_model": "odk.models",
    "count_parameters": "odk.models",
    "parameter_report": "odk.models",
    "resnet18": "odk.models",
    "resnet34": "odk.models",
}
__all__ = [
    "ODKConv2d",
    "build_model",
    "count_parameters",
    "merge_odk_convs",
    "parameter_report",
    "resnet18",
    "resnet34",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import a public name from its module the first time it is asked for."""
    if name not in _WHERE:
        raise AttributeError(f"module 'odk' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
