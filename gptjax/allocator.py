"""glibc's malloc told to keep freed memory, so that XLA:CPU's per-step buffers are reused, not re-mapped.

XLA:CPU allocates each step's temporaries with `malloc` and frees them at the end of the step. Most of them
are above glibc's mmap threshold (128 KiB, raised on the fly only up to the largest block freed so far), so
glibc maps fresh pages for them every step, the kernel zero-fills each page at its first touch (a minor page
fault), and `free` unmaps them again: millions of page faults a run and about half the wall time of a
small model's step in the kernel (benchmarks/README.md, "Allocator"). `configure()` raises the mmap and
trim thresholds with `mallopt`, so that such blocks come from the heap and stay there for the next step;
it changes where buffers live, never what is computed. `import gptjax` calls it, before any JAX program
runs, so the command line, a sweep's child processes, the benchmarks and the tests all get it.

Turn it off with `GPTJAX_MALLOC=off` in the environment (glibc's defaults then apply); it also stands aside
when the environment already tunes glibc's malloc (`MALLOC_MMAP_THRESHOLD_` and friends, or `glibc.malloc`
tunables in `GLIBC_TUNABLES`). Where the C library is not glibc (macOS, musl) it does nothing and says so
in `STATE`: other allocators keep their own caches.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "GPTJAX_MALLOC"  # "on" (the default) or "off"
# mallopt's parameter numbers (<malloc.h>) and the values set: blocks below 1 GiB come from the heap; up to
# 1 GiB of free memory at the top of the heap is kept instead of handed back; each time the heap grows it
# grows by 256 MiB more than asked, so a growing step does not extend it in many small increments. mallopt
# takes an int, so 1 GiB is about as high as a threshold can be set (the environment variables allow more).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 256 << 20}
GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
ON, OFF = ("on", "1", "true", "yes", ""), ("off", "0", "false", "no")

STATE = "not configured"  # what configure() did, in words (for `describe`-style reports and the tests)


def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (it has `gnu_get_libc_version` and `mallopt`), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):  # musl and others: no gnu_get_libc_version
        return None


def configure() -> str:
    """Apply `SETTINGS` with mallopt unless turned off, already tuned by the environment, or not on glibc;
    return (and keep in `STATE`) one line saying which. Calling it again does nothing more."""
    global STATE
    if STATE != "not configured":
        return STATE
    value = os.environ.get(ENV, "on").strip().lower()
    tunables = "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")
    libc = _glibc()
    if value in OFF:
        STATE = f"off ({ENV}={os.environ[ENV]}): glibc's defaults"
    elif value not in ON:
        # Read at import, where exiting would be hostile to a library user: warn, and take the safe side.
        print(f"warning: {ENV}={os.environ[ENV]!r} is neither on nor off; leaving malloc at its defaults",
              file=sys.stderr)
        STATE = f"off (unknown {ENV} value {os.environ[ENV]!r}): glibc's defaults"
    elif any(name in os.environ for name in GLIBC_ENV) or tunables:
        STATE = "left to the environment (MALLOC_*_ or GLIBC_TUNABLES set)"
    elif libc is None:
        STATE = "not glibc: nothing to do (the C library's allocator keeps its own caches)"
    else:
        failed = [param for param, v in SETTINGS.items() if libc.mallopt(param, v) != 1]
        STATE = (f"on: mallopt mmap threshold {SETTINGS[M_MMAP_THRESHOLD] >> 20} MiB, trim threshold "
                 f"{SETTINGS[M_TRIM_THRESHOLD] >> 20} MiB, top pad {SETTINGS[M_TOP_PAD] >> 20} MiB")
        if failed:
            STATE = f"partly on: mallopt refused parameters {failed}"
    return STATE
