"""The Ray Train harness shared by the training stages (tokenizer, MLM).

Driver side: `fit` runs a `TorchTrainer` (DDP: gloo on CPU, nccl on GPU) under a run name
derived from everything that defines the run, so re-running a killed stage resumes from
its last checkpoint, while changed params or data start a new run. Worker side:
`latest_state` / `report_step` save and restore a plain dict of state, and `RankZeroLogger`
writes MLflow metrics and images from rank 0 only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import ray.data
import ray.train
import torch
from mlflow.tracking import MlflowClient
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from stages.mlflow_tracking import start_or_resume_run, tracking_uri
from stages.params import RayTrainParams
from stages.ray_runtime import init_ray

log = logging.getLogger("ray_training")
STATE_FILE = "state.pt"


def run_key(prefix: str, *parts: object) -> str:
    """A stable name for a training run: prefix + hash of its params and data fingerprint."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return f"{prefix}-{hashlib.sha1(blob).hexdigest()[:12]}"


def files_fingerprint(paths: list[Path]) -> str:
    """Hash of the files' bytes: the data identity that decides whether a run can resume."""
    digest = hashlib.sha1()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def storage_uri(path: str) -> str:
    """A URI (s3://, gs://...) stays as it is; a local path becomes absolute."""
    return path if "://" in path else str(Path(path).resolve())


@dataclass(frozen=True)
class TrainingRun:
    key: str  # Ray Train run name: resuming reuses it
    mlflow_run_id: str
    tracking_uri: str
    client: MlflowClient


def start_training_run(
    prefix: str, experiment: str, definition: tuple, params: dict, ray_params: RayTrainParams
) -> TrainingRun:
    """Join Ray and open (or reopen, after a kill) the MLflow run for this definition.

    `definition` is everything that makes two runs the same run (params, seed, data hash).
    """
    key = run_key(prefix, *definition)
    # a local instance needs a spare CPU beside the workers for Ray Data's tasks
    needed = int(ray_params.num_workers * ray_params.cpus_per_worker) + 1
    init_ray(num_cpus=max(os.cpu_count() or 1, needed))
    ray.data.DataContext.get_current().enable_progress_bars = False  # one bar per epoch
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    run_id = start_or_resume_run(client, experiment, key, params)
    log.info("run %s (MLflow run %s, tracking %s)", key, run_id, uri)
    return TrainingRun(key, run_id, uri, client)


def final_state(result: ray.train.Result) -> dict:
    """The state dict saved with the last checkpoint of a finished fit."""
    with result.checkpoint.as_directory() as directory:
        return load_state_file(directory)


def fit(
    train_loop,
    loop_config: dict,
    datasets: dict,
    ray_params: RayTrainParams,
    storage_path: str,
    name: str,
) -> ray.train.Result:
    """Run `train_loop(config)` on `ray_params.num_workers` workers; resume `name` if it exists."""
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if ray_params.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=ray_params.num_workers,
            use_gpu=ray_params.use_gpu,
            resources_per_worker={"CPU": ray_params.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_uri(storage_path),
            failure_config=FailureConfig(max_failures=ray_params.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=ray_params.checkpoints_to_keep),
        ),
        datasets=datasets,
    )
    return trainer.fit()


# ----------------------------------------------------------------------------- worker side


def is_rank_zero() -> bool:
    return ray.train.get_context().get_world_rank() == 0


def latest_state(map_location: str | torch.device = "cpu") -> dict | None:
    """The state dict of the last reported checkpoint, or None for a fresh run."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return torch.load(
            Path(directory) / STATE_FILE, map_location=map_location, weights_only=False
        )


def load_state_file(checkpoint_dir: str | Path) -> dict:
    return torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=False)


def report_step(metrics: dict, state: dict | None) -> None:
    """Report metrics from every rank; with `state`, rank 0 also saves it as a checkpoint.

    Every rank must call this at the same steps (Ray Train synchronises on report).
    """
    if state is None or not is_rank_zero():
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as directory:
        torch.save(state, Path(directory) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def endless_batches(shard, batch_size: int, seed: int, drop_last: bool = True) -> Iterator[dict]:
    """Numpy batches from this worker's Ray Data shard, epoch after epoch, reshuffled."""
    epoch = 0
    while True:
        produced = False
        for batch in shard.iter_batches(
            batch_size=batch_size,
            batch_format="numpy",
            drop_last=drop_last,
            local_shuffle_buffer_size=4 * batch_size,
            local_shuffle_seed=seed + epoch,
        ):
            produced = True
            yield batch
        if not produced:
            raise ValueError(
                f"this worker's data shard holds fewer than batch_size={batch_size} rows; "
                "lower the batch size or the number of workers"
            )
        epoch += 1


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])


class RankZeroLogger:
    """MLflow logging from rank 0 of a Ray Train job; a no-op on every other rank."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.active = is_rank_zero()
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri) if self.active else None

    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.active:
            for key, value in values.items():
                self.client.log_metric(self.run_id, key, float(value), step=step)

    def image(self, image: np.ndarray, key: str, step: int) -> None:
        if self.active:
            self.client.log_image(self.run_id, image, key=key, step=step)

    def text(self, text: str, artifact_file: str) -> None:
        if self.active:
            self.client.log_text(self.run_id, text, artifact_file)
