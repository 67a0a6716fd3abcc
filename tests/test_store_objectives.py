"""Every unlabelled objective from a token store, and evaluation streamed from one: against the in-memory
pipeline on the same text (pydoc prepared with the in-memory run's tokenizer) and plain-NumPy checks."""

import dataclasses

import numpy as np
import pytest

from gptjax.config import DataConfig, Experiment, ModelConfig, ObjectiveConfig
from gptjax.data.masked import MaskedData
from gptjax.data.prepare import prepare
from gptjax.data.sources import load_documents
from gptjax.data.spans import SpanData
from gptjax.data.store import StoreOrder, TokenStore
from gptjax.data.tokenizers import BpeTokenizer
from gptjax.evaluate import context_windows, window_batches
from tests.test_data import assert_batches_equal

CLS, SEP = 2, 3
quiet = dict(progress=False, log=lambda *_: None)


@pytest.fixture(scope="module")
def corpus():
    return load_documents(DataConfig(source="pydoc"))


@pytest.fixture(scope="module")
def bpe_store(tmp_path_factory, corpus):
    """pydoc prepared with the tokenizer the in-memory pipeline trains: both hold the same tokens."""
    root = tmp_path_factory.mktemp("bpe")
    tokenizer = BpeTokenizer.train(corpus.train, 512)
    tokenizer.save(root / "tokenizer.json")
    prepare("pydoc", root / "store", DataConfig(tokenizer="bpe", tokenizer_vocab=512), workers=1,
            tokenizer_file=root / "tokenizer.json", **quiet)
    return root / "store", tokenizer


def experiment(name: str, seq_len: int = 32, batch_size: int = 8) -> Experiment:
    return Experiment(model=ModelConfig(context=max(seq_len, 32)),
                      data=DataConfig(tokenizer="bpe", seq_len=seq_len, batch_size=batch_size),
                      objective=ObjectiveConfig(name=name))


def both(name, corpus, bpe_store, **kw):
    """The objective's data in memory and from the store."""
    root, tokenizer = bpe_store
    cfg, data = experiment(name, **kw), MaskedData if name.startswith("mlm") else SpanData
    return data(cfg, 0, tokenizer, corpus), data(cfg, 0, tokenizer, TokenStore(root))


def test_mlm_rows_from_a_store_are_the_in_memory_rows(corpus, bpe_store):
    memory, store = both("mlm", corpus, bpe_store, seq_len=48)
    assert len(store.train) == len(memory.train) and len(store.val) == len(memory.val)
    # Validation is the same text with the same draws: batch for batch equal.
    for a, b in zip(store.val_batches(3), memory.val_batches(3), strict=True):
        assert_batches_equal(a, b)
    n = len(memory.train)
    rng = np.random.default_rng(0)
    for i in [0, 1, n - 1, *rng.integers(0, n, 20)]:  # sequence i: the same tokens, [SEP] where docs end
        np.testing.assert_array_equal(store.train.example(int(i), None)[0],
                                      memory.train.example(int(i), None)[0])
    np.testing.assert_array_equal(store.val_tokens, memory.val_tokens)


def test_the_store_order_visits_every_sequence_once_per_epoch_and_rows_select():
    order = StoreOrder(37, 5, seed=3)
    visits = np.concatenate([order.indices(step) for step in range(37 * 2 // 5 + 1)])
    for epoch in (visits[:37], visits[37:74]):
        assert sorted(epoch.tolist()) == list(range(37))
    assert not (visits[:37] == np.arange(37)).all() and not (visits[:37] == visits[37:74]).all()
    np.testing.assert_array_equal(order.indices(4, [1, 3]), order.indices(4)[[1, 3]])
    assert (StoreOrder(37, 5, seed=3).indices(9) == order.indices(9)).all()


def test_span_corruption_from_a_store(corpus, bpe_store):
    memory, store = both("span_corruption", corpus, bpe_store, seq_len=48)
    for a, b in zip(store.val_batches(3), memory.val_batches(3), strict=True):
        assert_batches_equal(a, b)
    # A training row corrupts the store window at its start with the draws of (seed, step, row).
    data = TokenStore(bpe_store[0]).splits["train"]
    batch = store.train_batch(5)
    starts = store._train.starts(5)
    for b, s in enumerate(starts):
        row = store._row(data.read(int(s), int(s) + store.raw_length)[0], np.random.default_rng([0, 5, b]))
        for field, value in zip(batch, row, strict=True):
            np.testing.assert_array_equal(field[b], value)
    for a, b in zip(store.train_batch(5, rows=[2, 6]), batch, strict=True):
        np.testing.assert_array_equal(a, b[[2, 6]])


def test_nsp_pairs_from_a_store(corpus, bpe_store):
    root, tokenizer = bpe_store
    _, store = both("mlm_nsp", corpus, bpe_store, seq_len=48, batch_size=50)
    texts = corpus.train
    labels, continued, contiguous = [], 0, 0
    for step in range(6):  # 300 pairs
        batch = store.train_batch(step)
        rows = np.where(batch.weights > 0, batch.targets, batch.inputs)
        for b in range(len(batch.nsp_labels)):
            n_real = batch.segment_ids[b].sum()
            if n_real == 0:  # an empty row (a window of 1-token documents): no NSP weight either
                assert batch.nsp_weights[b] == 0
                continue
            row = rows[b][:n_real]
            seps = np.flatnonzero(row == SEP)
            assert row[0] == CLS and len(seps) == 2 and seps[1] == n_real - 1
            # Truncation cuts tokens, so a character's bytes may be cut at the ends (U+FFFD).
            a, bb = (tokenizer.decode(x).strip("\ufffd") for x in (row[1:seps[0]], row[seps[0] + 1:seps[1]]))
            assert a and bb
            holding_a = [k for k, t in enumerate(texts) if a in t]
            assert holding_a, "A is not text of a document"
            label = batch.nsp_labels[b]
            labels.append(label)
            if label == 0:
                assert any(a + bb in texts[k] for k in holding_a), "label 0: B does not continue A"
                continued += 1
            else:
                assert any(bb in t for t in texts), "label 1: B is not text of a document"
                contiguous += any(a + bb in texts[k] for k in holding_a)
    assert 0.35 < np.mean(labels) < 0.65 and len(labels) > 250
    assert contiguous <= 2  # a random B continues A only by coincidence
    again = both("mlm_nsp", corpus, bpe_store, seq_len=48, batch_size=50)[1]
    for x, y in zip(again.train_batch(4), store.train_batch(4), strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(store.train_batch(4, rows=[0, 49]), store.train_batch(4), strict=True):
        np.testing.assert_array_equal(x, y[[0, 49]])
    val = store.val_batches(2)
    assert all((v.nsp_weights == 1).all() for v in val)


def test_streamed_windows_are_the_whole_streams_windows_read_in_bounded_pieces():
    stream = np.arange(1000, dtype=np.int32)
    docs = np.repeat(np.arange(1, 11), 100)
    reads = []

    def read(a, b):
        reads.append((a, b))
        return stream[a:b], docs[a:b]

    whole = context_windows(stream, docs, 16, 6, pad_id=-1)
    pieces = list(window_batches(read, len(stream), 16, 6, -1, rows=8))
    joined = [np.concatenate(x)[:len(whole.inputs)] for x in zip(*pieces, strict=True)]
    for a, b in zip(joined, whole, strict=True):
        np.testing.assert_array_equal(a, b)
    assert max(b - a for a, b in reads) <= 7 * 6 + 16 + 1  # a batch's windows, never the stream
    assert sum(float(p.weights.sum()) for p in pieces) == len(stream) - 1
    padded = pieces[-1]
    assert padded.weights[len(whole.inputs) % 8:].sum() == 0


@pytest.mark.slow
def test_bert_trains_from_a_text_source_through_its_cached_store(tmp_path):
    from gptjax.metrics import read_metrics
    from gptjax.train import train
    from tests.test_train_objectives import tiny

    text = tmp_path / "corpus.txt"
    topics = load_documents(DataConfig(source="pydoc")).train[:40]
    text.write_text("\n\n".join(topics))
    cfg = tiny("mlm_nsp", steps=3, eval_every=3, log_every=1, checkpoint_every=3)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=f"text:{text}",
                                                            text_split="\\n\\n"))
    result = train(cfg, tmp_path / "w", log=lambda *_: None)
    assert all(np.isfinite(result["val"][part]) for part in ("mlm", "nsp", "nsp_accuracy"))
    assert len([r for r in read_metrics(tmp_path / "w") if r["split"] == "train"]) == 3
