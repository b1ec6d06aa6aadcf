#!/usr/bin/env bash
# Stop the services started by scripts/services-up.sh; their data (S3 objects, MLflow store) is kept.
#
# Usage: scripts/services-down.sh [all|s3|mlflow]      (default: all)
#
# Idempotent: stopping a service that is not running is fine. Returns once the processes are gone
# (SIGTERM to the service's process group, SIGKILL after VITOLAUNCH_STOP_TIMEOUT seconds, default 20).
# Environment: VITOLAUNCH_SERVICES_STATE (default /var/lib/vitolaunch-services), as for services-up.sh.
set -euo pipefail

STATE=$(realpath -m "${VITOLAUNCH_SERVICES_STATE:-/var/lib/vitolaunch-services}")
STOP_TIMEOUT=${VITOLAUNCH_STOP_TIMEOUT:-20}

log() { printf '[services-down] %s\n' "$*" >&2; }

WANT_S3=0 WANT_MLFLOW=0
case "${1:-all}" in
  all) WANT_S3=1 WANT_MLFLOW=1 ;;
  s3 | seaweedfs) WANT_S3=1 ;;
  mlflow) WANT_MLFLOW=1 ;;
  -h | --help) sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

if [[ ! -d $STATE ]]; then
  echo "nothing to stop: no state folder $STATE"
  exit 0
fi

# services-up.sh holds the lock already when it calls us to restart a service
if [[ -z ${VITOLAUNCH_SERVICES_LOCK_HELD:-} ]]; then
  exec 9>"$STATE/.lock"
  flock -w 600 9 || { log "another services-up/down holds $STATE/.lock"; exit 1; }
fi

alive() { # pid alive and not a zombie (PID 1 here reaps late)
  local line rest
  [[ -n ${1:-} ]] && read -r line 2>/dev/null </proc/"$1"/stat || return 1
  rest=${line##*) }
  [[ ${rest%% *} != [ZX] ]]
}

cmdline() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

pgid_of() { local line rest; read -r line 2>/dev/null </proc/"$1"/stat || return 1; rest=${line##*) }; set -- $rest; echo "$3"; }

# pids of live (non-zombie) processes in process group $1
group_members() {
  local want=$1 d line rest
  for d in /proc/[0-9]*; do
    read -r line 2>/dev/null <"$d/stat" || continue
    rest=${line##*) }
    set -- $rest
    [[ $3 == "$want" && $1 != [ZX] ]] || continue
    echo "${d#/proc/}"
  done
}

# our processes for a service: the pid file's pid when it still is ours, plus any process whose argv holds
# MARK (a pid file lost or overwritten). MARK is one argv element that only our service has.
our_pids() {
  local pidfile=$1 mark=$2 pid="" f p
  [[ -f $pidfile ]] && read -r pid <"$pidfile" || true
  if [[ -n $pid ]] && alive "$pid" && [[ " $(cmdline "$pid")" == *" $mark "* ]]; then echo "$pid"; fi
  for f in $(grep -lsF -f <(printf '%s\n' "$mark") /proc/[0-9]*/cmdline 2>/dev/null); do
    p=${f#/proc/}
    p=${p%/cmdline}
    [[ $p != "$pid" ]] && alive "$p" && [[ " $(cmdline "$p")" == *" $mark "* ]] && echo "$p"
  done
  return 0
}

stop_service() { # name pidfile mark
  local name=$1 pidfile=$2 mark=$3 pids=() targets=() p g deadline sig
  mapfile -t pids < <(our_pids "$pidfile" "$mark")
  if ((${#pids[@]} == 0)); then
    rm -f "$pidfile"
    echo "$name: not running"
    return 0
  fi
  # services-up.sh starts each service as the leader of its own process group (setsid): signal the whole
  # group (uvicorn workers included). A process that is not a group leader is signalled alone.
  for p in "${pids[@]}"; do
    g=$(pgid_of "$p" || true)
    if [[ $g == "$p" ]]; then targets+=("-$p"); else targets+=("$p"); fi
  done
  log "stopping $name (pid ${pids[*]})"
  local t0=$EPOCHREALTIME
  for sig in TERM KILL; do
    kill -s "$sig" -- "${targets[@]}" 2>/dev/null || true
    if [[ $sig == TERM ]]; then deadline=$((SECONDS + STOP_TIMEOUT)); else deadline=$((SECONDS + 10)); fi
    while ((SECONDS < deadline)); do
      local left=0
      for p in "${pids[@]}"; do
        if alive "$p" || [[ -n $(group_members "$p") ]]; then left=1; break; fi
      done
      ((left)) || break 2
      sleep 0.1
    done
    [[ $sig == TERM ]] && log "$name did not stop within ${STOP_TIMEOUT}s: SIGKILL"
  done
  for p in "${pids[@]}"; do
    if alive "$p" || [[ -n $(group_members "$p") ]]; then
      log "ERROR: $name (pid $p) is still alive"
      return 1
    fi
  done
  rm -f "$pidfile"
  echo "$name: stopped in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')s"
}

rc=0
((WANT_MLFLOW)) && { stop_service "MLflow server" "$STATE/run/mlflow.pid" "sqlite:///$STATE/mlflow/mlflow.db" || rc=1; }
((WANT_S3)) && { stop_service SeaweedFS "$STATE/run/seaweedfs.pid" "-dir=$STATE/s3/data" || rc=1; }
exit $rc
