"""The parameter-matched control: thinner stages, the ODK model's parameter count within 2%."""

import pytest
import torch

from odk import build_model, count_parameters, matched
from odk.errors import ConfigError
from odk.matched import TOLERANCE, matched_widths
from odk.models import STAGE_WIDTHS


@pytest.mark.parametrize("r", [1, 8])
@pytest.mark.parametrize("odk_layers", [[4], [3, 4], [1, 2, 3, 4]])
def test_control_matches_the_odk_model_within_two_percent(odk_layers, r):
    widths = matched_widths("resnet18", 10, odk_layers, 1, r)
    torch.manual_seed(0)
    target = count_parameters(build_model("resnet18", 10, odk_layers, 1, r))
    control = build_model("resnet18", 10, widths=widths)
    assert abs(count_parameters(control) - target) / target <= TOLERANCE
    assert not any(type(m).__name__ == "ODKConv2d" for m in control.modules())
    for stage, (width, default) in enumerate(zip(widths, STAGE_WIDTHS, strict=True), start=1):
        if stage in odk_layers:
            assert 1 <= width < default  # thinned
        else:
            assert width == default  # untouched


def test_control_follows_the_odk_settings():
    # more trainable ODK parameters (m = max) call for a wider control
    narrow = matched_widths("resnet18", 10, [3, 4], 1, 1)
    wide = matched_widths("resnet18", 10, [3, 4], "max", 1)
    assert narrow == [64, 128, 69, 138] and wide[3] > narrow[3]
    assert matched_widths("resnet18", 100, [3, 4], 1, 8) != matched_widths(
        "resnet18", 10, [3, 4], 1, 8
    )


def test_thinned_control_trains_forward_and_backward():
    model = build_model("resnet18", 10, widths=[64, 128, 69, 138])
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 10)


def test_unmatchable_settings_fail_with_one_line(monkeypatch):
    # Widths move in whole channels, so an exact match is out of reach: with no tolerance at
    # all, the closest control is refused, naming the settings and the closest count.
    monkeypatch.setattr(matched, "TOLERANCE", 0.0)
    with pytest.raises(ConfigError) as error:
        matched_widths("resnet18", 10, [3, 4], 1, 8)
    message = str(error.value)
    assert "model.odk_layers=[3, 4], model.num_matrices=1, model.r=8" in message
    assert "no thinner resnet18 comes within 0% of the ODK model's 932,426" in message
    assert "stage widths [64, 128, 36, 74]" in message and "allowed:" in message
