"""Generation speed with and without the key/value cache: 256 new tokens from the default model's shape.

`python benchmarks/bench_generate.py` writes benchmarks/results/generate.json. Greedy decoding of one
sequence (batch 1) from a one-token prompt, randomly initialised parameters (speed does not depend on
training), context 512 so that 256 new tokens fit; each path is compiled first and timed on a second call.
"""

from __future__ import annotations

import os
import platform
import time

import jax
import jax.numpy as jnp
from common import RESULTS, write_json

from gptjax.config import ModelConfig
from gptjax.generate import generate
from gptjax.models import build_model, split_params

NEW_TOKENS = 256


def tokens_per_second(graphdef, params, use_cache: bool) -> float:
    prompt = jnp.zeros((1, 1), jnp.int32)
    kwargs = dict(graphdef=graphdef, max_new_tokens=NEW_TOKENS, temperature=0.0, top_k=0, top_p=1.0,
                  eot_id=-1, use_cache=use_cache)  # eot -1: never stop early
    jax.block_until_ready(generate(params, prompt, jax.random.key(0), **kwargs))
    t = time.perf_counter()
    jax.block_until_ready(generate(params, prompt, jax.random.key(1), **kwargs))
    return NEW_TOKENS / (time.perf_counter() - t)


def main() -> None:
    cfg = ModelConfig(n_layer=4, n_head=4, n_embd=128, context=512, vocab_size=258)
    graphdef, params = split_params(build_model(cfg, seed=0))
    cached = tokens_per_second(graphdef, params, True)
    uncached = tokens_per_second(graphdef, params, False)
    result = {"new_tokens": NEW_TOKENS, "model": "4 layers, 4 heads, d 128, context 512",
              "cached_tokens_per_s": cached, "uncached_tokens_per_s": uncached, "speedup": cached / uncached,
              "machine": {"platform": platform.platform(), "device": jax.devices()[0].device_kind,
                          "cpus": os.cpu_count()}}
    print(f"KV cache {cached:,.0f} tokens/s, no cache {uncached:,.0f} tokens/s: {cached / uncached:.1f}x")
    write_json(RESULTS / "generate.json", result)


if __name__ == "__main__":
    main()
