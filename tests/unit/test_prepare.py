"""`data prepare`: real re-encodes of generated clips, resume after a partial run, failures with reasons."""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from vito.data.manifest import VideoRecord, read_manifest, write_manifest
from vito.data.prepare import PrepareOptions, output_size, prepare_manifest, relative_output
from vito.data.video import decode_all_frames, decode_frames_at, probe_video

OPTIONS = PrepareOptions(short_side=48, keyframe_interval_s=0.5, preset="ultrafast")


def write_clip(
    path: Path, width: int = 160, height: int = 96, fps: int = 10, seconds: float = 4.0, seed: int = 0
) -> VideoRecord:
    """A smooth moving gradient with a 2 s keyframe interval, like camera footage before prepare."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 6.28, 3)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 2 * fps
        stream.options = {"crf": "12", "keyint_min": str(2 * fps), "sc_threshold": "0"}
        for i in range(int(fps * seconds)):
            channels = [127 + 120 * np.sin(xs / 23 + ys / 31 + 0.3 * i + p) for p in phase]
            frame = np.stack(channels, -1).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    duration, rate, frames = probe_video(str(path))
    return VideoRecord(str(path), duration, rate, frames, label=seed % 2)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    records = [write_clip(folder / f"clip{i}.mp4", seed=i) for i in range(3)]
    write_manifest(folder / "manifest.jsonl", records)
    return folder / "manifest.jsonl"


def keyframe_times(path: str) -> list[float]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        return [float(p.pts * stream.time_base) for p in container.demux(stream) if p.is_keyframe and p.pts is not None]


def test_output_size_scales_short_side_never_up_and_keeps_even() -> None:
    assert output_size(1280, 720, 256) == (456, 256)
    assert output_size(720, 1280, 256) == (256, 456)
    assert output_size(160, 96, 256) == (160, 96)
    assert all(v % 2 == 0 for v in output_size(1001, 563, 255 + 1))


def test_prepare_reencodes_to_short_side_and_keyframe_interval(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = prepare_manifest(str(source), str(out), OPTIONS, workers=1)
    assert (report.videos, report.prepared, report.resumed, report.failed) == (3, 3, 0, [])
    prepared = read_manifest(out / "manifest.jsonl")
    originals = read_manifest(source)
    assert [r.label for r in prepared] == [r.label for r in originals]
    for before, after in zip(originals, prepared):
        assert after.uri.startswith(str(out / "videos"))
        assert (after.duration_s, after.fps, after.num_frames) == (before.duration_s, before.fps, before.num_frames)
        with av.open(after.uri) as container:
            codec = container.streams.video[0].codec_context
            assert (codec.width, codec.height) == (80, 48)
        # A keyframe every 0.5 s (was 2 s): a seek decodes at most 5 frames.
        assert keyframe_times(after.uri) == pytest.approx([0.5 * k for k in range(8)])
        # Same frames at the same times, downscaled: compare against the source frame at 80x48.
        times = [0.0, 1.35, 3.9]
        for t, small, big in zip(times, decode_frames_at(after.uri, times), decode_frames_at(before.uri, times)):
            source_frame = av.VideoFrame.from_ndarray(big, format="rgb24")
            reference = source_frame.reformat(80, 48, interpolation="AREA").to_ndarray()
            assert np.abs(small.astype(int) - reference.astype(int)).mean() < 6, f"frame at {t}s differs"
    assert report.bytes_before == sum(os.path.getsize(r.uri) for r in originals)
    assert report.bytes_after == sum(os.path.getsize(r.uri) for r in prepared)
    assert report.hours == pytest.approx(3 * 4.0 / 3600, abs=1e-4)
    assert json.loads((out / "prepare-report.json").read_text())["prepared"] == 3


def test_killed_run_resumes_without_redoing_finished_videos(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    records = read_manifest(source)
    # A first run that got through one video, and was killed while uploading the second (file, no marker).
    write_manifest(tmp_path / "first.jsonl", records[:1])
    prepare_manifest(str(tmp_path / "first.jsonl"), str(out), OPTIONS, workers=1)
    finished = out / relative_output(records[0].uri)
    finished_stat = finished.stat()
    cut_short = out / relative_output(records[1].uri)
    cut_short.parent.mkdir(parents=True, exist_ok=True)
    cut_short.write_bytes(b"half an upload")

    report = prepare_manifest(str(source), str(out), OPTIONS, workers=2)
    assert (report.resumed, report.prepared, report.failed) == (1, 2, [])
    assert finished.stat().st_mtime_ns == finished_stat.st_mtime_ns and finished.stat().st_ino == finished_stat.st_ino
    assert probe_video(str(cut_short))[2] == records[1].num_frames  # redone: its marker was missing
    assert len(read_manifest(out / "manifest.jsonl")) == 3
    again = prepare_manifest(str(source), str(out), OPTIONS, workers=1)
    assert (again.resumed, again.prepared) == (3, 0)
    assert again.bytes_after == report.bytes_after  # the report covers every video, also resumed ones


def test_failures_are_named_with_their_reason_and_retried_on_rerun(source: Path, tmp_path: Path) -> None:
    records = read_manifest(source)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    missing = str(tmp_path / "missing.mp4")
    write_manifest(tmp_path / "mixed.jsonl", [records[0], VideoRecord(str(corrupt), 1, 10, 10),
                                              VideoRecord(missing, 1, 10, 10)])
    out = tmp_path / "out"
    report = prepare_manifest(str(tmp_path / "mixed.jsonl"), str(out), OPTIONS, workers=1)
    assert report.prepared == 1
    reasons = {item["uri"]: item["reason"] for item in report.failed}
    assert set(reasons) == {str(corrupt), missing}
    assert "FileNotFoundError" in reasons[missing] or "No such file" in reasons[missing]
    assert reasons[str(corrupt)]  # PyAV's own words for the broken file
    assert [r.uri for r in read_manifest(out / "manifest.jsonl")] == [str(out / relative_output(records[0].uri))]
    assert "failed" in report.summary() and str(corrupt) in report.summary()
    # Fixed in place, the file is retried (failures leave no marker).
    write_clip(corrupt, seed=5)
    rerun = prepare_manifest(str(tmp_path / "mixed.jsonl"), str(out), OPTIONS, workers=1)
    assert (rerun.resumed, rerun.prepared, [f["uri"] for f in rerun.failed]) == (1, 1, [missing])


def test_other_options_into_the_same_output_are_refused(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_manifest(tmp_path / "one.jsonl", read_manifest(source)[:1])
    prepare_manifest(str(tmp_path / "one.jsonl"), str(out), OPTIONS, workers=1)
    with pytest.raises(ValueError, match=r"prepare.json.*short_side: 48 there, 64 now"):
        prepare_manifest(str(tmp_path / "one.jsonl"), str(out), PrepareOptions(64, 0.5, preset="ultrafast"))


def test_cli_prepares_and_reports(source: Path, tmp_path: Path) -> None:
    from vitolaunch.cli import main

    out = tmp_path / "out"
    args = ["data", "prepare", str(source), str(out), "--short-side", "48", "--preset", "ultrafast", "--workers", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "3/3 videos prepared" in result.output and "0 failed" in result.output
    assert f"report: {out}/prepare-report.json" in result.output
    prepared = read_manifest(out / "manifest.jsonl")
    assert decode_all_frames(prepared[0].uri).shape == (40, 48, 80, 3)
    bad = CliRunner().invoke(main, ["data", "prepare", str(source), str(tmp_path / "o2"), "--short-side", "47"])
    assert bad.exit_code != 0 and "short side must be an even number" in bad.output


def test_array_shards_split_the_videos_and_a_final_run_writes_the_manifest(source: Path, tmp_path: Path) -> None:
    import pickle

    from vito.data.prepare import PrepareShard, check_before_submit

    out = tmp_path / "out"
    assert check_before_submit(str(source), str(out), OPTIONS) == 3
    shards = [pickle.loads(pickle.dumps(PrepareShard(str(source), str(out), OPTIONS, k, 2))) for k in range(2)]
    results = [shard() for shard in shards]
    assert [r["videos"] for r in results] == [2, 1] and all(r["failed"] == [] for r in results)
    assert not (out / "manifest.jsonl").exists()
    assert sorted(p.name for p in (out / "reports").iterdir()) == ["task-0.json", "task-1.json"]
    final = prepare_manifest(str(source), str(out), OPTIONS, workers=1)
    assert (final.resumed, final.prepared) == (3, 0) and len(read_manifest(out / "manifest.jsonl")) == 3
    with pytest.raises(ValueError, match="prepare.json"):
        check_before_submit(str(source), str(out), PrepareOptions(64))


@pytest.mark.timeout(120)
def test_a_killed_process_resumes_where_it_stopped(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "src"
    folder.mkdir()
    records = [write_clip(folder / f"big{i}.mp4", width=640, height=360, seconds=3, seed=i) for i in range(4)]
    write_manifest(folder / "manifest.jsonl", records)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "vitolaunch.cli", "data", "prepare", str(folder / "manifest.jsonl"), str(out),
            "--short-side", "48", "--preset", "ultrafast", "--workers", "1"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not ((out / "done").is_dir() and any((out / "done").iterdir())):
        assert process.poll() is None, "prepare ended without preparing anything"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.name: p.stat().st_ino for p in (out / "videos").rglob("*.mp4")
                if (out / "done" / f"{p.stem.rsplit('-', 1)[1]}.json").exists()}
    report = prepare_manifest(str(folder / "manifest.jsonl"), str(out), OPTIONS, workers=1)
    assert report.resumed >= 1 and report.resumed + report.prepared == 4 and report.failed == []
    assert report.resumed == len(finished)
    after = {p.name: p.stat().st_ino for p in (out / "videos").rglob("*.mp4")}
    assert all(after[name] == inode for name, inode in finished.items()), "a finished video was redone"
    assert not (out / ".partial").exists()
    assert len(read_manifest(out / "manifest.jsonl")) == 4


def test_prepare_workers_never_import_torch() -> None:
    import subprocess
    import sys

    # Spawned encoding processes import this module; torch would cost each ~1 s and hundreds of MB.
    code = "import sys, vito.data.prepare, vito.data; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
