"""Inference timing: warm-up, median of timed passes, fixed threads, recorded conditions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from odk import speed


class CountingNet(nn.Module):
    """A tiny network that counts its forward passes and the thread count it ran with."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(torch.get_num_threads())
        return self.conv(x).mean((2, 3))


def test_inference_is_timed_after_warm_up_with_fixed_threads_and_recorded_conditions(
    monkeypatch,
):
    monkeypatch.setattr(speed, "cpu_count", lambda: 1)
    torch.set_num_threads(2)
    net = CountingNet()
    images = torch.randint(0, 256, (300, 3, 8, 8), dtype=torch.uint8)
    result = speed.measure_inference(net, images, lambda b: b.float() / 255, torch.device("cpu"))
    assert len(net.calls) == speed.WARMUP_PASSES + speed.TIMED_PASSES
    assert set(net.calls) == {1}  # every pass with the fixed thread count...
    assert torch.get_num_threads() == 2  # ...restored afterwards
    conditions = result["conditions"]
    assert conditions["threads"] == 1 and conditions["batch_size"] == speed.BATCH
    assert conditions["device"] == "cpu" and conditions["device_name"]
    assert conditions["timed_passes"] == speed.TIMED_PASSES == len(result["pass_s"])
    median = sorted(result["pass_s"])[len(result["pass_s"]) // 2]  # 6 significant digits
    assert result["images_per_s"] == pytest.approx(speed.BATCH / median, rel=0.01)
    assert not net.training  # timed in eval mode
