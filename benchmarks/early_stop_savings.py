"""What early stopping saves on a sweep, measured side by side through the real CLI on the local backend.

    python benchmarks/early_stop_savings.py [--steps 24] [--parallelism 3]

The same 9 trials (a learning-rate grid, tiny CPU model, one rank each) run twice, in two fresh homes: once
plain, once with `early_stop` (rungs at 1/4 and 1/2 of the steps, reduction_factor 3, min_trials 3). Reported:
trial-steps trained by each, the share saved, the states, and whether the best trial of the plain sweep (lowest
final train/loss) ran to the end in the early-stopped one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.local_sweeps import all_ended, vitolaunch, wait_until, write_spec  # noqa: E402

LRS = [0.001, 0.003, 0.01, 0.02, 0.05, 0.2, 1.0, 5.0, 20.0]


def _spec(folder: Path, steps: int, parallelism: int, early_stop: dict | None) -> Path:
    path = write_spec(folder, "lr-grid", {"optim.lr": LRS}, tasks_per_node=1, train={"steps": steps, "log_every": 2})
    spec = yaml.safe_load(path.read_text())
    spec["resources"]["array_parallelism"] = parallelism
    spec["base"]["eval"]["linear_probe"] = False  # the sweep's question here is the training loss
    if early_stop:
        spec["early_stop"] = early_stop
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--parallelism", type=int, default=3)
    args = parser.parse_args()
    rungs = [args.steps // 4, args.steps // 2]
    early_stop = {"metric": "train/loss", "mode": "min", "rungs": rungs, "reduction_factor": 3, "min_trials": 3}
    work = Path(tempfile.mkdtemp(prefix="es-bench-"))
    homes = {"plain": work / "plain", "early_stop": work / "early_stop"}
    started = {}
    for name, home in homes.items():
        spec = _spec(work / f"spec-{name}", args.steps, args.parallelism, early_stop if name == "early_stop" else None)
        started[name] = time.monotonic()
        vitolaunch(home, "sweep", str(spec))
    rows, elapsed = {}, {}
    for name, home in homes.items():
        rows[name] = wait_until(home, "lr-grid", all_ended, timeout=3600, what=f"the {name} sweep")
        elapsed[name] = time.monotonic() - started[name]
    report = {"trials": len(LRS), "steps_per_trial": args.steps, "rungs": rungs, "early_stop": early_stop}
    for name, table in rows.items():
        report[name] = {
            "trial_steps": sum(r["step"] or 0 for r in table),
            "wall_s_until_all_ended": round(elapsed[name], 1),
            "trials": {str(r["params"]["optim.lr"]): {"state": r["state"], "step": r["step"], "loss": r["loss"]} for r in table},
        }
    plain, pruned = report["plain"], report["early_stop"]
    report["trial_steps_saved"] = plain["trial_steps"] - pruned["trial_steps"]
    report["saved_fraction"] = round(report["trial_steps_saved"] / plain["trial_steps"], 3)
    finished = {lr: t for lr, t in plain["trials"].items() if t["state"] == "COMPLETED" and t["loss"] is not None}
    best = min(finished, key=lambda lr: finished[lr]["loss"])
    report["best_plain_trial"] = {"optim.lr": best, "final_loss": finished[best]["loss"]}
    report["best_kept"] = pruned["trials"][best]["state"] == "COMPLETED"
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
