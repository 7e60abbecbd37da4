import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MAGVIT = Path(sys.executable).parent / "magvit"
RAY_LOG_ERROR = "[*** LOG ERROR"  # Ray's log sink, on stderr, when it cannot write its log file
sys.path.insert(0, str(Path(__file__).parent))  # tests/media.py


def share_the_cores() -> None:
    """Under pytest-xdist, each worker's torch, and the stage processes its tests start, get
    the worker's share of the cores. torch's OpenMP threads spin while they wait: two workers
    with a thread per core each ran a training loop 2.7x slower than with one thread each."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(share))  # inherited by subprocesses
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


share_the_cores()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_url(url: str, process: subprocess.Popen, what: str, seconds: float = 120) -> bytes:
    """The body of `url` once the server `process` answers it; fails the test saying that
    `what` did not come up if the process ends or `seconds` pass first."""
    deadline = time.time() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return reply.read()
        except OSError:  # refused, reset or timed out while the server starts
            assert time.time() < deadline and process.poll() is None, f"{what} did not come up"
            time.sleep(0.5)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs) for the whole session, started as the stages start
    theirs; stages run in this process reuse it."""
    import ray

    from magvit.runtime.ray_cluster import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_address(ray_local) -> str:
    """The session's Ray instance, for `magvit` subprocesses to join (RAY_ADDRESS): no Ray
    start-up of their own, and none of Ray's own processes under their file-size limit."""
    return ray_local.get_runtime_context().gcs_address


def file_size_limit(max_bytes: int) -> Callable[[], None]:
    """A preexec_fn: no file the process writes may grow past `max_bytes` (RLIMIT_FSIZE), as
    on a full disk. SIGXFSZ is ignored (Python does so too), so the write fails with EFBIG
    instead of killing the process."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return limit


def run_magvit(
    *args: str | Path, ray_address: str, max_file_bytes: int | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """`magvit ARGS` in a subprocess that joins the session's Ray instance, optionally under a
    file-size limit."""
    return subprocess.run(
        [MAGVIT, *map(str, args)],
        env={**os.environ, "RAY_ADDRESS": ray_address},
        preexec_fn=file_size_limit(max_file_bytes) if max_file_bytes else None,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_error_line(stderr: str, command: str, *expected: str) -> str:
    """stderr ends with one line `magvit COMMAND: ...` holding `expected`, and has no
    traceback (log lines before it are allowed); returns that line."""
    assert "Traceback" not in stderr, stderr[-3000:]
    # under a file-size limit, Ray's core worker also reports its own failed log writes
    lines = [line for line in stderr.splitlines() if line.strip()]
    last = [line for line in lines if not line.startswith(RAY_LOG_ERROR)][-1]
    assert last.startswith(f"magvit {command}: "), stderr[-3000:]
    for text in expected:
        assert text in last, last
    return last


@pytest.fixture
def magvit_in_process(monkeypatch, capsys) -> Callable[..., tuple[int, str, str]]:
    """Run `magvit ARGS` in this process (magvit.cli.main, the entry point): returns (exit
    status, stdout, stderr)."""
    from magvit.cli import main

    monkeypatch.setattr(sys, "argv", sys.argv[:])  # main renames the command

    def run(*args: str | Path) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main([str(arg) for arg in args])
            status = 0
        except SystemExit as stop:
            status = 0 if stop.code is None else stop.code
        out, err = capsys.readouterr()
        return status, out, err

    return run


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
