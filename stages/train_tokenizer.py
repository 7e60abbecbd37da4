"""Stage `train_tokenizer`: train the MAGVIT-v2 tokenizer on Ray Train, record it in MLflow.

The driver reads the train clips and deals them to the workers through Ray's object store;
trains with the recipe in magvit.training.tokenizer_loop, and exports the final EMA weights to
artifacts/tokenizer/ (config.json + model.safetensors), with metrics.json (DVC metrics) and the
curves (DVC plots) as CSVs in one folder, each holding only the steps where its metrics were
logged: train.csv (losses), gan.csv (GAN losses, header only when no GAN trained), val.csv
(validation PSNR at the evaluation steps). A killed run resumes from its last checkpoint when
the stage is run again.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from einops import rearrange

from magvit.cli import CLIP_FOLDER, require_path, run_stage
from magvit.evaluation.reconstruction import reconstruct_clips
from magvit.formats.clip_shards import (
    clip_frames,
    evenly_spaced,
    held_out_sets,
    load_clips,
    shard_paths,
)
from magvit.formats.files import atomic_folders
from magvit.logs import configure_logging
from magvit.params import check_clip_shape, load_params
from magvit.runtime.mlflow_models import TokenizerPyfunc
from magvit.runtime.mlflow_tracking import mean_metric, write_metric_curves
from magvit.training.progress import ProgressSpec
from magvit.training.ray_harness import (
    finish_training,
    fit,
    loop_config,
    start_training_run,
    worker_shards,
)
from magvit.training.tokenizer_loop import train_loop
from models.tokenizer import MagvitTokenizer

log = logging.getLogger("train_tokenizer")
EXPERIMENT = "magvit2-tokenizer"
REGISTERED_MODEL = "magvit2-tokenizer"
TRAIN_CURVES = ("loss/recon", "loss/commitment", "loss/entropy")  # at every log step
GAN_CURVES = ("loss/g_adv", "loss/d_hinge")  # from disc_start_step, when gan_weight > 0
VAL_CURVES = ("val/psnr",)  # at the evaluation steps
PROGRESS = ProgressSpec(
    "train_tokenizer", "loss/recon", {"recon": "loss/recon", "val PSNR": "val/psnr"}
)


def evaluation_clips(clips_dir: Path, count: int) -> np.ndarray:
    """Validation videos for in-training evaluation, spread across the split."""
    rows = load_clips(clips_dir, "val", lambda r: r["num_frames"] > 1)
    if not rows:
        raise ValueError(f"no validation video clips under {clips_dir}/val")
    return np.stack([clip_frames(rows[i]) for i in evenly_spaced(len(rows), count)])


def stacked_clips(rows: list[dict], kind: str) -> np.ndarray:
    """uint8 [N, T, H, W, 3] of clip rows that must share one shape."""
    shapes = sorted({(r["num_frames"], r["height"], r["width"]) for r in rows})
    if len(shapes) > 1:
        raise ValueError(f"train {kind} of several shapes (T, H, W) {shapes}; decode makes one")
    return np.stack([clip_frames(row) for row in rows])


def training_arrays(train_shards: list[Path], frames_as_images: bool) -> dict[str, np.ndarray]:
    """The train videos uint8 [N, T, H, W, 3] and (when there are any) images [M, 1, H, W, 3]:
    the stills and, with `frames_as_images`, every frame of the videos, clip after clip.
    Rows keep file order."""
    table = pq.read_table(train_shards, columns=["num_frames", "height", "width", "frames"])
    rows = table.to_pylist()
    videos = [row for row in rows if row["num_frames"] > 1]
    stills = [row for row in rows if row["num_frames"] == 1]
    if not videos:
        raise ValueError(f"no train video clips in {len(train_shards)} shard(s)")
    arrays = {"videos": stacked_clips(videos, "videos")}
    images = [stacked_clips(stills, "images")] if stills else []
    if frames_as_images:
        images.append(rearrange(arrays["videos"], "n t h w c -> (n t) 1 h w c"))
    if images:
        arrays["images"] = np.concatenate(images)
    return arrays


def final_metrics(model: MagvitTokenizer, init: MagvitTokenizer, clips_dir: Path) -> dict:
    """Test-split reconstruction quality by kind, for the trained and the untrained model."""
    metrics = {}
    for name, clips in held_out_sets(clips_dir, "test").items():
        trained, untrained = (
            reconstruct_clips(model, clips, "cpu"),
            reconstruct_clips(init, clips, "cpu"),
        )
        metrics |= {
            f"test_{name}_psnr": round(trained["psnr"], 3),
            f"test_{name}_ssim": round(trained["ssim"], 4),
            f"test_{name}_psnr_untrained": round(untrained["psnr"], 3),
            f"test_{name}_codebook_utilisation": round(trained["codebook_utilisation"], 4),
            f"test_{name}_perplexity": round(trained["perplexity"], 2),
            f"test_{name}_clips": len(clips),
        }
    return metrics


def run(params_path: str, clips_dir: Path, out_dir: Path, curves_dir: Path) -> dict:
    params = load_params(params_path)
    model_config = params.tokenizer.config()
    check_clip_shape(params, model_config)
    train, ray_train = params.train_tokenizer, params.ray.train
    train_shards = shard_paths(clips_dir, "train")
    if not train_shards:
        raise FileNotFoundError(f"no train clip shards under {clips_dir}/train; run decode first")

    run = start_training_run(
        "tokenizer", EXPERIMENT, train, model_config, params.seed, train_shards, ray_train,
        cadence_keys={"log_every", "eval_every", "image_log_every"},
    )  # fmt: skip
    arrays = training_arrays(train_shards, train.frames_as_images)
    shards = worker_shards(arrays, ray_train.num_workers)
    val_clips = evaluation_clips(clips_dir, train.eval_clips)
    loop = loop_config(
        run, train, model_config, params.seed, ray_train, shards, val_clips=val_clips
    )
    state = fit(train_loop, loop, ray_train, train.storage_path, run.key, PROGRESS)

    model = MagvitTokenizer(model_config)
    model.load_state_dict(state["ema"])
    torch.manual_seed(params.seed)  # the same draw as the workers' initial weights
    untrained = MagvitTokenizer(model_config).eval()
    metrics = final_metrics(model.eval(), untrained, clips_dir)
    metrics["clips_per_s"] = mean_metric(run.client, run.mlflow_run_id, "clips_per_s")
    # both folders are built beside the old ones and replace them when complete
    with atomic_folders(out_dir, curves_dir) as (model_dir, curves):
        metrics = finish_training(
            run, model, model_dir, metrics, TRAIN_CURVES, curves / "train.csv",
            TokenizerPyfunc(), REGISTERED_MODEL, state["step"],
        )  # fmt: skip
        write_metric_curves(run.client, run.mlflow_run_id, GAN_CURVES, curves / "gan.csv")
        write_metric_curves(run.client, run.mlflow_run_id, VAL_CURVES, curves / "val.csv")
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("--clips", required=True, help="clip shard folder")
    parser.add_argument("--out", required=True, help="model directory (replaced when complete)")
    parser.add_argument(
        "--curves", required=True, help="folder of the curve CSVs (DVC plots; replaced)"
    )
    args = parser.parse_args(argv)
    clips = require_path("--clips", Path(args.clips), CLIP_FOLDER)
    configure_logging()
    run(args.params, clips, Path(args.out), Path(args.curves))


if __name__ == "__main__":
    run_stage(main)
