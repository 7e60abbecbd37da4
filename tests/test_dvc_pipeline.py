"""The DVC graph up to validate_clips in a temporary git repo: real `dvc exp run` and
`dvc repro`, then a second experiment that `dvc exp show` / `dvc exp diff` compare with the
first; a failing stage that leaves its last good output in place; and the project's
.gitignore against dvc.yaml's outputs.

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


def pipeline_repo(tmp_path: Path) -> Path:
    """A git + DVC repo of the project's dvc.yaml, code and params.yaml (a tiny corpus),
    committed as `baseline`."""
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
    return repo


def test_dvc_experiments_run_the_data_stages_and_compare_their_metrics(tmp_path):
    repo = pipeline_repo(tmp_path)

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

    # a bad param stops decode: data/clips and its metrics stay as the last good run left them
    # (dvc.yaml persists them), and `dvc status` names the param, not a deleted output
    clips, metrics = snapshot(repo / "data" / "clips"), repo / "artifacts" / "metrics"
    decode_json = (metrics / "decode.json").read_bytes()
    update_params(repo, "decode", crop_size=100)  # > resize_short_side: refused on load
    line = failing_repro("decode", repo)
    assert "crop_size (100) must be <= resize_short_side (72)" in line
    assert snapshot(repo / "data" / "clips") == clips
    assert (metrics / "decode.json").read_bytes() == decode_json
    assert stage_status(repo, "decode") == [
        {"changed deps": {"params.yaml": {"decode": "modified"}}}
    ]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def update_params(repo: Path, section: str, **values) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))


def failing_repro(stage: str, repo: Path) -> str:
    """`dvc repro STAGE`, which must fail: the one line the stage's command printed."""
    result = subprocess.run(
        ["dvc", "repro", stage],
        cwd=repo,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert f"ERROR: failed to reproduce '{stage}'" in output
    (line,) = [line for line in output.splitlines() if line.startswith(f"{stage}: ")]
    return line


def stage_status(repo: Path, stage: str) -> list:
    return json.loads(run(["dvc", "status", stage, "--json"], repo).stdout).get(stage, [])


def test_a_failing_stage_leaves_its_last_good_output_in_place(tmp_path):
    """Outputs are `persist: true` and stages swap in complete folders only: a corpus stage
    stopped half-way by a bad param (after writing its videos and three images) leaves
    data/raw byte for byte as the last good run wrote it, with no temporary folder beside
    it, and `dvc status` calls the stage's params changed, not its output deleted. A good
    param then rebuilds data/raw whole, keeping nothing of the old one. (A bad decode param
    and data/clips: the end of the experiments test above.)"""
    repo = pipeline_repo(tmp_path)
    run(["dvc", "repro", "corpus"], repo)
    raw = snapshot(repo / "data" / "raw")
    assert "images/camera.png" in raw and "manifest.csv" in raw

    update_params(repo, "corpus", images=["coffee", "camera", "chelsea", "not_an_image"])
    line = failing_repro("corpus", repo)
    assert line == "corpus: corpus.images: 'not_an_image' is not an image in skimage.data"
    assert snapshot(repo / "data" / "raw") == raw
    assert sorted(p.name for p in (repo / "data").iterdir()) == ["raw"]  # no temporary folder
    assert stage_status(repo, "corpus") == [
        {"changed deps": {"params.yaml": {"corpus": "modified"}}}
    ]

    update_params(repo, "corpus", images=["coffee", "chelsea"])  # camera.png must go
    run(["dvc", "repro", "corpus"], repo)
    rebuilt = snapshot(repo / "data" / "raw")
    assert sorted(name for name in rebuilt if name.startswith("images/")) == [
        "images/chelsea.png",
        "images/coffee.png",
    ]
    assert {name: rebuilt[name] for name in rebuilt if name.startswith("real/")} == {
        name: raw[name] for name in raw if name.startswith("real/")
    }
    assert sorted(p.name for p in (repo / "data").iterdir()) == ["raw"]
    assert stage_status(repo, "corpus") == []
