import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests/media.py


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs) for the whole session; stages reuse it."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run a test from an empty folder (stages write relative paths)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def stage_argv(stage: str) -> list[str]:
    """The arguments dvc.yaml gives `stage` after `python -m stages.<stage>` (its paths)."""
    import shlex

    import yaml

    cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["cmd"]
    return shlex.split(cmd)[3:]


def stage_paths(stage: str) -> dict[str, Path]:
    """dvc.yaml's paths of `stage` by option name: {"clips": Path("data/clips"), ...}."""
    argv = stage_argv(stage)
    return {
        flag[2:].replace("-", "_"): Path(value)
        for flag, value in zip(argv[::2], argv[1::2], strict=True)
    }


def check_curve_csvs(client, run_id: str, folder: Path, curves: dict[str, tuple[str, ...]]) -> None:
    """Each `folder/<name>.csv` holds its metrics at exactly the steps MLflow logged them:
    no empty cells (drawn as zeros), no steps of other curves."""
    import csv

    for name, keys in curves.items():
        with (folder / f"{name}.csv").open(newline="") as handle:
            reader = csv.DictReader(handle)
            assert reader.fieldnames == ["step", *keys], name
            rows = list(reader)
        logged = sorted({point.step for point in client.get_metric_history(run_id, keys[0])})
        assert [int(row["step"]) for row in rows] == logged, name
        assert all(row[key] != "" for row in rows for key in keys), name
