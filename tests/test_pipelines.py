"""Prefect flows against Prefect's temporary test server, with real DVC, MLflow and `magvit`."""

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from magvit.media.video_encode import write_mp4
from pipelines.champion import CHAMPION, decide_champion, promote_if_better
from pipelines.end_to_end import DvcLockTimeout, StageFailed, end_to_end
from pipelines.nightly import nightly_deployment, nightly_retrain, repo_tracking_uri
from pipelines.serve import NO_TELEMETRY
from pipelines.tokenize_corpus import tokenize_corpus

from conftest import ROOT

BIN = Path(sys.executable).parent
# a corpus of four tiny videos (a manifest CSV) keeps the DVC runs short
SMALL_CORPUS = [
    "corpus.source=videos/manifest.csv",
    "decode.resize_short_side=32",
    "decode.crop_size=32",
    "decode.workers=1",
]
FAST = {"retries": 0, "lock_poll_s": 1}


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as patch:
        for name, value in NO_TELEMETRY.items():
            patch.setenv(name, value)
        with prefect_test_harness(server_startup_timeout=180):
            yield


@pytest.fixture(scope="module")
def clean_env():
    """Commits need a git identity; stages must start a local Ray, not join a cluster."""
    with pytest.MonkeyPatch.context() as patch:
        for key in ("GIT_AUTHOR", "GIT_COMMITTER"):
            patch.setenv(f"{key}_NAME", "pipeline test")
            patch.setenv(f"{key}_EMAIL", "test@example.com")
        patch.delenv("RAY_ADDRESS", raising=False)
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        yield


def write_video(path: Path, seed: int, frames: int, size: int) -> None:

    rng = np.random.default_rng(seed)
    write_mp4(rng.integers(0, 255, size=(frames, size, size, 3), dtype=np.uint8), path, fps=8)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory, clean_env) -> Path:
    """A git + DVC repo holding the project's graph, params and code, committed."""
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo)
    for name in ("stages", "magvit", "models"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    splits = ["train", "train", "val", "test"]
    for index in range(len(splits)):
        write_video(repo / "videos" / f"v{index}.mp4", seed=index, frames=16, size=48)
    rows = [f"v{index}.mp4,{index % 2},{split}" for index, split in enumerate(splits)]
    (repo / "videos" / "manifest.csv").write_text("\n".join(["path,label,split", *rows]) + "\n")
    git(repo, "init", "-q")
    subprocess.run([BIN / "dvc", "init", "-q"], cwd=repo, check=True)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "baseline")
    return repo


def task_runs(flow_state) -> dict:
    """The flow run's task runs by name, read back from the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = flow_state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name: run for run in runs}


def task_logs(task_run) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run.id])))
    return [log.message for log in logs]


def experiment_file(repo: Path, name: str, path: str) -> str:
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/exps").split()
    (ref,) = [ref for ref in refs if ref.endswith(f"/{name}")]
    return git(repo, "show", f"{ref}:{path}")


def shown_metrics(repo: Path, name: str) -> dict[str, dict]:
    """`dvc exp show --json`: experiment `name`'s metrics files, by path."""
    shown = subprocess.run(
        [BIN / "dvc", "exp", "show", "--json"], cwd=repo, capture_output=True, text=True, check=True
    )
    (tip,) = [
        experiment["revs"][0]  # the experiment's newest commit
        for baseline in json.loads(shown.stdout)
        for experiment in baseline.get("experiments") or []
        if experiment["name"] == name
    ]
    return {path: entry["data"] for path, entry in tip["data"]["metrics"].items()}


# every stage, trained for a few steps (checkpoint and evaluation at the end only: each costs
# seconds): the whole graph in a few minutes
TINY_TRAINING = [
    "ray.train.num_workers=1",
    "train_tokenizer.steps=4",
    "train_tokenizer.warmup_steps=1",
    "train_tokenizer.entropy_decay_steps=2",
    "train_tokenizer.disc_start_step=2",
    "train_tokenizer.image_every=0",
    "train_tokenizer.checkpoint_every=4",
    "train_tokenizer.eval_every=4",
    "train_tokenizer.image_log_every=4",
    "train_tokenizer.eval_clips=2",
    "tokenize.actors=1",
    "train_mlm.steps=4",
    "train_mlm.batch_size=2",
    "train_mlm.warmup_steps=1",
    "train_mlm.checkpoint_every=4",
    "train_mlm.eval_every=4",
    "train_mlm.sampling.steps=2",
    "train_mlm.sampling.samples_per_class=1",
    "domain_classifier.steps=5",
    "evaluate.max_clips=4",
    "evaluate.compression_clips=2",
    "evaluate.codecs=[h264]",
    "evaluate.rd_crfs=[30,50]",
    "evaluate.generation.samples_per_class=1",
    "evaluate.generation.frame_prediction_clips=2",
]


@pytest.fixture(scope="module")
def small_run(repo):
    state = end_to_end(
        repo_dir=str(repo),
        overrides=[*SMALL_CORPUS, *TINY_TRAINING],
        experiment="small",
        return_state=True,
        **FAST,
    )
    return state


def test_end_to_end_runs_each_stage_as_a_task_of_one_dvc_experiment(repo, small_run):
    assert small_run.is_completed(), small_run.message
    assert small_run.result() == "small"
    stages = list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    runs = task_runs(small_run)
    assert sorted(runs) == sorted(stages) and "evaluate" in runs
    assert all(run.state.is_completed() for run in runs.values())
    logs = task_logs(runs["decode"])  # the stage's output, line by line
    assert "Running stage 'decode':" in logs
    assert any(line.startswith("> python -m stages.decode ") for line in logs)

    assert sorted(p.name for p in (repo / "data" / "clips").iterdir()) == [
        "rejects.parquet",
        "test",
        "train",
        "val",
    ]
    for output in (
        "artifacts/validation/clips.json",
        "artifacts/tokenizer/model.safetensors",
        "data/tokens/manifest.json",
        "artifacts/validation/tokens.json",
        "artifacts/mlm/model.safetensors",
        "artifacts/domain_classifier/model.safetensors",
        "artifacts/eval/metrics.json",
        "artifacts/eval/rate_distortion/h264.csv",
    ):
        assert (repo / output).is_file(), output
    tokenizer = json.loads((repo / "artifacts/tokenizer/metrics.json").read_text())
    assert tokenizer["steps"] == 4
    metrics = json.loads((repo / "artifacts/eval/metrics.json").read_text())
    assert set(metrics) == {"reconstruction", "compression", "generation"}

    listed = subprocess.run(
        [BIN / "dvc", "exp", "list"], cwd=repo, capture_output=True, text=True, check=True
    )
    assert "small" in listed.stdout
    # the experiment holds the overrides and the lock entries of every stage
    params = yaml.safe_load(experiment_file(repo, "small", "params.yaml"))
    assert params["corpus"]["source"] == "videos/manifest.csv"
    assert params["decode"]["crop_size"] == 32
    assert params["evaluate"]["codecs"] == ["h264"]
    lock = yaml.safe_load(experiment_file(repo, "small", "dvc.lock"))
    assert sorted(lock["stages"]) == sorted(stages)
    report = json.loads(experiment_file(repo, "small", "artifacts/validation/clips.json"))
    assert report["success"] is True  # uncached outputs are committed with the experiment
    assert json.loads(experiment_file(repo, "small", "artifacts/eval/metrics.json")) == metrics
    shown = shown_metrics(repo, "small")  # what `dvc exp show` / `dvc exp diff` compare
    assert shown["artifacts/eval/metrics.json"] == metrics
    assert shown["artifacts/tokenizer/metrics.json"] == tokenizer
    assert shown["artifacts/metrics/decode.json"]["clips"] > 0


def test_a_failing_stage_fails_its_task_with_the_stage_error(repo, small_run):
    shards_before = sorted((repo / "data" / "clips").rglob("part-*.parquet"))
    strict = [*SMALL_CORPUS, "validate_clips.min_pixel_std=1000"]
    state = end_to_end(
        repo_dir=str(repo),
        overrides=strict,
        until="validate_clips",
        experiment="strict",
        return_state=True,
        **FAST,
    )
    with pytest.raises(StageFailed, match="expectations failed") as failure:
        state.result()
    assert "'validate_clips' failed" in str(failure.value)
    assert "pixel_std" in str(failure.value)
    assert state.is_failed()
    runs = task_runs(state)
    assert runs["corpus"].state.is_completed() and runs["decode"].state.is_completed()
    assert runs["validate_clips"].state.is_failed()
    assert "expectations failed" in runs["validate_clips"].state.message
    # the experiment holds the stages that succeeded, beside the earlier one in `dvc exp show`
    decode = shown_metrics(repo, "strict")["artifacts/metrics/decode.json"]
    assert decode["clips"] == shown_metrics(repo, "small")["artifacts/metrics/decode.json"]["clips"]
    # the earlier stages' outputs are untouched
    assert sorted((repo / "data" / "clips").rglob("part-*.parquet")) == shards_before
    assert shards_before


@pytest.fixture
def held_dvc_lock(repo):
    """DVC's own workspace lock, held by this process as another `dvc` command would."""
    from dvc.lock import make_lock

    tmp_dir = repo / ".dvc" / "tmp"
    lock = make_lock(str(tmp_dir / "lock"), tmp_dir=str(tmp_dir))
    lock.lock()
    yield lock, tmp_dir / "lock"
    if lock.is_locked:
        lock.unlock()


def test_a_locked_workspace_makes_the_flow_wait_then_fail_clearly(repo, small_run, held_dvc_lock):
    lock, lock_file = held_dvc_lock
    content = lock_file.read_bytes()
    started = time.monotonic()
    state = end_to_end(
        repo_dir=str(repo),
        until="corpus",
        lock_timeout_s=4,
        lock_poll_s=1,
        retries=2,
        return_state=True,
    )
    waited = time.monotonic() - started
    assert state.is_failed()
    with pytest.raises(DvcLockTimeout, match="locked by another DVC process for more than 4 s"):
        state.result()
    assert waited >= 4
    assert task_runs(state)["corpus"].run_count == 1  # a lock timeout is not retried
    assert lock.is_locked and lock_file.read_bytes() == content


def test_the_flow_goes_on_once_the_lock_is_released(repo, small_run, held_dvc_lock):
    lock, _ = held_dvc_lock
    threading.Timer(3, lock.unlock).start()
    started = time.monotonic()
    state = end_to_end(
        repo_dir=str(repo), until="corpus", lock_timeout_s=120, return_state=True, **FAST
    )
    assert state.is_completed(), state.message
    assert time.monotonic() - started >= 3


def test_nightly_deployment_is_registered_with_the_params_schedule(tmp_path):
    from prefect.client.orchestration import get_client

    schedule = {"cron": "30 3 * * 1-5", "timezone": "Europe/Berlin"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"schedule": schedule}))
    deployment_id = nightly_deployment(str(tmp_path)).apply()
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
    assert deployment.name == "nightly"
    assert deployment.parameters == {"repo_dir": str(tmp_path.resolve())}
    assert [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules] == [
        ("30 3 * * 1-5", "Europe/Berlin")
    ]
    assert all(s.active for s in deployment.schedules)


def test_nightly_retrain_promotes_a_better_tokenizer_on_evaluates_metric(
    repo, small_run, monkeypatch
):
    """After `small_run` (4 tokenizer steps; its first versions hold `champion`), a nightly run
    with 10x the steps registers version 2, which must win on the metric `evaluate` logged and
    take the alias. A version 3 of the first run's model (worse on that metric) is then kept
    out by the flow's decision task. (One flow run costs ~2.5 minutes here, so the worse
    version is registered directly rather than trained by a second nightly run.)"""
    from mlflow.tracking import MlflowClient

    from magvit.runtime.mlflow_models import TokenizerPyfunc, register_model_dir

    name = "magvit2-tokenizer"
    git(repo, "checkout", "--", "params.yaml")  # not the failed "strict" experiment's params
    metric = yaml.safe_load((repo / "params.yaml").read_text())["schedule"]["champions"][name]
    client = MlflowClient(repo_tracking_uri(repo))
    first = client.get_model_version_by_alias(name, CHAMPION)
    assert str(first.version) == "1"

    # 10x the steps, with checkpoints, evaluations and pictures at the end only
    every = ("steps", "checkpoint_every", "eval_every", "image_log_every")
    longer = [f"train_tokenizer.{key}=40" for key in every]
    kept = [o for o in TINY_TRAINING if o.split("=")[0] not in {o.split("=")[0] for o in longer}]
    overrides = [*SMALL_CORPUS, *kept, *longer]
    decisions = nightly_retrain(repo_dir=str(repo), overrides=overrides, retries=0)
    decision = decisions[name]
    assert decision.promote, decision
    champion = client.get_model_version_by_alias(name, CHAMPION)
    assert str(champion.version) == "2"
    logged = {
        version.version: client.get_run(version.run_id).data.metrics[metric["metric"]]
        for version in (first, champion)
    }  # what `evaluate` logged on each version's training run
    assert (decision.new, decision.current) == (logged[champion.version], logged[first.version])
    assert decision.new > decision.current
    assert client.get_run(champion.run_id).data.tags["champion.decision"] == "promoted"
    assert decisions["magvit2-mlm"] is not None and decisions["magvit2-mlm"].reason

    uri = repo_tracking_uri(repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # for register_model_dir's mlflow calls
    worse = register_model_dir(first.run_id, repo / "artifacts" / "tokenizer", name,
                               TokenizerPyfunc())  # fmt: skip
    kept = promote_if_better(name, metric["metric"], metric["direction"], 0.0, uri)
    assert worse == "3" and not kept.promote, kept
    assert (kept.new, kept.current) == (logged[first.version], logged[champion.version])
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "2"
    listed = subprocess.run(
        [BIN / "dvc", "exp", "list"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    assert "nightly-" in listed


@pytest.mark.parametrize(
    ("new", "current", "direction", "min_delta", "promote"),
    [
        (30.0, 29.0, "max", 0.0, True),
        (29.0, 30.0, "max", 0.0, False),
        (30.0, 30.0, "max", 0.0, False),  # a tie keeps the champion
        (30.2, 30.0, "max", 0.5, False),  # better, but not by enough
        (0.8, 0.9, "min", 0.05, True),  # lower is better
        (0.9, 0.8, "min", 0.0, False),
        (None, 30.0, "max", 0.0, False),  # the new run logged no metric
        (float("nan"), 30.0, "max", 0.0, False),
        (30.0, None, "max", 0.0, True),  # the champion has none
    ],
)
def test_decide_champion(new, current, direction, min_delta, promote):
    decision = decide_champion(new, current, direction, min_delta)
    assert decision.promote is promote
    assert decision.reason


def test_champion_alias_moves_only_to_a_better_version(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from magvit.runtime.mlflow_models import TokenizerPyfunc, register_model_dir

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"weights")
    client = MlflowClient(uri)
    experiment = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    name, metric = "magvit2-tokenizer", "final/test_synthetic_psnr"

    def register(psnr: float) -> tuple[str, str]:
        run_id = client.create_run(experiment).info.run_id
        client.log_metric(run_id, metric, psnr)
        return run_id, register_model_dir(run_id, model_dir, name, TokenizerPyfunc())

    def decide():
        return promote_if_better(name, metric, "max", 0.5, uri)

    def champion() -> str:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)

    register(20.0)
    assert champion() == "1"  # the first version is champion from the start
    assert decide().reason == f"version 1 already holds {CHAMPION}"

    worse_run, _ = register(20.3)  # better, but by less than 0.5 dB
    assert not decide().promote
    assert champion() == "1"
    assert client.get_run(worse_run).data.tags["champion.decision"] == "kept"

    better_run, better = register(22.0)
    decision = decide()
    assert decision.promote and decision.improvement == pytest.approx(2.0)
    assert champion() == better == "3"
    recorded = client.get_run(better_run).data
    assert recorded.tags["champion.decision"] == "promoted"
    assert recorded.tags["champion.compared_with_version"] == "1"
    assert recorded.metrics["champion/current"] == pytest.approx(20.0)

    assert promote_if_better("magvit2-mlm", "final/val_class_accuracy", "max", 0, uri) is None


def test_tokenize_corpus_writes_token_shards_and_a_summary(tmp_path, clean_env):
    from models.tokenizer import MagvitTokenizer, TokenizerConfig

    config = {**TokenizerConfig.preset("cpu").to_dict(), "channels": 8, "norm_groups": 4}
    MagvitTokenizer(TokenizerConfig.from_dict(config)).save_pretrained(tmp_path / "tokenizer")
    for seed in range(2):
        write_video(tmp_path / "videos" / f"v{seed}.mp4", seed, frames=12, size=32)
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"not a video")
    params = {
        "decode": {"num_frames": 5, "crop_size": 32, "resize_short_side": 32, "workers": 1},
        "tokenize": {"actors": 1, "batch_size": 4},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    summary = tokenize_corpus(
        input_path="videos",
        output_path="tokens",
        tokenizer=str(tmp_path / "tokenizer"),
        repo_dir=str(tmp_path),
        retries=0,
    )
    shards = sorted((tmp_path / "tokens" / "train").glob("part-*.parquet"))
    assert shards and (tmp_path / "tokens" / "manifest.json").is_file()
    assert summary["splits"] == {"train": summary["clips"]} and summary["clips"] >= 2
    assert summary["rejects"] == 1
    assert summary["clips_per_s"] > 0
