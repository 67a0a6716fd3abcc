"""Transformer building blocks in Flax NNX, shared by every model family.

Shape letters used in local names (nanodo's habit):
    B batch · L query length · S key length · D model width · H heads · K head width
    F MLP hidden width · V vocabulary · N layers

Parameters are created float32; `dtype` is the activation dtype (bfloat16 for mixed precision).
Every parameter names its dimensions (`logical_axes` metadata: "embed", "heads", "mlp", ...) and the main
activations are constrained by name (`sharding.constrain`); gptjax/sharding.py maps names onto the mesh.
Fused projections keep their parts on an axis of their own (q|k|v: [D, 3, H·K]), so that splitting heads
over devices never cuts across the parts.
Attention softmax runs in float32 on the einsum path, and `jax.nn.dot_product_attention` does the same
internally on the XLA path.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from gptjax.config import Activation, AttentionImpl, registry
from gptjax.sharding import AXES_KEY, constrain

INIT_STD = 0.02  # GPT-2's N(0, 0.02)

ACTIVATIONS = registry(Activation, {
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),  # GPT-2's tanh approximation
    "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),  # BERT's erf form
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "swiglu": jax.nn.silu,  # of the gate, which multiplies the other half of the hidden layer (`MLP`)
})


class KVCache(NamedTuple):
    """Keys and values of one attention layer for positions [0, S); filled up to the decode index."""

    k_BSHK: jax.Array
    v_BSHK: jax.Array


def flat_dot_general(x, kernel, dimension_numbers, precision=None, out_sharding=None, **kwargs):
    """nnx.Linear's product x[..., D] @ kernel[D, F] taken as one 2-D matmul over the merged leading axes.

    The value is the same; what changes is the backward pass. Autodiff of the 3-D product asks for the
    weight gradient as a contraction over two axes, which XLA:CPU runs after a transposed copy of the
    output gradient; of the 2-D product, as one (B·L)-long contraction of two untransposed operands.
    On CPU that took 14% off a training step at d 384 and 5% at d 128, with bitwise equal losses
    (benchmarks/README.md, log entry 8).
    """
    if dimension_numbers != (((x.ndim - 1,), (0,)), ((), ())) or out_sharding is not None:
        raise ValueError(f"flat_dot_general takes x[..., D] @ kernel[D, F] only, not {dimension_numbers}")
    y_NF = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), kernel, (((1,), (0,)), ((), ())),
                               precision=precision, **kwargs)
    return y_NF.reshape(*x.shape[:-1], kernel.shape[-1])


def dense(d_in: int, d_out: int, *, std, bias: bool, dtype, rngs: nnx.Rngs,
          axes: tuple[str | None, str | None]) -> nnx.Linear:
    """A Linear layer with N(0, std²) weights; `std` may be a [d_out] vector (one std per output).
    `axes` are the logical names of the input and output dimensions."""
    init = nnx.initializers.normal(1.0)
    kernel_init = lambda key, shape, dtype: init(key, shape, dtype) * jnp.asarray(std, dtype)
    return nnx.Linear(d_in, d_out, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
                      kernel_init=kernel_init, bias_init=nnx.initializers.zeros, rngs=rngs,
                      dot_general=flat_dot_general, kernel_metadata={AXES_KEY: axes},
                      bias_metadata={AXES_KEY: axes[1:]})


class FusedDense(nnx.Module):
    """n Linear layers of one input taken as one matmul: kernel [D, n, F], output [..., n, F].

    The parts (q|k|v, or a gated MLP's gate|up) have their own axis, so `F` can be split over devices
    (heads, hidden units) with every device holding its share of each part. Initialised exactly as the
    [D, n·F] Linear it replaces (same keys, same draws); `std` is a scalar or an [n·F] vector.
    """

    def __init__(self, d_in: int, n: int, d_out: int, *, std, bias: bool, dtype, rngs: nnx.Rngs,
                 axes: tuple[str | None, str | None]):
        std_NF = jnp.broadcast_to(jnp.asarray(std, jnp.float32), (n * d_out,)).reshape(n, d_out)
        kernel = nnx.initializers.normal(1.0)(rngs.params(), (d_in, n, d_out), jnp.float32) * std_NF
        self.kernel = nnx.Param(kernel, **{AXES_KEY: (axes[0], None, axes[1])})
        self.bias = nnx.Param(jnp.zeros((n, d_out), jnp.float32), **{AXES_KEY: (None, axes[1])}) if bias \
            else None
        self.dtype = dtype

    def __call__(self, x):
        kernel = self.kernel[...].astype(self.dtype)
        # One 2-D-by-3-D product over the merged leading axes, as flat_dot_general does for nnx.Linear.
        y_NnF = jax.lax.dot_general(x.astype(self.dtype).reshape(-1, x.shape[-1]), kernel,
                                    (((1,), (0,)), ((), ())))
        if self.bias is not None:
            y_NnF = y_NnF + self.bias[...].astype(self.dtype)
        return y_NnF.reshape(*x.shape[:-1], *kernel.shape[1:])


def attention_mask(q_segment_BL: jax.Array | None, k_segment_BS: jax.Array | None,
                   q_positions_BL: jax.Array, k_positions_BS: jax.Array, causal: bool) -> jax.Array:
    """Boolean mask [B, 1, L, S]: True where a query may attend to a key.

    Segment id 0 marks padding; packed documents (different ids) never see each other.
    """
    mask = jnp.ones((1, 1, q_positions_BL.shape[-1], k_positions_BS.shape[-1]), bool)
    if causal:
        mask = mask & (q_positions_BL[:, None, :, None] >= k_positions_BS[:, None, None, :])
    if k_segment_BS is not None:
        mask = mask & (k_segment_BS[:, None, None, :] != 0)
        if q_segment_BL is not None:
            mask = mask & (q_segment_BL[:, None, :, None] == k_segment_BS[:, None, None, :])
    return mask


def einsum_attention(q_BLHK, k_BSHK, v_BSHK, mask_B1LS, is_causal: bool, scale: float | None = None,
                     bias_BHLS=None) -> jax.Array:
    """The plain reference: scores (+ an additive position bias), masked float32 softmax, weighted sum."""
    if is_causal:
        L, S = q_BLHK.shape[1], k_BSHK.shape[1]
        mask_B1LS = jnp.tril(jnp.ones((L, S), bool))[None, None]
    scale = 1.0 / math.sqrt(q_BLHK.shape[-1]) if scale is None else scale
    scores_BHLS = jnp.einsum("blhk,bshk->bhls", q_BLHK, k_BSHK).astype(jnp.float32) * scale
    if bias_BHLS is not None:
        scores_BHLS = scores_BHLS + bias_BHLS.astype(jnp.float32)
    if mask_B1LS is not None:
        scores_BHLS = jnp.where(mask_B1LS, scores_BHLS, jnp.finfo(jnp.float32).min)
    probs_BHLS = jax.nn.softmax(scores_BHLS, axis=-1).astype(v_BSHK.dtype)
    return jnp.einsum("bhls,bshk->blhk", probs_BHLS, v_BSHK)


def xla_attention(q_BLHK, k_BSHK, v_BSHK, mask_B1LS, is_causal: bool, scale: float | None = None,
                  bias_BHLS=None) -> jax.Array:
    """`jax.nn.dot_product_attention`: fused where the backend has a kernel (cuDNN flash on GPU)."""
    if bias_BHLS is not None:
        bias_BHLS = bias_BHLS.astype(q_BLHK.dtype)
    return jax.nn.dot_product_attention(q_BLHK, k_BSHK, v_BSHK, bias=bias_BHLS, mask=mask_B1LS,
                                        scale=scale, is_causal=is_causal)


def auto_attention(q_BLHK, k_BSHK, v_BSHK, mask_B1LS, is_causal: bool, scale: float | None = None,
                   bias_BHLS=None) -> jax.Array:
    """`xla_attention` where the backend has a fused kernel; on CPU, where it has none, the einsum path,
    whose train step measured 2–7% faster there (benchmarks/README.md, log entry 1)."""
    impl = einsum_attention if jax.default_backend() == "cpu" else xla_attention
    return impl(q_BLHK, k_BSHK, v_BSHK, mask_B1LS, is_causal, scale=scale, bias_BHLS=bias_BHLS)


ATTENTION_IMPLS = registry(AttentionImpl, {"auto": auto_attention, "einsum": einsum_attention,
                                           "xla": xla_attention})
# Logical names of the activations constrained in every layer (gptjax/sharding.py maps them).
EMBED_AXES = ("batch", "length", "embed")  # the residual stream [B, L, D]
HEADS_AXES = ("batch", "length", "heads", "kv")  # queries, keys, values [B, L, H, K]


class SelfAttention(nnx.Module):
    """Multi-head self-attention; the mask (causal, padding, documents) comes from the caller.

    `mask_B1LS=None` means plain causal attention, which fused kernels handle without a mask tensor.
    """

    def __init__(self, d_model: int, n_head: int, *, proj_std: float, bias: bool, dropout: float,
                 impl: str, dtype, rngs: nnx.Rngs, qkv_std=INIT_STD, scale: float | None = None):
        self.n_head = n_head
        self.c_attn = FusedDense(d_model, 3, d_model, std=qkv_std, bias=bias, dtype=dtype, rngs=rngs,
                                 axes=("embed", "heads"))
        self.c_proj = dense(d_model, d_model, std=proj_std, bias=bias, dtype=dtype, rngs=rngs,
                            axes=("heads", "embed"))
        self.resid_dropout = nnx.Dropout(dropout)
        self.impl = impl
        self.scale = scale  # None: 1/sqrt(head width); T5 uses 1 (its initialisation absorbs it)

    def __call__(self, x_BLD, mask_B1LS, *, cache: KVCache | None = None, index=None, bias_BHLS=None,
                 deterministic: bool = True, rngs: nnx.Rngs | None = None):
        B, L, D = x_BLD.shape
        qkv_BL3D = self.c_attn(x_BLD)
        q_BLHK, k_BLHK, v_BLHK = (constrain(qkv_BL3D[:, :, i].reshape(B, L, self.n_head, D // self.n_head),
                                            HEADS_AXES) for i in range(3))
        if cache is not None:
            # Write this call's keys/values at `index`; attend over the whole buffer, the mask
            # hides the positions not written yet.
            k_BSHK = jax.lax.dynamic_update_slice(cache.k_BSHK, k_BLHK.astype(cache.k_BSHK.dtype),
                                                  (0, index, 0, 0))
            v_BSHK = jax.lax.dynamic_update_slice(cache.v_BSHK, v_BLHK.astype(cache.v_BSHK.dtype),
                                                  (0, index, 0, 0))
            cache = KVCache(k_BSHK, v_BSHK)
        else:
            k_BSHK, v_BSHK = k_BLHK, v_BLHK
        y_BLHK = ATTENTION_IMPLS[self.impl](q_BLHK, k_BSHK.astype(q_BLHK.dtype),
                                           v_BSHK.astype(q_BLHK.dtype), mask_B1LS,
                                           is_causal=mask_B1LS is None, scale=self.scale, bias_BHLS=bias_BHLS)
        y_BLHK = constrain(y_BLHK, HEADS_AXES)
        y_BLD = self.resid_dropout(self.c_proj(y_BLHK.reshape(B, L, D)),
                                   deterministic=deterministic, rngs=rngs)
        return constrain(y_BLD, EMBED_AXES), cache


class CrossAttention(nnx.Module):
    """Multi-head attention from a decoder's positions to the encoder's (T5): no causal mask, no bias."""

    def __init__(self, d_model: int, n_head: int, *, q_std: float, kv_std: float, proj_std: float,
                 bias: bool, dropout: float, impl: str, dtype, rngs: nnx.Rngs, scale: float | None = None):
        self.n_head = n_head
        self.c_q = dense(d_model, d_model, std=q_std, bias=bias, dtype=dtype, rngs=rngs,
                         axes=("embed", "heads"))
        self.c_kv = FusedDense(d_model, 2, d_model, std=kv_std, bias=bias, dtype=dtype, rngs=rngs,
                               axes=("embed", "heads"))
        self.c_proj = dense(d_model, d_model, std=proj_std, bias=bias, dtype=dtype, rngs=rngs,
                            axes=("heads", "embed"))
        self.resid_dropout = nnx.Dropout(dropout)
        self.impl, self.scale = impl, scale

    def __call__(self, x_BLD, enc_BSD, mask_B1LS, *, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None):
        B, L, D = x_BLD.shape
        S, K = enc_BSD.shape[1], D // self.n_head
        q_BLHK = constrain(self.c_q(x_BLD).reshape(B, L, self.n_head, K), HEADS_AXES)
        kv_BS2D = self.c_kv(enc_BSD)
        k_BSHK, v_BSHK = (constrain(kv_BS2D[:, :, i].reshape(B, S, self.n_head, K), HEADS_AXES)
                          for i in range(2))
        y_BLHK = ATTENTION_IMPLS[self.impl](q_BLHK, k_BSHK, v_BSHK, mask_B1LS, is_causal=False,
                                           scale=self.scale)
        y_BLD = self.c_proj(constrain(y_BLHK, HEADS_AXES).reshape(B, L, D))
        return constrain(self.resid_dropout(y_BLD, deterministic=deterministic, rngs=rngs), EMBED_AXES)


def relative_position_buckets(relative_LS: jax.Array, *, bidirectional: bool, n_buckets: int,
                              max_distance: int) -> jax.Array:
    """T5's bucketing of key − query offsets (Raffel et al. 2020, §2.1): half the buckets (per direction
    when bidirectional) are exact small distances, the rest grow logarithmically up to `max_distance`,
    beyond which all offsets share the last bucket. A decoder (not bidirectional) sees no future keys."""
    buckets = jnp.zeros_like(relative_LS)
    if bidirectional:
        n_buckets //= 2
        buckets = buckets + (relative_LS > 0) * n_buckets
        distance_LS = jnp.abs(relative_LS)
    else:
        distance_LS = jnp.maximum(-relative_LS, 0)
    exact = n_buckets // 2
    # log(0) is never taken: the where below picks the exact bucket for distances under `exact`.
    log_ratio = jnp.log(jnp.maximum(distance_LS, 1) / exact) / math.log(max_distance / exact)
    far_LS = exact + (log_ratio * (n_buckets - exact)).astype(relative_LS.dtype)
    far_LS = jnp.minimum(far_LS, n_buckets - 1)
    return buckets + jnp.where(distance_LS < exact, distance_LS, far_LS)


class RelativePositionBias(nnx.Module):
    """A learned scalar per (bucket, head), added to the attention logits; computed once per stack and
    shared by all its layers, as in T5."""

    def __init__(self, n_buckets: int, max_distance: int, n_head: int, *, bidirectional: bool, std: float,
                 rngs: nnx.Rngs):
        self.embedding = nnx.Param(nnx.initializers.normal(std)(rngs.params(), (n_buckets, n_head),
                                                                jnp.float32), **{AXES_KEY: (None, "heads")})
        self.n_buckets, self.max_distance, self.bidirectional = n_buckets, max_distance, bidirectional

    def __call__(self, q_positions_L: jax.Array, k_positions_S: jax.Array) -> jax.Array:
        relative_LS = k_positions_S[None, :] - q_positions_L[:, None]
        buckets_LS = relative_position_buckets(relative_LS, bidirectional=self.bidirectional,
                                               n_buckets=self.n_buckets, max_distance=self.max_distance)
        return jnp.transpose(self.embedding[...][buckets_LS], (2, 0, 1))[None]  # [1, H, L, S]


class MLP(nnx.Module):
    """Position-wise feed-forward; swiglu gates one half of the hidden layer with the other."""

    def __init__(self, d_model: int, d_ff: int, *, activation: str, proj_std: float, bias: bool,
                 dropout: float, dtype, rngs: nnx.Rngs, fc_std: float = INIT_STD):
        self.gated = activation == "swiglu"
        if self.gated:  # gate | up on an axis of their own: a device's hidden units have both halves
            self.c_fc = FusedDense(d_model, 2, d_ff, std=fc_std, bias=bias, dtype=dtype, rngs=rngs,
                                   axes=("embed", "mlp"))
        else:
            self.c_fc = dense(d_model, d_ff, std=fc_std, bias=bias, dtype=dtype, rngs=rngs,
                              axes=("embed", "mlp"))
        self.c_proj = dense(d_ff, d_model, std=proj_std, bias=bias, dtype=dtype, rngs=rngs,
                            axes=("mlp", "embed"))
        self.activation = ACTIVATIONS[activation]
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x_BLD, *, deterministic: bool = True, rngs: nnx.Rngs | None = None):
        if self.gated:
            h_BL2F = self.c_fc(x_BLD)
            h_BLF = self.activation(h_BL2F[..., 0, :]) * h_BL2F[..., 1, :]
        else:
            h_BLF = self.activation(self.c_fc(x_BLD))
        h_BLF = constrain(h_BLF, ("batch", "length", "mlp"))
        return constrain(self.dropout(self.c_proj(h_BLF), deterministic=deterministic, rngs=rngs), EMBED_AXES)


def layer_norm(d_model: int, *, eps: float, bias: bool, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(d_model, epsilon=eps, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
                         rngs=rngs, scale_metadata={AXES_KEY: ("embed",)},
                         bias_metadata={AXES_KEY: ("embed",)})


def rms_norm(d_model: int, *, eps: float, dtype, rngs: nnx.Rngs) -> nnx.RMSNorm:
    """T5's layer norm: scale only, no mean subtraction, no bias."""
    return nnx.RMSNorm(d_model, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, rngs=rngs,
                       scale_metadata={AXES_KEY: ("embed",)})


class Embed(nnx.Embed):
    """nnx.Embed whose lookup first gathers the table's model-width (fsdp) shards.

    Left to itself, the partitioner meets a table split over fsdp and rows split over fsdp too, and
    replicates the looked-up activations to reconcile them; gathering the (small) table is what FSDP
    does for every weight anyway.
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:
        rows = self.embedding.get_metadata(AXES_KEY)[0]
        table = constrain(self.embedding[...].astype(self.dtype), (rows, None))
        return jnp.take(table, inputs, axis=0)


def embed(n: int, d_model: int, *, std: float, dtype, rngs: nnx.Rngs, axes=("vocab", "embed")) -> Embed:
    """A lookup table [n, d_model] with N(0, std²) rows; `axes` names its dimensions (position tables:
    (None, "embed"))."""
    return Embed(n, d_model, dtype=dtype, param_dtype=jnp.float32, rngs=rngs,
                 embedding_init=nnx.initializers.normal(std), embedding_metadata={AXES_KEY: axes})


class Block(nnx.Module):
    """Transformer block. Pre-LayerNorm (GPT-2): x + attn(ln(x)), then x + mlp(ln(x)); post-LayerNorm
    (BERT, `post_norm=True`): ln(x + attn(x)), then ln(x + mlp(x))."""

    def __init__(self, d_model: int, n_head: int, d_ff: int, *, activation: str, proj_std: float,
                 bias: bool, dropout: float, eps: float, impl: str, dtype, rngs: nnx.Rngs,
                 post_norm: bool = False):
        self.post_norm = post_norm
        self.ln_1 = layer_norm(d_model, eps=eps, bias=bias, dtype=dtype, rngs=rngs)
        self.attn = SelfAttention(d_model, n_head, proj_std=proj_std, bias=bias, dropout=dropout,
                                  impl=impl, dtype=dtype, rngs=rngs)
        self.ln_2 = layer_norm(d_model, eps=eps, bias=bias, dtype=dtype, rngs=rngs)
        self.mlp = MLP(d_model, d_ff, activation=activation, proj_std=proj_std, bias=bias,
                       dropout=dropout, dtype=dtype, rngs=rngs)

    def __call__(self, x_BLD, mask_B1LS, *, cache: KVCache | None = None, index=None,
                 deterministic: bool = True, rngs: nnx.Rngs | None = None):
        if self.post_norm:
            y_BLD, _ = self.attn(x_BLD, mask_B1LS, deterministic=deterministic, rngs=rngs)
            x_BLD = self.ln_1(x_BLD + y_BLD)
            return self.ln_2(x_BLD + self.mlp(x_BLD, deterministic=deterministic, rngs=rngs)), None
        y_BLD, cache = self.attn(self.ln_1(x_BLD), mask_B1LS, cache=cache, index=index,
                                 deterministic=deterministic, rngs=rngs)
        x_BLD = x_BLD + y_BLD
        x_BLD = x_BLD + self.mlp(self.ln_2(x_BLD), deterministic=deterministic, rngs=rngs)
        return x_BLD, cache
