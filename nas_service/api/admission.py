"""What a request may ask of the server beyond what a config allows anywhere: files under the server's
data roots only, and trials that fit the machine or cluster its runners go to.

Paths are resolved (symlinks followed, ``..`` applied) and compared as names; nothing is opened, so a
FIFO, a device or a slow mount named in a request cannot stall the server, and the answer does not
tell what the file holds.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from detector.engine.cpus import available_cpus
from nas_errors import UserError
from nas_service.search_config import ResourcesConfig, SearchConfig, config_paths, with_absolute_paths

log = logging.getLogger(__name__)


def confined(config: SearchConfig, data_roots: Sequence[Path]) -> SearchConfig:
    """``config`` with absolute paths, or ``UserError`` naming the first path outside ``data_roots``."""
    config = with_absolute_paths(config)
    for location, path in config_paths(config):
        if not any(path.is_relative_to(root) for root in data_roots):
            roots = ", ".join(str(root) for root in data_roots)
            raise UserError(
                f"config.{'.'.join(location)}: {path} is outside the server's data roots ({roots}); "
                "put the files there or start nas serve with --data-root"
            )
    return config


@functools.cache
def local_capacity() -> Capacity:
    """This machine's CPUs and CUDA devices; counting the devices imports torch (seconds on a busy
    machine), so the server does it once at start (``create_app``), never inside a request."""
    import torch

    return Capacity(available_cpus(), torch.cuda.device_count(), "this machine")


@dataclass(frozen=True)
class Capacity:
    """The most one trial can get: CPUs and GPUs of the largest node."""

    cpus: float
    gpus: float
    where: str


def check_fits(resources: ResourcesConfig, ray_address: str | None) -> None:
    """Refuse trials larger than any node their runner would reach (``UserError`` naming the field)."""
    capacity = capacity_of(ray_address)
    if capacity is None:
        return
    for field, wanted, has in (
        ("cpus_per_trial", resources.cpus_per_trial, capacity.cpus),
        ("gpus_per_trial", resources.gpus_per_trial, capacity.gpus),
    ):
        if wanted > has:
            raise UserError(f"config.resources.{field}: {wanted:g} asked, {capacity.where} has {has:g}")


def capacity_of(ray_address: str | None) -> Capacity | None:
    """This machine's CPUs and GPUs (a runner without an address starts a local Ray), or the largest
    live node of the cluster at ``ray_address``; None when the cluster does not answer (its runner
    would not start either, and says so)."""
    if ray_address is None:
        return local_capacity()
    from ray.util.state import list_nodes

    try:
        nodes = list_nodes(address=ray_address, filters=[("state", "=", "ALIVE")], timeout=10)
    except Exception as error:  # whatever the cluster's client raises: the check is skipped, not the request
        log.warning("cannot read the resources of the Ray cluster at %s: %s", ray_address, error)
        return None
    totals = [node.resources_total or {} for node in nodes]
    return Capacity(
        max((total.get("CPU", 0.0) for total in totals), default=0.0),
        max((total.get("GPU", 0.0) for total in totals), default=0.0),
        f"the largest node of the Ray cluster at {ray_address}",
    )
