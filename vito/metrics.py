"""Metrics to MLflow from rank 0, buffered so that an unreachable tracking server never stops training."""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


class MetricsLogger:
    """Logs to one existing MLflow run (created by the launcher) by id, never the fluent global run.

    Metrics are buffered and sent in batches; a failed send keeps the buffer and is retried at the next
    flush, so a tracking outage loses nothing and costs training nothing but a warning.
    """

    def __init__(self, tracking_uri: str | None, run_id: str | None, enabled: bool = True):
        self.run_id = run_id
        self.enabled = enabled and run_id is not None
        self._buffer: list[Any] = []
        self._healthy = True
        self._client = None
        if self.enabled:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=tracking_uri)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer.extend(Metric(key, float(value), now, step) for key, value in values.items())

    def flush(self) -> bool:
        """Send what is buffered; returns False (and keeps it) if the server did not take it."""
        if not self.enabled or not self._buffer:
            return True
        try:
            # MLflow caps a batch at 1000 metrics.
            while self._buffer:
                self._client.log_batch(self.run_id, metrics=self._buffer[:1000], synchronous=True)
                del self._buffer[:1000]
        except Exception as problem:  # any transport or server error: keep going, keep the data
            if self._healthy:
                log.warning("MLflow unreachable (%s); buffering %d metrics", _one_line(problem), len(self._buffer))
            self._healthy = False
            return False
        if not self._healthy:
            log.warning("MLflow reachable again; buffered metrics flushed")
            self._healthy = True
        return True

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call("set_tag", tags)

    def log_dict_artifact(self, payload: dict[str, Any], artifact_file: str) -> None:
        if self.enabled:
            self._safe(lambda: self._client.log_dict(self.run_id, payload, artifact_file))

    def set_status(self, status: str) -> None:
        """RUNNING, FINISHED, FAILED or KILLED, as MLflow knows them."""
        if not self.enabled:
            return
        if status == "RUNNING":
            self._safe(lambda: self._client.update_run(self.run_id, status="RUNNING"))
        else:
            self._safe(lambda: self._client.set_terminated(self.run_id, status=status))

    def _call(self, method: str, tags: dict[str, str]) -> None:
        if not self.enabled:
            return
        for key, value in tags.items():
            self._safe(lambda k=key, v=value: getattr(self._client, method)(self.run_id, k, v))

    def _safe(self, action) -> None:
        try:
            action()
        except Exception as problem:
            log.warning("MLflow call failed (%s); training continues", _one_line(problem))


def _one_line(problem: Exception) -> str:
    text = str(problem).strip().splitlines()
    return f"{type(problem).__name__}: {text[0] if text else ''}"[:300]
