"""Trial metrics through ray.util.metrics, read back from the node's Prometheus endpoint."""

import socket
import time
import urllib.request

import numpy as np
import pytest
import ray

from mtlrank_ray.core.trainer import EpochReport, Trial
from mtlrank_ray.distributed.trainable import record_metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@ray.remote
def record_one_epoch():
    record_metrics(Trial("Liver", 3, 0, 0.01),
                   EpochReport(2, np.zeros(2), 0.375, 1.0, 42.0, 2, np.zeros(2), np.zeros(2)))
    time.sleep(12)  # stay alive until the node's agent has exported the values


@pytest.mark.slow
def test_trial_metrics_reach_the_prometheus_endpoint():
    port = free_port()
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR",
             _metrics_export_port=port)
    try:
        task = record_one_epoch.remote()
        deadline, text = time.time() + 60, ""
        while "ray_mtlrank_val_r2" not in text and time.time() < deadline:
            time.sleep(1)
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                continue
        ray.get(task)
    finally:
        ray.shutdown()
    lines = {line.split(" ")[0]: float(line.split(" ")[-1]) for line in text.splitlines()
             if line.startswith("ray_mtlrank_") and 'tissue="Liver"' in line}
    by_name = {name.split("{")[0]: value for name, value in lines.items()}
    assert by_name["ray_mtlrank_val_r2"] == pytest.approx(0.375)
    assert by_name["ray_mtlrank_epochs"] == 2 and by_name["ray_mtlrank_steps_per_s"] == 42
    assert any('cluster="3"' in name and 'lambda="0.01"' in name for name in lines)
