"""Evidence that VITO learns, at a size a CPU trains: VITO against its ablations and random init, side by side.

    python benchmarks/vito_evidence.py [--seeds 0 1 2] [--arms vito same_frame average_pool] [-o train.steps=400]

The base config is `sweeps/evidence.yaml` (the same runs as `vitolaunch sweep sweeps/evidence.yaml`, whose
trials `sweeps/evidence_eval.yaml` evaluates); `-o dotted.key=value` overrides it (values are YAML). Each arm
changes one thing from VITO:

* vito: temporal pairs, attention pooling, scales 4+5 (the paper's recipe at this size);
* same_frame: two augmentations of one frame (the MoCLR-style image baseline's pairs);
* average_pool: global average pooling instead of attention pooling;
* moclr: same-frame pairs and average pooling together (the matched image baseline);
* random_init: the same network, untrained (the floor);
* supervised: the same network trained end-to-end with labels on the probe's training frames (what this
  backbone reaches with labels at this data size: the ceiling a self-supervised arm can be read against).

Every arm trains with the real trainer (`vito.train.Trainer`: DeepSpeed, the data pipeline, EMA target), one
process, one thread per process, then runs the evaluation suite of `task: evaluate` trials
(`vito.evaluate.evaluate_suite`): linear probe and kNN on frozen features, accuracy under corruptions,
accuracy on held-out clips with stronger (unseen) motion and deformation, and label propagation (J&F).
Seeds vary the training seed (network init, data order, augmentations); the evaluation data are fixed.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vito.config import VitoConfig, set_dotted
from vito.evaluate import evaluate_suite, evaluation_splits
from vito.model import VitoModel
from vito.train import RunContext, Trainer
from vitolaunch.spec import load_spec
from vitolaunch.spec.yaml_lines import parse_value

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "sweeps" / "evidence.yaml"

ARMS: dict[str, dict[str, object]] = {
    "vito": {},
    "same_frame": {"data.pair_source": "same_frame"},
    "average_pool": {"model.pooling": "average"},
    "moclr": {"data.pair_source": "same_frame", "model.pooling": "average"},
    "random_init": {},
    "supervised": {},
}
SUPERVISED_EPOCHS = 60
COLUMNS = [
    ("linear probe", "linear_probe_acc"),
    ("kNN", "knn_acc"),
    ("corrupted (mean)", "robust/mean_corruption_acc"),
    ("corrupted / clean", "robust/relative_corruption_acc"),
    ("deformed x{m} probe", "deform/m{m}_linear_probe_acc"),
    ("deformed x{m} kNN", "deform/m{m}_knn_acc"),
    ("J&F", "propagation/JF"),
    ("attention on object / area", "saliency/attention_lift"),
]


def base_config(overrides: list[str]) -> dict:
    tree = load_spec(SPEC).base_config_dict()
    for text in overrides:
        key, _, value = text.partition("=")
        set_dotted(tree, key.strip(), parse_value(value))
    tree["eval"]["linear_probe"] = False  # the suite below evaluates; the trainer need not
    return tree


def arm_config(base: dict, arm: str, seed: int) -> VitoConfig:
    tree = copy.deepcopy(base)
    for key, value in ARMS[arm].items():
        set_dotted(tree, key, value)
    tree["train"]["seed"] = seed
    tree["checkpoint"]["every_steps"] = tree["train"]["steps"]
    return VitoConfig.model_validate(tree)


def train(cfg: VitoConfig, work: Path) -> tuple[VitoModel, float]:
    with tempfile.TemporaryDirectory(dir=work) as run_dir:
        ctx = RunContext(checkpoint_uri=f"{run_dir}/ckpt", data_root=str(work / "data"),
                         scratch_dir=f"{run_dir}/scratch")
        trainer = Trainer(cfg, ctx)
        started = time.perf_counter()
        trainer.run()
        return trainer.model, time.perf_counter() - started


def train_supervised(cfg: VitoConfig, splits, seed: int) -> tuple[VitoModel, float]:
    """Backbone and pool trained with a linear head and cross-entropy on the probe's training frames.

    Flips, channel permutations and grayscale as augmentation: without them the network memorises each clip's
    colours (train accuracy 0.99, test ~0.45); with them it reaches ~0.5 on the test clips.
    """
    (images, labels), _ = splits
    torch.manual_seed(seed)
    model = VitoModel(cfg.model, cfg.loss)
    scale = max(model.scales)
    pool = model.pools[f"s{scale}"]
    head = nn.Linear(model.backbone.channels[scale], int(labels.max()) + 1)
    optimizer = torch.optim.Adam([*model.backbone.parameters(), *pool.parameters(), *head.parameters()], lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    model.train()
    for _ in range(SUPERVISED_EPOCHS):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), 64):
            index = order[start : start + 64]
            batch = images[index][:, torch.randperm(3, generator=generator)]
            flip = torch.rand(len(index), generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
            gray = torch.rand(len(index), generator=generator) < 0.3
            batch = torch.where(gray[:, None, None, None], batch.mean(1, keepdim=True).expand_as(batch), batch)
            loss = F.cross_entropy(head(pool(model.backbone(batch)[scale])), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model, time.perf_counter() - started


def fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--arms", nargs="+", default=["vito", "same_frame", "average_pool", "random_init"],
                        choices=list(ARMS))
    parser.add_argument("-o", "--override", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", default=None, help="folder for data and checkpoints (default: a temp folder)")
    parser.add_argument("--out", default=None, help="append one JSON line per (arm, seed) here")
    parser.add_argument("--summarize", default=None, metavar="JSONL",
                        help="print the table of the runs recorded in JSONL by --out (runs split over processes)")
    args = parser.parse_args()
    if args.summarize:
        summarize(Path(args.summarize), args.arms)
        return
    torch.set_num_threads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="vito-evidence-"))
    work.mkdir(parents=True, exist_ok=True)
    base = base_config(args.overrides)
    device = torch.device("cpu")
    started = time.perf_counter()

    reference = arm_config(base, "vito", args.seeds[0])
    splits = evaluation_splits(reference, str(work / "data"))
    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in args.arms}
    seconds: dict[str, list[float]] = {arm: [] for arm in args.arms}
    for seed in args.seeds:
        for arm in args.arms:
            cfg = arm_config(base, arm, seed)
            if arm == "random_init":
                torch.manual_seed(seed)
                model, train_s = VitoModel(cfg.model, cfg.loss), 0.0
            elif arm == "supervised":
                model, train_s = train_supervised(cfg, splits, seed)
            else:
                model, train_s = train(cfg, work)
            eval_started = time.perf_counter()
            metrics = evaluate_suite(model, cfg, str(work / "data"), device, splits)
            eval_s = time.perf_counter() - eval_started
            results[arm].append(metrics)
            seconds[arm].append(train_s)
            row = {"arm": arm, "seed": seed, "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
                   "overrides": args.overrides, **metrics}
            print(json.dumps(row), file=sys.stderr, flush=True)
            if args.out:
                with open(args.out, "a") as handle:
                    handle.write(json.dumps(row) + "\n")

    cfg = reference
    syn = cfg.data.synthetic
    print(f"data: {syn.num_videos} synthetic clips of {syn.num_frames} frames at {syn.size}px, {syn.num_classes} shape "
          f"classes (background_change {syn.background_change}, background_pool {syn.background_pool}, "
          f"object_colour_change {syn.object_colour_change}, object_scale {syn.object_scale}, distractor_p "
          f"{syn.distractor_p}); crop {cfg.data.crop_size}, batch {cfg.data.batch_size}, {cfg.train.steps} steps; "
          f"model {cfg.model.arch} width {cfg.model.width} stem {cfg.model.stem}; probe: {cfg.eval.train_clips} / "
          f"{cfg.eval.test_clips} clips x {cfg.eval.frames_per_clip} frames; seeds {args.seeds}; "
          f"overrides {args.overrides or 'none'}")
    print_table(results, {arm: statistics.mean(values) for arm, values in seconds.items()}, args.arms)
    print(f"\nwall time: {time.perf_counter() - started:.0f} s (training, evaluation and data generation, 1 thread)")


def print_table(results: dict[str, list[dict[str, float]]], train_s: dict[str, float], arms: list[str]) -> None:
    """Mean ± sample std over seeds of each metric, one row per arm."""
    any_row = next(row for rows in results.values() for row in rows)
    scale = next((key.split("/")[1][1:].split("_")[0] for key in any_row if key.startswith("deform/m")), None)
    columns = [(name.format(m=scale), key.format(m=scale))
               for name, key in COLUMNS if scale is not None or "deform" not in key]
    print("\n| arm | " + " | ".join(name for name, _ in columns) + " | seeds | train s/run |")
    print("|---|" + "---|" * (len(columns) + 2))
    for arm in arms:
        rows = results.get(arm) or []
        if not rows:
            continue
        cells = [fmt([r[key] for r in rows]) for _, key in columns]
        print(f"| {arm} | " + " | ".join(cells) + f" | {len(rows)} | {train_s.get(arm, 0):.0f} |")


def summarize(path: Path, arms: list[str]) -> None:
    results: dict[str, list[dict[str, float]]] = {}
    seconds: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        results.setdefault(row["arm"], []).append(row)
        seconds.setdefault(row["arm"], []).append(row["train_s"])
    ordered = [arm for arm in ARMS if arm in results]
    print(f"{path}: runs per arm {({arm: len(results[arm]) for arm in ordered})}")
    print_table(results, {arm: statistics.mean(values) for arm, values in seconds.items()}, ordered)


if __name__ == "__main__":
    main()
