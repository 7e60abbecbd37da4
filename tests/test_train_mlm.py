"""Masked-model training on Ray Train (2 workers), samples, registry, and `magvit generate`."""

import json
import os
import re
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from magvit.runtime.mlflow_models import model_dir_from_uri
from models.mlm import MaskedTokenTransformer
from models.tokenizer import MagvitTokenizer, TokenizerConfig

from conftest import MAGVIT, check_curve_csvs, stage_paths
from killed_runs import (
    assert_same_state,
    kill_then_resume,
    last_state,
    local_tracking,
    reference_folder,
    run_to_end,
    stage_command,
)

RUN = "mlm"  # Ray Train run folders: mlm-<hash of params and data>
GRID = (2, 4, 4)  # 5 x 32 x 32 clips through the tiny tokenizer below


def tiny_tokenizer(directory: Path) -> MagvitTokenizer:
    base = TokenizerConfig.preset("cpu").to_dict()
    torch.manual_seed(0)
    model = MagvitTokenizer(TokenizerConfig.from_dict({**base, "channels": 8, "norm_groups": 4}))
    model.save_pretrained(directory)
    return model


def write_token_shards(root: Path, bits: int, counts: dict) -> None:
    """Class-dependent token patterns: class c uses tokens c * 64 + position % 8."""
    n = GRID[0] * GRID[1] * GRID[2]
    for split, count in counts.items():
        rows = [
            {
                "clip_id": f"{split}{i}:0",
                "video_id": f"{split}{i}",
                "split": split,
                "label": i % 8,
                "grid_t": GRID[0],
                "grid_h": GRID[1],
                "grid_w": GRID[2],
                "tokens": [((i % 8) * 64 + (p + i) % 8) % 2**bits for p in range(n)],
            }  # fmt: skip
            for i in range(count)
        ]
        rows.append({**rows[0], "clip_id": f"{split}-image:0", "grid_t": 1, "tokens": [1] * 16})
        (root / split).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), root / split / "part-00000.parquet")


def write_params(folder: Path, **train) -> Path:
    params = {
        "seed": 1,
        "decode": {"num_frames": 5, "crop_size": 32, "resize_short_side": 32},
        "ray": {"train": {"num_workers": 2, "cpus_per_worker": 1, "max_failures": 0}},
        "mlm": {"overrides": {"dim": 32, "depth": 1, "heads": 2}},
        "train_mlm": {
            "steps": 8, "batch_size": 4, "warmup_steps": 2, "checkpoint_every": 4,
            "log_every": 2, "eval_every": 4, "storage_path": str(folder / "runs"),
            "sampling": {"steps": 4, "samples_per_class": 2}, **train,
        },
    }  # fmt: skip
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


# the run of both stage tests below: bf16 autocast (the GPU path) on CPU workers
TRAIN = {"steps": 16, "checkpoint_every": 4, "eval_every": 8, "log_every": 4, "bf16": "on"}


def prepare(folder: Path, patch: pytest.MonkeyPatch) -> None:
    """A tiny tokenizer, token shards and the tracking store in `folder`."""
    local_tracking(patch, folder)
    tokenizer = tiny_tokenizer(folder / "artifacts" / "tokenizer")
    write_token_shards(folder / "data" / "tokens", tokenizer.config.bits, {"train": 32, "val": 8})


@pytest.fixture
def workspace(in_tmp, monkeypatch):
    prepare(in_tmp, monkeypatch)
    write_params(in_tmp)
    return in_tmp


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, ray_local) -> tuple[Path, dict]:
    """The MLM trained once to its end in this process (the record test checks this run, the
    kill test resumes to its state): its folder and metrics."""
    from stages.train_mlm import run

    with reference_folder(tmp_path_factory) as (folder, patch):
        prepare(folder, patch)
        paths = stage_paths("train_mlm")
        metrics = run(
            str(write_params(folder, **TRAIN)), paths["tokens"], paths["tokenizer"],
            paths["classes"], paths["out"], paths["samples"], paths["curves"],
        )  # fmt: skip
    return folder, metrics


def test_train_mlm_writes_model_samples_and_mlflow_records(uninterrupted, monkeypatch):
    from stages.train_mlm import TRAIN_CURVES, VAL_CURVES

    workspace, metrics = uninterrupted
    monkeypatch.chdir(workspace)
    local_tracking(monkeypatch, workspace)
    paths = stage_paths("train_mlm")
    model = MaskedTokenTransformer.from_pretrained(workspace / "artifacts" / "mlm")
    assert model.config.grid == GRID and model.config.num_classes == 8
    saved = json.loads((workspace / "artifacts" / "mlm" / "metrics.json").read_text())
    assert saved["steps"] == 16 and 0 <= saved["val_class_accuracy"] <= 1
    assert saved == json.loads(json.dumps(metrics))

    gifs = sorted((workspace / "artifacts" / "mlm" / "samples").glob("class_*.gif"))
    assert len(gifs) == 8
    with Image.open(gifs[0]) as gif:
        assert gif.n_frames == 5 and gif.size == (2 * 32, 32)  # 2 samples side by side
    assert (workspace / "artifacts" / "mlm" / "samples" / "frame_prediction_0.gif").is_file()

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run_info = client.get_run(metrics["mlflow_run_id"])
    for key in ("loss/masked_tokens", "train/masked_accuracy", "lr", "tokens_per_s",
                "val/class_accuracy", "val/frame_prediction_accuracy"):  # fmt: skip
        assert key in run_info.data.metrics, key
    assert run_info.data.params["train.bf16"] == "on"
    curves = {"train": TRAIN_CURVES, "val": VAL_CURVES}
    check_curve_csvs(client, run_info.info.run_id, paths["curves"], curves)
    assert len((paths["curves"] / "val.csv").read_text().splitlines()) == 1 + 2  # steps 8, 16
    samples = [a.path for a in client.list_artifacts(run_info.info.run_id, "samples")]
    assert len(samples) == 10
    version = client.get_model_version_by_alias("magvit2-mlm", "champion")
    loaded = MaskedTokenTransformer.from_pretrained(
        model_dir_from_uri("models:/magvit2-mlm@champion")
    )
    assert version.run_id == run_info.info.run_id
    tokens = torch.zeros(1, 32, dtype=torch.long)
    labels = torch.zeros(1, dtype=torch.long)
    assert torch.equal(loaded.eval()(tokens, labels), model.eval()(tokens, labels))

    out = subprocess.run(
        [MAGVIT, "generate", "--class-id", "2", "--num", "3", "sample.gif"],
        cwd=workspace, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    with Image.open(workspace / "sample.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (3 * 32, 32)
    bad = subprocess.run(
        [MAGVIT, "generate", "--class-id", "99", "x.gif"], cwd=workspace, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "--class-id 99 is out of range; this model has classes 0-7" in (
        bad.stderr
    )


def stage_outputs() -> dict[str, str]:
    """metrics.json (with its MLflow run id) and the curve CSVs of the last train_mlm run."""
    paths = stage_paths("train_mlm")
    files = [paths["out"] / "metrics.json", *sorted(paths["curves"].iterdir())]
    return {str(path): path.read_text() for path in files}


def test_a_killed_run_resumes_to_the_state_of_an_uninterrupted_run(workspace, uninterrupted):
    """SIGKILL after a recorded checkpoint, run again: the run resumes there and ends with the
    weights and optimiser state of a run that was never interrupted, bit for bit (batches,
    masks and dropped labels are functions of seed and step)."""
    argv = stage_command("train-mlm", "train_mlm", write_params(workspace, **TRAIN))
    model = workspace / "artifacts" / "mlm" / "model.safetensors"
    _, output = kill_then_resume(argv, workspace, RUN, 16, model)
    assert re.search(r"train_mlm: 100%\|.*\| 16/16 ", output), "the driver's progress bar"
    for noise in ("Reporting training result", "UserWarning"):
        assert noise not in output, f"{noise!r} in the stage's output"
    resumed = last_state(workspace / "runs", RUN)
    assert resumed["step"] == 16
    finished = stage_outputs()

    # run again, finished: nothing to train; the same MLflow run, figures and curves
    assert "training from step 16 to 16" in run_to_end(argv, workspace)
    assert stage_outputs() == finished

    reference = last_state(uninterrupted[0] / "runs", RUN)  # the same params, never killed
    assert reference["optimizer"]["state"], "the model trained"
    keys = ("model", "optimizer")
    assert_same_state({k: resumed[k] for k in keys}, {k: reference[k] for k in keys})
