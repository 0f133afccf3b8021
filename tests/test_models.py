"""CIFAR ResNets: architecture, parameter accounting, the builder and its settings errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from odk import build_model, count_parameters, merge_odk_convs, parameter_report, resnet18, resnet34
from odk.errors import ConfigError, OdkError
from odk.layers import ODKConv2d
from odk.models import BASELINE_NAMES, STAGE_WIDTHS


def expected_odk_params(blocks, odk_layers, num_matrices, r):
    """Trainable parameters of the 3x3 convs in `odk_layers`, counted from the architecture."""
    dense, odk = 0, 0
    in_width = STAGE_WIDTHS[0]
    for stage, (width, n) in enumerate(zip(STAGE_WIDTHS, blocks, strict=True), start=1):
        for i in range(2 * n):  # two 3x3 convs per block
            c_in = in_width if i == 0 else width
            dense += width * c_in * 9 if stage in odk_layers else 0
            if stage in odk_layers:
                m = (
                    c_in * 9 // width
                    if num_matrices == "max"
                    else min(num_matrices, c_in * 9 // width)
                )
                b = width // r
                odk += m * r * b * (b - 1) // 2
        in_width = width
    return dense, odk


def test_dense_resnet18_has_exactly_11173962_trainable_parameters():
    model = resnet18()
    assert count_parameters(model) == 11_173_962
    assert not any(isinstance(m, ODKConv2d) for m in model.modules())


def test_dense_resnet34_has_the_cifar_stem_and_head():
    assert count_parameters(resnet34()) == 21_282_122  # torchvision's 21,797,672 - 7x7 stem - head


@pytest.mark.parametrize(
    ("odk_layers", "num_matrices", "r"),
    [((3, 4), 1, 1), ((3, 4), "max", 1), ((3, 4), 5, 4), ((1, 2, 3, 4), 1, 2), ((2,), "max", 8)],
)
def test_odk_resnet18_trains_only_the_skew_entries(odk_layers, num_matrices, r):
    torch.manual_seed(0)
    model = resnet18(odk_layers=odk_layers, num_matrices=num_matrices, r=r)
    dense, odk = expected_odk_params([2, 2, 2, 2], odk_layers, num_matrices, r)
    assert count_parameters(model) == 11_173_962 - dense + odk
    rows = parameter_report(model)
    batchnorm = sum(
        p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()
    )
    assert sum(row["trainable_params"] for row in rows) + batchnorm == count_parameters(model)


@pytest.mark.parametrize("odk_layers", [(), (3, 4), (1, 4)])
def test_odk_replaces_exactly_the_3x3_convs_of_the_listed_stages(odk_layers):
    model = resnet18(odk_layers=odk_layers)
    odk_names = {name for name, m in model.named_modules() if isinstance(m, ODKConv2d)}
    expected = {f"layer{s}.{blk}.conv{c}" for s in odk_layers for blk in (0, 1) for c in (1, 2)}
    assert odk_names == expected
    assert type(model.conv1) is nn.Conv2d and model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1) and model.conv1.padding == (1, 1)
    assert all(
        type(model.get_submodule(f"layer{s}.0.downsample.0")) is nn.Conv2d for s in (2, 3, 4)
    )
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_an_int_num_matrices_is_clamped_to_each_layers_maximum():
    model = resnet18(odk_layers=(3,), num_matrices=9)
    assert model.layer3[0].conv1.num_matrices == 4  # 128*9 // 256
    assert model.layer3[0].conv2.num_matrices == 9
    model = resnet18(odk_layers=(3,), num_matrices=6)
    assert [model.layer3[0].conv1.num_matrices, model.layer3[1].conv1.num_matrices] == [4, 6]


@pytest.mark.parametrize(("num_classes", "odk_layers"), [(10, ()), (100, (3, 4))])
def test_forward_backward_shapes_on_cifar_images(num_classes, odk_layers):
    torch.manual_seed(0)
    model = resnet18(num_classes=num_classes, odk_layers=odk_layers)
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (2, num_classes)
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    odk_layers_found = [m for m in model.modules() if isinstance(m, ODKConv2d)]
    assert all(bool(m.skew.grad.abs().amax(dim=1).gt(0).all()) for m in odk_layers_found)


def test_merged_model_computes_the_same_logits():
    torch.manual_seed(0)
    model = resnet18(odk_layers=(4,), r=2).eval()
    merged = merge_odk_convs(model)
    assert not any(isinstance(m, ODKConv2d) for m in merged.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(BASELINE_NAMES))
def test_build_model_accepts_every_spelling_of_baseline_name(name):
    model = build_model(name, num_classes=100, odk_layers=[3, 4], num_matrices=1, r=1)
    blocks = [2, 2, 2, 2] if "18" in name else [3, 4, 6, 3]
    dense, odk = expected_odk_params(blocks, (3, 4), 1, 1)
    full = 11_173_962 if "18" in name else 21_282_122
    assert count_parameters(model) == full - dense + odk + 90 * 513  # 100 classes, not 10
    assert {"resnet18", "Resnet-18", "resnet34"} <= set(BASELINE_NAMES)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(baseline_name="vgg16"),
            r"baseline_name='vgg16' is not supported; allowed: resnet18, ",
        ),
        (dict(odk_layers=[5]), r"model\.odk_layers=\[5\] is not allowed; allowed: .* 1\.\.4"),
        (dict(odk_layers=[0, 3]), r"model\.odk_layers=\[0, 3\]"),
        (dict(odk_layers="34"), r"model\.odk_layers='34'"),
        (
            dict(odk_layers=[3, 4], r=3),
            r"model\.r=3 .*\(256 in stage 3, 512 in stage 4\); allowed: 1, 2, 4, .*, 256$",
        ),
        (dict(r=0), r"model\.r=0 is not allowed"),
        (dict(num_matrices=0), r"model\.num_matrices=0 is not allowed; allowed: an integer >= 1"),
        (dict(num_matrices="all"), r"model\.num_matrices='all' .* or 'max'"),
        (dict(num_matrices=True), r"model\.num_matrices=True"),
        (dict(num_classes=0), r"num_classes=0 is not allowed"),
    ],
)
def test_bad_settings_raise_a_config_error_naming_the_setting(kwargs, message):
    settings = dict(baseline_name="resnet18", odk_layers=[3, 4]) | kwargs
    with pytest.raises(ConfigError, match=message) as error:
        build_model(**settings)
    assert isinstance(error.value, OdkError) and isinstance(error.value, ValueError)
    assert "\n" not in str(error.value)


def test_parameter_report_has_one_row_per_conv_and_linear_layer():
    rows = parameter_report(resnet18(odk_layers=(4,), r=2))
    assert len(rows) == 1 + 16 + 3 + 1  # stem, 3x3 convs, downsample convs, head
    assert all(
        set(row) == {"name", "shape", "m", "r", "block_size", "trainable_params", "dense_params"}
        for row in rows
    )
    by_name = {row["name"]: row for row in rows}
    assert by_name["layer4.0.conv1"] == {
        "name": "layer4.0.conv1",
        "shape": (512, 256, 3, 3),
        "m": 1,
        "r": 2,
        "block_size": 256,
        "trainable_params": 2 * 256 * 255 // 2,
        "dense_params": 512 * 256 * 9,
    }
    assert by_name["fc"] | {"name": None} == {
        "name": None,
        "shape": (10, 512),
        "m": None,
        "r": None,
        "block_size": None,
        "trainable_params": 5130,
        "dense_params": 5130,
    }
    assert by_name["layer4.0.downsample.0"]["m"] is None
