"""ImageNet-C mCE and relative mCE, ImageNet-3DCC errors, from a table {corruption: {severity: top1}}.

mCE follows Hendrycks & Dietterich (hendrycks/robustness):

    CE_c          = sum_s E_{s,c} / sum_s E^AlexNet_{s,c}            (E = top-1 error, s = severity 1..5)
    relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^AlexNet_{s,c} - E^AlexNet_clean)
    mCE           = mean of CE_c over the 15 benchmark corruptions (the 4 extra ones reported apart, never in it)

`ALEXNET_ERRORS` holds AlexNet's error averaged over the 5 severities, per corruption. The sum over 5 severities
is 5 times that average, and the 5 cancels with the model's own mean, so CE_c = mean_s E_{s,c} / ALEXNET_ERRORS[c].

A partial table (some of the 15 benchmark corruptions missing) is NOT averaged: `mce` (and `relative_mce`) is
None and `missing` names what is absent; the CE_c of the corruptions present are still reported. An average over
a subset is a different number from mCE and must not be reported under its name. A corruption present with
other severities than 1..5 is a ValueError (the reader refuses such a tree too).

ImageNet-3DCC has no AlexNet table: top-1 and unnormalised error per corruption x severity, their mean per
corruption, and the mean over all 12 (None when some are missing, as for mCE).

Every `as_rows()` is one row per corruption x severity, for a CSV; `as_record()` the summary with its constants.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vito.eval.datasets.corruption_tree import IMAGENET_3DCC, IMAGENET_C_BENCHMARK, IMAGENET_C_EXTRA, SEVERITIES

Table = Mapping[str, Mapping[int, float]]  # corruption -> severity -> top-1 (a fraction in [0, 1])

# AlexNet's top-1 error on ImageNet-C, averaged over severities 1..5: hendrycks/robustness's table, the same 15
# values in the stored copies of its users (AugMix's ALEXNET_ERR, get_ce_alexnet()), keyed here by folder name.
ALEXNET_ERRORS: dict[str, float] = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
}
# AlexNet's clean ImageNet val top-1 error, the subtrahend of the relative mCE's denominator.
# UNVERIFIED: 0.4348 is the value quoted for this purpose (top-1 56.52 %); not confirmed from a stored copy of
# hendrycks/robustness. Recorded in every result so a corrected value can be told apart.
ALEXNET_CLEAN_ERROR = 0.4348
assert tuple(ALEXNET_ERRORS) == IMAGENET_C_BENCHMARK


def _normalised(table: Table) -> dict[str, dict[int, float]]:
    """Severity keys as ints (a table read back from JSON has "1".."5")."""
    try:
        return {name: {int(s): top1 for s, top1 in by_severity.items()} for name, by_severity in table.items()}
    except (TypeError, ValueError) as problem:
        raise ValueError(f"severities must be 1..5: {problem}") from None


def _check_table(table: Table, known: tuple[str, ...]) -> None:
    unknown = [name for name in table if name not in known]
    if unknown:
        raise ValueError(f"unknown corruption(s) {', '.join(sorted(unknown))}: expected names among {', '.join(known)}")
    for name, by_severity in table.items():
        if sorted(by_severity) != list(SEVERITIES):
            raise ValueError(f"{name}: severities {sorted(by_severity)}, expected exactly {list(SEVERITIES)}")
        for severity, top1 in by_severity.items():
            if not (isinstance(top1, int | float) and math.isfinite(top1) and 0.0 <= top1 <= 1.0):
                raise ValueError(f"{name} severity {severity}: top-1 {top1!r} is not a fraction in [0, 1]")


def _mean_error(by_severity: Mapping[int, float]) -> float:
    return sum(1.0 - by_severity[s] for s in SEVERITIES) / len(SEVERITIES)


@dataclass
class CorruptionErrorResult:
    """ImageNet-C: CE_c per benchmark corruption present, mCE when all 15 are, extras apart."""

    top1: dict[str, dict[int, float]]  # as given: corruption -> severity -> top-1
    ce: dict[str, float]  # benchmark corruptions present -> CE_c
    mce: float | None  # None unless all 15 benchmark corruptions are present
    extra_errors: dict[str, float]  # extra corruptions present -> mean error over severities (not normalised)
    missing: list[str]  # benchmark corruptions absent (mce is None when not empty)
    clean_top1: float | None = None
    relative_ce: dict[str, float] | None = None  # None without clean_top1
    relative_mce: float | None = None
    alexnet_errors: dict[str, float] = field(default_factory=lambda: dict(ALEXNET_ERRORS))
    alexnet_clean_error: float = ALEXNET_CLEAN_ERROR

    def as_rows(self) -> list[dict[str, Any]]:
        rows = []
        for name, by_severity in self.top1.items():
            benchmark = name in IMAGENET_C_BENCHMARK
            for severity in SEVERITIES:
                rows.append({
                    "corruption": name,
                    "in_mce": benchmark,
                    "severity": severity,
                    "top1": by_severity[severity],
                    "error": 1.0 - by_severity[severity],
                    "alexnet_error_mean": ALEXNET_ERRORS.get(name),
                    "ce": self.ce.get(name),
                    "relative_ce": (self.relative_ce or {}).get(name),
                })
        return rows

    def as_record(self) -> dict[str, Any]:
        return {
            "mce": self.mce,
            "relative_mce": self.relative_mce,
            "ce": dict(self.ce),
            "relative_ce": None if self.relative_ce is None else dict(self.relative_ce),
            "extra_errors": dict(self.extra_errors),
            "missing": list(self.missing),
            "clean_top1": self.clean_top1,
            "severities": list(SEVERITIES),
            "alexnet_errors": dict(self.alexnet_errors),
            "alexnet_clean_error": self.alexnet_clean_error,
            "alexnet_clean_error_verified": False,
        }


def imagenet_c_errors(table: Table, clean_top1: float | None = None) -> CorruptionErrorResult:
    """CE_c, mCE and (with `clean_top1`, the model's clean ImageNet val top-1) relative CE_c and relative mCE.

    Extras (speckle_noise, gaussian_blur, spatter, saturate) may be in the table: their mean error is reported in
    `extra_errors`, never in a CE or mCE. With some benchmark corruption missing, mce/relative_mce are None."""
    table = _normalised(table)
    _check_table(table, IMAGENET_C_BENCHMARK + IMAGENET_C_EXTRA)
    if clean_top1 is not None and not 0.0 <= clean_top1 <= 1.0:
        raise ValueError(f"clean_top1 {clean_top1!r} is not a fraction in [0, 1]")
    top1 = {name: {s: float(table[name][s]) for s in SEVERITIES} for name in table}
    # sum_s E / sum_s E_alex = (5 * mean_s E) / (5 * ALEXNET_ERRORS[c])
    ce = {name: _mean_error(top1[name]) / ALEXNET_ERRORS[name] for name in IMAGENET_C_BENCHMARK if name in top1}
    extra = {name: _mean_error(top1[name]) for name in IMAGENET_C_EXTRA if name in top1}
    missing = [name for name in IMAGENET_C_BENCHMARK if name not in top1]
    relative_ce = None
    if clean_top1 is not None:
        clean_error = 1.0 - clean_top1
        relative_ce = {name: (_mean_error(top1[name]) - clean_error) / (ALEXNET_ERRORS[name] - ALEXNET_CLEAN_ERROR)
                       for name in ce}
    complete = not missing
    return CorruptionErrorResult(
        top1=top1,
        ce=ce,
        mce=sum(ce.values()) / len(ce) if complete else None,
        extra_errors=extra,
        missing=missing,
        clean_top1=clean_top1,
        relative_ce=relative_ce,
        relative_mce=sum(relative_ce.values()) / len(relative_ce) if complete and relative_ce is not None else None,
    )


@dataclass
class CorruptionTop1Result:
    """ImageNet-3DCC (or any corruption set without a reference model): unnormalised errors."""

    top1: dict[str, dict[int, float]]
    mean_error: dict[str, float]  # corruption -> mean error over severities 1..5
    overall_error: float | None  # mean over all 12 corruptions x 5 severities; None when some are missing
    missing: list[str]

    @property
    def overall_top1(self) -> float | None:
        return None if self.overall_error is None else 1.0 - self.overall_error

    def as_rows(self) -> list[dict[str, Any]]:
        return [{"corruption": name, "severity": severity, "top1": by_severity[severity],
                 "error": 1.0 - by_severity[severity], "mean_error": self.mean_error[name]}
                for name, by_severity in self.top1.items() for severity in SEVERITIES]

    def as_record(self) -> dict[str, Any]:
        return {"mean_error": dict(self.mean_error), "overall_error": self.overall_error,
                "overall_top1": self.overall_top1, "missing": list(self.missing), "severities": list(SEVERITIES)}


def imagenet_3dcc_errors(table: Table) -> CorruptionTop1Result:
    """Top-1 and error per corruption x severity, the mean error per corruption and over all 12."""
    table = _normalised(table)
    _check_table(table, IMAGENET_3DCC)
    top1 = {name: {s: float(table[name][s]) for s in SEVERITIES} for name in IMAGENET_3DCC if name in table}
    mean_error = {name: _mean_error(by_severity) for name, by_severity in top1.items()}
    missing = [name for name in IMAGENET_3DCC if name not in top1]
    overall = None if missing else sum(mean_error.values()) / len(mean_error)
    return CorruptionTop1Result(top1, mean_error, overall, missing)
