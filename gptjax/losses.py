"""Loss terms: one implementation each, the one training runs, as (sum, weight) pairs normalised once.

Every term is a function of the scored batch (`Scored`: logits, their float32 log-softmax, targets and
what some terms also read) returning a per-position loss [B, L]; `TERMS` is the registry an experiment's
`loss.terms` names, and objectives add their parts from the same functions. Losses are *summed* over
weighted positions and divided once at the end by a normaliser (`normalizer`: real target tokens,
sequences, or nothing), so sums add up correctly across micro-batches, devices and masked positions
(T5X's normalisation idea). Log-softmax runs in float32 whatever the activation dtype: the
log-likelihood of a sequence is a sum of logs, never a product of probabilities, which underflows.
`chunked_lm_loss` is the same ce, label_smoothing and z computed from the final hidden states in chunks of
tokens, never holding the [tokens × vocab] logits (tested equal to the terms here).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from gptjax.config import LossTerm, Normalization, known, registry


class LossTerms(NamedTuple):
    sum: Float[Array, ""]
    weight: Float[Array, ""]

    def __add__(self, other: LossTerms) -> LossTerms:
        return LossTerms(self.sum + other.sum, self.weight + other.weight)

    def mean(self) -> Float[Array, ""]:
        """sum / weight, and 0 (with zero gradient, never NaN) when there is nothing to average."""
        return self.sum / jnp.where(self.weight > 0, self.weight, 1.0)


def normalizer(weights_BL: Float[Array, "B L"], normalization: Normalization = "token",
               batch_rows: int | None = None) -> Float[Array, ""]:
    """The weight a summed loss is divided by: real target tokens (`token`), sequences holding at least
    one real target (`sequence`), or `sum` (no division: the rows' share of a global batch of
    `batch_rows` rows, so micro-batches add up to exactly 1 and the result is the batch's summed loss)."""
    weights_BL = weights_BL.astype(jnp.float32)
    if normalization == "token":
        return jnp.sum(weights_BL)
    if normalization == "sequence":
        return jnp.sum(jnp.any(weights_BL > 0, axis=-1).astype(jnp.float32))
    if normalization == "sum":
        return jnp.float32(weights_BL.shape[0] / (batch_rows or weights_BL.shape[0]))
    raise ValueError(f"unknown normalization {normalization!r}; known: {', '.join(known(Normalization))}")


def log_probs(logits_BLV: Float[Array, "B L V"]) -> Float[Array, "B L V"]:
    return jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)


class Scored(NamedTuple):
    """What a term may look at: the logits, their float32 log-softmax, the targets, and for some terms the
    inputs and segments (unlikelihood) or a teacher's logits and temperature (kl)."""

    logits_BLV: Array
    logprobs_BLV: Array
    targets_BL: Array
    inputs_BL: Array | None = None
    segment_ids_BL: Array | None = None
    teacher_logits_BLV: Array | None = None
    temperature: float = 1.0


def score(logits_BLV: Float[Array, "B L V"], targets_BL: Int[Array, "B L"], **context) -> Scored:
    """The logits scored once (their log-softmax), with whatever else the terms read (`Scored`'s fields)."""
    return Scored(logits_BLV, log_probs(logits_BLV), targets_BL, **context)


def _pick(x_BLV, targets_BL):
    return jnp.take_along_axis(x_BLV, targets_BL[..., None], axis=-1)[..., 0]


def cross_entropy(s: Scored) -> Float[Array, "B L"]:
    """Token cross-entropy −log softmax(logits)[target]."""
    return -_pick(s.logprobs_BLV, s.targets_BL)


def label_smoothing(s: Scored) -> Float[Array, "B L"]:
    """Cross-entropy against the uniform distribution, −(1/V) Σ_v log p_v; weighted ε beside cross-entropy
    weighted 1 − ε it is exactly label smoothing ε (cross-entropy against (1 − ε)·one-hot + ε/V)."""
    return -jnp.mean(s.logprobs_BLV, axis=-1)


def z_loss(s: Scored) -> Float[Array, "B L"]:
    """log(Z)², with log Z = logsumexp(logits): keeps the softmax normaliser near 1 (PaLM: coef 1e-4)."""
    return jax.nn.logsumexp(s.logits_BLV.astype(jnp.float32), axis=-1) ** 2


def kl_divergence(s: Scored) -> Float[Array, "B L"]:
    """KL(teacher ‖ student) = Σ_v t_v (log t_v − log p_v) of both softmaxes at `temperature`, times
    temperature² (Hinton et al. 2015, so gradients keep their scale); the teacher gets no gradient."""
    student_BLV = jax.nn.log_softmax(s.logits_BLV.astype(jnp.float32) / s.temperature, axis=-1)
    teacher_BLV = jax.nn.log_softmax(
        jax.lax.stop_gradient(s.teacher_logits_BLV).astype(jnp.float32) / s.temperature, axis=-1)
    return s.temperature**2 * jnp.sum(jnp.exp(teacher_BLV) * (teacher_BLV - student_BLV), axis=-1)


def mse_probs(s: Scored) -> Float[Array, "B L"]:
    """Squared error between the predicted distribution and the one-hot target, Σ_v (p_v − y_v)² (the
    Brier score; the "MSE" of cross-entropy-versus-square-loss comparisons)."""
    probs_BLV = jnp.exp(s.logprobs_BLV)
    # Σ_v (p_v − y_v)² = Σ_v p_v² − 2 p_target + 1, without materialising the one-hot.
    return jnp.sum(probs_BLV**2, axis=-1) - 2 * _pick(probs_BLV, s.targets_BL) + 1


def unlikelihood(s: Scored) -> Float[Array, "B L"]:
    """Token-level unlikelihood (Welleck et al. 2020): −Σ_{c ∈ C_t} log(1 − p(c)), where C_t is the set of
    distinct tokens already in the context (inputs ≤ t, same segment) other than the target."""
    inputs_BL, targets_BL = s.inputs_BL, s.targets_BL
    B, L = inputs_BL.shape
    segment_ids_BL = jnp.ones((B, L), jnp.int32) if s.segment_ids_BL is None else s.segment_ids_BL
    same_BLL = segment_ids_BL[:, :, None] == segment_ids_BL[:, None, :]  # [b, t, s]
    before_LL = jnp.tril(jnp.ones((L, L), bool))  # s <= t
    same_token_BLL = inputs_BL[:, :, None] == inputs_BL[:, None, :]
    # A set, not a multiset: count position s only at its token's first occurrence in its segment.
    earlier_copy_BL = jnp.any(same_token_BLL & same_BLL & jnp.tril(jnp.ones((L, L), bool), -1), axis=-1)
    candidate_BLL = (same_BLL & before_LL & ~earlier_copy_BL[:, None, :]
                     & (inputs_BL[:, None, :] != targets_BL[:, :, None]))
    logp_BLL = jnp.take_along_axis(s.logprobs_BLV, jnp.broadcast_to(inputs_BL[:, None, :], (B, L, L)), -1)
    # log(1 − p) = log(−expm1(log p)), floored at 1e-5 as in the paper's code, so p → 1 stays finite.
    penalty_BLL = -jnp.log(jnp.maximum(-jnp.expm1(logp_BLL), 1e-5))
    return jnp.sum(jnp.where(candidate_BLL, penalty_BLL, 0.0), axis=-1)


TERMS: dict[LossTerm, Callable[[Scored], Array]] = registry(LossTerm, {
    "ce": cross_entropy, "label_smoothing": label_smoothing, "z": z_loss, "kl": kl_divergence,
    "mse": mse_probs, "unlikelihood": unlikelihood})


def weighted_sum(loss_BL: Float[Array, "B L"], weights_BL: Float[Array, "B L"]) -> Float[Array, ""]:
    """Σ weight · loss over positions: the sum every term and part is divided by its normaliser from."""
    return jnp.sum(loss_BL * weights_BL.astype(jnp.float32))


def correct_predictions(logits_BLV: Float[Array, "B L V"], targets_BL: Int[Array, "B L"],
                        weights_BL: Float[Array, "B L"]) -> Float[Array, ""]:
    """Weighted count of positions whose arg-max prediction is the target (for token accuracy)."""
    hit_BL = (jnp.argmax(logits_BLV, axis=-1) == targets_BL).astype(jnp.float32)
    return jnp.sum(hit_BL * weights_BL.astype(jnp.float32))


def component_metrics(name: str, coef: float, loss_sum, count, correct=None) -> dict[str, jax.Array]:
    """One loss component's summed metrics in the schema `gptjax.metrics.summarize` reads: `<name>_sum`,
    `<name>_count` (what it is divided by), `<name>_weighted` (coefficient · sum) and, for a component
    scored by arg-max, `<name>_correct`."""
    out = {f"{name}_sum": loss_sum, f"{name}_count": count, f"{name}_weighted": jnp.float32(coef) * loss_sum}
    if correct is not None:
        out[f"{name}_correct"] = correct
    return out


def score_parts(scored: dict, lm: str) -> tuple[dict[str, tuple[float, jax.Array]], dict[str, jax.Array]]:
    """{name: (coefficient, logits_BLV, targets_BL, weights_BL)} → (parts, summed metrics): each part the
    weighted cross-entropy sum over its positions, divided later by its own count; `tokens` are part `lm`'s
    targets (the language-model prediction perplexity and accuracy are measured on)."""
    parts, metrics = {}, {}
    for name, (coef, logits_BLV, targets_BL, weights_BL) in scored.items():
        weights_BL = weights_BL.astype(jnp.float32)
        part_sum = weighted_sum(cross_entropy(score(logits_BLV, targets_BL)), weights_BL)
        parts[name] = (coef, part_sum)
        metrics.update(component_metrics(name, coef, part_sum, jnp.sum(weights_BL),
                                         correct_predictions(logits_BLV, targets_BL, weights_BL)))
    metrics["tokens"] = metrics[f"{lm}_count"]
    return parts, metrics


class ChunkedStats(NamedTuple):
    """Weighted sums over tokens from the chunked pass (statistics, not differentiable themselves)."""

    ce: Float[Array, ""]
    label_smoothing: Float[Array, ""]
    z: Float[Array, ""]
    correct: Float[Array, ""]


def chunked_lm_loss(x_ND: Float[Array, "N D"], w_VD: Float[Array, "V D"], targets_N: Int[Array, " N"],
                    weights_N: Float[Array, " N"], coefs: tuple[float, float, float],
                    chunk: int = 256) -> tuple[Float[Array, ""], ChunkedStats]:
    """Σ_n w_n (c_ce·ce_n + c_ls·ls_n + c_z·z_n) for logits_n = w_VD · x_n, `chunk` tokens at a time, with
    `coefs` = (ce, label_smoothing, z). Under differentiation the gradients with respect to `x_ND` and
    `w_VD` are built in the same pass (each chunk's float32 logits are used once and dropped), so memory
    holds one [chunk × V] block instead of [N × V] and the logits are computed once, as in the plain
    path. Only the total is differentiable; the stats are for logging."""
    return _chunked(tuple(float(c) for c in coefs), int(chunk), x_ND, w_VD, targets_N, weights_N)


def _chunk_scan(coefs, chunk, x_ND, w_VD, targets_N, weights_N, with_grads: bool):
    N, D = x_ND.shape
    V = w_VD.shape[0]
    n_chunks = -(-N // chunk)
    pad = n_chunks * chunk - N
    x_KcD = jnp.pad(x_ND, ((0, pad), (0, 0))).reshape(n_chunks, chunk, D)
    t_Kc = jnp.pad(targets_N, (0, pad)).reshape(n_chunks, chunk)
    m_Kc = jnp.pad(weights_N.astype(jnp.float32), (0, pad)).reshape(n_chunks, chunk)
    c_ce, c_ls, c_z = coefs
    dtype = jnp.promote_types(x_ND.dtype, w_VD.dtype)
    w_cast_VD = w_VD.astype(dtype)

    def step(carry, xs):
        x_cD, t_c, m_c = xs
        logits_cV = jnp.dot(x_cD.astype(dtype), w_cast_VD.T, preferred_element_type=jnp.float32)
        lse_c = jax.nn.logsumexp(logits_cV, axis=-1)
        target_c = jnp.take_along_axis(logits_cV, t_c[:, None], axis=-1)[:, 0]
        mean_c = jnp.mean(logits_cV, axis=-1)
        ce_c, ls_c, z_c = lse_c - target_c, lse_c - mean_c, lse_c**2
        hit_c = (jnp.argmax(logits_cV, axis=-1) == t_c).astype(jnp.float32)
        sums = jnp.stack([jnp.sum(m_c * (c_ce * ce_c + c_ls * ls_c + c_z * z_c)), jnp.sum(m_c * ce_c),
                          jnp.sum(m_c * ls_c), jnp.sum(m_c * z_c), jnp.sum(m_c * hit_c)])
        if not with_grads:
            return carry, sums
        # d total / d logits: softmax·(c_ce + c_ls + 2 c_z lse) − c_ce·one-hot − c_ls/V, times the weight.
        probs_cV = jnp.exp(logits_cV - lse_c[:, None])
        dz_cV = probs_cV * (m_c * (c_ce + c_ls + 2 * c_z * lse_c))[:, None] - (m_c * c_ls / V)[:, None]
        dz_cV = dz_cV.at[jnp.arange(chunk), t_c].add(-m_c * c_ce)
        dx_cD = jnp.dot(dz_cV, w_VD.astype(jnp.float32))
        dw_VD = carry + jax.lax.dot_general(dz_cV, x_cD.astype(jnp.float32), (((0,), (0,)), ((), ())))
        return dw_VD, (sums, dx_cD)

    init = jnp.zeros((V, D), jnp.float32) if with_grads else None
    dw_VD, out = jax.lax.scan(step, init, (x_KcD, t_Kc, m_Kc))
    sums_K5, dx_KcD = out if with_grads else (out, None)
    total, ce, ls, z, hits = jnp.sum(sums_K5, axis=0)
    result = (total, ChunkedStats(ce, ls, z, hits))
    if not with_grads:
        return result
    dx_ND = dx_KcD.reshape(n_chunks * chunk, D)[:N]
    return result, (dx_ND.astype(x_ND.dtype), dw_VD.astype(w_VD.dtype), targets_N, weights_N)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _chunked(coefs, chunk, x_ND, w_VD, targets_N, weights_N):
    return _chunk_scan(coefs, chunk, x_ND, w_VD, targets_N, weights_N, with_grads=False)


def _chunked_fwd(coefs, chunk, x_ND, w_VD, targets_N, weights_N):
    return _chunk_scan(coefs, chunk, x_ND, w_VD, targets_N, weights_N, with_grads=True)


def _chunked_bwd(coefs, chunk, residuals, cotangents):
    dx_ND, dw_VD, targets_N, weights_N = residuals
    g_total = cotangents[0]  # the stats' cotangents are ignored: they are not differentiable
    # Integer targets take a float0 cotangent; the weights are data, given none.
    target_zeros = np.zeros(targets_N.shape, jax.dtypes.float0)
    return g_total * dx_ND, g_total * dw_VD, target_zeros, jnp.zeros_like(weights_N)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)
