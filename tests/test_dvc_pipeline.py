"""The DVC graph up to validate_clips in a temporary git repo: real `dvc repro`, twice.

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
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def test_dvc_repro_runs_the_data_stages_then_does_nothing(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo)
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

    first = run(["dvc", "repro", "validate_clips"], repo)
    assert "Running stage 'validate_clips'" in first.stdout
    assert sorted(p.name for p in (repo / "data" / "clips").iterdir()) == [
        "rejects.parquet",
        "test",
        "train",
        "val",
    ]
    assert (repo / "artifacts" / "validation" / "clips_docs" / "index.html").is_file()

    metrics = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    decode = next(iter(metrics.values()))["data"]["artifacts/metrics/decode.json"]["data"]
    assert decode["clips"] > 0 and decode["rejects"] == 0 and decode["frames_per_s"] > 0

    second = run(["dvc", "repro", "validate_clips"], repo)
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date" in second.stdout
