"""Readiness checks and key generation for scripts/services-up.sh (run with the services' virtualenv Python).

    services_probe.py keys                                  -> ACCESS_KEY=... and SECRET_KEY=... lines (new ones)
    services_probe.py probe s3 PID TIMEOUT [mlflow PID TIMEOUT]
        one line per check: "<name> ok [created BUCKETS]" or "<name> fail <why>"; exit status 0 only when all
        passed. s3: a SIGNED ListBuckets must succeed (SeaweedFS opens its port before it answers), then the
        buckets are created when missing. mlflow: /health answers OK. Each waits up to TIMEOUT seconds, and
        gives up early when the process PID has exited (PID 0: do not watch a process).

The keys and endpoints come from the environment (VL_ACCESS_KEY, VL_SECRET_KEY, VL_S3_URL, VL_MLFLOW_URL,
VL_BUCKETS), never from argv, where any user could read them in the process list.
"""

from __future__ import annotations

import os
import secrets
import string
import sys
import time
import urllib.request


def new_keys() -> None:
    upper = string.ascii_uppercase + string.digits
    letters = string.ascii_letters + string.digits
    print("ACCESS_KEY=VL" + "".join(secrets.choice(upper) for _ in range(18)))
    print("SECRET_KEY=" + "".join(secrets.choice(letters) for _ in range(40)))


def alive(pid: int) -> bool:
    if pid <= 0:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait(pid: int, timeout: float, attempt):
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while True:
        try:
            return attempt()
        except Exception as e:  # noqa: BLE001 - anything means "not ready yet"; the last one is reported
            last = f"{type(e).__name__}: {e}"
        if not alive(pid):
            raise RuntimeError(f"process {pid} exited ({last})")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"not ready after {timeout:.0f}s ({last})")
        time.sleep(0.25)


def s3(pid: int, timeout: float) -> str:
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
            wait(pid, 20, lambda bucket=bucket: client.create_bucket(Bucket=bucket))
            created.append(bucket)
    return "created " + ",".join(created) if created else ""


def mlflow(pid: int, timeout: float) -> str:
    def health():
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(os.environ["VL_MLFLOW_URL"] + "/health", timeout=5) as r:
            body = r.read().decode().strip()
            if r.status != 200 or body != "OK":
                raise RuntimeError(f"HTTP {r.status} {body[:80]!r}")

    wait(pid, timeout, health)
    return ""


def probe(args: list[str]) -> int:
    # Only the local services' own keys: a profile, session token or instance metadata must not leak in.
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        os.environ.pop(var, None)
    os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    ok = True
    for name, pid, timeout in zip(args[::3], args[1::3], args[2::3]):
        try:
            print(name, "ok", {"s3": s3, "mlflow": mlflow}[name](int(pid), float(timeout)), flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is one "fail" line for services-up.sh to show
            ok = False
            print(name, "fail", str(e).replace("\n", " ")[:500], flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    command, rest = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command == "keys" and not rest:
        new_keys()
    elif command == "probe" and rest and len(rest) % 3 == 0:
        sys.exit(probe(rest))
    else:
        sys.exit(__doc__)
