"""Kill a training stage after a recorded checkpoint, and compare resumed state to a reference."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch

from magvit.training.ray_harness import STATE_FILE, load_state_file

from conftest import MAGVIT, stage_argv


@contextlib.contextmanager
def reference_folder(tmp_path_factory) -> Iterator[tuple[Path, pytest.MonkeyPatch]]:
    """A fresh folder for a module's uninterrupted reference run, the working folder (stages
    write relative paths) until the block ends; the patch undoes what the block sets."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        yield folder, patch


def local_tracking(patch: pytest.MonkeyPatch, folder: Path) -> None:
    """A training stage in `folder` tracks to its own SQLite store and starts a local Ray."""
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    patch.delenv("RAY_ADDRESS", raising=False)


def stage_command(command: str, stage: str, params: Path, out: str | None = None) -> list:
    """`magvit COMMAND --params PARAMS` with dvc.yaml's paths of `stage`; `out` replaces the
    `--out` folder (a reference run beside the one under test)."""
    argv = [MAGVIT, command, "--params", str(params), *stage_argv(stage)]
    if out is not None:
        argv[argv.index("--out") + 1] = out
    return argv


def command_env() -> dict[str, str]:
    """This environment with the `magvit` of this Python first on PATH."""
    return {**os.environ, "PATH": f"{MAGVIT.parent}{os.pathsep}{os.environ['PATH']}"}


def checkpoints(storage: Path, run_prefix: str) -> list[Path]:
    """State files of the runs named `<run_prefix>-<hash>` under `storage`, oldest first."""
    return sorted(storage.glob(f"{run_prefix}-*/checkpoint_*/{STATE_FILE}"))


def last_state(storage: Path, run_prefix: str) -> dict:
    return load_state_file(checkpoints(storage, run_prefix)[-1].parent)


def committed_checkpoints(storage: Path, run_prefix: str) -> list[Path]:
    """Checkpoints that Ray Train has recorded in its run's snapshot: those a re-run resumes
    from. (A checkpoint folder is written first and recorded after; a kill in between leaves
    a folder that is not resumed from, as Ray Train intends.)"""
    committed = []
    for snapshot in storage.glob(f"{run_prefix}-*/checkpoint_manager_snapshot.json"):
        try:
            results = json.loads(snapshot.read_text())["checkpoint_results"]
        except (json.JSONDecodeError, KeyError):  # being written
            continue
        states = (snapshot.parent / r["checkpoint_dir_name"] / STATE_FILE for r in results)
        committed += [state for state in states if state.exists()]
    return sorted(committed)


def kill_after_first_checkpoint(
    argv: list[str], cwd: Path, env: dict, storage: Path, run_prefix: str
) -> int:
    """Start a training command in a session of its own, SIGKILL the whole session once Ray
    Train has recorded a checkpoint, and return the step a re-run resumes from."""
    first = subprocess.Popen(
        argv, cwd=cwd, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    while (
        not committed_checkpoints(storage, run_prefix)
        and time.time() < deadline
        and first.poll() is None
    ):
        time.sleep(0.5)
    kill_session(first.pid)
    first.wait()
    saved = committed_checkpoints(storage, run_prefix)
    assert saved, "the first run wrote a checkpoint before it was killed"
    return max(load_state_file(p.parent)["step"] for p in saved)


def run_to_end(argv: list, cwd: Path, env: dict | None = None) -> str:
    """Run a training command to its end; its stdout and stderr."""
    done = subprocess.run(
        argv, cwd=cwd, env=env or command_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def kill_then_resume(argv: list, cwd: Path, run_prefix: str, steps: int, export: Path) -> tuple:
    """SIGKILL a `steps`-step training command (checkpoints under cwd/runs) after its first
    recorded checkpoint, check it exported nothing, and run it again to the end: returns
    (the step it resumed from, the second run's output)."""
    env = command_env()
    resume_step = kill_after_first_checkpoint(argv, cwd, env, cwd / "runs", run_prefix)
    assert 0 < resume_step < steps
    assert not export.exists(), "a killed run exports no model"
    output = run_to_end(argv, cwd, env)
    assert f"training from step {resume_step} to {steps}" in output
    return resume_step, output


def kill_session(session_id: int) -> None:
    """SIGKILL every process of a session at once and wait until none is left.

    Ray's workers (the Train controller among them) run in process groups of their own, so
    killing the driver's group leaves them alive for a moment, long enough to record one more
    checkpoint. Killing the whole session stops them all where they stand."""
    while members := [p for p in psutil.process_iter() if is_live_member(p, session_id)]:
        for process in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(members, timeout=30)


def is_live_member(process: psutil.Process, session_id: int) -> bool:
    try:
        return os.getsid(process.pid) == session_id and process.status() != psutil.STATUS_ZOMBIE
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False


def assert_same_state(resumed, uninterrupted, path: str = "state") -> None:
    """Every tensor (weights, optimiser moments, LeCam averages) equal, bit for bit."""
    if isinstance(resumed, torch.Tensor):
        assert torch.equal(resumed, uninterrupted), f"{path} differs"
    elif isinstance(resumed, dict):
        assert resumed.keys() == uninterrupted.keys(), path
        for key in resumed:
            assert_same_state(resumed[key], uninterrupted[key], f"{path}.{key}")
    elif isinstance(resumed, list | tuple):
        for i, (a, b) in enumerate(zip(resumed, uninterrupted, strict=True)):
            assert_same_state(a, b, f"{path}[{i}]")
    else:
        assert resumed == uninterrupted, path
