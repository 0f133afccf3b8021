"""dvc.yaml's hand-kept lists match the code: each stage's deps and params, the resume key.

A stage must list the odk modules it imports (or DVC misses a code change) and only those (or
DVC reruns it for nothing); likewise the settings it reads, and only those: a setting listed
but unread retrains models when it changes, one read but unlisted leaves stale results.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from conftest import write_params
from odk.config import Config, load_config
from odk.stages import Run, compare, download, evaluate, split, train
from odk.stages.train import stage_settings

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _module_path(module: str) -> Path:
    path = REPO / "src" / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _is_type_checking(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:`: imports for type checkers only, never run."""
    return isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")


def _odk_imports(path: Path) -> set[str]:
    """The odk modules a file imports anywhere (top level or inside functions).

    `from odk.stages import train` imports `odk.stages.train` as well as `odk.stages`.
    """
    found, todo = set(), [ast.parse(path.read_text())]
    while todo:
        node = todo.pop()
        todo += [child for child in ast.iter_child_nodes(node) if not _is_type_checking(child)]
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "odk":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # kept if a module
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "odk"}
    return {name for name in found if _module_path(name).is_file()}


def _packages(module: str) -> set[str]:
    """The packages Python imports before `module`: `odk.stages.x` -> `odk`, `odk.stages`."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _imported_closure(module: str) -> set[str]:
    """Every src/ file that running `python -m module` imports, relative to the repo.

    Transitive, parent packages included: importing `odk.stages.download` runs
    `odk/__init__.py` and `odk/stages/__init__.py` first, and whatever they import.
    """
    todo, seen = [module], set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [*_odk_imports(_module_path(name)), *_packages(name)]
    return {str(_module_path(m).relative_to(REPO)) for m in seen}


def _stage(name: str) -> dict:
    stage = STAGES[name]
    return stage.get("do", stage)


@pytest.mark.parametrize("name", list(STAGES))
def test_a_stage_depends_on_exactly_the_odk_modules_it_imports(name: str):
    stage = _stage(name)
    module = stage["cmd"].split()[2]  # python -m odk.stages.<name> ...
    listed = {d for d in stage["deps"] if d.startswith("src/")}
    assert listed == _imported_closure(module)


@pytest.mark.parametrize("kind", ["baseline", "odk", "matched"])
def test_training_params_are_the_settings_its_resume_key_holds(kind: str):
    assert _stage(f"train_{kind}")["params"] == list(stage_settings(kind))


def leaves(key: str) -> set[str]:
    """The leaf settings under a dotted key (`trainer` -> `trainer.accelerator`, ...)."""
    cls: typing.Any = Config
    for part in key.split("."):
        cls = typing.get_type_hints(cls)[part]
    if not dataclasses.is_dataclass(cls):
        return {key}
    return {leaf for f in dataclasses.fields(cls) for leaf in leaves(f"{key}.{f.name}")}


def listed_settings(name: str) -> set[str]:
    """The leaf settings a dvc.yaml stage lists as `params`."""
    return {leaf for key in _stage(name).get("params", []) for leaf in leaves(key)}


@pytest.mark.parametrize("kind", ["baseline", "odk", "matched"])
def test_the_resume_key_changes_with_exactly_the_listed_settings(kind: str):
    # _fingerprint itself, not the list it is meant to read: if it drifts from dvc.yaml's
    # params, a resumed run mixes settings or a rerun needlessly starts over.
    run, manifest = Run(kind, 0), {"sizes": {}}
    unchanged = train._fingerprint(run, Config(), manifest)
    every = {leaf for f in dataclasses.fields(Config) for leaf in leaves(f.name)}
    moved = set()
    for key in every:
        cfg, (*sections, name) = Config(), key.split(".")
        node: typing.Any = cfg
        for section in sections:
            node = getattr(node, section)
        setattr(node, name, "changed")
        if train._fingerprint(run, cfg, manifest) != unchanged:
            moved.add(key)
    assert moved == listed_settings(f"train_{kind}")


class Recorder:
    """Settings that write down every setting read through them (dotted, leaves only)."""

    def __init__(self, node: object, seen: set[str], prefix: str = "") -> None:
        self._node, self._seen, self._prefix = node, seen, prefix

    def __getattr__(self, name: str) -> object:
        value = getattr(self._node, name)
        key = f"{self._prefix}{name}"
        if dataclasses.is_dataclass(value):
            return Recorder(value, self._seen, f"{key}.")
        self._seen.add(key)
        return value


@pytest.mark.slow
def test_every_stage_reads_exactly_the_settings_it_lists(
    tmp_path: Path, cifar10_archive, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    # the resume key reads every listed setting by construction (checked above): not a use
    monkeypatch.setattr(train, "_fingerprint", lambda run, cfg, manifest: "fixed")
    params = write_params(tmp_path / "params.yaml", cifar10_archive, tmp_path / "data")
    overrides = ["data_module.batch_size=32", "max_epochs=1", "seeds=[0]"]
    overrides += ["trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
    overrides += ["trainer.accelerator=cpu", "trainer.devices=1"]
    cfg = load_config(overrides, params)
    calls = [("download", download.download, ()), ("split", split.split, ())]
    for kind in ("baseline", "odk", "matched"):
        calls.append((f"train_{kind}", train.train, (kind, 0)))
    for kind in ("baseline", "odk", "matched"):
        calls.append(("evaluate", evaluate.evaluate, (kind, 0)))
    calls.append(("compare", compare.compare, ()))
    for name, stage, args in calls:
        read: set[str] = set()
        stage(Recorder(cfg, read), *args)
        assert read == listed_settings(name), name
