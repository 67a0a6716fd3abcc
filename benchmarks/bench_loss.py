"""Plain versus chunked cross-entropy, forward + backward: XLA's memory analysis and wall time.

`make bench-loss` (or `python benchmarks/bench_loss.py`) writes benchmarks/results/loss.json. The loss is
the causal-LM cross-entropy of `tokens` hidden states of width `hidden` against a `vocab` × `hidden`
output embedding, differentiated with respect to both, in float32. "Plain" materialises the
[tokens × vocab] logits (and their gradient); "chunked" is `gptjax.losses.chunked_lm_loss`.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import RESULTS, write_json

from gptjax.losses import TERMS, chunked_lm_loss, score, weighted_sum

GiB = 2**30


def plain_loss(x_ND, w_VD, targets_N, weights_N):
    logits_1NV = (x_ND @ w_VD.T)[None]
    return weighted_sum(TERMS["ce"](score(logits_1NV, targets_N[None])), weights_N[None])


def chunked_loss(x_ND, w_VD, targets_N, weights_N, *, chunk):
    return chunked_lm_loss(x_ND, w_VD, targets_N, weights_N, (1.0, 0.0, 0.0), chunk)[0]


def measure(fn, args, repeats: int) -> dict:
    compiled = jax.jit(jax.value_and_grad(fn, (0, 1))).lower(*args).compile()
    mem = compiled.memory_analysis()
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes)
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return {"temp_bytes": mem.temp_size_in_bytes, "temp_gib": mem.temp_size_in_bytes / GiB,
            "peak_bytes": peak, "peak_gib": peak / GiB, "argument_bytes": mem.argument_size_in_bytes,
            "output_bytes": mem.output_size_in_bytes, "times_s": times,
            "median_s": statistics.median(times)}, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "loss.json"))
    args = p.parse_args()

    rng = np.random.default_rng(0)
    x_ND = jnp.asarray(rng.normal(size=(args.tokens, args.hidden)), jnp.float32)
    w_VD = jnp.asarray(rng.normal(size=(args.vocab, args.hidden)) * 0.02, jnp.float32)
    targets_N = jnp.asarray(rng.integers(0, args.vocab, args.tokens), jnp.int32)
    weights_N = jnp.ones(args.tokens, jnp.float32)
    inputs = (x_ND, w_VD, targets_N, weights_N)

    plain, (plain_value, plain_grads) = measure(plain_loss, inputs, args.repeats)
    chunked, (chunked_value, chunked_grads) = measure(
        lambda *a: chunked_loss(*a, chunk=args.chunk), inputs, args.repeats)
    grad_error = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
                     for a, b in zip(plain_grads, chunked_grads, strict=True))
    result = {
        "command": "make bench-loss",
        "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()}, {len(jax.devices())} device(s))",
        "host": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "tokens": args.tokens, "vocab": args.vocab, "hidden": args.hidden, "dtype": "float32",
        "chunk_tokens": args.chunk, "what": "value_and_grad wrt hidden states and output embedding",
        "plain": plain, "chunked": chunked,
        "temp_ratio": chunked["temp_bytes"] / plain["temp_bytes"],
        "peak_ratio": chunked["peak_bytes"] / plain["peak_bytes"],
        "time_ratio": chunked["median_s"] / plain["median_s"],
        "value_rel_error": abs(float(chunked_value) - float(plain_value)) / abs(float(plain_value)),
        "grad_rel_error": grad_error,
    }
    write_json(args.out, result)
    print(f"{result['device']}: tokens {args.tokens}, vocab {args.vocab}, hidden {args.hidden}, float32, "
          f"forward + backward")
    for name in ("plain", "chunked"):
        r = result[name]
        print(f"  {name:8s} temp {r['temp_gib']:.3f} GiB  peak (args + outputs + temp) "
              f"{r['peak_gib']:.3f} GiB  median {r['median_s']:.3f} s")
    print(f"  chunked / plain: temp {result['temp_ratio']:.3f}, peak {result['peak_ratio']:.3f}, "
          f"time {result['time_ratio']:.3f}; value rel. error {result['value_rel_error']:.1e}, "
          f"gradient {grad_error:.1e}  → {args.out}")


if __name__ == "__main__":
    main()
