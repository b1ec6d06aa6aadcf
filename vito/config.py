"""The VITO training recipe as data.

One pydantic model per concern (data, model, loss, EMA, optimizer, training, checkpoint, evaluation),
grouped in `VitoConfig`. Unknown keys are rejected so a typo in a sweep never silently trains the default.
Every choice the paper does not state (see shared/notes/vito-method.md, tagged [inferred]) is a field here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_serializer, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(_Section):
    """Per-frame image augmentations (MoCLR/BYOL-style), applied independently to each view."""

    crop_scale_min: float = Field(0.3, gt=0, le=1)
    flip_p: float = Field(0.5, ge=0, le=1)
    color_jitter_p: float = Field(0.8, ge=0, le=1)
    color_jitter_strength: float = Field(0.4, ge=0)
    # Hue rotation of the colour jitter, up to +-hue turns (BYOL: 0.1). 0 draws nothing: streams stay as before.
    hue: float = Field(0.0, ge=0, le=0.5)
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur_p: float = Field(0.2, ge=0, le=1)
    solarize_p: float = Field(0.1, ge=0, le=1)


class SyntheticConfig(_Section):
    """Deterministic labelled clips of moving, deforming shapes (tests, quickstart, CPU evidence)."""

    num_videos: int = Field(48, ge=1)
    num_frames: int = Field(24, ge=2)
    fps: int = Field(8, ge=1)
    size: int = Field(64, ge=16)
    num_classes: int = Field(4, ge=2, le=8)
    # 0: one texture per clip (panning slowly); 1: an unrelated texture every frame. What stays the same
    # across a clip's frames is then only the object, which is what temporal pairs should teach.
    background_change: float = Field(0.0, ge=0, le=1)
    object_colour_change: float = Field(0.0, ge=0, le=1)
    # 0: every clip its own background texture; N: textures from a pool of N shared across classes.
    background_pool: int = Field(0, ge=0)
    # Multiplies the object's size (radius 0.28-0.4 of the half-frame at 1).
    object_scale: float = Field(1.0, gt=0, le=2.5)
    # Chance that a clip also shows a small blob of its own colour on its own path (a distractor, and a
    # clip-identity cue that survives a changing background).
    distractor_p: float = Field(0.5, ge=0, le=1)
    seed: int = 0


_LOADER_KEYS_OMITTED_AT_DEFAULT = ("main_process_cpus", "prefetch_factor")


class DataConfig(_Section):
    # "synthetic" generates clips under the workspace; anything else is a manifest (JSONL) path.
    source: str = "synthetic"
    synthetic: SyntheticConfig = SyntheticConfig()
    pair_source: Literal["temporal", "same_frame"] = "temporal"
    max_gap_s: float = Field(2.5, ge=0)
    # The time between the two frames of a pair, |gap| in [min_gap_s, max_gap_s], its sign a coin flip:
    # uniform over the range; exponential (mean gap_scale_s above min_gap_s, truncated at max_gap_s: mostly
    # near frames); fixed (always max_gap_s). A second time that falls outside the clip is reflected to
    # the other side of the first, and clamped only if the clip is shorter than the gap.
    gap_distribution: Literal["uniform", "exponential", "fixed"] = "uniform"
    min_gap_s: float = Field(0.0, ge=0)
    gap_scale_s: float = Field(1.0, gt=0)
    crop_size: int = Field(48, ge=8)
    batch_size: int = Field(32, ge=2, description="global batch, split evenly over ranks")
    # Loader processes per rank; "auto": the rank's CPUs minus main_process_cpus (vito/data/loader_plan.py).
    num_workers: int | Literal["auto"] = 0
    main_process_cpus: int = Field(1, ge=1, description="CPUs a rank's training process keeps from its workers")
    prefetch_factor: int = Field(2, ge=1, description="batches each loader worker prepares ahead")
    augment: AugmentConfig = AugmentConfig()

    @field_validator("num_workers")
    @classmethod
    def _workers_not_negative(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("data.num_workers must be >= 0 or 'auto'")
        return value

    @model_serializer(mode="wrap")
    def _omit_loader_keys_at_default(self, handler: Any) -> dict[str, Any]:
        # Loader sizing does not change a single sample, so at their defaults these keys stay out of the
        # dump: configs (and trial keys, the hash of the dump) from before the keys existed are unchanged.
        dumped = handler(self)
        for key in _LOADER_KEYS_OMITTED_AT_DEFAULT:
            if key in dumped and dumped[key] == type(self).model_fields[key].default:
                del dumped[key]
        return dumped

    @model_validator(mode="after")
    def _gap_range(self) -> "DataConfig":
        if self.min_gap_s > self.max_gap_s:
            raise ValueError(f"data.min_gap_s ({self.min_gap_s}) must not exceed data.max_gap_s ({self.max_gap_s})")
        return self


_MODEL_KEYS_OMITTED_AT_DEFAULT = ("padding",)


class ModelConfig(_Section):
    arch: Literal["resnet18", "resnet50"] = "resnet18"
    width: int = Field(64, ge=4, description="channels of the stem; 64 is the standard ResNet")
    # "imagenet": 7x7/2 conv + max-pool, for 224 px. "small": 3x3/1 conv, no pool, for tiny CPU frames.
    stem: Literal["imagenet", "small"] = "imagenet"
    pooling: Literal["attention", "average"] = "attention"
    scales: list[Literal[4, 5]] = Field(default_factory=lambda: [4, 5])
    pool_hidden: int = Field(4096, ge=1)
    proj_hidden: int = Field(4096, ge=1)
    proj_dim: int = Field(256, ge=1)
    pred_hidden: int = Field(4096, ge=1)
    # Batch norm in the projector/predictor heads over the global batch: each rank's own statistics describe
    # only its shard, while the loss contrasts against every rank's keys. One small all-reduce per BN layer.
    sync_bn_heads: bool = False
    # Conv padding: "torch" (symmetric, k // 2) or "same" (TensorFlow's SAME at run time, right/bottom heavy
    # for odd totals), the max-pool PyTorch's either way; "same" is the layout of the released VITO weights.
    padding: Literal["torch", "same"] = "torch"

    @model_serializer(mode="wrap")
    def _omit_new_keys_at_default(self, handler: Any) -> dict[str, Any]:
        # As DataConfig's loader keys: configs, trial keys and feature-cache keys from before the key existed
        # are unchanged while it is at its default.
        dumped = handler(self)
        for key in _MODEL_KEYS_OMITTED_AT_DEFAULT:
            if key in dumped and dumped[key] == type(self).model_fields[key].default:
                del dumped[key]
        return dumped

    @model_validator(mode="after")
    def _scales_unique(self) -> "ModelConfig":
        if not self.scales or len(set(self.scales)) != len(self.scales):
            raise ValueError("model.scales must be a non-empty list of distinct stages among 4 and 5")
        return self


class LossConfig(_Section):
    temperature: float = Field(0.1, gt=0)
    symmetric: bool = True
    # Negatives from every rank's batch (as MoCLR); False keeps each rank's loss local.
    global_negatives: bool = True


class EMAConfig(_Section):
    base_momentum: float = Field(0.996, ge=0, le=1)
    final_momentum: float = Field(1.0, ge=0, le=1)
    schedule: Literal["cosine", "constant"] = "cosine"


class OptimConfig(_Section):
    name: Literal["lars", "adamw"] = "lars"
    lr: float = Field(0.3, gt=0, description="learning rate per 256 samples of global batch")
    weight_decay: float = Field(1e-6, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(10, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class TrainConfig(_Section):
    steps: int = Field(100, ge=1)
    seed: int = 0
    log_every: int = Field(5, ge=1)
    zero_stage: Literal[0, 1, 2] = 0
    # bf16: fp32 master weights (and fp32 EMA target, fp32 gradient all-reduce) with the forward passes under
    # torch.autocast(bfloat16). fp32: no autocast; the path every CPU test runs.
    precision: Literal["fp32", "bf16"] = "fp32"
    # Ranks agree on a stop request (preemption warning, cancel) every this many steps: the all-reduce and
    # its host sync drain the GPU's queue. Rule: stop_check_every x step time + one checkpoint save must fit
    # in the warning: SLURM's USR2 comes 120 s before the limit (10 x ~0.4 s per ResNet-50 step + a save of
    # a few seconds is far inside it); a local cancel's grace is 10 s. None: 10 on CUDA, 1 on CPU, where
    # the check costs nothing next to a step and a cancel is honoured at the next step, as before.
    stop_check_every: int | None = Field(None, ge=1)
    # torch.compile the model (inductor on CUDA). The first steps (compilation) are left out of pairs/s.
    compile: bool = False
    # CUDA: deterministic cuDNN/cuBLAS kernels and no cudnn.benchmark, for bitwise-equal resume on a GPU
    # (slower). The CPU path is deterministic already.
    deterministic: bool = False


class CheckpointConfig(_Section):
    every_steps: int = Field(25, ge=1)
    keep_last: int = Field(2, ge=1)
    # Upload in a background thread so a save stalls training only for the local write.
    background_upload: bool = True


Corruption = Literal["gaussian_noise", "gaussian_blur", "contrast", "jpeg"]


_BENCHMARK_KEYS_OMITTED_AT_DEFAULT = ("linear_augmented", "augmented_epochs", "augmented_lr", "augmented_batch_size",
                                     "augmented_crop_scale", "augmented_standardize", "augmented_checkpoint_steps")


def _dumped_default(model: type[BaseModel], key: str) -> Any:
    field = model.model_fields[key]
    return field.default_factory() if field.default_factory is not None else field.default


def _as_list(value: Any) -> Any:
    # a tuple dumps as a tuple in python mode and as a list in json mode: the same value either way
    return list(value) if isinstance(value, tuple) else value


def _expand_home(root: str) -> str:
    # `~` means the submitting user's home: the job may run as the same user elsewhere, with another $HOME
    return os.path.expanduser(root) if root.startswith("~") else root


def _every_k_positive(values: list[int]) -> list[int]:
    if any(k < 1 for k in values):
        raise ValueError("every k is at least 1")
    return values


KnnKs = Annotated[list[int], AfterValidator(_every_k_positive)]  # the k values of a weighted kNN vote


class ImageFolderBenchmark(_Section):
    """A labelled image folder in ImageNet's layout, `<root>/train/<class>/*.JPEG` and `<root>/val/<class>/*.JPEG`:
    frozen features scored by weighted kNN and a linear probe (DINO's and MoCo's protocols; docs/evaluation.md)."""

    kind: Literal["image_folder"] = "image_folder"
    root: str = Field(min_length=1, description="local path or s3:// URL of the set's root folder")
    train_split: str = "train"
    val_split: str = "val"
    # The standard evaluation transform. The resize policy moves published top-1 by 0.4-0.8 points: it is a
    # field, part of the feature cache key, and logged with every result.
    resize: int = Field(256, ge=0, description="short side before the centre crop; 0: centre crop only")
    crop: int = Field(224, ge=8)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    antialias: bool = True
    knn: bool = True
    knn_k: KnnKs = Field(default_factory=lambda: [10, 20, 100, 200], min_length=1)
    knn_temperature: float = Field(0.07, gt=0)
    linear: bool = True
    linear_lr_grid: list[float] = Field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0], min_length=1)
    linear_epochs: int = Field(100, ge=1)
    linear_batch_size: int = Field(1024, ge=1)
    linear_holdout: float = Field(0.1, gt=0, lt=1, description="share of train that picks the lr (never val)")
    # The augmented linear protocol (vito/eval/protocols/augmented_linear.py): RandomResizedCrop + flip through
    # the frozen backbone every epoch, a checkpointed job of its own. Off by default: it costs `augmented_epochs`
    # forward passes over train where the cached probe costs one.
    linear_augmented: bool = False
    augmented_epochs: int = Field(100, ge=1)  # DINO, MoCo v2 (MoCo v3: 90)
    augmented_lr: float = Field(0.1, gt=0, description="base lr per 256 images (MoCo v3), x batch / 256")
    augmented_batch_size: int = Field(1024, ge=1, description="global batch over the job's ranks (MoCo v3, DINO)")
    augmented_crop_scale: tuple[float, float] = (0.08, 1.0)  # torchvision's RandomResizedCrop default
    augmented_standardize: bool = True  # features standardised by the cached train features' mean and std (ours)
    augmented_checkpoint_steps: int = Field(0, ge=0, description="also commit every N steps; 0: each epoch's end")

    @field_validator("root")
    @classmethod
    def _home_expanded(cls, root: str) -> str:
        return _expand_home(root)

    @field_validator("augmented_crop_scale")
    @classmethod
    def _crop_scale(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError(f"augmented_crop_scale must be [min, max] with 0 < min <= max <= 1, got {list(value)}")
        return value

    @model_serializer(mode="wrap")
    def _omit_new_keys_at_default(self, handler: Any) -> dict[str, Any]:
        # As EvalConfig's: trial keys and configs of specs from before the augmented protocol are unchanged.
        dumped = handler(self)
        for key in _BENCHMARK_KEYS_OMITTED_AT_DEFAULT:
            if key in dumped and _as_list(dumped[key]) == _as_list(_dumped_default(type(self), key)):
                del dumped[key]
        return dumped


class _ReadoutBenchmark(_Section):
    """A benchmark scored through a 1000-way ImageNet head: `head: trained` (the default) through the linear
    readout that an image_folder benchmark of the same evaluation trained (`readout` names it; it must have
    `linear: true`), `head: own` through the 1000-way `fc` of the published weights evaluated (eval.weights),
    whose columns are ImageNet-1k's sorted wnids (vito/eval/datasets/imagenet_classes.py)."""

    root: str = Field(min_length=1, description="local path or s3:// URL of the set's root folder")
    readout: str | None = Field(None, min_length=1,
                                description="name of an image_folder benchmark (linear: true) of this eval")
    head: Literal["trained", "own"] = "trained"
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    antialias: bool = True

    @field_validator("root")
    @classmethod
    def _home_expanded(cls, root: str) -> str:
        return _expand_home(root)

    @model_validator(mode="after")
    def _one_head(self) -> "_ReadoutBenchmark":
        if self.head == "trained" and self.readout is None:
            raise ValueError("readout: name the image_folder benchmark whose linear readout scores this one, "
                             "or set head: own (the 1000-way fc of eval.weights)")
        if self.head == "own" and self.readout is not None:
            raise ValueError(f"readout: {self.readout!r} with head: own; the own head scores without a trained "
                             "readout: drop one of the two")
        return self

    @model_serializer(mode="wrap")
    def _omit_new_keys_at_default(self, handler: Any) -> dict[str, Any]:
        # `head` came after these kinds: at its default it stays out of the dump (trial keys unchanged);
        # `readout` is absent only with head: own.
        dumped = handler(self)
        if dumped.get("head") == "trained":
            del dumped["head"]
        if dumped.get("readout", "") is None:
            del dumped["readout"]
        return dumped


class CorruptionsBenchmark(_ReadoutBenchmark):
    """ImageNet-C (`<corruption>/<1-5>/<wnid>/*.JPEG`, optionally under `<family>/`) or ImageNet-3DCC: mCE and
    relative mCE (Hendrycks & Dietterich) or 3DCC's unnormalised errors (vito/eval/protocols/corruptions.py)."""

    kind: Literal["corruptions"]
    set: Literal["imagenet-c", "imagenet-3dcc"] = "imagenet-c"
    # The images are 224 px already: centre crop only (resize 0), as hendrycks/robustness evaluates them.
    resize: int = Field(0, ge=0, description="short side before the centre crop; 0: centre crop only")
    crop: int = Field(224, ge=8)


class ClassSubsetBenchmark(_ReadoutBenchmark):
    """ImageNet-A / ImageNet-R (`<wnid>/*.JPEG`, a subset of the readout's classes): top-1 of the argmax restricted
    to the subset's columns (vito/eval/protocols/class_subset.py)."""

    kind: Literal["class_subset"]
    resize: int = Field(256, ge=0, description="short side before the centre crop; 0: centre crop only")
    crop: int = Field(224, ge=8)


class CueConflictBenchmark(_ReadoutBenchmark):
    """model-vs-human's cue-conflict images (`<category>/<shape><i>-<texture><j>.png`): shape bias of the
    16-class decisions of the 1000-way readout (vito/eval/protocols/cue_conflict.py)."""

    kind: Literal["cue_conflict"]
    # Unverified which resize model-vs-human applies to PyTorch models: a field, recorded with the result.
    resize: int = Field(256, ge=0, description="short side before the centre crop; 0: centre crop only")
    crop: int = Field(224, ge=8)


class Ucf101Benchmark(_Section):
    """UCF-101 in its distributed layout (`<Class>/*.avi`, `ucfTrainTestlist/`): frozen per-frame features
    averaged over evenly spaced frames of each clip, a linear probe on the split's train clips, top-1 on its
    test clips (vito/eval/protocols/ucf101.py). Its own classifier: no readout."""

    kind: Literal["ucf101"]
    root: str = Field(min_length=1, description="local path or s3:// URL of the folder of class folders")
    split: int = Field(1, ge=1, le=3, description="the official train/test split, 1-3")
    splits_dir: str | None = Field(None, min_length=1, description="None: <root>/ucfTrainTestlist")
    # 8 segment centres: UCF-101's clips average ~7 s, so 8 frames are under a second apart (neighbours beyond
    # that add little to an average of pooled features) at 8x an image's cost: ~107k frames for split 1.
    frames_per_clip: int = Field(8, ge=1)
    resize: int = Field(256, ge=0, description="short side before the centre crop; 0: centre crop only")
    crop: int = Field(224, ge=8)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    antialias: bool = True
    linear: bool = True
    linear_lr_grid: list[float] = Field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0], min_length=1)
    linear_epochs: int = Field(100, ge=1)
    # ~9.5k train clips: 256 gives 38 steps an epoch where ImageNet's 1024 would give 10.
    linear_batch_size: int = Field(256, ge=1)
    linear_holdout: float = Field(0.1, gt=0, lt=1, description="share of train's groups that picks the lr (never test)")
    knn: bool = False
    knn_k: KnnKs = Field(default_factory=lambda: [10, 20], min_length=1)
    knn_temperature: float = Field(0.07, gt=0)

    @field_validator("root", "splits_dir")
    @classmethod
    def _home_expanded(cls, path: str | None) -> str | None:
        return None if path is None else _expand_home(path)

    @field_validator("split", mode="before")
    @classmethod
    def _split_is_a_number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"split is 1, 2 or 3 (the official split's number), not {value!r}")
        return value

    @model_validator(mode="after")
    def _some_classifier(self) -> "Ucf101Benchmark":
        if not (self.linear or self.knn):
            raise ValueError("linear and knn are both false: nothing would score the clips (set linear: true)")
        return self


class DavisBenchmark(_Section):
    """DAVIS 2017 semi-supervised (`JPEGImages/<res>/<seq>/*.jpg`, `Annotations/<res>/<seq>/*.png`,
    `ImageSets/2017/<split>.txt`): label propagation with frozen stage-4 features, scored by the official J&F
    (vito/eval/protocols/davis.py). The defaults are CRW's and VFS's ResNet protocol; VITO's own is unverified."""

    kind: Literal["davis"]
    root: str = Field(min_length=1, description="local path of the DAVIS root (the reader needs a file system)")
    split: str = Field("val", min_length=1, description="ImageSets/2017/<split>.txt")
    resolution: str = Field("480p", min_length=1)
    # Stage-4 (layer3) maps at stride 8: layer3's stride set to 1, layer4 removed (the only setting built).
    stage: Literal[4] = 4
    stride: Literal[8] = 8
    context_frames: int = Field(20, ge=0, description="preceding frames in the context besides the first")
    topk: int = Field(10, ge=1)
    temperature: float = Field(0.07, gt=0)
    radius: float = Field(12.0, gt=0, description="feature cells a key may lie from its query")
    # None: full frames (the protocol); N: frames resized to short side N before the network (CPU checks).
    short_side: int | None = Field(None, ge=16)

    @field_validator("root")
    @classmethod
    def _local_root(cls, root: str) -> str:
        if "://" in root:
            raise ValueError(f"{root}: the DAVIS reader needs a local or mounted path, not a URL")
        return _expand_home(root)


def _benchmark_kind(value: Any) -> str:
    # `kind` absent: an image folder, as every spec before the other kinds existed.
    if isinstance(value, dict):
        return value.get("kind", "image_folder")
    return getattr(value, "kind", "image_folder")


Benchmark = Annotated[
    Annotated[ImageFolderBenchmark, Tag("image_folder")]
    | Annotated[CorruptionsBenchmark, Tag("corruptions")]
    | Annotated[ClassSubsetBenchmark, Tag("class_subset")]
    | Annotated[CueConflictBenchmark, Tag("cue_conflict")]
    | Annotated[Ucf101Benchmark, Tag("ucf101")]
    | Annotated[DavisBenchmark, Tag("davis")],
    Discriminator(_benchmark_kind, custom_error_type="benchmark_kind",
                  custom_error_message="eval.benchmarks.<name>.kind must be one of image_folder, corruptions, "
                                       "class_subset, cue_conflict, ucf101, davis"),
]
READOUT_KINDS = ("corruptions", "class_subset", "cue_conflict")


# New evaluation keys stay out of the dump at their defaults: trial keys (hashes of the dump) of configs from
# before they existed are unchanged, so re-sweeping an old spec submits nothing new.
_EVAL_KEYS_OMITTED_AT_DEFAULT = ("benchmarks", "synthetic_suite", "feature_cache", "extract_batch_size",
                                 "extract_shard_size", "loader_workers", "weights", "weights_kind")


class EvalConfig(_Section):
    """Frozen-feature evaluation: after pretraining (probe, kNN), and the full suite of `task: evaluate` trials."""

    linear_probe: bool = True
    train_clips: int = Field(64, ge=2)
    test_clips: int = Field(32, ge=2)
    frames_per_clip: int = Field(4, ge=1)
    probe_epochs: int = Field(200, ge=1)
    knn_k: int = Field(5, ge=1)
    seed: int = 1234
    # Labelled manifests for the probes; None: synthetic probe_train / probe_test splits of data.synthetic.
    train_manifest: str | None = None
    test_manifest: str | None = None

    # -- an evaluation trial (task: evaluate) evaluates a pretrained checkpoint instead of training ----------
    checkpoint: str | None = Field(None, min_length=1, description="a trial's checkpoint root (path or URL)")
    checkpoint_step: int | None = Field(None, ge=1, description="None: its newest committed step")
    pretrain_run_id: str | None = Field(None, description="the MLflow run that trained it (set by the caller)")
    # Published weights evaluated instead of a checkpoint (vito/eval/foreign_weights.py): a file of ResNet-50
    # weights in torchvision/timm layout or the VITO port's; kind None: detected from its keys.
    weights: str | None = Field(None, min_length=1, description="a file of published ResNet-50 weights")
    weights_kind: Literal["torchvision", "timm", "vito_port"] | None = None
    random_init_baseline: bool = True  # every metric also for a randomly initialised network
    # Robustness: the probe trained on clean features, tested on corrupted test images (severity 1-5).
    corruptions: list[Corruption] = Field(default_factory=lambda: ["gaussian_noise", "gaussian_blur", "contrast", "jpeg"])
    severities: list[int] = Field(default_factory=lambda: [1, 3, 5])
    # Natural deformation: held-out synthetic clips with stronger motion and deformation than training saw.
    deformation_motion_scales: list[float] = Field(default_factory=lambda: [2.0])
    # DAVIS-style label propagation of the object mask through synthetic clips (J: IoU, F: boundary F).
    propagation: bool = True
    propagation_clips: int = Field(8, ge=1)
    propagation_size: int = Field(96, ge=16, description="frames are resized to this before the backbone")
    propagation_stage: Literal[4, 5] = 4
    propagation_context: int = Field(4, ge=0, description="previous frames used besides the first")
    propagation_topk: int = Field(10, ge=1)
    propagation_temperature: float = Field(0.07, gt=0)
    propagation_radius: float = Field(3.0, gt=0, description="neighbourhood in feature cells")

    # -- the user's benchmarks, in their standard layouts (vito/eval/) ----------------------------------------
    benchmarks: dict[str, Benchmark] = Field(default_factory=dict)
    synthetic_suite: bool = True  # the suite above on synthetic clips; off to score only `benchmarks`
    feature_cache: str | None = Field(
        None, min_length=1, description="where extracted features are kept; None: <eval.checkpoint>/features, "
        "so every evaluation of a checkpoint reuses them")
    extract_batch_size: int = Field(64, ge=1)
    extract_shard_size: int = Field(4096, ge=1, description="images per committed feature shard (resume unit)")
    loader_workers: int = Field(4, ge=0)

    @model_serializer(mode="wrap")
    def _omit_new_keys_at_default(self, handler: Any) -> dict[str, Any]:
        dumped = handler(self)
        for key in _EVAL_KEYS_OMITTED_AT_DEFAULT:
            field = type(self).model_fields[key]
            default = field.default_factory() if field.default_factory is not None else field.default
            if key in dumped and dumped[key] == default:
                del dumped[key]
        return dumped

    @field_validator("benchmarks")
    @classmethod
    def _benchmark_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not re.fullmatch(r"[a-z0-9_]+", name):
                raise ValueError(f"benchmark name {name!r}: use [a-z0-9_]+ (it names metrics: eval/<name>/...)")
        return value

    @model_validator(mode="after")
    def _valid_suite(self) -> "EvalConfig":
        if any(not 1 <= s <= 5 for s in self.severities):
            raise ValueError("eval.severities are between 1 and 5")
        if any(m <= 0 for m in self.deformation_motion_scales):
            raise ValueError("eval.deformation_motion_scales must be > 0")
        if (self.train_manifest is None) != (self.test_manifest is None):
            raise ValueError("set both eval.train_manifest and eval.test_manifest, or neither")
        for name, bench in self.benchmarks.items():
            if bench.kind not in READOUT_KINDS:
                continue  # its own classifier
            if bench.head == "own":
                if self.checkpoint is not None:
                    raise ValueError(
                        f"eval.benchmarks.{name}.head: own scores through the 1000-way fc of published weights "
                        f"(eval.weights); a trial's checkpoint (eval.checkpoint {self.checkpoint}) has no such head: "
                        "use head: trained with a readout")
                continue
            target = self.benchmarks.get(bench.readout)
            if target is None or target.kind != "image_folder" or not target.linear:
                readouts = [n for n, b in self.benchmarks.items() if b.kind == "image_folder" and b.linear]
                raise ValueError(
                    f"eval.benchmarks.{name}.readout: {bench.readout!r} is not an image_folder benchmark with "
                    f"linear: true of this evaluation (its linear readout scores {name}); "
                    f"candidates: {', '.join(readouts) or 'none'}")
        if self.weights is not None and self.checkpoint is not None:
            raise ValueError("eval.weights (published weights) and eval.checkpoint (a trial's) exclude each other")
        if self.weights_kind is not None and self.weights is None:
            raise ValueError("eval.weights_kind needs eval.weights")
        return self


class VitoConfig(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    ema: EMAConfig = EMAConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _lars_needs_whole_layers(self) -> "VitoConfig":
        # ZeRO 1/2 flatten each param group into one shard per rank: LARS would compute its trust ratio
        # per shard instead of per layer, which silently changes the method.
        if self.optim.name == "lars" and self.train.zero_stage > 0:
            raise ValueError(
                "optim.name 'lars' needs train.zero_stage 0 (ZeRO flattens layers, breaking LARS's "
                "per-layer trust ratio): set train.zero_stage: 0, or optim.name: adamw"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        """A stable short hash of the full resolved config: a trial's identity."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def leaf_paths(model: type[BaseModel] = VitoConfig, prefix: str = "") -> list[str]:
    """Every settable dotted path, e.g. 'loss.temperature' (used for typo hints)."""
    paths = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.extend(leaf_paths(annotation, f"{prefix}{name}."))
        else:
            paths.append(f"{prefix}{name}")
    return paths


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `value` at `dotted` in a nested dict, creating intermediate dicts."""
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[leaf] = value
