"""A real two-node Ray cluster on this machine whose second node cannot see the driver's
files, and an MLflow tracking server: what a multi-host run meets.

The head (`ray start --head`, no CPUs, so every task and training worker lands on the
second node) runs as the driver does. The second node runs in a mount namespace of its own
(`unshare -m`, root only) in which an empty tmpfs covers the driver's folder: there the
driver's data, MLflow store and outputs do not exist, as on another host. The code (this
repo and its .venv) stays visible, as a package installed on every node would be.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from magvit.mlflow_ui import NO_JOB_QUEUE

from conftest import free_port, wait_for_url

BIN = Path(sys.executable).parent


def can_hide_folders() -> bool:
    """Whether this process may make a mount namespace (root, unshare present)."""
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True
    )
    return probe.returncode == 0


@dataclass(frozen=True)
class Cluster:
    address: str  # the head's GCS address, for RAY_ADDRESS
    env: dict[str, str]  # what a driver process needs: RAY_ADDRESS and the auth token


def wait_for_line(log: Path, text: str, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"no {text!r} in {log} after {seconds} s")


def stop(process: subprocess.Popen) -> None:
    """`ray start --block` and `mlflow server` stop their children on SIGTERM; whatever is
    left of the session after 20 s is killed. (Never `ray stop`: it stops every Ray
    instance on the machine, other users' too.)"""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@contextmanager
def two_node_cluster(hidden: Path, worker_cpus: int) -> Iterator[Cluster]:
    """Head + a second node with `worker_cpus` CPUs that does not see `hidden`."""
    temp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # Ray's socket paths must be short
    port = free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    ray = str(BIN / "ray")
    head_log, node_log = temp / "head.log", temp / "node.log"
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", f"--port={port}", "--num-cpus=0",
         "--include-dashboard=false", f"--temp-dir={temp / 'h'}"],
        cwd=temp, env=env, stdin=subprocess.DEVNULL, stdout=head_log.open("w"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    processes = [head]
    try:
        wait_for_line(head_log, "Ray runtime started", head, 90)
        hide_and_start = (
            f"mount -t tmpfs tmpfs {hidden} && exec {ray} start --block "
            f"--address=127.0.0.1:{port} --num-cpus={worker_cpus} --temp-dir={temp / 'n'}"
        )
        node = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", hide_and_start],
            cwd=temp, env=env, stdin=subprocess.DEVNULL, stdout=node_log.open("w"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        processes.append(node)
        wait_for_line(node_log, "Ray runtime started", node, 90)
        yield Cluster(f"127.0.0.1:{port}", {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"})
    finally:
        for process in reversed(processes):
            stop(process)


@contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with its store and artifacts in `folder`: its URI."""
    port = free_port()
    log = folder / "mlflow-server.log"
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "mlartifacts")],
        stdin=subprocess.DEVNULL, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **NO_JOB_QUEUE},
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_url(f"{uri}/health", server, f"mlflow server (its log: {log})")
        yield uri
    finally:
        stop(server)
