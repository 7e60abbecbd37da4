"""Stage `train_tokenizer`: train the MAGVIT-v2 tokenizer on Ray Train, record it in MLflow.

Reads the train clips with Ray Data (split across workers), trains with the recipe in
stages.tokenizer_training, and exports the final EMA weights to artifacts/tokenizer/
(config.json + model.safetensors), with metrics.json (DVC metrics) and the training curves
(DVC plots). A killed run resumes from its last checkpoint when the stage is run again.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray.data
import torch

from models.tokenizer import MagvitTokenizer
from stages.clip_shards import clip_frames, held_out_sets, load_clips, shard_paths
from stages.logs import configure_logging
from stages.mlflow_models import TokenizerPyfunc, register_model_dir
from stages.mlflow_tracking import log_final_metrics, mean_metric, write_metric_curves
from stages.params import check_clip_shape, load_params
from stages.ray_training import files_fingerprint, final_state, fit, start_training_run
from stages.tokenizer_training import evaluate, train_loop

log = logging.getLogger("train_tokenizer")
CLIPS_DIR = Path("data/clips")
OUT_DIR = Path("artifacts/tokenizer")
PLOTS = Path("artifacts/tokenizer_plots/curves.csv")
EXPERIMENT = "magvit2-tokenizer"
REGISTERED_MODEL = "magvit2-tokenizer"
CURVES = ("loss/recon", "loss/commitment", "loss/entropy", "loss/g_adv", "loss/d_hinge", "val/psnr")


def evaluation_clips(clips_dir: Path, count: int) -> np.ndarray:
    """Validation videos for in-training evaluation, spread across the split."""
    rows = load_clips(clips_dir, "val", lambda r: r["num_frames"] > 1)
    if not rows:
        raise ValueError(f"no validation video clips under {clips_dir}/val")
    picks = np.linspace(0, len(rows) - 1, min(count, len(rows))).round().astype(int)
    return np.stack([clip_frames(rows[i]) for i in sorted(set(picks))])


def training_datasets(train_shards: list[Path]) -> tuple[dict, bool]:
    """Ray Datasets of train videos and (when present) images, materialised once."""
    columns = ["num_frames", "height", "width", "frames"]
    counts = pq.read_table(train_shards, columns=["num_frames"]).column(0).to_numpy()
    base = ray.data.read_parquet([str(p.resolve()) for p in train_shards]).select_columns(columns)
    datasets = {"videos": base.filter(expr="num_frames > 1").materialize()}
    has_images = bool((counts == 1).sum())
    if has_images:
        datasets["images"] = base.filter(expr="num_frames == 1").materialize()
    return datasets, has_images


def final_metrics(model: MagvitTokenizer, init: MagvitTokenizer, clips_dir: Path) -> dict:
    """Test-split reconstruction quality by kind, for the trained and the untrained model."""
    metrics = {}
    for name, clips in held_out_sets(clips_dir, "test").items():
        trained, untrained = evaluate(model, clips, "cpu"), evaluate(init, clips, "cpu")
        metrics |= {
            f"test_{name}_psnr": round(trained["psnr"], 3),
            f"test_{name}_ssim": round(trained["ssim"], 4),
            f"test_{name}_psnr_untrained": round(untrained["psnr"], 3),
            f"test_{name}_codebook_utilisation": round(trained["codebook_utilisation"], 4),
            f"test_{name}_perplexity": round(trained["perplexity"], 2),
            f"test_{name}_clips": len(clips),
        }
    return metrics


def run(params_path: str = "params.yaml", clips_dir: Path = CLIPS_DIR, out_dir: Path = OUT_DIR):
    params = load_params(params_path)
    model_config = params.tokenizer.config()
    check_clip_shape(params, model_config)
    train = params.train_tokenizer
    train_shards = shard_paths(clips_dir, "train")
    if not train_shards:
        raise FileNotFoundError(f"no train clip shards under {clips_dir}/train; run decode first")

    ray_train = params.ray.train
    flat = {f"train.{k}": v for k, v in train.model_dump().items()}
    flat |= {f"model.{k}": v for k, v in model_config.to_dict().items()}
    flat |= {f"ray.{k}": v for k, v in ray_train.model_dump().items()} | {"seed": params.seed}
    definition = (
        model_config.to_dict(),
        train.model_dump(exclude={"log_every", "eval_every", "image_log_every"}),
        params.seed,
        files_fingerprint(train_shards),
    )
    run = start_training_run("tokenizer", EXPERIMENT, definition, flat, ray_train)

    datasets, has_images = training_datasets(train_shards)
    loop_config = {
        "train": train.model_dump(),
        "model": model_config.to_dict(),
        "seed": params.seed,
        "cpus_per_worker": ray_train.cpus_per_worker,
        "tracking_uri": run.tracking_uri,
        "mlflow_run_id": run.mlflow_run_id,
        "has_images": has_images,
        "val_clips": evaluation_clips(clips_dir, train.eval_clips),
    }
    result = fit(train_loop, loop_config, datasets, ray_train, train.storage_path, run.key)
    state = final_state(result)

    model = MagvitTokenizer(model_config)
    model.load_state_dict(state["ema"])
    model.eval().save_pretrained(out_dir)
    torch.manual_seed(params.seed)  # the same draw as the workers' initial weights
    untrained = MagvitTokenizer(model_config).eval()

    client, run_id = run.client, run.mlflow_run_id
    metrics = {"steps": state["step"], "run_key": run.key, "mlflow_run_id": run_id}
    metrics |= final_metrics(model, untrained, clips_dir)
    metrics["clips_per_s"] = mean_metric(client, run_id, "clips_per_s")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_metric_curves(client, run_id, CURVES, PLOTS)
    log_final_metrics(client, run_id, metrics, state["step"])
    client.log_artifact(run_id, str(out_dir / "metrics.json"))
    version = register_model_dir(run_id, out_dir, REGISTERED_MODEL, TokenizerPyfunc())
    log.info("tokenizer -> %s, registered %s v%s: %s", out_dir, REGISTERED_MODEL, version, metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    parser.add_argument("--clips", default=str(CLIPS_DIR), help="clip shard folder")
    parser.add_argument("--out", default=str(OUT_DIR), help="model directory to write")
    args = parser.parse_args(argv)
    configure_logging()
    run(args.params, Path(args.clips), Path(args.out))


if __name__ == "__main__":
    main()
