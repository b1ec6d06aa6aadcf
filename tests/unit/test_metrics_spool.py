"""What an MLflow outage leaves unsent at a job's end is written where the job says (its log folder), not lost."""

from __future__ import annotations

import json
from pathlib import Path


def test_unsent_metrics_and_tags_are_spooled_to_the_given_folder(tmp_path: Path, monkeypatch) -> None:
    from vito.metrics import MetricsLogger

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    logger = MetricsLogger("http://127.0.0.1:9", "r" * 32, spool_dir=str(tmp_path / "logs"))  # nothing listens
    logger.log(3, {"train/loss": 1.5})
    logger.set_tags({"vito.eval_progress": "done"})
    assert logger.close(timeout_s=0.5) is False
    lines = [json.loads(line) for line in (tmp_path / "logs" / f"unsent-mlflow-{'r' * 32}.jsonl").read_text().splitlines()]
    assert {"key": "train/loss", "value": 1.5, "step": 3} == {k: lines[0][k] for k in ("key", "value", "step")}
    assert {"kind": "tags", "payload": {"vito.eval_progress": "done"}} in lines


def test_a_trial_outside_a_submitit_job_spools_to_the_working_directory() -> None:
    from vitolaunch.job.trial import _spool_folder

    assert _spool_folder() is None
