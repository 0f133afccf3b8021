"""Stage `compare`: answer the research question for the current settings, over every seed.

Reads every run of the three models (baseline, ODK, parameter-matched control) for each seed of
`seeds` and writes:

- `metrics/{baseline,odk,matched}.json`: each model's metrics, means over the seeds (plus the
  standard deviation of test accuracy, the ODK layers' orthogonality error, the control's
  stage widths); the diagnostics of `TABLE_ONLY` are left to the table, so that
  `dvc exp show --only-changed` stays readable;
- `metrics/compare.json`: the answer: `accuracy_delta` (ODK minus baseline, mean over seeds),
  its 95% confidence interval and `verdict` (`odk.stats`), the same against the matched control,
  parameter ratios and `within_tolerance`; `inference_speed_ratio` only when every run of both
  models was timed under the same conditions (`odk.speed`);
- `metrics/compare.md` (the verdict in one sentence, and a table), `metrics/compare.csv`;
- `plots/compare/`: learning curves and ROC curves averaged over seeds, confusion records pooled
  over seeds, and a PNG of validation accuracy per epoch (mean and range over seeds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from odk.atomic import write_json, write_text
from odk.config import Config
from odk.errors import OdkError
from odk.plots import confusion_records, curve_records, mean_roc_records, save_band_png
from odk.stages import KINDS, Run, main_entry
from odk.stats import accuracy_delta_ci, verdict

# key of metrics/<kind>.json -> (record, key); means over the seeds
AVERAGED = {
    "test_accuracy": ("test", "test_accuracy"),
    "test_roc_auc": ("test", "test_roc_auc"),
    "test_f1_macro": ("test", "test_f1_macro"),
    "test_loss": ("test", "test_loss"),
    "trainable_params": ("test", "trainable_params"),
    "model_file_bytes": ("test", "model_file_bytes"),
    "inference_images_per_s": ("test", "inference_images_per_s"),
    "best_val_acc": ("train", "best_val_acc"),
    "training_time_s": ("train", "training_time_s"),
}
TABLE_ROWS = {  # row label -> key of metrics/<kind>.json
    "test accuracy": "test_accuracy",
    "test ROC-AUC (macro, OvR)": "test_roc_auc",
    "test F1 (macro)": "test_f1_macro",
    "test loss": "test_loss",
    "trainable parameters": "trainable_params",
    "model file (MB)": "model_file_bytes",
    "best validation accuracy": "best_val_acc",
    "training time (s)": "training_time_s",
    "inference (images/s)": "inference_images_per_s",
}
# in metrics/compare.md and .csv (and every run's records), not in the DVC metrics files
TABLE_ONLY = ("test_loss", "model_file_bytes", "best_val_acc")
CURVES = {
    "val_acc": "val/acc",
    "val_loss": "val/loss",
    "train_acc": "train/acc",
    "train_loss": "train/loss",
}
VERDICT_WORDS = {
    "non-inferior": "non-inferior: it loses less than the {m:g}-point margin",
    "inferior": "inferior: it loses more than the {m:g}-point margin",
    "inconclusive": "inconclusive: the interval straddles the -{m:g}-point margin, and more "
    "seeds would narrow it",
}
MATCHED_WORDS = {
    "better": "better than",
    "worse": "worse than",
    "inconclusive": "not clearly different from",
}


def read_json(path: Path) -> Any:
    """A JSON record, or a clear error naming the stage that writes it."""
    if not path.is_file():
        raise OdkError(f"{path} is missing: run the stage that writes it (`dvc repro`) first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise OdkError(f"{path} is not valid JSON ({exc}); rerun `dvc repro --force`") from None


def read_dvclive_curve(live_dir: Path, metric: str) -> tuple[list[int], list[float]]:
    """Per-epoch values of a DVCLive metric (e.g. `val/acc`) as (epochs, values).

    The training stage logs the epoch (1, 2, ...) as DVCLive's step.
    """
    path = live_dir / "plots" / "metrics" / f"{metric}.tsv"
    if not path.is_file():
        raise OdkError(f"{path} is missing: rerun the training stage that writes {live_dir}")
    values = pd.read_csv(path, sep="\t")
    name = metric.rsplit("/", 1)[-1]
    epochs = [int(s) for s in values["step"]]
    if epochs != list(range(1, len(epochs) + 1)):
        raise OdkError(
            f"{path} is not one value per epoch 1, 2, ... (steps {epochs[:6]}): it was written "
            "by an older training stage; rerun it (`dvc repro --force` the train stages)"
        )
    return epochs, [float(v) for v in values[name]]


def speed_not_comparable(runs: dict[str, list[Run]]) -> str | None:
    """Why the baseline's and the ODK model's inference speeds cannot be divided, or None."""
    timed = {
        f"{run.name}": read_json(run.test_record).get("inference", {}).get("conditions")
        for kind in ("baseline", "odk")
        for run in runs[kind]
    }
    untimed = [name for name, conditions in timed.items() if conditions is None]
    if untimed:
        return f"{', '.join(untimed)} recorded no timing conditions (rerun evaluate)"
    first_name, first = next(iter(timed.items()))
    for name, conditions in timed.items():
        differ = sorted(
            k for k in first.keys() | conditions.keys() if first.get(k) != conditions.get(k)
        )
        if differ:
            shown = ", ".join(f"{k} {first.get(k)} vs {conditions.get(k)}" for k in differ)
            return f"{first_name} and {name} were timed under different conditions ({shown})"
    return None


def read_predictions(run: Run) -> np.ndarray:
    """The `(N, 2)` true and predicted class of every test image of one run."""
    path = run.record_dir / "predictions.npy"
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise OdkError(f"{path} is missing or corrupt ({exc}): rerun evaluate") from None


def aggregate(runs: list[Run]) -> dict[str, Any]:
    """One model's metrics: means over its runs, the accuracy's spread, model-specific extras."""
    records = [{"test": read_json(r.test_record), "train": read_json(r.train_record)} for r in runs]
    out: dict[str, Any] = {}
    for key, (record, field) in AVERAGED.items():
        out[key] = round(float(np.mean([rec[record][field] for rec in records])), 6)
    out["trainable_params"] = int(out["trainable_params"])
    out["model_file_bytes"] = int(out["model_file_bytes"])
    accuracies = [rec["test"]["test_accuracy"] for rec in records]
    spread = float(np.std(accuracies, ddof=1)) if len(runs) > 1 else 0.0
    out["test_accuracy_std"] = round(spread, 6)
    out["n_seeds"] = len(runs)
    kind = runs[0].kind
    if kind == "odk":
        out["orthogonality_error"] = max(rec["test"]["orthogonality_error"] for rec in records)
    if kind == "matched":
        out["stage_widths"] = records[0]["train"]["arch"]["widths"]
    return out


def summarize(
    models: dict[str, dict[str, Any]], correct: dict[str, np.ndarray], seeds: list[int], cfg: Config
) -> dict[str, Any]:
    """`metrics/compare.json`: the contract keys, the CIs and verdicts, the ratios."""
    base, odk, matched = (models[k] for k in KINDS)
    max_drop = cfg.compare.max_accuracy_drop
    vs_base = accuracy_delta_ci(correct["odk"], correct["baseline"])
    vs_matched = accuracy_delta_ci(correct["odk"], correct["matched"])
    low, high = vs_matched["ci95"]
    return {
        "accuracy_delta": round(vs_base["delta"], 6),
        "roc_auc_delta": round(odk["test_roc_auc"] - base["test_roc_auc"], 6),
        "params_ratio": round(odk["trainable_params"] / base["trainable_params"], 6),
        "within_tolerance": bool(vs_base["delta"] >= -max_drop - 1e-12),
        "max_accuracy_drop": max_drop,
        "seeds": list(seeds),
        "n_seeds": len(seeds),
        "accuracy_delta_ci95": [round(v, 6) for v in vs_base["ci95"]],
        # the interval again as numbers: `dvc exp show` and `dvc metrics diff` show no lists
        "accuracy_delta_ci95_low": round(vs_base["ci95"][0], 6),
        "accuracy_delta_ci95_high": round(vs_base["ci95"][1], 6),
        "verdict": verdict(vs_base["ci95"], max_drop),
        "ci_method": vs_base["method"],
        "accuracy_deltas": [round(v, 6) for v in vs_base["deltas"]],
        "matched_accuracy_delta": round(vs_matched["delta"], 6),
        "matched_accuracy_delta_ci95": [round(v, 6) for v in vs_matched["ci95"]],
        "matched_accuracy_deltas": [round(v, 6) for v in vs_matched["deltas"]],
        "matched_verdict": "better" if low > 0 else "worse" if high < 0 else "inconclusive",
        "matched_params_ratio": round(matched["trainable_params"] / odk["trainable_params"], 6),
        "model_file_ratio": round(odk["model_file_bytes"] / base["model_file_bytes"], 6),
    }


def verdict_sentence(summary: dict[str, Any], models: dict[str, dict[str, Any]]) -> str:
    """The answer in one sentence a reader can quote (accuracies in percentage points)."""
    s, m = summary, summary["max_accuracy_drop"] * 100
    lo, hi = (100 * v for v in s["accuracy_delta_ci95"])
    mlo, mhi = (100 * v for v in s["matched_accuracy_delta_ci95"])
    n = s["n_seeds"]
    seeds = f"{n} training seed{'s' if n > 1 else ''}"
    return (
        f"With {seeds}, ODK's test accuracy differs from the dense baseline's by "
        f"{100 * s['accuracy_delta']:+.2f} points (95% CI {lo:+.2f} to {hi:+.2f}), so ODK is "
        f"{VERDICT_WORDS[s['verdict']].format(m=m)}, while training "
        f"{models['odk']['trainable_params']:,} of the baseline's "
        f"{models['baseline']['trainable_params']:,} parameters ({s['params_ratio']:.3f}x); "
        f"against a dense network thinned to the same {models['matched']['trainable_params']:,} "
        f"parameters it is {MATCHED_WORDS[s['matched_verdict']]} the control "
        f"({100 * s['matched_accuracy_delta']:+.2f} points, 95% CI {mlo:+.2f} to {mhi:+.2f})."
    )


def compare_table(models: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Means over seeds, side by side (rows: quantities, columns: models)."""
    rows = {}
    for label, key in TABLE_ROWS.items():
        row = [models[kind][key] for kind in KINDS]
        rows[label] = [v / 1e6 for v in row] if key == "model_file_bytes" else row
    rows["test accuracy, std over seeds"] = [models[k]["test_accuracy_std"] for k in KINDS]
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(KINDS))


def compare(cfg: Config) -> dict[str, Any]:
    """Write the comparison of the three models over the seeds of the current settings."""
    seeds = list(cfg.seeds)
    runs = {kind: [Run(kind, seed) for seed in seeds] for kind in KINDS}
    models = {kind: aggregate(runs[kind]) for kind in KINDS}
    predictions = {kind: [read_predictions(r) for r in runs[kind]] for kind in KINDS}
    labels = predictions["baseline"][0][:, 0]
    for kind in KINDS:
        for run, pred in zip(runs[kind], predictions[kind], strict=True):
            if pred.shape != (len(labels), 2) or not np.array_equal(pred[:, 0], labels):
                raise OdkError(
                    f"{run.record_dir / 'predictions.npy'} was scored on other test images than "
                    f"{runs['baseline'][0].record_dir}: rerun `dvc repro`"
                )
    correct = {k: np.stack([p[:, 1] == p[:, 0] for p in predictions[k]]) for k in KINDS}
    summary = summarize(models, correct, seeds, cfg)
    why = speed_not_comparable(runs)
    if why is None:
        speeds = (models[kind]["inference_images_per_s"] for kind in ("odk", "baseline"))
        summary["inference_speed_ratio"] = round(next(speeds) / next(speeds), 4)
    else:
        print(f"compare: no inference_speed_ratio in metrics/compare.json: {why}")
    table = compare_table(models)
    sentence = verdict_sentence(summary, models)
    text = (
        f"# ODK vs baseline vs parameter-matched control\n\n**{summary['verdict']}.** {sentence}"
        f"\n\nMeans over seeds {seeds}; confidence intervals: {summary['ci_method']}.\n\n"
        f"{table.to_markdown(floatfmt='.4g')}\n"
    )
    _write_plots(runs, predictions)
    for kind in KINDS:
        shown = {key: value for key, value in models[kind].items() if key not in TABLE_ONLY}
        write_json(Path("metrics") / f"{kind}.json", shown)
    write_text(Path("metrics/compare.csv"), table.to_csv())
    write_text(Path("metrics/compare.md"), text)
    write_json(Path("metrics/compare.json"), summary)
    print(text)
    return summary


def _write_plots(runs: dict[str, list[Run]], predictions: dict[str, list[np.ndarray]]) -> None:
    out = Path("plots/compare")
    for name, metric in CURVES.items():
        curves = {
            kind: [read_dvclive_curve(r.train_plots, metric) for r in runs[kind]] for kind in KINDS
        }
        write_json(out / f"{name}.json", curve_records(curves))
        if name == "val_acc":
            save_band_png(
                out / "val_accuracy.png",
                curves,
                "validation accuracy",
                "Validation accuracy per epoch (mean over seeds; band: min to max)",
            )
    rocs = {kind: [read_json(r.record_dir / "roc.json") for r in runs[kind]] for kind in KINDS}
    write_json(out / "roc.json", mean_roc_records(rocs))
    classes = read_json(runs["baseline"][0].record_dir / "per_class.json")
    for kind in KINDS:
        write_json(
            out / f"confusion_{kind}.json", confusion_records(predictions[kind], list(classes))
        )


if __name__ == "__main__":
    main_entry(compare)
