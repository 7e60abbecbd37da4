"""Moving a registered model's `champion` alias only to a better version.

The figures compared are MLflow metrics of the runs that registered the versions (the
training stages log `final/...`, the evaluate stage adds `eval/...`): the newest version
against the one holding `champion`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

CHAMPION = "champion"


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    new: float | None = None
    current: float | None = None
    improvement: float | None = None  # positive: the new version is better


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def decide_champion(
    new: float | None,
    current: float | None,
    direction: Literal["max", "min"],
    min_delta: float,
) -> Decision:
    """Promote when `new` beats `current` by more than zero and at least `min_delta`."""
    if _missing(new):
        return Decision(False, "the new version has no value for the metric", new, current)
    if _missing(current):
        return Decision(True, "the champion has no value for the metric", new, current)
    improvement = new - current if direction == "max" else current - new
    if improvement > 0 and improvement >= min_delta:
        reason = f"better by {improvement:.6g} (at least {min_delta:g} needed)"
        return Decision(True, reason, new, current, improvement)
    reason = f"not better by at least {min_delta:g} (improvement {improvement:.6g})"
    return Decision(False, reason, new, current, improvement)


def _run_metric(client: MlflowClient, run_id: str | None, metric: str) -> float | None:
    if not run_id:
        return None
    return client.get_run(run_id).data.metrics.get(metric)


def _champion_version(client: MlflowClient, model_name: str):
    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:  # no version holds the alias
        return None


def _record(client: MlflowClient, run_id: str, decision: Decision, champion_version: str) -> None:
    """The decision and its figures on the run that registered the new version."""
    client.set_tag(run_id, "champion.decision", "promoted" if decision.promote else "kept")
    client.set_tag(run_id, "champion.reason", decision.reason)
    client.set_tag(run_id, "champion.compared_with_version", champion_version)
    figures = {"new": decision.new, "current": decision.current}
    for name, value in {**figures, "improvement": decision.improvement}.items():
        if not _missing(value):
            client.log_metric(run_id, f"champion/{name}", value)


def _report(model_name: str, metric: str, version: str, champion: str, decision: Decision) -> str:
    verdict = f"version {version} is the new `{CHAMPION}`" if decision.promote else "no change"
    return "\n".join(
        [
            f"# `{model_name}`: {verdict}",
            "",
            "| | version | " + metric + " |",
            "|---|---|---|",
            f"| new | {version} | {decision.new} |",
            f"| {CHAMPION} before | {champion} | {decision.current} |",
            "",
            f"Reason: {decision.reason}.",
        ]
    )


@task(cache_policy=NO_CACHE, task_run_name="champion {model_name}")
def promote_if_better(
    model_name: str,
    metric: str,
    direction: Literal["max", "min"],
    min_delta: float,
    tracking_uri: str,
) -> Decision | None:
    """Compare the newest version of `model_name` with its champion; move the alias if better.

    Returns None when the model has no registered version yet.
    """
    logger = get_run_logger()
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    versions = client.search_model_versions(f"name = '{model_name}'")
    if not versions:
        logger.info("%s has no registered version yet: nothing to decide", model_name)
        return None
    latest = max(versions, key=lambda version: int(version.version))
    champion = _champion_version(client, model_name)
    if champion is not None and champion.version == latest.version:
        decision = Decision(False, f"version {latest.version} already holds {CHAMPION}")
        logger.info("%s: %s", model_name, decision.reason)
        return decision

    decision = decide_champion(
        _run_metric(client, latest.run_id, metric),
        _run_metric(client, champion.run_id, metric) if champion else None,
        direction,
        min_delta,
    )
    if decision.promote:
        client.set_registered_model_alias(model_name, CHAMPION, latest.version)
    champion_label = str(champion.version) if champion else "none"
    if latest.run_id:
        _record(client, latest.run_id, decision, champion_label)
    logger.info(
        "%s: version %s %s (%s %s: new %s, champion v%s %s)",
        model_name,
        latest.version,
        "promoted" if decision.promote else "kept out",
        metric,
        direction,
        decision.new,
        champion_label,
        decision.current,
    )
    create_markdown_artifact(
        _report(model_name, metric, latest.version, champion_label, decision),
        key=f"champion-{model_name}",
        description=decision.reason,
    )
    return decision
