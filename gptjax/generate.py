"""Autoregressive generation: greedy, temperature, top-k and top-p sampling, with a key/value cache.

With the cache, the prompt is run once (prefill) and each new token costs one position; the uncached
path re-runs the whole prefix for every token and exists as the reference the cache is tested against.
Both stop when every row has produced the end token, or after `max_new_tokens`. `sample_text` is what
`train` and `python -m gptjax sample` write: the config's prompt continued by a trained model.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from gptjax.config import ConfigError, Experiment


def sample_logits(logits_BV: Float[Array, "B V"], key, *, temperature: float, top_k: int,
                  top_p: float, banned: tuple[int, ...] = ()) -> Int[Array, " B"]:
    """Pick the next token: arg-max when temperature is 0, otherwise sample from the filtered softmax."""
    logits_BV = logits_BV.astype(jnp.float32)
    if banned:
        logits_BV = logits_BV.at[:, jnp.array(banned)].set(-jnp.inf)
    if temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1)
    logits_BV = logits_BV / temperature
    if top_k > 0:
        kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    if top_p < 1.0:
        sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
        cumulative_BV = jnp.cumsum(jax.nn.softmax(sorted_BV, axis=-1), axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the best token always survives).
        cutoff_index_B1 = jnp.sum(cumulative_BV < top_p, axis=-1, keepdims=True)
        cutoff_B1 = jnp.take_along_axis(sorted_BV, cutoff_index_B1, axis=-1)
        logits_BV = jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)
    return jax.random.categorical(key, logits_BV, axis=-1)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k",
                                             "top_p", "eot_id", "banned", "use_cache"))
def generate(params, prompt_BP: Int[Array, "B P"], key, *, graphdef, max_new_tokens: int,
             temperature: float, top_k: int, top_p: float, eot_id: int, banned: tuple[int, ...] = (),
             use_cache: bool = True) -> tuple[Int[Array, "B N"], Int[Array, " B"]]:
    """Continue every prompt by up to `max_new_tokens` tokens.

    Returns the new tokens [B, max_new_tokens] and, per row, how many are valid (up to and including
    the end token). Prompt plus new tokens must fit the model's context.
    """
    model = nnx.merge(graphdef, params)
    B, P = prompt_BP.shape
    total = P + max_new_tokens
    pick = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p,
                             banned=banned)

    if use_cache:
        logits_BPV, caches = model.decode(prompt_BP, model.init_cache(B, total), jnp.int32(0))
        last_logits_BV = logits_BPV[:, -1]
    else:
        caches = None
        buffer_BT = jnp.zeros((B, total), prompt_BP.dtype).at[:, :P].set(prompt_BP)
        last_logits_BV = model(buffer_BT)[:, P - 1]

    def cond(carry):
        i, _, _, done_B, _, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done_B)

    def body(carry):
        i, logits_BV, caches_or_buffer, done_B, out_BN, key = carry
        key, step_key = jax.random.split(key)
        token_B = pick(logits_BV, step_key)
        out_BN = out_BN.at[:, i].set(jnp.where(done_B, eot_id, token_B))
        done_B = done_B | (token_B == eot_id)
        if use_cache:
            logits_B1V, caches_or_buffer = model.decode(token_B[:, None], caches_or_buffer, P + i)
            logits_BV = logits_B1V[:, 0]
        else:
            caches_or_buffer = caches_or_buffer.at[:, P + i].set(token_B)
            logits_BV = jax.lax.dynamic_index_in_dim(model(caches_or_buffer), P + i, axis=1,
                                                     keepdims=False)
        return i + 1, logits_BV, caches_or_buffer, done_B, out_BN, key

    state = caches if use_cache else buffer_BT
    init = (jnp.int32(0), last_logits_BV, state, jnp.zeros((B,), bool),
            jnp.full((B, max_new_tokens), eot_id, prompt_BP.dtype), key)
    _, _, _, _, out_BN, _ = jax.lax.while_loop(cond, body, init)
    is_eot_BN = out_BN == eot_id
    first_eot_B = jnp.where(is_eot_BN.any(axis=1), jnp.argmax(is_eot_BN, axis=1) + 1, max_new_tokens)
    return out_BN, first_eot_B


def prompt_tokens(cfg: Experiment, tokenizer) -> np.ndarray:
    """The sampling prompt as tokens, behind the end-of-text token that starts every document."""
    s = cfg.sample
    prompt = np.concatenate([[tokenizer.eot_id], tokenizer.encode(s.prompt)]).astype(np.int32)
    if len(prompt) + s.max_new_tokens > cfg.model.context:
        raise ConfigError(f"prompt ({len(prompt)} tokens) + sample.max_new_tokens "
                          f"({s.max_new_tokens}) exceed the model's context ({cfg.model.context})")
    return prompt


def sample_text(cfg: Experiment, graphdef, params, tokenizer, seed: int) -> str:
    """`cfg.sample.prompt` continued under `cfg.sample`'s settings by the model (graphdef, params)."""
    s = cfg.sample
    prompt = prompt_tokens(cfg, tokenizer)
    # Ids the tokenizer cannot decode, and padding unless it doubles as end of text (GPT-2 has no pad).
    banned = tuple(i for i in range(cfg.model.vocab_size)
                   if i >= tokenizer.vocab_size or (i == tokenizer.pad_id != tokenizer.eot_id))
    tokens, count = generate(params, jnp.asarray(prompt[None]), jax.random.key(seed), graphdef=graphdef,
                             max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
                             top_p=s.top_p, eot_id=tokenizer.eot_id, banned=banned)
    return s.prompt + tokenizer.decode(np.asarray(tokens[0, : int(count[0])]))
