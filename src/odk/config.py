"""Settings: params.yaml through Hydra, checked against a typed schema.

`load_config` composes params.yaml with Hydra's compose API (no output folder, no change of
working directory), applies command-line overrides (`data_module.batch_size=64`), merges the
result into the dataclasses below and checks every value. A bad setting stops with one line
naming the setting, the value and what is allowed, before any data is touched.
`main_entry` is the `__main__` of every stage. The facts a rule needs are asked from where they
live (`odk.architecture`, `odk.schedulers`); `trainer.precision` and `trainer.strategy` are
checked against Lightning's own registries by the train stage (`odk.guards.check_trainer`),
since asking Lightning imports torch and the torch-free stages load these settings too.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from odk.architecture import BASELINE_NAMES, STAGE_WIDTHS, check_r
from odk.errors import ConfigError, OdkError, redact
from odk.guards import require_settings
from odk.schedulers import SCHEDULERS

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
    return validate_config(_build(Config, settings, ""))


def validate_config(cfg: Config) -> Config:
    """Check the names, types and ranges of every setting of `cfg`; return a checked copy."""
    cfg = _build(Config, config_to_dict(cfg), "")
    for key, ok, allowed in _RULES:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if not ok(value):
            raise ConfigError(f"{key}={redact(_show(value))} is not allowed; allowed: {allowed}")
    check_r(cfg.model.r, cfg.model.odk_layers)  # r must divide the width of every ODK stage
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The settings as plain nested dicts and lists (JSON- and YAML-serializable)."""
    return dataclasses.asdict(cfg)


def main_entry(
    stage: Callable[[Config], object],
    argv: Sequence[str] | None = None,
    params_path: str | Path = "params.yaml",
) -> None:
    """Run `stage` as a command: load the settings with argv as overrides, report errors.

    Args:
        stage: the stage function; its docstring's first line is shown by `--help`.
        argv: Hydra overrides (default: `sys.argv[1:]`); `-h`/`--help` prints the usage.
        params_path: the YAML file holding the settings.

    Raises:
        SystemExit: 2 after an `OdkError` (printed as `error: <message>`), 130 on Ctrl-C.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(_usage(stage, params_path))
        return
    try:
        stage(load_config(args, params_path))
    except OdkError as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted: stopped before finishing; outputs left as they were", file=sys.stderr)
        raise SystemExit(130) from None


def _usage(stage: Callable[[Config], object], params_path: str | Path) -> str:
    module = stage.__module__
    if module == "__main__":  # `python -m odk.stages.x`: the real name is on the module's spec
        spec = getattr(stage, "__globals__", {}).get("__spec__")
        module = spec.name if spec is not None else stage.__name__
    summary = (stage.__doc__ or "").strip().split("\n\n")[0]
    return (
        f"usage: python -m {module} [KEY=VALUE ...]\n\n{summary}\n\n"
        f"Settings come from {params_path}; each KEY=VALUE is a Hydra override, e.g.\n"
        "  data_module.subset_fraction=0.1  model.r=4  'model.odk_layers=[2,3,4]'"
    )


def _show(value: Any) -> str:
    """A value as written on the command line; strings that look like another type quoted."""
    if isinstance(value, str):
        plain = value and not re.fullmatch(r"[-+.\d_eE]+|true|false|null|~|\[.*\]", value, re.I)
        return value if plain else f'"{value}"'
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, list):
        return f"[{','.join(_show(v) for v in value)}]"
    return str(value)


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
        raise ConfigError(_unknown_key(found.group(1), f"it is missing from {path}")) from None
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or path
        raise ConfigError(f"{key}: {_first_line(error)}") from None
    except (ValueError, KeyError, TypeError) as error:  # e.g. OmegaConf on `model.r.x=1`
        raise ConfigError(f"cannot apply {' '.join(overrides)}: {_first_line(error)}") from None


def _unknown_key(key: str, missing: str = "") -> str:
    """The message for a setting `key` that the schema (or params.yaml) does not have."""
    cls: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return f"{key} is not a setting: {'.'.join(parts[:i])} is a single value"
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            where = f"in {'.'.join(parts[:i])}" if i else "at the top level"
            return (
                f"{'.'.join(parts[: i + 1])} is not a setting; allowed {where}: {', '.join(names)}"
            )
        cls = typing.get_type_hints(cls)[part]
    return f"cannot override {key}: {missing}; add it there or use +{key}=VALUE"


def _build(cls: Any, data: Any, prefix: str) -> Any:
    """An instance of the dataclass `cls` from plain containers, checking names and types."""
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(data, dict):
        allowed = f"a mapping of {', '.join(names)}"
        raise ConfigError(f"{prefix[:-1]}={_show(data)} is not allowed; allowed: {allowed}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(_unknown_key(f"{prefix}{key}"))
        if dataclasses.is_dataclass(hints[key]):
            values[key] = _build(hints[key], value, f"{prefix}{key}.")
        else:
            values[key] = _typed(f"{prefix}{key}", value, hints[key])
    return cls(**values)


def _typed(key: str, value: Any, hint: Any) -> Any:
    """`value` if it has the type `hint` (an int is a valid float; a bool is no number)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is float and type(value) in (int, float):
            return float(value)
        if option in (int, str) and type(value) is option:
            return value
        is_list = typing.get_origin(option) is list and type(value) is list
        if is_list and all(type(v) is int for v in value):
            return list(value)
    names = {int: "an integer", float: "a number", str: "a string"}
    allowed = " or ".join(names.get(o, "a list of integers") for o in options)
    raise ConfigError(f"{key}={_show(value)} is not allowed; allowed: {allowed}")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
