"""Stage `train_mlm`: train the masked token model on token shards, record it in MLflow.

Reads the train token grids with Ray Data (split across Ray Train workers), trains with
stages.mlm_training, and writes artifacts/mlm/ (config.json + model.safetensors +
metrics.json) and sample GIFs per class and for frame prediction in artifacts/mlm/samples/.
A killed run resumes from its last checkpoint when the stage is run again.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data
import torch

from models.mlm import MaskedTokenTransformer
from models.tokenizer import MagvitTokenizer
from stages.generation import class_samples, predict_frames, sampler_config, tile_clips, write_gif
from stages.logs import configure_logging
from stages.mlflow_models import MLMPyfunc, register_model_dir
from stages.mlflow_tracking import log_final_metrics, mean_metric, write_metric_curves
from stages.mlm_training import evaluate, to_token_tensors, train_loop
from stages.params import Params, load_params
from stages.ray_training import files_fingerprint, final_state, fit, start_training_run

log = logging.getLogger("train_mlm")
TOKENS_DIR = Path("data/tokens")
TOKENIZER_DIR = Path("artifacts/tokenizer")
OUT_DIR = Path("artifacts/mlm")
SAMPLES_DIR = Path("artifacts/mlm/samples")
PLOTS = Path("artifacts/mlm_plots/curves.csv")
EXPERIMENT = "magvit2-mlm"
REGISTERED_MODEL = "magvit2-mlm"
CURVES = ("loss/masked_tokens", "train/masked_accuracy", "val/class_accuracy")


def model_config(params: Params, tokenizer: MagvitTokenizer):
    grid = tokenizer.config.latent_shape(
        params.decode.num_frames, params.decode.crop_size, params.decode.crop_size
    )
    return params.mlm.config(tokenizer.config.bits, grid, params.validate_clips.num_classes)


def grid_filter(grid) -> str:
    t, h, w = grid
    return f"grid_t == {t} and grid_h == {h} and grid_w == {w}"


def token_table(tokens_dir: Path, split: str, grid):
    """The rows of one split whose grid is `grid` (images, T = 1, have another grid)."""
    paths = sorted((tokens_dir / split).glob("part-*.parquet"))
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


def write_samples(mlm, tokenizer, params: Params, val_tokens, out_dir: Path) -> dict:
    """A GIF per class (samples side by side) and frame-prediction GIFs from val clips."""
    train = params.train_mlm
    config = sampler_config(train.sampling)
    names = _class_names(params.validate_clips.num_classes)
    written = {}
    for class_id, name in enumerate(names):
        videos = class_samples(
            mlm, tokenizer, class_id, train.sampling.samples_per_class, config, params.seed
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


def _class_names(count: int) -> list[str]:
    classes = Path("data/raw/classes.json")
    names = json.loads(classes.read_text()) if classes.is_file() else []
    return [names[i] if i < len(names) else f"class{i}" for i in range(count)]


def run(
    params_path: str = "params.yaml",
    tokens_dir: Path = TOKENS_DIR,
    tokenizer_dir: Path = TOKENIZER_DIR,
    out_dir: Path = OUT_DIR,
    samples_dir: Path = SAMPLES_DIR,
) -> dict:
    params = load_params(params_path)
    tokenizer = MagvitTokenizer.from_pretrained(tokenizer_dir).eval()
    config = model_config(params, tokenizer)
    train = params.train_mlm
    train_table, train_paths = token_table(tokens_dir, "train", config.grid)
    val_table, _ = token_table(tokens_dir, "val", config.grid)
    if train_table.num_rows == 0 or val_table.num_rows == 0:
        raise ValueError(f"no train or val token grids of shape {config.grid} in {tokens_dir}")

    ray_train = params.ray.train
    flat = {f"train.{k}": v for k, v in train.model_dump().items()}
    flat |= {f"model.{k}": v for k, v in config.to_dict().items()} | {"seed": params.seed}
    definition = (
        config.to_dict(),
        train.model_dump(exclude={"log_every", "eval_every", "sampling"}),
        params.seed,
        files_fingerprint(train_paths),
    )
    run = start_training_run("mlm", EXPERIMENT, definition, flat, ray_train)

    no_label = config.num_classes
    val_tokens, val_labels = to_token_tensors(
        val_table["tokens"].to_pylist(), val_table["label"].to_pylist(), no_label
    )
    datasets = {
        "tokens": ray.data.read_parquet([str(p.resolve()) for p in train_paths])
        .select_columns(["label", "grid_t", "grid_h", "grid_w", "tokens"])
        .filter(expr=grid_filter(config.grid))
        .materialize()
    }
    loop_config = {
        "train": train.model_dump(),
        "model": config.to_dict(),
        "seed": params.seed,
        "cpus_per_worker": ray_train.cpus_per_worker,
        "tracking_uri": run.tracking_uri,
        "mlflow_run_id": run.mlflow_run_id,
        "val": (val_tokens.numpy(), val_labels.numpy()),
    }
    result = fit(train_loop, loop_config, datasets, ray_train, train.storage_path, run.key)
    state = final_state(result)

    mlm = MaskedTokenTransformer(config)
    mlm.load_state_dict(state["model"])
    mlm.eval().save_pretrained(out_dir)
    condition = train.condition_frames * config.grid[1] * config.grid[2]
    client, run_id = run.client, run.mlflow_run_id
    metrics = {"steps": state["step"], "run_key": run.key, "mlflow_run_id": run_id}
    metrics |= {
        k.replace("val/", "val_"): round(v, 4)
        for k, v in evaluate(mlm, val_tokens, val_labels, condition, params.seed).items()
    }
    metrics["tokens_per_s"] = mean_metric(client, run_id, "tokens_per_s")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_metric_curves(client, run_id, CURVES, PLOTS)
    log_final_metrics(client, run_id, metrics, state["step"])

    torch.manual_seed(params.seed)
    samples = write_samples(mlm, tokenizer, params, val_tokens, samples_dir)
    for path in samples.values():
        client.log_artifact(run_id, str(path), "samples")
    client.log_artifact(run_id, str(out_dir / "metrics.json"))
    version = register_model_dir(run_id, out_dir, REGISTERED_MODEL, MLMPyfunc())
    log.info("mlm -> %s, registered %s v%s: %s", out_dir, REGISTERED_MODEL, version, metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("--tokens", default=str(TOKENS_DIR), help="token shard folder")
    parser.add_argument("--tokenizer", default=str(TOKENIZER_DIR), help="tokenizer directory")
    parser.add_argument("--out", default=str(OUT_DIR), help="model directory to write")
    parser.add_argument("--samples", default=str(SAMPLES_DIR), help="folder for sample GIFs")
    args = parser.parse_args(argv)
    configure_logging()
    run(args.params, Path(args.tokens), Path(args.tokenizer), Path(args.out), Path(args.samples))


if __name__ == "__main__":
    main()
