"""The sweep on a cluster shaped like cluster.yaml's (mtlrank_ray.distributed.local_cluster):
a head with no CPU, two GPU worker nodes that share no /tmp with the driver or
each other, and a real S3 server (SeaweedFS) for the store and Tune's trials."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, SMALL_SETTINGS, write_config
from pyarrow import fs as pafs

from mtlrank_ray.distributed.local_cluster import ClusterUnavailable, LocalCluster

pytestmark = pytest.mark.slow
TESTS = REPO / "tests"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        cluster = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    except ClusterUnavailable as exc:
        pytest.skip(f"this machine cannot host a faithful local cluster: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture
def drivers():
    """Driver processes a test starts, each in a session of its own: whatever is still
    running when the test ends (a failed one included) is killed by its group id."""
    started = []
    yield started
    for process in started:
        with contextlib.suppress(ProcessLookupError):  # it may end between poll and kill
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def sweep_config(tmp_path, cluster, **settings):
    prefix = f"runs-{uuid.uuid4().hex[:8]}"
    return write_config(tmp_path / "cluster.yaml", {
        **SMALL_SETTINGS, "training": {"epochs": 4, "batch_size": 64},
        "search": {"lambdas": [0.0, 0.01], "replicates": 1}, "asha": {"enabled": False},
        "resources": {"cpu": 1, "gpu": 0.5, "require_gpu": False},
        "run": {"storage_path": cluster.storage(prefix), **settings.pop("run", {})}, **settings})


def tune_command(data, config, cluster, *extra):
    return [sys.executable, str(REPO / "tune.py"), "--data", str(data), "--tissue", "all",
            "--config", str(config), "--address", cluster.address, "--out", "run", "-q", *extra]


def driver_env(cluster):
    """The driver's environment as a user's shell on the head would have it."""
    env = {**os.environ, **cluster.driver_env()}
    env.pop("RAY_ADDRESS", None)
    return env


def trial_reports(cluster, config_path, run="run") -> dict[str, list[dict]]:
    """Trial name -> the results it reported, read from Tune's storage on S3."""
    storage = yaml.safe_load(config_path.read_text())["run"]["storage_path"]
    s3, root = cluster.s3.filesystem(), f"{storage.removeprefix('s3://')}/{run}/sweep"
    reports = {}
    for info in s3.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        if info.base_name == "result.json":
            with s3.open_input_stream(info.path) as handle:
                lines = handle.read().decode().splitlines()
            if lines:
                reports[info.path.split("/")[-2]] = [json.loads(line) for line in lines if line]
    return reports


def newest_checkpoints(cluster, config_path, run="run") -> dict[str, int]:
    """Trial name -> the epoch of its newest checkpoint on S3 (a trial saves after
    every epoch here). Workers upload checkpoints as they report, while result.json
    reaches S3 with the driver's next sync, epochs later."""
    storage = yaml.safe_load(config_path.read_text())["run"]["storage_path"]
    s3, root = cluster.s3.filesystem(), f"{storage.removeprefix('s3://')}/{run}/sweep"
    newest = {}
    for info in s3.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            name = info.path.split("/")[-2]
            newest[name] = max(newest.get(name, 0), int(info.base_name.split("_")[1]) + 1)
    return newest


def assert_complete(run, epochs, genes_per_tissue=16):
    genes = pd.read_parquet(run / "gene_r2.parquet")
    key = ["tissue", "cluster", "replicate", "model", "lambda", "gene"]
    assert not genes.duplicated(key).any()
    networks = genes[genes.model == "mtlrank"]
    assert len(networks) == 2 * genes_per_tissue * 2 and genes.test_r2.notna().all()
    assert (networks.epochs_run == epochs).all() if epochs else networks.epochs_run.notna().all()
    assert (genes.model == "lasso").sum() == (genes.model == "grnboost2").sum() == 2 * genes_per_tissue


def test_the_readme_demo_sweep_runs_on_gpu_workers_with_store_and_trials_on_s3(cluster, tmp_path):
    """README, "Try the cluster path on one machine", from a folder holding the checkout's
    tune.py and tune_configs/, with the variables the local cluster prints: without
    --address, the driver joins the cluster whose head wrote the address file it finds."""
    shutil.copy(REPO / "tune.py", tmp_path)
    shutil.copytree(REPO / "tune_configs", tmp_path / "tune_configs")
    command = [sys.executable, "tune.py", "--demo", "--tissue", "all", "--config",
               "tune_configs/local_cluster.yaml"]
    done = subprocess.run(command, cwd=tmp_path, env=driver_env(cluster), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Ray: joined the cluster at {cluster.address}: 3 nodes, 2 CPUs, 2 GPUs" in done.stdout
    run = tmp_path / "runs" / "local_cluster"
    assert_complete(run, epochs=None, genes_per_tissue=40)  # early stopping on: epochs vary
    assert "aligned store: s3://mtlrank/runs/local_cluster/store" in done.stdout
    assert not (run / "store").exists() and not (run / "sweep").exists()  # both live on S3
    reports = trial_reports(cluster, tmp_path / "tune_configs" / "local_cluster.yaml", "local_cluster")
    nodes = {r[-1]["node"] for r in reports.values()}
    workers = {node_id for ip, node_id in cluster.alive_nodes().items() if ip != cluster.head.ip}
    assert len(reports) == 16 and nodes <= workers  # never the head: GPU trials where GPUs are
    assert (run / "report" / "index.html").is_file() and (run / "rankings.parquet").is_file()


def test_prepare_writes_a_store_to_s3_that_the_next_prepare_reuses(cluster, small_atlas_template,
                                                                   small_config, tmp_path):
    store = cluster.storage(f"prep-{uuid.uuid4().hex[:8]}")
    command = [shutil.which("mtlrank-ray", path=os.path.dirname(sys.executable)), "prepare",
               "--data", str(small_atlas_template), "--config", str(small_config), "--out", store, "-q"]
    first, second = (subprocess.run(command, cwd=tmp_path, env=driver_env(cluster), capture_output=True,
                                    text=True, timeout=300) for _ in range(2))
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    assert first.stdout.count(" built (") == 2 and second.stdout.count(" reused (") == 2
    s3 = cluster.s3.filesystem()
    listed = {info.path.split("/", 2)[2] for info in
              s3.get_file_info(pafs.FileSelector(store.removeprefix("s3://"), recursive=True))}
    assert {"Liver/manifest.json", "Liver/expression.parquet", "Kidney_Left/target.parquet"} <= listed
    unreachable = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                                 env={**driver_env(cluster), "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert unreachable.returncode == 2 and "Traceback" not in unreachable.stderr
    assert unreachable.stderr.strip().splitlines()[-1].startswith(f"error: cannot use the store at {store}")


@pytest.fixture
def outside_tmp():
    """A folder of the driver's machine outside /tmp (workers' /tmp is private anyway)."""
    base = Path("/var/tmp") if os.access("/var/tmp", os.W_OK) else Path.home()
    folder = Path(tempfile.mkdtemp(prefix="mtlrank-test-", dir=base))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_workers_see_neither_the_run_folder_nor_the_data_wherever_they_are(
        cluster, small_atlas_template, outside_tmp):
    """Run and data folders outside /tmp: a run folder as storage is refused before any
    trial, and the same sweep with its store and trials on S3 runs."""
    data = Path(shutil.copytree(small_atlas_template, outside_tmp / "atlas"))
    config = sweep_config(outside_tmp, cluster, run={"storage_path": None})
    done = subprocess.run(tune_command(data, config, cluster), cwd=outside_tmp,
                          env=driver_env(cluster), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: the run folder {outside_tmp / 'run'} (run.storage_path is not set) "
                            "is not visible from Ray node 127.77.0.")
    assert "run.storage_path" in error and "s3://" in error and "Traceback" not in done.stderr
    assert not (outside_tmp / "run" / "sweep").exists()

    config = sweep_config(outside_tmp, cluster, training={"epochs": 2, "batch_size": 64})
    done = subprocess.run(tune_command(data, config, cluster), cwd=outside_tmp,
                          env=driver_env(cluster), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_complete(outside_tmp / "run", epochs=2)


def test_grouped_asha_keeps_its_rung_records_when_a_killed_driver_resumes(cluster, tmp_path, drivers):
    def driver(storage, *extra):
        with (tmp_path / f"driver{len(drivers)}.err").open("w") as err:  # the driver keeps its own
            drivers.append(subprocess.Popen(
                [sys.executable, str(TESTS / "asha_resume_driver.py"), cluster.address, str(storage),
                 *extra], env={**driver_env(cluster), "TUNE_GLOBAL_CHECKPOINT_S": "0"}, cwd=tmp_path,
                stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True))
        return drivers[-1]

    def printed(process):
        out = process.communicate(timeout=300)[0]
        assert process.returncode == 0, (tmp_path / f"driver{drivers.index(process)}.err").read_text()[-3000:]
        return json.loads(out.splitlines()[-1])

    expected = printed(driver(tmp_path / "whole"))
    # The weaker half at rung 1, then the weaker of three at 2 and of two at 4.
    assert expected == {"0.0": 6, "0.01": 4, "0.02": 2, "0.03": 1, "0.04": 1, "0.05": 1}

    interrupted = driver(tmp_path / "killed")
    deadline = time.time() + 300
    while True:  # killed once three trials have reported: the group is mid-rung or past it
        if len([r for r in (tmp_path / "killed" / "asha").glob("*/result.json") if r.stat().st_size]) >= 3:
            break
        assert interrupted.poll() is None and time.time() < deadline
        time.sleep(0.1)
    os.killpg(interrupted.pid, signal.SIGKILL)
    interrupted.wait()
    assert printed(driver(tmp_path / "killed", "--resume")) == expected


# A trial at half its epochs or fewer when its node is frozen is mid-run: every trial
# here runs all of them (no early stopping).
EPOCHS_LOST = 20


def test_a_lost_worker_node_costs_no_trial_and_no_result(cluster, small_atlas_template, tmp_path,
                                                         drivers):
    config = sweep_config(tmp_path, cluster, training={"epochs": EPOCHS_LOST, "batch_size": 16},
                          run={"checkpoint_every_epochs": 1})
    log = tmp_path / "driver.log"  # a file, not a pipe nobody reads while the test polls
    # Which node runs a trial reaches S3 in its result.json, with the driver's snapshots:
    # 10 s apart or more by default, longer than a trial here. One a second (Tune's
    # TUNE_GLOBAL_CHECKPOINT_S) shows it while the trial runs.
    driver = subprocess.Popen(tune_command(small_atlas_template, config, cluster), cwd=tmp_path,
                              env={**driver_env(cluster), "TUNE_GLOBAL_CHECKPOINT_S": "1"},
                              stdout=subprocess.DEVNULL,
                              stderr=open(log, "w"), start_new_session=True)
    drivers.append(driver)
    lost = cluster.nodes[0]
    lost_id = cluster.alive_nodes()[lost.ip]
    deadline = time.time() + 600
    while True:  # at least two trials finished, and one mid-run on the node to lose
        reports = trial_reports(cluster, config)
        finished = [r for r in reports.values() if r[-1]["epoch"] == EPOCHS_LOST]
        there = [name for name, r in reports.items() if r[-1]["node"] == lost_id]
        if len(finished) >= 2 and there:
            # Frozen, the node's trials stand still while S3 is read: on two loaded cores a
            # listing can take as long as the rest of a trial. Seconds: the GCS declares a
            # node dead after 5 health checks fail, each waiting 10 s for an answer
            # (health_check_failure_threshold, health_check_timeout_ms: ray_config_def.h).
            lost.signal(signal.SIGSTOP)
            saved = newest_checkpoints(cluster, config)
            running_there = [name for name in there if 0 < saved.get(name, 0) <= EPOCHS_LOST // 2]
            if running_there:
                break
            lost.signal(signal.SIGCONT)
        assert driver.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "no trial ran on the node to lose"
        time.sleep(0.5)
    lost.kill()
    cluster.nodes.remove(lost)
    cluster.add_worker(len(cluster.nodes) + 1)  # a replacement, as an autoscaler would start
    assert driver.wait(timeout=900) == 0, log.read_text()[-3000:]
    assert_complete(tmp_path / "run", epochs=EPOCHS_LOST)
    reports = trial_reports(cluster, config)
    interrupted = [name for name, r in reports.items()  # by the loss: unfinished there
                   if max((x["epoch"] for x in r if x["node"] == lost_id), default=EPOCHS_LOST) < EPOCHS_LOST]
    assert interrupted, ("no trial was running on the node when it was lost", running_there,
                         {name: [(r["epoch"], r["node"][:8]) for r in reports[name]] for name in running_there})
    for name in interrupted:  # went on from a checkpoint (never from epoch 1), elsewhere
        epochs = [r["epoch"] for r in reports[name]]
        assert sorted(set(epochs)) == list(range(1, EPOCHS_LOST + 1)) and epochs.count(1) == 1, (name, epochs)
        assert reports[name][-1]["node"] != lost_id


def test_a_trial_that_finds_no_gpu_fails_at_once_naming_its_node(cluster, small_atlas_template,
                                                                  tmp_path):
    """The workers advertise a GPU TensorFlow cannot see, as a node with a broken driver
    would: the sweep ends at the first such trial, in one line, before any epoch."""
    config = sweep_config(tmp_path, cluster, training={"epochs": 50, "batch_size": 64},
                          resources={"cpu": 1, "gpu": 0.5})
    started = time.time()
    done = subprocess.run(tune_command(small_atlas_template, config, cluster), cwd=tmp_path,
                          env=driver_env(cluster), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: a trial asked for resources.gpu 0.5 but TensorFlow sees no GPU "
                            "on Ray node 127.77.0."), error
    assert "resources.gpu: 0" in error
    assert not any(r for r in trial_reports(cluster, config).values())  # no epoch was trained
    assert time.time() - started < 150  # not after every trial used its retries (about 300 s)
