"""What keeps a run safe: one writer per workdir, a clean stop on SIGTERM/SIGINT, divergence detection.

Cloud TPU VMs are preempted with SIGTERM; a researcher presses Ctrl-C. Either way the loop finishes the
step it is on, writes a checkpoint and the metrics, and exits with `EXIT_PREEMPTED`, so running the same
command again resumes where it stopped.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from gptjax import storage

EXIT_BAD_INPUT = 2
EXIT_PREEMPTED = 3
EXIT_DIVERGED = 4
EXIT_BUSY = 5  # a sweep left variants alone because another sweep was training them


class Preempted(Exception):  # noqa: N818 (a stop, not an error)
    """Training stopped on a signal after checkpointing; the message says how to resume."""

    exit_code = EXIT_PREEMPTED


class Diverged(Exception):  # noqa: N818 (named for what the run did)
    """Too many consecutive non-finite steps; nothing non-finite was applied or checkpointed."""

    exit_code = EXIT_DIVERGED


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT outside the training loop, raised where the program is (as Ctrl-C raises
    KeyboardInterrupt, of which it is a kind, so `except Exception` never swallows it)."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_interrupted = False


def _raise_interrupted(signum, frame) -> None:
    global _interrupted
    if _interrupted:  # once: a second Ctrl-C (or a forwarded copy) must not break the clean-up
        return
    _interrupted = True
    raise Interrupted(signum)


def stopped(error: KeyboardInterrupt, left: str) -> int:
    """`EXIT_PREEMPTED`, after one line on stderr naming the signal behind `error` and what it `left`."""
    import sys

    name = error.args[0] if isinstance(error, Interrupted) else "SIGINT"
    print(f"stopped by {name} {left}", file=sys.stderr)
    return EXIT_PREEMPTED


def stop_on_signals() -> None:
    """Make SIGTERM and SIGINT raise `Interrupted` from now on, in every command (the entry points call it
    first, before JAX is imported): outside the training loop a stop exits with `EXIT_PREEMPTED` and one
    line, never the shell's 143 or a KeyboardInterrupt traceback. The loop replaces these handlers with
    `StopSignals` while it runs and puts them back after."""
    for sig in StopSignals.SIGNALS:
        signal.signal(sig, _raise_interrupted)


def check_writable(path: storage.PathLike, what: str = "workdir") -> None:
    """ConfigError (one line) unless `path` is, or can be made, a directory this process writes into:
    its nearest existing ancestor must be a directory in which a probe directory can be made (and is
    removed at once), which catches a regular file on the way, a read-only mount or directory, and
    pseudo-filesystems such as /proc. Cheap, so commands call it before any expensive work."""
    import tempfile

    from gptjax.config import ConfigError

    if storage.is_remote(path):  # a bucket has no directories to probe; its permissions fail the first write
        return
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{what} {path} cannot be created: {existing} is a file, not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".gptjax-probe-", dir=existing))
    except OSError as e:
        raise ConfigError(f"{what} {path} cannot be written: {existing}: {e.strerror}") from None


class WorkdirLock:
    """An exclusive `flock` on `<workdir>/.lock`, held for the whole run.

    The kernel drops the lock when the process dies, however it dies, so a crashed run never leaves a
    workdir locked; the file only records who holds it, for the error message.
    """

    def __init__(self, workdir: storage.PathLike):
        self.path = storage.path(workdir) / ".lock"
        self.file = None

    def __enter__(self) -> WorkdirLock:
        from gptjax.config import ConfigError

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # a local disk only (workdir_lock): flock needs a descriptor
            file = open(os.fspath(self.path), "a+")
        except OSError as e:  # check_writable finds these first; this is for what changed since
            raise ConfigError(f"cannot create {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise ConfigError(f"workdir {self.path.parent} is in use by {holder}; wait for it to finish "
                              f"or use another --workdir") from None
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        file.flush()
        self.file = file
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


class ObjectLock:
    """The workdir lock of a bucket (gs://…): a lock object created only if absent, via the storage's
    generation preconditions (tensorstore's conditional writes; `ifGenerationMatch` on GCS).

    No kernel drops it when the holder dies, so the holder rewrites it every `heartbeat_s` seconds
    (again conditionally, on its own generation) and a lock not rewritten for `stale_s` seconds belongs
    to a dead process: it is taken over, conditionally on the generation that was read, so of two
    processes racing for it exactly one wins. `url` is the directory as tensorstore names it (gs://b/p,
    or file:///p, whose driver honours the same preconditions).
    """

    heartbeat_s = 60.0
    stale_s = 300.0
    KEY = ".lock"

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.store = None
        self.generation = b""
        self.holder = ""  # who holds the lock, once taking it failed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> bytes:
        return json.dumps({"holder": f"pid {os.getpid()} on {socket.gethostname()}",
                           "heartbeat": time.time()}).encode()

    def __enter__(self) -> ObjectLock:
        import tensorstore as ts

        from gptjax.config import ConfigError

        self.store = ts.KvStore.open(self.url + "/").result()
        current = self.store.read(self.KEY).result()
        if current.state == "value":
            try:
                held = json.loads(current.value)
                holder, age = held["holder"], time.time() - float(held["heartbeat"])
            except (ValueError, KeyError, TypeError):
                holder, age = "an unreadable lock", 0.0
            if age < self.stale_s:
                self.holder = holder
                raise ConfigError(f"workdir {self.url} is in use by {holder} (last heartbeat {age:.0f} s "
                                  f"ago); wait for it to finish or use another --workdir (a lock without a "
                                  f"heartbeat for {self.stale_s:.0f} s is taken over)")
        # The generation read (or "no object"): the write fails if anyone wrote the lock since.
        self.generation = self.store.write(self.KEY, self._record(), if_equal=current.stamp.generation
                                           ).result().generation
        if not self.generation:
            self.holder = "another process"
            raise ConfigError(f"workdir {self.url} was locked by another process just now; use another "
                              f"--workdir or wait for it to finish")
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            written = self.store.write(self.KEY, self._record(), if_equal=self.generation).result()
            generation = written.generation
            if not generation:
                print(f"warning: the lock of {self.url} was taken over by another process", file=sys.stderr)
                return
            self.generation = generation

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self.store.write(self.KEY, None, if_equal=self.generation).result()  # only our own lock


def workdir_lock(workdir: storage.PathLike) -> WorkdirLock | ObjectLock:
    """The lock of a workdir: `flock` on a local disk, a lock object on a bucket."""
    workdir = storage.path(workdir)
    return ObjectLock(os.fspath(workdir)) if storage.is_remote(workdir) else WorkdirLock(workdir)


class StopSignals:
    """Turns SIGTERM and SIGINT into a flag the loop checks after each step; restores handlers on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
