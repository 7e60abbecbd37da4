"""The stages on a real two-node Ray cluster whose second node cannot see the driver's files
(tests/cluster_nodes.py): the same outputs as local mode, every input accounted for, and a loud
failure, never a silent reject, where a node cannot read an input or a store."""

from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from cluster_nodes import can_hide_folders, mlflow_server, two_node_cluster
from mlflow.tracking import MlflowClient

from clip_fixtures import write_clip_folder
from conftest import MAGVIT, RAY_LOG_ERROR, stage_argv, stage_paths
from killed_runs import assert_same_state, kill_after_first_checkpoint, last_state
from media import png, textured_video

pytestmark = pytest.mark.skipif(
    not can_hide_folders(), reason="hiding folders from a Ray node needs a mount namespace (root)"
)
RUN = "tokenizer"
TRAIN = {
    "steps": 6, "batch_size": 2, "image_batch_size": 1, "image_every": 3, "warmup_steps": 2,
    "checkpoint_every": 2, "log_every": 1, "eval_every": 6, "image_log_every": 6,
    "disc_start_step": 2, "eval_clips": 2,
}  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """`driver/`: the driver's working folder, hidden from the second node; `shared/`: a
    folder every node sees (a shared filesystem), holding the corpus and Ray Train's runs."""
    root = tmp_path_factory.mktemp("cluster")
    driver, shared = root / "driver", root / "shared"
    corpus = shared / "corpus"
    for i in range(4):
        textured_video(corpus / f"video{i}.mp4", num_frames=24 + 8 * i, size=48)
    png(corpus / "still.png", np.full((40, 48, 3), 90, np.uint8))
    write_clip_folder(driver / "data" / "clips")
    with two_node_cluster(driver, worker_cpus=3) as cluster, mlflow_server(driver) as tracking:
        yield {"driver": driver, "shared": shared, "cluster": cluster, "tracking": tracking}


def write_params(folder: Path, storage: Path) -> Path:
    params = {
        "seed": 3,
        "decode": {"num_frames": 5, "crop_size": 32, "resize_short_side": 32, "workers": 2,
                   "clips_per_shard": 4},
        "ray": {"train": {"num_workers": 2, "cpus_per_worker": 1, "max_failures": 0}},
        "tokenizer": {"preset": "cpu", "overrides": {"channels": 8, "norm_groups": 4,
                                                    "num_frames": 5, "resolution": 32}},
        "train_tokenizer": {**TRAIN, "storage_path": str(storage)},
        "tokenize": {"actors": 1, "batch_size": 4},
    }  # fmt: skip
    path = folder / f"params-{storage.name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def magvit(site: dict, *args, cluster: bool = True, tracking: bool = True, check: bool = True):
    """`magvit ARGS` from the driver's folder: on the cluster or in local mode (no
    RAY_ADDRESS), logging to the MLflow server or (tracking=False) to the default SQLite file."""
    env = dict(site["cluster"].env)
    if not cluster:
        for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
            env.pop(name)
    env.pop("MLFLOW_TRACKING_URI", None)
    if tracking:
        env["MLFLOW_TRACKING_URI"] = site["tracking"]
    done = subprocess.run(
        [str(MAGVIT), *map(str, args)], cwd=site["driver"], env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if not line.startswith(RAY_LOG_ERROR)]
    return lines[-1]


def tables(folder: Path) -> dict[str, object]:
    return {
        str(path.relative_to(folder)): pq.read_table(path)
        for path in sorted(folder.rglob("*.parquet"))
    }


def write_manifest(path: Path, files: list[Path]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for i, file in enumerate(files):
            writer.writerow([file, i % 2, ("train", "val", "test")[i % 3]])
    return path


def test_decode_on_the_cluster_equals_local_mode_and_a_file_a_node_cannot_read_fails(site):
    driver, corpus = site["driver"], site["shared"] / "corpus"
    params = write_params(driver, site["shared"] / "runs")
    manifest = write_manifest(driver / "manifest.csv", sorted(corpus.iterdir()))
    outputs = {}
    for mode in ("cluster", "local"):
        out = driver / f"clips-{mode}"
        magvit(site, "decode", "--params", params, "--manifest", manifest, "--out", out,
               "--metrics", driver / f"decode-{mode}.json", cluster=mode == "cluster")  # fmt: skip
        outputs[mode] = tables(out)
    assert outputs["cluster"].keys() == outputs["local"].keys()
    for name, table in outputs["cluster"].items():
        assert table.equals(outputs["local"][name]), name
    decoded = {s for name, t in outputs["cluster"].items() if "part-" in name
               for s in t["source"].to_pylist()}  # fmt: skip
    assert decoded == {str(p) for p in corpus.iterdir()}, "every input became clips"

    # a file only the driver's host has: the worker on the other node cannot read it
    only_here = textured_video(driver / "only-here.mp4", num_frames=24, size=48)
    manifest = write_manifest(driver / "manifest2.csv", [*sorted(corpus.iterdir()), only_here])
    failed = magvit(site, "decode", "--params", params, "--manifest", manifest, "--out",
                    driver / "clips-unreadable", "--metrics", driver / "decode-unreadable.json",
                    check=False)  # fmt: skip
    assert failed.returncode == 1
    line = last_line(failed.stderr)
    assert line.startswith("magvit decode: ") and str(only_here) in line, line
    assert "cannot read it" in line and "node " in line and "Traceback" not in failed.stderr
    assert not (driver / "clips-unreadable").exists(), "no output, and no reject recorded"


def test_training_refuses_a_tracking_file_or_a_storage_path_some_node_cannot_reach(site):
    driver = site["driver"]
    argv = ["train-tokenizer", "--params", write_params(driver, site["shared"] / "runs"),
            *stage_argv("train_tokenizer")]  # fmt: skip
    failed = magvit(site, *argv, tracking=False, check=False)
    line = last_line(failed.stderr)
    assert failed.returncode == 1 and line.startswith("magvit train-tokenizer: "), line
    assert "file store sqlite:///" in line and "MLFLOW_TRACKING_URI" in line, line

    local_storage = write_params(driver, driver / "runs")  # only the driver's host has it
    argv[2] = local_storage
    failed = magvit(site, *argv, check=False)
    line = last_line(failed.stderr)
    assert failed.returncode == 1 and "storage_path" in line and str(driver / "runs") in line
    assert "not visible from the Ray node(s)" in line, line
    assert not (driver / "runs").exists() or not any((driver / "runs").glob("tokenizer-*/*/"))


def test_tokenizer_killed_and_resumed_on_the_cluster_ends_as_local_mode_then_tokenizes(site):
    """SIGKILL after a recorded checkpoint, run again on the cluster: the run resumes there
    (the same MLflow run) and ends with the generator, EMA, discriminator, LeCam state and
    both optimisers of an uninterrupted run in local mode, bit for bit: the data order and
    the augmentations are a function of seed and step, and the RNGs are restored. (The
    harness's kill in local mode, Ray's own processes killed too, is tests/test_train_mlm.py's.)"""
    driver, shared = site["driver"], site["shared"]
    argv = [str(MAGVIT), "train-tokenizer", "--params", write_params(driver, shared / "runs"),
            *stage_argv("train_tokenizer")]  # fmt: skip
    env = {**site["cluster"].env, "MLFLOW_TRACKING_URI": site["tracking"]}
    resume_step = kill_after_first_checkpoint(argv, driver, env, shared / "runs", RUN)
    assert 0 < resume_step < 6
    export = driver / stage_paths("train_tokenizer")["out"]
    assert not export.exists(), "a killed run exports no model"
    resumed = magvit(site, *argv[1:])
    output = resumed.stdout + resumed.stderr
    assert f"training from step {resume_step} to 6" in output
    assert "training from step 0 to 6" not in output
    assert re.search(r"train_tokenizer: 100%\|.*\| 6/6 ", output), "the driver's progress bar"
    for noise in ("Failed to query Ray Train", "Execution plan of", "Checkpoint successfully",
                  "Reporting training result", "Warning:"):  # fmt: skip
        assert noise not in output, f"{noise!r} in the stage's output"
    on_cluster = last_state(shared / "runs", RUN)
    assert on_cluster["step"] == 6
    client = MlflowClient(site["tracking"])
    run = client.get_run(on_cluster["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    logged = [a.path for a in client.list_artifacts(run.info.run_id, "resume")]
    assert logged == [f"resume/step_{resume_step:07d}.txt"], "one MLflow run across the kill"

    reference = write_params(driver, driver / "reference")
    magvit(site, "train-tokenizer", "--params", reference, "--clips", "data/clips",
           "--out", "reference-model", "--curves", "reference-curves", cluster=False)  # fmt: skip
    local = last_state(driver / "reference", RUN)
    assert local["opt_d"]["state"], "the discriminator trained"
    keys = ("generator", "ema", "discriminator", "lecam", "opt_g", "opt_d")
    assert_same_state({k: on_cluster[k] for k in keys}, {k: local[k] for k in keys})

    # the exported tokenizer, on the clip shards the second node cannot see
    tokens = {}
    for mode in ("cluster", "local"):
        out = driver / f"tokens-{mode}"
        magvit(site, "tokenize-clips", "--params", reference, "--clips", "data/clips",
               "--tokenizer", "reference-model", "--out", out,
               cluster=mode == "cluster")  # fmt: skip
        tokens[mode] = tables(out)
    assert tokens["cluster"].keys() == tokens["local"].keys() and tokens["local"]
    for name, table in tokens["cluster"].items():
        assert table.equals(tokens["local"][name]), name
    clips = sum(t.num_rows for t in tables(driver / "data" / "clips").values())
    assert sum(t.num_rows for t in tokens["cluster"].values()) == clips


def test_bulk_tokenize_on_the_cluster_equals_local_mode_and_fails_on_unreadable_inputs(site):
    driver, corpus = site["driver"], site["shared"] / "corpus"
    model = driver / "tiny-tokenizer"
    if not model.exists():
        torch.manual_seed(0)
        from models.tokenizer import MagvitTokenizer, TokenizerConfig

        tiny = {"channels": 8, "norm_groups": 4, "num_frames": 5, "resolution": 32}
        config = TokenizerConfig.from_dict({**TokenizerConfig.preset("cpu").to_dict(), **tiny})
        MagvitTokenizer(config).save_pretrained(model)
    params = write_params(driver, site["shared"] / "runs")
    outputs = {}
    for mode in ("cluster", "local"):
        out = driver / f"bulk-{mode}"
        magvit(site, "tokenize", corpus, out, "--tokenizer", model, "--params", params,
               "--files-per-shard", 2, cluster=mode == "cluster")  # fmt: skip
        outputs[mode] = tables(out)
    assert outputs["cluster"].keys() == outputs["local"].keys()
    for name, table in outputs["cluster"].items():
        assert table.equals(outputs["local"][name]), name
    sources = {s for t in outputs["cluster"].values() for s in t["source_path"].to_pylist()}
    assert sources == {p.name for p in corpus.iterdir()}, "every input tokenized"

    hidden = driver / "more-videos"
    textured_video(hidden / "a.mp4", num_frames=24, size=48)
    failed = magvit(site, "tokenize", hidden, driver / "bulk-unreadable", "--tokenizer", model,
                    "--params", params, check=False)  # fmt: skip
    line = last_line(failed.stderr)
    assert failed.returncode == 1 and line.startswith("magvit tokenize: "), failed.stderr[-6000:]
    assert str(hidden / "a.mp4") in line and "cannot read it" in line, line
    assert not list((driver / "bulk-unreadable").rglob("part-*.parquet")), "no shard, no reject"
