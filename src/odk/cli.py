"""The `odk` command: use the pipeline's model files and results outside the pipeline.

`odk predict` classifies images, `odk export` writes a torch.export program, ONNX or
TorchScript model without ODK machinery, `odk report` tabulates and plots every experiment.
Each subcommand imports its module only when it runs. Exit status: 0 success, 1 some input
files failed (predict), 2 a usage error, an `OdkError` or a file that cannot be read or
written (printed as one `error: ...` line on stderr, credentials in URLs redacted).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from odk.errors import OdkError, redact

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR = 0, 1, 2
DEFAULT_MODEL = "models/odk/seed42.ckpt"  # the ODK model of the default `seeds: [42]`


def _positive_int(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `odk` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="odk",
        description="Classify images, export models and report experiments of the odk pipeline.",
        epilog="Run `odk COMMAND --help` for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_predict, _add_export, _add_report, _add_grid):
        add(sub)
    return parser


def _add_predict(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "predict",
        help="classify image files and folders",
        description="Classify PNG/JPEG images (any size or mode; resized to 32x32). Folders are "
        "searched recursively, in sorted order. Unreadable files are reported on stderr and "
        "the others still classified; the exit status is 1 if any file failed.",
    )
    cmd.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    cmd.add_argument("--model", default=DEFAULT_MODEL, help="model file (default: %(default)s)")
    cmd.add_argument(
        "--json", action="store_true", help="print a JSON list: path, label, probability, top5"
    )
    cmd.add_argument(
        "--batch-size", type=_positive_int, default=64, help="images per forward pass (%(default)s)"
    )
    cmd.set_defaults(handler=_predict)


def _add_export(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "export",
        help="write a torch.export, ONNX or TorchScript model with the ODK convs merged",
        description="Merge every ODK conv into a plain convolution and write the model as a "
        "torch.export program, ONNX or TorchScript (dynamic batch). Input: float32 RGB "
        "pixels in [0, 1], shape "
        "(B, 3, 32, 32), normalization included; output: logits. The file is written only "
        "after its outputs match the model file's within 1e-4.",
    )
    cmd.add_argument("--model", default=DEFAULT_MODEL, help="model file (default: %(default)s)")
    cmd.add_argument(
        "--format",
        required=True,
        choices=("pt2", "onnx", "torchscript"),
        help="pt2 (torch.export; load with torch.export.load(FILE).module()), onnx "
        "(onnxruntime and others), or torchscript (legacy: torch.jit.load; PyTorch calls "
        "TorchScript deprecated since 2.9)",
    )
    cmd.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write")
    cmd.set_defaults(handler=_export)


def _add_report(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "report",
        help="tabulate and plot every experiment of the repository",
        description="Read the workspace, every commit and every `dvc exp` experiment through "
        "DVC and write experiments.md, experiments.csv and accuracy_vs_params.png.",
    )
    cmd.add_argument(
        "-o",
        "--output-dir",
        default="reports",
        metavar="DIR",
        help="folder to write into (default: %(default)s)",
    )
    cmd.add_argument("--repo", default=".", metavar="PATH", help="DVC repository (default: .)")
    cmd.set_defaults(handler=_report)


def _add_grid(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "grid",
        help="queue and run the research grid as DVC experiments, then report it",
        description="Queue one `dvc exp run` per regime x variant of the grid file (every "
        "variant with its baseline and parameter-matched control, once per seed), run them "
        "with `dvc queue start -j JOBS`, wait, and write `odk report` and RUN.md (machine, "
        "settings, wall time, command) into the output folder.",
    )
    cmd.add_argument("grid", nargs="?", default="results/grid.yaml", help="grid file (%(default)s)")
    cmd.add_argument("-o", "--output-dir", required=True, metavar="DIR", help="report folder")
    cmd.add_argument(
        "-j", "--jobs", type=_positive_int, default=1, help="experiments at once (%(default)s)"
    )
    cmd.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="NAME",
        help="run only these experiments (REGIME-VARIANT, e.g. scarce-default)",
    )
    cmd.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="settings for every experiment, e.g. max_epochs=10 dataset.url=... dataset.md5=...",
    )
    cmd.set_defaults(handler=_grid)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `odk` with `argv` (default: the process arguments) and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    try:
        return args.handler(args)
    except OdkError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # a file the checks could not foresee (permissions, full disk)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {redact(where + (exc.strerror or str(exc)))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def _predict(args: argparse.Namespace) -> int:
    from odk.checkpoint import load_model
    from odk.predict import predict_files

    model, meta = load_model(args.model)  # a bad model file stops here, before any image
    records, failed = [], 0
    for result in predict_files(model, meta, args.paths, batch_size=args.batch_size):
        if result.error is not None:
            failed += 1
            print(f"error: {result.path}: {result.error}", file=sys.stderr, flush=True)
        elif args.json:
            records.append(result.to_json())
        else:
            print(f"{result.path}: {result.label} ({result.probability:.1%})", flush=True)
    if args.json:
        print(json.dumps(records, indent=2))
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from odk.export import export_model

    info = export_model(args.model, args.format, args.output)
    print(
        f"wrote {info['path']} ({info['format']}, {info['bytes'] / 1e6:.1f} MB): "
        f"{info['merged_convs']} ODK convs merged into plain convs; largest logit difference "
        f"from {args.model}: {info['max_abs_diff']:.2g}"
    )
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from odk.report import write_report

    result = write_report(args.repo, args.output_dir)
    table = result["rows"]
    settings = list(
        table.columns[table.columns.get_loc("created") + 1 : table.columns.get_loc("seeds")]
    )
    columns = ["experiment", *settings, "n_seeds", "odk_accuracy", "delta"]
    columns += ["ci95_low", "ci95_high", "verdict", "matched_delta", "params_ratio"]
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {', '.join(str(f) for f in result['files'])}")
    if result["skipped"]:
        print(f"left out (no metrics): {', '.join(result['skipped'])}")
    return EXIT_OK


def _grid(args: argparse.Namespace) -> int:
    from odk.grid import run_grid

    result = run_grid(args.grid, args.output_dir, args.jobs, args.only, args.set)
    print(result["status"].strip())
    print(f"grid done in {result['wall_s'] / 60:.1f} min; wrote {args.output_dir}/RUN.md and")
    print(f"{', '.join(str(f) for f in result['report']['files'])}")
    return EXIT_OK
