"""The local real services for integration tests: SeaweedFS (S3) and an MLflow tracking server.

`scripts/services-up.sh` starts them on loopback and writes `<state>/env.sh` (state folder: env
VITOLAUNCH_SERVICES_STATE, default /var/lib/vitolaunch-services) with the keys and endpoints. Tests get those
values from `services_env()`, never from the ambient environment, so they run without sourcing anything.

When the services are absent the calling test is skipped with a reason that says how to start them, or fails
under CI (tests/conftest.py: service_unavailable).
"""

from __future__ import annotations

import os
import shlex
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import NoReturn

from tests.conftest import service_unavailable

DEFAULT_STATE = "/var/lib/vitolaunch-services"
START_HINT = "start them with: scripts/services-up.sh"

S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "VITOLAUNCH_TEST_S3_ROOT")
MLFLOW_KEYS = ("VITOLAUNCH_TEST_MLFLOW_URI",)


def state_dir() -> Path:
    return Path(os.environ.get("VITOLAUNCH_SERVICES_STATE") or DEFAULT_STATE)


def env_file() -> Path:
    return state_dir() / "env.sh"


def parse_env_file(path: str | os.PathLike) -> dict[str, str]:
    """Parse an env.sh of `[export ]NAME=VALUE` lines (VALUE optionally shell-quoted) into a dict.

    Blank lines and `#` comments are ignored; anything else is a ValueError naming the line.
    """
    values: dict[str, str] = {}
    for lineno, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export") :].lstrip()
        name, sep, value = line.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"{path}:{lineno}: expected [export ]NAME=VALUE, got {raw!r}")
        words = shlex.split(value, comments=True)
        if len(words) > 1:
            raise ValueError(f"{path}:{lineno}: {name}: value is several words; quote it")
        values[name] = words[0] if words else ""
    return values


def unavailable(reason: str) -> NoReturn:
    service_unavailable("local S3/MLflow services", reason, START_HINT)


def _host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)


def s3_answering(endpoint: str, timeout: float = 3.0) -> str | None:
    """None when an S3 server answers HTTP at `endpoint` (an unsigned request gets 403), else why not."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(endpoint.rstrip("/") + "/", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # 403 AccessDenied (or any HTTP answer): the server is up
    except (OSError, socket.timeout) as e:
        return f"{type(e).__name__}: {e}"


def mlflow_healthy(uri: str, timeout: float = 3.0) -> str | None:
    """None when the MLflow server at `uri` answers /health with OK, else why not."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(uri.rstrip("/") + "/health", timeout=timeout) as r:
            body = r.read(200).decode(errors="replace").strip()
            return None if body == "OK" else f"/health answered {body!r}"
    except (OSError, socket.timeout) as e:
        return f"{type(e).__name__}: {e}"


def services_env(*, s3: bool = True, mlflow: bool = True) -> dict[str, str]:
    """The values of <state>/env.sh, after checking that the requested services answer.

    Skips (or fails under CI) with a clear reason when env.sh is missing or unreadable, or when a
    requested service does not answer.
    """
    path = env_file()
    if not path.is_file():
        unavailable(f"{path} does not exist: the local S3/MLflow services were never started here")
    try:
        env = parse_env_file(path)
    except PermissionError:
        unavailable(f"{path} is not readable by this user (it is mode 600, owned by whoever started the services)")
    needed = (S3_KEYS if s3 else ()) + (MLFLOW_KEYS if mlflow else ())
    missing = [k for k in needed if not env.get(k)]
    if missing:
        unavailable(f"{path} lacks {', '.join(missing)}: rerun scripts/services-up.sh to regenerate it")
    if s3:
        why = s3_answering(env["AWS_ENDPOINT_URL_S3"])
        if why:
            unavailable(f"SeaweedFS S3 is not answering at {env['AWS_ENDPOINT_URL_S3']} ({why})")
    if mlflow:
        why = mlflow_healthy(env["VITOLAUNCH_TEST_MLFLOW_URI"])
        if why:
            unavailable(f"MLflow server is not healthy at {env['VITOLAUNCH_TEST_MLFLOW_URI']} ({why})")
    return env


def s3_filesystem(env: dict[str, str], *, key: str | None = None, secret: str | None = None, **kwargs):
    """A fresh (uncached) s3fs filesystem on the local SeaweedFS, with env.sh's keys unless given."""
    import s3fs

    return s3fs.S3FileSystem(
        key=env["AWS_ACCESS_KEY_ID"] if key is None else key,
        secret=env["AWS_SECRET_ACCESS_KEY"] if secret is None else secret,
        client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL_S3"]},
        skip_instance_cache=True,
        use_listings_cache=False,
        **kwargs,
    )


def s3_client(env: dict[str, str]):
    """A plain botocore S3 client on the local SeaweedFS with env.sh's keys."""
    import botocore.session
    from botocore.config import Config

    return botocore.session.Session().create_client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def remove_tree(env: dict[str, str], path: str) -> None:
    """Delete every object under `path` (s3://bucket/prefix or bucket/prefix) and the folder entries left.

    SeaweedFS keeps a filer directory for every prefix written: after its objects are deleted, a delimiter
    listing still shows the prefix (real S3 would not). Deleting the `prefix/` key removes an empty one, so
    folders are removed deepest first.
    """
    client = s3_client(env)
    bucket, _, prefix = path.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/") + "/"
    if prefix == "/":
        raise ValueError(f"refusing to empty a whole bucket: {path!r}")
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})

    def folders(p: str):
        listing = client.list_objects_v2(Bucket=bucket, Prefix=p, Delimiter="/")
        for sub in listing.get("CommonPrefixes", []):
            yield from folders(sub["Prefix"])
        yield p

    for folder in folders(prefix):
        client.delete_object(Bucket=bucket, Key=folder)
