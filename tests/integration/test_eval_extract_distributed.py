"""Feature extraction on two real gloo ranks (CPU processes) over an uneven set: the same features, indices and
counts as one process, each shard computed by exactly one rank, the shards' bytes independent of the rank.
Then the same extraction with the images and the cache in real S3 (SeaweedFS), when it runs here."""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.eval_images import KEYS, dataset_of, toy_encoder, write_image_folder
from vito.eval.extract import extract_features

pytestmark = pytest.mark.integration

WORLD = 2
NUM_IMAGES = 101
SHARD_SIZE = 16  # 7 shards, the last of 5: rank 0 gets 0 2 4 6, rank 1 gets 1 3 5
BAD = {7: "truncated", 50: "garbage"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, images: str, cache: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    result = extract_features(toy_encoder(), dataset_of(Path(images)), cache, shard_size=SHARD_SIZE, batch_size=5,
                              workers=1 if rank == 0 else 0, cache_key_fields=KEYS)
    torch.save({"features": result.features, "indices": result.indices, "labels": result.labels,
                "skipped": result.skipped, "computed": result.computed_shards, "reused": result.reused_shards,
                "num_samples": result.num_samples}, Path(out) / f"rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _markers(cache: Path) -> dict[str, str]:
    return {p.name: json.loads(p.read_text())["sha256"] for p in sorted(cache.glob("shard-*.done"))}


@pytest.mark.timeout(300)
def test_two_ranks_compute_disjoint_shards_and_return_the_single_process_result(tmp_path: Path) -> None:
    images = write_image_folder(tmp_path / "images", NUM_IMAGES, BAD)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks: the same kernels, so the same bits
    try:
        alone = extract_features(toy_encoder(), dataset_of(images), str(tmp_path / "alone"), shard_size=SHARD_SIZE,
                                 batch_size=5, workers=0, cache_key_fields=KEYS)
    finally:
        torch.set_num_threads(threads)
    assert alone.computed_shards == list(range(7))

    cache = tmp_path / "shared"
    mp.start_processes(_worker, args=(_free_port(), str(images), str(cache), str(tmp_path)), nprocs=WORLD,
                       start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]

    assert ranks[0]["computed"] == [0, 2, 4, 6] and ranks[1]["computed"] == [1, 3, 5]
    assert sorted(ranks[0]["computed"] + ranks[1]["computed"]) == list(range(7))
    for result in ranks:
        assert result["reused"] == []
        assert result["num_samples"] == NUM_IMAGES
        assert torch.equal(result["features"], alone.features)
        assert torch.equal(result["indices"], alone.indices) and torch.equal(result["labels"], alone.labels)
        assert result["skipped"] == alone.skipped
        assert len(result["indices"]) + len(result["skipped"]) == NUM_IMAGES
        assert sorted(result["indices"].tolist() + [i for i, _, _ in result["skipped"]]) == list(range(NUM_IMAGES))
    assert [i for i, _, _ in alone.skipped] == sorted(BAD)
    assert _markers(cache) == _markers(tmp_path / "alone")  # a shard's bytes do not depend on the rank

    # A second job over the same cache reuses everything, on both ranks.
    mp.start_processes(_worker, args=(_free_port(), str(images), str(cache), str(tmp_path)), nprocs=WORLD,
                       start_method="spawn")
    again = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]
    assert again[0]["computed"] == [] and again[0]["reused"] == [0, 2, 4, 6] and again[1]["reused"] == [1, 3, 5]
    assert all(torch.equal(result["features"], alone.features) for result in again)


@pytest.mark.timeout(300)
def test_images_and_cache_in_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.services import remove_tree, s3_filesystem, services_env
    from vito.eval.datasets.image_folder import ImageFolderDataset, check_layout, read_image_folder

    env = services_env(s3=True, mlflow=False)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.setenv(key, env[key])
    prefix = f"{env['VITOLAUNCH_TEST_S3_ROOT']}/eval-{uuid.uuid4().hex[:8]}"
    local = write_image_folder(tmp_path / "images", 23, {4: "truncated"})
    fs = s3_filesystem(env)
    try:
        for path in sorted((local / "val").rglob("*.JPEG")):
            fs.put_file(str(path), f"{prefix.removeprefix('s3://')}/images/{path.relative_to(local).as_posix()}")
        check_layout(f"{prefix}/images", splits=("val",))
        remote_set = read_image_folder(f"{prefix}/images", "val", classes_from=None)
        local_set = read_image_folder(str(local), "val", classes_from=None)
        assert remote_set.fingerprint() == local_set.fingerprint()
        assert remote_set.samples[0].path.startswith(f"{prefix}/images/val/c0/")

        remote = ImageFolderDataset(remote_set, dataset_of(local).transform)
        from_s3 = extract_features(toy_encoder(), remote, f"{prefix}/cache", shard_size=8, batch_size=3, workers=2,
                                   cache_key_fields=KEYS)
        from_disk = extract_features(toy_encoder(), dataset_of(local), str(tmp_path / "cache"), shard_size=8,
                                     batch_size=3, workers=0, cache_key_fields=KEYS)
        assert torch.equal(from_s3.features, from_disk.features) and torch.equal(from_s3.indices, from_disk.indices)
        assert [i for i, _, _ in from_s3.skipped] == [4]

        fs.rm(f"{prefix.removeprefix('s3://')}/cache/shard-000001.done")
        resumed = extract_features(toy_encoder(), remote, f"{prefix}/cache", shard_size=8, batch_size=3, workers=0,
                                   cache_key_fields=KEYS)
        assert resumed.computed_shards == [1] and torch.equal(resumed.features, from_s3.features)

        from vito.eval.datasets.image_folder import LayoutError

        with pytest.raises(LayoutError, match=rf"{re.escape(prefix)}/images: no train/ folder \(expected train/<class>/\*\.JPEG\)"):
            check_layout(f"{prefix}/images")
        with pytest.raises(LayoutError, match=rf"{re.escape(prefix)}/images/val: 1 class folder\(s\) not in train/: c2"):
            fs.put_file(str(local / "val" / "c0" / "img0000.JPEG"), f"{prefix.removeprefix('s3://')}/images/train/c0/a.JPEG")
            fs.put_file(str(local / "val" / "c0" / "img0000.JPEG"), f"{prefix.removeprefix('s3://')}/images/train/c1/a.JPEG")
            check_layout(f"{prefix}/images")
        fs.put_file(str(local / "val" / "c0" / "img0000.JPEG"), f"{prefix.removeprefix('s3://')}/images/val/stray.JPEG")
        with pytest.raises(LayoutError, match=r"images/val: 1 image file\(s\) directly under val/ \(e\.g\. stray\.JPEG\)"):
            read_image_folder(f"{prefix}/images", "val", classes_from=None)
    finally:
        remove_tree(env, prefix)
