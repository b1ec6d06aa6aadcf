"""VideoNet-style curation: score candidate videos with an image classifier, keep the confident ones, and
balance the count per class toward a target distribution.

VITO curates VideoNet so that its class distribution matches ImageNet's; the recipe here is our reading of it
(see shared/notes/vito-method.md, [inferred]): each video's score is the classifier's softmax averaged over a
few evenly spaced frames; its class is the argmax and its confidence that class's mean probability. Videos
below `min_confidence` are dropped. Then, over the classes the target puts weight on, the largest set is kept
whose per-class counts are proportional to the target (exactly, or within `tolerance` in total variation),
taking the most confident videos of each class first. Classes with no confident video cannot be helped: they
are reported, and the target is renormalised over the classes that have some.

Any torch classifier works: a TorchScript file, a pickled `nn.Module`, a dict holding one under "model", or a
state dict with a factory ("package.module:function"). A checkpoint dict may carry "classes" (names),
"input_size", "mean" and "std"; command-line options override them.
"""

from __future__ import annotations

import importlib
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vito.data.augment import MEAN, STD
from vito.data.manifest import VideoRecord, read_manifest, write_manifest
from vito.data.video import decode_frames_at


@dataclass
class Classifier:
    model: torch.nn.Module
    classes: list[str] | None = None
    input_size: int = 224
    mean: tuple[float, float, float] = tuple(MEAN.tolist())  # type: ignore[assignment]
    std: tuple[float, float, float] = tuple(STD.tolist())  # type: ignore[assignment]


def _factory(spec: str) -> Callable[..., torch.nn.Module]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"a classifier factory is 'package.module:function', got {spec!r}")
    return getattr(importlib.import_module(module_name), attr)


def load_classifier(path: str | Path, factory: str | None = None) -> Classifier:
    """Load any torch classifier checkpoint (see the module docstring); the model is put in eval mode."""
    path = str(path)
    meta: dict[str, Any] = {}
    try:
        model = torch.jit.load(path, map_location="cpu")
    except RuntimeError:
        loaded = torch.load(path, map_location="cpu", weights_only=False)
        if isinstance(loaded, torch.nn.Module):
            model = loaded
        elif isinstance(loaded, dict):
            meta = loaded
            if isinstance(loaded.get("model"), torch.nn.Module):
                model = loaded["model"]
            else:
                key = next((k for k in ("state_dict", "model") if isinstance(loaded.get(k), dict)), None)
                state = loaded[key] if key else loaded
                chosen = factory or loaded.get("factory")
                if chosen is None:
                    raise ValueError(f"{path} holds a state dict: say how to build the network with a factory "
                                     "('package.module:function')") from None
                model = _factory(chosen)(**loaded.get("factory_kwargs", {}))
                model.load_state_dict(state)
        else:
            raise ValueError(f"{path}: not a TorchScript file, a module, or a checkpoint dict") from None
    model.eval()
    classifier = Classifier(model)
    if meta.get("classes"):
        classifier.classes = [str(c) for c in meta["classes"]]
    if meta.get("input_size"):
        classifier.input_size = int(meta["input_size"])
    if meta.get("mean"):
        classifier.mean = tuple(float(v) for v in meta["mean"])  # type: ignore[assignment]
    if meta.get("std"):
        classifier.std = tuple(float(v) for v in meta["std"])  # type: ignore[assignment]
    return classifier


# ----------------------------------------------------------------------------------------------- scoring


@dataclass
class Scored:
    record: VideoRecord
    probabilities: np.ndarray | None  # mean softmax over frames; None: unreadable
    error: str | None = None

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def confidence(self) -> float:
        return float(np.max(self.probabilities))


def _frame_times(record: VideoRecord, count: int) -> list[float]:
    """Centres of `count` equal segments of the clip."""
    duration = max(record.duration_s, 0.0)
    return [duration * (k + 0.5) / count for k in range(count)]


def _prepare(frame: np.ndarray, classifier: Classifier) -> torch.Tensor:
    image = torch.from_numpy(frame).permute(2, 0, 1).float().div_(255)
    _, height, width = image.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = image[:, top : top + side, left : left + side]
    size = classifier.input_size
    image = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    mean = torch.tensor(classifier.mean)[:, None, None]
    std = torch.tensor(classifier.std)[:, None, None]
    return (image.clamp(0, 1) - mean) / std


@torch.no_grad()
def score_videos(
    records: Sequence[VideoRecord], classifier: Classifier, frames: int = 4, batch_videos: int = 16, workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> list[Scored]:
    """Every video's mean class probabilities over `frames` frames; unreadable videos carry their error."""

    def load(record: VideoRecord) -> torch.Tensor | str:
        try:
            return torch.stack([_prepare(f, classifier) for f in decode_frames_at(record.uri, _frame_times(record, frames))])
        except Exception as problem:  # noqa: BLE001 - an unreadable candidate is reported, never fatal
            return f"{type(problem).__name__}: {str(problem).splitlines()[0][:200] if str(problem) else ''}"

    results: list[Scored] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(records), batch_videos):
            chunk = records[start : start + batch_videos]
            loaded = list(pool.map(load, chunk))
            good = [(r, x) for r, x in zip(chunk, loaded) if isinstance(x, torch.Tensor)]
            probabilities: dict[int, np.ndarray] = {}
            if good:
                logits = classifier.model(torch.cat([x for _, x in good]))
                if isinstance(logits, (tuple, list)):
                    logits = logits[0]
                probs = logits.float().softmax(dim=1).view(len(good), frames, -1).mean(dim=1).numpy()
                probabilities = {id(r): p for (r, _), p in zip(good, probs)}
            for record, item in zip(chunk, loaded):
                if isinstance(item, str):
                    results.append(Scored(record, None, item))
                else:
                    results.append(Scored(record, probabilities[id(record)]))
            if progress is not None:
                progress(len(results), len(records))
    return results


# ------------------------------------------------------------------------------------------- balancing


def total_variation(counts: dict[int, int], target: dict[int, float]) -> float:
    """Total variation distance between a histogram (normalised) and a target distribution, in [0, 1]."""
    total = sum(counts.values())
    keys = set(counts) | set(target)
    if total == 0:
        return 1.0
    return 0.5 * sum(abs(counts.get(k, 0) / total - target.get(k, 0.0)) for k in keys)


def balanced_counts(available: dict[int, int], target: dict[int, float], tolerance: float = 0.0,
                    max_total: int | None = None) -> dict[int, int]:
    """How many videos to keep per class: the largest total whose counts follow `target`.

    tolerance 0: counts proportional to the target (floor(N * p_c), N as large as the scarcest class allows).
    tolerance t > 0: the largest N whose counts min(available, floor(N * p_c)) stay within t (total
    variation) of the target, or the proportional solution if that is already further.
    """
    reachable = {c: w for c, w in target.items() if w > 0 and available.get(c, 0) > 0}
    if not reachable:
        return {}
    norm = sum(reachable.values())
    weights = {c: w / norm for c, w in reachable.items()}

    def counts_at(n: float) -> dict[int, int]:
        return {c: min(available[c], math.floor(n * w + 1e-9)) for c, w in weights.items()}

    exact = min(available[c] / w for c, w in weights.items())
    ceiling = max(available[c] / w for c, w in weights.items())
    if max_total is not None:
        exact, ceiling = min(exact, max_total), min(ceiling, max_total)
    best = _closest_floored(counts_at, weights, exact, target)
    if tolerance > 0:
        floor_tv = total_variation(best, target)
        low, high = exact, ceiling
        for _ in range(60):  # bisection on N: more videos, further from the target
            middle = (low + high) / 2
            candidate = counts_at(middle)
            if total_variation(candidate, target) <= max(tolerance, floor_tv) + 1e-12:
                best, low = candidate, middle
            else:
                high = middle
    if max_total is not None:
        while sum(best.values()) > max_total:  # flooring can never exceed, but be exact about it
            largest = max(best, key=lambda c: best[c])
            best[largest] -= 1
    return {c: n for c, n in best.items() if n > 0}


def _closest_floored(counts_at: Callable[[float], dict[int, int]], weights: dict[int, float], limit: float,
                     target: dict[int, float]) -> dict[int, int]:
    """The floored counts nearest the target among totals up to `limit`, the largest total on a tie.

    Flooring at the limit alone can break the proportions (1:2 with room for 4.5 and 9 gives 4 and 9, not 4
    and 8): the counts only change where some N * p_c crosses an integer, so those points are all there is
    to compare.
    """
    points = {limit} | {k / w for c, w in weights.items() for k in range(1, math.floor(limit * w + 1e-9) + 1)}
    candidates = [counts_at(n) for n in sorted(points, reverse=True) if n <= limit + 1e-9]
    return min(candidates, key=lambda counts: (round(total_variation(counts, target), 12), -sum(counts.values())))


# ------------------------------------------------------------------------------------------ curation


@dataclass
class CurationResult:
    curated: list[VideoRecord]
    report: dict[str, Any] = field(default_factory=dict)


def parse_target(spec: str | dict | None, classes: list[str]) -> dict[int, float]:
    """'uniform', a path to a JSON histogram ({class name or index: weight} or a list by index), or a dict."""
    if spec is None or spec == "uniform":
        return {index: 1.0 / len(classes) for index in range(len(classes))}
    if isinstance(spec, str):
        spec = json.loads(Path(spec).read_text())
    if isinstance(spec, list):
        spec = {str(i): w for i, w in enumerate(spec)}
    if not isinstance(spec, dict):
        raise ValueError("a target histogram is 'uniform', {class: weight} or [weight per class index]")
    by_name = {name: index for index, name in enumerate(classes)}
    weights: dict[int, float] = {}
    for key, weight in spec.items():
        key = str(key)
        if key in by_name:
            index = by_name[key]
        elif key.lstrip("-").isdigit() and 0 <= int(key) < len(classes):
            index = int(key)
        else:
            raise ValueError(f"target class {key!r} is not one of the classifier's classes ({', '.join(classes[:10])}...)")
        if float(weight) < 0:
            raise ValueError(f"target weight of {key!r} is negative")
        weights[index] = weights.get(index, 0.0) + float(weight)
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("the target histogram has no positive weight")
    return {c: w / total for c, w in weights.items()}


def curate(
    candidates: Sequence[VideoRecord], classifier: Classifier, target: str | dict | None = "uniform",
    min_confidence: float = 0.5, frames: int = 4, tolerance: float = 0.0, max_videos: int | None = None,
    workers: int = 4, progress: Callable[[int, int], None] | None = None,
) -> CurationResult:
    scored = score_videos(candidates, classifier, frames, workers=workers, progress=progress)
    readable = [s for s in scored if s.probabilities is not None]
    num_classes = len(readable[0].probabilities) if readable else len(classifier.classes or [])
    classes = classifier.classes or [str(i) for i in range(num_classes)]
    if readable and len(classes) != num_classes:
        raise ValueError(f"the classifier has {num_classes} outputs but {len(classes)} class names")
    weights = parse_target(target, classes)

    confident = [s for s in readable if s.confidence >= min_confidence]
    by_class: dict[int, list[Scored]] = {}
    for item in confident:
        by_class.setdefault(item.predicted, []).append(item)
    for items in by_class.values():
        items.sort(key=lambda s: (-s.confidence, s.record.uri))
    keep = balanced_counts({c: len(v) for c, v in by_class.items()}, weights, tolerance, max_videos)
    chosen = sorted((s for c, n in keep.items() for s in by_class[c][:n]), key=lambda s: s.record.uri)
    curated = [
        replace(s.record, label=s.predicted, label_name=classes[s.predicted] if classifier.classes else None,
                score=round(s.confidence, 6))
        for s in chosen
    ]

    def histogram(items: Sequence[Scored]) -> dict[int, int]:
        return dict(Counter(s.predicted for s in items))

    stages = {"candidates": histogram(readable), "confident": histogram(confident), "curated": histogram(chosen)}
    named = {stage: {classes[c]: n for c, n in sorted(h.items())} for stage, h in stages.items()}
    distance = {stage: round(total_variation(h, weights), 6) for stage, h in stages.items()}
    report: dict[str, Any] = {
        "candidates": len(candidates),
        "unreadable": len(scored) - len(readable),
        "unreadable_videos": [{"uri": s.record.uri, "reason": s.error} for s in scored if s.probabilities is None],
        "min_confidence": min_confidence,
        "frames_per_video": frames,
        "confident": len(confident),
        "curated": len(curated),
        "classes": classes,
        "target": {classes[c]: round(w, 6) for c, w in sorted(weights.items())},
        "histogram": named,
        "total_variation_to_target": distance,
        "total_variation_reduction": round(distance["candidates"] - distance["curated"], 6),
        "unreachable_classes": [classes[c] for c, w in sorted(weights.items()) if w > 0 and c not in by_class],
        "tolerance": tolerance,
    }
    labelled = [s for s in readable if s.record.label is not None]
    if labelled:  # how often the classifier agrees with labels the candidates already had
        report["agreement_with_source_labels"] = round(
            sum(s.predicted == s.record.label for s in labelled) / len(labelled), 6)
    return CurationResult(curated, report)


def curate_manifest(
    candidates_path: str | Path, classifier_path: str | Path, output: str | Path, *, factory: str | None = None,
    classes: list[str] | None = None, input_size: int | None = None, mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None, **options: Any,
) -> dict[str, Any]:
    """Read, curate, write the manifest; returns the report. classes/input_size/mean/std override the
    checkpoint's own; `options` are `curate`'s (target, min_confidence, frames, tolerance, max_videos, workers)."""
    classifier = load_classifier(classifier_path, factory)
    if classes is not None:
        classifier.classes = list(classes)
    if input_size is not None:
        classifier.input_size = input_size
    if mean is not None:
        classifier.mean = tuple(mean)  # type: ignore[assignment]
    if std is not None:
        classifier.std = tuple(std)  # type: ignore[assignment]
    result = curate(read_manifest(candidates_path), classifier, **options)
    write_manifest(output, result.curated)
    result.report.update({"input": str(candidates_path), "output": str(output), "classifier": str(classifier_path)})
    return result.report


def format_report(report: dict[str, Any]) -> str:
    """A few readable lines: counts, and each class before -> after against the target."""
    lines = [
        f"{report['curated']} of {report['candidates']} videos kept ({report['unreadable']} unreadable, "
        f"{report['confident']} at confidence >= {report['min_confidence']:g})",
        "class: candidates -> curated (target share)",
    ]
    before, after = report["histogram"]["candidates"], report["histogram"]["curated"]
    for name in report["classes"]:
        if name in before or name in after or report["target"].get(name):
            lines.append(f"  {name}: {before.get(name, 0)} -> {after.get(name, 0)} ({report['target'].get(name, 0):.3f})")
    tv = report["total_variation_to_target"]
    lines.append(f"total variation to the target: {tv['candidates']:.3f} -> {tv['curated']:.3f} "
                 f"(reduced by {report['total_variation_reduction']:.3f})")
    if report["unreachable_classes"]:
        lines.append(f"no confident video for: {', '.join(report['unreachable_classes'])}")
    return "\n".join(lines)
