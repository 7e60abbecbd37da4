"""Tokenizer training on Ray Train with 2 workers: checkpoints, MLflow records, the export
(killed and resumed: tests/test_cluster.py)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from magvit.runtime.mlflow_models import model_dir_from_uri
from magvit.training.ray_harness import load_state_file
from models.tokenizer import MagvitTokenizer

from clip_fixtures import write_clip_folder
from conftest import check_curve_csvs, stage_paths
from killed_runs import (
    checkpoints,
    local_tracking,
    reference_folder,
)

RUN = "tokenizer"  # Ray Train run folders: tokenizer-<hash of params and data>
TINY_MODEL = {"channels": 8, "norm_groups": 4, "num_frames": 5, "resolution": 32}


def write_params(folder: Path, **train) -> Path:
    params = {
        "seed": 3,
        "decode": {"num_frames": 5, "crop_size": 32, "resize_short_side": 32},
        "ray": {"train": {"num_workers": 2, "cpus_per_worker": 1, "max_failures": 0}},
        "tokenizer": {"preset": "cpu", "overrides": TINY_MODEL},
        "train_tokenizer": {
            "steps": 6, "batch_size": 2, "image_batch_size": 1, "image_every": 3,
            "warmup_steps": 2, "checkpoint_every": 3, "log_every": 1, "eval_every": 3,
            "image_log_every": 3, "disc_start_step": 2, "eval_clips": 2,
            "storage_path": str(folder / "runs"), **train,
        },
    }  # fmt: skip
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


# the reference run below, with the GAN from step 2. (bf16 autocast on CPU workers is not
# reproducible bit for bit across runs, so these runs keep float32; the bf16 step is checked
# in tests/test_precision.py and the MLM's stage runs use it.)
TRAIN = {"steps": 16, "checkpoint_every": 8, "eval_every": 8, "image_log_every": 8,
         "disc_start_step": 2}  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, ray_local) -> tuple[Path, dict]:
    """train_tokenizer run once to its end, in this process: its folder and metrics."""
    from stages.train_tokenizer import run

    with reference_folder(tmp_path_factory) as (folder, patch):
        local_tracking(patch, folder)
        write_clip_folder(folder / "data" / "clips")
        paths = stage_paths("train_tokenizer")
        params = write_params(folder, **TRAIN)
        metrics = run(str(params), paths["clips"], paths["out"], paths["curves"])
    return folder, metrics


def test_two_workers_train_checkpoint_and_record_everything(uninterrupted, monkeypatch):
    from stages.train_tokenizer import GAN_CURVES, TRAIN_CURVES, VAL_CURVES

    workspace, metrics = uninterrupted
    monkeypatch.chdir(workspace)
    local_tracking(monkeypatch, workspace)
    paths = stage_paths("train_tokenizer")
    saved = checkpoints(workspace / "runs", RUN)
    assert saved, "a checkpoint every checkpoint_every steps"
    state = load_state_file(saved[-1].parent)
    assert set(state) == {
        "step", "generator", "ema", "discriminator", "lecam", "opt_g", "opt_d", "rng",
        "mlflow_run_id",
    }  # fmt: skip
    assert state["step"] == 16
    assert state["opt_d"]["state"], "the discriminator trained after disc_start_step"
    assert int(state["lecam"]["num_updates"]) == 14  # steps 2..15
    first_weight = next(k for k in state["ema"] if k.endswith("weight"))
    assert not torch.equal(state["ema"][first_weight], state["generator"][first_weight])

    exported = MagvitTokenizer.from_pretrained(workspace / "artifacts" / "tokenizer")
    for name, value in exported.state_dict().items():
        assert torch.equal(value, state["ema"][name]), f"export must be the EMA weights ({name})"
    written = json.loads((workspace / "artifacts" / "tokenizer" / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    for kind in ("synthetic", "real", "image"):
        assert written[f"test_{kind}_psnr"] > 0 and written[f"test_{kind}_clips"] > 0

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(state["mlflow_run_id"])
    for key in (
        "loss/recon", "loss/commitment", "loss/entropy", "loss/g_adv", "loss/d_hinge",
        "loss/d_lecam", "lr", "entropy_weight", "clips_per_s", "val/psnr", "val/ssim",
        "val/codebook_utilisation", "val/perplexity", "final/test_synthetic_psnr",
    ):  # fmt: skip
        assert key in run.data.metrics, key
    curves = {"train": TRAIN_CURVES, "gan": GAN_CURVES, "val": VAL_CURVES}
    check_curve_csvs(client, run.info.run_id, paths["curves"], curves)
    val_rows = (paths["curves"] / "val.csv").read_text().splitlines()[1:]
    steps = [row.split(",")[0] for row in val_rows]
    assert steps == ["0", "8", "16"]  # evaluation steps only, not every logged step
    assert run.data.params["train.steps"] == "16" and run.info.status == "FINISHED"
    assert run.data.params["train.bf16"] == "auto"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development", "not GenAI"
    lrs = [m.value for m in client.get_metric_history(run.info.run_id, "lr")]
    assert lrs[0] < max(lrs) and lrs[-1] < max(lrs), "warm-up then decay"
    weights = [m.value for m in client.get_metric_history(run.info.run_id, "entropy_weight")]
    assert weights[0] > weights[-1], "the entropy weight anneals"
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert any("reconstructions" in a for a in artifacts), artifacts

    version = client.get_model_version_by_alias("magvit2-tokenizer", "champion")
    assert version.run_id == run.info.run_id
    loaded = MagvitTokenizer.from_pretrained(
        model_dir_from_uri("models:/magvit2-tokenizer@champion")
    )
    video = torch.randint(0, 255, (1, 5, 32, 32, 3), dtype=torch.uint8)
    assert torch.equal(loaded.encode(video), exported.encode(video))


def test_image_steps_draw_the_stills_and_every_frame_of_the_training_videos(tmp_path):
    from magvit.formats.clip_shards import clip_frames, load_clips, shard_paths
    from stages.train_tokenizer import training_arrays

    clips = write_clip_folder(tmp_path / "clips")
    shards = shard_paths(clips, "train")
    rows = load_clips(clips, "train")
    stills = [clip_frames(r)[0].tobytes() for r in rows if r["num_frames"] == 1]
    frames = [f.tobytes() for r in rows if r["num_frames"] > 1 for f in clip_frames(r)]
    videos = [clip_frames(r) for r in rows if r["num_frames"] > 1]
    assert stills and videos

    arrays = training_arrays(shards, frames_as_images=True)
    assert arrays["images"].shape[1] == 1 and arrays["images"].dtype == np.uint8
    assert sorted(image.tobytes() for image in arrays["images"]) == sorted(stills + frames)
    assert np.array_equal(arrays["videos"], np.stack(videos))  # file order, every clip

    arrays = training_arrays(shards, frames_as_images=False)
    assert sorted(image.tobytes() for image in arrays["images"]) == sorted(stills)
