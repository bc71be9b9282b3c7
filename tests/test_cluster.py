"""The sweep on several Ray nodes started on this machine, and GPU placement."""

import pytest
import ray
from ray.cluster_utils import Cluster

from mtlrank_ray import ray_data
from mtlrank_ray.config import config_from_dict
from mtlrank_ray.data import prepare_store
from mtlrank_ray.results import collect, gene_table
from mtlrank_ray.sweep import run_sweep

from conftest import SMALL_SETTINGS

MB = 1024 ** 2


def sweep_settings(**resources):
    return config_from_dict({**SMALL_SETTINGS, "training": {"epochs": 2, "batch_size": 64},
                             "search": {"lambdas": [0.0, 0.01], "replicates": 1},
                             "asha": {"enabled": False}, "resources": resources})


@pytest.fixture(scope="module")
def three_nodes(small_atlas_template, tmp_path_factory):
    """A head with 1 CPU, a node with 1 CPU and 1 GPU, a node with 1 CPU."""
    store = tmp_path_factory.mktemp("nodes") / "store"
    prepare_store(small_atlas_template, sweep_settings(), store, tissues="Liver")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 150 * MB, "include_dashboard": False})
    gpu_node = cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=150 * MB)
    cluster.add_node(num_cpus=1, object_store_memory=150 * MB)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")
    blocks = {"Liver": ray_data.materialize_tissue(str(store), "Liver")}
    yield blocks, gpu_node.node_id
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_gpu_trials_run_on_the_gpu_node(three_nodes, tmp_path):
    blocks, gpu_node = three_nodes
    trials, failed = collect(run_sweep(blocks, sweep_settings(cpu=0.5, gpu=0.5), tmp_path))
    assert not failed and len(trials) == 4 * 2
    assert {metrics["node"] for _, metrics in trials} == {gpu_node}


@pytest.mark.slow
def test_a_three_node_sweep_spreads_and_completes(three_nodes, tmp_path):
    blocks, _ = three_nodes
    trials, failed = collect(run_sweep(blocks, sweep_settings(cpu=1), tmp_path))
    assert not failed
    assert len({metrics["node"] for _, metrics in trials}) >= 2
    genes = gene_table(trials, epochs=2, lasso=[])
    assert len(genes) == 16 * 2 and not genes.duplicated(["cluster", "lambda", "gene"]).any()
    assert genes.test_r2.notna().all() and (genes.epochs_run == 2).all()
