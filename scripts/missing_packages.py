"""Print, one per line, the pip requirements of setup.cfg's `test` extra that this Python environment lacks.

    python scripts/missing_packages.py setup.cfg      # nothing printed: all there

Run by scripts/lib.sh (install_test_extra), for scripts/test.sh and scripts/services-up.sh.

boto3 is listed unpinned in the extra, and pinned here: boto3 X.Y.Z requires botocore >=X.Y.Z,<X.(Y+1), while
s3fs's aiobotocore pins botocore narrowly. Installing the boto3 whose version equals the installed botocore keeps
aiobotocore's pin satisfied, where an unpinned install backtracks through boto3 releases for minutes. When
botocore itself is missing, s3fs is printed first and boto3 left for the next round.
"""

from __future__ import annotations

import configparser
import importlib.metadata as metadata
import sys

try:
    from packaging.requirements import Requirement
except ImportError:  # a bare virtualenv: pip vendors the same module
    from pip._vendor.packaging.requirements import Requirement


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def test_extra(setup_cfg: str) -> list[Requirement]:
    parser = configparser.ConfigParser()
    if not parser.read(setup_cfg):
        raise SystemExit(f"{setup_cfg}: cannot read it")
    text = parser.get("options.extras_require", "test", fallback=None)
    if text is None:
        raise SystemExit(f"{setup_cfg}: no `test` in [options.extras_require]")
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [Requirement(line) for line in lines if line]


def missing(requirements: list[Requirement]) -> list[str]:
    out = []
    for requirement in requirements:
        version = installed(requirement.name)
        if requirement.name.lower() == "boto3":
            botocore = installed("botocore")
            if botocore is None:
                out.append("s3fs")  # brings the botocore that boto3 is then matched to
            elif version != botocore:
                out.append(f"boto3=={botocore}")
        elif version is None or not requirement.specifier.contains(version, prereleases=True):
            out.append(str(requirement))
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print("\n".join(missing(test_extra(sys.argv[1]))))
