"""The BERT / RoBERTa / T5 / GPT-1 objectives: batch statistics against the papers' rates, exact
reconstruction of the original text from every batch, determinism in (seed, step), and losses against
NumPy computed from the models' own logits."""

import math

import jax
import numpy as np
import pytest
from flax import nnx

from gptjax.config import ConfigError, DataConfig, Experiment, ModelConfig, ObjectiveConfig
from gptjax.data import spans
from gptjax.data.classify import ClassifyData
from gptjax.data.masked import (
    MaskedData,
    make_mask_spec,
    mask_sequence,
    split_sentences,
    truncate_pair,
)
from gptjax.data.packing import pack_documents
from gptjax.data.sources import Documents, load_documents, load_examples
from gptjax.data.spans import SpanData, corrupted_lengths, noise_mask, raw_length
from gptjax.data.tokenizers import BpeTokenizer
from gptjax.losses import score_parts
from gptjax.models import abstract_params, build_model, split_params
from gptjax.objectives import OBJECTIVES, gpt1_finetune, mlm, span_corruption

PAD, EOT, CLS, SEP, MASK = 0, 1, 2, 3, 4
SENTINELS = np.arange(5, 105)


@pytest.fixture(scope="module")
def corpus():
    return load_documents(DataConfig(source="pydoc"))


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return BpeTokenizer.train(corpus.train, 512)


def experiment(name: str, seq_len: int = 32, batch_size: int = 8, **objective) -> Experiment:
    return Experiment(model=ModelConfig(context=max(seq_len, 32)),
                      data=DataConfig(tokenizer="bpe", seq_len=seq_len, batch_size=batch_size),
                      objective=ObjectiveConfig(name=name, **objective))


def small(corpus: Documents, n_train: int = 12) -> Documents:
    return Documents(corpus.train[:n_train], corpus.val[:4])


def original(batch) -> np.ndarray:
    """The unmasked rows: targets at chosen positions, inputs elsewhere."""
    return np.where(batch.weights > 0, batch.targets, batch.inputs)


def find(haystack: np.ndarray, needle: np.ndarray) -> list[int]:
    """Offsets at which `needle` occurs in `haystack` (token arrays)."""
    if len(needle) > len(haystack):
        return []
    windows = np.lib.stride_tricks.sliding_window_view(haystack, len(needle))
    return np.flatnonzero((windows == needle).all(axis=1)).tolist()


# --- masking (Devlin et al. 2019, §3.1): 15% of non-special tokens; 80% [MASK], 10% random, 10% kept


def test_masking_rates_and_special_tokens():
    V = 600  # ids 0..104 special, as the BPE tokenizer's; 495 ordinary ids
    spec = make_mask_spec(ObjectiveConfig(), V, np.arange(105), MASK)
    data_rng = np.random.default_rng(0)
    n_candidates = n_chosen = n_mask = n_random = n_kept = 0
    for r in range(2000):
        tokens = data_rng.integers(0, V, size=int(data_rng.integers(20, 160))).astype(np.int32)
        tokens[0] = CLS
        inputs, chosen = mask_sequence(tokens, spec, np.random.default_rng([1, r]))
        special = tokens < 105
        assert not (chosen & special).any(), "a special token was chosen"
        assert (inputs[~chosen] == tokens[~chosen]).all(), "an unchosen token changed"
        changed = chosen & (inputs != tokens) & (inputs != MASK)
        assert (inputs[changed] >= 105).all(), "a random replacement is a special token"
        n_candidates += (~special).sum()
        n_chosen += chosen.sum()
        n_mask += (inputs[chosen] == MASK).sum()
        n_random += changed.sum()
        n_kept += (chosen & (inputs == tokens)).sum()
    # ~230k candidates, ~35k chosen: 1% is ≥ 4.5 binomial standard deviations of the 80/10/10 shares,
    # and the chosen count per row is floor(n·0.15 + u), within one of n·0.15.
    assert abs(n_chosen / n_candidates - 0.15) < 0.005
    assert abs(n_mask / n_chosen - 0.8) < 0.01
    # a random replacement hits the original token with probability 1/495: counted as kept
    assert abs(n_random / n_chosen - 0.1 * (1 - 1 / 495)) < 0.01
    assert abs(n_kept / n_chosen - (0.1 + 0.1 / 495)) < 0.01


def test_mask_draws_are_deterministic_and_respect_the_rates_config():
    spec = make_mask_spec(ObjectiveConfig(mask_rate=0.5, mask_token_rate=1.0, random_token_rate=0.0),
                          305, np.arange(105), MASK)
    tokens = np.arange(105, 305, dtype=np.int32)
    a = mask_sequence(tokens, spec, np.random.default_rng([3, 4]))
    b = mask_sequence(tokens, spec, np.random.default_rng([3, 4]))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1].sum() == 100 and (a[0][a[1]] == MASK).all()  # 200 · 0.5 exactly: no rounding draw


def test_sentence_splitter_by_hand_and_lossless(corpus):
    text = 'Hello world. How are "you?"  Fine!\n\nNew para, e.g. this\n  \n\nend'
    assert split_sentences(text) == ["Hello world.", ' How are "you?"', "  Fine!", "\n\nNew para, e.g.",
                                     " this", "\n  \n\nend"]
    assert split_sentences("  \n ") == []
    for doc in corpus.train[:20]:
        pieces = split_sentences(doc)
        assert "".join(pieces) == doc and all(p.strip() for p in pieces)


def test_truncate_pair_cuts_the_longer_side_and_keeps_the_boundary():
    a, b = np.arange(10), np.arange(100, 103)
    ta, tb = truncate_pair(a, b, 8)  # 13 → 8: the five cuts all fall on A (10 > 3), at its front
    np.testing.assert_array_equal(ta, np.arange(5, 10))
    np.testing.assert_array_equal(tb, b)
    ta, tb = truncate_pair(np.arange(6), np.arange(100, 106), 9)  # equal: B first, then alternate
    np.testing.assert_array_equal(ta, np.arange(1, 6))
    np.testing.assert_array_equal(tb, np.arange(100, 104))


# --- RoBERTa rows (mlm): dynamic versus static masking


def test_mlm_rows_are_the_stream_and_determinism(corpus, tokenizer):
    docs = small(corpus)
    cfg = experiment("mlm")
    data = MaskedData(cfg, 0, tokenizer, docs)
    stream = np.concatenate([np.append(tokenizer.encode(d), SEP) for d in docs.train])
    n = len(stream) // 31
    assert len(data.train) == n
    batch = data.train_batch(5)
    for b, g in enumerate(range(5 * 8, 6 * 8)):
        i = np.random.default_rng([0, g // n]).permutation(n)[g % n]
        expected = np.concatenate([[CLS], stream[i * 31:(i + 1) * 31]])
        np.testing.assert_array_equal(original(batch)[b], expected)
    assert (batch.segment_ids == 1).all() and (batch.type_ids == 0).all() and (batch.nsp_weights == 0).all()
    assert not ((batch.weights > 0) & (original(batch) == CLS)).any()
    again = MaskedData(cfg, 0, tokenizer, docs).train_batch(5)
    for x, y in zip(batch, again, strict=True):
        np.testing.assert_array_equal(x, y)
    other_seed = MaskedData(cfg, 1, tokenizer, docs).train_batch(5)
    assert not np.array_equal(other_seed.inputs, batch.inputs)


@pytest.mark.parametrize("static", [False, True])
def test_dynamic_masks_change_between_epochs_static_ones_repeat(corpus, tokenizer, static):
    data = MaskedData(experiment("mlm", static_masking=static), 0, tokenizer, small(corpus))
    n, B = len(data.train), data.batch_size
    differ = 0
    for i in range(8):  # sequence i, visited once in epoch 0 and once in epoch 1
        rows = []
        for epoch in (0, 1):
            g = epoch * n + int(np.flatnonzero(np.random.default_rng([0, epoch]).permutation(n) == i)[0])
            batch = data.train_batch(g // B)
            np.testing.assert_array_equal(original(batch)[g % B],
                                          np.concatenate([[CLS], data.train.tokens[i * 31:(i + 1) * 31]]))
            rows.append(batch.inputs[g % B])
        differ += not np.array_equal(rows[0], rows[1])
    assert differ == (0 if static else 8)


def test_mlm_validation_is_fixed_and_padded(corpus, tokenizer):
    docs = small(corpus)
    a = MaskedData(experiment("mlm"), 0, tokenizer, docs)
    b = MaskedData(experiment("mlm"), 7, tokenizer, docs)
    n_val = len(a.val)
    rows = -(-n_val // 8) + 1
    va, vb = a.val_batches(rows), b.val_batches(rows)
    for x, y in zip(va, vb, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)
    inputs = np.concatenate([v.inputs for v in va])
    segments = np.concatenate([v.segment_ids for v in va])
    weights = np.concatenate([v.weights for v in va])
    assert (segments[n_val:] == 0).all() and (weights[n_val:] == 0).all()  # padding rows
    real = np.concatenate([original(v) for v in va])[segments > 0]
    stream = np.concatenate([np.append(tokenizer.encode(d), SEP) for d in docs.val])
    assert len(real) == len(stream) + n_val  # every token once, plus one [CLS] a row
    np.testing.assert_array_equal(real[real != CLS], stream)
    assert not (weights * (inputs == PAD)).any()


# --- BERT rows (mlm_nsp): [CLS] A [SEP] B [SEP] with a balanced next-sentence label


def test_nsp_pairs_are_balanced_and_label_zero_is_the_real_continuation(corpus, tokenizer):
    data = MaskedData(experiment("mlm_nsp", seq_len=48, batch_size=50), 0, tokenizer, small(corpus, 30))
    labels, continued, random_elsewhere = [], 0, 0
    for step in range(16):  # 800 pairs
        batch = data.train_batch(step)
        rows = original(batch)
        for b, i in enumerate(data.sequences(step)):
            row, n_real = rows[b], batch.segment_ids[b].sum()
            seps = np.flatnonzero(row[:n_real] == SEP)
            assert row[0] == CLS and len(seps) == 2 and seps[1] == n_real - 1
            position = np.arange(48)
            np.testing.assert_array_equal(batch.type_ids[b], (position > seps[0]) & (position < n_real))
            a, bb = row[1:seps[0]], row[seps[0] + 1:seps[1]]
            assert len(a) and len(bb) and n_real <= 48
            d, lo, hi = data.train.chunks[i]
            doc = np.concatenate(data.train.docs[d])
            label = batch.nsp_labels[b]
            labels.append(label)
            if label == 0:
                starts = find(doc, np.concatenate([a, bb]))
                assert starts, "label 0: A B is not contiguous text of the document"
                boundaries = np.cumsum([len(s) for s in data.train.docs[d]])
                assert starts[0] + len(a) in boundaries, "label 0: B does not start at a sentence"
                continued += 1
            else:
                others = [np.concatenate(s) for k, s in enumerate(data.train.docs) if k != d]
                random_elsewhere += any(find(o, bb) for o in others)
    assert batch.nsp_weights.min() == 1.0 and 0 < continued < len(labels)
    assert random_elsewhere == len(labels) - continued
    # The coin alone, over 20000 pairs: the share of label 1 has standard deviation 0.0035, so ±0.015 is
    # 4.3σ (and a coin of 0.45 fails); the batches above show the labels reach the rows unchanged.
    coins = [data.train.pair(k % len(data.train), np.random.default_rng([9, k]))[2] for k in range(20000)]
    assert abs(np.mean(coins) - 0.5) < 0.015
    assert abs(np.mean(labels) - 0.5) < 0.06  # 800 rows: 3.4σ


def test_mlm_nsp_masks_never_choose_cls_sep_or_padding(corpus, tokenizer):
    data = MaskedData(experiment("mlm_nsp", seq_len=48), 0, tokenizer, small(corpus))
    batch = data.train_batch(3)
    rows = original(batch)
    chosen = batch.weights > 0
    assert not (chosen & np.isin(rows, [CLS, SEP, PAD])).any()
    assert (batch.targets[~chosen] == PAD).all()
    assert (rows[batch.segment_ids == 0] == PAD).all()
    rate = chosen.sum() / ((batch.segment_ids > 0) & ~np.isin(rows, [CLS, SEP])).sum()
    assert 0.10 < rate < 0.20  # one batch of ~350 candidates; the 15% is checked precisely above


# --- T5 span corruption (Raffel et al. 2020, §3.1.4)


def split_at_sentinels(seq):
    """[(sentinel, tokens until the next sentinel or EOS)], and the tokens before the first sentinel."""
    cuts = np.flatnonzero(np.isin(seq, SENTINELS))
    head = seq[:cuts[0]] if len(cuts) else seq
    ends = np.append(cuts[1:], len(seq))
    pieces = [(seq[c], seq[c + 1:e]) for c, e in zip(cuts, ends, strict=True)]
    return head, pieces


def test_span_lengths_formula():
    assert raw_length(128, 0.15, 3.0) == 141 and corrupted_lengths(141, 0.15, 3.0) == (128, 29)
    assert spans.span_lengths(128, 0.15, 3.0) == (141, 29)  # what SpanData and gptjax/flops.py read
    for L in (8, 16, 64, 100, 512):
        n = raw_length(L, 0.15, 3.0)
        assert corrupted_lengths(n, 0.15, 3.0)[0] <= L < corrupted_lengths(n + 1, 0.15, 3.0)[0]


def span_lengths(mask: np.ndarray, value: bool) -> np.ndarray:
    """Lengths of the runs of `value` in a bool mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], (mask == value).astype(int), [0]])))
    return edges[1::2] - edges[::2]


def composition_cdf(total: int, parts: int, j: int) -> float:
    """P(a part <= j) when `total` is split into `parts` positive parts uniformly (all parts are alike):
    1 − C(total − 1 − j, parts − 1) / C(total − 1, parts − 1)."""
    return 1 - math.comb(total - 1 - j, parts - 1) / math.comb(total - 1, parts - 1)


def test_noise_mask_statistics():
    masks = np.stack([noise_mask(141, 0.15, 3.0, np.random.default_rng([0, r])) for r in range(800)])
    assert abs(masks.mean() - 0.15) < 0.005 and not masks[:, 0].any() and masks[:, -1].all()
    noise = np.concatenate([span_lengths(m, True) for m in masks])
    kept = np.concatenate([span_lengths(m, False) for m in masks])
    assert len(noise) == len(kept) == 7 * 800 and abs(noise.mean() - 3.0) < 0.05
    # 21 noise tokens in 7 spans and 120 kept tokens in 7 spans, each a uniform random composition; with
    # 5600 spans of each kind an empirical CDF has standard deviation <= 0.007, so 0.03 is > 4σ.
    for j in (1, 2, 4):
        assert abs((noise <= j).mean() - composition_cdf(21, 7, j)) < 0.03
    for j in (5, 15, 30):
        assert abs((kept <= j).mean() - composition_cdf(120, 7, j)) < 0.03


def test_span_batches_reconstruct_the_text(corpus, tokenizer):
    docs = small(corpus)
    cfg = experiment("span_corruption", seq_len=64)
    data = SpanData(cfg, 0, tokenizer, docs)
    n, T = data.raw_length, data.target_length
    assert (n, T) == (70, 14)
    stream, _ = pack_documents([tokenizer.encode(d) for d in docs.train], EOT)
    noise_tokens = spans = 0
    for step in (0, 9):
        batch = data.train_batch(step)
        assert batch.enc_inputs.shape == (8, 64) and batch.targets.shape == (8, T)
        np.testing.assert_array_equal(batch.dec_inputs[:, 0], PAD)
        np.testing.assert_array_equal(batch.dec_inputs[:, 1:], batch.targets[:, :-1])
        for b in range(8):
            enc = batch.enc_inputs[b][batch.enc_segment_ids[b] > 0]
            tgt = batch.targets[b][batch.weights[b] > 0]
            assert enc[-1] == EOT and tgt[-1] == EOT and (batch.dec_segment_ids[b] == batch.weights[b]).all()
            head, kept = split_at_sentinels(enc[:-1])
            empty, dropped = split_at_sentinels(tgt[:-1])
            assert len(empty) == 0
            assert [s for s, _ in kept] == [s for s, _ in dropped] == list(SENTINELS[:len(kept)])
            text = np.concatenate([head] + [np.concatenate([d, k])
                                            for (_, k), (_, d) in zip(kept, dropped, strict=True)])
            assert len(text) == n and find(stream, text), "interleaving did not give back the window"
            noise_tokens += sum(len(d) for _, d in dropped)
            spans += len(dropped)
    assert noise_tokens / (16 * n) == pytest.approx(10 / 70) and noise_tokens / spans == pytest.approx(10 / 3)
    again = SpanData(cfg, 0, tokenizer, docs).train_batch(9)
    for x, y in zip(batch, again, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(data.train_batch(8).enc_inputs, batch.enc_inputs)


def test_span_validation_is_fixed_and_covers_the_split(corpus, tokenizer):
    docs = small(corpus)
    a = SpanData(experiment("span_corruption", seq_len=64), 0, tokenizer, docs)
    b = SpanData(experiment("span_corruption", seq_len=64), 3, tokenizer, docs)
    rows = -(-len(a.val_tokens) // a.raw_length)
    va, vb = a.val_batches(rows // 8 + 1), b.val_batches(rows // 8 + 1)
    for x, y in zip(va, vb, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)
    weights = np.concatenate([v.weights for v in va])
    assert weights[rows:].sum() == 0 and (weights[:rows].sum(1) > 0).all()


# --- GPT-1 classification rows


def test_classify_rows_and_epochs(tokenizer):
    cfg = experiment("gpt1_finetune", seq_len=24, batch_size=16)
    examples = load_examples(cfg.data)
    data = ClassifyData(cfg, 0, tokenizer, examples)
    N = len(examples.train)
    seen = np.concatenate([data.examples(s) for s in range(N // 16)])
    assert len(set(seen.tolist())) == len(seen) and seen.max() < N  # no example twice within an epoch
    batch = data.train_batch(2)
    for b, i in enumerate(data.examples(2)):
        text, label = examples.train[i]
        body = tokenizer.encode(text)[:22]
        row = np.concatenate([[EOT], body, [EOT]])
        np.testing.assert_array_equal(batch.inputs[b, :len(row)], row)
        assert (batch.inputs[b, len(row):] == PAD).all() and batch.labels[b] == label
        np.testing.assert_array_equal(batch.targets[b, :len(row) - 1], row[1:])
        np.testing.assert_array_equal(batch.weights[b], np.arange(24) < len(row) - 1)
        np.testing.assert_array_equal(batch.segment_ids[b], np.arange(24) < len(row))
    val = data.val_batches(data.val_batch_count)
    labels = np.concatenate([v.labels for v in val])
    label_weights = np.concatenate([v.label_weights for v in val])
    assert label_weights.sum() == len(examples.val) and (label_weights[len(examples.val):] == 0).all()
    np.testing.assert_array_equal(labels[:len(examples.val)], [y for _, y in examples.val])
    np.testing.assert_array_equal(ClassifyData(cfg, 5, tokenizer, examples).val_batches(1)[0].inputs,
                                  val[0].inputs)


# --- losses against NumPy from the models' own logits


def np_ce(logits, targets, weights):
    """Σ weights · (logsumexp − target logit), in float64."""
    logits = np.asarray(logits, np.float64)
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    picked = np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0]
    return float(((lse - picked) * np.asarray(weights)).sum())


def model_runner(model_cfg: ModelConfig):
    """`run(fn, *args)` = jit(fn)(model, *args) for a model built from `model_cfg` (jitted: on a loaded CPU
    one compiled program is several times faster than op-by-op eager initialisation)."""
    graphdef, _ = abstract_params(model_cfg)
    params = jax.jit(lambda: split_params(build_model(model_cfg, 0))[1])()
    return lambda fn, *args: jax.jit(lambda p, *a: fn(nnx.merge(graphdef, p), *a))(params, *args)


def step_loss(module, model, batch, cfg):
    """(the train step's own loss, `gptjax.train.loss_fn` with `gptjax.train.denominators`; the module's
    parts; metrics; part counts)."""
    from gptjax import train

    graphdef, params = split_params(model)
    total, _ = train.loss_fn(params, batch, None, graphdef=graphdef, cfg=cfg, deterministic=True,
                             denominators=train.denominators(batch, cfg))
    parts, metrics = module.loss(model, batch, cfg=cfg, deterministic=True, rngs=None)
    dens = module.denominators(batch, cfg)
    return total, {name: part for name, (_, part) in parts.items()}, metrics, dens


def floats(tree):
    return jax.tree_util.tree_map(float, tree)


def bert_config(tokenizer, seq_len, type_vocab_size=2):
    return ModelConfig(family="bert", n_layer=1, n_head=2, n_embd=16, context=seq_len,
                       vocab_size=tokenizer.vocab_size, type_vocab_size=type_vocab_size,
                       activation="gelu_exact")


def test_mlm_nsp_loss_is_mlm_plus_nsp_in_numpy(corpus, tokenizer):
    cfg = experiment("mlm_nsp", seq_len=48, nsp_weight=0.7)
    batch = MaskedData(cfg, 0, tokenizer, small(corpus)).train_batch(1)

    def both(model, batch):
        x = model.hidden(batch.inputs, segment_ids_BL=batch.segment_ids, type_ids_BL=batch.type_ids)
        return step_loss(mlm, model, batch, cfg), model.mlm_logits(x), model.nsp_logits(x)

    run = model_runner(bert_config(tokenizer, 48))
    (total, parts, metrics, dens), mlm_logits, nsp_logits = run(both, batch)
    assert set(parts) == set(dens) == {"mlm", "nsp"}
    mlm_ce = np_ce(mlm_logits, batch.targets, batch.weights) / batch.weights.sum()
    nsp_ce = np_ce(nsp_logits, batch.nsp_labels, batch.nsp_weights) / batch.nsp_weights.sum()
    assert float(total) == pytest.approx(mlm_ce + 0.7 * nsp_ce, rel=1e-5)
    record = OBJECTIVES["mlm_nsp"].summarize(floats(metrics))
    assert record["loss"] == pytest.approx(mlm_ce + 0.7 * nsp_ce, rel=1e-5)
    assert record["mlm"] == pytest.approx(mlm_ce, rel=1e-5)
    assert record["nsp"] == pytest.approx(nsp_ce, rel=1e-5)
    assert record["perplexity"] == pytest.approx(np.exp(mlm_ce), rel=1e-5)
    assert record["tokens"] == batch.weights.sum()
    nsp_hits = (np.asarray(nsp_logits).argmax(-1) == batch.nsp_labels).mean()
    assert record["nsp_accuracy"] == pytest.approx(nsp_hits)


def test_mlm_loss_sees_only_chosen_positions(corpus, tokenizer):
    cfg = experiment("mlm")
    batch = MaskedData(cfg, 0, tokenizer, small(corpus)).train_batch(0)
    unchosen = (batch.weights == 0)[..., None]

    def check(model, batch):
        parts, metrics = mlm.loss(model, batch, cfg=cfg, deterministic=True)
        logits = model.mlm_logits(model.hidden(batch.inputs, segment_ids_BL=batch.segment_ids))

        def mlm_sum(logits):
            return score_parts({"mlm": (1.0, logits, batch.targets, batch.weights)}, lm="mlm")[0]["mlm"][1]

        noise = jax.random.normal(jax.random.key(0), logits.shape) * unchosen
        return (parts, metrics, logits, mlm_sum(logits), mlm_sum(logits + 10 * noise),
                jax.grad(mlm_sum)(logits))

    parts, metrics, logits, plain, perturbed, grad = model_runner(bert_config(tokenizer, 32, 0))(check, batch)
    assert set(parts) == {"mlm"} and "nsp_sum" not in metrics and set(mlm.denominators(batch, cfg)) == {"mlm"}
    np.testing.assert_allclose(float(parts["mlm"][1]), np_ce(logits, batch.targets, batch.weights), rtol=1e-5)
    np.testing.assert_allclose(float(perturbed), float(plain), rtol=1e-6)
    assert float(np.abs(grad * unchosen).max()) == 0.0 and float(np.abs(grad).sum()) > 0


def test_span_loss_is_decoder_cross_entropy(corpus, tokenizer):
    cfg = experiment("span_corruption", seq_len=32)
    batch = SpanData(cfg, 0, tokenizer, small(corpus)).val_batches(1)[0]

    def both(model, batch):
        logits = model(batch.enc_inputs, batch.dec_inputs, enc_segment_ids_BL=batch.enc_segment_ids,
                       dec_segment_ids_BT=batch.dec_segment_ids)
        return step_loss(span_corruption, model, batch, cfg), logits

    t5 = ModelConfig(family="t5", n_layer=1, n_head=2, n_embd=16, context=32, bias=False, activation="relu",
                     vocab_size=tokenizer.vocab_size, layer_norm_eps=1e-6)
    (total, _, metrics, _), logits = model_runner(t5)(both, batch)
    ce = np_ce(logits, batch.targets, batch.weights) / batch.weights.sum()
    assert float(total) == pytest.approx(ce, rel=1e-5)
    record = OBJECTIVES["span_corruption"].summarize(floats(metrics))
    assert record["loss"] == pytest.approx(ce, rel=1e-5) and record["tokens"] == batch.weights.sum()


def test_finetune_loss_is_l2_plus_lambda_l1(tokenizer):
    examples = load_examples(experiment("gpt1_finetune").data)
    # A batch size that leaves the last validation batch part-full, whatever each Python's pydoc holds.
    size = next(b for b in range(8, 16) if len(examples.val) % b)
    cfg = experiment("gpt1_finetune", seq_len=24, batch_size=size, lm_weight=0.5)
    data = ClassifyData(cfg, 0, tokenizer, examples)
    batch = data.val_batches(data.val_batch_count)[-1]  # the last one holds padding rows
    assert batch.label_weights.min() == 0
    last = batch.segment_ids.sum(1) - 1  # left-aligned rows: the extract token

    def both(model, batch):
        x = model.hidden(batch.inputs, segment_ids_BL=batch.segment_ids)
        return step_loss(gpt1_finetune, model, batch, cfg), model.logits(x), model.classify(x, last)

    gpt = ModelConfig(n_layer=1, n_head=2, n_embd=16, context=24, vocab_size=tokenizer.vocab_size,
                      n_classes=len(examples.label_names))
    (total, parts, metrics, _), lm_logits, class_logits = model_runner(gpt)(both, batch)
    l1 = np_ce(lm_logits, batch.targets, batch.weights) / batch.weights.sum()
    l2 = np_ce(class_logits, batch.labels, batch.label_weights) / batch.label_weights.sum()
    assert float(total) == pytest.approx(l2 + 0.5 * l1, rel=1e-5)
    record = OBJECTIVES["gpt1_finetune"].summarize(floats(metrics))
    assert record["loss"] == pytest.approx(l2 + 0.5 * l1, rel=1e-5)
    real = batch.label_weights > 0
    accuracy = (np.asarray(class_logits).argmax(-1) == batch.labels)[real].mean()
    assert record["cls_accuracy"] == pytest.approx(accuracy)
    assert {"class_accuracy", "lm_accuracy"}.isdisjoint(record)  # one key for each number
    assert record["cls"] == pytest.approx(l2, rel=1e-5)
    assert record["perplexity"] == pytest.approx(np.exp(l1), rel=1e-5)
    np.testing.assert_array_equal(batch.inputs[np.arange(size), last][real], EOT)


def test_impossible_shapes_are_refused_in_one_line(corpus, tokenizer):
    with pytest.raises(ConfigError, match=r"data.seq_len >= 5") as e:
        MaskedData(experiment("mlm_nsp", seq_len=4), 0, tokenizer, small(corpus))
    assert "\n" not in str(e.value)
    # seq_len 2048 at density 0.15, mean 3: 2274 raw tokens (2274 − 341 + 114 + 1 = 2048), 114 spans > 100
    assert raw_length(2048, 0.15, 3.0) == 2274
    with pytest.raises(ConfigError, match=r"makes 114 spans, more than the tokenizer's 100 sentinels"):
        SpanData(experiment("span_corruption", seq_len=2048), 0, tokenizer, corpus)
    with pytest.raises(ConfigError, match=r"at least 2 documents"):
        MaskedData(experiment("mlm_nsp"), 0, tokenizer, Documents(corpus.train[:1], corpus.val))
