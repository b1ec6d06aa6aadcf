"""The keys of the vito config a spec may set, and the hint for one it may not."""

from __future__ import annotations

from collections.abc import Callable

from vito.config import leaf_paths
from vitolaunch.spec.locate import DocPath, did_you_mean, dotted

VITO_LEAVES = leaf_paths()
# Every proper prefix of a leaf, e.g. 'loss', 'data.synthetic': valid in a base config, not as a swept key.
VITO_SECTIONS = sorted({leaf.rsplit(".", n)[0] for leaf in VITO_LEAVES for n in range(1, leaf.count(".") + 1)})


def vito_key_hint(prefix: str) -> Callable[[DocPath], str | None]:
    """For an unknown key at `loc` of a vito config written under `prefix`: the key most likely meant."""

    def hint(loc: DocPath) -> str | None:
        return did_you_mean(dotted(loc), VITO_LEAVES + VITO_SECTIONS, prefix=prefix)

    return hint
