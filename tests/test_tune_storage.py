"""Tune's storage: a file cut off by a kill leaves the last whole one, and a snapshot
writes only the files whose content changed."""

import pickle
import subprocess
import sys

import pyarrow.fs as pafs

from mtlrank_ray.distributed import tune_storage as storage
from mtlrank_ray.distributed.tune_storage import TuneStorageHandler, tune_storage

WRITER = """
import os, sys
from mtlrank_ray.distributed.tune_storage import tune_storage
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


class CountingHandler(pafs.FileSystemHandler):
    """A local filesystem that counts the output streams opened on it (the writes a
    snapshot's upload makes)."""

    def __init__(self):
        self.local, self.opened = pafs.LocalFileSystem(), []

    def __getattr__(self, name):
        return getattr(self.local, name)

    def get_type_name(self):
        return "counting"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self.local.move(src, dest)

    def copy_file(self, src, dest):
        self.local.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.local.open_input_stream(path)

    def open_input_file(self, path):
        return self.local.open_input_file(path)

    def open_output_stream(self, path, metadata):
        self.opened.append(path)
        return self.local.open_output_stream(path)

    def open_append_stream(self, path, metadata):
        return self.local.open_append_stream(path)


def test_a_snapshot_writes_only_what_changed(tmp_path, monkeypatch):
    """Tune copies its whole experiment folder at each snapshot (pyarrow's copy_files):
    finished trials' logs are written once, a growing one each time it grew."""
    counting = CountingHandler()
    fs = pafs.PyFileSystem(TuneStorageHandler(pafs.PyFileSystem(counting), local=False))
    staging, remote = tmp_path / "staging", tmp_path / "remote"
    for trial in range(50):
        (staging / f"trial{trial}").mkdir(parents=True)
        (staging / f"trial{trial}" / "result.json").write_text(f'{{"epoch": 1, "trial": {trial}}}\n')
    remote.mkdir()
    pafs.copy_files(str(staging), str(remote), destination_filesystem=fs)
    assert len(counting.opened) == 50
    with open(staging / "trial7" / "result.json", "a") as log:  # one trial reported again
        log.write('{"epoch": 2}\n')
    pafs.copy_files(str(staging), str(remote), destination_filesystem=fs)
    assert counting.opened[50:] == [str(remote / "trial7" / "result.json")]
    assert (remote / "trial7" / "result.json").read_text() == (staging / "trial7" / "result.json").read_text()
    # Deleted (Tune drops superseded checkpoints): written again when it comes back.
    fs.delete_dir(str(remote / "trial3"))
    pafs.copy_files(str(staging), str(remote), destination_filesystem=fs)
    assert counting.opened[51:] == [str(remote / "trial3" / "result.json")]
    # A file above the limit (a checkpoint) streams through, and is always written.
    monkeypatch.setattr(storage, "WHOLE_LIMIT", 1000)
    big = bytes(range(256)) * 20
    for _ in range(2):
        with fs.open_output_stream(str(remote / "state.npz")) as stream:
            for start in range(0, len(big), 700):
                stream.write(big[start:start + 700])
    assert counting.opened.count(str(remote / "state.npz")) == 2
    assert (remote / "state.npz").read_bytes() == big


def test_the_filesystem_reaches_workers_without_this_process_digests(tmp_path):
    path, fs = tune_storage(str(tmp_path))
    with fs.open_output_stream(f"{path}/result.json") as stream:
        stream.write(b"{}")
    copy = pickle.loads(pickle.dumps(fs))  # as Tune sends it to each trial
    with copy.open_output_stream(f"{path}/result.json") as stream:
        stream.write(b"[]")
    assert (tmp_path / "result.json").read_bytes() == b"[]"
