"""Learning-rate schedules: the names the `scheduler.name` setting accepts, and how each is built.

The names are checked with the other settings by every stage (`odk.config`), the torch-free ones
included, so torch is imported only where a schedule is built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SCHEDULERS = ("none", "cosine", "onecycle")


def lr_scheduler(
    name: str, optimizer: Any, max_epochs: int, total_steps: Callable[[], int]
) -> dict[str, Any] | None:
    """The `lr_scheduler` entry of Lightning's `configure_optimizers` for the schedule `name`.

    Args:
        name: `none` (None: a constant rate), `cosine` (annealed per epoch to 0 over
            `max_epochs`) or `onecycle` (per step, peaking at the optimizer's rate).
        optimizer: The optimizer whose learning rate the schedule sets.
        max_epochs: Length of the run in epochs.
        total_steps: The run's number of optimizer steps, asked only by `onecycle`.
    """
    import torch

    if name == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
        return {"scheduler": sched}
    if name == "onecycle":
        peak = optimizer.param_groups[0]["lr"]
        sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=peak, total_steps=total_steps()
        )
        return {"scheduler": sched, "interval": "step"}
    return None
