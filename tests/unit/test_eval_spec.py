"""The evaluate spec's `eval.benchmarks`: validated, checked against the user's copy before anything is queued,
and invisible in the configs (and trial keys) of specs that do not use it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vito.config import VitoConfig
from vitolaunch.errors import SpecError
from vitolaunch.launch.benchmark_check import check_benchmark_roots
from vitolaunch.spec import expand, load_spec


def _spec(folder: Path, root: str) -> Path:
    path = folder / "eval.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: ev
        task: evaluate
        evaluate: {{checkpoints: [{folder / 'ckpt'}]}}
        base:
          eval:
            benchmarks:
              imagenet:
                root: {root}
        resources: {{cluster: local}}
        """))
    return path


def test_configs_without_benchmarks_dump_as_before() -> None:
    dumped = VitoConfig().to_dict()["eval"]
    for key in ("benchmarks", "synthetic_suite", "feature_cache", "extract_batch_size", "extract_shard_size",
                "loader_workers"):
        assert key not in dumped  # trial keys (hashes of the dump) of older specs are unchanged
    with_one = VitoConfig.model_validate({"eval": {"benchmarks": {"imagenet": {"root": "/d"}}}})
    assert with_one.to_dict()["eval"]["benchmarks"]["imagenet"]["knn_k"] == [10, 20, 100, 200]
    assert with_one.fingerprint() != VitoConfig().fingerprint()


def test_benchmark_names_name_metrics_and_home_is_expanded() -> None:
    with pytest.raises(ValueError, match="use \\[a-z0-9_\\]"):
        VitoConfig.model_validate({"eval": {"benchmarks": {"Image-Net": {"root": "/d"}}}})
    config = VitoConfig.model_validate({"eval": {"benchmarks": {"imagenet": {"root": "~/in1k"}}}})
    assert config.eval.benchmarks["imagenet"].root == str(Path.home() / "in1k")


def test_a_visible_root_in_the_wrong_layout_is_refused_at_its_spec_line(tmp_path: Path) -> None:
    root = tmp_path / "in1k"
    (root / "val" / "n01").mkdir(parents=True)
    spec = load_spec(_spec(tmp_path, str(root)))
    with pytest.raises(SpecError) as refusal:
        check_benchmark_roots(spec, expand(spec))
    message = str(refusal.value)
    assert message.startswith(f"{spec.source_file}:8: key 'eval.benchmarks.imagenet.root': {root}: no train/"), message


def test_a_root_not_visible_from_here_is_left_to_the_job(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, "/only/on/the/compute/nodes"))
    check_benchmark_roots(spec, expand(spec))  # no error: the job checks it first thing
