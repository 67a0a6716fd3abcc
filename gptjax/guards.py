"""What keeps a run safe: one writer per workdir, a clean stop on SIGTERM/SIGINT, divergence detection.

Cloud TPU VMs are preempted with SIGTERM; a researcher presses Ctrl-C. Either way the loop finishes the
step it is on, writes a checkpoint and the metrics, and exits with `EXIT_PREEMPTED`, so running the same
command again resumes where it stopped.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import threading
from pathlib import Path

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


def check_writable(path: Path, what: str = "workdir") -> None:
    """ConfigError (one line) unless `path` is, or can be made, a directory this process writes into:
    its nearest existing ancestor must be a directory in which a probe directory can be made (and is
    removed at once), which catches a regular file on the way, a read-only mount or directory, and
    pseudo-filesystems such as /proc. Cheap, so commands call it before any expensive work."""
    import tempfile

    from gptjax.config import ConfigError

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

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / ".lock"
        self.file = None

    def __enter__(self) -> WorkdirLock:
        from gptjax.config import ConfigError

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            file = self.path.open("a+")
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
