"""Tune's state files reach storage whole and as one set.

At each experiment snapshot Tune writes, in the driver's staging folder, the
experiment state (every trial's status and configuration, rewritten in place),
the search algorithm's state (the trials it has generated) and its callbacks'
state (grouped ASHA's rung records), then uploads the folder from a thread while
its loop goes on and writes the next snapshot over the same files (Ray 2.60:
`ExperimentStateManager.sync_up_experiment_state`,
`ray/tune/execution/experiment_state.py`, runs `save_fn()` at every call and
launches the upload only when the last one is done). Uploaded file by file from
that folder, a driver killed mid-upload can leave in storage:
- an experiment state read in the middle of its rewrite, cut off: Tune's restore
  fails, logs "Failed to restore the run state" and starts the sweep over with
  no configuration (`TuneController.__init__`, `ray/tune/execution/tune_controller.py`);
- files of different snapshots: a search state behind the experiment state
  generates trials a second time, one ahead never generates those the
  experiment state lacks.

So the state files are read in the loop's thread, where Tune builds the upload
command right after writing them (`capture`), and installed through a journal
(`install`): the changed files are written under `.state-next/`, then the list of
them, and only then moved onto their places. `settle` (run before a resume reads
the sweep) moves a listed journal into place and drops an unlisted one, so
storage holds one snapshot's set.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import time

import pyarrow.fs as pafs

JOURNAL = ".state-next"
LISTED = "files.json"  # written last: the journal is whole


SETTLED_S = 2.0  # a file this much older than a capture: a rewrite since would show in its time


def capture(local_path: str, installed: dict[str, bytes],
            digests: dict[str, tuple[tuple, bytes]]) -> dict[str, tuple[bytes, bytes]]:
    """The state files (the top level) of the staging folder `local_path` whose content
    differs from what `installed` recorded: name -> (content, its digest). By content,
    not by modification time: the experiment state is rewritten in place, and a rewrite
    of the same size within the clock's resolution would look unchanged. A file already
    SETTLED_S old when it was last read (an earlier session's experiment state, after a
    resume) is not read again while its (inode, size, time) stay: `digests` records
    those, path -> (that key, digest)."""
    state = {}
    now = time.time()
    for entry in os.scandir(local_path):
        if entry.name.startswith(".") or not entry.is_file():
            continue  # hidden: Tune's files in the making
        info = entry.stat()
        key = (info.st_ino, info.st_size, info.st_mtime_ns)
        content = None
        if digests.get(entry.path, (None,))[0] == key:
            digest = digests[entry.path][1]
        else:
            content = _read(entry.path)
            digest = hashlib.blake2b(content, digest_size=16).digest()
            if now - info.st_mtime > SETTLED_S:
                digests[entry.path] = key, digest
            else:
                digests.pop(entry.path, None)
        if installed.get(entry.name) != digest:
            state[entry.name] = (_read(entry.path) if content is None else content), digest
    return state


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def install(fs: pafs.FileSystem, write, fs_path: str, state: dict[str, tuple[bytes, bytes]],
            installed: dict[str, bytes]) -> None:
    """Put the captured `state` at `fs_path`, as one set: one file by itself (`write(path,
    content)` writes a file whole), several through the journal. `installed` records
    them once in place; a failure (a kill) leaves what `settle` completes or drops."""
    if len(state) == 1:
        [(name, (content, digest))] = state.items()
        write(posixpath.join(fs_path, name), content)
        installed[name] = digest
        return
    if not state:
        return
    settle(fs, fs_path)  # a journal an earlier failed install left
    journal = posixpath.join(fs_path, JOURNAL)
    fs.create_dir(journal, recursive=True)
    for name, (content, _) in state.items():
        write(posixpath.join(journal, name), content)
    write(posixpath.join(journal, LISTED), json.dumps(sorted(state)).encode())
    _complete(fs, fs_path, sorted(state))
    installed.update((name, digest) for name, (_, digest) in state.items())


def settle(fs: pafs.FileSystem, fs_path: str) -> None:
    """Finish or drop the journal a killed upload left at `fs_path`."""
    journal = posixpath.join(fs_path, JOURNAL)
    listed = posixpath.join(journal, LISTED)
    names = None
    if fs.get_file_info(listed).type == pafs.FileType.File:
        with fs.open_input_stream(listed) as file:
            try:
                names = json.loads(file.readall())
            except ValueError:  # cut off (a filesystem that writes in place): no list yet
                names = None
    if names is not None:
        _complete(fs, fs_path, names)
    elif fs.get_file_info(journal).type != pafs.FileType.NotFound:
        fs.delete_dir(journal)  # cut off before its list: the files in place are one set


def _complete(fs: pafs.FileSystem, fs_path: str, names: list[str]) -> None:
    journal = posixpath.join(fs_path, JOURNAL)
    for name in names:
        source = posixpath.join(journal, name)
        if fs.get_file_info(source).type == pafs.FileType.File:  # not yet moved
            fs.move(source, posixpath.join(fs_path, name))
    fs.delete_dir(journal)
