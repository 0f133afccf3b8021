"""`odk grid`: queue the research grid as DVC experiments, run them, and report the result.

The grid is declared once, in a YAML file (`results/grid.yaml`): the seeds, the data regimes
and the ODK variants, each a set of `params.yaml` overrides. Every regime x variant becomes one
`dvc exp run --queue` experiment (named `<regime>-<variant>`), which trains the baseline, the
ODK model and the parameter-matched control once per seed; `dvc queue start -j N` runs them,
N at a time. When the queue is empty, `odk report` writes the table and figure of every
experiment into the output folder, next to `RUN.md`: the machine, the settings, the wall time
and the exact command.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from odk.atomic import write_text
from odk.errors import ConfigError, OdkError

POLL_SECONDS = 10
IDLE_POLLS = 6  # polls with work queued but no queue worker alive before the grid gives up


@dataclass(frozen=True)
class Experiment:
    """One queued experiment: its name and its `-S key=value` overrides."""

    name: str
    overrides: tuple[str, ...]


def read_grid(path: str | Path) -> dict[str, Any]:
    """The grid file: `seeds` (a list), `regimes` and `variants` (name -> overrides).

    Raises:
        ConfigError: the file is missing, not YAML, or not of that shape.
    """
    import yaml

    path = Path(path)
    try:
        grid = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        where = getattr(exc, "problem_mark", None)  # YAML's errors span several lines
        reason = getattr(exc, "problem", None) or getattr(exc, "strerror", None) or exc
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise ConfigError(f"cannot read the grid file {path}: {reason}{at}") from None
    shape = "seeds: [..], regimes: {name: {key: value}}, variants: {name: {key: value}}"
    if not isinstance(grid, dict) or set(grid) != {"seeds", "regimes", "variants"}:
        raise ConfigError(f"{path} is not a grid file; allowed: a mapping of {shape}")
    seeds = grid["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(type(s) is int for s in seeds):
        raise ConfigError(f"seeds={seeds!r} in {path} is not allowed; allowed: a list of integers")
    for part in ("regimes", "variants"):
        table = grid[part]
        if (
            not isinstance(table, dict)
            or not table
            or not all(isinstance(v, dict | None) for v in table.values())
        ):
            raise ConfigError(f"{part} in {path} is not allowed; allowed: {shape}")
    return grid


def experiments(
    grid: dict[str, Any], only: Sequence[str] = (), extra: Sequence[str] = ()
) -> list[Experiment]:
    """Every regime x variant of the grid (or those named `regime-variant` in `only`)."""
    seeds = ",".join(str(s) for s in grid["seeds"])
    chosen = []
    for regime, regime_settings in grid["regimes"].items():
        for variant, variant_settings in grid["variants"].items():
            name = f"{regime}-{variant}"
            if only and name not in only:
                continue
            settings = {**(regime_settings or {}), **(variant_settings or {})}
            overrides = [f"seeds=[{seeds}]", *(f"{k}={_yaml(v)}" for k, v in settings.items())]
            chosen.append(Experiment(name, (*overrides, *extra)))
    names = {f"{r}-{v}" for r in grid["regimes"] for v in grid["variants"]}
    unknown = sorted(set(only) - names)
    if unknown:
        allowed = ", ".join(sorted(names))
        raise ConfigError(f"--only {', '.join(unknown)} is not in the grid; allowed: {allowed}")
    return chosen


def _yaml(value: Any) -> str:
    """A value as `dvc exp run -S` writes it into params.yaml."""
    if isinstance(value, list):
        return f"[{','.join(_yaml(v) for v in value)}]"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def dvc_commands(chosen: list[Experiment], jobs: int) -> list[list[str]]:
    """The `dvc exp run --queue` command of each experiment, then `dvc queue start -j jobs`."""
    commands = []
    for exp in chosen:
        sets = [arg for override in exp.overrides for arg in ("-S", override)]
        commands.append(["dvc", "exp", "run", "--queue", "-n", exp.name, *sets])
    commands.append(["dvc", "queue", "start", "-j", str(jobs)])
    return commands


def run_grid(
    grid_path: str | Path,
    out_dir: str | Path,
    jobs: int = 1,
    only: Sequence[str] = (),
    extra: Sequence[str] = (),
    repo: str | Path = ".",
) -> dict[str, Any]:
    """Queue and run the grid's experiments, wait for them, write the report and `RUN.md`.

    Returns:
        `commands` (the dvc commands run), `status` (`dvc queue status` at the end), `wall_s`
        and `report` (what `odk.report.write_report` returned).

    Raises:
        OdkError: a dvc command failed, or an experiment failed (the others still ran).
    """
    from odk.report import write_report

    chosen = experiments(read_grid(grid_path), only, extra)
    commands = dvc_commands(chosen, jobs)
    settings = key_settings(repo, extra)  # before the experiments change params.yaml
    start = time.monotonic()
    for command in commands:
        _dvc(command, repo)
    status = _wait(repo)
    wall = time.monotonic() - start
    report = write_report(repo, out_dir)
    invocation = " ".join(shlex.quote(a) for a in ["odk", "grid", *sys.argv[2:]])
    record = run_record(commands, invocation, status, wall, extra, settings)
    write_text(Path(out_dir) / "RUN.md", record)
    failed = status.count("Failed")
    if failed:
        raise OdkError(f"{failed} experiment(s) of the grid failed; see `dvc queue logs NAME`")
    return {"commands": commands, "status": status, "wall_s": wall, "report": report}


def _dvc_env() -> dict[str, str]:
    """The environment with this interpreter's `bin/` first on PATH.

    `dvc queue start` starts its workers as a bare `dvc` from PATH; from a virtual environment
    that is not activated (`.venv/bin/odk grid`, `make`), none is found, the workers die at
    once and nothing tells the queue.
    """
    bin_dir = str(Path(sys.executable).parent)
    return os.environ | {"PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}


def _dvc(command: list[str], repo: str | Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=repo,
        capture_output=True,
        text=True,
        env=_dvc_env(),
    )
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        raise OdkError(f"`{' '.join(command)}` failed: {lines[-1]}")
    return proc.stdout


def _wait(repo: str | Path) -> str:
    """Poll `dvc queue status` until nothing is queued or running; return the last status.

    Raises:
        OdkError: experiments stay queued while no queue worker is alive.
    """
    idle = 0
    while True:
        status = _dvc(["dvc", "queue", "status"], repo)
        if "Queued" not in status and "Running" not in status:
            return status
        no_worker = "Running" not in status and "Worker status: 0 active, 0 idle" in status
        idle = idle + 1 if no_worker else 0
        if idle >= IDLE_POLLS:
            raise OdkError(
                "experiments are queued but no `dvc queue` worker is running (see "
                ".dvc/tmp/exps/celery/*.out); start them with `dvc queue start -j N`, or "
                "`dvc queue remove --queued` to give up"
            )
        time.sleep(POLL_SECONDS)


def machine() -> str:
    """The machine in words: CPU, cores, GPUs, torch."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        names = [x for x in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in x]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    except OSError:
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return (
        f"{cpu}, {os.cpu_count()} cores; {', '.join(gpus) or 'no GPU'}; torch {torch.__version__}"
    )


def key_settings(repo: str | Path, extra: Sequence[str]) -> str:
    """Epochs and precision: committed params.yaml, then the grid's extra overrides."""
    import yaml

    params = yaml.safe_load((Path(repo) / "params.yaml").read_text()) or {}
    found = {
        "max_epochs": params.get("max_epochs"),
        "trainer.precision": (params.get("trainer") or {}).get("precision"),
    }
    for override in extra:
        key, _, value = override.partition("=")
        if key in found:
            found[key] = value
    return ", ".join(f"{k}={v}" for k, v in found.items())


def run_record(
    commands: list[list[str]],
    invocation: str,
    status: str,
    wall: float,
    extra: Sequence[str],
    settings: str,
) -> str:
    """`RUN.md`: what ran, where, how long, and how to run it again."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    shown = "\n".join(" ".join(shlex.quote(a) for a in c) for c in commands)
    return (
        f"# How these results were made\n\n- finished: {when}\n- machine: {machine()}\n"
        f"- {settings}\n- wall time of the whole grid: {wall / 60:.1f} min\n"
        f"- extra settings: {' '.join(extra) or 'none (params.yaml as committed)'}\n\n"
        f"The command:\n\n```\n{invocation}\n```\n\nwhich ran:\n\n```\n{shown}\n```\n\n"
        f"`dvc queue status` at the end:\n\n```\n{status.strip()}\n```\n"
    )
