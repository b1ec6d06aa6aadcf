"""The metrics sender: an artifact whose file vanished before its upload is dropped, not retried forever (an
evaluation once hung at its end, its readout's temporary folder gone before the queue drained)."""

from __future__ import annotations

from pathlib import Path

from vito.metrics import MetricsLogger


class _Client:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        Path(path).stat()  # MLflow's client reads the file: a missing one raises FileNotFoundError
        self.calls.append(("artifact", path))

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.calls.append(("tag", key))


def test_an_artifact_whose_file_is_gone_is_dropped_and_the_queue_goes_on(tmp_path: Path) -> None:
    logger = MetricsLogger(None, None)  # disabled: no MLflow; the sender is driven by hand below
    logger.enabled, logger._client, logger.run_id = True, _Client(), "r"
    kept = tmp_path / "kept.txt"
    kept.write_text("x")
    logger.log_artifact(str(tmp_path / "gone.pt"))
    logger.log_artifact(str(kept))
    logger.call("a tag after them", lambda client, run_id: client.set_tag(run_id, "after", "1"))
    import threading

    sender = threading.Thread(target=logger._send_forever, daemon=True)
    sender.start()
    logger._wake.set()
    assert logger._idle.wait(timeout=10), "the queue never drained: the missing file held it"
    logger._closed = True
    assert logger._client.calls == [("artifact", str(kept)), ("tag", "after")]
    assert logger.outage_started is None  # a missing file is not an MLflow outage


def test_whatever_stops_an_evaluation_is_tagged_on_its_run() -> None:
    import pytest

    from vito.evaluate_task import EVAL_ERROR_TAG, failure_tagged

    class Tags:
        def __init__(self) -> None:
            self.tags: dict[str, str] = {}

        def set_tags(self, tags: dict[str, str]) -> None:
            self.tags.update(tags)

    metrics = Tags()
    with pytest.raises(ValueError), failure_tagged(metrics):
        raise ValueError("a cache written for a different extraction")
    assert metrics.tags[EVAL_ERROR_TAG] == "ValueError: a cache written for a different extraction"
