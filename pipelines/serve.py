"""`python -m pipelines.serve`: serve the project's Prefect deployments.

Without PREFECT_API_URL, a local `prefect server start` is launched on --host/--port (its log
goes to --server-log) and stopped on exit. With PREFECT_API_URL set, that server is used.
Deployments: `nightly_retrain/nightly` on the params.yaml schedule, and `end_to_end/on-demand`
and `tokenize_corpus/on-demand` for runs started by hand (UI or `prefect deployment run`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

from pipelines.end_to_end import end_to_end
from pipelines.nightly import nightly_deployment
from pipelines.shell import BIN, command_env
from pipelines.tokenize_corpus import tokenize_corpus

# no telemetry to Prefect's servers: the pipeline makes no network calls of its own (a user's
# setting wins)
NO_TELEMETRY = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.serve",
        description=__doc__.split("\n\n")[1],
        epilog="Stop with Ctrl-C: the nightly schedule is paused until you serve again.",
    )
    parser.add_argument("--repo", default=".", help="the DVC repo the flows run in")
    parser.add_argument("--host", default="127.0.0.1", help="local server address")
    parser.add_argument("--port", type=int, default=4200, help="local server port")
    parser.add_argument(
        "--server-log",
        default=str(get_current_settings().home / "server.log"),
        help="local server output, appended (default: %(default)s)",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=120, help="seconds to wait for a healthy server"
    )
    return parser.parse_args(argv)


def wait_healthy(api_url: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    raise TimeoutError(f"prefect server at {api_url} not healthy after {timeout_s:g} s")


def server_env(api_url: str) -> dict[str, str]:
    """The server's environment, with the API URL its UI should call and no telemetry.

    The UI reads that URL from the server's /ui-settings, which Prefect takes from
    PREFECT_API_URL or PREFECT_SERVER_API_HOST/PORT (127.0.0.1:4200), not from `--port`.
    """
    return {**NO_TELEMETRY, **command_env(), "PREFECT_SERVER_UI_API_URL": api_url}


def start_server(host: str, port: int, log_path: Path, timeout_s: float) -> subprocess.Popen:
    """`prefect server start` in the background, returned once /api/health answers."""
    api_url = f"http://{host}:{port}/api"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", host, "--port", str(port)],
            env=server_env(api_url),
            stdout=log,
            stderr=subprocess.STDOUT,
            # not in the terminal's process group: on Ctrl-C the runner must still reach the
            # server to pause the schedules; it is stopped after that
            start_new_session=True,
        )
    try:
        wait_healthy(api_url, server, timeout_s)
    except BaseException:
        server.terminate()
        raise
    return server


def deployments(repo: Path) -> list[RunnerDeployment]:
    parameters = {"repo_dir": str(repo)}
    return [
        nightly_deployment(str(repo)),
        end_to_end.to_deployment(name="on-demand", parameters=parameters),
        tokenize_corpus.to_deployment(name="on-demand", parameters=parameters),
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    repo = Path(args.repo).resolve()
    api_url = os.environ.get("PREFECT_API_URL")
    server = None
    if not api_url:
        api_url = f"http://{args.host}:{args.port}/api"
        print(f"starting prefect server on {api_url} (log: {args.server_log})")
        server = start_server(args.host, args.port, Path(args.server_log), args.startup_timeout)
        print(f"Prefect UI: http://{args.host}:{args.port}")
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            serve(*deployments(repo))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
