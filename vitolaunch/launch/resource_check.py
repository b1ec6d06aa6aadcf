"""The cluster's facts about a spec's resources, checked before anything that depends on them.

A spec asking for 99 nodes of a 2-node cluster must hear that first, not that its batch does not split over
99 ranks: the scheduler's answer comes first, located at the spec line of the key at fault like every other
spec error (`file:line: key 'resources.nodes': ...`).
"""

from __future__ import annotations

from vitolaunch.errors import ResourceError


def check_resources(spec, backend, resources=None) -> None:
    """backend.check(resources) (by default the spec's), its refusal pointed at the spec's line (or -o override)."""
    try:
        backend.check(resources if resources is not None else spec.resources)
    except ResourceError as problem:
        path = tuple(problem.key.split("."))
        raise spec.error_at(path, problem.message, key=problem.key, hint=problem.hint) from None
