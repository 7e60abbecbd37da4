"""Open the MLflow UI on this repo's tracking store (MLFLOW_TRACKING_URI or mlflow.db).

A clone that was moved has its stored artifact locations pointed at its own mlartifacts/
first (magvit.runtime.mlflow_tracking.relocate_artifacts), so the UI shows the artifacts.

    .venv/bin/python -m magvit.mlflow_ui --port 5000
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from magvit.runtime.mlflow_tracking import relocate_artifacts, tracking_uri

# MLflow's job execution (GenAI scorer jobs) starts ~8 job-queue consumers, each a Python
# process (~4 CPU s to start): nothing in this pipeline submits jobs
NO_JOB_QUEUE = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes (default 1: one user on a local SQLite store; MLflow's own "
        "default of 4 costs each a Python process and contends for the SQLite lock)",
    )
    args = parser.parse_args(argv)
    uri = tracking_uri()
    for old_root in relocate_artifacts(uri):
        print(f"artifact locations under {old_root} now point into ./mlartifacts", flush=True)
    mlflow = Path(sys.executable).parent / "mlflow"
    command = ["ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port),
               "--workers", str(args.workers)]  # fmt: skip
    env = {**NO_JOB_QUEUE, **os.environ}  # a user's setting wins
    os.execve(mlflow, [str(mlflow), *command], env)


if __name__ == "__main__":
    main()
