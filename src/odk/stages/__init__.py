"""One module per `dvc.yaml` stage, each runnable as `python -m odk.stages.<name>`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

KINDS = ("baseline", "odk")


def kind_main(
    stage: Callable[[Any, str], object], module: str, argv: Sequence[str] | None = None
) -> None:
    """Entry point of a per-model stage: `python -m <module> baseline|odk [key=value ...]`."""
    from odk.config import main_entry

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in KINDS:
        print(f"usage: python -m {module} {{{'|'.join(KINDS)}}} [key=value ...]", file=sys.stderr)
        raise SystemExit(2)
    kind = args.pop(0)
    main_entry(lambda cfg: stage(cfg, kind), args)
