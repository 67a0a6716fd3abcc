"""What sealing and verifying checkpoints costs: SHA-256 of a checkpoint's files against its size.

A `Checkpointer` (the lock holder's) saves a parameter tree of `--mib` MiB of float32 (random, so
orbax's compression has nothing to find); the script then times hashing its files (`file_hashes`, on up
to 8 threads, the work a save adds in orbax's background thread), `verify` (hashing plus reading the
manifest: the work every restore adds) and the orbax restore itself, each the median of 3 after the
files are in the page cache. Figures are bytes per second of checkpoint.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from common import RESULTS, write_json

from gptjax.checkpoint import Checkpointer, file_hashes, verify


def _median_s(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="checkpoint size in MiB (default 512)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n_arrays = 16
    side = int((args.mib * 2**20 / 4 / n_arrays) ** 0.5)
    params = {f"w{i}": rng.standard_normal((side, side), dtype=np.float32) for i in range(n_arrays)}
    abstract = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "checkpoints"
        checkpointer = Checkpointer(directory, 2)
        start = time.perf_counter()
        checkpointer.save(1, {"params": params}, {"step": 1})
        checkpointer.close()
        save_s = time.perf_counter() - start
        step_dir = directory / "1"
        size = sum(p.stat().st_size for p in step_dir.rglob("*") if p.is_file())
        assert verify(step_dir) == ""
        hash_s = _median_s(lambda: file_hashes(step_dir))
        verify_s = _median_s(lambda: verify(step_dir))
        reader = Checkpointer(directory, 2, writer=False)
        restore_s = _median_s(lambda: jax.block_until_ready(reader.restore(1, abstract)))
    gb = size / 1e9
    write_json(RESULTS / "checksum.json", {
        "checkpoint_bytes": size, "files": n_arrays,
        "save_s_with_manifest": save_s, "hash_s": hash_s, "hash_gb_per_s": gb / hash_s,
        "verify_s": verify_s, "restore_s": restore_s, "verify_over_restore": verify_s / restore_s,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
    })


if __name__ == "__main__":
    main()
