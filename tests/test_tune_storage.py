"""Tune's storage: a file cut off by a kill leaves the last whole one, and a snapshot
uploads only the files that changed."""

import pickle
import subprocess
import sys
import time

import pyarrow.fs as pafs

from ray.train._internal.storage import _FilesystemSyncer

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


def snapshot(fs, staging, remote) -> None:
    """One experiment snapshot's upload, as Tune launches it (Ray's syncer, its thread)."""
    syncer = _FilesystemSyncer(storage_filesystem=fs, sync_period=0, sync_timeout=60)
    syncer.sync_up(str(staging), str(remote))
    syncer.wait()


def test_a_snapshot_writes_only_what_changed(tmp_path):
    """Tune uploads its whole experiment folder at each snapshot: finished trials' logs
    are written once, a growing one each time it grew, a rewritten one when rewritten."""
    counting = CountingHandler()
    fs = pafs.PyFileSystem(TuneStorageHandler(pafs.PyFileSystem(counting), local=False))
    staging, remote = tmp_path / "staging", tmp_path / "remote"
    for trial in range(50):
        (staging / f"trial{trial}").mkdir(parents=True)
        (staging / f"trial{trial}" / "result.json").write_text(f'{{"epoch": 1, "trial": {trial}}}\n')
    remote.mkdir()
    snapshot(fs, staging, remote)
    assert len(counting.opened) == 50
    with open(staging / "trial7" / "result.json", "a") as log:  # one trial reported again
        log.write('{"epoch": 2}\n')
    snapshot(fs, staging, remote)
    assert counting.opened[50:] == [str(remote / "trial7" / "result.json")]
    assert (remote / "trial7" / "result.json").read_text() == (staging / "trial7" / "result.json").read_text()
    # Rewritten in place to the same size (a state file): its modification time tells.
    state = staging / "trial9" / "result.json"
    time.sleep(0.02)
    state.write_text(state.read_text().replace("1", "2"))
    snapshot(fs, staging, remote)
    assert counting.opened[51:] == [str(remote / "trial9" / "result.json")]
    assert (remote / "trial9" / "result.json").read_text() == state.read_text()
    # Deleted (Tune drops superseded checkpoints): written again when it comes back.
    fs.delete_dir(str(remote / "trial3"))
    snapshot(fs, staging, remote)
    assert counting.opened[52:] == [str(remote / "trial3" / "result.json")]
    assert sorted(p.relative_to(remote) for p in remote.rglob("*.json")) == sorted(
        p.relative_to(staging) for p in staging.rglob("*.json"))


def test_the_filesystem_reaches_workers_without_this_process_record(tmp_path):
    """Tune pickles the filesystem into every trial: what this driver uploaded stays here."""
    staging = tmp_path / "staging"
    staging.mkdir()
    path, fs = tune_storage(str(tmp_path / "remote"))
    empty = len(pickle.dumps(fs))
    for trial in range(200):
        (staging / f"trial{trial}.json").write_text("{}")
    snapshot(fs, staging, path)
    assert len(fs.handler.uploaded) == 200
    assert len(pickle.dumps(fs)) == empty
    assert pickle.loads(pickle.dumps(fs)).handler.uploaded == {}
