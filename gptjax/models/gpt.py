"""Decoder-only GPT (GPT-1/2/3 shapes) in the GPT-2 layout.

Learned token and position embeddings, pre-LayerNorm blocks, a final LayerNorm, and an output head
tied to the token embedding. Initialisation follows GPT-2: N(0, 0.02) everywhere, with the residual
output projections (attention and MLP `c_proj`) scaled by 1/sqrt(2·n_layer) so that the residual
stream's variance does not grow with depth.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from gptjax.config import DType, ModelConfig, Remat, registry
from gptjax.layers import EMBED_AXES, INIT_STD, Block, KVCache, attention_mask, dense, embed, layer_norm
from gptjax.sharding import AXES_KEY, constrain

DTYPES = registry(DType, {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16})

# What a scanned layer keeps from its forward pass for the backward pass (`model.remat`): everything
# ("none"), nothing but its input ("full"), or the matmul outputs without a batch dimension ("dots").
REMAT_POLICIES = registry(Remat, {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
                                  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable})


class GPT(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be resolved from the tokenizer before building")
        dtype = DTYPES[cfg.dtype]
        proj_std = INIT_STD / math.sqrt(2 * cfg.n_layer)
        self.cfg = cfg
        self.wte = embed(cfg.vocab_size, cfg.n_embd, std=INIT_STD, dtype=dtype, rngs=rngs)
        self.wpe = embed(cfg.context, cfg.n_embd, std=INIT_STD, dtype=dtype, rngs=rngs, axes=(None, "embed"))
        self.drop = nnx.Dropout(cfg.dropout)
        blocks = [
            Block(cfg.n_embd, cfg.n_head, cfg.mlp_ratio * cfg.n_embd, activation=cfg.activation,
                  proj_std=proj_std, bias=cfg.bias, dropout=cfg.dropout, eps=cfg.layer_norm_eps,
                  impl=cfg.attention, dtype=dtype, rngs=rngs)
            for _ in range(cfg.n_layer)
        ]
        if cfg.scan_layers:
            # One Block whose parameters carry a leading layer axis, run under jax.lax.scan: compile
            # time stays flat in depth. Stacking the unrolled blocks keeps the initialisation (and
            # so a seed's parameters) identical to the unrolled model's.
            stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[nnx.state(b) for b in blocks])
            for _, variable in nnx.to_flat_state(stacked):
                variable.set_metadata(AXES_KEY, ("layers", *variable.get_metadata(AXES_KEY)))
            self.layers = nnx.merge(nnx.graphdef(blocks[0]), stacked)
        else:
            self.blocks = nnx.List(blocks)
        self.ln_f = layer_norm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias, dtype=dtype, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = dense(cfg.n_embd, cfg.vocab_size, std=INIT_STD, bias=False, dtype=dtype,
                                 rngs=rngs, axes=("embed", "vocab"))
        if cfg.n_classes:
            # GPT-1's fine-tuning head (Radford et al. 2018, §3.2): a linear layer on the last token.
            self.head = dense(cfg.n_embd, cfg.n_classes, std=INIT_STD, bias=True, dtype=dtype, rngs=rngs,
                              axes=("embed", None))

    def hidden(self, tokens_BL: Int[Array, "B L"], *, segment_ids_BL: Int[Array, "B L"] | None = None,
               deterministic: bool = True, rngs: nnx.Rngs | None = None) -> Float[Array, "B L D"]:
        """Final hidden states (after the last LayerNorm) under a causal mask.

        With `segment_ids_BL`, packed documents never attend to each other and id 0 (padding) is
        never attended to; without, the plain causal mask lets fused attention kernels run.
        """
        positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)
        mask_B1LS = None
        if segment_ids_BL is not None:
            mask_B1LS = attention_mask(segment_ids_BL, segment_ids_BL, positions_BL, positions_BL,
                                       causal=True)
        x_BLD = constrain(self.wte(tokens_BL) + self.wpe(positions_BL), EMBED_AXES)
        x_BLD = self.drop(x_BLD, deterministic=deterministic, rngs=rngs)
        x_BLD, _ = self._run_blocks(x_BLD, mask_B1LS, None, None, deterministic, rngs)
        return self.ln_f(x_BLD)

    def _run_blocks(self, x_BLD, mask_B1LS, caches, index, deterministic: bool, rngs):
        """The layer stack, unrolled or scanned; with caches (decoding) returns the updated ones."""
        if not self.cfg.scan_layers:
            new_caches = []
            for i, block in enumerate(self.blocks):
                x_BLD, cache = block(x_BLD, mask_B1LS, cache=None if caches is None else caches[i],
                                     index=index, deterministic=deterministic, rngs=rngs)
                new_caches.append(cache)
            return x_BLD, new_caches
        graphdef, stacked = nnx.split(self.layers)
        keys_N = None if deterministic else jax.random.split(rngs.dropout(), self.cfg.n_layer)

        def layer(x_BLD, inputs):
            state, cache, key = inputs
            block = nnx.merge(graphdef, state)
            return block(x_BLD, mask_B1LS, cache=cache, index=index, deterministic=deterministic,
                         rngs=None if key is None else nnx.Rngs(dropout=key))

        if self.cfg.remat != "none":
            layer = jax.checkpoint(layer, policy=REMAT_POLICIES[self.cfg.remat])
        return jax.lax.scan(layer, x_BLD, (stacked, caches, keys_N))

    def logits(self, x_BLD: Float[Array, "B L D"]) -> Float[Array, "B L V"]:
        logits_BLV = self.wte.attend(x_BLD) if self.cfg.tie_embeddings else self.lm_head(x_BLD)
        return constrain(logits_BLV, ("batch", "length", "vocab"))

    def classify(self, x_BLD: Float[Array, "B L D"], index_B: Int[Array, " B"]) -> Float[Array, "B C"]:
        """Class logits from the hidden state at position `index_B` of each row (its extract token)."""
        return self.head(x_BLD[jnp.arange(x_BLD.shape[0]), index_B])

    def __call__(self, tokens_BL: Int[Array, "B L"], *, segment_ids_BL: Int[Array, "B L"] | None = None,
                 deterministic: bool = True, rngs: nnx.Rngs | None = None) -> Float[Array, "B L V"]:
        return self.logits(self.hidden(tokens_BL, segment_ids_BL=segment_ids_BL,
                                       deterministic=deterministic, rngs=rngs))

    def init_cache(self, batch: int, length: int):
        """Empty key/value buffers for `length` positions: one KVCache per layer, or one stacked
        KVCache with a leading layer axis when the layers are scanned."""
        head_dim = self.cfg.n_embd // self.cfg.n_head
        shape = (batch, length, self.cfg.n_head, head_dim)
        dtype = DTYPES[self.cfg.dtype]
        if self.cfg.scan_layers:
            stacked = (self.cfg.n_layer, *shape)
            return KVCache(jnp.zeros(stacked, dtype), jnp.zeros(stacked, dtype))
        return [KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in self.blocks]

    def decode(self, tokens_BL: Int[Array, "B L"], caches: list[KVCache],
               index: Int[Array, ""]) -> tuple[Float[Array, "B L V"], list[KVCache]]:
        """Run tokens at positions index … index+L−1 against the cache; return logits and new caches.

        A prompt is one call with L = its length at index 0; each new token is a call with L = 1.
        """
        B, L = tokens_BL.shape
        S = caches.k_BSHK.shape[2] if self.cfg.scan_layers else caches[0].k_BSHK.shape[1]
        positions_BL = index + jnp.broadcast_to(jnp.arange(L), (B, L))
        key_positions_BS = jnp.broadcast_to(jnp.arange(S), (B, S))
        mask_B1LS = attention_mask(None, None, positions_BL, key_positions_BS, causal=True)
        x_BLD = self.wte(tokens_BL) + self.wpe(positions_BL)
        x_BLD, new_caches = self._run_blocks(x_BLD, mask_B1LS, caches, index, True, None)
        return self.logits(self.ln_f(x_BLD)), new_caches


def count_params(params) -> int:
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
