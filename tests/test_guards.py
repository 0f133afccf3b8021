"""Trainer settings are checked against this machine and Lightning before any work starts."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import replace
from pathlib import Path
from typing import get_args

import lightning.pytorch as pl
import pytest
import torch

from odk.config import TrainerConfig, load_config
from odk.data import CIFARDataModule
from odk.errors import ConfigError
from odk.guards import check_lightning_names, check_trainer, cpu_count
from odk.lit import LitClassifier
from odk.stages.train import train

CUDA = torch.cuda.is_available()


def _trainer(**settings) -> TrainerConfig:
    return replace(TrainerConfig(), **settings)


def test_more_cpu_processes_than_cores_are_refused():
    cores = cpu_count()
    expected = (
        f"trainer.devices=1000 asks for 1000 training processes on the CPU, but this machine has "
        f"{cores} CPU cores; allowed here: auto or 1..{cores}"
    )
    with pytest.raises(ConfigError, match=re.escape(expected) + "$"):
        check_trainer(_trainer(accelerator="cpu", devices=1000))
    check_trainer(_trainer(accelerator="cpu", devices=cores, strategy="ddp"))  # all cores: fine


@pytest.mark.skipif(CUDA, reason="a GPU is visible")
def test_auto_accelerator_counts_cpu_cores_without_a_gpu():
    with pytest.raises(ConfigError, match="trainer.devices=1000 asks for 1000 training processes"):
        check_trainer(_trainer(devices=1000))


@pytest.mark.skipif(CUDA, reason="a GPU is visible")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_gpu_without_a_gpu_is_refused(accelerator):
    expected = f"trainer.accelerator={accelerator} is not available on this machine; allowed here: "
    with pytest.raises(ConfigError, match=re.escape(expected) + r"auto, cpu$"):
        check_trainer(_trainer(accelerator=accelerator))


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="installed")
def test_a_strategy_without_its_package_is_refused():
    with pytest.raises(ConfigError) as info:
        check_trainer(_trainer(strategy="deepspeed"))
    assert str(info.value).startswith("trainer.strategy=deepspeed cannot run here: ")
    assert "pip install -U deepspeed" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(CUDA, reason="a GPU is visible")
def test_a_strategy_for_another_accelerator_is_refused():
    with pytest.raises(
        ConfigError, match="trainer.strategy=fsdp cannot run here: .* requires a GPU"
    ):
        check_trainer(_trainer(accelerator="cpu", strategy="fsdp"))


def test_pure_float16_is_refused():
    with pytest.raises(ConfigError, match=r"trainer.precision=16-true is not allowed: .* NaN"):
        check_trainer(_trainer(accelerator="cpu", precision="16-true"))


@pytest.mark.parametrize("precision", ["32-true", "64-true", "bf16-true", "bf16-mixed", "16-mixed"])
def test_working_settings_pass(precision):
    check_trainer(_trainer(accelerator="cpu", precision=precision))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("strategy", "magic", "trainer.strategy=magic is not allowed; allowed: auto, ddp"),
        ("precision", 8, "trainer.precision=8 is not allowed; allowed: 32-true"),
        ("precision", "half", "trainer.precision=half is not allowed"),
    ],
)
def test_a_name_lightning_does_not_know_stops_with_one_line(key, value, expected):
    with pytest.raises(ConfigError) as info:
        check_trainer(_trainer(**{key: value}))
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_lightning_names_are_allowed():
    from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS
    from lightning.pytorch.strategies import StrategyRegistry

    for precision in get_args(_PRECISION_INPUT_STR) + get_args(_PRECISION_INPUT_STR_ALIAS):
        check_lightning_names(_trainer(precision=precision))
    for name in StrategyRegistry.available_strategies():
        check_lightning_names(_trainer(strategy=name))


def test_the_train_stage_checks_before_reading_any_data(params_file, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no data, no splits: the check must come first
    monkeypatch.setattr("odk.guards.cpu_count", lambda: 1)
    cfg = load_config(["trainer.accelerator=cpu", "trainer.devices=2"], params_file)
    with pytest.raises(ConfigError, match="asks for 2 training processes on the CPU, but this"):
        train(cfg, "odk", 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["16-true", "bf16-true", "64-true"])
def test_true_precisions_either_train_or_are_refused_before_work(cifar10_data: Path, precision):
    settings = _trainer(accelerator="cpu", devices=1, precision=precision)
    try:
        check_trainer(settings)
    except ConfigError as refused:
        assert str(refused).startswith(f"trainer.precision={precision} is not allowed")
        return
    dm = CIFARDataModule(cifar10_data, batch_size=2)
    arch = {"baseline_name": "resnet18", "num_classes": 10, "odk_layers": [4], "num_matrices": 1}
    trainer = pl.Trainer(
        accelerator="cpu",
        precision=precision,
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(LitClassifier(arch), datamodule=dm)
    loss = trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss) and 0 <= float(trainer.callback_metrics["val/acc"]) <= 1
