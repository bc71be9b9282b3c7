"""The filesystem Tune keeps a sweep in: every file written whole, the state files
as one set, and a snapshot uploads only the files that changed since this
process uploaded them.

- Whole: Tune copies the sweep's files (each trial's result.json) from the
  driver to storage file by file. On a local or shared disk a driver killed
  during a copy would leave a cut-off file: here a file is written under a
  hidden name beside its target, flushed to disk and renamed onto it. Object
  storage needs none of this (an upload appears whole when it completes). A
  trial's line logs (result.json, progress.csv), which Tune appends to while
  they upload, go up to their last whole line.
- One set: the experiment, search and callback states are taken as Tune wrote
  them and installed together (`state_journal`).
- Only what changed: each experiment snapshot uploads the driver's whole
  experiment folder, every trial's logs included (Ray 2.60's
  `_FilesystemSyncer._sync_up_command` returns `_upload_to_fs_path`, which
  copies the folder with pyarrow's `copy_files`,
  `ray/train/_internal/storage.py`): a snapshot's cost grows with every trial
  the sweep has started (measured: 0.2 ms a file unchanged, 5 files a trial, so
  about 10 s a snapshot at 9,600 trials on an idle core). For this filesystem
  the upload is `upload_changed`: a file whose inode, size and modification
  time are those it had when this process last uploaded it is not read at
  all, and a folder this process already created is not created again. The
  record is this process's: a new driver (a resume) uploads everything once.
- Checkpoints let go after a snapshot: a checkpoint folder Tune deletes waits
  for the next snapshot in storage (`snapshots`).
- Nothing carried over: Ray keeps an upload's arguments on its syncer
  (`_BackgroundSyncer._current_cmd`, kept by its `__getstate__`), and Tune
  pickles the syncer inside the experiment's spec into the search state at
  every snapshot, and deep-copies it into every trial it generates (into the
  experiment state, and to the trial's actor). The state files captured for an
  upload (`Capture`) therefore pickle and copy to nothing: carried along, each
  search state would hold the one before it (24 MB after 32 trials).
"""

from __future__ import annotations

import io
import os
import posixpath
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
from ray.train._internal import storage as ray_storage

from ..data.store import filesystem, is_uri
from . import state_journal
from .snapshots import SUPERSEDED

UPLOADS_AT_ONCE = 16  # object storage answers each request in tens of ms: several in flight
LINE_LOGS = {"result.json", "progress.csv"}  # appended to by Tune as trials report


class _ReplaceOnClose(io.FileIO):
    """A file written beside `target` (hidden, so Tune's globs never match it), flushed
    to disk and renamed onto it at close; after a failed write (a full disk) it is
    removed instead, and the target stays as it was."""

    def __init__(self, target: str):
        self.target = target
        self.failed = False
        folder, name = os.path.split(target)
        super().__init__(os.path.join(folder, f".{name}.partial-{uuid.uuid4().hex[:8]}"), "wb")

    def write(self, data) -> int:
        try:
            return super().write(data)
        except OSError:
            self.failed = True
            raise

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self.failed:
                os.fsync(self.fileno())
        except OSError:
            self.failed = True
        super().close()
        if self.failed:
            os.unlink(self.name)
        else:
            os.replace(self.name, self.target)


class TuneStorageHandler(pafs.FileSystemHandler):
    """A pyarrow filesystem over `base` (see the module's docstring). `local`: `base` is
    the local disk, whose files are replaced by a rename."""

    defers_checkpoint_deletion = True  # `snapshots`: Tune need not force a snapshot per checkpoint

    def __init__(self, base: pafs.FileSystem, local: bool):
        self.base, self.local = base, local
        self.uploaded: dict[str, tuple[int, int, int]] = {}  # path -> (inode, size, mtime) of its source
        self.made: set[str] = set()  # folders this process created
        self.installed: dict[str, dict[str, bytes]] = {}  # experiment path -> its state files' digests
        self.digests: dict[str, tuple[tuple, bytes]] = {}  # staging files read once settled
        # Ray starts a second upload when one outlasts its sync_timeout: installs take turns,
        # and one captured before the last installed is dropped.
        self.installing = threading.Lock()
        self.last_installed: dict[str, int] = {}  # experiment path -> capture number

    def __getstate__(self) -> dict:  # Tune sends the filesystem to every trial: not the record
        return {"base": self.base, "local": self.local}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["base"], state["local"])

    def __eq__(self, other) -> bool:
        return isinstance(other, TuneStorageHandler) and (self.base, self.local) == (other.base, other.local)

    def __ne__(self, other) -> bool:
        return not self == other

    def open_base(self, path: str):
        if self.local:
            return pa.PythonFile(_ReplaceOnClose(path), mode="w")
        return self.base.open_output_stream(path)

    def _forget(self, path: str) -> None:
        """What this process wrote under `path` is no longer known to be there."""
        prefix = path.rstrip("/") + "/"
        for known in [p for p in list(self.uploaded) if p == path or p.startswith(prefix)]:
            self.uploaded.pop(known, None)
        self.made = {p for p in list(self.made) if p != path and not p.startswith(prefix)}
        for experiment, files in list(self.installed.items()):
            if experiment == path or experiment.startswith(prefix):
                del self.installed[experiment]
            elif posixpath.dirname(path) == experiment:  # one of its state files
                files.pop(posixpath.basename(path), None)

    def get_type_name(self) -> str:
        return f"tune-{self.base.type_name}"

    def normalize_path(self, path):
        return self.base.normalize_path(path)

    def get_file_info(self, paths):
        return self.base.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.base.get_file_info(selector)

    def create_dir(self, path, recursive):
        # Each snapshot creates every trial's folder again: on object storage a request each.
        if path not in self.made:
            self.base.create_dir(path, recursive=recursive)
            self.made.add(path)

    def delete_dir(self, path):
        if SUPERSEDED.holds(path):
            SUPERSEDED.add(self.base, path)  # Tune let it go: deleted after the next snapshot
            return
        self._forget(path)
        self.base.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._forget(path)
        self.base.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("refusing to empty the root of a filesystem")

    def delete_file(self, path):
        self._forget(path)
        self.base.delete_file(path)

    def move(self, src, dest):
        self._forget(src)
        self._forget(dest)
        self.base.move(src, dest)

    def copy_file(self, src, dest):
        self._forget(dest)
        with self.base.open_input_stream(src) as source, self.open_base(dest) as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)

    def open_input_stream(self, path):
        return self.base.open_input_stream(path)

    def open_input_file(self, path):
        return self.base.open_input_file(path)

    def open_output_stream(self, path, metadata):
        self.uploaded.pop(path, None)  # a file: no scan of the record for what lies under it
        return self.open_base(path)

    def open_append_stream(self, path, metadata):
        self._forget(path)
        return self.base.open_append_stream(path)


class Capture:
    """The state files `state_journal.capture` took for one upload (name -> (content,
    digest)), and the capture's number. This process's alone: a copy is None (see the
    module's docstring), whose upload sends the state files as Ray does."""

    def __init__(self, number: int, files: dict[str, tuple[bytes, bytes]]):
        self.number, self.files = number, files

    def __reduce__(self):
        return type(None), ()  # NoneType() is None


def upload_changed(local_path: str, handler: TuneStorageHandler, fs_path: str,
                   state: Capture | None = None) -> None:
    """Upload the folder `local_path` to `fs_path`: the files whose (inode, size,
    modification time) differ from their last upload by this process, several at once.
    With `state`, the folders first and then that set of state files."""
    changed = []
    for folder, _, names in os.walk(local_path):
        relative = os.path.relpath(folder, local_path)
        target = fs_path if relative == "." else posixpath.join(fs_path, *Path(relative).parts)
        handler.create_dir(target, recursive=True)
        if relative == "." and state is not None:
            continue  # the state files: `state`
        for name in names:
            source = os.path.join(folder, name)
            stat = os.stat(source)
            seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if handler.uploaded.get(posixpath.join(target, name)) != seen:
                changed.append((source, posixpath.join(target, name), seen))

    def upload(source: str, target: str, seen: tuple[int, int, int]) -> None:
        with open(source, "rb") as read, handler.open_base(target) as write:
            if posixpath.basename(target) in LINE_LOGS:  # a line being appended waits for the next
                content = read.read()
                write.write(content[:content.rfind(b"\n") + 1])
            else:
                while chunk := read.read(1 << 20):
                    write.write(chunk)
        # The state before reading: a write during the copy is uploaded again next time.
        handler.uploaded[target] = seen

    with ThreadPoolExecutor(UPLOADS_AT_ONCE) as pool:
        list(pool.map(lambda item: upload(*item), changed))
    if state is not None:
        with handler.installing:
            if state.number >= handler.last_installed.get(fs_path, -1):  # else a later one is in place
                installed = handler.installed.setdefault(fs_path, {})
                try:
                    state_journal.install(handler.base, _writer(handler), fs_path, state.files, installed)
                except BaseException:
                    handler.installed.pop(fs_path, None)  # what is in place is no longer known
                    raise
                handler.last_installed[fs_path] = state.number
        SUPERSEDED.delete_after(state.number, fs_path)


def _writer(handler: TuneStorageHandler):
    def write(path: str, content: bytes) -> None:
        with handler.open_base(path) as out:
            out.write(content)
    return write


def _upload_to_fs_path(local_path: str, fs: pafs.FileSystem, fs_path: str, exclude=None,
                       state=None) -> None:
    """Ray's upload of a snapshot, `upload_changed` where the folder goes to this filesystem."""
    handler = _ours(fs)
    if handler is not None and os.path.isdir(local_path) and not exclude:
        upload_changed(local_path, handler, fs_path, state)
    else:
        _RAY_UPLOAD(local_path=local_path, fs=fs, fs_path=fs_path, exclude=exclude)


def _ours(fs: pafs.FileSystem) -> TuneStorageHandler | None:
    handler = getattr(fs, "handler", None)
    return handler if isinstance(handler, TuneStorageHandler) else None


def _sync_up_command(syncer, local_path: str, uri: str, exclude=None):
    """Ray 2.60's `_FilesystemSyncer._sync_up_command` with `_upload_to_fs_path` above. Tune
    builds it in its loop's thread right after writing the state files, and uploads in
    another while the loop writes the next ones: the state files are read here."""
    handler = _ours(syncer.storage_filesystem)
    state = None
    if handler is not None and os.path.isdir(local_path) and not exclude:
        state = Capture(SUPERSEDED.capture_number(), state_journal.capture(
            local_path, handler.installed.get(uri, {}), handler.digests))
    return _upload_to_fs_path, dict(local_path=local_path, fs=syncer.storage_filesystem,
                                    fs_path=uri, exclude=exclude, state=state)


_RAY_UPLOAD = ray_storage._upload_to_fs_path
ray_storage._FilesystemSyncer._sync_up_command = _sync_up_command


def tune_storage(root: str) -> tuple[str, pafs.FileSystem]:
    """(storage_path, storage_filesystem) for Tune's RunConfig, restore and analysis: the
    path of `root` (a folder or a URI) inside the filesystem that writes it as above."""
    if is_uri(root):
        base, path = filesystem(root)
        if isinstance(base, pafs.S3FileSystem):
            # Tune's uploads call this handler from pyarrow's IO threads, and S3's background
            # writes wait for those same threads: once all are busy, nothing moves. Written in
            # the calling thread instead (the options as the URI gave them, through pickling's
            # reconstructor).
            rebuild, (options,) = base.__reduce__()
            base = rebuild({**options, "background_writes": False})
        # file:// is a local disk all the same: its files are replaced by a rename.
        return path, pafs.PyFileSystem(TuneStorageHandler(base, local=isinstance(base, pafs.LocalFileSystem)))
    return str(Path(root).resolve()), pafs.PyFileSystem(TuneStorageHandler(pafs.LocalFileSystem(), local=True))
