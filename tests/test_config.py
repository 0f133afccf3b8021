"""Settings: params.yaml through Hydra, overrides, validation messages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from odk.config import (
    Config,
    DataModuleConfig,
    config_to_dict,
    load_config,
    validate_config,
)
from odk.errors import ConfigError

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
R3 = (
    "model.r=3 is not allowed: r must divide the output channels of every ODK layer "
    "(256 in stage 3, 512 in stage 4); allowed: 1, 2, 4, 8, 16, 32, 64, 128, 256"
)


def test_params_yaml_holds_the_schema_defaults():
    assert load_config((), PARAMS) == Config()


def test_every_setting_in_params_yaml_has_a_comment():
    for line in PARAMS.read_text().splitlines():
        if re.match(r"\s*\w+:\s*[^\s#]", line):  # a key with a value, not a section
            assert re.search(r"\S\s+# \w", line), f"no comment: {line!r}"


GOOD = {
    "data_module.subset_fraction=1": 1.0,
    "learning_rate=1e-3": 0.001,
    "model.num_matrices=max": "max",
    "model.odk_layers=[2,3,4]": [2, 3, 4],
    "model.r=128": 128,
    "baseline_name=ResNet-34": "ResNet-34",
    "dataset.name=cifar100": "cifar100",
    "dataset.url=file:///tmp/a.tar.gz": "file:///tmp/a.tar.gz",
    "trainer.precision=16": 16,
    "trainer.devices=[0,1]": [0, 1],
    "trainer.strategy=ddp_find_unused_parameters_true": "ddp_find_unused_parameters_true",
    "trainer.limit_train_batches=10": 10,
    "trainer.limit_val_batches=0.25": 0.25,
    "scheduler.name=onecycle": "onecycle",
    "compare.max_accuracy_drop=0": 0.0,
}


def test_good_overrides_are_applied_with_their_types():
    cfg = load_config(list(GOOD), PARAMS)
    for override, expected in GOOD.items():
        value = _get(cfg, override.split("=")[0])
        assert value == expected and type(value) is type(expected), override


@pytest.mark.parametrize(
    "key, value",
    [
        ("model.num_matrices", 4),
        ("model.r", 256),
        ("dataset.url", "archives/a.tar.gz"),
        ("dataset.md5", "C58F30108F718F92721AF3B95E74349A"),
        ("trainer.precision", "bf16-mixed"),
        ("trainer.devices", 2),
        ("trainer.devices", -1),
        ("trainer.devices", "0,1"),
        ("trainer.accelerator", "gpu"),
        ("data_module.num_workers", 0),
        ("seed", 0),
        ("seeds", [0, 1, 2]),
        ("seeds", [7]),
    ],
)
def test_good_values_are_allowed(key, value):
    assert _get(validate_config(_with(key, value)), key) == value


@pytest.mark.parametrize("stages", ["[1]", "[3,4]", "[1,2,3,4]"])
def test_num_matrices_above_a_layers_maximum_is_allowed_for_sweeps(stages):
    # odk.models clamps it per layer, so `-S model.num_matrices=1,2,4,9` works for any stages
    cfg = load_config([f"model.odk_layers={stages}", "model.num_matrices=9"], PARAMS)
    assert cfg.model.num_matrices == 9


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.r=3", R3),
        ("model.odk_layers=[5]", "model.odk_layers=[5] is not allowed; allowed: a non-empty list"),
        ("data_module.valid_size=0", "valid_size=0.0 is not allowed; allowed: a number in (0, 1)"),
        ("baseline_name=vgg", "baseline_name=vgg is not allowed; allowed: resnet18, Resnet-18"),
        ("seed=true", "seed=true is not allowed; allowed: an integer"),
        ("seeds=3", "seeds=3 is not allowed; allowed: a list of integers"),
        ("seeds=[0,x]", "allowed: a list of integers"),
        ("seed=null", "seed=null is not allowed; allowed: an integer"),
        ("data_module.batch_size=abc", "batch_size=abc is not allowed; allowed: an integer"),
        ("data_module.batch_size=1.5", "data_module.batch_size=1.5 is not allowed"),
        ("data_module.batch_size='12'", 'data_module.batch_size="12" is not allowed'),
        ("learning_rate=fast", "learning_rate=fast is not allowed; allowed: a number"),
        ("learning_rate=nan", "learning_rate=nan is not allowed; allowed: a finite number > 0"),
        ("model.odk_layers=3", "model.odk_layers=3 is not allowed; allowed: a list of integers"),
        ("model.odk_layers=[true]", "allowed: a list of integers"),
        ("dataset.url=''", 'dataset.url="" is not allowed'),
        ("+foo=1", "foo is not a setting; allowed at the top level: seed, seeds, dataset"),
        ("foo=1", "foo is not a setting; allowed at the top level"),
        ("data_module.foo=1", "data_module.foo is not a setting; allowed in data_module: data_dir"),
        ("+model.depth=3", "model.depth is not a setting; allowed in model: odk_layers"),
        ("model=3", "model=3 is not allowed; allowed: a mapping of odk_layers, num_matrices, r"),
        ("model.r.x=1", "model.r.x is not a setting: model.r is a single value"),
        ("model.odk_layers.x=1", "cannot apply model.odk_layers.x=1"),
        ("data_module.batch_size=[", "cannot parse the override 'data_module.batch_size=['"),
        ("--verbose", "cannot parse the override '--verbose'"),
        ("seed=${missing}", "seed: Interpolation key 'missing' not found"),
    ],
)
def test_bad_override_stops_with_one_line(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config([override], PARAMS)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("seed", -1, "seed=-1 is not allowed; allowed: an integer in [0, 2**32)"),
        ("seed", 2**32, "allowed: an integer in [0, 2**32)"),
        ("seeds", [], "seeds=[] is not allowed; allowed: a non-empty list of distinct integers"),
        ("seeds", [1, 1], "seeds=[1,1] is not allowed; allowed: a non-empty list of distinct"),
        ("seeds", [-1], "seeds=[-1] is not allowed; allowed: a non-empty list of distinct"),
        ("dataset.name", "mnist", "dataset.name=mnist is not allowed; allowed: cifar10, cifar100"),
        ("dataset.url", "http://a.org/c.tar.gz", "allowed: an https:// URL, a file:// URL or a"),
        ("dataset.url", "ftp://a.org/c.tar.gz", "dataset.url=ftp://a.org/c.tar.gz is not allowed"),
        ("dataset.md5", "abc", "dataset.md5=abc is not allowed; allowed: 32 hex digits"),
        ("dataset.md5", "g" * 32, "allowed: 32 hex digits"),
        ("data_module.data_dir", "", 'data_module.data_dir="" is not allowed'),
        ("data_module.batch_size", 0, "batch_size=0 is not allowed; allowed: an integer >= 1"),
        ("data_module.num_workers", -1, "allowed: an integer >= 0"),
        ("data_module.subset_fraction", 0.0, "=0.0 is not allowed; allowed: a number in (0, 1]"),
        ("data_module.subset_fraction", 1.5, "allowed: a number in (0, 1]"),
        ("data_module.valid_size", 1.0, "allowed: a number in (0, 1)"),
        ("learning_rate", 0.0, "learning_rate=0.0 is not allowed; allowed: a finite number > 0"),
        ("learning_rate", -0.1, "allowed: a finite number > 0"),
        ("learning_rate", float("inf"), "learning_rate=inf is not allowed"),
        ("max_epochs", 0, "max_epochs=0 is not allowed; allowed: an integer >= 1"),
        ("model.odk_layers", [], "model.odk_layers=[] is not allowed"),
        ("model.odk_layers", [3, 3], "model.odk_layers=[3,3] is not allowed"),
        ("model.odk_layers", [0], "model.odk_layers=[0] is not allowed"),
        ("model.num_matrices", 0, "num_matrices=0 is not allowed; allowed: an integer >= 1 or max"),
        ("model.num_matrices", "most", "allowed: an integer >= 1 or max"),
        ("model.r", 0, "model.r=0 is not allowed; allowed: an integer >= 1"),
        ("model.r", 512, "model.r=512 is not allowed: r must divide"),
        ("scheduler.name", "step", "scheduler.name=step is not allowed; allowed: none, cosine"),
        ("trainer.accelerator", "quantum", "trainer.accelerator=quantum is not allowed"),
        ("trainer.devices", 0, "trainer.devices=0 is not allowed"),
        ("trainer.devices", [0, 0], "trainer.devices=[0,0] is not allowed"),
        ("trainer.devices", "all", "trainer.devices=all is not allowed"),
        ("trainer.limit_train_batches", 0, "allowed: a fraction in (0, 1.0] or a number of"),
        ("trainer.limit_val_batches", 1.5, "trainer.limit_val_batches=1.5 is not allowed"),
        ("compare.max_accuracy_drop", 1.0, "allowed: a number in [0, 1)"),
        ("compare.max_accuracy_drop", -0.1, "compare.max_accuracy_drop=-0.1 is not allowed"),
    ],
)
def test_bad_value_stops_with_one_line(key, value, expected):
    with pytest.raises(ConfigError) as info:
        validate_config(_with(key, value))
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def _get(cfg: Config, key: str) -> object:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _with(key: str, value: object) -> Config:
    """The default Config with one setting changed, unchecked."""
    cfg = Config()
    *sections, name = key.split(".")
    node = cfg
    for section in sections:
        node = getattr(node, section)
    setattr(node, name, value)
    return cfg


def test_r_message_is_exact():
    with pytest.raises(ConfigError, match=re.escape(R3) + "$"):
        load_config(["model.r=3"], PARAMS)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("seed: [1\n", "is not valid YAML at line 2"),
        ("- 1\n- 2\n", "must be a DictConfig"),
        ("seed: 1\nseed: 2\n", "seed"),
    ],
)
def test_unreadable_params_file_stops_with_one_line(tmp_path, text, expected):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(expected)) as info:
        load_config((), path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["missing.yaml", "params.yml"])
def test_missing_params_file(tmp_path, name):
    with pytest.raises(ConfigError, match="not found"):
        load_config((), tmp_path / name)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "params.yaml holds no settings: every setting must be in the file"),
        ("# nothing but a comment\n", "params.yaml holds no settings"),
        (
            "seed: 7\n",
            "params.yaml lacks seeds, dataset, data_module, learning_rate, max_epochs, "
            "baseline_name and 4 more: every setting must be in the file",
        ),
        (PARAMS.read_text().replace("  r: 1 ", "  # r: 1 "), "params.yaml lacks model.r: every"),
    ],
)
def test_a_file_missing_settings_is_refused(tmp_path, text, expected):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(expected)) as info:
        load_config((), path)
    assert "\n" not in str(info.value)


def test_a_setting_missing_from_the_file_can_be_added_by_an_override(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS.read_text().replace("  batch_size: 128 ", "  # batch_size: 128 "))
    with pytest.raises(ConfigError, match=r"it is missing from .*params.yaml; add it there"):
        load_config(["data_module.batch_size=3"], path)
    assert load_config(["+data_module.batch_size=3"], path).data_module.batch_size == 3


def test_validate_config_checks_a_config_built_in_code():
    assert validate_config(Config()) == Config()
    with pytest.raises(ConfigError, match="data_module.batch_size=0 is not allowed"):
        validate_config(Config(data_module=DataModuleConfig(batch_size=0)))
    with pytest.raises(ConfigError, match='seed="1" is not allowed; allowed: an integer'):
        validate_config(Config(seed="1"))


def test_config_to_dict_is_plain_and_json_ready():
    data = config_to_dict(load_config(["model.num_matrices=max"], PARAMS))
    assert data["model"] == {"odk_layers": [3, 4], "num_matrices": "max", "r": 1}
    assert json.loads(json.dumps(data)) == data
