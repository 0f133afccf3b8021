"""A fake pipeline in a real git + DVC repository, for `odk report` and `odk grid` tests.

Its one stage derives consistent metrics from params.yaml without training, so experiments
give distinct results with known values in a fraction of a second each.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PARAMS = """\
seeds: [0]
max_epochs: 20
data_module:
  subset_fraction: 1.0
model:
  odk_layers: [3, 4]
  num_matrices: 1
  r: 1
compare:
  max_accuracy_drop: 0.03
"""

# Per seed s: the baseline scores 0.9 * subset_fraction + 0.002 s, ODK 0.01 r less and the
# control 0.02 less; ODK has 1e6 / r parameters. The fake CI is the delta +- 0.01.
FAKE_STAGE = """\
import json, pathlib, statistics, yaml
p = yaml.safe_load(open("params.yaml"))
r, tol, seeds = p["model"]["r"], p["compare"]["max_accuracy_drop"], p["seeds"]
base = [0.9 * p["data_module"]["subset_fraction"] + 0.002 * s for s in seeds]
accs = {"baseline": base, "odk": [b - 0.01 * r for b in base], "matched": [b - 0.02 for b in base]}
params = {"baseline": 11173962, "odk": 1_000_000 // r, "matched": 1_000_000 // r + 10}
def model(kind):
    a = accs[kind]
    return {"test_accuracy": statistics.mean(a), "n_seeds": len(a),
            "test_accuracy_std": statistics.stdev(a) if len(a) > 1 else 0.0,
            "trainable_params": params[kind], "model_file_bytes": 4 * params[kind]}
deltas = [o - b for o, b in zip(accs["odk"], base)]
mdeltas = [o - m for o, m in zip(accs["odk"], accs["matched"])]
delta, mdelta = statistics.mean(deltas), statistics.mean(mdeltas)
compare = {"accuracy_delta": delta, "roc_auc_delta": -0.01, "seeds": seeds, "n_seeds": len(seeds),
           "accuracy_deltas": deltas, "accuracy_delta_ci95": [delta - 0.01, delta + 0.01],
           "matched_accuracy_delta": mdelta, "matched_accuracy_deltas": mdeltas,
           "matched_accuracy_delta_ci95": [mdelta - 0.01, mdelta + 0.01],
           "params_ratio": params["odk"] / params["baseline"],
           "within_tolerance": delta >= -tol, "max_accuracy_drop": tol}
pathlib.Path("metrics").mkdir(exist_ok=True)
for name in ("baseline", "odk", "matched"):
    pathlib.Path(f"metrics/{name}.json").write_text(json.dumps(model(name)))
pathlib.Path("metrics/compare.json").write_text(json.dumps(compare))
"""

DVC_YAML = """\
stages:
  fake:
    cmd: {python} fake_stage.py
    deps: [fake_stage.py]
    params: [seeds, max_epochs, model, data_module, compare]
    metrics:
      - metrics/baseline.json
      - metrics/odk.json
      - metrics/matched.json
      - metrics/compare.json
"""


def run(repo: Path, *args: str) -> None:
    env = os.environ | {
        "GIT_AUTHOR_NAME": "odk test",
        "GIT_AUTHOR_EMAIL": "test@odk.invalid",
        "GIT_COMMITTER_NAME": "odk test",
        "GIT_COMMITTER_EMAIL": "test@odk.invalid",
        "DVC_NO_ANALYTICS": "1",
    }
    cmd = list(args) if args[0] == "git" else [sys.executable, "-m", "dvc", *args]
    subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True, text=True)


def init_repo(repo: Path) -> Path:
    """A committed git + DVC repository holding the fake stage, not yet run."""
    repo.mkdir()
    (repo / "params.yaml").write_text(PARAMS)
    (repo / "fake_stage.py").write_text(FAKE_STAGE)
    (repo / "dvc.yaml").write_text(DVC_YAML.format(python=sys.executable))
    run(repo, "git", "init", "-q", "-b", "main")
    run(repo, "init", "-q")
    (repo / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "pipeline without results")
    return repo
