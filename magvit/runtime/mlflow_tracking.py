"""MLflow set-up shared by the stages: where runs go, and finding a run to resume.

Tracking URI: MLFLOW_TRACKING_URI, else `sqlite:///<repo>/mlflow.db`; artifacts of new
experiments go to `<repo>/mlartifacts/`. Only one process writes (the driver or rank 0):
SQLite locks with parallel writers.

That artifact location is stored as an absolute path, so a moved clone's runs lose their
artifacts: MLflow makes any relative local location absolute when it creates the
experiment, and its one relative scheme, `mlflow-artifacts:`, needs an HTTP tracking
server for every writer, while the stages log straight into SQLite.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from mlflow.tracking import MlflowClient

ARTIFACTS_DIR = Path("mlartifacts")
# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, an empty
# page for these runs); "custom_model_development" opens the runs table and charts
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def tracking_uri() -> str:
    """The tracking URI, made absolute so Ray workers with another cwd write to the same DB."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # a local SQLite store keeps its artifacts in mlartifacts/; a server decides for itself
    local = client.tracking_uri.startswith("sqlite:")
    location = ARTIFACTS_DIR.resolve().as_uri() if local else None
    return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)


def start_or_resume_run(client: MlflowClient, experiment: str, run_key: str, params: dict) -> str:
    """The id of the unfinished run tagged `run_key`, or of a new run with `params` logged.

    A training job killed half-way logs into the same MLflow run when it resumes.
    """
    exp_id = experiment_id(client, experiment)
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.run_key = '{run_key}' and attributes.status != 'FINISHED'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(exp_id, run_name=run_key, tags={"run_key": run_key})
    for key, value in sorted(params.items()):
        client.log_param(run.info.run_id, key, str(value)[:6000])
    return run.info.run_id


def write_metric_curves(client: MlflowClient, run_id: str, keys: tuple, path: Path) -> None:
    """Metric histories of a run as one CSV (step, key...) for `dvc plots`."""
    by_step: dict[int, dict] = {}
    for key in keys:
        for point in client.get_metric_history(run_id, key):
            by_step.setdefault(point.step, {})[key] = point.value
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", *keys])
        writer.writeheader()
        for step in sorted(by_step):
            writer.writerow({"step": step, **by_step[step]})


def mean_metric(client: MlflowClient, run_id: str, key: str) -> float | None:
    history = client.get_metric_history(run_id, key)
    return round(sum(m.value for m in history) / len(history), 2) if history else None


def log_final_metrics(client: MlflowClient, run_id: str, metrics: dict, step: int) -> None:
    """The numeric entries of a stage's metrics.json as `final/<name>` metrics."""
    for name, value in metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and name != "steps":
            client.log_metric(run_id, f"final/{name}", float(value), step=step)
