"""The loss library against NumPy and hand-computed values, through the functions training runs: every
term of `TERMS` (cross-entropy with its normalisations and underflow, label smoothing, z-loss, KL, MSE,
unlikelihood) with a gradient check, the parts and metrics schema every objective logs, and chunked
cross-entropy equal to the plain path in values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from gptjax.losses import (
    TERMS,
    LossTerms,
    chunked_lm_loss,
    correct_predictions,
    normalizer,
    score,
    score_parts,
    weighted_sum,
)
from gptjax.metrics import objective_loss, summarize


def np_logsoftmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def numpy_cross_entropy(logits, targets, weights):
    picked = np.take_along_axis(np_logsoftmax(logits), targets[..., None], -1)[..., 0]
    return -(picked * weights).sum(), weights.sum()


def term_sum(name, logits, targets, weights, **context):
    """Σ weight · term, exactly as training sums a term (`causal_lm_loss`, `score_parts`)."""
    return weighted_sum(TERMS[name](score(jnp.asarray(logits), jnp.asarray(targets), **context)),
                        jnp.asarray(weights))


def cross_entropy_terms(logits, targets, weights, normalization="token"):
    weight = normalizer(jnp.asarray(weights), normalization)
    return LossTerms(term_sum("ce", logits, targets, weights), weight)


def random_case(seed=0, B=2, L=6, V=9, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(B, L, V)) * scale).astype(np.float32)
    targets = rng.integers(0, V, (B, L)).astype(np.int32)
    weights = (rng.random((B, L)) < 0.75).astype(np.float32)
    return rng, logits, targets, weights


def test_worked_example_probabilities_0_1_0_3_0_6_target_2():
    terms = cross_entropy_terms(jnp.log(jnp.array([[[0.1, 0.3, 0.6]]])), np.array([[2]]), np.ones((1, 1)))
    assert float(terms.mean()) == pytest.approx(0.5108, abs=1e-4)
    assert float(terms.mean()) == pytest.approx(-np.log(0.6), rel=1e-6)


def test_matches_numpy_on_random_logits_with_padding():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 11)) * 4
    targets = rng.integers(0, 11, (3, 7))
    weights = (rng.random((3, 7)) < 0.7).astype(np.float32)
    weights[2] = 0  # a padded row
    terms = cross_entropy_terms(logits.astype(np.float32), targets, weights)
    ref_sum, ref_weight = numpy_cross_entropy(logits, targets, weights)
    assert float(terms.weight) == ref_weight
    np.testing.assert_allclose(float(terms.sum), ref_sum, rtol=1e-5)
    np.testing.assert_allclose(float(terms.mean()), ref_sum / ref_weight, rtol=1e-5)


@pytest.mark.parametrize("name", list(TERMS))
def test_bfloat16_logits_are_scored_in_float32(name):
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(2, 5, 300)) * 8, jnp.bfloat16)
    targets = rng.integers(0, 300, (2, 5))
    context = {"inputs_BL": jnp.asarray(targets), "teacher_logits_BLV": logits}
    assert term_sum(name, logits, targets, np.ones((2, 5)), **context).dtype == jnp.float32
    if name == "ce":
        ref_sum, _ = numpy_cross_entropy(np.asarray(logits.astype(jnp.float32)), targets, np.ones((2, 5)))
        total = term_sum(name, logits, targets, np.ones((2, 5)))
        np.testing.assert_allclose(float(total), ref_sum, rtol=1e-5)


def test_all_padding_batch_has_weight_zero_and_no_nan():
    logits = jnp.zeros((2, 4, 9))
    targets = jnp.zeros((2, 4), jnp.int32)
    weights = jnp.zeros((2, 4))
    terms = cross_entropy_terms(logits, targets, weights)
    assert float(terms.weight) == 0.0 and float(terms.mean()) == 0.0
    grad = jax.grad(lambda x: cross_entropy_terms(x, targets, weights).mean())(logits)
    assert np.all(np.isfinite(grad)) and np.all(grad == 0)


def test_sums_add_across_shards_exactly_where_means_would_not():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(4, 6, 5)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 5, (4, 6)))
    weights = jnp.asarray(np.array([[1] * 6, [1] * 2 + [0] * 4, [1] * 5 + [0], [0] * 6], np.float32))
    whole = cross_entropy_terms(logits, targets, weights)
    halves = (cross_entropy_terms(logits[:2], targets[:2], weights[:2])
              + cross_entropy_terms(logits[2:], targets[2:], weights[2:]))
    np.testing.assert_allclose(float(halves.mean()), float(whole.mean()), rtol=1e-6)
    assert isinstance(halves, LossTerms)


def test_correct_predictions_counts_weighted_argmax_hits():
    logits = jnp.asarray([[[0.0, 2.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    targets = jnp.asarray([[1, 1, 2]])
    assert float(correct_predictions(logits, targets, jnp.asarray([[1.0, 1.0, 0.0]]))) == 1.0


def test_log_likelihood_does_not_underflow_where_the_product_of_probabilities_does():
    # 1000 tokens each given probability 1e-3 (uniform logits over 1000 classes).
    probs = np.full(1000, 1e-3, np.float32)
    assert np.prod(probs, dtype=np.float32) == 0.0  # the product underflows in float32
    terms = cross_entropy_terms(jnp.zeros((1, 1000, 1000)), np.zeros((1, 1000), np.int32), np.ones((1, 1000)))
    assert float(terms.sum) == pytest.approx(6907.76, abs=0.01)  # −Σ log 1e-3 = 1000 ln 1000
    assert float(jnp.exp(terms.mean())) == pytest.approx(1000.0, rel=1e-5)  # the perplexity


def test_normalizations_token_sequence_sum():
    _, logits, targets, weights = random_case(6, B=4)
    weights[3] = 0  # an all-padding row is not a sequence
    ref_sum, ref_tokens = numpy_cross_entropy(logits, targets, weights)
    for normalization, ref_weight in (("token", ref_tokens), ("sequence", 3.0), ("sum", 1.0)):
        terms = cross_entropy_terms(logits, targets, weights, normalization)
        np.testing.assert_allclose(float(terms.sum), ref_sum, rtol=1e-5)
        assert float(terms.weight) == ref_weight
    # `sum` split over micro-batches of a 4-row batch: the weights add up to 1, the mean to the total sum.
    halves = [normalizer(jnp.asarray(weights[i:i + 2]), "sum", batch_rows=4) for i in (0, 2)]
    assert float(halves[0] + halves[1]) == 1.0
    with pytest.raises(ValueError, match="known: token, sequence, sum"):
        normalizer(jnp.ones((1, 1)), "bogus")


def test_label_smoothing_term_weighted_eps_is_label_smoothing():
    _, logits, targets, weights = random_case(7)
    eps, V = 0.1, logits.shape[-1]
    smoothed = (1 - eps) * np.eye(V)[targets] + eps / V
    ref = -((smoothed * np_logsoftmax(logits)).sum(-1) * weights).sum()
    combined = ((1 - eps) * term_sum("ce", logits, targets, weights)
                + eps * term_sum("label_smoothing", logits, targets, weights))
    np.testing.assert_allclose(float(combined), ref, rtol=1e-5)
    np.testing.assert_allclose(float(term_sum("label_smoothing", logits, targets, weights)),
                               -(np_logsoftmax(logits).mean(-1) * weights).sum(), rtol=1e-5)


def test_z_loss_matches_numpy():
    _, logits, targets, weights = random_case(8)
    lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    np.testing.assert_allclose(float(term_sum("z", logits, targets, weights)), (lse**2 * weights).sum(),
                               rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_divergence_matches_numpy_and_is_zero_against_itself(temperature):
    rng, logits, targets, weights = random_case(9)
    teacher = (rng.normal(size=logits.shape) * 2).astype(np.float32)
    s, t = np_logsoftmax(logits / temperature), np_logsoftmax(teacher / temperature)
    ref = temperature**2 * ((np.exp(t) * (t - s)).sum(-1) * weights).sum()

    def kl(student, teacher, temperature=temperature):
        return term_sum("kl", student, targets, weights, teacher_logits_BLV=teacher, temperature=temperature)

    np.testing.assert_allclose(float(kl(logits, jnp.asarray(teacher))), ref, rtol=1e-5)
    assert abs(float(kl(logits, jnp.asarray(logits), 1.0))) < 1e-4
    # The teacher is a target: no gradient flows into it.
    grad = jax.grad(lambda tl: kl(logits, tl))(jnp.asarray(teacher))
    assert np.all(np.asarray(grad) == 0)


def test_mse_on_probabilities_matches_numpy():
    _, logits, targets, weights = random_case(10)
    probs = np.exp(np_logsoftmax(logits))
    ref = (((probs - np.eye(logits.shape[-1])[targets]) ** 2).sum(-1) * weights).sum()
    np.testing.assert_allclose(float(term_sum("mse", logits, targets, weights)), ref, rtol=1e-5)


def numpy_unlikelihood(logits, inputs, targets, weights, segments):
    probs = np.exp(np_logsoftmax(logits))
    total = 0.0
    for b in range(inputs.shape[0]):
        for t in range(inputs.shape[1]):
            seen = {int(inputs[b, s]) for s in range(t + 1) if segments[b, s] == segments[b, t]}
            seen.discard(int(targets[b, t]))
            total += weights[b, t] * sum(-np.log(max(1 - probs[b, t, c], 1e-5)) for c in seen)
    return total


def test_unlikelihood_penalises_each_distinct_earlier_token_of_the_same_document_once():
    rng, logits, targets, weights = random_case(11, L=8, V=5)
    inputs = rng.integers(0, 5, targets.shape).astype(np.int32)  # V = 5 over 8 positions: repeats
    segments = np.array([[1, 1, 1, 2, 2, 2, 2, 2], [1] * 8], np.int32)
    total = term_sum("unlikelihood", logits, targets, weights, inputs_BL=jnp.asarray(inputs),
                     segment_ids_BL=jnp.asarray(segments))
    np.testing.assert_allclose(float(total), numpy_unlikelihood(logits, inputs, targets, weights, segments),
                               rtol=1e-5)
    # A hand case: context tokens [3, 3, 1], target 1 → only token 3 is a negative candidate, once.
    logits1 = jnp.log(jnp.array([[[0.1, 0.2, 0.1, 0.5, 0.1]] * 3]))
    total1 = term_sum("unlikelihood", logits1, jnp.array([[0, 0, 1]]), jnp.array([[0.0, 0.0, 1.0]]),
                      inputs_BL=jnp.array([[3, 3, 1]]))
    assert float(total1) == pytest.approx(-np.log(0.5), rel=1e-5)


@pytest.mark.parametrize("name", list(TERMS))
def test_gradients_of_every_term_pass_check_grads(name):
    rng, logits, targets, weights = random_case(12, B=1, L=4, V=5, scale=1.0)
    context = {"inputs_BL": jnp.asarray(rng.integers(0, 5, targets.shape), jnp.int32),
               "teacher_logits_BLV": jnp.asarray(rng.normal(size=logits.shape), jnp.float32),
               "temperature": 1.5}
    check_grads(lambda x: term_sum(name, x, targets, weights, **context), (jnp.asarray(logits),), order=2,
                modes=("rev",), eps=1e-2, atol=2e-2, rtol=2e-2)


def test_parts_and_the_log_record_by_hand():
    """Two parts with their own counts (as mlm_nsp): the record's loss is Σ coefficient · mean, each part
    is logged under its name, `<part>_accuracy` for the part that is not the language model's, and
    perplexity / accuracy / tokens of the `lm` part, whose duplicates are not logged."""
    a = jnp.log(jnp.array([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]]))  # targets 0, 1, 1: one hit of two real
    b = jnp.log(jnp.array([[[0.25, 0.75]], [[0.6, 0.4]]]))  # targets 1, 1: one hit
    parts, sums = score_parts({"tok": (1.0, a, jnp.array([[0, 1, 1]]), jnp.array([[1.0, 0.0, 1.0]])),
                               "row": (0.5, b, jnp.array([[1], [1]]), jnp.ones((2, 1)))}, lm="tok")
    tok = -np.log(0.5) - np.log(0.8)
    row = -np.log(0.75) - np.log(0.4)
    assert float(parts["tok"][1]) == pytest.approx(tok, rel=1e-6) and parts["row"][0] == 0.5
    record = summarize({k: float(v) for k, v in sums.items()}, lm="tok")
    assert record == pytest.approx({"loss": tok / 2 + 0.5 * row / 2, "tok": tok / 2, "row": row / 2,
                                    "row_accuracy": 0.5, "perplexity": np.exp(tok / 2), "accuracy": 1.0,
                                    "tokens": 2.0}, rel=1e-6)
    assert float(objective_loss(sums)) == pytest.approx(record["loss"], rel=1e-6)  # on device arrays too


def plain_lm_loss(x_ND, w_VD, targets_N, weights_N, coefs):
    logits = (x_ND @ w_VD.T)[None]
    t, m = targets_N[None], weights_N[None]
    names = ("ce", "label_smoothing", "z")
    return sum(c * term_sum(name, logits, t, m) for name, c in zip(names, coefs, strict=True))


@pytest.mark.parametrize("coefs, chunk", [((1.0, 0.0, 0.0), 16), ((0.9, 0.1, 1e-4), 7), ((0.0, 0.0, 1.0), 64),
                                          ((1.0, 0.0, 0.0), 500)])
def test_chunked_cross_entropy_equals_plain_path_in_value_and_gradients(coefs, chunk):
    rng = np.random.default_rng(13)
    N, D, V = 100, 16, 301  # N not a multiple of most chunk sizes: the last chunk is padded
    x = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(V, D)) * 0.5, jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, N), jnp.int32)
    weights = jnp.asarray((rng.random(N) < 0.8).astype(np.float32))
    plain, plain_grads = jax.value_and_grad(plain_lm_loss, (0, 1))(x, w, targets, weights, coefs)
    chunked_fn = jax.jit(lambda x, w: chunked_lm_loss(x, w, targets, weights, coefs, chunk)[0])
    chunked, chunked_grads = jax.value_and_grad(chunked_fn, (0, 1))(x, w)
    np.testing.assert_allclose(float(chunked), float(plain), rtol=1e-5)
    for a, b in zip(plain_grads, chunked_grads, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))
    # The statistics it logs are the separate terms, and the forward alone gives the same value.
    total, stats = jax.jit(lambda x, w: chunked_lm_loss(x, w, targets, weights, coefs, chunk))(x, w)
    logits = (x @ w.T)[None]
    np.testing.assert_allclose(float(total), float(plain), rtol=1e-5)
    ce = term_sum("ce", logits, targets[None], weights[None])
    np.testing.assert_allclose(float(stats.ce), float(ce), rtol=1e-5)
    np.testing.assert_allclose(float(stats.correct),
                               float(correct_predictions(logits, targets[None], weights[None])))


def test_chunked_cross_entropy_never_holds_the_whole_logits():
    N, D, V, chunk = 2048, 32, 4096, 128
    args = (jax.ShapeDtypeStruct((N, D), jnp.float32), jax.ShapeDtypeStruct((V, D), jnp.float32),
            jax.ShapeDtypeStruct((N,), jnp.int32), jax.ShapeDtypeStruct((N,), jnp.float32))
    chunked = jax.jit(jax.grad(lambda x, w, t, m: chunked_lm_loss(x, w, t, m, (1.0, 0, 0), chunk)[0], (0, 1)))
    plain = jax.jit(jax.grad(lambda x, w, t, m: plain_lm_loss(x, w, t, m, (1.0, 0, 0)), (0, 1)))
    temp = {name: fn.lower(*args).compile().memory_analysis().temp_size_in_bytes
            for name, fn in (("chunked", chunked), ("plain", plain))}
    logits_bytes = N * V * 4
    assert temp["plain"] >= logits_bytes
    assert temp["chunked"] < logits_bytes / 4, temp
