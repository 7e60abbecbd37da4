"""Joining Ray: the cluster in RAY_ADDRESS when set, else a local instance."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import ray
import ray.data

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
        ray.init(
            num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, runtime_env=runtime_env
        )
