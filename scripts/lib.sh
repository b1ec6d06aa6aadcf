# shellcheck shell=bash
# Helpers shared by scripts/{slurm,services}-{up,down}.sh and scripts/test.sh. Sourced, never run:
#   LOG_TAG=slurm-up; source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Messages go to stderr, so a script's stdout stays free for what it reports (services-up.sh: endpoints).

LOG_TAG=${LOG_TAG:-$(basename "$0" .sh)}

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }

die() { # MESSAGE [LOG_FILE...]: the message, then the end of each log file that exists, and exit 1
  printf '[%s] ERROR: %s\n' "$LOG_TAG" "$1" >&2
  shift
  local f
  for f in "$@"; do
    if [[ -f $f ]]; then
      printf '[%s] ---- last lines of %s ----\n' "$LOG_TAG" "$f" >&2
      tail -n 30 "$f" | sed 's/^/    /' >&2 || true
    fi
  done
  exit 1
}

usage() { # the script's header comment, without the shebang
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; } # START (an $EPOCHREALTIME)

require_root() { # WHY
  [[ $(id -u) -eq 0 ]] || die "must run as root ($1)"
}

# ---------------------------------------------------------------- processes
pid_alive() { # PID: it exists and is not a zombie (PID 1 here reaps late, so a killed daemon can linger as one)
  local line rest
  [[ ${1:-} =~ ^[0-9]+$ ]] && read -r line 2>/dev/null <"/proc/$1/stat" || return 1
  rest=${line##*) }
  [[ ${rest%% *} != [ZX] ]]
}

cmdline() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; } # PID: its argv, space separated

# daemon_pids PIDFILE COMM REGEX: live pids of a daemon whose command name is COMM and whose argv matches REGEX,
# the pid file's first, then any other (pgrep). A stale pid file (dead, zombie or reused pid) is removed.
daemon_pids() {
  local pidfile=$1 comm=$2 regex=$3 pid="" p
  if [[ -s $pidfile ]]; then
    pid=$(tr -dc '0-9' <"$pidfile" 2>/dev/null || true)
    if pid_alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] && cmdline "$pid" | grep -Eq -- "$regex"
    then
      echo "$pid"
    else
      rm -f "$pidfile"
      pid=""
    fi
  fi
  for p in $(pgrep -f -- "$regex" 2>/dev/null || true); do
    if [[ $p != "$pid" ]] && pid_alive "$p" && [[ $(cat "/proc/$p/comm" 2>/dev/null) == "$comm" ]]; then
      echo "$p"
    fi
  done
  return 0
}

daemon_pid() { # PIDFILE COMM REGEX: the first of daemon_pids; fails when none runs
  local pids
  pids=$(daemon_pids "$@")
  [[ -n $pids ]] || return 1
  echo "${pids%%$'\n'*}"
}

stop_pids() { # NAME TIMEOUT_S PID...: SIGTERM, wait, SIGKILL, wait 5 s more; fails when one survives
  local name=$1 timeout=$2 pid i left
  shift 2
  (($#)) || return 0
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for ((i = 0; i < timeout * 10 + 50; i++)); do
    left=""
    for pid in "$@"; do pid_alive "$pid" && left+=" $pid"; done
    [[ -z $left ]] && return 0
    if ((i == timeout * 10)); then
      log "$name (pid$left) ignored SIGTERM for $timeout s: SIGKILL"
      for pid in $left; do kill -KILL "$pid" 2>/dev/null || true; done
    fi
    sleep 0.1
  done
  log "ERROR: could not stop $name (pid$left)"
  return 1
}

# wait_for SECONDS COMMAND...: poll COMMAND every 0.2 s until it succeeds; fails after SECONDS
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# take_lock DIR: one services-up/down at a time. services-down.sh, called by services-up.sh to restart a
# service, inherits the lock through VITOLAUNCH_SERVICES_LOCK_HELD instead of waiting for itself.
take_lock() {
  [[ -z ${VITOLAUNCH_SERVICES_LOCK_HELD:-} ]] || return 0
  exec 9>>"$1/.lock"
  flock -w 300 9 || die "another services-up/down holds $1/.lock"
  export VITOLAUNCH_SERVICES_LOCK_HELD=1
}

# ---------------------------------------------------------------- packages
pip_quiet() { # PYTHON ARGS...: pip install, quiet, minus this machine's index-location noise; pip's status is kept
  local py=$1
  shift
  "$py" -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v '^WARNING: Location' || true; } >&2
}

# install_test_extra PYTHON REPO: install what setup.cfg's `test` extra lists and the environment lacks, with
# boto3 pinned to the installed botocore (scripts/missing_packages.py says why). Installs packages only, never
# the project itself, so it is safe on a developer's virtualenv. A no-op (~0.1 s) when all is there.
install_test_extra() {
  local py=$1 repo=$2 round out missing=()
  # three rounds at most: s3fs (which brings botocore), then boto3 pinned to that botocore, then the check
  for round in 1 2 3; do
    out=$("$py" "$repo/scripts/missing_packages.py" "$repo/setup.cfg") || die "cannot read the test extra of $repo/setup.cfg"
    [[ -n $out ]] || return 0
    mapfile -t missing <<<"$out"
    ((round < 3)) || die "still missing after pip install: ${missing[*]}"
    log "installing ${missing[*]} into $("$py" -c 'import sys; print(sys.prefix)')"
    pip_quiet "$py" "${missing[@]}" && continue
    # No boto3 release carries exactly botocore's version: pin botocore instead and let pip pick the boto3.
    [[ " ${missing[*]} " == *" boto3=="* ]] || die "pip install ${missing[*]} failed"
    pip_quiet "$py" "${missing[@]/#boto3==/botocore==}" boto3 || die "pip install failed"
  done
}
