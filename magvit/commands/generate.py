"""`magvit generate`: videos from the masked model, class-conditional or frame prediction.

magvit generate --class-id 3 out.gif
magvit generate --condition clip.mp4 --num 4 out.mp4
magvit generate --mlm models:/magvit2-mlm@champion --class-id 0 out.gif
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TypeVar

import numpy as np

from magvit.cli import run_stage
from magvit.errors import UsageError
from magvit.logs import configure_logging
from magvit.media.clip_decoding import clip_spec
from magvit.media.video_decode import ClipSpec, RejectedInput, decode_file
from magvit.media.video_encode import write_video
from magvit.params import load_params
from magvit.runtime.mlflow_models import model_dir_from_uri
from magvit.sampling import class_samples, predict_frames, sampler_config, tile_clips
from models.mlm import MaskedTokenTransformer, MLMConfig
from models.pretrained import CONFIG_FILE
from models.tokenizer import MagvitTokenizer

log = logging.getLogger("generate")

PROG = "magvit generate"
OUTPUT_SUFFIXES = (".gif", ".mp4")
M = TypeVar("M", MaskedTokenTransformer, MagvitTokenizer)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate videos with the masked token model and decode them with the "
        "tokenizer. Give --class-id for class-conditional samples or --condition for frame "
        "prediction; the samples are written side by side into OUTPUT (.gif or .mp4).",
    )
    parser.add_argument("output", type=Path, help="output file, .gif or .mp4")
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--class-id", type=int, help="class to generate (see data/raw/classes.json)")
    task.add_argument("--unconditional", action="store_true", help="no class label")
    task.add_argument("--condition", type=Path, help="video whose first frames are continued")
    parser.add_argument("--mlm", default="artifacts/mlm", help="model dir or MLflow model URI")
    parser.add_argument(
        "--tokenizer", default="artifacts/tokenizer", help="model dir or MLflow model URI"
    )
    parser.add_argument("--num", type=int, default=4, help="samples to generate (default 4)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the first sample; sample i uses seed + i"
    )
    parser.add_argument("--steps", type=int, help="MaskGIT steps (default from params)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default from params)")
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """The checks that need no model or file: done before anything is loaded."""
    if args.output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(
            f"output {args.output} must end in .gif or .mp4, not {args.output.suffix or '(none)'!r}"
        )
    if args.num < 1:
        raise UsageError(f"--num {args.num} must be at least 1")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps {args.steps} must be at least 1")
    if args.guidance is not None and not args.guidance >= 0:  # NaN fails too
        raise UsageError(f"--guidance {args.guidance:g} must be 0 or more")


def read_mlm_config(model_dir: Path) -> MLMConfig:
    """The masked model's config alone (no weights), to check --class-id cheaply."""
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise UsageError(f"--mlm {model_dir}: {path} does not exist (not a model folder)")
    try:
        return MLMConfig.from_dict(json.loads(path.read_text())["config"])
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(
            f"--mlm {model_dir}: {path} is not a masked model config ({error})"
        ) from None


def load_model(cls: type[M], flag: str, model_dir: Path) -> M:
    """`cls.from_pretrained(model_dir)` in eval mode; a missing file is the flag's fault."""
    try:
        return cls.from_pretrained(model_dir).eval()
    except FileNotFoundError as error:
        raise UsageError(f"{flag} {model_dir}: {error}") from None


def check_class_id(class_id: int, num_classes: int) -> None:
    """Ids 0 .. num_classes - 1 only: num_classes itself is the model's internal "no label"."""
    if 0 <= class_id < num_classes:
        return
    allowed = f"classes 0-{num_classes - 1}" if num_classes else "no classes (use --unconditional)"
    raise UsageError(
        f"--class-id {class_id} is out of range; this model has {allowed} "
        "(see data/raw/classes.json)"
    )


def read_condition(path: Path, spec: ClipSpec) -> np.ndarray:
    """The first clip of the --condition video, uint8 [T, H, W, 3]; a one-line error if unusable."""
    if not path.is_file():
        raise UsageError(f"--condition {path}: {'not a file' if path.exists() else 'no such file'}")
    try:
        frames = decode_file(path, spec).frames
    except RejectedInput as error:  # its message names the file
        raise UsageError(f"--condition: {error} ({error.error_type})") from None
    if len(frames) < spec.num_frames:  # an image: decode_file keeps its one frame
        raise UsageError(
            f"--condition {path}: too short, {len(frames)} frame(s) where a clip needs "
            f"{spec.num_frames}"
        )
    return frames[: spec.num_frames]


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging()
    generate(args)


def generate(args: argparse.Namespace) -> None:
    """Check every argument, then load the models, sample and write the output."""
    check_arguments(args)
    params = load_params(args.params)
    sampling = params.train_mlm.sampling.model_copy(
        update={
            k: v
            for k, v in {"steps": args.steps, "guidance_scale": args.guidance}.items()
            if v is not None
        }
    )
    config = sampler_config(sampling)
    mlm_dir = model_dir_from_uri(args.mlm)
    if args.class_id is not None:
        check_class_id(args.class_id, read_mlm_config(mlm_dir).num_classes)
    spec = clip_spec(params.decode)
    clip = read_condition(args.condition, spec) if args.condition is not None else None
    mlm = load_model(MaskedTokenTransformer, "--mlm", mlm_dir)
    tokenizer = load_model(MagvitTokenizer, "--tokenizer", model_dir_from_uri(args.tokenizer))
    if clip is not None:
        videos = predict_frames(
            mlm, tokenizer, clip, params.train_mlm.condition_frames, args.num, config, args.seed
        )
    else:
        videos = class_samples(mlm, tokenizer, args.class_id, args.num, config, args.seed)
    write_video(tile_clips(videos), args.output, params.decode.fps)
    log.info("wrote %d samples to %s", args.num, args.output)


if __name__ == "__main__":
    run_stage(main)
