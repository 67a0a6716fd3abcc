"""The GPT: published parameter counts without allocation, GPT-2 initialisation, causality, masks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gptjax.config import ModelConfig
from gptjax.layers import einsum_attention, xla_attention
from gptjax.models import abstract_params, build_model, count_params, split_params

GPT2_SMALL = ModelConfig(n_layer=12, n_head=12, n_embd=768, context=1024, vocab_size=50257)
TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, context=16, vocab_size=40)


def test_gpt2_small_has_124_439_808_parameters_without_allocating():
    _, params = abstract_params(GPT2_SMALL)
    leaves = jax.tree_util.tree_leaves(params)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert count_params(params) == 124_439_808


def test_untied_head_adds_vocab_by_width():
    _, tied = abstract_params(TINY)
    _, untied = abstract_params(dataclasses.replace(TINY, tie_embeddings=False))
    assert count_params(untied) - count_params(tied) == 40 * 32


def test_gpt2_initialisation():
    cfg = dataclasses.replace(TINY, n_layer=4, n_embd=256, n_head=4)
    _, params = split_params(build_model(cfg, seed=0))
    block = params["blocks"][0]
    assert np.std(block["attn"]["c_attn"]["kernel"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(block["mlp"]["c_fc"]["kernel"]) == pytest.approx(0.02, rel=0.05)
    residual_std = 0.02 / np.sqrt(2 * cfg.n_layer)
    assert np.std(block["attn"]["c_proj"]["kernel"]) == pytest.approx(residual_std, rel=0.05)
    assert np.std(block["mlp"]["c_proj"]["kernel"]) == pytest.approx(residual_std, rel=0.05)
    assert np.all(block["attn"]["c_attn"]["bias"] == 0) and np.all(block["ln_1"]["scale"] == 1)


def _logits(model, tokens, segments=None):
    graphdef, params = split_params(model)
    return np.asarray(_apply(graphdef, params, jnp.asarray(tokens),
                             None if segments is None else jnp.asarray(segments)))


@jax.jit(static_argnums=0)
def _apply(graphdef, params, tokens, segments):
    return nnx.merge(graphdef, params)(tokens, segment_ids_BL=segments)


@pytest.mark.parametrize("attention", ["xla", "einsum"])
def test_a_later_token_never_changes_an_earlier_position(attention):
    model = build_model(dataclasses.replace(TINY, attention=attention), seed=0)
    tokens = np.random.default_rng(0).integers(0, 40, (2, 16))
    base = _logits(model, tokens)
    for j in (1, 7, 15):
        changed = tokens.copy()
        changed[:, j] = (changed[:, j] + 1) % 40
        out = _logits(model, changed)
        np.testing.assert_array_equal(out[:, :j], base[:, :j])
        assert not np.allclose(out[:, j:], base[:, j:])


def test_causality_by_gradient():
    """d(loss at position i)/d(embedding at position j) is zero for every j > i."""
    model = build_model(TINY, seed=0)
    graphdef, params = split_params(model)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 40, (1, 16)))

    def position_loss(x_BLD, i):
        m = nnx.merge(graphdef, params)
        positions = jnp.arange(16)[None]
        h = x_BLD + m.wpe(positions)
        for block in m.blocks:
            h, _ = block(h, None)
        return jnp.sum(m.logits(m.ln_f(h))[0, i] ** 2)

    x = nnx.merge(graphdef, params).wte(tokens)
    grad_fn = jax.jit(jax.grad(position_loss), static_argnums=1)
    for i in (0, 5, 14):
        grad = grad_fn(x, i)[0]
        norms = np.linalg.norm(np.asarray(grad), axis=-1)
        assert np.all(norms[i + 1:] == 0) and np.all(norms[: i + 1] > 0)


def test_packed_documents_do_not_see_each_other():
    model = build_model(TINY, seed=0)
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 40, (1, 16))
    segments = np.array([[1] * 6 + [2] * 10])
    base = _logits(model, tokens, segments)
    # Rewriting the first document leaves every logit of the second unchanged.
    changed = tokens.copy()
    changed[:, :6] = (tokens[:, :6] + 1 + rng.integers(0, 39, (1, 6))) % 40
    np.testing.assert_allclose(_logits(model, changed, segments)[:, 6:], base[:, 6:], atol=1e-6)
    assert not np.allclose(_logits(model, changed, segments)[:, :6], base[:, :6])


def test_padding_keys_are_never_attended():
    model = build_model(TINY, seed=0)
    tokens = np.random.default_rng(3).integers(0, 40, (1, 16))
    segments = np.array([[1] * 12 + [0] * 4])
    base = _logits(model, tokens, segments)
    changed = tokens.copy()
    changed[:, 12:] = 0
    np.testing.assert_allclose(_logits(model, changed, segments)[:, :12], base[:, :12], atol=1e-6)


def test_xla_attention_equals_einsum_reference():
    rng = np.random.default_rng(4)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 12, 3, 8)), jnp.float32) for _ in range(3))
    mask = jnp.asarray(rng.random((2, 1, 12, 12)) < 0.7) | jnp.eye(12, dtype=bool)
    np.testing.assert_allclose(xla_attention(q, k, v, None, True), einsum_attention(q, k, v, None, True),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xla_attention(q, k, v, mask, False), einsum_attention(q, k, v, mask, False),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["gelu", "relu", "tanh", "sigmoid", "swiglu"])
def test_every_activation_builds_and_runs(activation):
    model = build_model(dataclasses.replace(TINY, activation=activation), seed=0)
    out = _logits(model, np.zeros((1, 4), np.int32))
    assert out.shape == (1, 4, 40) and np.all(np.isfinite(out))


def test_bfloat16_activations_keep_float32_parameters():
    model = build_model(dataclasses.replace(TINY, dtype="bfloat16"), seed=0)
    _, params = split_params(model)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
    graphdef, params = split_params(model)
    assert _apply(graphdef, params, jnp.zeros((1, 4), jnp.int32), None).dtype == jnp.bfloat16


def _stack_blocks(params):
    blocks = [params["blocks"][i] for i in sorted(params["blocks"])]
    rest = {k: v for k, v in params.items() if k != "blocks"}
    return {**rest, "layers": jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *blocks)}


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scanned_layers_equal_unrolled_layers(remat):
    """Same seed, same parameters (stacked), same logits and gradients; the decay mask ignores the stack."""
    from gptjax.optimizers import MASKS

    decay_mask = MASKS["ndim>=2"]

    cfg = dataclasses.replace(TINY, n_layer=3)
    scanned_cfg = dataclasses.replace(cfg, scan_layers=True, remat=remat)
    graphdef, params = split_params(build_model(cfg, seed=5))
    scanned_graphdef, scanned = split_params(build_model(scanned_cfg, seed=5))
    stacked = _stack_blocks(params)
    for a, b in zip(jax.tree_util.tree_leaves(stacked), jax.tree_util.tree_leaves(scanned), strict=True):
        np.testing.assert_array_equal(a, b)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, 16)))
    segments = jnp.asarray(np.array([[1] * 9 + [2] * 7] * 2))

    def loss(g, p):
        return jnp.mean(nnx.merge(g, p)(tokens, segment_ids_BL=segments) ** 2)

    value, grads = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)(graphdef, params)
    grad_fn = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)
    value_s, grads_s = grad_fn(scanned_graphdef, scanned)
    np.testing.assert_allclose(value_s, value, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(_stack_blocks(grads)), jax.tree_util.tree_leaves(grads_s),
                    strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    assert jax.tree_util.tree_leaves(decay_mask(stacked)) == jax.tree_util.tree_leaves(decay_mask(scanned))
    assert decay_mask(scanned)["layers"]["ln_1"]["scale"] is False
    assert decay_mask(scanned)["layers"]["attn"]["c_attn"]["kernel"] is True


def test_scanned_layers_generate_like_unrolled_ones():
    from gptjax.generate import generate

    cfg = dataclasses.replace(TINY, n_layer=3, context=32)
    graphdef, params = split_params(build_model(cfg, seed=1))
    scanned_graphdef, scanned = split_params(build_model(dataclasses.replace(cfg, scan_layers=True), seed=1))
    prompt = jnp.asarray([[3, 1, 4, 1, 5]])
    outs = [np.asarray(generate(p, prompt, jax.random.key(0), graphdef=g, max_new_tokens=10, temperature=0.0,
                                top_k=0, top_p=1.0, eot_id=39, use_cache=cache)[0])
            for g, p in ((graphdef, params), (scanned_graphdef, scanned)) for cache in (True, False)]
    for out in outs[1:]:
        np.testing.assert_array_equal(out, outs[0])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_flat_dot_general_equals_the_product_and_its_gradients(dtype):
    """The dense layers' 2-D product: same value and same x/kernel gradients as the plain 3-D product."""
    from gptjax.layers import flat_dot_general

    dims = (((2,), (0,)), ((), ()))
    kx, kw, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (3, 5, 8), dtype)
    w = jax.random.normal(kw, (8, 6), dtype)
    cot = jax.random.normal(kc, (3, 5, 6), jnp.float32)

    def loss(product, x, w):
        return jnp.sum(product(x, w, dims).astype(jnp.float32) * cot)

    ours = jax.value_and_grad(lambda x, w: loss(flat_dot_general, x, w), argnums=(0, 1))(x, w)
    plain = jax.value_and_grad(lambda x, w: loss(jax.lax.dot_general, x, w), argnums=(0, 1))(x, w)
    x64, w64, cot64 = (np.asarray(a, np.float64) for a in (x, w, cot))
    # NumPy float64 reference: y = x·w, dL/dx = cot·wᵀ, dL/dw = Σ_{b,l} x[b,l]ᵀ cot[b,l].
    reference = (np.sum((x64 @ w64) * cot64), (cot64 @ w64.T, np.einsum("bld,blf->df", x64, cot64)))
    tol = 1e-5 if dtype == jnp.float32 else 5e-2
    leaves = (jax.tree.leaves(ours), jax.tree.leaves(plain), jax.tree.leaves(reference))
    for got, want, ref in zip(*leaves, strict=True):
        assert got.dtype == want.dtype
        got64 = np.asarray(got, np.float64)
        np.testing.assert_allclose(got64, np.asarray(want, np.float64), rtol=tol, atol=tol)
        np.testing.assert_allclose(got64, ref, rtol=tol, atol=tol * 10)
    with pytest.raises(ValueError, match="x\\[..., D\\] @ kernel\\[D, F\\] only"):
        flat_dot_general(x, w, (((1,), (0,)), ((), ())))
