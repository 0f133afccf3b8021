"""Stage `compare`: answer the research question for the current settings.

Reads both models' test metrics and training records and writes `metrics/compare.json`
(`accuracy_delta` and `roc_auc_delta` as ODK minus baseline, `params_ratio` as ODK over
baseline, `within_tolerance`), a side-by-side table (`metrics/compare.md`, `.csv`) and a figure
of both validation-accuracy curves (`plots/compare/val_accuracy.png`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from odk.atomic import write_json, write_text
from odk.config import Config, main_entry
from odk.errors import OdkError
from odk.plots import save_curves_png
from odk.stages import KINDS

TABLE_ROWS = {  # row label -> (metrics file prefix, key)
    "test accuracy": ("", "test_accuracy"),
    "test ROC-AUC (macro, OvR)": ("", "test_roc_auc"),
    "test F1 (macro)": ("", "test_f1_macro"),
    "test loss": ("", "test_loss"),
    "trainable parameters": ("", "trainable_params"),
    "model file (MB)": ("", "model_file_bytes"),
    "best validation accuracy": ("train_", "best_val_acc"),
    "training time (s)": ("train_", "training_time_s"),
    "inference (images/s)": ("", "inference_images_per_s"),
}


def read_metrics(path: Path) -> dict[str, Any]:
    """A stage's metrics JSON, or a clear error naming the stage that makes it."""
    if not path.is_file():
        raise OdkError(f"{path} is missing: run the stage that writes it (`dvc repro`) first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise OdkError(f"{path} is not valid JSON ({exc}); rerun `dvc repro --force`") from None


def read_dvclive_curve(live_dir: Path, metric: str) -> tuple[list[int], list[float]]:
    """Per-epoch values of a dvclive metric (e.g. `val/acc`) as (epochs, values)."""
    plots = live_dir / "plots" / "metrics"
    values = pd.read_csv(plots / f"{metric}.tsv", sep="\t")
    epochs = pd.read_csv(plots / "epoch.tsv", sep="\t")
    name = metric.rsplit("/", 1)[-1]
    merged = values.merge(epochs, on="step", how="left")
    return [int(e) + 1 for e in merged["epoch"]], [float(v) for v in merged[name]]


def summarize(metrics: dict[str, dict[str, Any]], max_drop: float) -> dict[str, Any]:
    """The four contract keys plus the F1 delta and the model-file and speed ratios."""
    base, odk = metrics["baseline"], metrics["odk"]
    accuracy_delta = odk["test_accuracy"] - base["test_accuracy"]
    return {
        "accuracy_delta": round(accuracy_delta, 6),
        "roc_auc_delta": round(odk["test_roc_auc"] - base["test_roc_auc"], 6),
        "params_ratio": round(odk["trainable_params"] / base["trainable_params"], 6),
        "within_tolerance": bool(accuracy_delta >= -max_drop - 1e-12),
        "max_accuracy_drop": max_drop,
        "f1_delta": round(odk["test_f1_macro"] - base["test_f1_macro"], 6),
        "model_file_ratio": round(odk["model_file_bytes"] / base["model_file_bytes"], 6),
        "inference_speed_ratio": round(
            odk["inference_images_per_s"] / base["inference_images_per_s"], 4
        ),
    }


def compare_table(metrics: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Side-by-side table of both models (rows: quantities, columns: models)."""
    rows = {}
    for label, (prefix, key) in TABLE_ROWS.items():
        row = [metrics[prefix + kind][key] for kind in KINDS]
        if key == "model_file_bytes":
            row = [v / 1e6 for v in row]
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(KINDS))


def compare(cfg: Config) -> dict[str, Any]:
    """Write the comparison of the two trained models for the current settings."""
    names = [prefix + kind for prefix in ("", "train_") for kind in KINDS]
    metrics = {name: read_metrics(Path("metrics") / f"{name}.json") for name in names}
    summary = summarize(metrics, cfg.compare.max_accuracy_drop)
    table = compare_table(metrics)
    verdict = "within" if summary["within_tolerance"] else "NOT within"
    text = (
        f"# ODK vs baseline\n\n{table.to_markdown(floatfmt='.4g')}\n\n"
        f"accuracy delta (ODK - baseline): {summary['accuracy_delta']:+.4f}, "
        f"{verdict} the tolerance of -{cfg.compare.max_accuracy_drop}; "
        f"ODK trains {summary['params_ratio']:.4f}x the baseline's parameters.\n"
    )
    curves = {kind: read_dvclive_curve(Path("plots/train") / kind, "val/acc") for kind in KINDS}
    save_curves_png(
        Path("plots/compare/val_accuracy.png"),
        curves,
        "validation accuracy",
        "Validation accuracy per epoch",
    )
    write_text(Path("metrics/compare.csv"), table.to_csv())
    write_text(Path("metrics/compare.md"), text)
    write_json(Path("metrics/compare.json"), summary)
    print(text)
    return summary


if __name__ == "__main__":
    main_entry(compare)
