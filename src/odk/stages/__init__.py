"""One module per `dvc.yaml` stage, each runnable as `python -m odk.stages.<name>`.

The three models of a comparison (`KINDS`) train and are scored once per training seed (the
`seeds` setting); `Run` is one (model, seed) pair and knows where its files live.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    stage: Callable[[Any, str, int], object], module: str, argv: Sequence[str] | None = None
) -> None:
    """Entry point of a per-model stage: `python -m <module> KIND [--seed N] [key=value ...]`.

    Without `--seed` the stage runs once for every seed of the `seeds` setting.
    """
    from odk.config import main_entry

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

    def run(cfg: Any) -> None:
        for s in cfg.seeds if seed is None else [seed]:
            stage(cfg, kind, s)

    run.__doc__, run.__module__ = stage.__doc__, module
    main_entry(run, args)
