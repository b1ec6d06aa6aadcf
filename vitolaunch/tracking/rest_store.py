"""The registry on an MLflow tracking server, through its public REST API and the standard library.

MlflowClient would cost ~2.5 s of imports before the first request. The calls are the ones MlflowClient
makes (experiments get-by-name/create, runs create/log-batch/update/get/search, the server's artifact
proxy), with its retry policy: MLFLOW_HTTP_REQUEST_MAX_RETRIES retries on a refused connection, a timeout
or a 429/5xx, backoff MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR * 2^n, MLFLOW_HTTP_REQUEST_TIMEOUT per request
(quiet_mlflow_environment sets the CLI's values). A sweep's trials are created from a thread pool, one
keep-alive connection per thread. Artifacts of a server that does not proxy them (`--no-serve-artifacts`)
go through MlflowClient.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlparse

from vitolaunch.errors import VitolaunchError
from vitolaunch.tracking.mlflow_store import new_run
from vitolaunch.tracking.records import CONFIG_ARTIFACT, KIND_SWEEP, TAG_KIND, TAG_SWEEP, RunStatus, status_change
from vitolaunch.tracking.store import NewTrialRun, RunQueries, RunRecord, TrackingUnreachable, all_pages
from vitolaunch.workspace import env_float

_API = "/api/2.0/mlflow"
_ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
_RETRY_STATUS = {429, 500, 502, 503, 504}
_THREADS = 8
_BATCH = 100  # log-batch takes at most 100 params and 100 tags per request


class RestError(VitolaunchError):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code or status}: {message}")
        self.status, self.code = status, code


class RestClient:
    """JSON over HTTP to one server, with MLflow's retry policy and one keep-alive connection per thread."""

    def __init__(self, tracking_uri: str):
        parsed = urlparse(tracking_uri)
        self._https = parsed.scheme == "https"
        self._host = parsed.netloc
        self._base = parsed.path.rstrip("/")
        self._local = threading.local()
        self.retries = int(env_float("MLFLOW_HTTP_REQUEST_MAX_RETRIES", 7))
        self.backoff = env_float("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", 2)
        self.timeout = env_float("MLFLOW_HTTP_REQUEST_TIMEOUT", 120)
        self._headers = {"User-Agent": "vitolaunch"}
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        elif user and password:
            self._headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = self._local.conn = kind(self._host, timeout=self.timeout)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json") -> bytes:
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = content_type
        for attempt in range(self.retries + 1):
            try:
                conn = self._connection()
                conn.request(method, self._base + path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as problem:
                self._drop_connection()  # a half-read or reset connection cannot be reused
                if attempt == self.retries:
                    raise TrackingUnreachable(f"MLflow at {self._host} failed: {type(problem).__name__}: {problem}") from problem
            else:
                if response.status < 300:
                    return data
                if response.status not in _RETRY_STATUS or attempt == self.retries:
                    try:
                        error = json.loads(data)
                    except ValueError:
                        error = {"message": data[:300].decode(errors="replace")}
                    raise RestError(response.status, error.get("error_code", ""), error.get("message", ""))
            time.sleep(self.backoff * (2**attempt))
        raise AssertionError("unreachable")

    def call(self, method: str, endpoint: str, payload: dict | None = None) -> dict:
        if method == "GET":
            path = f"{_API}/{endpoint}?{urlencode(payload or {})}"
            data = self.request("GET", path)
        else:
            data = self.request(method, f"{_API}/{endpoint}", json.dumps(payload or {}).encode())
        return json.loads(data) if data else {}


def _record(run: dict) -> RunRecord:
    info, data = run["info"], run.get("data", {})
    metrics = data.get("metrics", [])
    newest = max((int(m.get("timestamp", 0)) for m in metrics), default=0)
    start, end = info.get("start_time"), info.get("end_time")
    return RunRecord(
        run_id=info["run_id"],
        name=info.get("run_name", ""),
        status=info["status"],
        start_time=int(start) / 1000 if start else None,
        end_time=int(end) / 1000 if end else None,
        tags={t["key"]: t.get("value", "") for t in data.get("tags", [])},
        params={p["key"]: p.get("value", "") for p in data.get("params", [])},
        metrics={m["key"]: float(m["value"]) for m in metrics},
        experiment_id=str(info["experiment_id"]),
        last_metric_time=newest / 1000 if newest else None,
    )


def _pairs(values: dict[str, Any]) -> list[dict[str, str]]:
    return [{"key": k, "value": str(v)} for k, v in values.items()]


def _proxied_path(artifact_uri: str) -> str | None:
    """The server-side path of an `mlflow-artifacts:` URI; None when the server does not proxy artifacts."""
    parsed = urlparse(artifact_uri)
    return parsed.path.strip("/") if parsed.scheme == "mlflow-artifacts" else None


class RestRegistry(RunQueries):
    """Registry's read and write side on an MLflow tracking server."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self._rest = RestClient(tracking_uri)
        self._artifact_uris: dict[str, str] = {}
        self._mlflow = None

    def _mlflow_registry(self):
        """MlflowClient, for what the REST path does not cover (artifacts stored without the server's proxy)."""
        if self._mlflow is None:
            from vitolaunch.tracking.mlflow_store import Registry

            self._mlflow = Registry(self.tracking_uri)
        return self._mlflow

    # -- experiments ---------------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        try:
            return self._rest.call("GET", "experiments/get-by-name", {"experiment_name": name})["experiment"]["experiment_id"]
        except RestError as problem:
            if problem.code != "RESOURCE_DOES_NOT_EXIST":
                raise TrackingUnreachable(f"MLflow at {self.tracking_uri} failed: {problem}") from problem
        try:
            return self._rest.call("POST", "experiments/create", {"name": name})["experiment_id"]
        except RestError as problem:
            if problem.code == "RESOURCE_ALREADY_EXISTS":  # created by someone else in between
                return self.experiment_id(name)
            raise TrackingUnreachable(f"MLflow at {self.tracking_uri} failed: {problem}") from problem

    def experiment_name(self, experiment_id: str) -> str:
        return self._rest.call("GET", "experiments/get", {"experiment_id": experiment_id})["experiment"]["name"]

    # -- runs ----------------------------------------------------------------------------------------
    def _create_run(self, experiment_id: str, name: str, tags: dict[str, str]) -> dict:
        run = self._rest.call("POST", "runs/create", {
            "experiment_id": experiment_id, "run_name": name, "user_id": "unknown",
            "start_time": int(time.time() * 1000), "tags": _pairs(tags),
        })["run"]
        self._artifact_uris[run["info"]["run_id"]] = run["info"]["artifact_uri"]
        return run

    def create_sweep(self, experiment_id: str, sweep_name: str, tags: dict[str, str]) -> RunRecord:
        return _record(self._create_run(experiment_id, sweep_name, {TAG_KIND: KIND_SWEEP, TAG_SWEEP: sweep_name, **tags}))

    def create_trials(self, sweep: RunRecord, trials: list[NewTrialRun]) -> list[str]:
        """The trials' runs (SCHEDULED), in order, from a thread pool: what create_run_one_by_one does, over REST."""
        def one(trial: NewTrialRun) -> str:
            spec = new_run(sweep, trial)
            run_id = self._create_run(sweep.experiment_id, spec.name, spec.tags)["info"]["run_id"]
            params = _pairs(spec.params)
            for start in range(0, len(params), _BATCH):
                self._rest.call("POST", "runs/log-batch", {"run_id": run_id, "params": params[start : start + _BATCH]})
            for name, payload in spec.artifacts.items():
                self._put_artifact(run_id, name, json.dumps(payload, indent=2).encode())
            self._set_status(run_id, RunStatus.SCHEDULED)
            return run_id

        with ThreadPoolExecutor(_THREADS) as pool:
            return list(pool.map(one, trials))

    def _artifact_uri(self, run_id: str) -> str:
        if run_id not in self._artifact_uris:
            self._artifact_uris[run_id] = self._rest.call("GET", "runs/get", {"run_id": run_id})["run"]["info"]["artifact_uri"]
        return self._artifact_uris[run_id]

    def _put_artifact(self, run_id: str, name: str, body: bytes) -> None:
        path = _proxied_path(self._artifact_uri(run_id))
        if path is None:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / name).write_bytes(body)
                self._mlflow_registry().log_artifact(run_id, str(Path(tmp) / name))
            return
        self._rest.request("PUT", f"{_ARTIFACTS}/{quote(path)}/{quote(name)}", body, "application/octet-stream")

    def log_artifact(self, run_id: str, local_file: str) -> None:
        self._put_artifact(run_id, Path(local_file).name, Path(local_file).read_bytes())

    def config_of(self, trial: RunRecord) -> dict[str, Any]:
        path = _proxied_path(self._artifact_uri(trial.run_id))
        if path is None:
            return self._mlflow_registry().config_of(trial)
        return json.loads(self._rest.request("GET", f"{_ARTIFACTS}/{quote(path)}/{CONFIG_ARTIFACT}"))

    def _set_status(self, run_id: str, status: RunStatus, end_time_s: float | None = None) -> None:
        status, end_time = status_change(status, end_time_s)
        payload: dict[str, Any] = {"run_id": run_id, "status": status.value}
        if end_time is not None:
            payload["end_time"] = end_time
        self._rest.call("POST", "runs/update", payload)

    def set_experiment_tags(self, experiment_id: str, tags: dict[str, str]) -> None:
        """Experiment tags (what the MLflow UI reads), as MlflowClient.set_experiment_tag sends them."""
        for key, value in tags.items():
            self._rest.call("POST", "experiments/set-experiment-tag",
                            {"experiment_id": experiment_id, "key": key, "value": value})

    def set_status(self, run_id: str, status: RunStatus | str, end_time_s: float | None = None) -> None:
        self._set_status(run_id, RunStatus(status), end_time_s)

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        if _proxied_path(self._artifact_uri(run_id)) is None:
            self._mlflow_registry().log_artifacts(run_id, local_dir, artifact_path)
            return
        root = Path(local_dir)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            relative = path.relative_to(root).as_posix()
            self._put_artifact(run_id, f"{artifact_path}/{relative}" if artifact_path else relative, path.read_bytes())

    def log_metric(self, run_id: str, key: str, value: float, step: int = 0, timestamp_ms: int | None = None) -> None:
        timestamp = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        # JSON has no NaN: a bare NaN token is misread by the server (every field zero); MLflow's client sends
        # non-finite values as the strings protobuf's JSON mapping defines, and so does this.
        sent: float | str = value if math.isfinite(value) else "NaN" if math.isnan(value) else (
            "Infinity" if value > 0 else "-Infinity")
        self._rest.call("POST", "runs/log-metric",
                        {"run_id": run_id, "key": key, "value": sent, "timestamp": timestamp, "step": int(step)})

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        def page(token: str | None) -> tuple[list[tuple[int, float]], str | None]:
            payload: dict[str, Any] = {"run_id": run_id, "metric_key": key, "max_results": 25000}
            if token:
                payload["page_token"] = token
            answer = self._rest.call("GET", "metrics/get-history", payload)
            points = [(int(m.get("step", 0)), float(m["value"])) for m in answer.get("metrics", [])]
            return points, answer.get("next_page_token")

        return sorted(all_pages(page))

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        pairs = _pairs(tags)
        for start in range(0, len(pairs), _BATCH):
            self._rest.call("POST", "runs/log-batch", {"run_id": run_id, "tags": pairs[start : start + _BATCH]})

    def set_tags_many(self, tags_by_run: dict[str, dict[str, str]], status: RunStatus | str | None = None) -> None:
        def one(item: tuple[str, dict[str, str]]) -> None:
            run_id, tags = item
            if tags:
                self.set_tags(run_id, tags)
            if status is not None:
                self._set_status(run_id, RunStatus(status))

        with ThreadPoolExecutor(_THREADS) as pool:
            list(pool.map(one, tags_by_run.items()))

    # -- queries -------------------------------------------------------------------------------------
    def find_run(self, run_id: str) -> RunRecord | None:
        try:
            return _record(self._rest.call("GET", "runs/get", {"run_id": run_id})["run"])
        except RestError as problem:
            # A missing id is RESOURCE_DOES_NOT_EXIST; something that is not a run id at all (a sweep name)
            # may be refused as INVALID_PARAMETER_VALUE (see mlflow_compat.is_missing_run).
            if problem.code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def find_runs(self, tags: dict[str, str], experiment_ids: list[str] | None = None) -> list[RunRecord]:
        if experiment_ids is None:
            experiment_ids = self._experiment_ids()
        if not experiment_ids:
            return []
        filter_string = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())

        def page(token: str | None) -> tuple[list[RunRecord], str | None]:
            answer = self._search("runs/search", token, experiment_ids=experiment_ids, filter=filter_string,
                                  run_view_type="ACTIVE_ONLY")
            return [_record(r) for r in answer.get("runs", [])], answer.get("next_page_token")

        return all_pages(page)

    def _experiment_ids(self) -> list[str]:
        def page(token: str | None) -> tuple[list[str], str | None]:
            answer = self._search("experiments/search", token, view_type="ACTIVE_ONLY")
            return [e["experiment_id"] for e in answer.get("experiments", [])], answer.get("next_page_token")

        return all_pages(page)

    def _search(self, endpoint: str, token: str | None, **payload: Any) -> dict:
        payload["max_results"] = 1000
        if token:
            payload["page_token"] = token
        return self._rest.call("POST", endpoint, payload)
