"""`magvit generate`: videos from the masked model, class-conditional or frame prediction.

magvit generate --class-id 3 out.gif
magvit generate --condition clip.mp4 --num 4 out.mp4
magvit generate --mlm models:/magvit2-mlm@champion --class-id 0 out.gif
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from magvit.cli import run_stage
from magvit.logs import configure_logging
from magvit.media.clip_decoding import clip_spec
from magvit.media.video_decode import decode_file
from magvit.media.video_encode import write_video
from magvit.params import load_params
from magvit.runtime.mlflow_models import model_dir_from_uri
from magvit.sampling import class_samples, predict_frames, sampler_config, tile_clips
from models.mlm import MaskedTokenTransformer
from models.tokenizer import MagvitTokenizer

log = logging.getLogger("generate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="magvit generate",
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="MaskGIT steps (default from params)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default from params)")
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure_logging()
    params = load_params(args.params)
    sampling = params.train_mlm.sampling.model_copy(
        update={
            k: v
            for k, v in {"steps": args.steps, "guidance_scale": args.guidance}.items()
            if v is not None
        }
    )
    config = sampler_config(sampling)
    mlm = MaskedTokenTransformer.from_pretrained(model_dir_from_uri(args.mlm)).eval()
    tokenizer = MagvitTokenizer.from_pretrained(model_dir_from_uri(args.tokenizer)).eval()
    if args.condition is not None:
        decoded = decode_file(args.condition, clip_spec(params.decode))
        clip = decoded.frames[: params.decode.num_frames]
        videos = predict_frames(
            mlm, tokenizer, clip, params.train_mlm.condition_frames, args.num, config, args.seed
        )
    else:
        videos = class_samples(mlm, tokenizer, args.class_id, args.num, config, args.seed)
    write_video(tile_clips(videos), args.output, params.decode.fps)
    log.info("wrote %d samples to %s", args.num, args.output)


if __name__ == "__main__":
    run_stage(main)
