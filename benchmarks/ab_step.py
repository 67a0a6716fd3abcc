"""Interleaved A/B timing of gptjax's train step: config overrides and XLA compiler options, one process.

    python benchmarks/ab_step.py small 15 base model.attention=einsum "base;xla_cpu_use_onednn=true"

Each variant is `override,override,...` (dotted config paths, as on the `gptjax train` command line;
`base` for none), optionally followed by `;option=value,...`, XLA debug options handed to this one
compilation (`jit(...).lower(...).compile(compiler_options=...)`), so flags are compared in the same
process and under the same outside load. The shapes are benchmarks/bench_torch.py's. Every round runs a
block of steps of each variant in turn; the table gives the median and minimum wall-clock ms/step and the
median process CPU ms/step (all threads), the measure least disturbed by other jobs on a shared machine,
each relative to the first variant. The log in benchmarks/README.md was measured with it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
from common import BYTE_VOCAB, SHAPES, gpt_experiment, random_batches

from gptjax.config import apply_overrides
from gptjax.sharding import put_batch
from gptjax.train import build_steps, resolve


def option_value(text: str):
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        return text


def build(shape, spec: str) -> dict:
    overrides, _, options = spec.partition(";")
    cfg = gpt_experiment(*shape[1:], vocab=BYTE_VOCAB, data_parallel=1)
    if overrides != "base":
        cfg = apply_overrides(cfg, overrides.split(","))
    opts = dict((k, option_value(v)) for k, v in (kv.split("=", 1) for kv in options.split(","))) \
        if options else None
    run = build_steps(resolve(cfg, BYTE_VOCAB))
    state = run.init()
    batches = [put_batch(b, run.mesh) for b in random_batches(2, shape[5], shape[4], high=256)]
    step = run.step.lower(state, batches[0]).compile(compiler_options=opts)
    return {"step": step, "state": state, "batches": batches, "wall": [], "cpu": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shape", choices=[s[0] for s in SHAPES])
    parser.add_argument("rounds", type=int)
    parser.add_argument("variants", nargs="+")
    args = parser.parse_args()
    shape = next(s for s in SHAPES if s[0] == args.shape)
    variants = {f"{spec} [{i}]": build(shape, spec) for i, spec in enumerate(args.variants)}
    n = 8 if args.shape == "small" else 2
    for r in range(args.rounds + 1):  # round 0 warms up
        for v in variants.values():
            state, wall, cpu = v["state"], time.perf_counter(), time.process_time()
            for i in range(n):
                state, _ = v["step"](state, v["batches"][i % 2])
            jax.block_until_ready(state)
            v["state"] = state
            if r:
                v["wall"].append(1e3 * (time.perf_counter() - wall) / n)
                v["cpu"].append(1e3 * (time.process_time() - cpu) / n)
    first = None
    for name, v in variants.items():
        row = (statistics.median(v["wall"]), min(v["wall"]), statistics.median(v["cpu"]))
        first = first or row
        print(f"{name:50s} wall median {row[0]:7.1f} min {row[1]:7.1f}  cpu {row[2]:7.1f} ms/step  "
              f"(first / this: {first[0] / row[0]:.2f} {first[1] / row[1]:.2f} {first[2] / row[2]:.2f})")


if __name__ == "__main__":
    main()
