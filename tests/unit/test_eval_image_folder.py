"""The ImageFolder reader on real JPEGs written here: the layout, its refusals, unreadable images reported
(never raised, never silently half-decoded), draft decoding never below the resize target, the transform's key."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from tests.eval_images import truncate, write_jpeg
from vito.data.augment import MEAN, STD
from vito.eval.datasets.image_folder import (
    ImageFolderDataset,
    ImageSample,
    ImageTransform,
    LayoutError,
    check_layout,
    collate,
    read_image_folder,
)


@pytest.fixture
def in1k(tmp_path: Path) -> Path:
    """train/ with three classes (written out of order), val/ with a subset; mixed-case extensions."""
    root = tmp_path / "in1k"
    names = {"n0003": ["a.JPEG", "b.jpg", "c.Jpeg"], "n0001": ["x.JPEG", "y.png"], "n0002": ["z.JPEG"]}
    seed = 0
    for wnid, files in names.items():
        for name in files:
            seed += 1
            write_jpeg(root / "train" / wnid / name, seed, fmt="PNG" if name.endswith(".png") else "JPEG")
    (root / "train" / "n0001" / "notes.txt").write_text("not an image")
    write_jpeg(root / "train" / "n0002" / ".hidden" / "skip.JPEG", 99)
    for wnid in ("n0003", "n0001"):
        write_jpeg(root / "val" / wnid / f"val_{wnid}.JPEG", seed := seed + 1)
    write_jpeg(root / "val" / "n0003" / "sub" / "nested.JPEG", seed + 1)
    (root / "LOC_synset_mapping.txt").write_text("n0001 a\n")
    return root


def test_the_reader_sorts_classes_and_labels_by_train_folders(in1k: Path) -> None:
    check_layout(str(in1k))
    train = read_image_folder(str(in1k), "train")
    assert train.classes == ["n0001", "n0002", "n0003"]
    relative = [(train.relative_path(s), s.label) for s in train.samples]
    assert relative == [
        ("train/n0001/x.JPEG", 0), ("train/n0001/y.png", 0), ("train/n0002/z.JPEG", 1),
        ("train/n0003/a.JPEG", 2), ("train/n0003/b.jpg", 2), ("train/n0003/c.Jpeg", 2),
    ]
    assert all(Path(s.path).is_file() for s in train.samples)

    val = read_image_folder(str(in1k), "val")  # a subset of train's classes: labels are still train's indices
    assert val.classes == train.classes
    assert [(val.relative_path(s), s.label) for s in val.samples] == [
        ("val/n0001/val_n0001.JPEG", 0), ("val/n0003/sub/nested.JPEG", 2), ("val/n0003/val_n0003.JPEG", 2)]
    own = read_image_folder(str(in1k), "val", classes_from=None)  # the split's own folders as the classes
    assert own.classes == ["n0001", "n0003"] and [s.label for s in own.samples] == [0, 1, 1]


def test_the_fingerprint_follows_the_set_not_the_mount_point(in1k: Path, tmp_path: Path) -> None:
    before = read_image_folder(str(in1k), "train").fingerprint()
    assert read_image_folder(str(in1k) + "/", "train").fingerprint() == before
    moved = tmp_path / "elsewhere"
    in1k.rename(moved)
    assert read_image_folder(str(moved), "train").fingerprint() == before
    write_jpeg(moved / "train" / "n0002" / "new.JPEG", 7)
    assert read_image_folder(str(moved), "train").fingerprint() != before


def _layout(root: Path, files: list[str]) -> str:
    for name in files:
        if name.endswith("/"):
            (root / name).mkdir(parents=True, exist_ok=True)
        elif name.endswith(".txt"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text("x")
        else:
            write_jpeg(root / name, len(name))
    return str(root)


@pytest.mark.parametrize("files, split, message", [
    (["val/n1/a.JPEG"], "train", r"in1k: no train/ folder \(expected train/<class>/\*\.JPEG\)"),
    (["train/"], "train", r"in1k/train: no class folders \(expected train/<class>/\*\.JPEG\)"),
    (["train/README.txt"], "train", r"in1k/train: no class folders"),
    (["train/a.JPEG", "train/b.JPEG", "train/n1/c.JPEG"], "train",
     r"in1k/train: 2 image file\(s\) directly under train/ \(e\.g\. a\.JPEG\); expected them in class folders"),
    (["val/x.JPEG"], "val", r"in1k/val: 1 image file\(s\) directly under val/.*flat: sort it into wnid folders"),
    (["train/n1/notes.txt", "train/n2/"], "train", r"in1k/train: no images \(\.jpeg \.jpg \.png\) in its 2 class folder"),
    (["train/n1/a.JPEG", "train/n2/"], "train", r"in1k/train: 1 class folder\(s\) without images .*e\.g\. n2/"),
])
def test_each_wrong_layout_is_refused_with_its_path_and_the_expected_layout(tmp_path, files, split, message) -> None:
    root = _layout(tmp_path / "in1k", files)
    with pytest.raises(LayoutError, match=message):
        check_layout(root, splits=(split,))
    with pytest.raises(LayoutError, match=message):
        read_image_folder(root, split, classes_from=None)


def test_a_split_with_classes_train_lacks_is_refused(tmp_path: Path) -> None:
    root = _layout(tmp_path / "in1k", ["train/n1/a.JPEG", "train/n2/b.JPEG", "val/n1/c.JPEG", "val/n9/d.JPEG"])
    message = r"in1k/val: 1 class folder\(s\) not in train/: n9; val/ must hold the same classes as train/ or a subset"
    with pytest.raises(LayoutError, match=message):
        check_layout(root)
    with pytest.raises(LayoutError, match=message):
        read_image_folder(root, "val")
    with pytest.raises(LayoutError, match=r"in1k: no train/ folder, which gives the class index of val/"):
        read_image_folder(_layout(tmp_path / "other" / "in1k", ["val/n1/a.JPEG"]), "val")


def test_unreadable_images_are_reported_with_a_reason_and_the_rest_load(in1k: Path, monkeypatch) -> None:
    truncate(in1k / "train" / "n0003" / "a.JPEG")
    (in1k / "train" / "n0003" / "b.jpg").write_bytes(b"this is not a JPEG at all")
    image_set = read_image_folder(str(in1k), "train")
    dataset = ImageFolderDataset(image_set, ImageTransform(resize=32, crop=28))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # someone else's setting must not leak in
    items = [dataset[i] for i in range(len(dataset))]
    assert [i for i, _, _ in items] == list(range(6))
    errors = {i: error for i, image, error in items if image is None}
    assert sorted(errors) == [3, 4]
    assert "a.JPEG" in errors[3] and "truncated" in errors[3].lower()
    assert "b.jpg" in errors[4] and "UnidentifiedImageError" in errors[4]
    for i, image, error in items:
        if i not in errors:
            assert error is None and image.shape == (3, 28, 28) and image.dtype == torch.float32

    batch = collate(items)
    assert batch.indices.tolist() == [0, 1, 2, 5]
    assert batch.images.shape == (4, 3, 28, 28)
    assert [i for i, _ in batch.errors] == [3, 4]
    empty = collate([items[3], items[4]])
    assert empty.images is None and empty.indices.numel() == 0 and len(empty.errors) == 2

    (in1k / "train" / "n0002" / "z.JPEG").unlink()  # gone after the listing: reported too
    assert "FileNotFoundError" in dataset[2][2]


def _jpeg_bytes(size: tuple[int, int], seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 16 + 2, size[0] // 16 + 2, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("antialias", [True, False])
def test_draft_decoding_is_never_below_the_resize_target(monkeypatch, antialias: bool) -> None:
    decoded = []
    original = ImageTransform._resized

    def spy(self, image, target, box):
        decoded.append((image.size, target, box))
        return original(self, image, target, box)

    monkeypatch.setattr(ImageTransform, "_resized", spy)
    rng = np.random.default_rng(1)
    sizes = [(1000, 750), (750, 1000), (513, 257), (511, 255), (2049, 1025), (257, 256), (40, 30)]
    sizes += [tuple(int(v) for v in rng.integers(60, 1100, 2)) for _ in range(10)]
    reduced = 0
    for resize in (32, 64, 256):
        drafted = ImageTransform(resize=resize, crop=resize - resize // 8, antialias=antialias)
        full = ImageTransform(resize=resize, crop=resize - resize // 8, antialias=antialias, decoder_draft=False)
        for size in sizes:
            data = _jpeg_bytes(size)
            decoded.clear()
            out = drafted.decode(data)
            (decoded_size, target, box), = decoded
            assert target == full.target_size(*size)  # the geometry of a full decode
            if decoded_size != size:  # reduced: never below the target (an image smaller than it is decoded whole)
                assert decoded_size[0] >= target[0] and decoded_size[1] >= target[1], (size, resize, decoded_size)
            if box is not None:
                reduced += decoded_size != size
            reference = full.decode(data)
            assert out.shape == reference.shape
            # The same picture, resampled from a smaller decode (libjpeg's DCT scaling averages pixels, so
            # against a non-antialiased full-size resize the difference is larger).
            assert (out - reference).abs().mean() < (0.1 if antialias else 0.25)
    assert reduced > 20  # the draft did reduce the decode where it could


def test_transform_keys_are_stable_and_name_the_resize_policy() -> None:
    assert ImageTransform().key() == "resize256-crop224-bilinear-antialias-draft"
    assert ImageTransform().key() == ImageTransform(256, 224, "bilinear", True, True).key()
    assert ImageTransform(resize=0, crop=224, interpolation="bicubic", antialias=False, decoder_draft=False).key() == \
        "noresize-crop224-bicubic-noantialias-nodraft"
    variants = [ImageTransform(), ImageTransform(resize=0), ImageTransform(interpolation="bicubic"),
                ImageTransform(antialias=False), ImageTransform(decoder_draft=False), ImageTransform(crop=192)]
    assert len({t.key() for t in variants}) == len(variants)
    with pytest.raises(ValueError, match="interpolation"):
        ImageTransform(interpolation="nearest")


def test_sizes_follow_torchvision_and_crop_only_keeps_the_pixels() -> None:
    assert ImageTransform().target_size(500, 375) == (341, 256)
    assert ImageTransform().target_size(375, 500) == (256, 341)
    assert ImageTransform(resize=0).target_size(500, 375) is None

    rgb = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    out = ImageTransform(resize=0, crop=24).apply(Image.fromarray(rgb))
    expected = torch.from_numpy(rgb[3:27, 8:32].copy()).permute(2, 0, 1).float() / 255
    expected = (expected - MEAN[:, None, None]) / STD[:, None, None]
    assert torch.allclose(out, expected, atol=1e-6)
    padded = ImageTransform(resize=0, crop=36).apply(Image.fromarray(rgb))  # smaller than the crop: zero padded
    assert padded.shape == (3, 36, 36)
    assert torch.allclose(padded[:, 0, 0], (0 - MEAN) / STD)


def test_samples_are_plain_values() -> None:
    sample = ImageSample("/data/train/n1/a.JPEG", 3)
    assert sample == ImageSample("/data/train/n1/a.JPEG", 3) and hash(sample) == hash(ImageSample(sample.path, 3))


def test_a_remote_root_through_fsspec(in1k: Path) -> None:
    """The remote code path (fsspec listing and reading) on fsspec's in-memory store, as for s3://."""
    import uuid

    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"memory://in1k-{uuid.uuid4().hex[:8]}"
    try:
        for path in sorted(p for p in in1k.rglob("*") if p.is_file()):
            fs.pipe_file(f"{root}/{path.relative_to(in1k).as_posix()}", path.read_bytes())
        check_layout(root)
        local, remote = read_image_folder(str(in1k), "val"), read_image_folder(root, "val")
        assert remote.classes == local.classes == ["n0001", "n0002", "n0003"]
        assert [(remote.relative_path(s), s.label) for s in remote.samples] == \
            [(local.relative_path(s), s.label) for s in local.samples]
        assert remote.samples[0].path == f"{root}/val/n0001/val_n0001.JPEG"
        assert remote.fingerprint() == local.fingerprint()
        transform = ImageTransform(resize=32, crop=28)
        remote_set, local_set = ImageFolderDataset(remote, transform), ImageFolderDataset(local, transform)
        assert all(torch.equal(remote_set[i][1], local_set[i][1]) for i in range(len(local_set)))

        fs.pipe_file(f"{root}/val/stray.JPEG", b"x")
        with pytest.raises(LayoutError, match=rf"{root}/val: 1 image file\(s\) directly under val/"):
            check_layout(root)
        with pytest.raises(LayoutError, match=rf"{root}: no test/ folder"):
            check_layout(root, splits=("test",))
    finally:
        fs.rm(root.removeprefix("memory:/"), recursive=True)
