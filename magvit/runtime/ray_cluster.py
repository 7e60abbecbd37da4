"""Joining Ray: the cluster in RAY_ADDRESS when set, else a local instance."""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger("ray_runtime")


def init_ray(num_cpus: int | None = None) -> None:
    """Start (or join) Ray once per process.

    Locally `num_cpus` caps the instance; on a cluster (RAY_ADDRESS) the cluster decides.
    """
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
