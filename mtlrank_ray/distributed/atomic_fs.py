"""Tune's storage on a local or shared disk, with every file written whole or not at all.

Tune copies the sweep's state (experiment_state-*.json, each trial's
result.json) from the driver to storage file by file, writing each in place.
A driver killed during a copy (kill -9, a lost head node, a laptop's power)
leaves a cut-off state file, and the sweep can no longer be resumed. Here a
file is written under a hidden name beside its target, flushed to disk and
renamed onto it when closed: a reader sees the old file or the new one. Object storage needs none of
this (an upload appears whole when it completes), so URIs are left to Tune.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from ..data.store import is_uri


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


class AtomicLocalHandler(pafs.FileSystemHandler):
    """pyarrow's local filesystem, whose output streams replace their file at close."""

    def __init__(self):
        self.local = pafs.LocalFileSystem()

    def __eq__(self, other) -> bool:
        return isinstance(other, AtomicLocalHandler)

    def __ne__(self, other) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "local-atomic"

    def normalize_path(self, path):
        return self.local.normalize_path(path)

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
        raise OSError("refusing to empty the root of the local filesystem")

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self.local.move(src, dest)

    def copy_file(self, src, dest):
        with self.local.open_input_stream(src) as source, self.open_output_stream(dest, None) as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)

    def open_input_stream(self, path):
        return self.local.open_input_stream(path)

    def open_input_file(self, path):
        return self.local.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return pa.PythonFile(_ReplaceOnClose(path), mode="w")

    def open_append_stream(self, path, metadata):
        return self.local.open_append_stream(path)


def tune_storage(root: str) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, storage_filesystem) for Tune's RunConfig, restore and analysis."""
    if is_uri(root):
        return root, None
    return str(Path(root).resolve()), pafs.PyFileSystem(AtomicLocalHandler())
