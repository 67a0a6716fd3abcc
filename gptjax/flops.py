"""Model FLOPs per token and model FLOPs utilisation (MFU), by one stated formula.

    training FLOPs per token = 6·N + 12·n_layer·seq_len·n_embd

N counts the parameters that take part in matrix multiplies: every parameter except the position
embedding (a lookup); the token embedding is counted once, for the output head it is tied to. 6·N is
the forward (2·N) and backward (4·N) multiply-adds of the weights; 12·L·T·D is the attention scores and
the weighted sum over T keys (the PaLM paper's 6N + 12LHQT, with H·Q = D). MFU divides the achieved
model FLOPs per second by the devices' peak; bfloat16 dense peaks from the vendors' data sheets, and on
CPU a float32 matmul measured once per process.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp

from gptjax.config import ModelConfig, ObjectiveConfig
from gptjax.data.spans import span_lengths

# Dense bfloat16 peak FLOP/s per device, by the `device_kind` JAX reports.
PEAK_FLOPS = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
}


def flops_per_token(cfg: ModelConfig, seq_len: int, objective: ObjectiveConfig | None = None) -> float:
    """Training FLOPs per input token by the formula above; for the other families the same count of
    what is actually multiplied, per encoder token: BERT's MLM head runs only on the ceil(rate·L)
    gathered positions; T5's decoder runs on the span-corruption targets (T of them per L encoder tokens)
    with its cross-attention's keys and values projected from the L encoder tokens."""
    d, n_layer = cfg.n_embd, cfg.n_layer
    ff = cfg.mlp_ratio * d
    mlp_in = 2 * ff if cfg.activation == "swiglu" else ff
    per_layer = d * 3 * d + d * d + d * mlp_in + ff * d  # qkv, attention output, MLP in and out
    head = cfg.vocab_size * d  # the output head (tied or not)
    if cfg.family == "bert":
        rate = objective.mask_rate if objective is not None else 1.0
        head = math.ceil(rate * seq_len) / seq_len * (d * d + head)  # MLM transform + vocabulary
    if cfg.family == "t5":
        ob = objective if objective is not None else ObjectiveConfig(name="span_corruption")
        t = span_lengths(seq_len, ob.noise_density, ob.mean_span_length)[1]  # the decoder's length
        n_dec, r = cfg.n_decoder_layer or n_layer, t / seq_len
        decoder = n_dec * (per_layer + 2 * d * d) * r + n_dec * 2 * d * d  # + cross q, out; cross k, v
        n = n_layer * per_layer + decoder + head * r
        attention = 12.0 * d * (n_layer * seq_len + n_dec * r * (t + seq_len))  # self, decoder, cross
        return 6.0 * n + attention
    n = n_layer * per_layer + head
    return 6.0 * n + 12.0 * n_layer * seq_len * d


@functools.cache
def measured_cpu_peak(size: int = 2048) -> float:
    """FLOP/s of a float32 size² matmul on this CPU: the best of a few runs, measured once."""
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * size**3 / best


def peak_flops(device) -> float | None:
    """Peak FLOP/s of one device: the table for accelerators, a measurement on CPU, None if unknown."""
    if device.platform == "cpu":
        return measured_cpu_peak()
    kind = device.device_kind
    for name, peak in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return peak
    return None
