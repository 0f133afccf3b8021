"""What a training run records and prints: curves per epoch, a progress bar, nothing else.

- `EpochLogger`: DVCLive with the epoch (1, 2, ...) as the step of every value, so every
  learning curve (train and validation) has one point per epoch, whatever the number of
  batches.
- `EpochProgressBar`: Lightning's progress bar counting epochs from 1, like the curves, without
  the logger's version number.
- `quiet_lightning`: silences Lightning's start-up chatter (accelerator availability, tips for
  other products, the batch-limit notes, "`Trainer.fit` stopped") and one deprecation inside
  Lightning itself. Warnings about the run itself still show.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning.pytorch as pl
from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.callbacks import RichProgressBar

# Lightning's info messages go through these loggers; its warnings through `warnings`.
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")
_IGNORED_WARNINGS = (
    # The DataModule serves batches from memory; worker processes would only slow it down.
    ".*does not have many workers.*",
    # Lightning 2.6's own pytree helper under torch >= 2.10: nothing a user can change.
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
)


def quiet_lightning() -> None:
    """Keep Lightning's info messages and its known-harmless warnings off the console."""
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in _IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message)


class EpochLogger(DVCLiveLogger):
    """DVCLive with the epoch (1, 2, ...) as the step of every value, train and validation.

    Lightning passes its optimizer-step count as the step: with few batches per epoch a curve
    then repeats or skips steps. Lightning also adds the 0-based `epoch` to every logged dict,
    which is taken here instead.
    """

    def log_metrics(
        self, metrics: dict[str, Any], step: int | None = None, sync: bool = False
    ) -> None:
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        if epoch is not None:
            step = int(epoch) + 1
        super().log_metrics(metrics, step, sync)


class EpochProgressBar(RichProgressBar):
    """Lightning's rich progress bar reading `Epoch 1/20` ... `Epoch 20/20`."""

    def _get_train_description(self, current_epoch: int) -> str:
        description = f"Epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None:
            description += f"/{self.trainer.max_epochs}"
        if len(self.validation_description) > len(description):  # as Lightning's: no flicker
            description = f"{description:{len(self.validation_description)}}"
        return description

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # DVCLive's run name, the same for every run
        return items
