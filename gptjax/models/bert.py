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
from gptjax.layers import ACTIVATIONS, INIT_STD, Block, attention_mask, dense, layer_norm
from gptjax.models.gpt import DTYPES


class Bert(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be resolved from the tokenizer before building")
        dtype = DTYPES[cfg.dtype]
        D = cfg.n_embd
        embed = lambda n: nnx.Embed(n, D, dtype=dtype, param_dtype=jnp.float32,
                                    embedding_init=nnx.initializers.normal(INIT_STD), rngs=rngs)
        norm = lambda: layer_norm(D, eps=cfg.layer_norm_eps, bias=cfg.bias, dtype=dtype, rngs=rngs)
        self.cfg = cfg
        self.wte = embed(cfg.vocab_size)
        self.wpe = embed(cfg.context)
        if cfg.type_vocab_size:
            self.wtt = embed(cfg.type_vocab_size)
        self.ln_e = norm()
        self.drop = nnx.Dropout(cfg.dropout)
        self.blocks = nnx.List([
            Block(D, cfg.n_head, cfg.mlp_ratio * D, activation=cfg.activation, proj_std=INIT_STD,
                  bias=cfg.bias, dropout=cfg.dropout, eps=cfg.layer_norm_eps, impl=cfg.attention,
                  dtype=dtype, rngs=rngs, post_norm=True)
            for _ in range(cfg.n_layer)
        ])
        self.mlm_dense = dense(D, D, std=INIT_STD, bias=True, dtype=dtype, rngs=rngs)
        self.mlm_ln = norm()
        self.mlm_bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32))
        self.pooler = dense(D, D, std=INIT_STD, bias=True, dtype=dtype, rngs=rngs)
        self.nsp = dense(D, 2, std=INIT_STD, bias=True, dtype=dtype, rngs=rngs)

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
        x_BLD = self.drop(self.ln_e(x_BLD), deterministic=deterministic, rngs=rngs)
        for block in self.blocks:
            x_BLD, _ = block(x_BLD, mask_B1LS, deterministic=deterministic, rngs=rngs)
        return x_BLD

    def mlm_logits(self, x_BLD: Float[Array, "B L D"]) -> Float[Array, "B L V"]:
        """Masked-LM logits: dense → activation → LayerNorm, then the token embedding (tied) plus a bias."""
        h_BLD = self.mlm_ln(ACTIVATIONS[self.cfg.activation](self.mlm_dense(x_BLD)))
        return self.wte.attend(h_BLD) + self.mlm_bias[...].astype(h_BLD.dtype)

    def nsp_logits(self, x_BLD: Float[Array, "B L D"]) -> Float[Array, "B 2"]:
        """Next-sentence logits from the first position through the tanh pooler; class 0 = IsNext."""
        return self.nsp(jnp.tanh(self.pooler(x_BLD[:, 0])))

    def __call__(self, tokens_BL, *, segment_ids_BL, type_ids_BL=None, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array]:
        x_BLD = self.hidden(tokens_BL, segment_ids_BL=segment_ids_BL, type_ids_BL=type_ids_BL,
                            deterministic=deterministic, rngs=rngs)
        return self.mlm_logits(x_BLD), self.nsp_logits(x_BLD)
