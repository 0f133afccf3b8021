"""The LightningModule: loss, a diverging run stops with a clear error, schedulers."""

from __future__ import annotations

import pytest
import torch

from odk.errors import OdkError
from odk.lit import DivergedError, LitClassifier

ARCH = {
    "baseline_name": "resnet18",
    "num_classes": 10,
    "odk_layers": [4],
    "num_matrices": 1,
    "r": 1,
}


@pytest.fixture(scope="module")
def lit() -> LitClassifier:
    torch.manual_seed(0)
    return LitClassifier(ARCH, learning_rate=1e-3, scheduler="cosine", max_epochs=3)


def test_training_step_returns_the_cross_entropy(lit: LitClassifier):
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    loss = lit.training_step((images, labels), 0)
    expected = torch.nn.functional.cross_entropy(lit(images), labels)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(p.grad is not None for p in lit.parameters() if p.requires_grad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_with_a_clear_error(lit: LitClassifier, bad: float):
    images = torch.full((2, 3, 32, 32), bad)
    with pytest.raises(DivergedError, match="training loss became nan.*lower learning_rate"):
        lit.training_step((images, torch.tensor([0, 1])), 7)
    assert issubclass(DivergedError, OdkError)  # printed as one line by the stage


def test_cosine_schedule_anneals_over_max_epochs(lit: LitClassifier):
    config = lit.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_no_scheduler_by_default_and_unknown_ones_are_refused():
    plain = LitClassifier(ARCH, learning_rate=0.01)
    assert isinstance(plain.configure_optimizers(), torch.optim.Adam)
    with pytest.raises(OdkError, match="scheduler.name='step' is not allowed"):
        LitClassifier(ARCH, scheduler="step")
