"""The DVC graph up to validate_clips in a temporary git repo: real `dvc exp run` and
`dvc repro`, then a second experiment that `dvc exp show` / `dvc exp diff` compare with the
first; and the project's .gitignore against dvc.yaml's outputs.

The training stages after it are covered by their own tests (and by `make repro`)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT

BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for key in ("GIT_AUTHOR", "GIT_COMMITTER"):  # `dvc exp run` commits
        env.update({f"{key}_NAME": "pipeline test", f"{key}_EMAIL": "test@example.com"})
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def dvc_yaml_outputs(cached: bool) -> list[str]:
    """dvc.yaml's outputs (outs, metrics and plots) that DVC caches, or its `cache: false` ones."""
    found = []
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        for entry in [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]:
            path, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
            if options.get("cache", True) == cached:
                found.append(path)
    return found


def test_git_keeps_the_uncached_outputs_and_ignores_the_cached_ones():
    uncached, cached = dvc_yaml_outputs(cached=False), dvc_yaml_outputs(cached=True)
    assert "artifacts/tokenizer/metrics.json" in uncached and "data/clips" in cached
    checked = subprocess.run(
        ["git", "check-ignore", "--no-index", *uncached, *cached],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    ignored = set(checked.stdout.split())
    assert not ignored & set(uncached), "git would not keep these metrics, plots or reports"
    assert set(cached) <= ignored, "DVC's cache holds these: git should ignore them"


def experiment_metrics(repo: Path, path: str) -> dict[str, dict]:
    """`dvc exp show --json`: each experiment's metrics in `path`, by experiment name."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    tips = [
        experiment["revs"][0]  # the experiment's newest commit
        for baseline in shown
        for experiment in baseline.get("experiments") or []
    ]
    return {tip["name"]: tip["data"]["metrics"][path]["data"] for tip in tips}


def test_dvc_experiments_run_the_data_stages_and_compare_their_metrics(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, repo)
    for package in ("stages", "magvit", "models"):  # the code dvc.yaml's deps name
        shutil.copytree(
            ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["corpus"]["synthetic"].update(videos_per_class=3, num_frames=30, size=48)
    params["corpus"].update(
        images=["coffee", "camera", "chelsea"], image_val=["coffee"], image_test=["chelsea"]
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "baseline"], repo)

    first = run(["dvc", "exp", "run", "--name", "all-clips", "validate_clips"], repo)
    assert "Running stage 'validate_clips'" in first.stdout
    assert sorted(p.name for p in (repo / "data" / "clips").iterdir()) == [
        "rejects.parquet",
        "test",
        "train",
        "val",
    ]
    assert (repo / "artifacts" / "validation" / "clips_docs" / "index.html").is_file()
    again = run(["dvc", "repro", "validate_clips"], repo)
    assert "Running stage" not in again.stdout
    assert "Data and pipelines are up to date" in again.stdout

    second = ["dvc", "exp", "run", "--name", "one-clip", "-S", "decode.max_clips_per_video=1"]
    run([*second, "decode"], repo)
    decode = experiment_metrics(repo, "artifacts/metrics/decode.json")
    assert sorted(decode) == ["all-clips", "one-clip"]
    assert (
        decode["one-clip"]["clips"] == decode["one-clip"]["files"] == decode["all-clips"]["files"]
    )
    assert decode["all-clips"]["clips"] > decode["one-clip"]["clips"] > 0
    assert all(metrics["frames_per_s"] > 0 for metrics in decode.values())

    diff = json.loads(run(["dvc", "exp", "diff", "all-clips", "one-clip", "--json"], repo).stdout)
    clips = diff["metrics"]["artifacts/metrics/decode.json"]["clips"]
    assert (clips["old"], clips["new"]) == (
        decode["all-clips"]["clips"],
        decode["one-clip"]["clips"],
    )
