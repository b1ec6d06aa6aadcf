"""Video decoding with PyAV: probe, and fetch the frames shown at given times by seeking.

Times are seconds from the first frame of the clip. The frame "at" time t is the last frame whose
presentation time is <= t (what a player shows); times before 0 give the first frame, past the end the last.

Long videos are always read by seeking. A small clip can instead be decoded whole, once, into a per-process
`ClipCache` (a bounded LRU keyed by uri); the cached path returns exactly the frames the seeking path would.

A uri is a local path or any fsspec URL (`s3://bucket/key.mp4`, `gs://...`, `https://...`): remote files are
read through a buffered fsspec file object, so a seek fetches only the blocks it needs, never the whole
video. Credentials and endpoints come from the standard environment (AWS_ENDPOINT_URL_S3, profiles, ...).
"""

from __future__ import annotations

import math
import os
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

# Between two requested times closer than this, decoding forward beats a seek (which restarts at a
# keyframe that is usually behind us anyway).
_DECODE_FORWARD_MAX_S = 0.5
# At or below this many pixels (1080p) a frame is decoded on one thread: FFmpeg's threaded decoding costs
# more to start and stop (per opened container) than it saves on a seek and a few frames, and loader workers
# are the parallelism. Measured on prepared 456x256 clips: 1.4-2.2x the pairs/s of threaded decoding.
_SINGLE_THREAD_MAX_PIXELS = 1920 * 1088
# Clip cache defaults (per process, so per loader worker): total bytes, and the largest clip admitted.
CLIP_CACHE_BYTES = 256 * 2**20
CLIP_CACHE_MAX_FRAMES = 512
CLIP_CACHE_MAX_CLIP_BYTES = 32 * 2**20
# Below this share of its working set held, a cache turns itself off: sampling is uniform, so the hit rate
# is the share held, and a few hits do not repay whole-clip decodes and the memory of every loader worker.
CLIP_CACHE_MIN_RESIDENT_FRACTION = 0.25


# Remote reads: blocks this size, read ahead sequentially (a seek then costs one ranged GET, not the file).
REMOTE_BLOCK_BYTES = 4 * 2**20


def is_remote(uri: str) -> bool:
    """True for fsspec URLs other than local files (s3://, gs://, https://, ...)."""
    scheme, sep, _ = str(uri).partition("://")
    return bool(sep) and scheme not in ("file", "local")


def _local_path(uri: str) -> str:
    text = str(uri)
    for prefix in ("file://", "local://"):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


@contextmanager
def open_container(uri: str, storage_options: dict[str, Any] | None = None) -> Iterator[av.container.InputContainer]:
    """The single place a uri becomes a container: a local path directly, a remote URL through fsspec."""
    if not is_remote(uri):
        with av.open(_local_path(uri), mode="r") as container:
            yield container
        return
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(uri), **(storage_options or {}))
    with fs.open(path, "rb", block_size=REMOTE_BLOCK_BYTES, cache_type="readahead") as handle:
        with av.open(handle, mode="r") as container:
            yield container


def probe_video(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[float, float, int]:
    """(duration_s, fps, num_frames) of the first video stream."""
    with open_container(uri, storage_options) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        num_frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        if stream.duration is not None and stream.time_base is not None:
            duration_s = float(stream.duration * stream.time_base)
        elif fps > 0:
            duration_s = num_frames / fps
        else:
            duration_s = (container.duration or 0) / av.time_base
    return duration_s, fps, num_frames


def _configure_decoder(stream: av.video.stream.VideoStream) -> None:
    """Call before the first decode: small frames decode single-threaded (same pixels, less start-up)."""
    codec = stream.codec_context
    if 0 < codec.width * codec.height <= _SINGLE_THREAD_MAX_PIXELS:
        codec.thread_type = "NONE"
        codec.thread_count = 1


_REFORMATTER: tuple[int, VideoReformatter] | None = None


def _reformatter() -> VideoReformatter:
    # frame.to_ndarray(format=...) builds a fresh swscale context (with a thread pool: threads=0 means
    # auto) for every frame, ~0.5 ms each at any size. One single-threaded context per process, reused
    # for every frame, gives the same pixels for ~20 us. Keyed by pid so a forked worker makes its own.
    global _REFORMATTER
    if _REFORMATTER is None or _REFORMATTER[0] != os.getpid():
        _REFORMATTER = (os.getpid(), VideoReformatter())
    return _REFORMATTER[1]


_REFORMAT_THREADS: dict[str, int] | None = {"threads": 1}  # PyAV < 17 has no threads argument (nor pool)


def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    global _REFORMAT_THREADS
    if _REFORMAT_THREADS is not None:
        try:
            return _reformatter().reformat(frame, format="rgb24", **_REFORMAT_THREADS).to_ndarray()
        except TypeError:
            _REFORMAT_THREADS = None
    return _reformatter().reformat(frame, format="rgb24").to_ndarray()


def decode_all_frames(uri: str, storage_options: dict[str, Any] | None = None) -> np.ndarray:
    """Every frame as uint8 (T, H, W, 3), decoded sequentially (slow reference path)."""
    with open_container(uri, storage_options) as container:
        stream = container.streams.video[0]
        _configure_decoder(stream)
        frames = [to_rgb(frame) for frame in container.decode(stream)]
    return np.stack(frames)


def _time_to_pts(time_s: float, start_pts: int, time_base: Fraction) -> int:
    # The epsilon absorbs float error so that t = k / fps lands on frame k, not k - 1.
    return start_pts + math.floor(time_s / time_base + 1e-3)


@dataclass(frozen=True)
class DecodedClip:
    """Every frame of a clip, RGB uint8 (T, H, W, 3) in presentation order, with their pts."""

    frames: np.ndarray
    pts: tuple[int, ...]
    start_pts: int
    time_base: Fraction

    @property
    def nbytes(self) -> int:
        return self.frames.nbytes

    def index_at(self, time_s: float) -> int:
        """Index of the frame shown at time_s (>= 0): the last with pts <= target, clamped to the first."""
        target = _time_to_pts(time_s, self.start_pts, self.time_base)
        return max(bisect_right(self.pts, target) - 1, 0)


class ClipCache:
    """Per-process LRU of small clips decoded whole, keyed by uri and bounded in bytes.

    `decode_frames_at` admits a clip when the stream says it has at most `max_clip_frames` frames, they take
    at most `max_clip_bytes` as RGB, and they fit in the space still free; anything else (a real long video)
    is read by seeking every time. Admission never evicts: a whole-clip decode costs a few seeks, so once a
    working set outgrows the budget, clips beyond it are cheaper to keep seeking than to churn through the
    cache (sampling is uniform, so an LRU would hit no more often). `put` evicts least recently used clips.

    Told the frame counts of the clips it will be offered (`expect`), the cache turns itself off at the first
    admission check (when it learns the frame size) if it could hold under CLIP_CACHE_MIN_RESIDENT_FRACTION
    of them: a manifest far larger than the cache is read by seeking, and no memory is spent on it.

    Each loader worker has its own copy: pickling (spawned workers) drops the contents. Not synchronised:
    use one per thread. A uri is assumed to name immutable content (the synthetic dataset directories are
    content-addressed); call `clear()` after rewriting a file in place.
    """

    def __init__(
        self,
        max_bytes: int = CLIP_CACHE_BYTES,
        max_clip_frames: int = CLIP_CACHE_MAX_FRAMES,
        max_clip_bytes: int = CLIP_CACHE_MAX_CLIP_BYTES,
    ) -> None:
        if max_bytes < 0 or max_clip_frames < 0 or max_clip_bytes < 0:
            raise ValueError("clip cache limits must be >= 0")
        self.max_bytes = max_bytes
        self.max_clip_frames = max_clip_frames
        self.max_clip_bytes = min(max_clip_bytes, max_bytes)
        self._clips: OrderedDict[str, DecodedClip] = OrderedDict()
        self._nbytes = 0
        self.hits = 0
        self.misses = 0
        self.expected_frames = 0  # frames of the cacheable clips it will be offered (0: unknown)
        self.disabled = False
        self._sized = False

    def expect(self, clip_frames: Sequence[int]) -> None:
        """The frame counts of the clips this cache will be offered (a manifest's), to size itself against."""
        self.expected_frames = sum(n for n in clip_frames if 0 < n <= self.max_clip_frames)
        self._sized = False

    def _too_small(self, height: int, width: int) -> bool:
        if self._sized or not self.expected_frames:
            return False
        self._sized = True
        working_set = self.expected_frames * height * width * 3
        if self.max_bytes < CLIP_CACHE_MIN_RESIDENT_FRACTION * working_set:
            self.disabled = True
            self.clear()
        return self.disabled

    def __len__(self) -> int:
        return len(self._clips)

    def __contains__(self, uri: str) -> bool:
        return uri in self._clips

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def admits(self, num_frames: int, height: int, width: int) -> bool:
        """Whether a clip of this size is small enough and fits in the free space (no eviction)."""
        if self.disabled or self._too_small(height, width):
            return False
        nbytes = num_frames * height * width * 3
        return (
            0 < num_frames <= self.max_clip_frames
            and nbytes <= self.max_clip_bytes
            and self._nbytes + nbytes <= self.max_bytes
        )

    def get(self, uri: str) -> DecodedClip | None:
        clip = self._clips.get(uri)
        if clip is None:
            self.misses += 1
            return None
        self._clips.move_to_end(uri)
        self.hits += 1
        return clip

    def put(self, uri: str, clip: DecodedClip) -> None:
        """Store a clip (unless over the per-clip limit), evicting least recently used ones to fit."""
        if clip.nbytes > self.max_clip_bytes:
            return
        old = self._clips.pop(uri, None)
        if old is not None:
            self._nbytes -= old.nbytes
        self._clips[uri] = clip
        self._nbytes += clip.nbytes
        while self._nbytes > self.max_bytes:
            _, evicted = self._clips.popitem(last=False)
            self._nbytes -= evicted.nbytes

    def clear(self) -> None:
        self._clips.clear()
        self._nbytes = 0

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_clips=OrderedDict(), _nbytes=0, hits=0, misses=0)
        return state


def _estimated_frames(stream: av.video.stream.VideoStream) -> int:
    """The stream's frame count from container metadata (no decoding); 0 when it does not say."""
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if stream.duration is not None and stream.time_base is not None and rate:
        return math.ceil(float(stream.duration * stream.time_base * rate))
    return 0


def _decode_clip(container: av.container.InputContainer, max_frames: int) -> DecodedClip | None:
    """Decode every frame from the start; None (fall back to seeking) if pts are missing or disordered,
    or if the clip turns out longer than max_frames despite its metadata."""
    stream = container.streams.video[0]
    frames, pts = [], []
    for frame in container.decode(stream):
        if frame.pts is None or (pts and frame.pts <= pts[-1]) or len(frames) == max_frames:
            return None
        frames.append(to_rgb(frame))
        pts.append(frame.pts)
    if not frames:
        return None
    array = np.stack(frames)
    array.flags.writeable = False  # shared by every later caller: hand out copies only
    return DecodedClip(array, tuple(pts), stream.start_time or 0, stream.time_base)


class _SeekingReader:
    """Walks a stream forward in presentation order, re-seeking when a target is far ahead or behind."""

    def __init__(self, container: av.container.InputContainer) -> None:
        self.container = container
        self.stream = container.streams.video[0]
        self.time_base: Fraction = self.stream.time_base
        self.start_pts = self.stream.start_time or 0
        self.current: av.VideoFrame | None = None  # last frame at or before the previous target
        self.ahead: av.VideoFrame | None = None  # first frame after it (None: not decoded yet, or EOF)
        self.exhausted = False
        self.frames: Iterator[av.VideoFrame] = iter(())

    def _to_pts(self, time_s: float) -> int:
        return _time_to_pts(time_s, self.start_pts, self.time_base)

    def _seek(self, pts: int) -> None:
        # backward=True: land on the keyframe at or before pts; PyAV flushes the decoder on seek.
        self.container.seek(max(pts, self.start_pts), backward=True, any_frame=False, stream=self.stream)
        self.frames = self.container.decode(self.stream)
        self.current, self.ahead, self.exhausted = None, None, False

    def _next(self) -> av.VideoFrame | None:
        for frame in self.frames:
            return frame
        self.exhausted = True
        return None

    def _advance_to(self, target: int) -> bool:
        """Decode until `ahead` passes target. False if the seek landed after the target."""
        while not self.exhausted:
            frame = self.ahead if self.ahead is not None else self._next()
            if frame is None:
                break
            if frame.pts > target:
                self.ahead = frame
                return self.current is not None
            self.current, self.ahead = frame, None
        return self.current is not None

    def frame_at(self, time_s: float) -> av.VideoFrame:
        target = self._to_pts(time_s)
        if self.current is not None and self.current.pts <= target:
            if self.ahead is not None and self.ahead.pts > target:
                return self.current  # the frame in hand still covers this time
            frontier = self.ahead if self.ahead is not None else self.current
            gap_s = float((target - frontier.pts) * self.time_base)
            if (self.exhausted or gap_s <= _DECODE_FORWARD_MAX_S) and self._advance_to(target):
                return self.current
        # A seek can land on a keyframe shown after the target (demuxers index by decode time, and
        # B-frames make that differ from display time): step further back until it lands before.
        seek_pts, step = target, max(int(1 / self.time_base), 1)
        while True:
            self._seek(seek_pts)
            if self._advance_to(target):
                return self.current
            if seek_pts <= self.start_pts:
                if self.ahead is None:
                    raise ValueError("video stream has no decodable frames")
                self.current, self.ahead = self.ahead, None  # target before the first frame: clamp
                return self.current
            seek_pts, step = max(target - step, self.start_pts), 2 * step


def _frames_from_clip(clip: DecodedClip, timestamps_s: Sequence[float]) -> list[np.ndarray]:
    return [clip.frames[clip.index_at(max(float(t), 0.0))].copy() for t in timestamps_s]


def decode_frames_at(uri: str, timestamps_s: Sequence[float], cache: ClipCache | None = None) -> list[np.ndarray]:
    """The RGB uint8 (H, W, 3) frame shown at each time, in the caller's order, via seeks.

    With a cache, a clip small enough for it is decoded whole on first use and later calls are served
    from memory; the frames are the same either way, and every returned array is the caller's own.
    """
    if len(timestamps_s) == 0:
        return []
    if cache is not None:
        clip = cache.get(uri)
        if clip is not None:
            return _frames_from_clip(clip, timestamps_s)
    order = sorted(range(len(timestamps_s)), key=lambda k: timestamps_s[k])
    results: list[np.ndarray | None] = [None] * len(timestamps_s)
    with open_container(uri) as container:
        stream = container.streams.video[0]
        _configure_decoder(stream)
        codec = stream.codec_context
        if cache is not None and cache.admits(_estimated_frames(stream), codec.height, codec.width):
            clip = _decode_clip(container, cache.max_clip_frames)
            if clip is not None:
                cache.put(uri, clip)
                return _frames_from_clip(clip, timestamps_s)
        reader = _SeekingReader(container)
        last_pts, last_rgb = None, None
        for k in order:
            frame = reader.frame_at(max(float(timestamps_s[k]), 0.0))
            if frame.pts != last_pts:
                last_pts, last_rgb = frame.pts, to_rgb(frame)
                results[k] = last_rgb
            else:  # equal times (a same-frame pair) convert once; copy so callers never share a buffer
                results[k] = last_rgb.copy()
    return results  # type: ignore[return-value]
