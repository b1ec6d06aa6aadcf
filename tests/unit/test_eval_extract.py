"""Feature extraction in one process on real JPEGs and a 2-conv toy encoder: every index exactly once, the
unreadable ones listed, resume by shard (only a shard without a valid commit marker is recomputed, to the
same bytes), and a cache of another extraction refused."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch

from tests.eval_images import KEYS, TRANSFORM, dataset_of, toy_encoder, write_image_folder, write_jpeg
from vito.eval.datasets.image_folder import ImageFolderDataset, ImageTransform
from vito.eval.extract import CacheMismatch, extract_features, shard_name


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images"), 37, {5: "truncated", 30: "garbage"})


def _run(dataset, cache: Path, **kwargs):
    options = {"shard_size": 8, "batch_size": 3, "workers": 0, "cache_key_fields": KEYS} | kwargs
    return extract_features(toy_encoder(), dataset, str(cache), **options)


def test_every_index_once_and_the_unreadable_listed(images: Path, tmp_path: Path) -> None:
    dataset = dataset_of(images)
    calls = []
    result = _run(dataset, tmp_path / "cache", progress=lambda done, total: calls.append((done, total)))

    assert result.num_samples == 37
    assert result.computed_shards == [0, 1, 2, 3, 4] and result.reused_shards == []
    assert [(i, Path(path).name) for i, path, _ in result.skipped] == [(5, Path(dataset.samples[5].path).name),
                                                                       (30, Path(dataset.samples[30].path).name)]
    assert "truncated" in result.skipped[0][2].lower() and "UnidentifiedImageError" in result.skipped[1][2]
    assert result.indices.tolist() == [i for i in range(37) if i not in (5, 30)]
    assert result.features.dtype == torch.float16 and result.features.shape == (35, 8)
    assert result.labels.tolist() == [dataset.samples[i].label for i in result.indices.tolist()]

    with torch.no_grad():  # the rows are the encoder's outputs of those samples, in fp16
        expected = toy_encoder()(torch.stack([dataset[i][1] for i in result.indices.tolist()])).half()
    assert torch.allclose(result.features.float(), expected.float(), atol=1e-3)

    assert calls[0] == (0, 37) and calls[-1] == (37, 37)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["num_samples"] == 37 and manifest["shard_size"] == 8 and manifest["fields"] == KEYS
    assert manifest["dataset_fingerprint"] == dataset.fingerprint() and manifest["transform"] == TRANSFORM.key()
    marker = json.loads((tmp_path / "cache" / f"{shard_name(3)}.done").read_text())
    data = (tmp_path / "cache" / f"{shard_name(3)}.pt").read_bytes()
    assert marker["sha256"] == hashlib.sha256(data).hexdigest() and marker["size"] == len(data)
    assert marker["count"] == 7 and marker["skipped"] == 1  # indices 24-31, 30 garbage


def test_workers_give_the_same_bytes(images: Path, tmp_path: Path) -> None:
    dataset = dataset_of(images)
    alone = _run(dataset, tmp_path / "a")
    with_workers = _run(dataset, tmp_path / "b", workers=2)
    assert torch.equal(alone.features, with_workers.features) and alone.skipped == with_workers.skipped
    for shard in range(5):
        name = f"{shard_name(shard)}.pt"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def _pt_bytes(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(cache.glob("shard-*.pt"))}


def test_resume_recomputes_only_the_shards_without_a_valid_marker(images: Path, tmp_path: Path, caplog) -> None:
    dataset = dataset_of(images)
    cache = tmp_path / "cache"
    first = _run(dataset, cache)
    original = _pt_bytes(cache)

    again = _run(dataset, cache)
    assert again.computed_shards == [] and again.reused_shards == [0, 1, 2, 3, 4]
    assert torch.equal(again.features, first.features)

    calls = []
    (cache / f"{shard_name(2)}.done").unlink()  # died after the .pt, before its marker
    with caplog.at_level(logging.INFO, logger="vito.eval.extract"):
        resumed = _run(dataset, cache, progress=lambda done, total: calls.append(done))
    assert resumed.computed_shards == [2] and resumed.reused_shards == [0, 1, 3, 4]
    assert f"{shard_name(2)}: no commit marker; recomputing it" in caplog.text
    assert "4 of its 5 shards cached, 1 to compute" in caplog.text and "37/37 samples done" in caplog.text
    assert calls[0] == 37 - 8  # the cached shards count as done from the start
    assert torch.equal(resumed.features, first.features) and torch.equal(resumed.indices, first.indices)
    assert resumed.skipped == first.skipped and torch.equal(resumed.labels, first.labels)
    assert _pt_bytes(cache) == original

    (cache / f"{shard_name(3)}.pt").unlink()  # a marker without its .pt
    (cache / f"{shard_name(1)}.pt").write_bytes(original[f"{shard_name(1)}.pt"][:-10] + b"0123456789")  # torn
    (cache / f"{shard_name(4)}.done").unlink()
    (cache / f"{shard_name(4)}.pt").unlink()
    resumed = _run(dataset, cache)
    assert resumed.computed_shards == [1, 3, 4] and resumed.reused_shards == [0, 2]
    assert torch.equal(resumed.features, first.features) and resumed.skipped == first.skipped
    assert _pt_bytes(cache) == original


def test_a_cache_of_another_extraction_is_refused(images: Path, tmp_path: Path) -> None:
    dataset = dataset_of(images)
    cache = tmp_path / "cache"
    _run(dataset, cache)
    with pytest.raises(CacheMismatch, match=r"manifest.json was written for a different extraction \(fields.encoder: "
                                            r"cached 'toy-2conv', now 'other'\)"):
        _run(dataset, cache, cache_key_fields=KEYS | {"encoder": "other"})
    with pytest.raises(CacheMismatch, match=r"shard_size: cached 8, now 16"):
        _run(dataset, cache, shard_size=16)
    with pytest.raises(CacheMismatch, match=r"transform: cached 'resize32-crop28-bilinear-antialias-draft', now"):
        _run(ImageFolderDataset(dataset.image_set, ImageTransform(resize=32, crop=28, decoder_draft=False)), cache)
    write_jpeg(images / "val" / "c0" / "img9999.JPEG", seed=1)
    try:
        changed = r"dataset_fingerprint: cached '[0-9a-f]+', now '[0-9a-f]+'; num_samples: cached 37, now 38\)"
        with pytest.raises(CacheMismatch, match=changed):
            _run(dataset_of(images), cache)
    finally:
        (images / "val" / "c0" / "img9999.JPEG").unlink()
    assert _run(dataset, cache).computed_shards == []  # the refusals changed nothing
    (cache / "manifest.json").unlink()  # shards of an unknown extraction are never adopted
    with pytest.raises(CacheMismatch, match=r"holds 10 shard file\(s\) \(e\.g\. shard-000000\.done\) but no manifest\.json"):
        _run(dataset, cache)


def test_an_empty_shard_of_unreadable_images_and_a_last_short_shard(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", 10, {i: "garbage" for i in range(4, 8)})
    dataset = dataset_of(root)
    result = _run(dataset, tmp_path / "cache", shard_size=4, batch_size=2)  # shard 1 = [4, 8): all unreadable
    assert result.indices.tolist() == [0, 1, 2, 3, 8, 9] and [i for i, _, _ in result.skipped] == [4, 5, 6, 7]
    again = _run(dataset, tmp_path / "cache", shard_size=4, batch_size=2)
    assert again.reused_shards == [0, 1, 2] and torch.equal(again.features, result.features)


def test_a_dataset_that_returns_other_indices_is_refused(images: Path, tmp_path: Path) -> None:
    class Shifted(torch.utils.data.Dataset):
        def __init__(self, inner):
            self.inner, self.samples = inner, inner.samples

        def __len__(self) -> int:
            return len(self.inner)

        def __getitem__(self, i):
            _, image, error = self.inner[i]
            return (i + 1) % len(self.inner), image, error

    with pytest.raises(ValueError, match=r"dataset\[i\] must return \(i, tensor \| None, reason \| None\)"):
        _run(Shifted(dataset_of(images)), tmp_path / "cache")


def test_a_cache_on_a_remote_store(images: Path, tmp_path: Path) -> None:
    """The cache through fsspec's in-memory store (the code path of s3://): same bytes, same resume."""
    import uuid

    import fsspec

    fs = fsspec.filesystem("memory")
    cache = f"memory://cache-{uuid.uuid4().hex[:8]}"
    dataset = dataset_of(images)
    try:
        remote = _run(dataset, cache)
        local = _run(dataset, tmp_path / "cache")
        assert torch.equal(remote.features, local.features) and remote.skipped == local.skipped
        for shard in range(5):
            name = f"{shard_name(shard)}.pt"
            assert fs.cat_file(f"{cache}/{name}") == (tmp_path / "cache" / name).read_bytes()
        assert not [p for p in fs.find(cache) if ".tmp-" in p]
        fs.rm(f"{cache}/{shard_name(4)}.done")
        resumed = _run(dataset, cache)
        assert resumed.computed_shards == [4] and torch.equal(resumed.features, local.features)
    finally:
        fs.rm(cache.removeprefix("memory:/"), recursive=True)
