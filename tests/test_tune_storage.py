"""Tune's storage: a file cut off by a kill leaves the last whole one, the state files
reach storage as one snapshot wrote them, and a snapshot uploads only the files that
changed."""

import io
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from ray.train._internal.storage import _delete_fs_path, _FilesystemSyncer

from mtlrank_ray.distributed import state_journal
from mtlrank_ray.distributed.tune_storage import _RAY_UPLOAD, TuneStorageHandler, tune_storage

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
    path, fs = tune_storage(str(tmp_path / "remote"))
    empty = len(pickle.dumps(fs))
    for trial in range(200):
        (staging / f"trial{trial}").mkdir(parents=True)
        (staging / f"trial{trial}" / "result.json").write_text("{}\n")
    (staging / "experiment_state-x.json").write_text("{}")
    snapshot(fs, staging, path)
    assert len(fs.handler.uploaded) == 200 and fs.handler.installed[path] != {}
    assert len(pickle.dumps(fs)) == empty
    restored = pickle.loads(pickle.dumps(fs)).handler
    assert restored.uploaded == {} and restored.installed == {}


STATE = ("experiment_state-s.json", "basic-variant-state-s.json", "callback-states-s.pkl")


def write_state(staging, version: int) -> dict[str, bytes]:
    """Tune's three state files as one snapshot writes them; every file differs by version."""
    trials = [{"trial": n, "version": version, "config": "x" * 200} for n in range(2000)]
    contents = dict(zip(STATE, [json.dumps(trials).encode(), f"generated {version}".encode(),
                                f"rung records {version}".encode()]))
    for name, content in contents.items():
        (staging / name).write_bytes(content)
    return contents


def stored_state(remote) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in remote.iterdir() if p.is_file() and not p.name.startswith(".")}


def test_the_state_files_reach_storage_as_tune_wrote_them_at_the_snapshot(tmp_path):
    """Tune builds the upload right after writing its state files, and uploads from a
    thread while its loop writes the next snapshot over them: the upload must not read
    the next one, cut off in the middle, or half of it."""
    staging, remote, plain = tmp_path / "staging", tmp_path / "remote", tmp_path / "plain"
    staging.mkdir()
    wrote = write_state(staging, 1)
    path, fs = tune_storage(str(remote))
    syncer = _FilesystemSyncer(storage_filesystem=fs, sync_period=0, sync_timeout=60)
    command, arguments = syncer._sync_up_command(local_path=str(staging), uri=path)
    following = write_state(staging, 2)  # the loop's next snapshot, cut short in the experiment state
    (staging / STATE[0]).write_bytes(following[STATE[0]][:len(following[STATE[0]]) // 2])
    command(**arguments)
    assert stored_state(remote) == wrote
    _RAY_UPLOAD(local_path=str(staging), fs=pafs.LocalFileSystem(), fs_path=str(plain))  # Ray's own
    assert stored_state(plain)[STATE[0]] != wrote[STATE[0]]  # the stand-in shows what it guards


def test_the_search_state_does_not_carry_the_last_snapshot(tmp_path):
    """Tune pickles its syncer, inside the experiment's spec, into the search state at each
    snapshot, and Ray's syncer keeps its last upload's arguments: the state files captured
    for that upload must not ride along, or each search state holds the one before."""
    staging, remote = tmp_path / "staging", tmp_path / "remote"
    staging.mkdir()
    path, fs = tune_storage(str(remote))
    syncer = _FilesystemSyncer(storage_filesystem=fs, sync_period=0, sync_timeout=60)
    sizes = []
    for version in range(6):
        write_state(staging, version)
        (staging / STATE[1]).write_bytes(pickle.dumps({"spec": {"storage": syncer}}))  # as Tune's searcher
        syncer.sync_up(str(staging), path)
        syncer.wait()
        sizes.append((remote / STATE[1]).stat().st_size)
        assert stored_state(remote)[STATE[0]] == (staging / STATE[0]).read_bytes()
    assert max(sizes[1:]) - min(sizes[1:]) < 1000, sizes
    assert sizes[-1] < len((staging / STATE[0]).read_bytes()) / 10, sizes
    restored = pickle.loads(pickle.dumps(syncer))  # a copy's upload sends the state files as Ray does
    write_state(staging, 9)
    restored.retry()
    restored.wait()
    assert stored_state(remote) == stored_state(staging)


def test_a_superseded_checkpoint_goes_once_a_later_snapshot_is_in_storage(tmp_path):
    """Tune deletes a trial's superseded checkpoint when it registers the next: the
    deletion waits until a snapshot captured after that is in storage, so storage's
    snapshot never names a checkpoint that is gone."""
    staging, remote = tmp_path / "staging", tmp_path / "remote"
    staging.mkdir()
    path, fs = tune_storage(str(remote))
    syncer = _FilesystemSyncer(storage_filesystem=fs, sync_period=0, sync_timeout=60)
    trial_fs = pickle.loads(pickle.dumps(fs))  # as a checkpoint reported by a trial carries it
    superseded = remote / "trial_a" / "checkpoint_000000"
    superseded.mkdir(parents=True)
    (superseded / "state").write_text("epoch 2")
    write_state(staging, 1)
    command, arguments = syncer._sync_up_command(local_path=str(staging), uri=path)  # names it
    _delete_fs_path(trial_fs, f"{path}/trial_a/checkpoint_000000")  # Tune let it go
    assert superseded.exists()
    command(**arguments)  # the snapshot captured before is installed: it still names it
    assert superseded.exists() and stored_state(remote) == stored_state(staging)
    write_state(staging, 2)
    syncer.sync_up(str(staging), path)
    syncer.wait()
    assert not superseded.exists()
    assert (remote / "trial_a").exists() and stored_state(remote) == stored_state(staging)


class Killed(Exception):
    pass


class Upload(io.BytesIO):
    """A file written to object storage: it appears, whole, when it is closed."""

    def __init__(self, appear):
        super().__init__()
        self.appear = appear

    def close(self):
        if not self.closed:
            content = self.getvalue()
            super().close()
            self.appear(content)


class DyingHandler(CountingHandler):
    """Object storage on a local folder, whose process dies at its `dies_at`-th change
    (an upload, a move, a deletion): before it, or, `after` it, once it is done."""

    def __init__(self, dies_at: int, after: bool):
        super().__init__()
        self.dies_at, self.after, self.changes = dies_at, after, 0

    def _change(self, do):
        self.changes += 1
        if self.changes == self.dies_at and not self.after:
            raise Killed
        done = do()
        if self.changes == self.dies_at:
            raise Killed
        return done

    def open_output_stream(self, path, metadata):
        def appear(content):
            self._change(lambda: Path(path).write_bytes(content))
        return pa.PythonFile(Upload(appear), mode="w")

    def move(self, src, dest):
        self._change(lambda: self.local.move(src, dest))

    def delete_dir(self, path):
        self._change(lambda: self.local.delete_dir(path))


def test_a_kill_during_the_install_leaves_one_snapshots_state_after_settling(tmp_path):
    """Killed at any step of putting a snapshot's state files in place (between two
    changes or right after one), storage holds, once settled as a resume settles it,
    the last snapshot's files or the new one's: never some of each."""
    outcomes = set()
    for dies_at in range(1, 12):
        for after in (False, True):
            staging, remote = tmp_path / f"staging{dies_at}{after}", tmp_path / f"remote{dies_at}{after}"
            staging.mkdir()
            remote.mkdir()
            old = write_state(staging, 1)
            live = DyingHandler(dies_at=0, after=False)
            fs = pafs.PyFileSystem(TuneStorageHandler(pafs.PyFileSystem(live), local=False))
            snapshot(fs, staging, remote)
            assert stored_state(remote) == old
            new = write_state(staging, 2)
            live.dies_at, live.after, live.changes = dies_at, after, 0
            try:
                snapshot(fs, staging, remote)
            except Killed:
                pass
            state_journal.settle(pafs.LocalFileSystem(), str(remote))
            stored = stored_state(remote)
            assert stored in (old, new), (dies_at, after, {k: v[:20] for k, v in stored.items()})
            assert not (remote / state_journal.JOURNAL).exists()
            outcomes.add("new" if stored == new else "old")
    assert outcomes == {"old", "new"}


def test_a_line_log_goes_up_to_its_last_whole_line(tmp_path):
    """Tune appends a trial's result while the snapshot uploads: storage gets whole
    lines, and the rest once the line is whole."""
    staging, remote = tmp_path / "staging", tmp_path / "remote"
    (staging / "trial").mkdir(parents=True)
    log = staging / "trial" / "result.json"
    log.write_text('{"epoch": 1}\n{"epoch": 2, "val')
    path, fs = tune_storage(str(remote))
    snapshot(fs, staging, path)
    assert (remote / "trial" / "result.json").read_text() == '{"epoch": 1}\n'
    with open(log, "a") as appending:
        appending.write('_r2": 0.5}\n')
    snapshot(fs, staging, path)
    assert (remote / "trial" / "result.json").read_text() == log.read_text()


def test_a_state_file_rewritten_to_the_same_size_and_time_is_still_seen(tmp_path):
    """The experiment state is rewritten in place: a rewrite of the same size within the
    clock's resolution looks unchanged to (inode, size, time), but its content differs."""
    staging, remote = tmp_path / "staging", tmp_path / "remote"
    staging.mkdir()
    write_state(staging, 1)
    path, fs = tune_storage(str(remote))
    snapshot(fs, staging, path)
    state = staging / STATE[0]
    before = state.stat()
    new = write_state(staging, 2)  # "version": 2 where it said 1: the same size
    os.utime(state, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (state.stat().st_ino, state.stat().st_size) == (before.st_ino, before.st_size)
    snapshot(fs, staging, path)
    assert stored_state(remote) == new


def test_a_journal_whose_list_was_cut_off_is_dropped(tmp_path):
    """A list cut off in the writing (a filesystem that writes in place) is no list: the
    files in place stay as they are."""
    remote = tmp_path / "remote"
    (remote / state_journal.JOURNAL).mkdir(parents=True)
    (remote / STATE[1]).write_text("generated 1")
    (remote / state_journal.JOURNAL / STATE[1]).write_text("generated 2")
    (remote / state_journal.JOURNAL / state_journal.LISTED).write_text('["basic-vari')
    state_journal.settle(pafs.LocalFileSystem(), str(remote))
    assert stored_state(remote) == {STATE[1]: b"generated 1"}
    assert not (remote / state_journal.JOURNAL).exists()


def test_a_settled_state_file_is_not_read_again_and_a_rewrite_of_it_is_seen(tmp_path, monkeypatch):
    """After a resume the staging folder also holds earlier sessions' experiment states,
    large and never rewritten: a capture reads them once, then goes by (inode, size,
    time), safe for a file that was already old when read; the live one is read each time."""
    staging = tmp_path / "staging"
    staging.mkdir()
    write_state(staging, 1)
    earlier = staging / "experiment_state-earlier.json"
    earlier.write_bytes(b"an earlier session's state")
    an_hour_ago = time.time() - 3600
    os.utime(earlier, (an_hour_ago, an_hour_ago))
    reads = []
    monkeypatch.setattr(state_journal, "_read", lambda path: reads.append(Path(path).name) or Path(path).read_bytes())
    installed, digests = {}, {}
    first = state_journal.capture(str(staging), installed, digests)
    assert sorted(first) == sorted([*STATE, earlier.name])
    installed.update((name, digest) for name, (_, digest) in first.items())
    reads.clear()
    assert state_journal.capture(str(staging), installed, digests) == {}
    assert sorted(reads) == sorted(STATE)  # the live files, written a moment ago
    earlier.write_bytes(b"an earlier session's stat")  # rewritten in place, the same size
    reads.clear()
    again = state_journal.capture(str(staging), installed, digests)
    assert again == {earlier.name: (b"an earlier session's stat", again[earlier.name][1])}
    assert earlier.name in reads


class _Trial:
    """What Tune's loggers read of a trial."""

    def __init__(self, local: Path, stored: Path):
        self.local_path, self.config, self.checkpoint = str(local), {}, "a checkpoint"
        local.mkdir(parents=True)  # the driver's folder for it, as Tune makes it
        self.storage = type("Storage", (), {"trial_fs_path": str(stored),
                                             "storage_filesystem": pafs.LocalFileSystem()})

    def init_local_path(self) -> None:
        Path(self.local_path).mkdir(parents=True, exist_ok=True)


def test_a_trial_restarted_from_a_checkpoint_keeps_the_drivers_log_or_gets_storages(tmp_path):
    """A trial paused at a rung restarts from its checkpoint in the same driver, whose
    log is ahead of storage's copy (a snapshot ago); a resumed driver has none."""
    from mtlrank_ray.distributed.tuner import _JsonLog

    stored = tmp_path / "storage" / "trial"
    stored.mkdir(parents=True)
    (stored / "result.json").write_text('{"epoch": 1}\n')
    for driver, before in (("same", '{"epoch": 1}\n{"epoch": 2}\n'), ("resumed", None)):
        trial = _Trial(tmp_path / driver / "trial", stored)
        if before is not None:
            Path(trial.local_path, "result.json").write_text(before)
        log = _JsonLog()
        log.log_trial_start(trial)
        log.log_trial_result(3, trial, {"epoch": 3})
        log.log_trial_end(trial)
        epochs = [json.loads(line)["epoch"] for line in Path(trial.local_path, "result.json").open()]
        assert epochs == ([1, 2, 3] if before else [1, 3])
