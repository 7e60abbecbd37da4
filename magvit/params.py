"""Typed, validated view of params.yaml.

Every stage reads its parameters through `load_params`, so a typo, a wrong type or an
impossible value fails before any work starts, with the key's dotted path and what is
allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from magvit.errors import UserInputError

PARAMS_FILE = Path("params.yaml")


class ParamsError(UserInputError, ValueError):
    """params.yaml is missing, unreadable or holds an invalid value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


PositiveInt = Annotated[int, Field(gt=0)]
BF16Setting = Literal["auto", "on", "off"]  # auto: on for GPUs that support it
NonNegativeInt = Annotated[int, Field(ge=0)]


def check_clip_length(value: int) -> int:
    """Clip lengths are 1 + 4k: 4x causal temporal downsampling keeps frame 0 alone."""
    if value < 1 or (value - 1) % 4:
        raise ValueError(f"must be of the form 1 + 4k (1, 5, 9, 17, ...), got {value}")
    return value


class SyntheticParams(_Strict):
    videos_per_class: PositiveInt = 6
    num_frames: PositiveInt = 72
    size: Annotated[int, Field(ge=16, le=1024)] = 80
    fps: Annotated[float, Field(gt=0, le=240)] = 24.0
    val_per_class: NonNegativeInt = 1
    test_per_class: NonNegativeInt = 1

    @model_validator(mode="after")
    def _leaves_training_videos(self) -> SyntheticParams:
        held_out = self.val_per_class + self.test_per_class
        if held_out >= self.videos_per_class:
            raise ValueError(
                f"val_per_class + test_per_class ({held_out}) must be less than "
                f"videos_per_class ({self.videos_per_class}) so every class has training videos"
            )
        return self


class CorpusParams(_Strict):
    source: str = "embedded"
    synthetic: SyntheticParams = SyntheticParams()
    real_test: list[str] = ["bikes.mp4"]
    real_val: list[str] = []
    images: list[str] = []
    image_val: list[str] = []
    image_test: list[str] = []

    @model_validator(mode="after")
    def _held_out_images_are_listed(self) -> CorpusParams:
        unknown = sorted(set(self.image_val + self.image_test) - set(self.images))
        if unknown:
            raise ValueError(f"image_val/image_test name images not in `images`: {unknown}")
        return self


class DecodeParams(_Strict):
    fps: Annotated[float, Field(gt=0, le=240)] = 8.0
    resize_short_side: Annotated[int, Field(ge=8, le=4096)] = 72
    crop_size: Annotated[int, Field(ge=8, le=4096)] = 64
    num_frames: PositiveInt = 9
    stride: PositiveInt = 4
    max_clips_per_video: PositiveInt = 64
    clips_per_shard: PositiveInt = 256
    workers: Annotated[int, Field(ge=1, le=1024)] = 2

    _check_num_frames = field_validator("num_frames")(check_clip_length)

    @model_validator(mode="after")
    def _crop_fits(self) -> DecodeParams:
        if self.crop_size > self.resize_short_side:
            raise ValueError(
                f"crop_size ({self.crop_size}) must be <= resize_short_side "
                f"({self.resize_short_side}): the centre crop is taken after resizing"
            )
        return self


class ValidateClipsParams(_Strict):
    min_pixel_std: Annotated[float, Field(ge=0)] = 1.0
    num_classes: PositiveInt = 8


class RayTrainParams(_Strict):
    num_workers: Annotated[int, Field(ge=1, le=4096)] = 2
    use_gpu: bool = False
    cpus_per_worker: Annotated[float, Field(gt=0, le=256)] = 1
    max_failures: Annotated[int, Field(ge=-1)] = 2  # worker failures retried (-1: forever)
    checkpoints_to_keep: Annotated[int, Field(ge=1)] = 2


class RayParams(_Strict):
    train: RayTrainParams = RayTrainParams()


class TokenizerModelParams(_Strict):
    """A `models.tokenizer.TokenizerConfig` preset plus field overrides."""

    preset: Literal["cpu", "paper"] = "cpu"
    overrides: dict[str, Any] = {}

    @model_validator(mode="after")
    def _builds(self) -> TokenizerModelParams:
        self.config()  # raises ValueError naming the bad field
        return self

    def config(self):
        from models.tokenizer import TokenizerConfig

        base = TokenizerConfig.preset(self.preset).to_dict()
        try:
            return TokenizerConfig.from_dict({**base, **self.overrides})
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"overrides {self.overrides} do not give a valid model: {error}"
            ) from None


Weight = Annotated[float, Field(ge=0)]


class TrainTokenizerParams(_Strict):
    steps: PositiveInt = 400
    batch_size: PositiveInt = 2  # video clips per worker per step
    image_batch_size: PositiveInt = 2  # images (T = 1) per worker on image steps
    image_every: NonNegativeInt = 4  # every Nth step is an image step; 0 = videos only
    # image steps also draw single frames of the training videos (as T = 1 clips), not only
    # the few stills: many more distinct images for the spatial code that all frames share
    frames_as_images: bool = True
    augment: bool = True  # random horizontal flips of train clips
    # and random colour-channel orders: off in the profile, where they cost ~1.8 dB and turned
    # green backgrounds red (README "Tokenizer", rows 28-29)
    augment_colour_orders: bool = False
    augment_max_zoom: Annotated[float, Field(ge=1, le=4)] = 1.0  # and random zooms up to this
    lr: Annotated[float, Field(gt=0, le=1)] = 2e-3
    warmup_steps: NonNegativeInt = 30
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.5,
        0.9,
    )
    grad_clip: Annotated[float, Field(gt=0)] = 1.0
    ema_decay: Annotated[float, Field(ge=0, lt=1)] = 0.99
    recon_loss: Literal["l1", "l2"] = "l2"
    recon_weight: Weight = 1.0  # MAGVIT's reference recipe weights reconstruction 5x
    perceptual_weight: Weight = 0.1
    perceptual_weights: str | None = None  # local LPIPS safetensors; None = no perceptual loss
    entropy_weight: Weight = 0.07
    entropy_start_multiplier: Annotated[float, Field(ge=1)] = 3.0
    entropy_decay_steps: NonNegativeInt = 200
    gan_weight: Weight = 0.1
    disc_start_step: NonNegativeInt = 320
    disc_channels: PositiveInt = 8
    lecam_weight: Weight = 0.05
    lecam_decay: Annotated[float, Field(ge=0, lt=1)] = 0.999
    bf16: BF16Setting = "auto"
    checkpoint_every: PositiveInt = 100
    log_every: PositiveInt = 10
    eval_every: PositiveInt = 100
    image_log_every: PositiveInt = 200
    eval_clips: PositiveInt = 32  # held-out (val) clips for PSNR/SSIM and codebook usage
    storage_path: str = "runs"  # Ray Train run storage (checkpoints); a URI for clusters

    @model_validator(mode="after")
    def _ordered(self) -> TrainTokenizerParams:
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps})")
        return self


class TokenizeParams(_Strict):
    """The tokenizer actor pool of `magvit tokenize-clips` and `magvit tokenize`."""

    batch_size: PositiveInt = 16  # clips per encode call
    actors: Annotated[int, Field(ge=1, le=4096)] = 2  # tokenizer actors (model copies)
    cpus_per_actor: Annotated[float, Field(gt=0, le=256)] = 1
    use_gpu: bool = False  # one GPU per actor
    num_factors: PositiveInt = 1  # MLM sub-tokens per token (recorded in the manifest)
    files_per_shard: PositiveInt = 16  # bulk: input files per output shard (resume unit)


class MLMModelParams(_Strict):
    """A `models.mlm.MLMConfig` preset plus overrides; bits, grid and classes come from the
    tokenizer, the clip shape and `validate_clips.num_classes`."""

    preset: Literal["cpu", "paper"] = "cpu"
    overrides: dict[str, Any] = {}

    @model_validator(mode="after")
    def _known_fields(self) -> MLMModelParams:
        from models.mlm import MLMConfig

        unknown = set(self.overrides) - set(MLMConfig.__dataclass_fields__)
        derived = {"bits", "grid", "num_classes"} & set(self.overrides)
        if unknown or derived:
            raise ValueError(
                f"overrides: unknown MLMConfig fields {sorted(unknown)} or fields derived "
                f"from the tokenizer and corpus {sorted(derived)}"
            )
        return self

    def config(self, bits: int, grid: tuple[int, int, int], num_classes: int):
        from models.mlm import MLMConfig

        derived = {"bits": bits, "grid": tuple(grid), "num_classes": num_classes}
        try:
            return MLMConfig.preset(self.preset, **derived, **self.overrides)
        except (TypeError, ValueError) as error:
            raise ParamsError(f"mlm: the model cannot be built: {error}") from None


class SamplingParams(_Strict):
    steps: PositiveInt = 12
    choice_temperature: Annotated[float, Field(ge=0)] = 4.5
    guidance_scale: Annotated[float, Field(ge=0)] = 1.0
    guidance_schedule: Literal["constant", "linear", "cosine"] = "linear"
    temperature: Annotated[float, Field(gt=0)] = 1.0
    samples_per_class: PositiveInt = 4


class TrainMLMParams(_Strict):
    steps: PositiveInt = 300
    batch_size: PositiveInt = 12  # token grids per worker per step
    lr: Annotated[float, Field(gt=0, le=1)] = 1e-3
    warmup_steps: NonNegativeInt = 30
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9,
        0.96,
    )
    grad_clip: Annotated[float, Field(gt=0)] = 1.0
    bf16: BF16Setting = "auto"
    label_drop: Annotated[float, Field(ge=0, le=1)] = 0.1  # for classifier-free guidance
    frame_prediction_ratio: Annotated[float, Field(ge=0, le=1)] = 0.25
    condition_frames: PositiveInt = 1  # latent frames given as the frame-prediction condition
    checkpoint_every: PositiveInt = 100
    log_every: PositiveInt = 10
    eval_every: PositiveInt = 100
    storage_path: str = "runs"
    sampling: SamplingParams = SamplingParams()

    @model_validator(mode="after")
    def _ordered(self) -> TrainMLMParams:
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps})")
        return self


class DomainClassifierParams(_Strict):
    """The domain feature network (models.domain_classifier): fvd_domain, fid_domain, class
    accuracy of samples. Trained on the labelled train clips by `train_domain_classifier`."""

    channels: tuple[PositiveInt, ...] = (16, 32, 64, 64)
    feature_dim: PositiveInt = 128
    steps: PositiveInt = 300
    batch_size: PositiveInt = 16
    lr: Annotated[float, Field(gt=0, le=1)] = 2e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.01


class GenerationEvalParams(_Strict):
    samples_per_class: PositiveInt = 8  # class-conditional samples per class
    frame_prediction_clips: PositiveInt = 32  # held-out clips whose first frames are continued


class EvaluateParams(_Strict):
    """Stage `evaluate`. Standard feature networks load only from local files: a path left
    null (or missing on disk) skips FID / IS / FVD / LPIPS with a logged reason."""

    inception_weights: str | None = None  # pytorch-fid's pt_inception-2015-12-05 .pth
    i3d_weights: str | None = None  # pytorch-i3d rgb_imagenet.pt (Kinetics-400 I3D)
    lpips_weights: str | None = None  # LPIPS-VGG16 safetensors (see train_tokenizer)
    max_clips: PositiveInt = 64  # held-out clips per set for reconstruction and references
    compression_clips: PositiveInt = 16  # held-out clips encoded by each codec
    codecs: list[Literal["h264", "hevc"]] = ["h264", "hevc"]
    rd_crfs: list[Annotated[int, Field(ge=0, le=51)]] = [18, 26, 34, 42, 51]
    batch_size: PositiveInt = 16
    generation: GenerationEvalParams = GenerationEvalParams()


CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,\-]+$")


class ChampionParams(_Strict):
    """How a new registered model version is compared with the `champion` one."""

    metric: str  # MLflow metric on the run that registered the version
    direction: Literal["max", "min"] = "max"  # max: higher is better
    min_improvement: Annotated[float, Field(ge=0)] = 0.0  # in the metric's units


class ScheduleParams(_Strict):
    """The nightly retrain deployment (pipelines/nightly.py)."""

    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    champions: dict[str, ChampionParams] = {
        "magvit2-tokenizer": ChampionParams(metric="eval/reconstruction/synthetic/psnr"),
        "magvit2-mlm": ChampionParams(
            metric="eval/generation/class_conditional/fvd_domain", direction="min"
        ),
    }

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        fields = value.split()
        if len(fields) != 5 or not all(CRON_FIELD.match(field) for field in fields):
            raise ValueError(
                f"must be a 5-field cron string (minute hour day month weekday), got {value!r}"
            )
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"must be an IANA timezone such as UTC or Europe/Berlin, got {value!r}"
            ) from None
        return value


class Params(_Strict):
    seed: NonNegativeInt = 0
    corpus: CorpusParams = CorpusParams()
    decode: DecodeParams = DecodeParams()
    validate_clips: ValidateClipsParams = ValidateClipsParams()
    ray: RayParams = RayParams()
    tokenizer: TokenizerModelParams = TokenizerModelParams()
    train_tokenizer: TrainTokenizerParams = TrainTokenizerParams()
    mlm: MLMModelParams = MLMModelParams()
    train_mlm: TrainMLMParams = TrainMLMParams()
    tokenize: TokenizeParams = TokenizeParams()
    domain_classifier: DomainClassifierParams = DomainClassifierParams()
    evaluate: EvaluateParams = EvaluateParams()
    schedule: ScheduleParams = ScheduleParams()

    def mlm_config(self, tokenizer_config):
        """The masked model's config: its token grid, vocabulary and classes follow from the
        tokenizer, the clip shape and validate_clips.num_classes."""
        d = self.decode
        grid = tokenizer_config.latent_shape(d.num_frames, d.crop_size, d.crop_size)
        return self.mlm.config(tokenizer_config.bits, grid, self.validate_clips.num_classes)


def check_clip_shape(params: Params, config) -> None:
    """The decoded clip shape must suit the tokenizer's down-sampling factors."""
    d = params.decode
    try:
        config.latent_shape(d.num_frames, d.crop_size, d.crop_size)
    except ValueError as error:
        raise ParamsError(
            f"decode.num_frames / decode.crop_size do not fit the tokenizer: {error}"
        ) from None


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid parameters in {source}:"]
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "<root>"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see params.yaml for the allowed keys)"
        lines.append(f"  {path}: {message}")
    return "\n".join(lines)


def parse_params(raw: dict, source: str = "params") -> Params:
    """Validate a params mapping; raise ParamsError naming each bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as error:
        raise ParamsError(_describe(error, source)) from None


def read_params_mapping(path: str | Path) -> dict:
    """The raw mapping of a params file (params.yaml or a profile), not yet validated."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path} must hold a mapping of keys, got {type(raw).__name__}")
    return raw or {}


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml."""
    return parse_params(read_params_mapping(path), str(path))
