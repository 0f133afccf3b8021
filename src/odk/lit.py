"""The LightningModule: cross-entropy, Adam, accuracy, and a guard against diverging runs.

The network itself comes from `odk.build_model` (architecture lives in `odk.models`); batches
arrive already augmented and normalized by the DataModule's `on_after_batch_transfer`.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from odk.errors import OdkError
from odk.models import build_model
from odk.schedulers import SCHEDULERS, lr_scheduler


class DivergedError(OdkError):
    """The training loss became NaN or infinite."""


class LitClassifier(pl.LightningModule):
    """Image classifier around an odk ResNet.

    Args:
        arch: Keyword arguments of `odk.build_model` (`baseline_name`, `num_classes`,
            `odk_layers`, `num_matrices`, `r`).
        learning_rate: Adam's learning rate (the peak rate for `onecycle`).
        scheduler: `none`, `cosine` (annealed per epoch to 0 over `max_epochs`) or `onecycle`
            (per step); see `odk.schedulers`.
        max_epochs: Length of the run, used by the schedulers.
    """

    def __init__(
        self,
        arch: dict[str, Any],
        learning_rate: float = 1e-3,
        scheduler: str = "none",
        max_epochs: int = 20,
    ) -> None:
        super().__init__()
        if scheduler not in SCHEDULERS:
            raise OdkError(f"scheduler.name={scheduler!r} is not allowed; allowed: {SCHEDULERS}")
        self.save_hyperparameters()
        self.arch = dict(arch)
        self.model = build_model(**self.arch)
        num_classes = self.arch["num_classes"]
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)  # (B, num_classes) logits

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        # Fail loudly rather than spend hours fitting NaNs (fp16 overflow or a too-high rate).
        if not math.isfinite(loss.item()):
            raise DivergedError(
                f"training loss became {loss.item()} at epoch {self.current_epoch}, "
                f"batch {batch_idx}; lower learning_rate (now {self.hparams.learning_rate}) "
                "or use trainer.precision=32-true"
            )
        self.train_acc(logits, labels)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.val_acc(logits, labels)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)

        def total_steps() -> int:  # asked by onecycle only: Lightning counts the batches
            return int(self.trainer.estimated_stepping_batches)

        hp = self.hparams
        schedule = lr_scheduler(hp.scheduler, optimizer, hp.max_epochs, total_steps)
        if schedule is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": schedule}
