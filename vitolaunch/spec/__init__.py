"""The sweep spec (v1): YAML -> validated `SweepSpec` -> list of `Trial`s.

Every mistake becomes one `SpecError` naming the file, the line (or the `-o` override) and the key, before
anything is submitted. One job per module: `locate` (where values came from, located errors), `schema` (the
models), `parameters` (`parameters:` -> axes), `base` (the base vito config), `load` (file and overrides),
`expand` (trials). Deliberately light: pydantic and yaml only, no torch/deepspeed/mlflow, so the CLI starts
instantly.

May import: the foundation (errors, workspace) and vito.config; nothing else of vitolaunch.
"""

from vitolaunch.spec.early_stop import EarlyStop, check_early_stop
from vitolaunch.spec.expand import Trial, check_trials_fit_resources, expand, trial_resources
from vitolaunch.spec.load import load_spec
from vitolaunch.spec.locate import DocPath, Locator
from vitolaunch.spec.parameters import ZIP_KEY, Axis, RandomDistribution
from vitolaunch.spec.resources import Resources, Retries, resolve_cluster
from vitolaunch.spec.schema import DEFAULT_OBJECTIVES, EvaluateTargets, Objective, Storage, SweepSpec, Tracking

__all__ = [
    "ZIP_KEY",
    "Axis",
    "DEFAULT_OBJECTIVES",
    "DocPath",
    "EarlyStop",
    "EvaluateTargets",
    "Locator",
    "Objective",
    "RandomDistribution",
    "Resources",
    "Retries",
    "Storage",
    "SweepSpec",
    "Tracking",
    "Trial",
    "check_early_stop",
    "check_trials_fit_resources",
    "expand",
    "load_spec",
    "resolve_cluster",
    "trial_resources",
]
