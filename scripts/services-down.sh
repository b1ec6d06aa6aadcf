#!/usr/bin/env bash
# Stop the services started by scripts/services-up.sh; their data (S3 objects, MLflow store) is kept.
#
# Usage: scripts/services-down.sh [all|s3|mlflow]      (default: all)
#
# Idempotent: stopping a service that is not running is fine. Returns once the processes are gone
# (SIGTERM to the service's process group, SIGKILL after VITOLAUNCH_STOP_TIMEOUT seconds, default 20).
# Environment: VITOLAUNCH_SERVICES_STATE (default /var/lib/vitolaunch-services), as for services-up.sh.
set -euo pipefail
LOG_TAG=services-down
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE=$(realpath -m "${VITOLAUNCH_SERVICES_STATE:-/var/lib/vitolaunch-services}")
STOP_TIMEOUT=${VITOLAUNCH_STOP_TIMEOUT:-20}

WANT_S3=0 WANT_MLFLOW=0
case "${1:-all}" in
  all) WANT_S3=1 WANT_MLFLOW=1 ;;
  s3 | seaweedfs) WANT_S3=1 ;;
  mlflow) WANT_MLFLOW=1 ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

if [[ ! -d $STATE ]]; then
  echo "nothing to stop: no state folder $STATE"
  exit 0
fi

take_lock "$STATE"

# /proc/PID/stat after the command name: state, ppid, pgrp, ... (the name may hold spaces and parentheses)
pgid_of() {
  local line fields
  read -r line 2>/dev/null <"/proc/$1/stat" || return 1
  read -ra fields <<<"${line##*) }"
  echo "${fields[2]}"
}

# pids of live (non-zombie) processes in process group $1
group_members() {
  local want=$1 d line fields
  for d in /proc/[0-9]*; do
    read -r line 2>/dev/null <"$d/stat" || continue
    read -ra fields <<<"${line##*) }"
    [[ ${fields[2]} == "$want" && ${fields[0]} != [ZX] ]] || continue
    echo "${d#/proc/}"
  done
}

# Our processes for a service: the pid file's pid when it still is ours, any process whose argv holds MARK
# (one argv element only our service has: pid file lost), and, when the pid file's process is gone, survivors
# of its process group whose argv holds ORPHAN_MARK (e.g. uvicorn workers of a killed MLflow server).
our_pids() {
  local pidfile=$1 mark=$2 orphan_mark=$3 pid="" f p
  if [[ -f $pidfile ]]; then read -r pid <"$pidfile" || true; fi
  if [[ -n $pid ]] && pid_alive "$pid"; then
    [[ " $(cmdline "$pid")" == *" $mark "* ]] && echo "$pid"
  elif [[ -n $pid ]]; then
    for p in $(group_members "$pid"); do
      [[ $(cmdline "$p") == *"$orphan_mark"* ]] && echo "$p"
    done
  fi
  # shellcheck disable=SC2013 # the matches are /proc/<pid>/cmdline paths: no spaces to split on
  for f in $(grep -lsF -f <(printf '%s\n' "$mark") /proc/[0-9]*/cmdline 2>/dev/null); do
    p=${f#/proc/}
    p=${p%/cmdline}
    [[ $p != "$pid" ]] && pid_alive "$p" && [[ " $(cmdline "$p")" == *" $mark "* ]] && echo "$p"
  done
  return 0
}

stop_service() { # name pidfile mark orphan_mark
  local name=$1 pidfile=$2 mark=$3 orphan_mark=$4 filepid="" pids=() groups=() targets=() p g deadline sig left
  if [[ -f $pidfile ]]; then read -r filepid <"$pidfile" || true; fi
  mapfile -t pids < <(our_pids "$pidfile" "$mark" "$orphan_mark" | sort -un)
  if ((${#pids[@]} == 0)); then
    rm -f "$pidfile"
    echo "$name: not running"
    return 0
  fi
  # services-up.sh starts each service as the leader of its own process group (setsid): signal the whole
  # group (uvicorn workers included). A process outside such a group is signalled alone.
  for p in "${pids[@]}"; do
    g=$(pgid_of "$p" || true)
    if [[ -n $g && ($g == "$p" || $g == "$filepid") ]]; then
      [[ " ${groups[*]} " == *" $g "* ]] || { groups+=("$g"); targets+=("-$g"); }
    else
      targets+=("$p")
    fi
  done
  log "stopping $name (pid ${pids[*]})"
  local t0=$EPOCHREALTIME
  for sig in TERM KILL; do
    kill -s "$sig" -- "${targets[@]}" 2>/dev/null || true
    [[ $sig == TERM ]] && { kill -s CONT -- "${targets[@]}" 2>/dev/null || true; } # a stopped one must see it
    if [[ $sig == TERM ]]; then deadline=$((SECONDS + STOP_TIMEOUT)); else deadline=$((SECONDS + 10)); fi
    while :; do
      left=""
      for p in "${pids[@]}"; do pid_alive "$p" && left+=" $p"; done
      for g in "${groups[@]}"; do left+=" $(group_members "$g" | tr '\n' ' ')"; done
      [[ -z ${left// /} ]] && break 2
      ((SECONDS < deadline)) || break
      sleep 0.1
    done
    [[ $sig == TERM ]] && log "$name did not stop within ${STOP_TIMEOUT}s (pids$left): SIGKILL"
  done
  if [[ -n ${left// /} ]]; then
    log "ERROR: $name: still alive after SIGKILL: $left"
    return 1
  fi
  rm -f "$pidfile"
  echo "$name: stopped in $(elapsed "$t0")s"
}

rc=0
if ((WANT_MLFLOW)); then
  stop_service "MLflow server" "$STATE/run/mlflow.pid" "sqlite:///$STATE/mlflow/mlflow.db" mlflow || rc=1
fi
if ((WANT_S3)); then
  stop_service SeaweedFS "$STATE/run/seaweedfs.pid" "-dir=$STATE/s3/data" "weed" || rc=1
fi
exit $rc
