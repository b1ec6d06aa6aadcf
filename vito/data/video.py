"""Video decoding with PyAV: probe, and fetch the frames shown at given times by seeking.

Times are seconds from the first frame of the clip. The frame "at" time t is the last frame whose
presentation time is <= t (what a player shows); times before 0 give the first frame, past the end the last.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from fractions import Fraction

import av
import numpy as np

# Between two requested times closer than this, decoding forward beats a seek (which restarts at a
# keyframe that is usually behind us anyway).
_DECODE_FORWARD_MAX_S = 0.5


def _open_container(uri: str) -> av.container.InputContainer:
    """The single place a uri becomes a container (remote storage plugs in here, e.g. via fsspec.open)."""
    return av.open(str(uri), mode="r")


def probe_video(uri: str) -> tuple[float, float, int]:
    """(duration_s, fps, num_frames) of the first video stream."""
    with _open_container(uri) as container:
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


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def decode_all_frames(uri: str) -> np.ndarray:
    """Every frame as uint8 (T, H, W, 3), decoded sequentially (slow reference path)."""
    with _open_container(uri) as container:
        stream = container.streams.video[0]
        frames = [_to_rgb(frame) for frame in container.decode(stream)]
    return np.stack(frames)


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
        # The epsilon absorbs float error so that t = k / fps lands on frame k, not k - 1.
        return self.start_pts + math.floor(time_s / self.time_base + 1e-3)

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


def decode_frames_at(uri: str, timestamps_s: Sequence[float]) -> list[np.ndarray]:
    """The RGB uint8 (H, W, 3) frame shown at each time, in the caller's order, via seeks."""
    if len(timestamps_s) == 0:
        return []
    order = sorted(range(len(timestamps_s)), key=lambda k: timestamps_s[k])
    results: list[np.ndarray | None] = [None] * len(timestamps_s)
    with _open_container(uri) as container:
        reader = _SeekingReader(container)
        last_pts, last_rgb = None, None
        for k in order:
            frame = reader.frame_at(max(float(timestamps_s[k]), 0.0))
            if frame.pts != last_pts:
                last_pts, last_rgb = frame.pts, _to_rgb(frame)
                results[k] = last_rgb
            else:  # equal times (a same-frame pair) convert once; copy so callers never share a buffer
                results[k] = last_rgb.copy()
    return results  # type: ignore[return-value]
