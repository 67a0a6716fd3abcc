"""Loss terms as (sum, weight) pairs, normalised once at the end.

Every term returns the *sum* of per-target losses and the *weight* it is to be divided by (by default the
number of real targets) instead of a mean. Sums add up correctly across micro-batches, devices and masked
positions; dividing once at the end by the total weight gives the mean (T5X's normalisation idea), per
real target token, per sequence, or per batch as `normalization` chooses. Log-softmax runs in float32
whatever the activation dtype: the log-likelihood of a sequence is a sum of logs, never a product of
probabilities, which underflows. `TERMS` is the registry an experiment's `loss.terms` names; each entry
maps the scored batch (`Scored`) to a per-position loss. `chunked_lm_loss` computes the terms that need
only the log-partition function, the target logit and the mean logit (ce, label_smoothing, z) from the
final hidden states in chunks of tokens, never holding the [tokens × vocab] logits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

NORMALIZATIONS = ("token", "sequence", "sum")


class LossTerms(NamedTuple):
    sum: Float[Array, ""]
    weight: Float[Array, ""]

    def __add__(self, other: LossTerms) -> LossTerms:
        return LossTerms(self.sum + other.sum, self.weight + other.weight)

    def mean(self) -> Float[Array, ""]:
        """sum / weight, and 0 (with zero gradient, never NaN) when there is nothing to average."""
        return self.sum / jnp.where(self.weight > 0, self.weight, 1.0)


def normalizer(weights_BL: Float[Array, "B L"], normalization: str = "token",
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
    raise ValueError(f"unknown normalization {normalization!r}; known: {', '.join(NORMALIZATIONS)}")


def weighted(loss_BL: Float[Array, "B L"], weights_BL: Float[Array, "B L"], normalization: str = "token",
             batch_rows: int | None = None) -> LossTerms:
    """Per-position losses → LossTerms: the weighted sum and the normaliser."""
    weights_BL = weights_BL.astype(jnp.float32)
    return LossTerms(jnp.sum(loss_BL * weights_BL), normalizer(weights_BL, normalization, batch_rows))


def log_probs(logits_BLV: Float[Array, "B L V"]) -> Float[Array, "B L V"]:
    return jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)


def cross_entropy(logits_BLV: Float[Array, "B L V"], targets_BL: Int[Array, "B L"],
                  weights_BL: Float[Array, "B L"], *, normalization: str = "token") -> LossTerms:
    """Token cross-entropy −log softmax(logits)[target], summed over weighted positions."""
    logprobs_BLV = log_probs(logits_BLV)
    return weighted(-_pick(logprobs_BLV, targets_BL), weights_BL, normalization)


def check_distribution(probs_BLV: Float[Array, "B L V"], atol: float = 1e-4) -> None:
    """Refuse soft targets that are not probability distributions (negative, or rows not summing to 1);
    values are checked on concrete arrays, while under `jit`, where they are unknown, only the dtype is."""
    if not jnp.issubdtype(probs_BLV.dtype, jnp.floating):
        raise ValueError(f"soft targets must be floating-point probabilities, got dtype {probs_BLV.dtype}")
    if isinstance(probs_BLV, jax.core.Tracer):
        return
    probs = np.asarray(probs_BLV, np.float64)
    if (probs < 0).any() or not np.isfinite(probs).all():
        raise ValueError("soft targets must be non-negative and finite probabilities")
    worst = float(np.abs(probs.sum(-1) - 1).max(initial=0.0))
    if worst > atol:
        raise ValueError(f"soft targets must sum to 1 over the vocabulary; a row is off by {worst:.3g}")


def soft_cross_entropy(logits_BLV: Float[Array, "B L V"], probs_BLV: Float[Array, "B L V"],
                       weights_BL: Float[Array, "B L"], *, normalization: str = "token") -> LossTerms:
    """Cross-entropy against a target distribution per position, −Σ_v q_v log p_v (q must sum to 1)."""
    check_distribution(probs_BLV)
    return weighted(_soft_ce(log_probs(logits_BLV), probs_BLV), weights_BL, normalization)


def label_smoothing_loss(logits_BLV: Float[Array, "B L V"], weights_BL: Float[Array, "B L"], *,
                         normalization: str = "token") -> LossTerms:
    """Cross-entropy against the uniform distribution, −(1/V) Σ_v log p_v; weighted ε beside cross-entropy
    weighted 1 − ε it is exactly label smoothing ε (cross-entropy against (1 − ε)·one-hot + ε/V)."""
    return weighted(_uniform_ce(log_probs(logits_BLV)), weights_BL, normalization)


def z_loss(logits_BLV: Float[Array, "B L V"], weights_BL: Float[Array, "B L"], *,
           normalization: str = "token") -> LossTerms:
    """log(Z)², with log Z = logsumexp(logits): keeps the softmax normaliser near 1 (PaLM: coef 1e-4)."""
    lse_BL = jax.nn.logsumexp(logits_BLV.astype(jnp.float32), axis=-1)
    return weighted(lse_BL**2, weights_BL, normalization)


def kl_divergence(logits_BLV: Float[Array, "B L V"], teacher_logits_BLV: Float[Array, "B L V"],
                  weights_BL: Float[Array, "B L"], *, temperature: float = 1.0,
                  normalization: str = "token") -> LossTerms:
    """KL(teacher ‖ student) = Σ_v t_v (log t_v − log p_v) of both softmaxes at `temperature`, times
    temperature² (Hinton et al. 2015, so gradients keep their scale); the teacher gets no gradient."""
    return weighted(_kl(logits_BLV, teacher_logits_BLV, temperature), weights_BL, normalization)


def mse_probs(logits_BLV: Float[Array, "B L V"], targets_BL: Int[Array, "B L"],
              weights_BL: Float[Array, "B L"], *, normalization: str = "token") -> LossTerms:
    """Squared error between the predicted distribution and the one-hot target, Σ_v (p_v − y_v)² (the
    Brier score; the "MSE" of cross-entropy-versus-square-loss comparisons)."""
    return weighted(_mse(log_probs(logits_BLV), targets_BL), weights_BL, normalization)


def unlikelihood(logits_BLV: Float[Array, "B L V"], inputs_BL: Int[Array, "B L"],
                 targets_BL: Int[Array, "B L"], weights_BL: Float[Array, "B L"],
                 segment_ids_BL: Int[Array, "B L"] | None = None, *,
                 normalization: str = "token") -> LossTerms:
    """Token-level unlikelihood (Welleck et al. 2020): −Σ_{c ∈ C_t} log(1 − p(c)), where C_t is the set of
    distinct tokens already in the context (inputs ≤ t, same segment) other than the target."""
    loss_BL = _unlikelihood(log_probs(logits_BLV), inputs_BL, targets_BL, segment_ids_BL)
    return weighted(loss_BL, weights_BL, normalization)


def correct_predictions(logits_BLV: Float[Array, "B L V"], targets_BL: Int[Array, "B L"],
                        weights_BL: Float[Array, "B L"]) -> Float[Array, ""]:
    """Weighted count of positions whose arg-max prediction is the target (for token accuracy)."""
    hit_BL = (jnp.argmax(logits_BLV, axis=-1) == targets_BL).astype(jnp.float32)
    return jnp.sum(hit_BL * weights_BL.astype(jnp.float32))


def perplexity(terms: LossTerms) -> Float[Array, ""]:
    """exp(mean token loss): meaningful for token-normalised cross-entropy."""
    return jnp.exp(terms.mean())


# Per-position kernels shared by the public terms above and the registry below; logprobs are float32.

def _pick(x_BLV, targets_BL):
    return jnp.take_along_axis(x_BLV, targets_BL[..., None], axis=-1)[..., 0]


def _soft_ce(logprobs_BLV, probs_BLV):
    return -jnp.sum(probs_BLV.astype(jnp.float32) * logprobs_BLV, axis=-1)


def _uniform_ce(logprobs_BLV):
    return -jnp.mean(logprobs_BLV, axis=-1)


def _kl(logits_BLV, teacher_logits_BLV, temperature):
    student_BLV = jax.nn.log_softmax(logits_BLV.astype(jnp.float32) / temperature, axis=-1)
    teacher_BLV = jax.nn.log_softmax(
        jax.lax.stop_gradient(teacher_logits_BLV).astype(jnp.float32) / temperature, axis=-1)
    return temperature**2 * jnp.sum(jnp.exp(teacher_BLV) * (teacher_BLV - student_BLV), axis=-1)


def _mse(logprobs_BLV, targets_BL):
    probs_BLV = jnp.exp(logprobs_BLV)
    # Σ_v (p_v − y_v)² = Σ_v p_v² − 2 p_target + 1, without materialising the one-hot.
    return jnp.sum(probs_BLV**2, axis=-1) - 2 * _pick(probs_BLV, targets_BL) + 1


def _unlikelihood(logprobs_BLV, inputs_BL, targets_BL, segment_ids_BL):
    B, L = inputs_BL.shape
    if segment_ids_BL is None:
        segment_ids_BL = jnp.ones((B, L), jnp.int32)
    same_BLL = segment_ids_BL[:, :, None] == segment_ids_BL[:, None, :]  # [b, t, s]
    before_LL = jnp.tril(jnp.ones((L, L), bool))  # s <= t
    same_token_BLL = inputs_BL[:, :, None] == inputs_BL[:, None, :]
    # A set, not a multiset: count position s only at its token's first occurrence in its segment.
    earlier_copy_BL = jnp.any(same_token_BLL & same_BLL & jnp.tril(jnp.ones((L, L), bool), -1), axis=-1)
    candidate_BLL = (same_BLL & before_LL & ~earlier_copy_BL[:, None, :]
                     & (inputs_BL[:, None, :] != targets_BL[:, :, None]))
    logp_BLL = jnp.take_along_axis(logprobs_BLV, jnp.broadcast_to(inputs_BL[:, None, :], (B, L, L)), -1)
    # log(1 − p) = log(−expm1(log p)), floored at 1e-5 as in the paper's code, so p → 1 stays finite.
    penalty_BLL = -jnp.log(jnp.maximum(-jnp.expm1(logp_BLL), 1e-5))
    return jnp.sum(jnp.where(candidate_BLL, penalty_BLL, 0.0), axis=-1)


class Scored(NamedTuple):
    """What a term may look at: the logits, their float32 log-softmax, the batch, a teacher's logits."""

    logits_BLV: Array
    logprobs_BLV: Array
    inputs_BL: Array
    targets_BL: Array
    segment_ids_BL: Array | None
    teacher_logits_BLV: Array | None
    temperature: float


TERMS: dict[str, Callable[[Scored], Array]] = {
    "ce": lambda s: -_pick(s.logprobs_BLV, s.targets_BL),
    "label_smoothing": lambda s: _uniform_ce(s.logprobs_BLV),
    "z": lambda s: jax.nn.logsumexp(s.logits_BLV.astype(jnp.float32), axis=-1) ** 2,
    "kl": lambda s: _kl(s.logits_BLV, s.teacher_logits_BLV, s.temperature),
    "mse": lambda s: _mse(s.logprobs_BLV, s.targets_BL),
    "unlikelihood": lambda s: _unlikelihood(s.logprobs_BLV, s.inputs_BL, s.targets_BL, s.segment_ids_BL),
}
# The terms that depend on the logits only through logsumexp, the target logit and the mean logit.
CHUNKED_TERMS = ("ce", "label_smoothing", "z")


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


def score_parts(scored: dict) -> tuple[dict[str, tuple[float, jax.Array]], dict[str, jax.Array]]:
    """{name: (coefficient, logits_BLV, targets_BL, weights_BL)} → (parts, summed metrics): the float32
    cross-entropy sum of each part and the metrics `gptjax.metrics.summarize_parts` reads: every objective
    with named parts (gptjax/objectives/) scores them here."""
    parts, metrics = {}, {}
    for name, (coef, logits_BLV, targets_BL, weights_BL) in scored.items():
        weights_BL = weights_BL.astype(jnp.float32)
        part_sum = cross_entropy(logits_BLV, targets_BL, weights_BL).sum
        parts[name] = (coef, part_sum)
        metrics.update({f"{name}_sum": part_sum, f"{name}_count": jnp.sum(weights_BL),
                        f"{name}_correct": correct_predictions(logits_BLV, targets_BL, weights_BL),
                        f"{name}_weighted": jnp.float32(coef) * part_sum})
    return parts, metrics
