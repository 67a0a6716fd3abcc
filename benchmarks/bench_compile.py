"""Compile time of the train step at 12 and 48 layers, unrolled versus scanned (`model.scan_layers`).

`python benchmarks/bench_compile.py` writes benchmarks/results/compile.json. The model is the default
experiment's width (d 128, 4 heads, byte vocabulary, 64-token sequences, batch 32); only the depth
changes. Compilation is timed with the persistent cache off, by `jit(...).lower(...).compile()`.
"""

from __future__ import annotations

import os
import platform
import time

import jax
from common import RESULTS, write_json

from gptjax.config import load_experiment
from gptjax.data import build_data
from gptjax.sharding import put_batch
from gptjax.train import build_steps, resolve


def compile_seconds(n_layer: int, scan: bool) -> float:
    cfg = load_experiment("default", [f"model.n_layer={n_layer}", f"model.scan_layers={str(scan).lower()}",
                                      "train.data_parallel=1", "train.compilation_cache_dir="])
    data = build_data(cfg.data, 0)
    run = build_steps(resolve(cfg, data.tokenizer.vocab_size))
    batch = put_batch(data.train_batch(0), run.mesh)
    t = time.perf_counter()
    run.step.lower(jax.eval_shape(run.init), batch).compile()
    return time.perf_counter() - t


def main() -> None:
    results = {}
    for scan in (False, True):
        times = {n: compile_seconds(n, scan) for n in (12, 48)}
        key = "scanned" if scan else "unrolled"
        ratio = times[48] / times[12]
        results[key] = {"12_layers_s": times[12], "48_layers_s": times[48], "ratio_48_to_12": ratio}
        print(f"{key:>8}: 12 layers {times[12]:.1f} s, 48 layers {times[48]:.1f} s, ratio {ratio:.2f}")
    results["machine"] = {"platform": platform.platform(), "devices": str(jax.devices()[0].device_kind),
                          "cpus": os.cpu_count()}
    write_json(RESULTS / "compile.json", results)


if __name__ == "__main__":
    main()
