"""Joining Ray: the cluster in RAY_ADDRESS when set, else a local instance."""

from __future__ import annotations

import logging
import os
import socket
import uuid
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import ray.data
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from magvit.errors import UserInputError
from magvit.formats.files import is_uri

log = logging.getLogger("ray_runtime")

# Ray libraries' chatter that buried a run's own output (~1,100 lines a `make repro`): the
# Train placement-group cleaner warns every second that the state API (part of the dashboard,
# which this install leaves out) is unavailable; Data logs every dataset execution at INFO
# and warns in every process that its progress bars are off (as set here). Errors still
# show. (Ray Train's own INFO lines are kept off the console by the trainers' RunConfig, see
# magvit.training.ray_harness.fit.)
QUIET_LOGGERS = {
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
    "ray.data": logging.ERROR,
}
# ...and each Train worker's "Reporting training result N: TrainingReport(...)" at every
# checkpoint, logged at INFO under a logger named after its module's file path
TRAIN_REPORT_LOGGER = str(Path(ray.__file__).parent / "train/v2/_internal/execution/context.py")


def quiet_ray_libraries() -> None:
    """Raise the log level of QUIET_LOGGERS and hide the deprecation warnings Ray's own
    modules raise on Ray's own calls; runs in the driver and in every Ray worker."""
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger(TRAIN_REPORT_LOGGER).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")


def init_ray(num_cpus: int | None = None) -> None:
    """Start (or join) Ray once per process.

    Locally `num_cpus` caps the instance; on a cluster (RAY_ADDRESS) the cluster decides.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet_ray_libraries()
    ray.data.DataContext.get_current().print_on_execution_start = False
    runtime_env = {"worker_process_setup_hook": quiet_ray_libraries}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
    else:
        # A local instance cannot be preempted: no preemption-watcher actor (a Python process
        # of its own at every Ray Train start); and Train's controller notices the end of a
        # run within 0.5 s rather than its default 2 s. Both save seconds per training stage.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        ray.init(
            num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, runtime_env=runtime_env
        )


# ------------------------------------------------------------------- clusters of several hosts


UNREACHABLE_INPUT = "unreachable_input"  # the error_type of a row that carries one


class UnreachableInput(UserInputError):
    """A Ray worker cannot read an input that the driver can: the cluster's storage is wrong,
    not the file. The stage stops (never recording the file as a reject)."""


class ClusterSetupError(UserInputError):
    """The cluster cannot run this stage as configured (storage or tracking that some node
    cannot reach): the message says what to set."""


def joined_cluster() -> bool:
    """Whether this process joined a Ray cluster (RAY_ADDRESS) rather than starting its own:
    then workers may run on hosts that do not see the driver's files."""
    return bool(os.environ.get("RAY_ADDRESS"))


def alive_nodes() -> list[dict]:
    return [node for node in ray.nodes() if node["Alive"]]


def this_node() -> str:
    """Where the calling Ray worker runs, for messages: `node <id> (<ip>, host <name>)`."""
    node_id = ray.get_runtime_context().get_node_id()
    return f"node {node_id[:12]} ({ray.util.get_node_ip_address()}, host {socket.gethostname()})"


def unreachable_message(path: str) -> str:
    """Said by the worker that cannot read `path` (so it names that worker's node)."""
    return (
        f"input {path} exists where the driver runs, but the Ray worker on {this_node()} cannot "
        "read it: on a cluster of several hosts every node must see the inputs at the same "
        "path (a shared filesystem mounted on every node), or the manifest must name them by "
        "URIs every node reads (s3://, gs://)"
    )


def raise_if_unreachable(error_type: str | None, message: str) -> None:
    """On the driver: a worker's record of UNREACHABLE_INPUT stops the job. (A record, not
    an exception raised in the worker: Ray Data hands the driver an exception of its own,
    with the cause only as text.)"""
    if error_type == UNREACHABLE_INPUT:
        raise UnreachableInput(message)


def driver_table_dataset(paths: list[str], columns: list[str], include_paths: bool = False):
    """Parquet files as a Ray dataset: read by Ray's tasks where they run (a local instance),
    or, on a joined cluster, read here and handed over through Ray's object store, so no
    worker needs the driver's disk. One block per file; rows in file order. With
    `include_paths`, a `path` column names each row's file (as Ray's read_parquet does)."""
    if not joined_cluster():
        read = ray.data.read_parquet(paths, include_paths=include_paths)
        return read.select_columns([*columns, "path"] if include_paths else columns)
    tables = []
    for path in paths:
        table = pq.read_table(path, columns=columns)
        if include_paths:
            table = table.append_column("path", pa.array([path] * table.num_rows, pa.string()))
        tables.append(table)
    return ray.data.from_arrow(tables)


@ray.remote(num_cpus=0)
def _sees_marker(fs_uri: str) -> bool:
    filesystem, path = pafs.FileSystem.from_uri(fs_uri)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def check_storage_on_every_node(storage: str, param: str) -> None:
    """Before a training run on a cluster of several nodes: every node must see `storage`
    (the run's checkpoints), checked with a marker file written here and looked for from a
    zero-CPU task pinned to each node. Raises ClusterSetupError naming the nodes that do not."""
    nodes = alive_nodes()
    if len(nodes) < 2:
        return
    uri = storage if is_uri(storage) else Path(storage).resolve().as_uri()
    filesystem, root = pafs.FileSystem.from_uri(uri)
    filesystem.create_dir(root, recursive=True)
    marker = f"{root.rstrip('/')}/.storage-check-{uuid.uuid4().hex}"
    with filesystem.open_output_stream(marker):
        pass
    marker_uri = uri.rstrip("/") + marker.removeprefix(root.rstrip("/"))
    try:
        seen = ray.get([
            _sees_marker.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(marker_uri)
            for node in nodes
        ])  # fmt: skip
    finally:
        filesystem.delete_file(marker)
    blind = [node["NodeManagerAddress"] for node, ok in zip(nodes, seen, strict=True) if not ok]
    if blind:
        raise ClusterSetupError(
            f"{param} {storage!r} is not visible from the Ray node(s) at {', '.join(blind)} of "
            f"this {len(nodes)}-node cluster: checkpoints must be written where every node "
            "reads them; set it to a URI (s3://bucket/runs, gs://...) or a shared filesystem "
            "path mounted on every node"
        )


FILE_STORES = ("sqlite:", "file:")


def check_tracking_for_cluster(uri: str) -> None:
    """On a cluster of several nodes, rank 0 of a training run may run on another host and
    log to MLflow from there: a file-based store (SQLite, mlruns folder) on the driver's disk
    cannot be reached, so refuse before training."""
    nodes = len(alive_nodes())
    if nodes > 1 and (not is_uri(uri) or uri.startswith(FILE_STORES)):
        raise ClusterSetupError(
            f"MLflow tracks to the file store {uri}, which Ray workers on other hosts of this "
            f"{nodes}-node cluster cannot reach; run a tracking server (mlflow server --host "
            "0.0.0.0 --port 5000 --backend-store-uri sqlite:///mlflow.db) and set "
            "MLFLOW_TRACKING_URI=http://<its host>:5000"
        )
