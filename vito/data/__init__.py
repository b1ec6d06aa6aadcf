"""Video data pipeline: manifests, synthetic clips, seek-based decoding, augmentations, frame pairs."""

from vito.data.augment import augment_view, eval_view, normalize
from vito.data.manifest import VideoRecord, read_manifest, write_manifest
from vito.data.pairs import FramePairDataset, PairSampler, build_pair_loader
from vito.data.synthetic import CLASS_NAMES, ensure_synthetic_videos, render_clip
from vito.data.video import decode_all_frames, decode_frames_at, probe_video

__all__ = [
    "CLASS_NAMES",
    "FramePairDataset",
    "PairSampler",
    "VideoRecord",
    "augment_view",
    "build_pair_loader",
    "decode_all_frames",
    "decode_frames_at",
    "ensure_synthetic_videos",
    "eval_view",
    "normalize",
    "probe_video",
    "read_manifest",
    "render_clip",
    "write_manifest",
]
