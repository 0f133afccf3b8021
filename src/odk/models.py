"""CIFAR ResNets with an injected convolution type: one ResNet for the baseline and for ODK.

torchvision's ResNet (``conv3x3``/``conv1x1`` helpers, ``BasicBlock``, ``_make_layer``) with a CIFAR
stem: a 3x3 stride-1 first conv and no max-pool, so 32x32 images reach ``layer1`` at full size.
Each stage builds its 3x3 convs with a ``conv_layer`` factory, so the ODK network is the baseline
with ``odk_layers`` naming the stages whose 3x3 convs are ``ODKConv2d``. The stem, the 1x1
downsample convs (``in < out``: no orthogonal matrix fits) and the head stay dense. The widths,
blocks, accepted names and the checks of the settings are in ``odk.architecture`` (no torch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from odk.architecture import (
    BASELINE_NAMES,
    STAGE_BLOCKS,
    STAGE_WIDTHS,
    check_model_settings,
    check_widths,
)
from odk.errors import ConfigError
from odk.layers import ODKConv2d, max_num_matrices

REPORT_KEYS = ("name", "shape", "m", "r", "block_size", "trainable_params", "dense_params")

# Builds a conv from nn.Conv2d's arguments (in, out, kernel_size, stride=, padding=, bias=).
ConvLayer = Callable[..., nn.Module]


def conv3x3(
    in_planes: int, out_planes: int, stride: int = 1, conv_layer: ConvLayer = nn.Conv2d
) -> nn.Module:
    """3x3 convolution with padding 1 and no bias (a BatchNorm follows)."""
    return conv_layer(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias, for the downsample shortcuts."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def odk_conv(num_matrices: int | str = 1, r: int = 1) -> ConvLayer:
    """A ``conv_layer`` that builds ``ODKConv2d``s, clamping an int ``num_matrices`` per layer.

    Clamping lets one sweep (``num_matrices`` in 1..9) run even where a layer admits fewer.
    """

    def build(in_channels: int, out_channels: int, kernel_size: int, **kwargs: Any) -> ODKConv2d:
        m = num_matrices
        if m != "max":
            m = min(m, max_num_matrices(in_channels, out_channels, kernel_size))
        return ODKConv2d(in_channels, out_channels, kernel_size, r=r, num_matrices=m, **kwargs)

    return build


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and ReLU, plus the identity (or a 1x1 downsample) shortcut."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        conv_layer: ConvLayer = nn.Conv2d,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, conv_layer)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, conv_layer)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """``(B, inplanes, H, W)`` -> ``(B, planes, H/stride, W/stride)``."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, planes, H/stride, W/stride)
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A CIFAR ResNet of four ``BasicBlock`` stages, widths 64/128/256/512 by default.

    Args:
        layers: Number of blocks in each of the four stages.
        num_classes: Size of the linear head's output.
        conv_layers: The ``conv_layer`` of each stage's 3x3 convs.
        widths: Output channels of each stage (thinner for the parameter-matched control).
    """

    def __init__(
        self,
        layers: Sequence[int],
        num_classes: int = 10,
        conv_layers: Sequence[ConvLayer] = (nn.Conv2d,) * 4,
        widths: Sequence[int] = STAGE_WIDTHS,
    ) -> None:
        super().__init__()
        self.inplanes = widths[0]  # the stem follows stage 1's width (64 unless thinned)
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        strides = (1, 2, 2, 2)
        stages = zip(widths, layers, strides, conv_layers, strict=True)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            self._make_layer(*stage) for stage in stages
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1] * BasicBlock.expansion, num_classes)
        for module in self.modules():  # torchvision's init; ODKConv2d brings its own
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(
        self, planes: int, blocks: int, stride: int, conv_layer: ConvLayer
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * BasicBlock.expansion, stride),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, conv_layer)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [
            BasicBlock(self.inplanes, planes, conv_layer=conv_layer) for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` -> logits ``(B, num_classes)``."""
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 64, H, W): no max-pool on 32x32 inputs
        x = self.layer1(x)  # (B, 64, H, W) at the default widths
        x = self.layer2(x)  # (B, 128, H/2, W/2)
        x = self.layer3(x)  # (B, 256, H/4, W/4)
        x = self.layer4(x)  # (B, 512, H/8, W/8)
        x = torch.flatten(self.avgpool(x), 1)  # (B, 512)
        return self.fc(x)  # (B, num_classes)


def _resnet(
    layers: Sequence[int],
    num_classes: int,
    odk_layers: Iterable[int],
    num_matrices: int | str,
    r: int,
    widths: Sequence[int] | None,
) -> ResNet:
    widths = check_widths(STAGE_WIDTHS if widths is None else widths)
    stages = check_model_settings(num_classes, odk_layers, num_matrices, r, widths)
    odk = odk_conv(num_matrices, r)
    conv_layers = [odk if stage in stages else nn.Conv2d for stage in range(1, 5)]
    return ResNet(layers, num_classes, conv_layers, widths)


def resnet18(
    num_classes: int = 10,
    odk_layers: Iterable[int] = (),
    num_matrices: int | str = 1,
    r: int = 1,
    widths: Sequence[int] | None = None,
) -> ResNet:
    """CIFAR ResNet-18; the 3x3 convs of the stages in ``odk_layers`` (1..4) are ODK convs.

    ``widths`` (default 64/128/256/512) sets each stage's channels.

    Raises:
        ConfigError: A setting is out of range (the message names it and what is allowed).
    """
    return _resnet(STAGE_BLOCKS["resnet18"], num_classes, odk_layers, num_matrices, r, widths)


def resnet34(
    num_classes: int = 10,
    odk_layers: Iterable[int] = (),
    num_matrices: int | str = 1,
    r: int = 1,
    widths: Sequence[int] | None = None,
) -> ResNet:
    """CIFAR ResNet-34; the 3x3 convs of the stages in ``odk_layers`` (1..4) are ODK convs.

    ``widths`` (default 64/128/256/512) sets each stage's channels.

    Raises:
        ConfigError: A setting is out of range (the message names it and what is allowed).
    """
    return _resnet(STAGE_BLOCKS["resnet34"], num_classes, odk_layers, num_matrices, r, widths)


def build_model(
    baseline_name: str,
    num_classes: int = 10,
    odk_layers: Iterable[int] = (),
    num_matrices: int | str = 1,
    r: int = 1,
    widths: Sequence[int] | None = None,
) -> ResNet:
    """The network named by the ``baseline_name`` setting, with the ``model.*`` settings applied.

    ``widths`` (default 64/128/256/512) thins the stages, as the parameter-matched control does.

    Raises:
        ConfigError: Unknown ``baseline_name`` or a ``model.*`` setting out of range.
    """
    if baseline_name not in BASELINE_NAMES:
        allowed = ", ".join(BASELINE_NAMES)
        raise ConfigError(f"baseline_name={baseline_name!r} is not supported; allowed: {allowed}")
    blocks = STAGE_BLOCKS[BASELINE_NAMES[baseline_name]]
    return _resnet(blocks, num_classes, odk_layers, num_matrices, r, widths)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable (``requires_grad``) parameters; fixed buffers do not count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameter_report(model: nn.Module) -> list[dict[str, Any]]:
    """One row per conv or linear layer: what it trains against what a dense layer would.

    Returns:
        Rows keyed by ``REPORT_KEYS``; ``m``, ``r`` and ``block_size`` are None for dense layers.
    """
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, ODKConv2d):
            shape = (module.out_channels, module.in_channels, *module.kernel_size)
            odk = (module.num_matrices, module.r, module.block_size)
        elif isinstance(module, nn.Conv2d | nn.Linear):
            shape, odk = tuple(module.weight.shape), (None, None, None)
        else:
            continue
        dense = math.prod(shape) + (0 if module.bias is None else module.bias.numel())
        trainable = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
        rows.append(dict(zip(REPORT_KEYS, (name, shape, *odk, trainable, dense), strict=True)))
    return rows


@torch.no_grad()
def orthogonality_error(model: nn.Module) -> float | None:
    """The largest ``max |W W^T - m I|`` over the model's ODK convs, or None if it has none.

    ``W`` is each layer's weight as the model computes it (in its own dtype); the product is
    taken in float64, so the figure measures the layer, not the check's rounding.
    """
    errors = []
    for module in model.modules():
        if isinstance(module, ODKConv2d):
            w = module.weight.detach().flatten(1).double()  # (out, in*kh*kw)
            eye = torch.eye(w.shape[0], dtype=torch.float64, device=w.device)
            errors.append(float((w @ w.T - module.num_matrices * eye).abs().max()))
    return max(errors) if errors else None
