"""Video data pipeline: manifests, synthetic clips, seek-based decoding, augmentations, frame pairs.

Names load on first use, so a process that needs only manifests or re-encoding (`data prepare`'s workers)
never imports torch.
"""

from importlib import import_module

_WHERE = {
    "CLASS_NAMES": "synthetic",
    "FramePairDataset": "pairs",
    "PairSampler": "pairs",
    "VideoRecord": "manifest",
    "augment_view": "augment",
    "build_pair_loader": "pairs",
    "decode_all_frames": "video",
    "decode_frames_at": "video",
    "ensure_synthetic_videos": "synthetic",
    "eval_view": "augment",
    "normalize": "augment",
    "probe_video": "video",
    "read_manifest": "manifest",
    "render_clip": "synthetic",
    "write_manifest": "manifest",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'vito.data' has no attribute {name!r}")
    return getattr(import_module(f"vito.data.{_WHERE[name]}"), name)
