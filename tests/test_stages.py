"""The stages' shared entry point: overrides from the command line, --help, errors in one line."""

from __future__ import annotations

import pytest

from odk.config import Config
from odk.errors import ConfigError, DataError
from odk.stages import main_entry
from test_config import PARAMS, R3


def _stage(cfg: Config) -> None:
    """Do nothing (a stage for the tests)."""
    _stage.seen = cfg


def test_main_entry_runs_the_stage_with_the_overrides():
    main_entry(_stage, ["data_module.batch_size=7"], PARAMS)
    assert _stage.seen.data_module.batch_size == 7


def test_main_entry_reads_sys_argv_by_default(monkeypatch):
    monkeypatch.setattr("sys.argv", ["prog", "max_epochs=3"])
    main_entry(_stage, params_path=PARAMS)
    assert _stage.seen.max_epochs == 3


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_main_entry_help(capsys, flag):
    _stage.seen = None
    main_entry(_stage, [flag], PARAMS)
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m {__name__} [KEY=VALUE ...]")
    assert "Do nothing (a stage for the tests)." in out and "Hydra override" in out
    assert _stage.seen is None


@pytest.mark.parametrize(
    "argv, error",
    [
        (["model.r=3"], None),
        ([], DataError("data/raw not found")),
        ([], ConfigError("bad")),
    ],
)
def test_main_entry_reports_odk_errors_in_one_line(capsys, argv, error):
    def stage(cfg: Config) -> None:
        raise error

    with pytest.raises(SystemExit) as info:
        main_entry(stage, argv, PARAMS)
    assert info.value.code == 2
    err = capsys.readouterr().err
    expected = f"error: {error}\n" if error else f"error: {R3}\n"
    assert err == expected


@pytest.mark.parametrize(
    "argv, error, shown",
    [
        (
            ["dataset.url=ftp://alice:S3cr3t@host/c.tar.gz"],
            None,
            "error: dataset.url=ftp://***@host/c.tar.gz is not allowed; allowed: an https:// URL, "
            "a file:// URL or a local path\n",
        ),
        (
            [],
            DataError("cannot read https://tok3n@host/a?sig=S3cr3t&v=1: 401"),
            "error: cannot read https://***@host/a?sig=***&v=1: 401\n",
        ),
    ],
)
def test_main_entry_redacts_credentials_in_urls(capsys, argv, error, shown):
    def stage(cfg: Config) -> None:
        raise error

    with pytest.raises(SystemExit):
        main_entry(stage, argv, PARAMS)
    assert capsys.readouterr().err == shown


def test_main_entry_exits_130_on_ctrl_c(capsys):
    def stage(cfg: Config) -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        main_entry(stage, [], PARAMS)
    assert info.value.code == 130
    assert capsys.readouterr().err.count("\n") == 1


def test_main_entry_lets_bugs_raise():
    def stage(cfg: Config) -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        main_entry(stage, [], PARAMS)
