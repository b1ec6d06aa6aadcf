"""UCF-101 reader, clip dataset, clip encoder and fixture (vito/eval/datasets/ucf101.py, vito/eval/fixtures/ucf101.py)."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vito.data.video import decode_all_frames, probe_video
from vito.eval.datasets.image_folder import ImageTransform, collate
from vito.eval.datasets.ucf101 import (
    SPLITS_FOLDER,
    LayoutError,
    UcfClipDataset,
    clip_encoder,
    read_ucf101,
    segment_centre_indices,
)
from vito.eval.fixtures.ucf101 import groups_tested_in, ucf_class_names, write_ucf_fixture

GROUP = re.compile(r"_g(\d\d)_c\d\d\.avi$")


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory):
    return write_ucf_fixture(tmp_path_factory.mktemp("ucf") / "UCF-101")


@pytest.fixture
def ucf_copy(ucf_root, tmp_path):
    return shutil.copytree(ucf_root, tmp_path / "UCF-101")


def _groups(ucf_set) -> set[tuple[str, int]]:
    return {(ucf_set.relative_path(s).split("/")[0], int(GROUP.search(s.path).group(1))) for s in ucf_set.samples}


# -- reader ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", [1, 2, 3])
def test_round_trip_each_split_disjoint_in_groups(ucf_root, split):
    train = read_ucf101(str(ucf_root), split, "train")
    test = read_ucf101(str(ucf_root), split, "test")
    classes = ucf_class_names(3)
    assert train.classes == test.classes == classes == sorted(classes)
    assert (train.split, train.subset, test.subset) == (split, "train", "test")
    # 3 classes x 4 groups x 2 clips: one group per class tested, three trained
    assert len(train) == 18 and len(test) == 6
    assert {g for _, g in _groups(test)} == groups_tested_in(split)
    assert not _groups(train) & _groups(test)
    for ucf_set in (train, test):
        for sample in ucf_set.samples:
            folder = ucf_set.relative_path(sample).split("/")[0]
            assert sample.label == classes.index(folder)  # 0-indexed, from classInd
            assert sample.path.startswith(str(ucf_root))
    assert not {s.path for s in train.samples} & {s.path for s in test.samples}


def test_default_split_is_1_and_others_refused(ucf_root):
    assert read_ucf101(str(ucf_root)).split == 1
    for bad in (0, 4, "1", True):
        with pytest.raises(ValueError, match="split must be 1, 2 or 3"):
            read_ucf101(str(ucf_root), bad)
    with pytest.raises(ValueError, match="subset"):
        read_ucf101(str(ucf_root), 1, "val")


def test_separate_splits_dir(ucf_copy, tmp_path):
    moved = shutil.move(str(ucf_copy / SPLITS_FOLDER), str(tmp_path / "lists"))
    with pytest.raises(LayoutError, match="classInd.txt: missing"):
        read_ucf101(str(ucf_copy))
    assert len(read_ucf101(str(ucf_copy), 2, "test", splits_dir=moved)) == 6


def test_fingerprint_stable_and_mount_free(ucf_root, ucf_copy):
    a, b = read_ucf101(str(ucf_root), 1, "train"), read_ucf101(str(ucf_root), 1, "train")
    assert a.fingerprint() == b.fingerprint() == read_ucf101(str(ucf_copy), 1, "train").fingerprint()
    assert a.fingerprint() != read_ucf101(str(ucf_root), 2, "train").fingerprint()
    assert a.fingerprint() != read_ucf101(str(ucf_root), 1, "test").fingerprint()
    assert UcfClipDataset(a).fingerprint() == a.fingerprint()


def _rewrite(path, edit):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


@pytest.mark.parametrize("name", ["classInd.txt", "trainlist01.txt"])
def test_refuses_missing_list_files(ucf_copy, name):
    (ucf_copy / SPLITS_FOLDER / name).unlink()
    with pytest.raises(LayoutError, match=re.escape(f"{SPLITS_FOLDER}/{name}: missing")):
        read_ucf101(str(ucf_copy), 1, "train")


def test_refuses_missing_testlist(ucf_copy):
    (ucf_copy / SPLITS_FOLDER / "testlist03.txt").unlink()
    read_ucf101(str(ucf_copy), 3, "train")
    with pytest.raises(LayoutError, match=r"testlist03\.txt: missing \(expected testlist03\.txt"):
        read_ucf101(str(ucf_copy), 3, "test")


def test_refuses_listed_clip_that_does_not_exist(ucf_copy):
    (ucf_copy / "Square" / "v_Square_g04_c02.avi").unlink()
    with pytest.raises(LayoutError, match=r"trainlist01\.txt:\d+: .*Square/v_Square_g04_c02\.avi does not exist"):
        read_ucf101(str(ucf_copy), 1, "train")
    read_ucf101(str(ucf_copy), 1, "test")  # that clip is not in split 1's test list


def test_refuses_label_disagreeing_with_folder(ucf_copy):
    lists = ucf_copy / SPLITS_FOLDER
    _rewrite(lists / "trainlist02.txt", lambda lines: [lines[0].rsplit(" ", 1)[0] + " 3"] + lines[1:])
    with pytest.raises(LayoutError, match=r"trainlist02\.txt:1: label 3 for Circle/.*folder Circle is 1"):
        read_ucf101(str(ucf_copy), 2, "train")


def test_refuses_class_folder_not_in_classind(ucf_copy):
    (ucf_copy / "Juggling").mkdir()
    with pytest.raises(LayoutError, match=r"1 class folder\(s\) not in .*classInd\.txt: Juggling"):
        read_ucf101(str(ucf_copy))


def test_refuses_listed_folder_not_in_classind(ucf_copy):
    lists = ucf_copy / SPLITS_FOLDER
    _rewrite(lists / "testlist01.txt", lambda lines: lines + ["Juggling/v_Juggling_g01_c01.avi"])
    with pytest.raises(LayoutError, match=r"testlist01\.txt:7: class folder 'Juggling' is not in"):
        read_ucf101(str(ucf_copy), 1, "test")


def test_refuses_malformed_lines(ucf_copy):
    lists = ucf_copy / SPLITS_FOLDER
    _rewrite(lists / "testlist01.txt", lambda lines: [lines[0] + " 1"] + lines[1:])
    with pytest.raises(LayoutError, match=r"testlist01\.txt:1: .*expected '<Class>/<clip>\.avi', no label"):
        read_ucf101(str(ucf_copy), 1, "test")
    _rewrite(lists / "classInd.txt", lambda lines: ["2 Circle"] + lines[1:])
    with pytest.raises(LayoutError, match=r"classInd\.txt:1: index 2 \(expected 1"):
        read_ucf101(str(ucf_copy), 1, "test")


# -- frames ------------------------------------------------------------------------------------------------------


def test_segment_centres_by_hand():
    # 8 segments of 40 frames: 5 frames each, centres at 2.5, 7.5, ... -> floor
    assert segment_centre_indices(40, 8) == [2, 7, 12, 17, 22, 27, 32, 37]
    assert segment_centre_indices(8, 8) == list(range(8))
    assert segment_centre_indices(8, 4) == [1, 3, 5, 7]  # centres 1, 3, 5, 7 of segments of 2
    assert segment_centre_indices(10, 3) == [1, 5, 8]  # 10/3 = 3.33: centres 1.67, 5, 8.33
    assert segment_centre_indices(3, 6) == [0, 0, 1, 1, 2, 2]  # short clip: frames repeat
    assert segment_centre_indices(1, 2) == [0, 0]
    with pytest.raises(ValueError):
        segment_centre_indices(0, 8)


def test_dataset_returns_the_sampled_frames(ucf_root):
    transform = ImageTransform(resize=0, crop=32)
    dataset = UcfClipDataset(read_ucf101(str(ucf_root), 1, "test"), frames_per_clip=4, transform=transform)
    assert dataset.transform_key() == f"t4-segment-centres-{transform.key()}"
    index, clip, reason = dataset[3]
    assert index == 3 and reason is None and clip.shape == (4, 3, 32, 32) and clip.dtype == torch.float32
    path = dataset.samples[3].path
    assert probe_video(path)[2] == 8
    frames = decode_all_frames(path)[[1, 3, 5, 7]]
    expected = torch.stack([transform.apply(Image.fromarray(f)) for f in frames])
    assert torch.equal(clip, expected)


def test_corrupt_clip_skipped_with_reason(ucf_copy):
    test = read_ucf101(str(ucf_copy), 1, "test")
    bad = test.samples[2].path
    with open(bad, "r+b") as handle:  # keep the RIFF header's length, garble the rest
        handle.seek(64)
        handle.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        handle.truncate(4160)
    dataset = UcfClipDataset(test, frames_per_clip=4, transform=ImageTransform(resize=0, crop=32))
    items = [dataset[i] for i in range(len(dataset))]
    index, clip, reason = items[2]
    assert index == 2 and clip is None and reason.startswith(f"cannot decode {bad}: ")
    assert " at 0x" not in reason
    batch = collate(items)
    assert batch.images.shape == (5, 4, 3, 32, 32)  # image_folder.collate stacks 5-D clips as they are
    assert batch.indices.tolist() == [0, 1, 3, 4, 5] and [i for i, _ in batch.errors] == [2]


def test_missing_clip_after_listing_is_a_reason_not_an_error(ucf_copy):
    test = read_ucf101(str(ucf_copy), 1, "test")
    (ucf_copy / test.relative_path(test.samples[0])).unlink()
    index, clip, reason = UcfClipDataset(test, 2, ImageTransform(resize=0, crop=32))[0]
    assert clip is None and "FileNotFoundError" in reason


# -- clip encoder ------------------------------------------------------------------------------------------------


def test_clip_encoder_averages_frame_features_by_hand():
    calls = []

    def frame_encode(images):  # (N, 3, H, W) -> (N, 2): the mean pixel, and channel 0's max
        calls.append(images.shape)
        return torch.stack([images.mean(dim=(1, 2, 3)), images[:, 0].amax(dim=(1, 2))], dim=1)

    clips = torch.zeros(2, 3, 3, 2, 2)
    for b in range(2):
        for t in range(3):
            clips[b, t] = 10 * b + t  # every pixel of frame t of clip b
    clips[1, 2, 0, 0, 0] = 100.0
    out = clip_encoder(frame_encode)(clips)
    assert calls == [(6, 3, 2, 2)]  # all frames in one call
    # clip 0: frame means 0, 1, 2 -> 1; maxima 0, 1, 2 -> 1
    # clip 1: means 10, 11, 12 + (100 - 12) / 12 -> (33 + 88/12) / 3; maxima 10, 11, 100 -> 121 / 3
    expected = torch.tensor([[1.0, 1.0], [(33 + 88 / 12) / 3, 121 / 3]])
    assert torch.allclose(out, expected)
    with pytest.raises(ValueError, match=r"expects \(B, T, 3, H, W\)"):
        clip_encoder(frame_encode)(clips[0])


def test_fixture_files_are_avi_mpeg4(ucf_root):
    import av

    path = next((ucf_root / "Circle").glob("*.avi"))
    with av.open(str(path)) as container:
        assert container.format.name == "avi"
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert (ucf_root / SPLITS_FOLDER / "classInd.txt").read_bytes() == b"1 Circle\r\n2 Square\r\n3 Triangle\r\n"


def test_extract_features_runs_unchanged_on_clips(ucf_copy, tmp_path):
    from vito.eval.extract import extract_features

    test = read_ucf101(str(ucf_copy), 1, "test")
    dataset = UcfClipDataset(test, frames_per_clip=4, transform=ImageTransform(resize=0, crop=32))
    out = extract_features(clip_encoder(lambda images: images.mean(dim=(2, 3))), dataset, str(tmp_path / "cache"),
                           workers=0, device="cpu", batch_size=4)
    assert out.features.shape == (6, 3) and out.skipped == []
    assert out.labels.tolist() == [s.label for s in test.samples]
    clip = dataset[0][1]
    assert torch.allclose(out.features[0].float(), clip.mean(dim=(2, 3)).mean(dim=0), atol=1e-2)  # fp16 storage


def test_reads_and_decodes_from_an_fsspec_store(ucf_root):
    import uuid

    import fsspec

    memory = fsspec.filesystem("memory")
    base = f"/ucf-{uuid.uuid4().hex}"
    try:
        for path in ucf_root.rglob("*"):
            if path.is_file():
                memory.pipe(f"{base}/{path.relative_to(ucf_root).as_posix()}", path.read_bytes())
        remote = read_ucf101(f"memory://{base}", 2, "test")
        local = read_ucf101(str(ucf_root), 2, "test")
        assert remote.samples[0].path.startswith(f"memory://{base}/") and remote.fingerprint() == local.fingerprint()
        transform = ImageTransform(resize=0, crop=32)
        assert torch.equal(UcfClipDataset(remote, 4, transform)[0][1], UcfClipDataset(local, 4, transform)[0][1])
        memory.rm(f"{base}/Square/v_Square_g01_c01.avi")
        with pytest.raises(LayoutError, match=r"testlist01\.txt:3: memory://.*/Square/v_Square_g01_c01\.avi does not"):
            read_ucf101(f"memory://{base}", 1, "test")
    finally:
        memory.rm(base, recursive=True)
