#!/usr/bin/env bash
# Run benchmarks/gpu_check.py on the lent GPU machine as that machine is: offline, over its own python3 and CUDA torch.
#
#   bash benchmarks/gpu_run.sh                  # the device tool's command, with carry [".gpu-bundle"] (docs/gpu-check.md)
#   bash benchmarks/gpu_run.sh --cpu --tiny     # arguments go to gpu_check.py
#
# Steps, each timed, so that a failure costs one call and says where: a venv that sees what python3 sees; an offline
# install of the wheels benchmarks/gpu_bundle.py built; a check that torch is still the machine's own; gpu_check.py.
# Writes gpu_check.json and gpu_run.log (everything printed) to $OUT, or to .gpu-run/ where $OUT is unset.
# Environment: GPU_BUNDLE (.gpu-bundle), GPU_PYTHON (python3), GPU_VENV (${TMPDIR:-/tmp}/vito-gpu-venv) and
# GPU_RUN_BUDGET_S (360: the whole run, install included, so that a second try fits in the 15 device minutes too;
# gpu_check.py gets what is left as its --timeout unless the arguments give one).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${OUT:-$REPO/.gpu-run}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd) # a relative $OUT is the caller's, not the repository's
cd "$REPO"
BUNDLE=${GPU_BUNDLE:-.gpu-bundle} # relative to the repository, as the device call's carry is
PY=${GPU_PYTHON:-python3}
VENV=${GPU_VENV:-${TMPDIR:-/tmp}/vito-gpu-venv}
BUDGET_S=${GPU_RUN_BUDGET_S:-360}
STARTED=$EPOCHREALTIME
# Room left after gpu_check.py's deadline for its report, its exit and this script's last lines.
EXIT_MARGIN_S=20

since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; } # START (an $EPOCHREALTIME)
say() { printf '[gpu_run %6s s] %s\n' "$(since "$STARTED")" "$*"; }

step() { # NAME COMMAND...: run it and print its time (a failure stops the run: see the ERR trap in main)
  STEP=$1 STEP_BEGAN=$EPOCHREALTIME
  shift
  say "$STEP ..."
  "$@"
  say "$STEP: done in $(since "$STEP_BEGAN") s"
}

failed() { # EXIT_STATUS: name the step that failed, so that one call's output says where
  [[ $BASHPID == "$MAIN_PID" ]] || exit "$1" # a subshell's failure is reported once, by the main shell
  say "FAILED at step '${STEP:-setup}' after $(since "${STEP_BEGAN:-$STARTED}") s (exit $1)"
  exit "$1"
}

offline_pip() { # pip ARGS... for the venv, from the bundle alone: no index, and no config or PIP_* of this machine
  (
    while read -r name; do unset "$name"; done < <(compgen -e | grep '^PIP_' || true)
    export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore \
      PIP_NO_CACHE_DIR=1 PIP_PROGRESS_BAR=off
    "${PIP[@]}" "$@"
  )
}

make_venv() {
  if [[ -e $VENV && ! -f $VENV/pyvenv.cfg ]]; then
    echo "$VENV exists and is no venv: not removing it (set GPU_VENV)" >&2
    return 1
  fi
  rm -rf "$VENV"
  # `python3 -m venv --system-site-packages` is not enough: python3 there is itself a venv (/opt/torch/.venv), and a
  # venv made from one sees the base interpreter's packages, not that venv's, so it would not see torch. Instead the
  # new venv adds python3's own site folders after its own, by a .pth file: it sees exactly what python3 sees, and
  # what it installs shadows nothing of the machine's but what the bundle brings.
  if "$PY" -m pip --python "$PY" --version >/dev/null 2>&1; then # a pip that can install into another interpreter
    "$PY" -m venv --without-pip "$VENV" # python3's pip installs into it (--python): no ensurepip needed there
    PIP=("$PY" -m pip --python "$VENV/bin/python")
  else
    "$PY" -m venv "$VENV"
    PIP=("$VENV/bin/python" -m pip)
    # Before Python 3.12 ensurepip also puts an old setuptools there, which would shadow the machine's (torch wants >= 77).
    offline_pip uninstall --yes --quiet setuptools
  fi
  local purelib
  purelib=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$PY" -c 'import site; print("".join(f"import site; site.addsitedir({d!r})\n" for d in site.getsitepackages()), end="")' \
    >"$purelib/_gpu_run_machine_site.pth"
  sed 's/^/    /' "$purelib/_gpu_run_machine_site.pth"
}

torch_identity() { "$VENV/bin/python" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.__file__)'; }

install_bundle() {
  [[ -f $BUNDLE/requirements.txt ]] || {
    echo "no $BUNDLE/requirements.txt: build it here with benchmarks/gpu_bundle.py and name it in the call's carry" >&2
    return 1
  }
  TORCH_BEFORE=$(torch_identity) || { echo "$PY does not see torch" >&2; return 1; }
  echo "    torch before: $TORCH_BEFORE"
  offline_pip install --find-links "$BUNDLE" -r "$BUNDLE/requirements.txt"
  # The project's own requirements (submitit, mlflow, s3fs, ...) are the launcher's: the check needs none of them.
  offline_pip install --no-deps "$BUNDLE"/vitolaunch-*.whl
}

verify() {
  local after
  after=$(torch_identity)
  echo "    torch after:  $after"
  [[ $after == "$TORCH_BEFORE" ]] || { echo "the install replaced the machine's torch" >&2; return 1; }
  "$VENV/bin/python" - <<'EOF'
import importlib.metadata, platform, sys

print(f"    python {platform.python_version()} at {sys.executable}")
for name in ("torch", "deepspeed", "pydantic", "pydantic-core", "typing-extensions", "av", "numpy", "vitolaunch"):
    dist = importlib.metadata.distribution(name)
    print(f"    {name:>18} {dist.version:<14} {dist.locate_file('')}")
import av, deepspeed, pydantic  # what gpu_check.py's sections import, here in seconds rather than in each section
import vito.train, vitolaunch.spec
EOF
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/    /'
  fi
}

run_check() {
  local args=("$@") timeout
  if [[ " ${args[*]} " != *" --timeout "* && " ${args[*]} " != *" --timeout="* ]]; then
    timeout=$(awk -v budget="$BUDGET_S" -v used="$(since "$STARTED")" -v margin="$EXIT_MARGIN_S" \
      'BEGIN { left = budget - used - margin; printf "%d", (left > 30 ? left : 30) }')
    args+=(--timeout "$timeout")
  fi
  echo "    gpu_check.py ${args[*]}"
  "$VENV/bin/python" benchmarks/gpu_check.py --out "$OUT_DIR/gpu_check.json" "${args[@]}"
}

main() {
  set -E # the ERR trap also fires inside the steps' functions
  MAIN_PID=$BASHPID
  trap 'failed $?' ERR
  say "repository $REPO, bundle $BUNDLE, python $PY, venv $VENV, output $OUT_DIR, budget $BUDGET_S s"
  step "venv" make_venv
  step "install (offline)" install_bundle
  step "verify" verify
  step "gpu_check" run_check "$@"
  say "finished: $(cd "$OUT_DIR" && echo *)"
}

export PYTHONUNBUFFERED=1
rm -f "$OUT_DIR/gpu_check.json" "$OUT_DIR/gpu_run.log"
main "$@" 2>&1 | tee "$OUT_DIR/gpu_run.log"
exit "${PIPESTATUS[0]}"
