"""Model FLOPs utilisation of gptjax's train step on an accelerator: GPT-2 small (124M), T 1024, bfloat16.

    python benchmarks/bench_mfu.py                 # on a GPU/TPU host; writes benchmarks/results/mfu.json
    python benchmarks/bench_mfu.py --batch 32      # sequences per step (default 16)
    python benchmarks/bench_mfu.py --smoke         # a 2-layer, d 128, T 128 model on whatever device is there

The model is GPT-2 small's shape (12 layers, 12 heads, d 768, vocabulary 50,257, context 1024, tied
embeddings, no dropout) with bfloat16 activations and float32 parameters, AdamW at the gpt3_adamw preset,
on random tokens (MFU does not depend on the data). The step is gptjax's real `Steps.step` (metrics and the
non-finite guard included) over every local device, data parallel. After a warm-up, `--steps` steps are
timed; MFU = tokens/s × FLOPs per token (gptjax/flops.py: 6N + 12·L·T·D) ÷ (devices × the device's bfloat16
peak, gptjax/flops.py's table). Issue 10's target: ≥ 55% on one H100.

Without an accelerator it says so and exits 0 without writing (`make bench` runs it everywhere); `--smoke`
runs a small model on the CPU as well, to check the script, and writes nothing either.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
from common import RESULTS, gpt_experiment, random_batches, write_json

from gptjax.config import Experiment
from gptjax.flops import flops_per_token, peak_flops
from gptjax.metrics import objective_loss
from gptjax.sharding import put_batch
from gptjax.train import build_steps, resolve

GPT2_VOCAB = 50257


def measure(cfg: Experiment, vocab: int, steps: int) -> dict:
    run = build_steps(resolve(cfg, vocab))
    state = run.init()
    batches = [put_batch(b, run.mesh) for b in random_batches(2, cfg.data.batch_size, cfg.data.seq_len,
                                                                  high=vocab)]
    t = time.perf_counter()
    step = run.step.lower(state, batches[0]).compile()
    compile_s = time.perf_counter() - t
    for i in range(3):  # warm-up
        state, metrics = step(state, batches[i % 2])
    jax.block_until_ready(state)
    t = time.perf_counter()
    for i in range(steps):
        state, metrics = step(state, batches[i % 2])
    jax.block_until_ready(state)
    seconds = (time.perf_counter() - t) / steps
    devices = jax.devices()
    peak = peak_flops(devices[0])
    tokens = cfg.data.batch_size * cfg.data.seq_len
    flops = flops_per_token(cfg.model, cfg.data.seq_len)
    tokens_per_s = tokens / seconds
    return {"params": run.n_params, "tokens_per_step": tokens, "flops_per_token": flops,
            "compile_s": compile_s, "ms_per_step": 1e3 * seconds, "tokens_per_s": tokens_per_s,
            "devices": len(devices), "device_kind": devices[0].device_kind, "peak_flops_per_device": peak,
            "mfu": None if peak is None else tokens_per_s * flops / (len(devices) * peak),
            "final_loss": float(objective_loss(metrics))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (global)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps after the warm-up")
    parser.add_argument("--smoke", action="store_true", help="a small model, any device; nothing written")
    args = parser.parse_args()
    backend = jax.default_backend()
    if backend == "cpu" and not args.smoke:
        print("bench_mfu: no GPU or TPU here (JAX backend: cpu); the MFU target is for an accelerator, "
              "nothing measured (--smoke runs a small model on the CPU)")
        return
    if args.smoke:
        shape = dict(n_layer=2, n_head=2, n_embd=128, seq_len=128, batch=args.batch, vocab=512)
    else:
        shape = dict(n_layer=12, n_head=12, n_embd=768, seq_len=1024, batch=args.batch, vocab=GPT2_VOCAB)
    cfg = gpt_experiment(**shape, dtype="bfloat16")
    result = measure(cfg, shape["vocab"], args.steps)
    mfu = "unknown peak" if result["mfu"] is None else f"MFU {result['mfu']:.1%}"
    print(f"{result['device_kind']} × {result['devices']}: {result['params']:,} parameters, "
          f"batch {args.batch} × {shape['seq_len']}, {result['ms_per_step']:.1f} ms/step, "
          f"{result['tokens_per_s']:,.0f} tokens/s, {mfu} (compiled in {result['compile_s']:.1f} s)")
    if args.smoke:
        return
    result.update(command=f"python benchmarks/bench_mfu.py --batch {args.batch} --steps {args.steps}",
                  model="GPT-2 small shape: 12 layers, 12 heads, d 768, vocab 50257, T 1024, tied, bfloat16",
                  jax=jax.__version__, platform=platform.platform(),
                  xla_flags=os.environ.get("XLA_FLAGS", ""))
    write_json(RESULTS / "mfu.json", result)


if __name__ == "__main__":
    main()
