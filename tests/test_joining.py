"""Which Ray a sweep runs on (distributed.joining): the address file `ray start --head`
leaves, as Ray 2.60 writes and reads it, in a Ray temp dir of the test's own. Which
Ray processes this machine runs (Ray's find_gcs_addresses, read from `ps`) is set by
the test: a real head here is test_cluster's (the README's local-cluster sweep)."""

import socket

import pytest
import ray._private.utils as ray_utils

from mtlrank_ray.distributed import joining
from mtlrank_ray.distributed.joining import LOCAL, ray_address


@pytest.fixture
def address_file(tmp_path, monkeypatch):
    """Write the address file where Ray looks for it (RAY_TMPDIR/ray/ray_current_cluster)."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()

    def write(address: str) -> str:
        ray_utils.write_ray_address(address, str(tmp_path / "ray"))  # what `ray start` calls
        return str(tmp_path / "ray" / "ray_current_cluster")
    return write


@pytest.fixture
def listening():
    """A port something accepts connections on, as a head's GCS does."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"127.0.0.1:{server.getsockname()[1]}"


def closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"  # nothing listens once it is closed


@pytest.fixture
def ray_processes(monkeypatch):
    """The GCS addresses this machine's Ray processes name."""
    running = set()
    monkeypatch.setattr(joining, "find_gcs_addresses", lambda: running)
    return running


def test_a_live_head_on_this_machine_is_joined(address_file, listening, ray_processes):
    address_file(listening)
    ray_processes.add(listening)
    assert ray_address(None, local=False, environment={}) == (listening, None)


def test_an_address_file_whose_cluster_is_gone_gives_a_note_and_a_ray_of_the_runs_own(address_file,
                                                                                         ray_processes):
    gone = closed_port()
    path = address_file(gone)
    assert ray_address(None, local=False, environment={}) == (
        LOCAL, f"note: no Ray process of this machine belongs to the Ray cluster at {gone} (named in "
               f"{path}); starting a Ray of this run's own")
    ray_processes.add(gone)  # its processes hang, or another head took the name
    assert ray_address(None, local=False, environment={}) == (
        LOCAL, f"note: the Ray cluster at {gone} (named in {path}) does not answer; starting a "
               "Ray of this run's own")


def test_an_address_something_else_answers_at_is_not_joined(address_file, listening, ray_processes):
    """A stale file naming a port another server now holds (Redis's 6379, say)."""
    address_file(listening)
    assert ray_address(None, local=False, environment={})[0] == LOCAL


def test_without_an_address_file_a_ray_of_the_runs_own_starts(address_file):
    assert ray_address(None, local=False, environment={}) == (LOCAL, None)


def test_local_address_and_ray_address_come_before_the_file(address_file, listening, ray_processes):
    address_file(listening)
    ray_processes.add(listening)
    assert ray_address(None, local=True, environment={"RAY_ADDRESS": "10.0.0.1:6379"}) == (LOCAL, None)
    assert ray_address("10.0.0.2:6379", local=False, environment={"RAY_ADDRESS": "10.0.0.1:6379"}) == (
        "10.0.0.2:6379", None)
    assert ray_address(None, local=False, environment={"RAY_ADDRESS": "10.0.0.1:6379"}) == ("10.0.0.1:6379", None)


def test_local_and_address_cannot_be_given_together(capsys):
    from mtlrank_ray.cli import tune_main
    with pytest.raises(SystemExit) as exit_:
        tune_main(["--demo", "--local", "--address", "10.0.0.1:6379"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
