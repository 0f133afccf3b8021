"""odk: ResNets with block-orthogonal ("ODK") convolutions, and the pipeline that tests them.

Public API: the layer (`ODKConv2d`), the CIFAR ResNets and their builder, and the parameter
accounting that the pipeline logs.
"""

from odk.layers import ODKConv2d, merge_odk_convs
from odk.models import (
    build_model,
    count_parameters,
    parameter_report,
    resnet18,
    resnet34,
)

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
