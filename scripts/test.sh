#!/usr/bin/env bash
# Install everything from nothing, lint, and run the whole test suite: unit tests, then integration tests against
# the real services this script starts (SLURM with accounting, SeaweedFS S3, an MLflow server).
#
#   bash scripts/test.sh            # what CI runs (.ci/run); CI set (not 0/false/no) turns service skips into failures
#   bash scripts/test.sh -k resume  # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
LOG_TAG="test.sh"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch is pinned in the same command as deepspeed: unpinned, pip pulls a 5 GB CUDA build on a CPU machine.
pip_quiet .venv/bin/python torch==2.13.0 -e '.[dev]'
# The `test` extra in a second step: its boto3 is pinned to the botocore the first step brought (see setup.cfg).
install_test_extra .venv/bin/python "$PWD"
.venv/bin/python -c "import torch, deepspeed, mlflow, submitit, av, boto3" # fail fast on a broken install

# lint first: seconds, and a failure names the line (rules in pyproject.toml, [tool.ruff])
.venv/bin/ruff check .

bash scripts/slurm-up.sh
VENV=.venv bash scripts/services-up.sh

# --durations: where the suite's time goes, printed with every run (it aims at ~20 min in CI)
exec .venv/bin/python -m pytest -q -ra --durations=15 "$@"
