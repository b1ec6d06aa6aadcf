"""A pretraining spec's `then:`: the evaluate spec that one `vitolaunch sweep` queues after it, checked first."""

from __future__ import annotations

from vitolaunch.spec import SweepSpec, load_spec


def load_then(spec: SweepSpec) -> SweepSpec | None:
    """The evaluate spec a pretraining spec names in `then:`, validated before anything is submitted.

    It must be `task: evaluate` and name this sweep in `evaluate.runs`: that is what it evaluates, and the same
    file can then be swept alone later (e.g. again once the pretraining finished: nothing new is queued).
    """
    if spec.then is None:
        return None
    path = spec.folder / spec.then
    if not path.is_file():
        raise spec.error_at(("then",), f"the evaluate spec {path} does not exist", key="then",
                            hint="A relative path is resolved from this spec's folder.")
    then = load_spec(path)  # its own errors name its own file and lines
    runs = then.evaluate.runs if then.evaluate is not None else []
    if then.task != "evaluate" or spec.name not in runs:
        raise spec.error_at(("then",), f"{path} must be a task: evaluate spec whose evaluate.runs names this sweep",
                            key="then", hint=f"In {path}: task: evaluate and evaluate: {{runs: [{spec.name}]}}.")
    return then
