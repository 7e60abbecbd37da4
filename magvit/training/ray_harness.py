"""The Ray Train harness shared by the training stages (tokenizer, MLM).

One skeleton for both training stages. Driver side: `start_training_run` names the run by
everything that defines it and opens its MLflow run; `worker_shards` deals the training
arrays to the workers through Ray's object store; `fit` runs a `TorchTrainer` (DDP: gloo
on CPU, nccl on GPU) under that name, so re-running a killed stage resumes from its last
checkpoint while changed params or data start a new run; `finish_training` exports the
model, writes metrics and curves and registers the model. Worker side: `start_worker` sets
threads, seed, device and the rank-0 MLflow logger from the typed `LoopConfig`;
`resume` restores the last checkpoint; `worker_arrays` and `endless_batches` give the
worker its rows in a seeded order; `due` is the step cadence; `report_step` saves.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import ray.train
import ray.train.torch
import torch
from mlflow.tracking import MlflowClient
from pydantic import BaseModel
from ray.train import (
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchConfig, TorchTrainer

from magvit.formats.files import is_uri
from magvit.params import RayTrainParams
from magvit.runtime.mlflow_models import register_model_dir
from magvit.runtime.mlflow_tracking import (
    log_final_metrics,
    start_or_resume_run,
    tracking_uri,
    write_metric_curves,
)
from magvit.runtime.ray_cluster import (
    check_storage_on_every_node,
    check_tracking_for_cluster,
    init_ray,
)
from magvit.training.progress import ProgressSpec, training_progress
from models.pretrained import DictConfig, Pretrained

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
    return path if is_uri(path) else str(Path(path).resolve())


@dataclass(frozen=True)
class TrainingRun:
    key: str  # Ray Train run name: resuming reuses it
    mlflow_run_id: str
    tracking_uri: str
    client: MlflowClient


@dataclass(frozen=True)
class LoopConfig:
    """What the driver hands every worker's training loop (Ray pickles it)."""

    train: BaseModel  # the stage's params section (TrainTokenizerParams, TrainMLMParams)
    model: DictConfig  # the model's typed config
    seed: int
    cpus_per_worker: float
    tracking_uri: str
    mlflow_run_id: str
    shards: dict[str, list] = field(default_factory=dict)  # worker_shards: training arrays
    data: dict = field(default_factory=dict)  # what the loop needs from the driver (val data)


def start_training_run(
    prefix: str,
    experiment: str,
    train: BaseModel,
    model: DictConfig,
    seed: int,
    data_files: list[Path],
    ray_params: RayTrainParams,
    cadence_keys: set[str],
) -> TrainingRun:
    """Join Ray and open (or reopen, after a kill) the MLflow run for this definition.

    Two runs are the same run (the second resumes the first) when model config, training
    params other than `cadence_keys` (how often to log and evaluate), seed and the bytes of
    `data_files` agree. MLflow gets every param, flattened.
    """
    definition = (
        model.to_dict(),
        train.model_dump(exclude=cadence_keys),
        seed,
        files_fingerprint(data_files),
    )
    params = {f"train.{k}": v for k, v in train.model_dump().items()}
    params |= {f"model.{k}": v for k, v in model.to_dict().items()}
    params |= {f"ray.{k}": v for k, v in ray_params.model_dump().items()} | {"seed": seed}
    key = run_key(prefix, *definition)
    needed = int(ray_params.num_workers * ray_params.cpus_per_worker)
    init_ray(num_cpus=max(os.cpu_count() or 1, needed))
    uri = tracking_uri()
    check_tracking_for_cluster(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    run_id = start_or_resume_run(client, experiment, key, params)
    log.info("run %s (MLflow run %s, tracking %s)", key, run_id, uri)
    return TrainingRun(key, run_id, uri, client)


def final_state(result: ray.train.Result) -> dict:
    """The state dict saved with the last checkpoint of a finished fit."""
    with result.checkpoint.as_directory() as directory:
        return load_state_file(directory)


def loop_config(
    run: TrainingRun,
    train: BaseModel,
    model: DictConfig,
    seed: int,
    ray_params: RayTrainParams,
    shards: dict[str, list],
    **data,
) -> LoopConfig:
    return LoopConfig(
        train, model, seed, ray_params.cpus_per_worker, run.tracking_uri, run.mlflow_run_id,
        shards, data,
    )  # fmt: skip


def worker_shards(arrays: dict[str, np.ndarray], workers: int) -> dict[str, list]:
    """Each training array's rows dealt to the workers (row r to worker r % workers), one
    object in Ray's object store per worker and array: the driver read the data, so no
    worker needs its disk (on a cluster the objects travel to the workers' nodes), and each
    worker holds the same rows in every run, which makes its batches a function of seed and
    step alone (`endless_batches`): a resumed run trains on what the uninterrupted run did.
    Rows are dealt rather than cut into blocks so that every worker sees every source."""
    return {
        name: [ray.put(np.ascontiguousarray(rows[rank::workers])) for rank in range(workers)]
        for name, rows in arrays.items()
    }


def fit(
    train_loop: Callable[[dict], None],
    loop: LoopConfig,
    ray_params: RayTrainParams,
    storage_path: str,
    name: str,
    progress: ProgressSpec,
) -> dict:
    """Run `train_loop({"loop": loop})` on `ray_params.num_workers` workers, resuming `name`
    if it exists, with a progress bar of the `progress` metrics; return the state saved with
    the final checkpoint. On a cluster of several nodes, every node must see `storage_path`."""
    check_storage_on_every_node(storage_uri(storage_path), "storage_path")
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"loop": loop},
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
            # Train's INFO lines (each checkpoint, report and device move) stay in its log
            # files in Ray's session folder; the progress bar shows the run instead
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    with training_progress(loop.tracking_uri, loop.mlflow_run_id, loop.train.steps, progress):
        result = trainer.fit()
    return final_state(result)


def finish_training(
    run: TrainingRun,
    model: Pretrained,
    out_dir: Path,
    metrics: dict,
    curves: tuple[str, ...],
    curves_csv: Path,
    pyfunc: mlflow.pyfunc.PythonModel,
    registered_model: str,
    step: int,
) -> dict:
    """The wrap-up of a training stage: export the model, write metrics.json and the curves
    (DVC metrics and plots), log both to MLflow, register the model directory."""
    model.eval().save_pretrained(out_dir)
    metrics = {"steps": step, "run_key": run.key, "mlflow_run_id": run.mlflow_run_id} | metrics
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_metric_curves(run.client, run.mlflow_run_id, curves, curves_csv)
    log_final_metrics(run.client, run.mlflow_run_id, metrics, step)
    run.client.log_artifact(run.mlflow_run_id, str(out_dir / "metrics.json"))
    version = register_model_dir(run.mlflow_run_id, out_dir, registered_model, pyfunc)
    log.info("%s -> %s, registered v%s: %s", registered_model, out_dir, version, metrics)
    return metrics


# ----------------------------------------------------------------------------- worker side


def is_rank_zero() -> bool:
    return ray.train.get_context().get_world_rank() == 0


@dataclass(frozen=True)
class Worker:
    rank: int
    world: int
    device: torch.device
    logger: RankZeroLogger


def start_worker(loop: LoopConfig) -> Worker:
    """Threads, seed (identical initial weights on every rank), device and logger."""
    context = ray.train.get_context()
    torch.set_num_threads(max(1, int(loop.cpus_per_worker)))
    torch.manual_seed(loop.seed)
    logger = RankZeroLogger(loop.tracking_uri, loop.mlflow_run_id)
    return Worker(
        context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device(), logger
    )


def resume(worker: Worker, load: Callable[[dict], None], steps: int) -> int:
    """Restore the last checkpoint's state with `load(state)` (and the RNGs); its step or 0."""
    state = latest_state(worker.device)
    step = 0
    if state:
        load(state)
        restore_rng_state(state["rng"])
        step = state["step"]
        worker.logger.text(f"resumed at step {step}\n", f"resume/step_{step:07d}.txt")
    print(f"[rank {worker.rank}] training from step {step} to {steps}", flush=True)
    return step


def due(step: int, every: int, steps: int) -> bool:
    """The cadence of logging, evaluation and checkpoints: every `every` steps and the last."""
    return step % every == 0 or step == steps


def checkpoint_state(step: int, loop: LoopConfig, **state) -> dict:
    """What a checkpoint holds: the loop's own state plus step, RNGs and the MLflow run."""
    return state | {"step": step, "rng": rng_state(), "mlflow_run_id": loop.mlflow_run_id}


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


def worker_arrays(loop: LoopConfig, rank: int) -> dict[str, np.ndarray]:
    """This worker's rows of each training array (`worker_shards`), read-only."""
    return {name: ray.get(refs[rank]) for name, refs in loop.shards.items()}


def endless_batches(
    count: int, batch_size: int, seed: int, drop_last: bool = True, skip: int = 0
) -> Iterator[np.ndarray]:
    """Row indices of batches of this worker's `count` rows, epoch after epoch, each epoch in
    an order drawn from (seed, epoch); the first `skip` batches are passed over, so a run
    resumed at step S sees the batches an uninterrupted run saw from step S on."""
    if count < (batch_size if drop_last else 1):
        raise ValueError(
            f"this worker's share of the data holds {count} rows, fewer than "
            f"batch_size={batch_size}; lower the batch size or the number of workers"
        )
    end = count - count % batch_size if drop_last else count
    batches = (
        order[start : start + batch_size]
        for order in _epoch_orders(count, seed)
        for start in range(0, end, batch_size)
    )
    return itertools.islice(batches, skip, None)


def _epoch_orders(count: int, seed: int) -> Iterator[np.ndarray]:
    """One permutation of `count` rows per epoch, drawn once from (seed, epoch)."""
    for epoch in itertools.count():
        yield np.random.default_rng([seed, epoch]).permutation(count)


def step_seed(*parts: int) -> int:
    """A seed for one step's random draws from e.g. (seed, rank, step): a run resumed at a
    step draws what the uninterrupted run drew there."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


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
