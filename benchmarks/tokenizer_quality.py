"""Tokenizer quality per step and per CPU second: the train_tokenizer recipe, side by side.

Trains the tokenizer for a fixed number of steps with the stage's own training step
(magvit.training.tokenizer_loop.train_step) on the decoded default corpus, in one process
(batch = ray.train.num_workers x batch_size, as one step of the stage's workers sees), and
prints validation PSNR against steps and CPU seconds for the profile in params.yaml and any
variants given, then the held-out test figures of each run's exported (EMA) weights.

    .venv/bin/python benchmarks/tokenizer_quality.py --steps 600 --eval-every 150
    .venv/bin/python benchmarks/tokenizer_quality.py --stop-after 500 --threads 1  # 500 of 2,000
    .venv/bin/python benchmarks/tokenizer_quality.py \\
        --variant 'no_gan={"train_tokenizer": {"gan_weight": 0}}' \\
        --variant 'k14={"tokenizer": {"overrides": {"bits": 14}}}'

A variant is NAME=JSON, the JSON a partial params.yaml merged over the profile. Run
`dvc repro validate_clips` first (the clips under data/clips).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from magvit.evaluation.reconstruction import reconstruct_clips
from magvit.formats.clip_shards import clip_frames, evenly_spaced, held_out_sets, load_clips
from magvit.params import Params
from magvit.training.clip_batches import augment, to_model_input, video_grid
from magvit.training.ray_harness import step_seed
from magvit.training.tokenizer_loop import build_models, train_step
from models.recon_metrics import psnr
from models.tokenizer import MagvitTokenizer


def merged(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        is_section = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = merged(base[key], value) if is_section and key != "overrides" else value
    return out


def train_arrays(clips_dir: Path, frames_as_images: bool) -> tuple[np.ndarray, np.ndarray]:
    """uint8 train videos [N, T, H, W, 3] and images [M, 1, H, W, 3] (the stage's sets)."""
    rows = load_clips(clips_dir, "train")
    videos = [clip_frames(r) for r in rows if r["num_frames"] > 1]
    images = [clip_frames(r) for r in rows if r["num_frames"] == 1]
    if frames_as_images:
        images += [frame[None] for video in videos for frame in video]
    return np.stack(videos), np.stack(images) if images else np.empty((0,))


def batches(clips: np.ndarray, batch_size: int, seed: int):
    """Endless shuffled batches, epoch after epoch (the stage reshuffles per epoch too)."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(clips))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield clips[order[start : start + batch_size]]


def run_variant(
    params: Params, clips_dir: Path, steps: int, eval_every: int, threads: int, stop_after: int
):
    """Train `stop_after` steps of a `steps`-step schedule (the learning rate's cosine and the
    entropy schedule span `steps`): the (step, CPU s, raw, EMA val PSNR) curve, the EMA model,
    and the val clips."""
    torch.set_num_threads(threads)
    torch.manual_seed(params.seed)
    p = params.train_tokenizer.model_copy(update={"steps": steps})
    workers = params.ray.train.num_workers
    models = build_models(params.tokenizer.config(), p, torch.device("cpu"))
    videos, images = train_arrays(clips_dir, p.frames_as_images)
    val = load_clips(clips_dir, "val", lambda r: r["num_frames"] > 1)
    val = np.stack([clip_frames(val[i]) for i in evenly_spaced(len(val), p.eval_clips)])
    video_batches = batches(videos, p.batch_size * workers, params.seed)
    image_batches = batches(images, min(len(images), p.image_batch_size * workers), params.seed)
    curve, cpu_seconds = [], 0.0
    train_probe = videos[evenly_spaced(len(videos), p.eval_clips)]
    for step in range(stop_after):
        image_step = len(images) and p.image_every and step % p.image_every == p.image_every - 1
        frames = next(image_batches if image_step else video_batches)
        if p.augment:
            rng = np.random.default_rng(step_seed(params.seed, step))  # as the stage draws them
            frames = augment(frames, rng, p.augment_max_zoom, p.augment_colour_orders)
        x = to_model_input(frames)
        started = time.process_time()
        models.generator.train()
        train_step(models, models.generator, models.discriminator, x, step, p)
        cpu_seconds += time.process_time() - started
        if (step + 1) % eval_every == 0 or step + 1 == stop_after:
            raw = reconstruct_clips(models.generator, val, "cpu")["psnr"]
            ema = reconstruct_clips(models.ema.shadow, val, "cpu")["psnr"]
            train = reconstruct_clips(models.ema.shadow, train_probe, "cpu")["psnr"]
            curve.append((step + 1, cpu_seconds, raw, ema))
            print(f"  step {step + 1:5d}  cpu {cpu_seconds:7.0f} s  val PSNR raw {raw:5.2f}  "
                  f"ema {ema:5.2f}  (train clips, ema: {train:5.2f})", flush=True)  # fmt: skip
    return curve, models.ema.shadow, val


def test_figures(model: MagvitTokenizer, clips_dir: Path) -> dict[str, float]:
    figures = {}
    for name, clips in held_out_sets(clips_dir, "test").items():
        result = reconstruct_clips(model, clips, "cpu")
        figures[f"{name}_psnr"] = result["psnr"]
        figures[f"{name}_utilisation"] = result["codebook_utilisation"]
        if result["tokens"].shape[1] > 1:  # images have one latent frame
            figures[f"{name}_same_as_prev_frame"] = same_as_previous_frame(result["tokens"])
    return figures


def same_as_previous_frame(tokens: np.ndarray) -> float:
    """Share of tokens [N, t, h, w] equal to the token at their position one latent frame
    earlier: what copying scores for the MLM, a proxy for how predictable the tokens are."""
    return float((tokens[:, 1:] == tokens[:, :-1]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--clips", default="data/clips")
    parser.add_argument("--steps", type=int, help="training steps (default: the profile's)")
    parser.add_argument("--stop-after", type=int, help="stop after this many steps of the "
                        "schedule, e.g. the first 500 of the profile's (default: all)")  # fmt: skip
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--variant", action="append", default=[], help="NAME=JSON params")
    parser.add_argument("--no-profile", action="store_true", help="run the variants only")
    parser.add_argument("--pictures", type=Path, help="folder for NAME.png: val clips above "
                        "their reconstructions by each run's EMA weights")  # fmt: skip
    args = parser.parse_args()
    if args.stop_after is not None and args.stop_after < 1:
        parser.error(f"--stop-after {args.stop_after}: must be at least 1")

    base = yaml.safe_load(Path(args.params).read_text())
    variants = [] if args.no_profile else [("profile", base)]
    for spec in args.variant:
        name, _, update = spec.partition("=")
        variants.append((name, merged(base, json.loads(update))))
    results = {}
    for name, raw_params in variants:
        params = Params.model_validate(raw_params)
        steps = args.steps or params.train_tokenizer.steps
        stop_after = min(args.stop_after or steps, steps)
        print(f"{name}: {stop_after} of {steps} steps", flush=True)
        curve, model, val = run_variant(
            params, Path(args.clips), steps, args.eval_every, args.threads, stop_after
        )
        recon = reconstruct_clips(model, val, "cpu")["recon"]
        per_frame = [psnr(val[:, f], recon[:, f]) for f in range(val.shape[1])]
        print("  val PSNR per frame: " + " ".join(f"{v:.1f}" for v in per_frame), flush=True)
        if args.pictures:
            args.pictures.mkdir(parents=True, exist_ok=True)
            recon = reconstruct_clips(model, val, "cpu")["recon"]
            picks = np.linspace(0, len(val) - 1, 4).astype(int)
            grid = video_grid(val[picks], recon[picks])
            Image.fromarray(grid).save(args.pictures / f"{name}.png")
        results[name] = (curve, test_figures(model.eval(), Path(args.clips)))

    print("\nval PSNR (EMA) by step; CPU seconds in brackets")
    for name, (curve, _) in results.items():
        points = "  ".join(f"{s}: {ema:.2f} ({sec:.0f} s)" for s, sec, _, ema in curve)
        print(f"{name:>16}  {points}")
    print("\nheld-out test, EMA weights")
    for name, (_, figures) in results.items():
        print(f"{name:>16}  " + "  ".join(f"{k} {v:.3f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
