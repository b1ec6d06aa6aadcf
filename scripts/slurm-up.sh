#!/usr/bin/env bash
# Start a real SLURM cluster on loopback, idempotently, for vitolaunch's integration tests and for a
# developer's machine: munge, a private MariaDB (port 3307), slurmdbd (6819), slurmctld (6817) and two
# slurmd "nodes" n1 (port 17001) and n2 (port 17002) on this one machine. Cluster name: vitolaunch.
#
#   sudo scripts/slurm-up.sh          # install what is missing, start what is not running, wait until ready
#   sudo scripts/slurm-down.sh        # stop it again (state and accounting data are kept)
#
# Everything (configs, databases, spool, pid files, logs) lives under one folder:
#   VITOLAUNCH_SLURM_STATE   default /var/lib/vitolaunch-slurm
# Clients find the cluster through /etc/slurm/slurm.conf, a symlink into that folder.
# Other knobs: VITOLAUNCH_SLURM_READY_TIMEOUT (seconds to wait for readiness, default 90),
#              VITOLAUNCH_SLURM_USERS (users added to the accounting account, default: root).
# Accounting is enforced (associations, limits, qos), as on a real site: the users above may use account
# `vitolaunch` with QOS `normal` or `express`; account `vitolaunch-other` exists with no users. Node n2 has
# the feature `bigmem`. Site-settings tests (resources.account/qos/constraint) rely on these.
# Needs root, Debian/Ubuntu (apt), no systemd. Running it again when all is up changes nothing (~1 s).
set -euo pipefail
LOG_TAG=slurm-up
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE=${VITOLAUNCH_SLURM_STATE:-/var/lib/vitolaunch-slurm}
READY_TIMEOUT=${VITOLAUNCH_SLURM_READY_TIMEOUT:-90}
SLURM_USERS=${VITOLAUNCH_SLURM_USERS:-root}
CLUSTER=vitolaunch
ACCOUNT=vitolaunch
OTHER_ACCOUNT=vitolaunch-other
QOS=express
DB_PORT=3307
DBD_PORT=6819
CTLD_PORT=6817
NODES=(n1 n2)
declare -A NODE_PORT=([n1]=17001 [n2]=17002)
declare -A NODE_FEATURES=([n1]="" [n2]=bigmem)
NODE_CPUS=4
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

ETC=$STATE/etc
LOG=$STATE/log
RUN=$STATE/run
MUNGE_DIR=$STATE/munge
DB_DIR=$STATE/mysql
DB_DATA=$DB_DIR/data
DB_SOCK=$DB_DIR/run/mysqld.sock
DB_PID=$DB_DIR/run/mysqld.pid
DB_LOG=$LOG/mariadb.log
MUNGE_PID=$MUNGE_DIR/munged.pid
MUNGE_LOG=$LOG/munged.log
DBD_PID=$RUN/slurmdbd.pid
DBD_LOG=$LOG/slurmdbd.log
CTLD_PID=$RUN/slurmctld.pid
CTLD_LOG=$LOG/slurmctld.log

START_TS=$EPOCHREALTIME
say() { log "$@"; }
require_root "it installs packages, writes /etc/hosts and /etc/slurm, starts daemons"

# ---------------------------------------------------------------- processes (helpers in lib.sh)
stop_pid() { stop_pids "$2" 20 "$1" || die "could not stop $2 (pid $1)"; } # PID NAME

MUNGE_RE='munged( |$)'
DB_RE="mariadbd .*--port=$DB_PORT( |$)"
DBD_RE='slurmdbd( |$)'
CTLD_RE='slurmctld( |$)'
node_re() { echo "slurmd -N $1( |$)"; }

# ---------------------------------------------------------------- packages
BINARIES=(/usr/sbin/slurmctld /usr/sbin/slurmd /usr/sbin/slurmdbd /usr/bin/sinfo /usr/bin/sacct
  /usr/bin/sacctmgr /usr/sbin/munged /usr/sbin/mariadbd /usr/bin/mariadb-install-db /usr/bin/mariadb)
packages_missing=0
for b in "${BINARIES[@]}"; do [[ -x $b ]] || packages_missing=1; done
if ((packages_missing)); then
  say "installing slurm, munge, mariadb (apt)"
  t0=$(date +%s)
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/tmp/vitolaunch-slurm-apt.log 2>&1 || die "apt-get update failed" /tmp/vitolaunch-slurm-apt.log
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge slurmdbd mariadb-server \
    >>/tmp/vitolaunch-slurm-apt.log 2>&1 || die "apt-get install failed" /tmp/vitolaunch-slurm-apt.log
  for b in "${BINARIES[@]}"; do [[ -x $b ]] || die "$b still missing after apt-get install"; done
  say "packages installed in $(($(date +%s) - t0)) s"
fi
for u in slurm munge mysql; do
  id "$u" >/dev/null 2>&1 || die "system user '$u' does not exist (the Debian packages should have created it)"
done

# ---------------------------------------------------------------- files and folders
HOST=$(hostname -s)
# Names the nodes resolve to (the torch.distributed rendezvous uses MASTER_ADDR=n1).
for n in "${NODES[@]}"; do
  grep -Eq "^[[:space:]]*127\.0\.0\.1([[:space:]].*)?[[:space:]]$n([[:space:]]|$)" /etc/hosts \
    || { echo "127.0.0.1 $n" >>/etc/hosts; say "added '127.0.0.1 $n' to /etc/hosts"; }
done
getent hosts "$HOST" >/dev/null || { echo "127.0.0.1 $HOST" >>/etc/hosts; say "added '127.0.0.1 $HOST' to /etc/hosts"; }

# ensure_dir PATH OWNER:GROUP MODE (only touches what differs)
ensure_dir() {
  [[ -d $1 ]] || mkdir -p "$1"
  [[ $(stat -c '%U:%G %a' "$1") == "$2 $3" ]] || { chown "$2" "$1"; chmod "$3" "$1"; }
}
ensure_file() { # PATH OWNER:GROUP MODE
  [[ -e $1 ]] || : >"$1"
  [[ $(stat -c '%U:%G %a' "$1") == "$2 $3" ]] || { chown "$2" "$1"; chmod "$3" "$1"; }
}
ensure_dir "$STATE" root:root 755
ensure_dir "$ETC" root:root 755
# slurmctld/slurmdbd want a writable log folder (their working directory); sticky keeps munged content.
ensure_dir "$LOG" root:slurm 1775
ensure_dir "$RUN" slurm:slurm 755          # slurmctld/slurmdbd remove their pid files as user slurm
ensure_dir "$STATE/slurmctld" slurm:slurm 700
ensure_dir "$STATE/slurmd" root:root 755
for n in "${NODES[@]}"; do ensure_dir "$STATE/slurmd/$n" root:root 755; done
ensure_dir "$MUNGE_DIR" munge:munge 700
ensure_dir "$DB_DIR" mysql:mysql 750
ensure_dir "$DB_DIR/run" mysql:mysql 755
ensure_file "$MUNGE_LOG" munge:munge 640
ensure_file "$DB_LOG" mysql:mysql 640
ensure_file "$DBD_LOG" slurm:slurm 640
ensure_file "$CTLD_LOG" slurm:slurm 640
ensure_dir /run/munge munge:munge 755
ensure_dir /etc/slurm root:root 755

# install_if_changed SRC DEST OWNER:GROUP MODE -> sets CHANGED=1 when DEST changed
install_if_changed() {
  if [[ -f $2 ]] && cmp -s "$1" "$2"; then
    rm -f "$1"
  else
    mv -f "$1" "$2"
    CHANGED=1
  fi
  [[ $(stat -c '%U:%G %a' "$2") == "$3 $4" ]] || { chown "$3" "$2"; chmod "$4" "$2"; }
}
link_into_etc() { # NAME: /etc/slurm/NAME -> $ETC/NAME (a foreign regular file is kept as NAME.orig)
  local target=$ETC/$1 link=/etc/slurm/$1
  [[ $(readlink "$link" 2>/dev/null) == "$target" ]] && return 0
  if [[ -e $link && ! -L $link ]]; then
    mv -f "$link" "$link.orig"
    say "kept the previous $link as $link.orig"
  fi
  ln -sfn "$target" "$link"
}

# Database password for the slurm accounting user: generated once, loopback only.
if [[ ! -s $ETC/db.pass ]]; then
  (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$ETC/db.pass")
fi
DB_PASS=$(cat "$ETC/db.pass")

# RealMemory: about half of the free memory for each node; fixed the first time so reruns change nothing.
REAL_MEM=$(grep -oE 'RealMemory=[0-9]+' "$ETC/slurm.conf" 2>/dev/null | head -n1 | cut -d= -f2 || true)
if [[ -z $REAL_MEM ]]; then
  avail_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
  REAL_MEM=$((avail_kb / 1024 / 2 / 100 * 100))
  ((REAL_MEM >= 500)) || REAL_MEM=500
fi

CHANGED=0
tmp=$(mktemp "$ETC/.slurm.conf.XXXXXX")
{
  cat <<EOF
# Generated by vitolaunch scripts/slurm-up.sh: edits are overwritten on the next run.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd/%n
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$CTLD_LOG
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=5
MinJobAge=300
JobRequeue=1
MaxArraySize=1001
EnforcePartLimits=ALL
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStorageEnforce=associations,limits,qos
JobCompType=jobcomp/none
EOF
  for n in "${NODES[@]}"; do
    echo "NodeName=$n NodeHostname=$HOST NodeAddr=127.0.0.1 Port=${NODE_PORT[$n]} CPUs=$NODE_CPUS RealMemory=$REAL_MEM" \
      "${NODE_FEATURES[$n]:+Feature=${NODE_FEATURES[$n]} }State=UNKNOWN"
  done
  nodelist=$(IFS=,; echo "${NODES[*]}")
  echo "PartitionName=debug Nodes=$nodelist Default=YES MaxTime=INFINITE State=UP"
  echo "PartitionName=short Nodes=$nodelist Default=NO MaxTime=00:10:00 State=UP"
} >"$tmp"
# A change of only the enforcement or node features needs no node daemon restart: slurmctld alone is
# restarted (it reads AccountingStorageEnforce only at start; `scontrol reconfigure` keeps the old value), after
# the accounting records it needs exist. Running jobs and their steps survive it. Anything else restarts all.
controller_only_view() { sed -E -e '/^AccountingStorageEnforce=/d' -e 's/ Feature=[^ ]+//' "$1" 2>/dev/null; }
CONTROLLER_ONLY=0
if [[ -f $ETC/slurm.conf ]] && ! cmp -s "$tmp" "$ETC/slurm.conf" \
  && cmp -s <(controller_only_view "$tmp") <(controller_only_view "$ETC/slurm.conf"); then
  CONTROLLER_ONLY=1
fi
install_if_changed "$tmp" "$ETC/slurm.conf" root:root 644
SLURM_CONF_CHANGED=$CHANGED
RESTART_CONTROLLER=0
if ((SLURM_CONF_CHANGED && CONTROLLER_ONLY)); then
  SLURM_CONF_CHANGED=0
  RESTART_CONTROLLER=1
fi

CHANGED=0
tmp=$(mktemp "$ETC/.slurmdbd.conf.XXXXXX")
cat >"$tmp" <<EOF
# Generated by vitolaunch scripts/slurm-up.sh: edits are overwritten on the next run.
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=$HOST
DbdPort=$DBD_PORT
SlurmUser=slurm
DebugLevel=info
LogFile=$DBD_LOG
PidFile=$DBD_PID
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
install_if_changed "$tmp" "$ETC/slurmdbd.conf" slurm:slurm 600
DBD_CONF_CHANGED=$CHANGED
link_into_etc slurm.conf
link_into_etc slurmdbd.conf

# A changed config on a running cluster: restart the daemons that read it.
if ((SLURM_CONF_CHANGED)); then
  for n in "${NODES[@]}"; do
    if pid=$(daemon_pid "$RUN/slurmd-$n.pid" slurmd "$(node_re "$n")"); then
      say "slurm.conf changed: restarting slurmd $n"; stop_pid "$pid" "slurmd $n"
    fi
  done
  if pid=$(daemon_pid "$CTLD_PID" slurmctld "$CTLD_RE"); then
    say "slurm.conf changed: restarting slurmctld"; stop_pid "$pid" slurmctld
  fi
fi
if ((DBD_CONF_CHANGED)) && pid=$(daemon_pid "$DBD_PID" slurmdbd "$DBD_RE"); then
  say "slurmdbd.conf changed: restarting slurmdbd"; stop_pid "$pid" slurmdbd
fi

# ---------------------------------------------------------------- munge
if [[ ! -s /etc/munge/munge.key ]]; then
  install -d -o munge -g munge -m 700 /etc/munge
  (umask 077; dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none)
  say "created /etc/munge/munge.key"
fi
[[ $(stat -c '%U %a' /etc/munge/munge.key) == "munge 400" ]] \
  || { chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
if ! daemon_pid "$MUNGE_PID" munged "$MUNGE_RE" >/dev/null; then
  say "starting munged"
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID" --log-file="$MUNGE_LOG" \
    --seed-file="$MUNGE_DIR/munged.seed" || die "munged did not start" "$MUNGE_LOG"
  wait_for 15 bash -c 'munge -n </dev/null | unmunge' || die "munge does not answer" "$MUNGE_LOG"
fi

# ---------------------------------------------------------------- MariaDB (private instance)
db_sql() { mariadb --no-defaults --socket="$DB_SOCK" -u root --batch --skip-column-names -e "$1"; }
if [[ ! -f $DB_DIR/.initialized ]]; then
  if pid=$(daemon_pid "$DB_PID" mariadbd "$DB_RE"); then stop_pid "$pid" mariadbd; fi
  say "initialising the MariaDB datadir"
  rm -rf "$DB_DATA"
  mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DATA" --auth-root-authentication-method=socket \
    --skip-test-db >>"$DB_LOG" 2>&1 || die "mariadb-install-db failed" "$DB_LOG"
  touch "$DB_DIR/.initialized"
fi
if ! daemon_pid "$DB_PID" mariadbd "$DB_RE" >/dev/null; then
  say "starting mariadbd (127.0.0.1:$DB_PORT)"
  rm -f "$DB_SOCK"
  setsid -f /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB_DATA" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --socket="$DB_SOCK" --pid-file="$DB_PID" --log-error="$DB_LOG" \
    --skip-name-resolve --innodb-buffer-pool-size=1024M --innodb-lock-wait-timeout=900 \
    </dev/null >>"$DB_LOG" 2>&1
  wait_for 60 mariadb-admin --no-defaults --socket="$DB_SOCK" -u root ping \
    || die "MariaDB did not come up" "$DB_LOG"
fi
if [[ ! -f $DB_DIR/.grants ]] || [[ $(cat "$DB_DIR/.grants") != "$(sha256sum <"$ETC/db.pass")" ]]; then
  say "creating the accounting database and its user"
  for h in 127.0.0.1 localhost; do
    db_sql "CREATE USER IF NOT EXISTS 'slurm'@'$h' IDENTIFIED BY '$DB_PASS';
            ALTER USER 'slurm'@'$h' IDENTIFIED BY '$DB_PASS';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'$h';" || die "could not create the MariaDB user" "$DB_LOG"
  done
  db_sql "CREATE DATABASE IF NOT EXISTS slurm_acct_db; FLUSH PRIVILEGES;" || die "could not create the database" "$DB_LOG"
  sha256sum <"$ETC/db.pass" >"$DB_DIR/.grants"
fi

# ---------------------------------------------------------------- slurmdbd + accounting records
if ! daemon_pid "$DBD_PID" slurmdbd "$DBD_RE" >/dev/null; then
  say "starting slurmdbd (127.0.0.1:$DBD_PORT)"
  /usr/sbin/slurmdbd || die "slurmdbd did not start" "$DBD_LOG"
  # the first start creates the tables: allow some time
  wait_for 60 sacctmgr -n -P show cluster || die "slurmdbd does not answer" "$DBD_LOG" "$DB_LOG"
fi
ACCOUNTING_STAMP="$CLUSTER $ACCOUNT $OTHER_ACCOUNT qos=$QOS users=$SLURM_USERS"
if [[ ! -f $STATE/.accounting ]] || [[ $(cat "$STATE/.accounting") != "$ACCOUNTING_STAMP" ]]; then
  sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER" \
    || sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster failed" "$DBD_LOG"
  sacctmgr -n -P show account "$ACCOUNT" format=account 2>/dev/null | grep -qx "$ACCOUNT" \
    || sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="vitolaunch tests" \
      Organization=vitolaunch >/dev/null || die "sacctmgr add account failed" "$DBD_LOG"
  sacctmgr -n -P show account "$OTHER_ACCOUNT" format=account 2>/dev/null | grep -qx "$OTHER_ACCOUNT" \
    || sacctmgr -i add account "$OTHER_ACCOUNT" Cluster="$CLUSTER" Description="an account the test users are not in" \
      Organization=vitolaunch >/dev/null || die "sacctmgr add account $OTHER_ACCOUNT failed" "$DBD_LOG"
  sacctmgr -n -P show qos "$QOS" format=name 2>/dev/null | grep -qx "$QOS" \
    || sacctmgr -i add qos "$QOS" Priority=10 >/dev/null || die "sacctmgr add qos $QOS failed" "$DBD_LOG"
  # root keeps its own association (account root, QOS normal): jobs that name no account still run.
  for u in $SLURM_USERS; do
    sacctmgr -n -P show assoc where cluster="$CLUSTER" account="$ACCOUNT" user="$u" format=user 2>/dev/null \
      | grep -qx "$u" || sacctmgr -i add user "$u" Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null \
      || die "sacctmgr add user $u failed" "$DBD_LOG"
    sacctmgr -n -P show assoc where cluster="$CLUSTER" account="$ACCOUNT" user="$u" format=qos 2>/dev/null \
      | tr ',' '\n' | grep -qx "$QOS" || sacctmgr -i modify user where name="$u" account="$ACCOUNT" cluster="$CLUSTER" \
      set qos+="$QOS" >/dev/null || die "sacctmgr could not give $u the QOS $QOS" "$DBD_LOG"
  done
  echo "$ACCOUNTING_STAMP" >"$STATE/.accounting"
  say "accounting: cluster $CLUSTER, accounts $ACCOUNT (QOS normal,$QOS) and $OTHER_ACCOUNT, users: $SLURM_USERS"
fi

# ---------------------------------------------------------------- slurmctld + slurmd nodes
if ((RESTART_CONTROLLER)) && pid=$(daemon_pid "$CTLD_PID" slurmctld "$CTLD_RE"); then
  say "slurm.conf changed (enforcement or node features): restarting slurmctld only (jobs keep running)"
  stop_pid "$pid" slurmctld
fi
if ! daemon_pid "$CTLD_PID" slurmctld "$CTLD_RE" >/dev/null; then
  say "starting slurmctld (127.0.0.1:$CTLD_PORT)"
  /usr/sbin/slurmctld || die "slurmctld did not start" "$CTLD_LOG"
  wait_for 30 scontrol ping || die "slurmctld does not answer" "$CTLD_LOG"
fi
for n in "${NODES[@]}"; do
  if ! daemon_pid "$RUN/slurmd-$n.pid" slurmd "$(node_re "$n")" >/dev/null; then
    say "starting slurmd $n (127.0.0.1:${NODE_PORT[$n]})"
    /usr/sbin/slurmd -N "$n" || die "slurmd $n did not start" "$LOG/slurmd-$n.log"
  fi
done

# ---------------------------------------------------------------- readiness
# A node counts as ready when it is idle, or busy with jobs (mix/alloc/completing): others may use the cluster.
nodes_ready() {
  local out n st
  out=$(sinfo -h -N -o '%N %t' 2>/dev/null) || return 1
  for n in "${NODES[@]}"; do
    st=$(awk -v n="$n" '$1 == n {print $2; exit}' <<<"$out")
    [[ $st =~ ^(idle|mix|alloc|alloc\+|comp|mix\+|idle\+)$ ]] || return 1
  done
}
wait_start=$(date +%s)
deadline=$((wait_start + READY_TIMEOUT))
resumed=0
until nodes_ready && sacct -n -X -S now >/dev/null 2>&1; do
  if (($(date +%s) >= deadline)); then
    sinfo -N -l >&2 || true
    die "cluster not ready after ${READY_TIMEOUT} s (nodes: $(sinfo -h -N -o '%N=%t' 2>&1 | tr '\n' ' '))" \
      "$CTLD_LOG" "$LOG/slurmd-n1.log" "$LOG/slurmd-n2.log" "$DBD_LOG"
  fi
  # Nodes left down/drained by an earlier run (ReturnToService=2 handles most cases): resume them once.
  if ((!resumed && $(date +%s) - wait_start >= 10)); then
    bad=$(sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 ~ /^(down|drain|drng|fail)/ {print $1}' | paste -sd, -)
    if [[ -n $bad ]]; then
      say "resuming nodes $bad"
      scontrol update NodeName="$bad" State=RESUME >/dev/null 2>&1 || true
    fi
    resumed=1
  fi
  sleep 0.3
done

say "cluster '$CLUSTER' ready in $(elapsed "$START_TS") s (state: $STATE)"
sinfo -N -o '  %N %P %t cpus=%c mem=%m' | sed 's/^/[slurm-up] /' >&2
say "daemons: munged=$(daemon_pid "$MUNGE_PID" munged "$MUNGE_RE") mariadbd=$(daemon_pid "$DB_PID" mariadbd "$DB_RE")" \
  "slurmdbd=$(daemon_pid "$DBD_PID" slurmdbd "$DBD_RE") slurmctld=$(daemon_pid "$CTLD_PID" slurmctld "$CTLD_RE")" \
  "slurmd-n1=$(daemon_pid "$RUN/slurmd-n1.pid" slurmd "$(node_re n1)") slurmd-n2=$(daemon_pid "$RUN/slurmd-n2.pid" slurmd "$(node_re n2)")"
