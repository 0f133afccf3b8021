"""Stages `train_baseline`, `train_odk`, `train_matched`: fit one model, keep the best epoch.

`python -m odk.stages.train baseline|odk|matched [--seed N] [hydra overrides]` trains with
training seed N (every seed of `seeds` without `--seed`). The three models share everything
but their architecture: the dense baseline, the ODK model (`model.*`), and the dense control
thinned to the ODK model's parameter count (`odk.matched`). A run checkpoints every epoch under
`.odk_state/` (outside DVC's outputs, which DVC deletes before a stage runs), so a killed run
started again with the same settings resumes from its last completed epoch and ends with the
same weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from odk.atomic import atomic_outputs
from odk.checkpoint import atomic_torch_save, save_model
from odk.config import Config, config_to_dict
from odk.data import CIFARDataModule, read_manifest
from odk.errors import OdkError
from odk.guards import check_trainer
from odk.matched import matched_widths
from odk.models import count_parameters, parameter_report
from odk.resume import resume_point
from odk.runinfo import provenance
from odk.stages import KINDS, Run, kind_main
from odk.trainlog import EpochLogger, EpochProgressBar, quiet_lightning

STATE_ROOT = Path(".odk_state")
# The settings a training run reads: the `params` of its dvc.yaml stage (a test keeps them in
# step) and what its resume fingerprint holds. Only the ODK model and its control read `model`.
SETTINGS = (
    "learning_rate",
    "max_epochs",
    "baseline_name",
    "scheduler",
    "trainer",
    "data_module.data_dir",
    "data_module.batch_size",
)


def stage_settings(kind: str) -> tuple[str, ...]:
    """The settings (dotted keys or whole sections) that the `kind` model's training reads."""
    return SETTINGS if kind == "baseline" else (*SETTINGS, "model")


def model_arch(cfg: Config, kind: str, num_classes: int) -> dict[str, Any]:
    """`odk.build_model` arguments for the baseline, ODK or matched model of these settings."""
    m = cfg.model
    arch = {"baseline_name": cfg.baseline_name, "num_classes": num_classes}
    if kind == "odk":
        return {**arch, "odk_layers": list(m.odk_layers), "num_matrices": m.num_matrices, "r": m.r}
    arch = {**arch, "odk_layers": [], "num_matrices": 1, "r": 1}
    if kind == "matched":
        args = (cfg.baseline_name, num_classes, m.odk_layers, m.num_matrices, m.r)
        arch["widths"] = matched_widths(*args)
    return arch


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file and renamed: SIGKILL-safe."""

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        atomic_torch_save(checkpoint, Path(path))


class RunRecorder(Callback):
    """Saves the best-by-validation-accuracy model file and sums the training time.

    `best_epoch` counts from 1, like the learning curves. Its state travels in Lightning's
    checkpoint, so a resumed run keeps the best epoch and the time already spent.
    """

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path, self.meta = path, meta
        self.best_acc, self.best_epoch, self.train_seconds = -1.0, -1, 0.0
        self._epoch_start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.train_seconds += time.perf_counter() - self._epoch_start  # train + validation
        acc = trainer.callback_metrics.get("val/acc")
        if acc is None or float(acc) <= self.best_acc:
            return
        self.best_acc, self.best_epoch = float(acc), trainer.current_epoch + 1
        if trainer.is_global_zero:
            extra = {"epoch": self.best_epoch, "val_acc": self.best_acc}
            save_model(self.path, pl_module.model, extra=extra, **self.meta)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_acc = state_dict["best_acc"]
        self.best_epoch = state_dict["best_epoch"]
        self.train_seconds = state_dict["train_seconds"]


def _fingerprint(run: Run, cfg: Config, manifest: dict[str, Any]) -> str:
    """What a resumable run depends on: its settings and its data; any change starts over."""
    settings, every = {}, config_to_dict(cfg)
    for key in stage_settings(run.kind):
        value: Any = every
        for part in key.split("."):
            value = value[part]
        settings[key] = value
    identity = {"kind": run.kind, "seed": run.seed, "settings": settings, "manifest": manifest}
    blob = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _prepare_state(state_dir: Path, fingerprint: str) -> Path | None:
    """Return the checkpoint to resume from, or None after clearing a stale state folder."""
    return resume_point(state_dir, fingerprint)  # an unreadable checkpoint: start over


def train(cfg: Config, kind: str, seed: int) -> dict[str, Any]:
    """Train the `kind` model with training seed `seed`; write its model, record and curves.

    Outputs (see `odk.stages.Run`): `models/<kind>/seed<seed>.ckpt`,
    `metrics/runs/<kind>/seed<seed>/train.json`, `plots/train/<kind>/seed<seed>/`.
    """
    if kind not in KINDS:
        raise OdkError(f"model kind {kind!r} is not allowed; allowed: {', '.join(KINDS)}")
    quiet_lightning()
    check_trainer(cfg.trainer)  # devices, accelerator, strategy, precision: can they run here?
    run = Run(kind, seed)
    # data_module.num_workers is not passed: batches come from memory (odk.data), no workers
    dm = CIFARDataModule(cfg.data_module.data_dir, cfg.data_module.batch_size, seed=seed)
    manifest = read_manifest(dm.split_dir)
    arch = model_arch(cfg, kind, len(manifest["classes"]))
    pl.seed_everything(seed, workers=True, verbose=False)
    lit = _build_lit(cfg, arch)

    state_dir = STATE_ROOT / f"train_{kind}_seed{seed}"
    resume_from = _prepare_state(state_dir, _fingerprint(run, cfg, manifest))
    meta = {
        "arch": arch,
        "classes": manifest["classes"],
        "mean": manifest["mean"],
        "std": manifest["std"],
    }
    recorder = RunRecorder(state_dir / "best_model.ckpt", meta)
    logger = EpochLogger(
        dir=str(state_dir / "dvclive"),
        resume=resume_from is not None,
        dvcyaml=None,
        save_dvc_exp=False,
        report=None,
    )
    trainer = _build_trainer(cfg, state_dir, [recorder], logger)
    if trainer.is_global_zero:
        print(f"train: {run.name}: {_describe(lit, arch, manifest, trainer)}", flush=True)
    if resume_from is not None:
        print(f"Resuming {run.name} training from {resume_from}", file=sys.stderr)
    try:
        trainer.fit(lit, datamodule=dm, ckpt_path=resume_from, weights_only=True)
    except BaseException as exc:
        if type(exc).__name__ == "SIGTERMException":
            raise OdkError(
                f"training of {run.name} stopped by SIGTERM during epoch {trainer.current_epoch}; "
                f"run the stage again to resume from {state_dir / 'last.ckpt'}"
            ) from None
        raise
    if not trainer.is_global_zero:
        return {}  # under DDP, rank 0 alone writes the outputs
    if recorder.best_epoch < 0:
        raise OdkError("training produced no validation accuracy (is the validation set empty?)")
    metrics = _write_outputs(cfg, run, lit, recorder, state_dir, manifest)
    print(
        f"train: {run.name} done in {recorder.train_seconds:.1f} s: best validation accuracy "
        f"{recorder.best_acc:.4f} at epoch {recorder.best_epoch} of {cfg.max_epochs} -> {run.model}"
    )
    return metrics


def _describe(
    lit: pl.LightningModule, arch: dict[str, Any], manifest: dict[str, Any], trainer: pl.Trainer
) -> str:
    """What is about to train, on what, for how long: the stage's first line."""
    net = arch["baseline_name"]
    if arch["odk_layers"]:
        net += (
            f" with ODK convs in stages {arch['odk_layers']} "
            f"(m={arch['num_matrices']}, r={arch['r']})"
        )
    elif "widths" in arch:
        net = f"dense {net} thinned to stage widths {arch['widths']}"
    else:
        net = f"dense {net}"
    sizes = manifest["sizes"]
    epochs = trainer.max_epochs
    device = trainer.strategy.root_device.type
    where = f"{trainer.num_devices} {device} device{'s' if trainer.num_devices > 1 else ''}"
    return (
        f"{net}, {count_parameters(lit.model):,} trainable parameters; {sizes['train']:,} "
        f"training and {sizes['val']:,} validation images; {epochs} epoch"
        f"{'s' if epochs != 1 else ''} on {where}"
    )


def _build_lit(cfg: Config, arch: dict[str, Any]) -> pl.LightningModule:
    from odk.lit import LitClassifier

    return LitClassifier(arch, cfg.learning_rate, cfg.scheduler.name, cfg.max_epochs)


def _build_trainer(
    cfg: Config, state_dir: Path, callbacks: list[Callback], logger: EpochLogger
) -> pl.Trainer:
    t = cfg.trainer
    # Bit-for-bit reruns on the CPU; on GPUs deterministic kernels would cost speed.
    cpu = t.accelerator == "cpu" or (t.accelerator == "auto" and not torch.cuda.is_available())
    return pl.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        precision=t.precision,
        max_epochs=cfg.max_epochs,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        # Metrics are logged per epoch only (odk.lit); 1 keeps Lightning from warning that
        # an epoch is shorter than its logging interval.
        log_every_n_steps=1,
        callbacks=[*callbacks, _EveryEpoch(state_dir / "last.ckpt"), EpochProgressBar()],
        enable_model_summary=False,  # the stage's first line gives the parameter count
        logger=logger,
        plugins=[AtomicCheckpointIO()],
        deterministic=cpu,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        default_root_dir=state_dir,
    )


class _EveryEpoch(Callback):
    """Writes `last.ckpt` after every validated epoch (the resume point)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            trainer.save_checkpoint(self.path, weights_only=False)  # with the optimizer state


def _write_outputs(
    cfg: Config,
    run: Run,
    lit: pl.LightningModule,
    recorder: RunRecorder,
    state_dir: Path,
    manifest: dict[str, Any],
) -> dict[str, Any]:
    report = parameter_report(lit.model)
    metrics = {
        "trainable_params": count_parameters(lit.model),
        "best_val_acc": recorder.best_acc,
        "best_epoch": recorder.best_epoch,
        "epochs": cfg.max_epochs,
        "training_time_s": round(recorder.train_seconds, 3),
        "precision": str(cfg.trainer.precision),
        "arch": lit.arch,
        **provenance(run.seed, manifest["seed"], manifest["source_md5"]),
    }
    live_dir = state_dir / "dvclive"
    (live_dir / "parameter_report.json").write_text(json.dumps(report, indent=2) + "\n")
    with atomic_outputs() as out:  # all written first, then renamed one after the other
        shutil.copyfile(recorder.path, out.file(run.model))
        shutil.copytree(live_dir, out.dir(run.train_plots), dirs_exist_ok=True)
        out.json(run.train_record, metrics)
    shutil.rmtree(state_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        STATE_ROOT.rmdir()  # only if no other run's state is left in it
    return metrics


if __name__ == "__main__":
    kind_main(train, "odk.stages.train")
