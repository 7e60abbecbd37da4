"""Tokenizer training throughput with 1 and 2 Ray Train workers on the same clips.

    python benchmarks/train_scaling.py [--steps 40] [--clips data/clips]

Runs the train_tokenizer stage twice in a scratch folder (its own MLflow SQLite file and
run storage) with `ray.train.num_workers` = 1 and 2 and the repo's params otherwise, and
prints the mean clips/s the workers logged, leaving out the first logging window (start-up).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from magvit.runtime.ray_cluster import init_ray
from stages.train_tokenizer import run


def clips_per_s(workspace: Path, run_id: str) -> float:
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    history = client.get_metric_history(run_id, "clips_per_s")[1:]
    return sum(m.value for m in history) / len(history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--clips", default="data/clips", help="clip shards (run decode first)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = yaml.safe_load(Path(args.params).read_text())
    params["train_tokenizer"] |= {
        "steps": args.steps, "warmup_steps": 5, "log_every": 5, "eval_every": args.steps,
        "checkpoint_every": args.steps, "image_log_every": args.steps,
        "disc_start_step": args.steps // 2,
    }  # fmt: skip
    init_ray(num_cpus=3)  # from the repo folder: Ray's processes keep this working directory
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            workspace = Path(tmp) / f"workers-{workers}"
            shutil.copytree(args.clips, workspace / "data" / "clips")
            params["ray"]["train"]["num_workers"] = workers
            params["train_tokenizer"]["storage_path"] = str(workspace / "runs")
            (workspace / "params.yaml").write_text(yaml.safe_dump(params))
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workspace / 'mlflow.db'}"
            with contextlib.chdir(workspace):
                out = Path("artifacts/tokenizer")
                metrics = run("params.yaml", Path("data/clips"), out, out / "curves.csv")
            rates[workers] = clips_per_s(workspace, metrics["mlflow_run_id"])
    print(f"{'workers':>8} {'clips/s':>9}")
    for workers, rate in rates.items():
        print(f"{workers:>8} {rate:9.2f}")
    print(f"speed-up with 2 workers: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
