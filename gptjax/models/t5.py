"""Encoder-decoder T5 (Raffel et al. 2020), in the original (v1.0) layout.

One token embedding shared by the encoder input, the decoder input and (tied) the output head; no
position embeddings but a learned relative position bias per stack (bucketed offsets, one scalar per
bucket and head, computed once and added in every layer of that stack); pre-norm blocks whose norm is
RMS without mean subtraction or bias; no biases anywhere; a ReLU MLP. The decoder's blocks add
cross-attention to the encoder's output between self-attention and the MLP.
Attention logits are not scaled by 1/sqrt(head width): T5 folds that factor into the query's
initialisation, which follows the T5 codebase's variances (query (D·K)^-½, keys, values and the MLP
input D^-½, outputs by their input width^-½, embedding 1). A tied output head scales the final hidden
state by D^-½ before multiplying by the embedding.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from gptjax.config import ModelConfig
from gptjax.layers import (
    EMBED_AXES,
    MLP,
    CrossAttention,
    RelativePositionBias,
    SelfAttention,
    attention_mask,
    dense,
    embed,
    rms_norm,
)
from gptjax.models.gpt import DTYPES
from gptjax.sharding import constrain


class EncoderBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        D, K, F, dtype = cfg.n_embd, cfg.n_embd // cfg.n_head, cfg.mlp_ratio * cfg.n_embd, DTYPES[cfg.dtype]
        qkv_std = jnp.concatenate([jnp.full(D, (D * K) ** -0.5), jnp.full(2 * D, D ** -0.5)])
        self.ln_1 = rms_norm(D, eps=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.attn = SelfAttention(D, cfg.n_head, proj_std=D ** -0.5, bias=False, dropout=cfg.dropout,
                                  impl=cfg.attention, dtype=dtype, rngs=rngs, qkv_std=qkv_std, scale=1.0)
        self.ln_2 = rms_norm(D, eps=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.mlp = MLP(D, F, activation=cfg.activation, proj_std=F ** -0.5, bias=False, dropout=cfg.dropout,
                       dtype=dtype, rngs=rngs, fc_std=D ** -0.5)

    def __call__(self, x_BLD, mask_B1LS, bias_1HLS, *, deterministic: bool, rngs):
        y_BLD, _ = self.attn(self.ln_1(x_BLD), mask_B1LS, bias_BHLS=bias_1HLS, deterministic=deterministic,
                             rngs=rngs)
        x_BLD = x_BLD + y_BLD
        return x_BLD + self.mlp(self.ln_2(x_BLD), deterministic=deterministic, rngs=rngs)


class DecoderBlock(EncoderBlock):
    """Self-attention (ln_1), cross-attention to the encoder (ln_3), MLP (ln_2), each residual."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        D, K, dtype = cfg.n_embd, cfg.n_embd // cfg.n_head, DTYPES[cfg.dtype]
        self.cross = CrossAttention(D, cfg.n_head, q_std=(D * K) ** -0.5, kv_std=D ** -0.5,
                                    proj_std=D ** -0.5, bias=False, dropout=cfg.dropout, impl=cfg.attention,
                                    dtype=dtype, rngs=rngs, scale=1.0)
        self.ln_3 = rms_norm(D, eps=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)

    def __call__(self, x_BTD, mask_B1TT, bias_1HTT, *, enc_BLD, cross_mask_B1TL, deterministic: bool, rngs):
        y_BTD, _ = self.attn(self.ln_1(x_BTD), mask_B1TT, bias_BHLS=bias_1HTT, deterministic=deterministic,
                             rngs=rngs)
        x_BTD = x_BTD + y_BTD
        x_BTD = x_BTD + self.cross(self.ln_3(x_BTD), enc_BLD, cross_mask_B1TL, deterministic=deterministic,
                                   rngs=rngs)
        return x_BTD + self.mlp(self.ln_2(x_BTD), deterministic=deterministic, rngs=rngs)


class T5(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be resolved from the tokenizer before building")
        D, dtype = cfg.n_embd, DTYPES[cfg.dtype]
        self.cfg = cfg
        self.wte = embed(cfg.vocab_size, D, std=1.0, dtype=dtype, rngs=rngs)
        bias = lambda bidirectional: RelativePositionBias(cfg.relative_buckets, cfg.relative_max_distance,
                                                          cfg.n_head, bidirectional=bidirectional,
                                                          std=D ** -0.5, rngs=rngs)
        self.enc_bias, self.dec_bias = bias(True), bias(False)
        self.encoder = nnx.List([EncoderBlock(cfg, rngs=rngs) for _ in range(cfg.n_layer)])
        self.decoder = nnx.List([DecoderBlock(cfg, rngs=rngs)
                                 for _ in range(cfg.n_decoder_layer or cfg.n_layer)])
        self.enc_ln_f = rms_norm(D, eps=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.dec_ln_f = rms_norm(D, eps=cfg.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout)
        if not cfg.tie_embeddings:
            self.lm_head = dense(D, cfg.vocab_size, std=D ** -0.5, bias=False, dtype=dtype, rngs=rngs,
                                 axes=("embed", "vocab"))

    def encode(self, tokens_BL: Int[Array, "B L"], *, segment_ids_BL: Int[Array, "B L"],
               deterministic: bool = True, rngs: nnx.Rngs | None = None) -> Float[Array, "B L D"]:
        """Encoder output after its final norm; bidirectional, padding (segment id 0) never attended to."""
        positions_L = jnp.arange(tokens_BL.shape[1])
        positions_BL = jnp.broadcast_to(positions_L, tokens_BL.shape)
        mask_B1LL = attention_mask(segment_ids_BL, segment_ids_BL, positions_BL, positions_BL, causal=False)
        bias_1HLL = self.enc_bias(positions_L, positions_L)
        x_BLD = self.drop(constrain(self.wte(tokens_BL), EMBED_AXES), deterministic=deterministic, rngs=rngs)
        for block in self.encoder:
            x_BLD = block(x_BLD, mask_B1LL, bias_1HLL, deterministic=deterministic, rngs=rngs)
        return self.drop(self.enc_ln_f(x_BLD), deterministic=deterministic, rngs=rngs)

    def decode_hidden(self, dec_tokens_BT: Int[Array, "B T"], enc_BLD: Float[Array, "B L D"], *,
                      enc_segment_ids_BL: Int[Array, "B L"], dec_segment_ids_BT: Int[Array, "B T"],
                      deterministic: bool = True, rngs: nnx.Rngs | None = None) -> Float[Array, "B T D"]:
        """Decoder hidden states after its final norm: causal self-attention, cross-attention to the
        encoder's real (non-padding) positions."""
        positions_T = jnp.arange(dec_tokens_BT.shape[1])
        positions_BT = jnp.broadcast_to(positions_T, dec_tokens_BT.shape)
        enc_positions_BL = jnp.broadcast_to(jnp.arange(enc_BLD.shape[1]), enc_segment_ids_BL.shape)
        mask_B1TT = attention_mask(dec_segment_ids_BT, dec_segment_ids_BT, positions_BT, positions_BT,
                                   causal=True)
        cross_mask_B1TL = attention_mask(None, enc_segment_ids_BL, positions_BT, enc_positions_BL,
                                         causal=False)
        bias_1HTT = self.dec_bias(positions_T, positions_T)
        x_BTD = self.drop(constrain(self.wte(dec_tokens_BT), EMBED_AXES), deterministic=deterministic,
                          rngs=rngs)
        for block in self.decoder:
            x_BTD = block(x_BTD, mask_B1TT, bias_1HTT, enc_BLD=enc_BLD, cross_mask_B1TL=cross_mask_B1TL,
                          deterministic=deterministic, rngs=rngs)
        return self.drop(self.dec_ln_f(x_BTD), deterministic=deterministic, rngs=rngs)

    def logits(self, x_BTD: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
        if self.cfg.tie_embeddings:
            logits_BTV = self.wte.attend(x_BTD * (1.0 / math.sqrt(self.cfg.n_embd)))
        else:
            logits_BTV = self.lm_head(x_BTD)
        return constrain(logits_BTV, ("batch", "length", "vocab"))

    def __call__(self, enc_tokens_BL, dec_tokens_BT, *, enc_segment_ids_BL, dec_segment_ids_BT,
                 deterministic: bool = True, rngs: nnx.Rngs | None = None) -> Float[Array, "B T V"]:
        enc_BLD = self.encode(enc_tokens_BL, segment_ids_BL=enc_segment_ids_BL, deterministic=deterministic,
                              rngs=rngs)
        return self.logits(self.decode_hidden(dec_tokens_BT, enc_BLD, enc_segment_ids_BL=enc_segment_ids_BL,
                                              dec_segment_ids_BT=dec_segment_ids_BT,
                                              deterministic=deterministic, rngs=rngs))
