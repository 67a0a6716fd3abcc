"""Encoder-only BERT (Devlin et al. 2019); RoBERTa (Liu et al. 2019) is a configuration of it.

Token + learned position + segment ("type") embeddings summed and LayerNormed, post-LayerNorm blocks
with bidirectional attention (padding keys masked), a masked-LM head whose output matrix is the token
embedding (with its own bias), and a next-sentence head on the first ([CLS]) position through BERT's
tanh "pooler". Initialisation: N(0, 0.02) everywhere, LayerNorm scale 1 and bias 0 (BERT's). RoBERTa
drops the segment embeddings (`model.type_vocab_size=0`) and the NSP head's loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from gptjax.config import ModelConfig
from gptjax.layers import ACTIVATIONS, EMBED_AXES, INIT_STD, Block, attention_mask, dense, embed, layer_norm
from gptjax.models.gpt import DTYPES
from gptjax.sharding import AXES_KEY, constrain


class Bert(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be resolved from the tokenizer before building")
        dtype = DTYPES[cfg.dtype]
        D = cfg.n_embd
        table = lambda n, axes: embed(n, D, std=INIT_STD, dtype=dtype, rngs=rngs, axes=axes)
        norm = lambda: layer_norm(D, eps=cfg.layer_norm_eps, bias=cfg.bias, dtype=dtype, rngs=rngs)
        self.cfg = cfg
        self.wte = table(cfg.vocab_size, ("vocab", "embed"))
        self.wpe = table(cfg.context, (None, "embed"))
        if cfg.type_vocab_size:
            self.wtt = table(cfg.type_vocab_size, (None, "embed"))
        self.ln_e = norm()
        self.drop = nnx.Dropout(cfg.dropout)
        self.blocks = nnx.List([
            Block(D, cfg.n_head, cfg.mlp_ratio * D, activation=cfg.activation, proj_std=INIT_STD,
                  bias=cfg.bias, dropout=cfg.dropout, eps=cfg.layer_norm_eps, impl=cfg.attention,
                  dtype=dtype, rngs=rngs, post_norm=True)
            for _ in range(cfg.n_layer)
        ])
        self.mlm_dense = dense(D, D, std=INIT_STD, bias=True, dtype=dtype, rngs=rngs, axes=("embed", None))
        self.mlm_ln = norm()
        self.mlm_bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32), **{AXES_KEY: ("vocab",)})
        self.pooler = dense(D, D, std=INIT_STD, bias=True, dtype=dtype, rngs=rngs, axes=("embed", None))
        self.nsp = dense(D, 2, std=INIT_STD, bias=True, dtype=dtype, rngs=rngs, axes=("embed", None))

    def hidden(self, tokens_BL: Int[Array, "B L"], *, segment_ids_BL: Int[Array, "B L"],
               type_ids_BL: Int[Array, "B L"] | None = None, deterministic: bool = True,
               rngs: nnx.Rngs | None = None) -> Float[Array, "B L D"]:
        """Final hidden states under bidirectional attention; segment id 0 (padding) is never attended
        to, and different non-zero ids (packed documents) do not see each other."""
        positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)
        mask_B1LS = attention_mask(segment_ids_BL, segment_ids_BL, positions_BL, positions_BL, causal=False)
        x_BLD = self.wte(tokens_BL) + self.wpe(positions_BL)
        if self.cfg.type_vocab_size:
            x_BLD = x_BLD + self.wtt(jnp.zeros_like(tokens_BL) if type_ids_BL is None else type_ids_BL)
        x_BLD = self.drop(self.ln_e(constrain(x_BLD, EMBED_AXES)), deterministic=deterministic, rngs=rngs)
        for block in self.blocks:
            x_BLD, _ = block(x_BLD, mask_B1LS, deterministic=deterministic, rngs=rngs)
        return x_BLD

    def mlm_logits(self, x_BLD: Float[Array, "B L D"]) -> Float[Array, "B L V"]:
        """Masked-LM logits: dense → activation → LayerNorm, then the token embedding (tied) plus a bias."""
        h_BLD = self.mlm_ln(ACTIVATIONS[self.cfg.activation](self.mlm_dense(x_BLD)))
        logits_BLV = self.wte.attend(h_BLD) + self.mlm_bias[...].astype(h_BLD.dtype)
        return constrain(logits_BLV, ("batch", "length", "vocab"))

    def nsp_logits(self, x_BLD: Float[Array, "B L D"]) -> Float[Array, "B 2"]:
        """Next-sentence logits from the first position through the tanh pooler; class 0 = IsNext."""
        return self.nsp(jnp.tanh(self.pooler(x_BLD[:, 0])))

    def __call__(self, tokens_BL, *, segment_ids_BL, type_ids_BL=None, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array]:
        x_BLD = self.hidden(tokens_BL, segment_ids_BL=segment_ids_BL, type_ids_BL=type_ids_BL,
                            deterministic=deterministic, rngs=rngs)
        return self.mlm_logits(x_BLD), self.nsp_logits(x_BLD)
