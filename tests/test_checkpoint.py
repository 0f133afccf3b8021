"""Model files: the same model gives the same bytes; damaged and crafted files give one line."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import pytest
import torch

import odk
from odk.checkpoint import load_model, read_model_file, save_model
from odk.cli import main

ARCH = {"baseline_name": "resnet18", "num_classes": 3, "odk_layers": [3, 4], "num_matrices": 1}
CLASSES = ["cat", "dog", "emu"]


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The contents of a valid model file."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "odk.ckpt"
    save_model(path, odk.build_model(**ARCH).eval(), ARCH, CLASSES, [0.5] * 3, [0.25] * 3)
    return torch.load(path, weights_only=True)


def test_the_same_model_gives_the_same_bytes_whatever_the_process(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = odk.build_model(**ARCH).eval()
    digests = []
    for pid in (7, 1234567):  # the temporary file's name holds the PID
        monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)
        path = save_model(
            tmp_path / f"run{pid}" / "odk.ckpt", model, ARCH, CLASSES, [0.5] * 3, [0.2] * 3
        )
        digests.append(hashlib.md5(path.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def _with(**changes: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def change(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, **changes}

    return change


def _arch(**changes: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda payload: {**payload, "arch": {**payload["arch"], **changes}}


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo EXPLOITED",))


CRAFTED = [
    pytest.param(
        _arch(depth=50),
        "arch does not fit build_model (got an unexpected keyword argument 'depth')",
        id="unknown-arch-key",
    ),
    pytest.param(_with(version="1"), "version '1' is not 1, 2, ...", id="version-as-string"),
    pytest.param(
        _with(version=99), "has model-file version 99; this odk reads up to 1", id="newer-version"
    ),
    pytest.param(
        _with(classes=["cat", "dog"]),
        "2 class names for a network with 3 outputs",
        id="fewer-class-names",
    ),
    pytest.param(
        _with(classes=["cat", "dog", 3]),
        "classes is not a list of class names",
        id="class-name-not-str",
    ),
    pytest.param(
        _with(arch=[1, 2]), "arch is not a mapping of build_model arguments", id="arch-not-dict"
    ),
    pytest.param(
        _with(mean=[0.5, 0.5]),
        "mean is not three finite numbers (one per RGB channel)",
        id="mean-of-two",
    ),
    pytest.param(_with(std=[0.25, 0.0, 0.25]), "std holds a value <= 0", id="std-zero"),
    pytest.param(
        _with(state_dict={"fc.weight": "not a tensor"}),
        "state_dict is not a mapping of names",
        id="state-not-tensors",
    ),
    pytest.param(_with(extra=[]), "extra is not a mapping", id="extra-not-dict"),
    pytest.param(
        _arch(odk_layers="x"),
        "its arch is refused (model.odk_layers='x' is not allowed",
        id="bad-arch-value",
    ),
    pytest.param(_arch(num_classes=4), "4 outputs", id="outputs-differ"),
    pytest.param(
        _with(state_dict={}),
        "does not match its own architecture: Error(s) in loading state_dict",
        id="empty-state",
    ),
    pytest.param(_with(arch={**ARCH, "r": 5}), "its arch is refused", id="r-not-dividing"),
    pytest.param(
        lambda p: {**p, "extra": {"hook": _Exploit()}},
        "it refers to posix.system, which could run",
        id="code-in-extra",
    ),
]


@pytest.mark.parametrize("command", ["predict", "export"])
@pytest.mark.parametrize(("craft", "message"), CRAFTED)
def test_crafted_model_files_are_refused_in_one_line(
    tmp_path, payload, capsys, command, craft, message
):
    path = tmp_path / "crafted.ckpt"
    torch.save(craft(payload), path)
    exported = tmp_path / "x.onnx"
    args = [str(tmp_path)] if command == "predict" else ["--format", "onnx", "-o", str(exported)]
    assert main([command, "--model", str(path), *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {path} ") and err.count("\n") == 1
    assert message in err and "weights_only" not in err and "EXPLOITED" not in out + err
    assert not exported.exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: b"", "is not a readable odk model file (empty file)"),
        (lambda data: data[: len(data) // 2], "damaged or truncated? RuntimeError: PytorchStream"),
        (lambda data: b"not a model", "(not a PyTorch file: unreadable contents)"),
    ],
    ids=["empty", "truncated", "text"],
)
def test_damaged_model_files_are_refused_in_one_line(tmp_path, payload, capsys, damage, message):
    good = tmp_path / "good.ckpt"
    torch.save(payload, good)
    path = tmp_path / "damaged.ckpt"
    path.write_bytes(damage(good.read_bytes()))
    assert main(["predict", "--model", str(path), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path} ") and err.count("\n") == 1 and message in err


def test_a_valid_file_still_loads(tmp_path, payload):
    path = tmp_path / "odk.ckpt"
    torch.save(payload, path)
    assert read_model_file(path)["classes"] == CLASSES
    model, meta = load_model(path)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3) and meta["extra"] == {}


def test_files_written_before_the_extra_field_still_load(tmp_path, payload):
    path = tmp_path / "odk.ckpt"
    torch.save({k: v for k, v in payload.items() if k != "extra"}, path)
    assert load_model(path)[1]["extra"] == {}
