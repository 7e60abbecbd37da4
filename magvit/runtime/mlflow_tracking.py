"""MLflow set-up shared by the stages: where runs go, and finding a run to resume.

Tracking URI: MLFLOW_TRACKING_URI, else `sqlite:///<repo>/mlflow.db`; artifacts of new
experiments go to `<repo>/mlartifacts/`. Only one process writes (the driver or rank 0):
SQLite locks with parallel writers.

MLflow stores that artifact location as an absolute path (it makes any relative local
location absolute, and its one relative scheme, `mlflow-artifacts:`, needs an HTTP server
for every writer, while the stages log straight into SQLite). So that a moved clone keeps
its artifacts, `relocate_artifacts` points a local SQLite store's locations whose
`mlartifacts/` folder is gone at the one beside the store; each stage does so before it
logs, and so does `python -m magvit.mlflow_ui` before it starts the UI.
"""

from __future__ import annotations

import csv
import logging
import os
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlflow.tracking import MlflowClient

ARTIFACTS_DIR = Path("mlartifacts")
# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, an empty
# page for these runs); "custom_model_development" opens the runs table and charts
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# where MLflow's SQLite schema keeps artifact locations (tables absent in a version are skipped)
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)
log = logging.getLogger("mlflow_tracking")


def tracking_uri() -> str:
    """The tracking URI, made absolute so Ray workers with another cwd write to the same DB."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path('mlflow.db').resolve()}"


def relocate_artifacts(uri: str) -> list[str]:
    """Point a local SQLite store's artifact locations at the `mlartifacts/` beside it where
    they name an `mlartifacts/` folder that no longer exists (the clone was moved); the old
    roots rewritten. Other stores, and locations that still exist, are left alone."""
    db_path = Path(uri.removeprefix("sqlite:///"))
    artifacts = db_path.resolve().parent / ARTIFACTS_DIR
    if not uri.startswith("sqlite:///") or not db_path.is_file() or not artifacts.is_dir():
        return []
    new_root = artifacts.as_uri()
    with sqlite3.connect(db_path) as db:
        tables = {name for (name,) in db.execute("select name from sqlite_master")}
        if "experiments" not in tables:
            return []
        old_roots = sorted(
            location
            for (location,) in db.execute("select distinct artifact_location from experiments")
            if location != new_root
            and location.startswith("file://")
            and location.endswith(f"/{ARTIFACTS_DIR.name}")
            and not Path(unquote(urlparse(location).path)).exists()
        )
        for old_root in old_roots:
            for table, column in LOCATION_COLUMNS:
                if table in tables:
                    db.execute(
                        f"update {table} set {column} = ? || substr({column}, ?) "
                        f"where {column} = ? or substr({column}, 1, ?) = ?",
                        (new_root, len(old_root) + 1, old_root, len(old_root) + 1, old_root + "/"),
                    )
            log.info("MLflow artifacts moved: %s -> %s", old_root, new_root)
    return old_roots


def experiment_id(client: MlflowClient, name: str) -> str:
    relocate_artifacts(client.tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # a local SQLite store keeps its artifacts in mlartifacts/; a server decides for itself
    local = client.tracking_uri.startswith("sqlite:")
    location = ARTIFACTS_DIR.resolve().as_uri() if local else None
    return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)


def start_or_resume_run(client: MlflowClient, experiment: str, run_key: str, params: dict) -> str:
    """The id of the newest run tagged `run_key` (reopened if it had ended), or of a new run
    with `params` logged.

    One training definition is one MLflow run: a job killed half-way logs into it when it
    resumes, and a finished one run again (its stage rerun for a change that does not touch
    the training, which Ray Train resumes at the last step) keeps the curves it logged.
    """
    exp_id = experiment_id(client, experiment)
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.run_key = '{run_key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        if found[0].info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        return run_id
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
