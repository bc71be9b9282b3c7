"""Which Ray a sweep runs on: the cluster this machine belongs to, as Ray's own
`ray.init()` finds it, or a Ray of the run's own.

In order: `--local` (a private Ray); `--address`; `RAY_ADDRESS` (which `ray job
submit` sets); the address file `ray start --head` leaves on the head
(`<temp dir>/ray/ray_current_cluster`, the temp dir `RAY_TMPDIR`, `TMPDIR` or
/tmp: Ray 2.60's `ray._common.utils.get_ray_address_file`, written by `ray
start` in `ray/scripts/scripts.py`). So on a cluster's head, after `ray up`,
`python tune.py` joins the cluster and its GPU workers, as a driver started
there by hand would. The file's cluster is joined only while a Ray process
of this machine names it (Ray's `find_gcs_addresses`, from the processes'
command lines) and its address answers: a file a stopped or crashed head left
behind, or one naming an address that now belongs to something else, is not
joined; the run says so in one line and starts its own Ray.
"""

from __future__ import annotations

import socket

import ray
from ray._common.utils import get_ray_address_file
from ray._private.services import find_gcs_addresses
from ray._private.utils import read_ray_address

LOCAL = "local"  # ray.init's address for a new Ray of this process's own
# Ray retires a task worker idle for a second beyond its node's free CPUs (the
# raylet's WorkerPool::TryKillingIdleWorkers). Ray 2.60's exiting worker runs its
# static destructors while OpenCensus's metrics harvester, a detached thread, still
# runs; now and then it locks a destroyed mutex and the worker's abort ("Mutex
# corrupt ... SIGABRT") reaches the console. An interval of 0 turns the retiring off
# (worker_pool.cc schedules it only for an interval above 0) in the Ray a run starts
# for itself, which ends with the run: its workers are reused until then. Not on a
# cluster: there the same routine removes a finished run's idle workers.
KEEP_IDLE_WORKERS = {"kill_idle_workers_interval_ms": 0}
CONNECT_TIMEOUT_S = 2.0


def ray_address(address: str | None, local: bool, environment: dict) -> tuple[str, str | None]:
    """(the address for ray.init, a note for the user or None): see the module's docstring."""
    if local:
        return LOCAL, None
    if address or environment.get("RAY_ADDRESS"):
        return address or environment["RAY_ADDRESS"], None
    recorded = read_ray_address()
    if not recorded:
        return LOCAL, None
    named = f"the Ray cluster at {recorded} (named in {get_ray_address_file(None)})"
    if recorded not in find_gcs_addresses():
        return LOCAL, f"note: no Ray process of this machine belongs to {named}; starting a Ray of this run's own"
    if not answers(recorded):
        return LOCAL, f"note: {named} does not answer; starting a Ray of this run's own"
    return recorded, None


def answers(address: str) -> bool:
    """Whether something accepts connections at HOST:PORT (the cluster's GCS)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            return True
    except (OSError, ValueError):
        return False


def joined_line(address: str) -> str:
    """One line on the cluster this process joined: its nodes, CPUs and GPUs."""
    nodes = [node for node in ray.nodes() if node["Alive"]]
    total = ray.cluster_resources()
    return (f"Ray: joined the cluster at {address}: {len(nodes)} node{'s' * (len(nodes) != 1)}, "
            f"{total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs (--local runs on a Ray "
            "of this run's own)")
