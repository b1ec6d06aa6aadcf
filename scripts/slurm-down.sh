#!/usr/bin/env bash
# Stop the loopback SLURM cluster that scripts/slurm-up.sh started: slurmd n1/n2, slurmctld, slurmdbd,
# the private MariaDB and munged, in that order; waits until each is gone. Idempotent.
# State (configs, accounting database, logs) is kept under VITOLAUNCH_SLURM_STATE
# (default /var/lib/vitolaunch-slurm); delete that folder by hand for a clean slate.
# Job steps still running (slurmstepd) are left alone, as `systemctl stop slurmd` would.
set -euo pipefail

STATE=${VITOLAUNCH_SLURM_STATE:-/var/lib/vitolaunch-slurm}
DB_PORT=3307
NODES=(n1 n2)
RUN=$STATE/run
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

say() { printf '[slurm-down] %s\n' "$*"; }
[[ $(id -u) -eq 0 ]] || { say "ERROR: must run as root" >&2; exit 1; }

pid_alive() {
  local st
  [[ ${1:-} =~ ^[0-9]+$ ]] || return 1
  st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ -n $st && $st != Z* ]]
}
# daemon_pids PIDFILE COMM REGEX: live pids of the daemon (pid file first, then pgrep); stale pid files removed
daemon_pids() {
  local pidfile=$1 comm=$2 regex=$3 pid
  {
    if [[ -s $pidfile ]]; then
      pid=$(tr -dc '0-9' <"$pidfile" 2>/dev/null || true)
      if pid_alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]]; then echo "$pid"; fi
    fi
    for pid in $(pgrep -f -- "$regex" 2>/dev/null || true); do
      if pid_alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]]; then echo "$pid"; fi
    done
  } | sort -u
}
stop_daemon() { # NAME PIDFILE COMM REGEX
  local name=$1 pidfile=$2 pids pid i
  pids=$(daemon_pids "$2" "$3" "$4")
  if [[ -z $pids ]]; then
    rm -f "$pidfile"
    return 0
  fi
  say "stopping $name (pid $(echo $pids))"
  for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
  for ((i = 0; i < 300; i++)); do
    local alive=0
    for pid in $pids; do pid_alive "$pid" && alive=1; done
    ((alive)) || { rm -f "$pidfile"; return 0; }
    sleep 0.1
  done
  say "$name ignored SIGTERM for 30 s: SIGKILL"
  for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
  for ((i = 0; i < 50; i++)); do
    local alive=0
    for pid in $pids; do pid_alive "$pid" && alive=1; done
    ((alive)) || { rm -f "$pidfile"; return 0; }
    sleep 0.1
  done
  say "ERROR: could not stop $name (pid $(echo $pids))" >&2
  return 1
}

rc=0
for n in "${NODES[@]}"; do
  stop_daemon "slurmd $n" "$RUN/slurmd-$n.pid" slurmd "slurmd -N $n( |$)" || rc=1
done
stop_daemon slurmctld "$RUN/slurmctld.pid" slurmctld 'slurmctld( |$)' || rc=1
stop_daemon slurmdbd "$RUN/slurmdbd.pid" slurmdbd 'slurmdbd( |$)' || rc=1
stop_daemon mariadbd "$STATE/mysql/run/mysqld.pid" mariadbd "mariadbd .*--port=$DB_PORT( |$)" || rc=1
stop_daemon munged "$STATE/munge/munged.pid" munged 'munged( |$)' || rc=1
((rc == 0)) && say "all stopped" || say "some daemons could not be stopped" >&2
exit "$rc"
