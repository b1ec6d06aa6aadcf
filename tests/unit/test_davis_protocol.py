"""DAVIS label propagation (kind: davis): the propagation core on hand-made features, the context ring, the dense
trunk, the assignment of sequences to ranks, resume by sequence, the suite's wiring and the pre-queue check."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vito.config import DavisBenchmark, LossConfig, VitoConfig
from vito.eval.protocols.davis import assign_sequences, propagate_sequence, run_davis
from vito.eval.protocols.image_folder import Encoder, ExtractionSettings
from vito.eval.scoring.label_propagation import context_frames, dense_trunk, ids_from_labels, labels_on_grid, propagate_frame

T = 0.07


def _onehot_features(codes: torch.Tensor, dims: int) -> torch.Tensor:
    """(..., dims) one-hot features of integer codes: similarity 1 for equal codes, 0 otherwise."""
    return F.one_hot(codes, dims).float()


def test_propagation_with_ideal_features_moves_each_label_to_its_match() -> None:
    # a 1 x 4 frame: key position j carries code j and label j; the query's positions carry codes 3 2 1 0
    keys = _onehot_features(torch.arange(4).view(1, 1, 4), 4)
    labels = F.one_hot(torch.arange(4), 4).T.float().view(1, 4, 1, 4)
    query = _onehot_features(torch.tensor([[3, 2, 1, 0]]), 4)
    out = propagate_frame(query, keys, labels, topk=1, temperature=T, radius=10)
    assert torch.equal(out.argmax(0), torch.tensor([[3, 2, 1, 0]]))
    assert torch.allclose(out.sum(0), torch.ones(1, 4))


def test_topk_keeps_only_the_k_most_similar_keys_weighted_by_softmax() -> None:
    # one query, three keys of similarity 1.0, 0.8, 0.6 carrying labels 0, 1, 2
    sims = torch.tensor([1.0, 0.8, 0.6])
    keys = torch.stack([sims, torch.sqrt(1 - sims**2), torch.zeros(3)], 1).view(1, 1, 3, 3)
    labels = F.one_hot(torch.arange(3), 3).T.float().view(1, 3, 1, 3)
    query = torch.tensor([1.0, 0.0, 0.0]).view(1, 1, 3)
    keys_for = keys.expand(1, 1, 3, 3)
    one = propagate_frame(query, keys_for, labels, topk=1, temperature=T, radius=10)
    assert torch.allclose(one[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    two = propagate_frame(query, keys_for, labels, topk=2, temperature=T, radius=10)
    w = torch.softmax(sims[:2] / T, 0)
    assert torch.allclose(two[:, 0, 0], torch.tensor([w[0], w[1], 0.0]), atol=1e-6)


def test_keys_beyond_the_radius_are_never_used() -> None:
    # a 1 x 6 frame: the only perfect match of query position 0 lies 5 cells away; a weaker one 1 cell away
    keys = torch.zeros(1, 1, 6, 2)
    keys[0, 0, 5] = torch.tensor([1.0, 0.0])
    keys[0, 0, 1] = torch.tensor([0.6, 0.8])
    keys[0, 0, [0, 2, 3, 4]] = torch.tensor([0.0, 1.0])
    labels = torch.zeros(1, 2, 1, 6)
    labels[0, 1, 0, 5] = 1  # label 1 only at the far match
    labels[0, 0, 0, :5] = 1
    query = torch.zeros(1, 6, 2)
    query[0, 0] = torch.tensor([1.0, 0.0])
    wide = propagate_frame(query, keys, labels, topk=1, temperature=T, radius=5)
    near = propagate_frame(query, keys, labels, topk=1, temperature=T, radius=4.9)
    assert wide[1, 0, 0] == 1 and near[1, 0, 0] == 0 and near[0, 0, 0] == 1
    nothing = propagate_frame(query, keys, labels, topk=1, temperature=T, radius=0.5)  # own cell only
    assert nothing[:, 0, 0].sum() == 1  # its own position (distance 0) is always in reach


def _naive(query, keys, labels, topk, temperature, radius):
    """The propagation written out: the full affinity over every context key, masked by distance."""
    h, w, c = query.shape
    n, k = keys.shape[0], labels.shape[1]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], 1).float()
    far = torch.cdist(pos, pos) > radius
    aff = torch.einsum("qc,nkc->qnk", query.reshape(-1, c), keys.reshape(n, -1, c))
    aff = aff.masked_fill(far[:, None], float("-inf")).reshape(h * w, -1)
    top, idx = aff.topk(topk, 1)
    weights = torch.softmax(top / temperature, 1)
    flat = labels.reshape(n, k, -1).permute(1, 0, 2).reshape(k, -1)
    return torch.einsum("qj,lqj->lq", weights, flat[:, idx]).view(k, h, w)


@pytest.mark.parametrize("block", [1, 700, 1 << 24])
def test_the_banded_propagation_equals_the_full_affinity(block: int) -> None:
    gen = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(3, 7, 9, 5, generator=gen), dim=-1)
    query = F.normalize(torch.randn(7, 9, 5, generator=gen), dim=-1)
    labels = torch.softmax(torch.randn(3, 4, 7, 9, generator=gen), 1)
    got = propagate_frame(query, keys, labels, topk=4, temperature=0.1, radius=2.5, block_elements=block)
    assert torch.allclose(got, _naive(query, keys, labels, 4, 0.1, 2.5), atol=1e-6)


def test_the_context_is_the_first_frame_and_the_last_n() -> None:
    assert context_frames(1, 20) == [0]
    assert context_frames(2, 20) == [0, 1]
    assert context_frames(30, 20) == [0] + list(range(10, 30))
    assert context_frames(5, 2) == [0, 3, 4]
    assert context_frames(5, 0) == [0]
    with pytest.raises(ValueError):
        context_frames(0, 3)


def test_labels_on_the_stride_grid_and_back() -> None:
    ids = np.zeros((20, 28), np.uint8)  # 20 x 28 at stride 8: a 3 x 4 grid (SAME's ceil)
    ids[:8, 8:16], ids[16:, 24:] = 1, 2
    soft = labels_on_grid(ids, 3, (3, 4), 8)
    assert soft.shape == (3, 3, 4) and soft[1, 0, 1] == 1 and soft[0, 0, 1] == 0
    assert soft[2, 2, 3] == pytest.approx(4 * 4 / 64)  # the padded cell holds 4 x 4 pixels of object 2
    back = ids_from_labels(F.one_hot(soft.argmax(0), 3).permute(2, 0, 1).float(), 8, (20, 28), (20, 28))
    assert back.shape == ids.shape and (back[:6, 9:14] == 1).all() and (back[:6, :6] == 0).all()
    half = ids_from_labels(soft, 8, (20, 28), (10, 14))  # a downscaled frame's labels at the annotation's size
    assert half.shape == (10, 14)


@pytest.mark.parametrize("padding", ["torch", "same"])
def test_the_dense_trunk_gives_stage_4_at_stride_8_and_leaves_the_network_alone(padding: str) -> None:
    from vito.model import ResNet

    backbone = ResNet("resnet18", 8, padding=padding).eval()
    trunk = dense_trunk(backbone, 4)
    images = torch.randn(1, 3, 60, 90)
    maps = trunk(images)
    assert set(maps) == {4} and maps[4].shape[-2:] == (math.ceil(60 / 8), math.ceil(90 / 8))
    assert backbone.layer4 is not None and backbone.layer3[0].conv1.stride == (2, 2)
    assert trunk.layer3[0].conv1.stride == (1, 1)
    # stride 1 SAME padding of a 3x3 conv is 1 on each side: the trunk's conv equals a plain padded conv
    conv = trunk.layer3[0].conv1
    x = torch.randn(1, conv.in_channels, 9, 11)
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight, None, 1, 1), atol=1e-6)


def test_sequences_are_split_over_ranks_disjoint_and_balanced_by_frames() -> None:
    counts = [("a", 10), ("b", 8), ("c", 5), ("d", 3), ("e", 2)]
    assert assign_sequences(counts, 2) == [["a", "d", "e"], ["b", "c"]]
    assert assign_sequences(counts, 1) == [["a", "b", "c", "d", "e"]]
    spread = assign_sequences(counts, 7)
    assert sorted(sum(spread, [])) == ["a", "b", "c", "d", "e"] and spread[5:] == [[], []]
    many = [(f"s{i}", 20 + (i * 7) % 50) for i in range(30)]
    parts = assign_sequences(many, 4)
    loads = [sum(dict(many)[n] for n in part) for part in parts]
    assert sorted(sum(parts, [])) == sorted(dict(many)) and max(loads) - min(loads) <= max(dict(many).values())


class _Counting:
    """Dense maps of an image's colours per 8 x 8 cell (objects of the fixture have their own colours), counting
    the frames encoded."""

    def __init__(self) -> None:
        self.frames = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.frames += len(images)
        return F.avg_pool2d(images, 8, ceil_mode=True)


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    from vito.eval.fixtures.davis import write_davis_fixture

    return write_davis_fixture(tmp_path_factory.mktemp("davis") / "davis")


def _encoder(dense) -> Encoder:
    return Encoder(lambda x: x, "colour-cells", torch.device("cpu"), dense=dense)


def test_the_context_ring_is_the_first_frame_plus_the_last_n(fixture_root: Path) -> None:
    from vito.eval.datasets.davis import load_mask, read_davis

    sequence = read_davis(fixture_root).sequences[1]
    bench = DavisBenchmark(kind="davis", root=str(fixture_root), context_frames=2, short_side=128)
    dense = _Counting()
    got = propagate_sequence(sequence, _encoder(dense), bench)
    # the same propagation with every frame's features kept and the context taken by context_frames
    from vito.eval.protocols.davis import _frame_tensor, _resized_ids

    feats = [F.normalize(dense(_frame_tensor(p, 128))[0], dim=0).permute(1, 2, 0) for p in sequence.frames]
    first = load_mask(sequence.annotations[0])
    size = tuple(_frame_tensor(sequence.frames[0], 128).shape[-2:])
    labels = [labels_on_grid(_resized_ids(first, size), 3, feats[0].shape[:2], 8)]
    expected = [first]
    for t in range(1, len(feats)):
        ctx = context_frames(t, 2)
        soft = propagate_frame(feats[t], torch.stack([feats[i] for i in ctx]), torch.stack([labels[i] for i in ctx]),
                               topk=10, temperature=T, radius=12)
        labels.append(soft)
        expected.append(ids_from_labels(soft, 8, size, sequence.size))
    assert len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(got, expected))
    assert {int(v) for m in got[1:] for v in np.unique(m)} <= {0, 1, 2}


def test_an_evaluation_resumes_by_sequence(fixture_root: Path, tmp_path: Path) -> None:
    from vito.eval.datasets.davis import read_davis

    bench = DavisBenchmark(kind="davis", root=str(fixture_root), short_side=128)
    settings = ExtractionSettings(str(tmp_path / "cache"), 64, 8, 0, {})
    frames = {s.name: len(s.frames) for s in read_davis(fixture_root).sequences}
    dense = _Counting()
    first = run_davis("davis", bench, _encoder(dense), settings, is_main=True)
    probe = 1  # the main rank encodes one frame to record the map's effective stride
    assert first.record["sequences"]["computed"] == sorted(frames) and dense.frames == sum(frames.values()) + probe
    assert first.record["stride_effective"] == 8
    assert first.metrics["eval/davis/jf"] > first.metrics["eval/davis/jf_no_motion"]  # colours track the objects
    masks = Path(first.record["masks"])
    assert sorted(p.name for p in masks.glob("*.done")) == [f"{n}.done" for n in sorted(frames)]
    assert (masks / "synth01" / "00003.png").is_file()

    dense.frames = 0
    again = run_davis("davis", bench, _encoder(dense), settings, is_main=True)
    assert again.record["sequences"]["reused"] == sorted(frames) and dense.frames == probe
    assert again.metrics == first.metrics

    (masks / "synth01.done").unlink()  # preempted after its PNGs, before its marker: uncommitted
    (masks / "synth02" / "00002.png").write_bytes(b"torn")  # a stale marker: the PNG no longer matches it
    dense.frames = 0
    resumed = run_davis("davis", bench, _encoder(dense), settings, is_main=True)
    assert resumed.record["sequences"]["computed"] == ["synth01", "synth02"]
    assert resumed.record["sequences"]["reused"] == ["synth00"]
    assert dense.frames == probe + frames["synth01"] + frames["synth02"]
    assert resumed.metrics == first.metrics
    assert set(resumed.tables) == {"global_results-val.csv", "per-sequence_results-val.csv",
                                   "global_results-val_no_motion.csv"}
    assert [r["Sequence"] for r in resumed.tables["per-sequence_results-val.csv"]] == [
        f"{n}_{o}" for n in sorted(frames) for o in (1, 2)]


def test_a_network_without_dense_maps_is_refused(fixture_root: Path, tmp_path: Path) -> None:
    bench = DavisBenchmark(kind="davis", root=str(fixture_root))
    with pytest.raises(ValueError, match="eval.benchmarks.davis: .* no dense feature maps"):
        run_davis("davis", bench, _encoder(None), ExtractionSettings(str(tmp_path), 1, 1, 0, {}),
                  is_main=True)


class _Recorder:
    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.artifacts: list[str] = []

    def log(self, step, values) -> None:
        self.metrics.update(values)

    def set_tags(self, tags) -> None:
        pass

    def log_dict_artifact(self, payload, path) -> None:
        self.artifacts.append(path)

    def log_artifact(self, path, folder) -> None:
        self.artifacts.append(f"{folder}/{Path(path).name}")


def test_the_suite_runs_a_davis_entry_with_its_random_init_baseline(fixture_root: Path, tmp_path: Path) -> None:
    from tests.unit.tiny_model import tiny_model_cfg
    from vito.eval.suite import run_benchmarks
    from vito.model import VitoModel

    cfg = VitoConfig.model_validate({
        "model": tiny_model_cfg().model_dump(),
        "eval": {"checkpoint": str(tmp_path / "ckpt"), "feature_cache": str(tmp_path / "cache"),
                 "benchmarks": {"davis": {"kind": "davis", "root": str(fixture_root), "short_side": 64}}}})
    torch.manual_seed(0)
    model = VitoModel(cfg.model, LossConfig())
    recorder = _Recorder()
    results = run_benchmarks(cfg, cfg, model, 3, device=torch.device("cpu"), is_main=True, storage_options={},
                             metrics=recorder, artifact_dir=str(tmp_path))
    for key in ("jf", "j_mean", "f_mean", "j_recall", "j_decay", "f_recall", "f_decay", "sequences_scored",
                "objects_scored", "jf_random_init", "jf_no_motion"):
        assert f"eval/davis/{key}" in results, key
    assert results["eval/davis/sequences_scored"] == 3 and results["eval/davis/objects_scored"] == 6
    assert "eval/davis/jf_no_motion_random_init" not in results  # the baseline needs no network: once
    assert {"eval/davis/results.json", "eval/davis/global_results-val.csv", "eval/davis/per-sequence_results-val.csv",
            "eval/davis/global_results-val_random_init.csv"} <= set(recorder.artifacts)


def test_davis_config_defaults_and_a_url_root_is_refused() -> None:
    bench = DavisBenchmark(kind="davis", root="/d")
    assert (bench.split, bench.resolution, bench.stage, bench.stride, bench.context_frames, bench.topk,
            bench.temperature, bench.radius, bench.short_side) == ("val", "480p", 4, 8, 20, 10, 0.07, 12.0, None)
    with pytest.raises(ValueError, match="needs a local or mounted path"):
        DavisBenchmark(kind="davis", root="s3://bucket/davis")
    config = VitoConfig.model_validate({"eval": {"benchmarks": {"davis": {"kind": "davis", "root": "/d"}}}})
    assert config.eval.benchmarks["davis"].kind == "davis"  # no readout needed


def test_a_visible_davis_root_without_its_split_file_is_refused_before_queueing(tmp_path: Path) -> None:
    from vitolaunch.errors import SpecError
    from vitolaunch.launch.benchmark_check import check_benchmark_roots
    from vitolaunch.spec import expand, load_spec

    root = tmp_path / "DAVIS"
    (root / "JPEGImages" / "480p" / "bear").mkdir(parents=True)
    path = tmp_path / "eval.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: ev
        task: evaluate
        evaluate: {{checkpoints: [{tmp_path / 'ckpt'}]}}
        base:
          eval:
            benchmarks:
              davis:
                kind: davis
                root: {root}
        resources: {{cluster: local}}
        """))
    spec = load_spec(path)
    with pytest.raises(SpecError) as refusal:
        check_benchmark_roots(spec, expand(spec))
    message = str(refusal.value)
    assert "key 'eval.benchmarks.davis.root'" in message and f"{root}/ImageSets/2017/val.txt: missing" in message


def test_published_weights_give_dense_maps_with_same_padding_following_the_stride() -> None:
    from vito.eval.foreign_weights import ForeignNetwork, ForeignResNet
    from vito.evaluate_task import foreign_encoder

    torch.manual_seed(0)
    port = ForeignNetwork("vito_port", ForeignResNet(padding="same", pool="attention", pool_hidden=8), "0" * 64)
    encoder = foreign_encoder(port, torch.device("cpu"))
    maps = encoder.dense(torch.randn(1, 3, 60, 90))
    assert maps.shape == (1, 1024, 8, 12)  # ResNet-50's layer3 at stride 8: ceil(60/8) x ceil(90/8)
    assert port.module.backbone.layer4 is not None  # the pooled feature still has its layer4
    assert encoder.encode(torch.randn(1, 3, 64, 64)).shape == (1, 2048)


def test_the_fixtures_command_writes_a_davis_set_of_two_widths_and_two_objects(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vito.eval.datasets.davis import read_davis
    from vitolaunch.cli import main

    result = CliRunner().invoke(main, ["data", "fixtures", str(tmp_path), "--classes", "2", "--train-per-class", "1",
                                       "--val-per-class", "1"])
    assert result.exit_code == 0, result.output
    assert "davis (JPEGImages/480p/<seq>/*.jpg" in result.output
    davis = read_davis(tmp_path / "davis")
    assert len({s.size[1] for s in davis.sequences}) == 2
    assert all(len(s.objects) >= 2 for s in davis.sequences)
