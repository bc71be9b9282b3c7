"""The filesystem Tune keeps a sweep in: every file written whole, and a file whose
content has not changed since this process wrote it is not written again.

- Whole: Tune copies the sweep's state (experiment_state-*.json, each trial's
  result.json) from the driver to storage file by file. On a local or shared
  disk a driver killed during a copy would leave a cut-off state file that no
  resume can read: here a file is written under a hidden name beside its
  target, flushed to disk and renamed onto it. Object storage needs none of
  this (an upload appears whole when it completes).
- Not again: each experiment snapshot copies the driver's whole experiment
  folder, every trial's logs included (Ray 2.60's `_FilesystemSyncer` copies
  the folder with pyarrow, `ray/train/_internal/storage.py`), so a sweep of
  thousands of trials would upload tens of thousands of unchanged files at
  every snapshot, and create every trial's folder again (a request each on
  object storage). A file's content is hashed as it is written; one identical
  to what this process last wrote to that path is dropped, and so is a folder
  this process already created. Files over `WHOLE_LIMIT` (checkpoints) are
  streamed and always written.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from ..data.store import filesystem, is_uri

WHOLE_LIMIT = 8 * 2**20  # bytes held to compare before writing; larger files stream through


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


class _Unless(io.RawIOBase):
    """An output stream that holds what is written (up to WHOLE_LIMIT), and at close
    writes it to the storage unless it equals what was last written to that path."""

    def __init__(self, storage: "TuneStorageHandler", path: str):
        self.storage, self.path = storage, path
        self.held, self.digest, self.stream = io.BytesIO(), hashlib.sha256(), None
        self.written_bytes = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.written_bytes

    def write(self, data) -> int:
        data = bytes(data)
        self.written_bytes += len(data)
        if self.stream is None and self.held.tell() + len(data) > WHOLE_LIMIT:
            self.storage.written.pop(self.path, None)
            self.stream = self.storage.open_base(self.path)
            self.stream.write(self.held.getvalue())
        if self.stream is not None:
            self.stream.write(data)
        else:
            self.held.write(data)
            self.digest.update(data)
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self.stream is not None:
                self.stream.close()
            elif self.storage.written.get(self.path) != (digest := self.digest.digest()):
                with self.storage.open_base(self.path) as stream:
                    stream.write(self.held.getvalue())
                self.storage.written[self.path] = digest
        finally:
            super().close()


class TuneStorageHandler(pafs.FileSystemHandler):
    """A pyarrow filesystem over `base` (see the module's docstring). `local`: `base` is
    the local disk, whose files are replaced by a rename."""

    def __init__(self, base: pafs.FileSystem, local: bool):
        self.base, self.local = base, local
        self.written: dict[str, bytes] = {}  # path -> digest of what this process wrote there
        self.made: set[str] = set()  # folders this process created

    def __getstate__(self) -> dict:  # Tune sends the filesystem to every trial: not the digests
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
        for known in [p for p in self.written if p == path or p.startswith(prefix)]:
            del self.written[known]
        self.made = {p for p in self.made if p != path and not p.startswith(prefix)}

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
        return pa.PythonFile(_Unless(self, path), mode="w")

    def open_append_stream(self, path, metadata):
        self._forget(path)
        return self.base.open_append_stream(path)


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
        return path, pafs.PyFileSystem(TuneStorageHandler(base, local=False))
    return str(Path(root).resolve()), pafs.PyFileSystem(TuneStorageHandler(pafs.LocalFileSystem(), local=True))
