"""gptjax/allocator.py's setting on and off: page faults, kernel time and tokens/s of the train step.

    python benchmarks/bench_allocator.py                    # → benchmarks/results/allocator.json
    python benchmarks/bench_allocator.py --shapes small --blocks 4   # one shape, fewer blocks

Two child processes train the same model on the same random batches from the same initial parameters,
one with `GPTJAX_MALLOC=on` (gptjax's default) and one with `GPTJAX_MALLOC=off` (glibc's defaults). Both
compile and warm up, then this process tells them in turn to run a block of steps (on, off, on, …), so
outside load hits both alike; only one computes at a time. Each block reports its wall and CPU time (user
and system, from `getrusage`), its minor page faults, the resident memory (VmRSS) and its peak (VmHWM)
after it, and the loss of its last step: the two sides' losses must be bitwise equal (the allocator
changes where buffers live, not what is computed). The figures are medians over blocks; the peak resident
memory after the first blocks against after the last shows whether memory grows over a long run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SHAPES_EXTRA = {"default": ("default", 4, 4, 128, 64, 32)}  # experiments/default.py's model and batch
# (blocks, steps per block) per shape: the default shape's 20 x 100 is the long run (2,000 steps a side)
# whose peak resident memory at step ~200 and at step ~2,000 the results compare.
BLOCKS = {"default": (20, 100), "small": (8, 50), "medium": (6, 4)}


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child(shape_name: str) -> None:
    """Build the step, warm up, then answer each `N` on stdin with one JSON line about N more steps."""
    import resource

    import jax
    from common import BYTE_VOCAB, SHAPES, gpt_experiment, random_batches

    import gptjax
    from gptjax.metrics import objective_loss
    from gptjax.sharding import put_batch
    from gptjax.train import build_steps, resolve

    shape = SHAPES_EXTRA.get(shape_name) or next(s for s in SHAPES if s[0] == shape_name)
    run = build_steps(resolve(gpt_experiment(*shape[1:], vocab=BYTE_VOCAB, data_parallel=1), BYTE_VOCAB))
    state = run.init()
    batches = [put_batch(b, run.mesh) for b in random_batches(4, shape[5], shape[4], high=256)]
    step = run.step.lower(state, batches[0]).compile()
    done = 0
    for i in range(3):
        state, _ = step(state, batches[i % len(batches)])
        done += 1
    jax.block_until_ready(state)
    print(json.dumps({"ready": gptjax.allocator.STATE}), flush=True)
    for line in sys.stdin:
        n = int(line)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(n):
            state, metrics = step(state, batches[done % len(batches)])
            done += 1
        jax.block_until_ready(state)
        wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        loss = objective_loss(metrics)
        print(json.dumps({"wall_s": wall, "user_s": r1.ru_utime - r0.ru_utime,
                          "sys_s": r1.ru_stime - r0.ru_stime,
                          "minor_faults": r1.ru_minflt - r0.ru_minflt, "steps_done": done,
                          "rss_mib": status_kib("VmRSS") / 1024, "peak_rss_mib": status_kib("VmHWM") / 1024,
                          "loss": float(loss), "loss_hex": float(loss).hex()}), flush=True)


def start(shape_name: str, setting: str) -> subprocess.Popen:
    env = {**os.environ, "GPTJAX_MALLOC": setting}
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES"):
        env.pop(name, None)  # each side exactly as named
    return subprocess.Popen([sys.executable, __file__, "--child", shape_name], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)


def bench_shape(shape_name: str, blocks: int, steps: int) -> dict:
    sides = {s: start(shape_name, s) for s in ("on", "off")}
    states = {s: json.loads(p.stdout.readline())["ready"] for s, p in sides.items()}
    rows = {s: [] for s in sides}
    for _ in range(blocks):
        for s, p in sides.items():
            p.stdin.write(f"{steps}\n")
            p.stdin.flush()
            rows[s].append(json.loads(p.stdout.readline()))
    for p in sides.values():
        p.stdin.close()
        p.wait()
    shape = SHAPES_EXTRA.get(shape_name) or next(s for s in __import__("common").SHAPES if s[0] == shape_name)
    tokens = steps * shape[4] * shape[5]
    out = {"shape": f"{shape[1]} layers, {shape[2]} heads, d {shape[3]}, T {shape[4]}, B {shape[5]}",
           "blocks": blocks, "steps_per_block": steps}
    for s, rs in rows.items():
        out[s] = {"allocator": states[s],
                  "tokens_per_s": statistics.median(tokens / r["wall_s"] for r in rs),
                  "ms_per_step": statistics.median(1e3 * r["wall_s"] / steps for r in rs),
                  "user_ms_per_step": statistics.median(1e3 * r["user_s"] / steps for r in rs),
                  "sys_ms_per_step": statistics.median(1e3 * r["sys_s"] / steps for r in rs),
                  "minor_faults_per_step": statistics.median(r["minor_faults"] / steps for r in rs),
                  "peak_rss_mib_by_step": {r["steps_done"]: round(r["peak_rss_mib"], 1) for r in rs},
                  "rss_mib_last": round(rs[-1]["rss_mib"], 1), "final_loss": rs[-1]["loss"]}
    pairs = [off["wall_s"] / on["wall_s"] for on, off in zip(rows["on"], rows["off"], strict=True)]
    out["speedup_per_block"] = {"median": statistics.median(pairs), "min": min(pairs), "max": max(pairs)}
    out["losses_bitwise_equal"] = all(a["loss_hex"] == b["loss_hex"]
                                      for a, b in zip(rows["on"], rows["off"], strict=True))
    line = " | ".join(f"{s} {out[s]['tokens_per_s']:,.0f} tok/s, {out[s]['minor_faults_per_step']:,.0f} "
                      f"faults/step, sys {out[s]['sys_ms_per_step']:.1f} ms/step" for s in rows)
    print(f"{shape_name:>7}: {line} | speedup {out['speedup_per_block']['median']:.2f}x "
          f"({min(pairs):.2f}-{max(pairs):.2f}); losses equal: {out['losses_bitwise_equal']}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--shapes", default="default,small,medium")
    parser.add_argument("--blocks", type=int, help="timed blocks per side (default: per shape, BLOCKS)")
    parser.add_argument("--steps", type=int, help="steps per block (default: per shape, BLOCKS)")
    parser.add_argument("--out", default="allocator.json", help="file name under benchmarks/results")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    import jax
    from common import RESULTS, write_json

    result = {"load_average_before": os.getloadavg(), "cpus": len(os.sched_getaffinity(0)),
              "jax": jax.__version__, "libc": " ".join(__import__("platform").libc_ver())}
    for name in args.shapes.split(","):
        blocks, steps = BLOCKS[name]
        result[name] = bench_shape(name, args.blocks or blocks, args.steps or steps)
    result["load_average_after"] = os.getloadavg()
    write_json(RESULTS / args.out, result)


if __name__ == "__main__":
    main()
