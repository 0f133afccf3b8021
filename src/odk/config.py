"""Settings: params.yaml through Hydra, checked against a typed schema.

`load_config` composes params.yaml with Hydra's compose API (no output folder, no change of
working directory), applies command-line overrides (`data_module.batch_size=64`), merges the
result into the dataclasses below and checks every value. A bad setting stops with one line
naming the setting, the value and what is allowed, before any data is touched; every stage
loads them through `odk.stages.main_entry`. Turning plain containers into the dataclasses is
generic (`odk.typed`), and the facts a rule needs are asked from where they live
(`odk.architecture`, `odk.schedulers`). `trainer.precision` and `trainer.strategy` are checked
against Lightning's own registries by the train stage (`odk.guards.check_trainer`): asking
Lightning imports torch, and the torch-free stages load these settings too.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odk.architecture import BASELINE_NAMES, STAGE_WIDTHS, check_r
from odk.errors import ConfigError, redact
from odk.guards import require_settings
from odk.schedulers import SCHEDULERS
from odk.typed import build, show, unknown_key

DATASETS = ("cifar10", "cifar100")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


@dataclass
class DatasetConfig:
    name: str = "cifar10"
    url: str = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    md5: str = "c58f30108f718f92721af3b95e74349a"


@dataclass
class DataModuleConfig:
    data_dir: str = "data"
    batch_size: int = 128
    num_workers: int = 4
    subset_fraction: float = 1.0
    valid_size: float = 0.1


@dataclass
class ModelConfig:
    odk_layers: list[int] = field(default_factory=lambda: [3, 4])
    num_matrices: int | str = 1
    r: int = 1


@dataclass
class SchedulerConfig:
    name: str = "none"


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    strategy: str = "auto"
    precision: int | str = "32-true"
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0


@dataclass
class CompareConfig:
    max_accuracy_drop: float = 0.03


@dataclass
class Config:
    """Every setting of params.yaml; the defaults are params.yaml's."""

    seed: int = 42
    seeds: list[int] = field(default_factory=lambda: [42])
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    data_module: DataModuleConfig = field(default_factory=DataModuleConfig)
    learning_rate: float = 0.001
    max_epochs: int = 20
    baseline_name: str = "resnet18"
    model: ModelConfig = field(default_factory=ModelConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)


def _is_url(url: str) -> bool:
    return url.startswith(("https://", "file://")) or ("://" not in url and url != "")


def _is_devices(d: Any) -> bool:
    if isinstance(d, str):
        return d == "auto" or re.fullmatch(r"-1|\d+(,\d+)*,?", d) is not None
    if isinstance(d, list):
        return d != [] and len(set(d)) == len(d) and min(d) >= 0
    return d >= 1 or d == -1


def _is_seeds(v: list[int]) -> bool:
    return v != [] and len(set(v)) == len(v) and all(0 <= s < 2**32 for s in v)


def _is_limit(v: float) -> bool:
    return (isinstance(v, int) and v >= 1) or (isinstance(v, float) and 0 < v <= 1)


def _is_stages(v: list[int]) -> bool:
    return v != [] and len(set(v)) == len(v) and set(v) <= set(range(1, len(STAGE_WIDTHS) + 1))


_LIMIT = "a fraction in (0, 1.0] or a number of batches >= 1"
_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("seed", lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    ("seeds", _is_seeds, "a non-empty list of distinct integers in [0, 2**32)"),
    ("dataset.name", lambda v: v in DATASETS, ", ".join(DATASETS)),
    ("dataset.url", _is_url, "an https:// URL, a file:// URL or a local path"),
    ("dataset.md5", lambda v: re.fullmatch(r"[0-9a-fA-F]{32}", v) is not None, "32 hex digits"),
    ("data_module.data_dir", lambda v: v != "", "a directory path"),
    ("data_module.batch_size", lambda v: v >= 1, "an integer >= 1"),
    ("data_module.num_workers", lambda v: v >= 0, "an integer >= 0"),
    ("data_module.subset_fraction", lambda v: 0 < v <= 1, "a number in (0, 1]"),
    ("data_module.valid_size", lambda v: 0 < v < 1, "a number in (0, 1)"),
    ("learning_rate", lambda v: 0 < v < math.inf, "a finite number > 0"),
    ("max_epochs", lambda v: v >= 1, "an integer >= 1"),
    ("baseline_name", lambda v: v in BASELINE_NAMES, ", ".join(BASELINE_NAMES)),
    ("model.odk_layers", _is_stages, "a non-empty list of distinct stages in 1..4"),
    # No upper bound: odk.models clamps num_matrices to each layer's maximum, so a sweep over
    # 1..9 works whatever the stages.
    (
        "model.num_matrices",
        lambda v: v == "max" or (type(v) is int and v >= 1),
        "an integer >= 1 or max",
    ),
    ("model.r", lambda v: v >= 1, "an integer >= 1"),
    ("scheduler.name", lambda v: v in SCHEDULERS, ", ".join(SCHEDULERS)),
    ("trainer.accelerator", lambda v: v in ACCELERATORS, ", ".join(ACCELERATORS)),
    ("trainer.devices", _is_devices, "auto, a count >= 1, -1 (all) or a list of device indices"),
    ("trainer.limit_train_batches", _is_limit, _LIMIT),
    ("trainer.limit_val_batches", _is_limit, _LIMIT),
    ("compare.max_accuracy_drop", lambda v: 0 <= v < 1, "a number in [0, 1)"),
]


def load_config(overrides: Sequence[str] = (), params_path: str | Path = "params.yaml") -> Config:
    """Load params.yaml, apply Hydra overrides and validate every setting.

    Args:
        overrides: Hydra overrides such as `data_module.batch_size=64`.
        params_path: the YAML file holding the settings.

    Raises:
        ConfigError: a missing or unreadable file, a bad override, or a bad setting.
    """
    path = Path(params_path)
    if not path.is_file() or path.suffix != ".yaml":
        raise ConfigError(
            f"{path} not found: a params .yaml file is needed (run from the repo root)"
        )
    settings = _compose(path, list(overrides))
    require_settings(settings, Config, path)  # no setting falls back on a built-in default
    return validate_config(build(Config, settings))


def validate_config(cfg: Config) -> Config:
    """Check the names, types and ranges of every setting of `cfg`; return a checked copy."""
    cfg = build(Config, config_to_dict(cfg))
    for key, ok, allowed in _RULES:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if not ok(value):
            raise ConfigError(f"{key}={redact(show(value))} is not allowed; allowed: {allowed}")
    check_r(cfg.model.r, cfg.model.odk_layers)  # r must divide the width of every ODK stage
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The settings as plain nested dicts and lists (JSON- and YAML-serializable)."""
    return dataclasses.asdict(cfg)


def _compose(path: Path, overrides: list[str]) -> dict[str, Any]:
    """params.yaml with the overrides applied, as plain containers."""
    import yaml
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except Exception as error:  # antlr and Hydra raise several types here
            why = f"expected KEY=VALUE in Hydra's override syntax ({_first_line(error)})"
            raise ConfigError(f"cannot parse the override {override!r}: {why}") from None
    try:
        config_dir = str(path.parent.resolve())
        with initialize_config_dir(config_dir=config_dir, version_base=None, job_name="odk"):
            composed = compose(config_name=path.stem, overrides=overrides)
        return OmegaConf.to_container(composed, resolve=True)  # type: ignore[return-value]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        why = getattr(error, "problem", None) or _first_line(error)
        raise ConfigError(f"{path} is not valid YAML{where}: {why}") from None
    except HydraException as error:
        found = re.match(r"Could not override '([^']+)'", str(error))
        if found is None:
            raise ConfigError(f"{path}: {_first_line(error)}") from None
        raise ConfigError(
            unknown_key(Config, found.group(1), f"it is missing from {path}")
        ) from None
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or path
        raise ConfigError(f"{key}: {_first_line(error)}") from None
    except (ValueError, KeyError, TypeError) as error:  # e.g. OmegaConf on `model.r.x=1`
        raise ConfigError(f"cannot apply {' '.join(overrides)}: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
