"""Stage `train_mlm`: train the masked token model on token shards, record it in MLflow.

The driver reads the train token grids and deals them to the Ray Train workers through Ray's
object store; trains with magvit.training.mlm_loop, and writes artifacts/mlm/ (config.json +
model.safetensors + metrics.json), sample GIFs per class and for frame prediction in
artifacts/mlm/samples/, and the curves (DVC plots) as CSVs in one folder, each holding only the
steps where its metrics were logged: train.csv (loss and accuracy), val.csv (accuracy at the
evaluation steps). A killed run resumes from its last checkpoint when the stage is run again.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from magvit.cli import MODEL_FOLDER, TOKEN_FOLDER, require_path, run_stage
from magvit.formats.corpus_manifest import class_names
from magvit.formats.files import atomic_folders
from magvit.formats.token_shards import token_shard_paths
from magvit.logs import configure_logging
from magvit.media.video_encode import write_gif
from magvit.params import Params, load_params
from magvit.runtime.mlflow_models import MLMPyfunc
from magvit.runtime.mlflow_tracking import mean_metric, write_metric_curves
from magvit.sampling import class_samples, predict_frames, sampler_config, tile_clips
from magvit.training.mlm_loop import masked_token_metrics, to_token_tensors, train_loop
from magvit.training.progress import ProgressSpec
from magvit.training.ray_harness import (
    finish_training,
    fit,
    loop_config,
    start_training_run,
    worker_shards,
)
from models.mlm import MaskedTokenTransformer
from models.tokenizer import MagvitTokenizer

log = logging.getLogger("train_mlm")
EXPERIMENT = "magvit2-mlm"
REGISTERED_MODEL = "magvit2-mlm"
TRAIN_CURVES = ("loss/masked_tokens", "train/masked_accuracy")  # at every log step
VAL_CURVES = ("val/class_accuracy",)  # at the evaluation steps
PROGRESS = ProgressSpec(
    "train_mlm", "loss/masked_tokens",
    {"loss": "loss/masked_tokens", "val acc": "val/class_accuracy"},
)  # fmt: skip


def token_table(tokens_dir: Path, split: str, grid):
    """The rows of one split whose grid is `grid` (images, T = 1, have another grid)."""
    paths = token_shard_paths(tokens_dir, split)
    if not paths:
        raise FileNotFoundError(f"no token shards under {tokens_dir}/{split}; run tokenize first")
    table = pq.read_table(
        paths, columns=["clip_id", "label", "grid_t", "grid_h", "grid_w", "tokens"]
    )
    t, h, w = grid
    keep = pc.and_(
        pc.and_(pc.equal(table["grid_t"], t), pc.equal(table["grid_h"], h)),
        pc.equal(table["grid_w"], w),
    )
    return table.filter(keep), paths


def write_samples(
    mlm, tokenizer, params: Params, names: list[str], val_tokens, out_dir: Path
) -> dict:
    """A GIF per class (samples side by side) and frame-prediction GIFs from val clips."""
    train = params.train_mlm
    config = sampler_config(train.sampling)
    written = {}
    for class_id, name in enumerate(names):
        count = train.sampling.samples_per_class
        videos = class_samples(
            mlm, tokenizer, class_id, count, config, params.seed + class_id * count
        )
        path = out_dir / f"class_{class_id:02d}_{name}.gif"
        write_gif(tile_clips(videos), path, params.decode.fps)
        written[name] = path
    t, h, w = mlm.config.grid
    for index, tokens in enumerate(val_tokens[:2]):
        grid_tokens = tokens.reshape(1, t, h, w)
        original = tokenizer.decode(grid_tokens).numpy()[0]
        predicted = predict_frames(
            mlm, tokenizer, original, train.condition_frames, 3, config, params.seed
        )
        path = out_dir / f"frame_prediction_{index}.gif"
        write_gif(tile_clips(np.concatenate([original[None], predicted])), path, params.decode.fps)
        written[f"frame_prediction_{index}"] = path
    return written


def run(
    params_path: str,
    tokens_dir: Path,
    tokenizer_dir: Path,
    classes_json: Path,
    out_dir: Path,
    samples_dir: Path,
    curves_dir: Path,
) -> dict:
    params = load_params(params_path)
    tokenizer = MagvitTokenizer.from_pretrained(tokenizer_dir).eval()
    config = params.mlm_config(tokenizer.config)
    train, ray_train = params.train_mlm, params.ray.train
    train_table, train_paths = token_table(tokens_dir, "train", config.grid)
    val_table, _ = token_table(tokens_dir, "val", config.grid)
    if train_table.num_rows == 0 or val_table.num_rows == 0:
        raise ValueError(f"no train or val token grids of shape {config.grid} in {tokens_dir}")

    run = start_training_run(
        "mlm", EXPERIMENT, train, config, params.seed, train_paths, ray_train,
        cadence_keys={"log_every", "eval_every", "sampling"},
    )  # fmt: skip
    val_tokens, val_labels = to_token_tensors(
        val_table["tokens"].to_pylist(), val_table["label"].to_pylist(), config.num_classes
    )
    train_tokens, train_labels = to_token_tensors(
        train_table["tokens"].to_pylist(), train_table["label"].to_pylist(), config.num_classes
    )
    shards = worker_shards(
        {"tokens": train_tokens.numpy(), "labels": train_labels.numpy()}, ray_train.num_workers
    )
    val = (val_tokens.numpy(), val_labels.numpy())
    loop = loop_config(run, train, config, params.seed, ray_train, shards, val=val)
    state = fit(train_loop, loop, ray_train, train.storage_path, run.key, PROGRESS)

    mlm = MaskedTokenTransformer(config)
    mlm.load_state_dict(state["model"])
    mlm.eval()
    condition = train.condition_frames * config.grid[1] * config.grid[2]
    scores = masked_token_metrics(mlm, val_tokens, val_labels, condition, params.seed)
    metrics = {k.replace("val/", "val_"): round(v, 4) for k, v in scores.items()}
    metrics["tokens_per_s"] = mean_metric(run.client, run.mlflow_run_id, "tokens_per_s")

    torch.manual_seed(params.seed)
    names = class_names(classes_json, params.validate_clips.num_classes)
    # the folders are built beside the old ones and replace them when complete (samples
    # inside out_dir come in with it)
    with atomic_folders(out_dir, samples_dir, curves_dir) as (model_dir, samples_new, curves):
        samples = write_samples(mlm, tokenizer, params, names, val_tokens, samples_new)
        for path in samples.values():
            run.client.log_artifact(run.mlflow_run_id, str(path), "samples")
        metrics = finish_training(
            run, mlm, model_dir, metrics, TRAIN_CURVES, curves / "train.csv", MLMPyfunc(),
            REGISTERED_MODEL, state["step"],
        )  # fmt: skip
        write_metric_curves(run.client, run.mlflow_run_id, VAL_CURVES, curves / "val.csv")
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("--tokens", required=True, help="token shard folder")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory")
    parser.add_argument("--classes", required=True, help="classes.json of the corpus")
    parser.add_argument("--out", required=True, help="model directory (replaced when complete)")
    parser.add_argument("--samples", required=True, help="folder for sample GIFs (replaced)")
    parser.add_argument(
        "--curves", required=True, help="folder of the curve CSVs (DVC plots; replaced)"
    )
    args = parser.parse_args(argv)
    tokens = require_path("--tokens", Path(args.tokens), TOKEN_FOLDER)
    tokenizer = require_path("--tokenizer", Path(args.tokenizer), MODEL_FOLDER)
    configure_logging()
    run(
        args.params, tokens, tokenizer, Path(args.classes), Path(args.out),
        Path(args.samples), Path(args.curves),
    )  # fmt: skip


if __name__ == "__main__":
    run_stage(main)
