#!/usr/bin/env bash
# Stop the loopback SLURM cluster that scripts/slurm-up.sh started: slurmd n1/n2, slurmctld, slurmdbd,
# the private MariaDB and munged, in that order; waits until each is gone. Idempotent.
# State (configs, accounting database, logs) is kept under VITOLAUNCH_SLURM_STATE
# (default /var/lib/vitolaunch-slurm); delete that folder by hand for a clean slate.
# Job steps still running (slurmstepd) are left alone, as `systemctl stop slurmd` would.
set -euo pipefail
LOG_TAG=slurm-down
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE=${VITOLAUNCH_SLURM_STATE:-/var/lib/vitolaunch-slurm}
DB_PORT=3307
NODES=(n1 n2)
RUN=$STATE/run
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

require_root "it stops root's daemons"

stop_daemon() { # NAME PIDFILE COMM REGEX (pid file and pgrep: lib.sh's daemon_pids)
  local name=$1 pidfile=$2 pids=()
  mapfile -t pids < <(daemon_pids "$2" "$3" "$4")
  if ((${#pids[@]})); then
    log "stopping $name (pid ${pids[*]})"
    stop_pids "$name" 30 "${pids[@]}" || return 1
  fi
  rm -f "$pidfile"
}

rc=0
for n in "${NODES[@]}"; do
  stop_daemon "slurmd $n" "$RUN/slurmd-$n.pid" slurmd "slurmd -N $n( |$)" || rc=1
done
stop_daemon slurmctld "$RUN/slurmctld.pid" slurmctld 'slurmctld( |$)' || rc=1
stop_daemon slurmdbd "$RUN/slurmdbd.pid" slurmdbd 'slurmdbd( |$)' || rc=1
stop_daemon mariadbd "$STATE/mysql/run/mysqld.pid" mariadbd "mariadbd .*--port=$DB_PORT( |$)" || rc=1
stop_daemon munged "$STATE/munge/munged.pid" munged 'munged( |$)' || rc=1
if ((rc == 0)); then log "all stopped"; else log "some daemons could not be stopped"; fi
exit "$rc"
