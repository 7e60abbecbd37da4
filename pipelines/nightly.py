"""`nightly_retrain`: refresh the corpus, run the whole graph, promote models that got better.

Its deployment runs on the `schedule.cron` / `schedule.timezone` of params.yaml; the
`schedule.champions` entries say which MLflow metric decides each registered model's
`champion` alias.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from magvit.params import load_params
from magvit.runtime.mlflow_tracking import tracking_uri
from pipelines.champion import Decision, promote_if_better
from pipelines.end_to_end import end_to_end


def repo_tracking_uri(repo: Path) -> str:
    """The tracking URI the stages use when they run in `repo`."""
    with contextlib.chdir(repo):
        return tracking_uri()


@flow(name="nightly_retrain")
def nightly_retrain(
    repo_dir: str = ".",
    overrides: list[str] | None = None,
    retries: int = 1,
    stage_timeout_s: float = 6 * 3600,
    lock_timeout_s: float = 1800,
) -> dict[str, Decision | None]:
    """Rebuild the corpus (`corpus` is forced: a folder corpus may have new files), run the
    graph as experiment `nightly-<UTC time>`, then decide each model's champion."""
    repo = Path(repo_dir).resolve()
    schedule = load_params(repo / "params.yaml").schedule
    end_to_end(
        repo_dir=str(repo),
        overrides=overrides,
        force=["corpus"],
        experiment=f"nightly-{datetime.now(UTC):%Y%m%d-%H%M%S}",
        retries=retries,
        stage_timeout_s=stage_timeout_s,
        lock_timeout_s=lock_timeout_s,
    )
    uri = repo_tracking_uri(repo)
    decisions = {
        name: promote_if_better(
            name, champion.metric, champion.direction, champion.min_improvement, uri
        )
        for name, champion in schedule.champions.items()
    }
    get_run_logger().info("champion decisions: %s", decisions)
    return decisions


def nightly_deployment(repo_dir: str = ".", name: str = "nightly") -> RunnerDeployment:
    """The scheduled deployment of `nightly_retrain` for the repo at `repo_dir`."""
    repo = Path(repo_dir).resolve()
    schedule = load_params(repo / "params.yaml").schedule
    return nightly_retrain.to_deployment(
        name=name,
        schedule=Cron(schedule.cron, timezone=schedule.timezone),
        parameters={"repo_dir": str(repo)},
        description=f"nightly retrain of {repo} ({schedule.cron}, {schedule.timezone})",
    )
