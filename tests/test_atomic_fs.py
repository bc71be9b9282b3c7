"""Tune's storage on a local disk: a process killed while writing a file leaves the old one."""

import pickle
import subprocess
import sys

from mtlrank_ray.distributed.atomic_fs import tune_storage

WRITER = """
import os, sys
from mtlrank_ray.distributed.atomic_fs import tune_storage
path, fs = tune_storage(sys.argv[1])
stream = fs.open_output_stream(path + "/experiment_state.json")
stream.write(b'{"trials": [')
stream.flush()
os._exit(9)  # killed before the file is whole
"""


def test_a_file_cut_off_by_a_kill_leaves_the_last_whole_one(tmp_path):
    state = tmp_path / "experiment_state.json"
    path, fs = tune_storage(str(tmp_path))
    with fs.open_output_stream(str(state)) as stream:
        stream.write(b'{"trials": []}')
    assert state.read_bytes() == b'{"trials": []}'
    killed = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path)])
    assert killed.returncode == 9
    assert state.read_bytes() == b'{"trials": []}'
    assert [p.name for p in tmp_path.glob("*.json")] == ["experiment_state.json"]


def test_a_uri_is_left_to_tune_and_the_local_filesystem_reaches_workers(tmp_path):
    assert tune_storage("s3://bucket/run") == ("s3://bucket/run", None)
    path, fs = tune_storage(str(tmp_path))
    copy = pickle.loads(pickle.dumps(fs))  # as Tune sends it to each trial
    with copy.open_output_stream(f"{path}/result.json") as stream:
        stream.write(b"{}")
    assert (tmp_path / "result.json").read_bytes() == b"{}"
