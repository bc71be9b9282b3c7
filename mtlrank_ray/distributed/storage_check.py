"""Before any trial: is the run's root (the store when it is remote, and Tune's
trials) visible from every node of the cluster?"""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow.fs as pafs
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..config import Config
from ..data.store import filesystem
from ..errors import InputError


@ray.remote(num_cpus=0)
def _sees(path: str) -> str | None:
    """None if the file at `path` is visible on the node this runs on, else why not."""
    try:
        fs, inner = filesystem(path)
        return None if fs.get_file_info(inner).type == pafs.FileType.File else "no such file there"
    except OSError as exc:
        return str(exc).splitlines()[0]


def check_storage(config: Config, out: Path) -> None:
    """Refuse a run root that some node of the cluster cannot see: as Ray's own storage
    check does, but before the first checkpoint of every trial fails. A file written
    here must be visible from every node, so nodes on one machine or sharing a mount
    pass. (Nodes an autoscaler starts later are not checked.)"""
    root = config.run.root(out)
    fs, path = filesystem(root)
    marker = f".visible-{uuid.uuid4().hex[:12]}"
    where = (f"run.storage_path {config.run.storage_path}" if config.run.storage_path
             else f"the run folder {root} (run.storage_path is not set)")
    try:
        fs.create_dir(path)
        with fs.open_output_stream(f"{path}/{marker}") as handle:
            handle.write(b"every node must see this file")
    except OSError as exc:
        raise InputError(f"cannot write to {where}: {str(exc).splitlines()[0]}") from None
    try:
        nodes = [node for node in ray.nodes() if node["Alive"]]
        probes = [_sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node["NodeID"], soft=False)).remote(f"{root}/{marker}") for node in nodes]
        for node, problem in zip(nodes, ray.get(probes)):
            if problem:
                raise InputError(
                    f"{where} is not visible from Ray node {node['NodeManagerAddress']} "
                    f"({problem}); the nodes share no disk: set run.storage_path to storage "
                    "every node reaches, e.g. s3://your-bucket/mtlrank (README, 'Run on a cluster')")
    finally:
        fs.delete_file(f"{path}/{marker}")
