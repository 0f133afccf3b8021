"""The pipeline stages: one module per `dvc.yaml` stage, and what they share to run as commands.

Each stage runs as `python -m odk.stages.<name>`: `main_entry` is the `__main__` of every stage,
which loads the settings with the command line as Hydra overrides and turns an `OdkError` into
one line and exit code 2. The three models of a
comparison (`KINDS`) train and are scored once per training seed (the `seeds` setting); `Run`
is one (model, seed) pair and knows where its files live, and `kind_main` is the entry point of
the stages that take a model kind.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from odk.config import Config, load_config
from odk.errors import OdkError, redact

# baseline: the dense network; odk: ODK convs in model.odk_layers; matched: the dense network
# thinned to the ODK model's trainable parameters (odk.matched).
KINDS = ("baseline", "odk", "matched")


@dataclass(frozen=True)
class Run:
    """One trained model: its kind and training seed, and the paths of everything it writes."""

    kind: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.kind}/seed{self.seed}"

    @property
    def model(self) -> Path:
        return Path("models") / self.kind / f"seed{self.seed}.ckpt"

    @property
    def record_dir(self) -> Path:
        """Per-run records (training and test results, provenance): outputs, not DVC metrics."""
        return Path("metrics/runs") / self.kind / f"seed{self.seed}"

    @property
    def train_record(self) -> Path:
        return self.record_dir / "train.json"

    @property
    def test_record(self) -> Path:
        return self.record_dir / "test.json"

    @property
    def train_plots(self) -> Path:
        """The run's DVCLive folder: learning curves per epoch."""
        return Path("plots/train") / self.kind / f"seed{self.seed}"

    @property
    def eval_plots(self) -> Path:
        return Path("plots/eval") / self.kind / f"seed{self.seed}"


def kind_main(
    stage: Callable[[Config, str, int], object], module: str, argv: Sequence[str] | None = None
) -> None:
    """Entry point of a per-model stage: `python -m <module> KIND [--seed N] [key=value ...]`.

    Without `--seed` the stage runs once for every seed of the `seeds` setting.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    usage = f"usage: python -m {module} {{{'|'.join(KINDS)}}} [--seed N] [key=value ...]"
    if args and args[0] in ("-h", "--help"):
        print(f"{usage}\n\n{(stage.__doc__ or '').strip()}")
        return
    if not args or args[0] not in KINDS:
        print(usage, file=sys.stderr)
        raise SystemExit(2)
    kind = args.pop(0)
    seed = None
    if "--seed" in args:
        at = args.index("--seed")
        value = args[at + 1] if at + 1 < len(args) else ""
        if not value.isdigit():
            print(
                f"error: --seed {value} is not allowed; allowed: an integer >= 0", file=sys.stderr
            )
            raise SystemExit(2)
        seed = int(value)
        del args[at : at + 2]

    def run(cfg: Config) -> None:
        for s in cfg.seeds if seed is None else [seed]:
            stage(cfg, kind, s)

    run.__doc__, run.__module__ = stage.__doc__, module
    main_entry(run, args)


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
