"""Where files live: a local path or a bucket URL (`gs://bucket/…`), both through one path type.

Every workdir, sweep directory, store and corpus path goes through `path()`, an `etils.epath.Path`:
local paths use the operating system, `gs://` goes through fsspec's `gcsfs` (orbax checkpoints go
through tensorstore on their own). What differs on a bucket is said here once: objects cannot be
appended to, so `Appender` rewrites a growing file whole (at most every `Appender.interval` seconds
and at close); an object appears whole when its upload completes, so `write_atomic` needs no
temporary name there; a bucket has no `**` glob, so `files_under` lists directory by directory.
Pointing it at another endpoint (a local emulator) is the libraries' own settings: `STORAGE_EMULATOR_HOST`
for gcsfs and `TENSORSTORE_GCS_HTTP_URL` for tensorstore (docs/tpu-vm.md).
"""

from __future__ import annotations

import os
import time
from typing import IO

from etils import epath

PathLike = str | os.PathLike


def path(p: PathLike) -> epath.Path:
    """`p` as a path of the one path type; `~` is expanded in a local path."""
    p = epath.Path(os.fspath(p))
    return p if is_remote(p) else p.expanduser()


def is_remote(p: PathLike) -> bool:
    """Whether `p` is a URL (gs://…) rather than a local path."""
    return "://" in os.fspath(p)


def size(p: PathLike) -> int:
    """The length of file `p` in bytes."""
    return int(path(p).stat().length)


def write_atomic(p: PathLike, data: str | bytes) -> None:
    """Write a whole file that a reader never sees half-written: a temporary name and a rename locally;
    directly on a bucket, where an object appears only once its upload is complete."""
    p = path(p)
    target = p if is_remote(p) else p.with_name(f"{p.name}.tmp{os.getpid()}")
    if isinstance(data, str):
        target.write_text(data, encoding="utf-8")
    else:
        target.write_bytes(data)
    if target != p:
        target.replace(p)


def files_under(root: PathLike) -> list[epath.Path]:
    """Every file below directory `root`, recursively, sorted by path relative to it; listed one
    directory at a time, as a bucket has no recursive glob."""
    root = path(root)
    files, pending = [], [root]
    while pending:
        for child in pending.pop().iterdir():
            (pending if child.is_dir() else files).append(child)
    return sorted(files, key=lambda f: f.relative_to(root).as_posix())


class Appender:
    """A file that grows by appends (metrics.jsonl, TensorBoard events, a log).

    Locally: opened in append mode and flushed on every `flush`. On a bucket, where an object is written
    whole, the content is held in memory (after what the file already holds) and the object rewritten
    on `flush` once `interval` seconds have passed since the last upload, and always on `close`; a
    process killed outright loses at most that interval, a stopped one (SIGTERM) nothing.
    """

    interval = 10.0

    def __init__(self, p: PathLike, binary: bool = False):
        self.path, self.binary = path(p), binary
        self.remote = is_remote(self.path)
        self._file: IO | None = None
        if self.remote:
            self._content = (self.path.read_bytes() if self.path.exists() else b"")
            self._uploaded = time.monotonic()
            self._dirty = False
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab" if binary else "a")

    def write(self, data: str | bytes) -> None:
        if self._file is not None:
            self._file.write(data)
            return
        self._content += data if isinstance(data, bytes) else data.encode("utf-8")
        self._dirty = True

    def flush(self, force: bool = False) -> None:
        if self._file is not None:
            self._file.flush()
        elif self._dirty and (force or time.monotonic() - self._uploaded >= self.interval):
            self.path.write_bytes(self._content)
            self._uploaded, self._dirty = time.monotonic(), False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        else:
            self.flush(force=True)


def read_range(p: PathLike, offset: int, length: int) -> bytes:
    """Bytes [offset, offset + length) of file `p` (fewer at its end): one ranged request on a bucket,
    where a file object would fetch a whole read-ahead block for every small random read."""
    p = path(p)
    if not is_remote(p):
        with p.open("rb") as f:
            f.seek(offset)
            return f.read(length)
    import fsspec  # epath's own backend for URLs

    fs, location = fsspec.core.url_to_fs(os.fspath(p))
    return fs.cat_file(location, start=offset, end=offset + length)
