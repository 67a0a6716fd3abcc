"""BERT and T5: published sizes without allocating, masks by gradient, T5's position buckets by hand."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.config import ModelConfig
from gptjax.layers import attention_mask, relative_position_buckets
from gptjax.models import abstract_params, build_model, count_params

BERT_BASE = ModelConfig(family="bert", n_layer=12, n_head=12, n_embd=768, context=512, vocab_size=30522,
                        activation="gelu_exact", layer_norm_eps=1e-12)
T5_SMALL = ModelConfig(family="t5", n_layer=6, n_head=8, n_embd=512, context=512, vocab_size=32128,
                       activation="relu", layer_norm_eps=1e-6, bias=False)
TINY_BERT = dataclasses.replace(BERT_BASE, n_layer=2, n_head=2, n_embd=16, context=12, vocab_size=40)
TINY_T5 = dataclasses.replace(T5_SMALL, n_layer=2, n_head=2, n_embd=16, vocab_size=40, relative_buckets=8,
                              relative_max_distance=16)


def test_bert_base_and_t5_small_have_their_published_sizes_without_allocating():
    # BERT-base with both pre-training heads: 110,106,428 (Hugging Face BertForPreTraining counts the same);
    # T5-small with its tied head: 60,506,624 (the "60M" of Raffel et al. 2020, Table 14).
    assert count_params(abstract_params(BERT_BASE)[1]) == 110_106_428
    assert count_params(abstract_params(T5_SMALL)[1]) == 60_506_624
    # By hand: embeddings V·D + P·D + 2·D + LN, 12 layers of 4D² + 4D + 2·(4D·D) + 4D + D + 4 LN·D, heads.
    V, P, D, F = 30522, 512, 768, 3072
    layer = (3 * D * D + 3 * D) + (D * D + D) + (D * F + F) + (F * D + D) + 4 * D
    heads = (D * D + D) + 2 * D + V + (D * D + D) + (2 * D + 2)
    assert count_params(abstract_params(BERT_BASE)[1]) == V * D + P * D + 2 * D + 2 * D + 12 * layer + heads


def test_bert_attention_is_bidirectional_but_never_reads_padding():
    model = build_model(TINY_BERT, seed=0)
    tokens = jnp.array([[5, 6, 7, 8, 9, 10]])
    segments = jnp.array([[1, 1, 1, 1, 0, 0]])

    def hidden(embeddings):
        # Bert.hidden from the token embeddings on, so gradients can be taken with respect to them.
        positions = jnp.arange(tokens.shape[1])[None]
        mask = attention_mask(segments, segments, positions, positions, causal=False)
        h = model.ln_e(embeddings + model.wpe(positions) + model.wtt(jnp.zeros_like(tokens)))
        for block in model.blocks:
            h, _ = block(h, mask)
        return h

    embeddings = model.wte(tokens)
    probe = jnp.linspace(-1.0, 1.0, 16)  # a LayerNorm output sums to zero, so weigh its entries
    grads = jax.grad(lambda e: jnp.sum(hidden(e)[0, 1] * probe))(embeddings)
    touched = np.abs(np.asarray(grads[0])).sum(-1) > 0
    # Position 1 reads every real position, before and after it, and no padding.
    assert touched.tolist() == [True, True, True, True, False, False]
    # And the public path agrees with this hand-wired one.
    np.testing.assert_allclose(np.asarray(model.hidden(tokens, segment_ids_BL=segments)),
                               np.asarray(hidden(embeddings)), rtol=1e-5, atol=1e-6)


def test_bert_padding_does_not_change_real_positions():
    model = build_model(TINY_BERT, seed=1)
    short = model.hidden(jnp.array([[5, 6, 7]]), segment_ids_BL=jnp.ones((1, 3), jnp.int32))
    padded = model.hidden(jnp.array([[5, 6, 7, 0, 0]]), segment_ids_BL=jnp.array([[1, 1, 1, 0, 0]]))
    np.testing.assert_allclose(np.asarray(padded[:, :3]), np.asarray(short), atol=1e-5)
    mlm, nsp = model(jnp.array([[5, 6, 7]]), segment_ids_BL=jnp.ones((1, 3), jnp.int32))
    assert mlm.shape == (1, 3, 40) and nsp.shape == (1, 2)


def _buckets_by_hand(relative: int, bidirectional: bool, n_buckets: int, max_distance: int) -> int:
    """Raffel et al. 2020 §2.1 / Mesh TensorFlow's bucketing, written out with Python numbers."""
    bucket = 0
    n = -relative
    if bidirectional:
        n_buckets //= 2
        bucket += n_buckets if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    exact = n_buckets // 2
    if n < exact:
        return bucket + n
    large = exact + int(math.log(n / exact) / math.log(max_distance / exact) * (n_buckets - exact))
    return bucket + min(large, n_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_buckets_match_a_hand_computation(bidirectional):
    offsets = np.arange(-300, 301)
    got = np.asarray(relative_position_buckets(jnp.asarray(offsets), bidirectional=bidirectional,
                                               n_buckets=32, max_distance=128))
    want = [_buckets_by_hand(int(o), bidirectional, 32, 128) for o in offsets]
    np.testing.assert_array_equal(got, want)
    # Spot values: the exact region, the log region and the far bucket.
    if bidirectional:
        assert got[300 + 3] == 16 + 3 and got[300 - 3] == 3 and got[300 + 300] == 31
    else:
        assert got[300 - 3] == 3 and got[300 + 5] == 0 and got[0] == 31


def test_t5_decoder_is_causal_and_reads_only_real_encoder_positions():
    model = build_model(TINY_T5, seed=0)
    enc_tokens = jnp.array([[3, 4, 5, 6, 0]])
    enc_segments = jnp.array([[1, 1, 1, 1, 0]])
    dec_tokens = jnp.array([[0, 7, 8, 9]])
    dec_segments = jnp.ones((1, 4), jnp.int32)

    def decoder_out(dec_emb, enc_emb, position):
        # The encoder from embeddings: the public encode() with its embedding lookup replaced.
        positions = jnp.arange(5)
        pos_b = positions[None]
        mask = attention_mask(enc_segments, enc_segments, pos_b, pos_b, causal=False)
        x = enc_emb
        for block in model.encoder:
            x = block(x, mask, model.enc_bias(positions, positions), deterministic=True, rngs=None)
        enc = model.enc_ln_f(x)
        dec_pos = jnp.arange(4)
        dmask = attention_mask(dec_segments, dec_segments, dec_pos[None], dec_pos[None], causal=True)
        cmask = attention_mask(None, enc_segments, dec_pos[None], pos_b, causal=False)
        y = dec_emb
        for block in model.decoder:
            y = block(y, dmask, model.dec_bias(dec_pos, dec_pos), enc_BLD=enc, cross_mask_B1TL=cmask,
                      deterministic=True, rngs=None)
        return jnp.sum(model.logits(model.dec_ln_f(y))[0, position])

    dec_emb, enc_emb = model.wte(dec_tokens), model.wte(enc_tokens)
    g_dec, g_enc = jax.grad(decoder_out, argnums=(0, 1))(dec_emb, enc_emb, 1)
    assert (np.abs(np.asarray(g_dec[0])).sum(-1) > 0).tolist() == [True, True, False, False]
    assert (np.abs(np.asarray(g_enc[0])).sum(-1) > 0).tolist() == [True, True, True, True, False]
    logits = model(enc_tokens, dec_tokens, enc_segment_ids_BL=enc_segments, dec_segment_ids_BT=dec_segments)
    np.testing.assert_allclose(float(logits[0, 1].sum()), float(decoder_out(dec_emb, enc_emb, 1)), rtol=1e-5)


def test_t5_tied_head_scales_by_inverse_sqrt_width():
    model = build_model(TINY_T5, seed=0)
    x = jax.random.normal(jax.random.key(0), (1, 2, 16))
    want = np.asarray(x) / 4.0 @ np.asarray(model.wte.embedding[...]).T
    np.testing.assert_allclose(np.asarray(model.logits(x)), want, rtol=1e-5, atol=1e-6)
