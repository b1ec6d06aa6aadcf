"""Metrics, tags and artifacts to MLflow from rank 0, sent by a background thread.

Training never waits on the tracking server: calls only queue work. The sender keeps the queue in order and
retries the head with backoff while the server is unreachable, so an outage loses nothing and costs training
nothing but a warning; `close()` drains the queue before the job ends.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_BATCH = 1000  # MLflow's cap on metrics per log_batch

# The facts vito itself records on its run as tags (the launcher's own tags are not vito's business).
TAG_RESUMED_FROM_STEP = "vito.resumed_from_step"
TAG_CHECKPOINT_FAILED_STEP = "vito.checkpoint_failed_step"
TAG_LAST_TRACKING_OUTAGE_S = "vito.last_tracking_outage_s"


class MetricsLogger:
    """Logs to one existing MLflow run (created by the launcher) by id, never the fluent global run."""

    def __init__(self, tracking_uri: str | None, run_id: str | None, enabled: bool = True, spool_dir: str | None = None):
        self.run_id = run_id
        self.enabled = enabled and run_id is not None
        self.spool_dir = spool_dir
        self._queue: deque[tuple[str, Any]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        self.outage_started: float | None = None
        if self.enabled:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=tracking_uri)
            self._thread = threading.Thread(target=self._send_forever, name="mlflow-sender", daemon=True)
            self._thread.start()

    # -- what training calls (never blocks on the network) ----------------------------------------
    def log(self, step: int, values: dict[str, float]) -> None:
        if self.enabled:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self._put("metrics", [Metric(key, float(value), now, step) for key, value in values.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled and tags:
            self._put("tags", dict(tags))

    def call(self, description: str, action: Callable[[Any, str], None]) -> None:
        """Queue `action(client, run_id)` in order with the metrics, retried like them during an outage.

        For updates whose meaning belongs to the caller (e.g. a run's status): the sender does not need to
        know them. `description` names the action in logs and in the spool file if it is never sent.
        """
        if self.enabled:
            self._put("call", (description, action))

    def log_dict_artifact(self, payload: dict[str, Any], artifact_file: str) -> None:
        if self.enabled:
            self._put("dict", (payload, artifact_file))

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._put("file", (local_path, artifact_path))

    def log_loss_curve(self, metric: str = "train/loss", artifact_file: str = "loss_curve.png") -> None:
        """Queue a plot of the run's whole `metric` history (all attempts of a resumed run) as an artifact."""
        if self.enabled:
            self._put("loss_curve", (metric, artifact_file))

    def flush(self) -> None:
        """Ask the sender to go now; returns at once."""
        self._wake.set()

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until everything queued so far reached the server (or `timeout_s`); True if it did."""
        if not self.enabled:
            return True
        if timeout_s is None:
            timeout_s = float(os.environ.get("VITO_MLFLOW_FLUSH_TIMEOUT_S", "600"))
        self._wake.set()
        return self._idle.wait(timeout_s)

    def close(self, timeout_s: float | None = None) -> bool:
        """Drain, then stop the sender; what could not be sent is written to a spool file. True if nothing was."""
        if not self.enabled:
            return True
        drained = self.drain(timeout_s)
        self._closed = True
        self._wake.set()
        if not drained:
            self._spool_unsent()
        return drained

    # -- the sender ------------------------------------------------------------------------------
    def _put(self, kind: str, payload: Any) -> None:
        with self._lock:
            self._queue.append((kind, payload))
            self._idle.clear()
        if kind != "metrics":
            self._wake.set()

    def _send_forever(self) -> None:
        backoff = 1.0
        while not self._closed:
            self._wake.wait(timeout=5.0)
            self._wake.clear()
            while True:
                with self._lock:
                    if not self._queue:
                        self._idle.set()
                        break
                    kind, payload = self._queue[0]
                    if kind == "metrics":  # merge queued metric batches up to MLflow's cap
                        merged, count = list(payload), 1
                        while (count < len(self._queue) and self._queue[count][0] == "metrics"
                               and len(merged) + len(self._queue[count][1]) <= _BATCH):
                            merged.extend(self._queue[count][1])
                            count += 1
                        kind, payload = "metrics", merged
                    else:
                        count = 1
                try:
                    self._send(kind, payload)
                except Exception as problem:  # noqa: BLE001 - whatever the server does, the item is kept and retried
                    if _never_sendable(kind, payload, problem):
                        # Not an outage: the local file is gone, and retrying would hold every later item (and
                        # the job's end, which drains the queue) forever.
                        log.error("not uploading %s: %s", payload[0], _one_line(problem))
                        with self._lock:
                            self._queue.popleft()
                        continue
                    self._note_outage(problem)
                    if self._closed:
                        return
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                with self._lock:
                    for _ in range(count):
                        self._queue.popleft()
                backoff = 1.0
                self._note_recovery()

    def _send(self, kind: str, payload: Any) -> None:
        client = self._client
        if kind == "metrics":
            client.log_batch(self.run_id, metrics=payload, synchronous=True)
        elif kind == "tags":
            from mlflow.entities import RunTag

            client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in payload.items()], synchronous=True)
        elif kind == "call":
            payload[1](client, self.run_id)
        elif kind == "dict":
            client.log_dict(self.run_id, payload[0], payload[1])
        elif kind == "file":
            client.log_artifact(self.run_id, payload[0], payload[1])
        elif kind == "loss_curve":
            figure = loss_curve_figure(client.get_metric_history(self.run_id, payload[0]), payload[0])
            if figure is not None:
                client.log_figure(self.run_id, figure, payload[1])

    def _note_outage(self, problem: Exception) -> None:
        if self.outage_started is None:
            self.outage_started = time.time()
            log.warning("MLflow unreachable (%s); training continues, %d queued items wait", _one_line(problem), len(self._queue))

    def _note_recovery(self) -> None:
        if self.outage_started is not None:
            seconds = time.time() - self.outage_started
            log.warning("MLflow reachable again after %.0f s; queued metrics sent", seconds)
            self.outage_started = None
            with self._lock:
                self._queue.append(("tags", {TAG_LAST_TRACKING_OUTAGE_S: f"{seconds:.0f}"}))

    def _spool_unsent(self) -> None:
        with self._lock:
            unsent = list(self._queue)
        if not unsent:
            return
        target = Path(self.spool_dir or ".") / f"unsent-mlflow-{self.run_id}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a") as handle:
            for kind, payload in unsent:
                if kind == "metrics":
                    for m in payload:
                        handle.write(json.dumps({"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}) + "\n")
                elif kind == "call":  # a callable cannot be spooled: record what it was meant to do
                    handle.write(json.dumps({"kind": kind, "payload": payload[0]}) + "\n")
                else:
                    handle.write(json.dumps({"kind": kind, "payload": payload}, default=str) + "\n")
        log.error("MLflow still unreachable: %d queued items written to %s", len(unsent), target)


def loss_curve_figure(history, metric: str):
    """A line plot of one metric against step (latest value per step), or None without matplotlib/data."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        return None
    by_step = {}
    for point in sorted(history, key=lambda m: m.timestamp):
        by_step[point.step] = point.value
    if not by_step:
        return None
    figure = Figure(figsize=(6, 3.5), tight_layout=True)
    axes = figure.add_subplot()
    steps = sorted(by_step)
    axes.plot(steps, [by_step[s] for s in steps])
    axes.set_xlabel("step")
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    return figure


def _never_sendable(kind: str, payload: Any, problem: Exception) -> bool:
    """An artifact whose local file no longer exists: no retry can send it."""
    return kind == "file" and isinstance(problem, FileNotFoundError) and not Path(payload[0]).exists()


def _one_line(problem: Exception) -> str:
    text = str(problem).strip().splitlines()
    return f"{type(problem).__name__}: {text[0] if text else ''}"[:300]
