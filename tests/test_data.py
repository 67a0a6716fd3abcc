"""Tests of gptjax.data against references written from the spec (plain Python loops, hand values)."""

import dataclasses
import math
import sys

import numpy as np
import pytest

from gptjax.config import ConfigError, DataConfig, Experiment
from gptjax.data import (
    Batch,
    BpeTokenizer,
    ByteTokenizer,
    Documents,
    LMData,
    build_data,
    build_tokenizer,
    split_documents,
    unigram_entropy,
)
from gptjax.data.packing import TrainWindows, pack_documents
from gptjax.data.sources import (
    PYDOC_CLASSES,
    PYDOC_EXCLUDED,
    load_examples,
    pydoc_topic_split,
    topic_passages,
)

EOT, PAD = 256, 257


@pytest.fixture(scope="module")
def pydoc_data():
    return build_data(DataConfig(source="pydoc", seq_len=64, batch_size=8), seed=0)


def reference_stream(docs):
    """[EOT] + utf-8 bytes of each document, concatenated; and the 1-based document of each token."""
    stream, doc = [], []
    for i, d in enumerate(docs):
        piece = [EOT] + list(d.encode("utf-8"))
        stream += piece
        doc += [i + 1] * len(piece)
    return np.array(stream), np.array(doc)


def reference_start(seed, step, b, batch_size, seq_len, n_stream):
    """Stream position of row b of global batch `step`, straight from the spec."""
    window = seq_len + 1
    n = (n_stream - window) // window
    g = step * batch_size + b
    rng = np.random.default_rng([seed, g // n])
    offset = rng.integers(0, seq_len + 1)
    return offset + rng.permutation(n)[g % n] * window


def reference_segments(doc_ids):
    """Renumber a row's document ids 1..k in order of appearance; 0 stays 0."""
    seen, out = {}, []
    for d in doc_ids:
        if d == 0:
            out.append(0)
        else:
            seen.setdefault(d, len(seen) + 1)
            out.append(seen[d])
    return out


def assert_batches_equal(a: Batch, b: Batch):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_byte_tokenizer_round_trip():
    tok = build_tokenizer(DataConfig())
    assert (tok.vocab_size, tok.eot_id, tok.pad_id) == (258, 256, 257)
    text = "héllo, wörld — 日本語 🙂\n\ttab"
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.tolist() == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.decode([EOT, *ids.tolist(), PAD, PAD]) == text  # specials dropped
    assert tok.decode(tok.encode("é")[:1]) == "\ufffd"  # a cut multi-byte character is replaced


def test_pack_documents_matches_reference():
    docs = ["ab", "", "çd", "xyz"]
    stream_S, doc_S = pack_documents([ByteTokenizer().encode(d) for d in docs], EOT)
    ref_stream, ref_doc = reference_stream(docs)
    np.testing.assert_array_equal(stream_S, ref_stream)
    np.testing.assert_array_equal(doc_S, ref_doc)
    assert stream_S.dtype == np.int32


def test_train_batches_match_spec_reference(pydoc_data):
    data = pydoc_data
    ref_stream, ref_doc = reference_stream(data.train_docs)
    np.testing.assert_array_equal(data.train_tokens, ref_stream)
    L, B = data.seq_len, data.batch_size
    boundary = data.windows_per_epoch // B  # straddles epochs 0 and 1 (unless B divides N)
    for step in (0, 1, boundary, boundary + 1, 700):
        batch = data.train_batch(step)
        assert [x.shape for x in batch] == [(B, L)] * 4
        assert [x.dtype for x in batch] == [np.int32, np.int32, np.float32, np.int32]
        np.testing.assert_array_equal(batch.inputs[:, 1:], batch.targets[:, :-1])
        assert (batch.weights == 1.0).all()
        for b in range(B):
            start = reference_start(0, step, b, B, L, len(ref_stream))
            np.testing.assert_array_equal(batch.inputs[b], ref_stream[start:start + L])
            np.testing.assert_array_equal(batch.targets[b], ref_stream[start + 1:start + L + 1])
            assert batch.segment_ids[b].tolist() == reference_segments(ref_doc[start:start + L])


def test_determinism_in_seed_and_step(pydoc_data):
    cfg = DataConfig(source="pydoc", seq_len=64, batch_size=8)
    again = build_data(cfg, seed=0)
    other = build_data(cfg, seed=1)
    for step in (0, 5, 123):
        assert_batches_equal(pydoc_data.train_batch(step), again.train_batch(step))
        assert not np.array_equal(pydoc_data.train_batch(step).inputs, other.train_batch(step).inputs)
    assert not np.array_equal(pydoc_data.train_batch(0).inputs, pydoc_data.train_batch(1).inputs)


def test_resumed_run_sees_the_same_batches():
    cfg = DataConfig(source="pydoc", seq_len=32, batch_size=16)
    continuous = build_data(cfg, seed=3)
    seen = [continuous.train_batch(step) for step in range(40)]
    resumed = build_data(cfg, seed=3)  # a fresh process starting at step 20
    for step in range(20, 40):
        assert_batches_equal(resumed.train_batch(step), seen[step])


@pytest.mark.parametrize("batch_size", [3, 7, 40])  # 40 > windows per epoch: one batch spans epochs
def test_each_epoch_visits_every_window_once(batch_size):
    seq_len, n_stream = 4, 83
    stream_S = np.arange(n_stream, dtype=np.int32)  # token = position, so a window names its start
    windows = TrainWindows(stream_S, np.ones(n_stream, np.int32), seq_len, batch_size, seed=5)
    n = (n_stream - 5) // 5
    assert windows.windows_per_epoch == n
    steps = math.ceil(3 * n / batch_size)
    inputs = np.concatenate([windows.batch(s).inputs for s in range(steps)])
    targets = np.concatenate([windows.batch(s).targets for s in range(steps)])
    np.testing.assert_array_equal(inputs, inputs[:, :1] + np.arange(seq_len))  # contiguous slices
    np.testing.assert_array_equal(targets, inputs + 1)
    offsets = []
    for epoch in range(3):
        starts = inputs[epoch * n:(epoch + 1) * n, 0]
        offset = starts.min()
        assert 0 <= offset <= seq_len
        assert sorted(starts.tolist()) == [offset + 5 * k for k in range(n)]
        offsets.append(offset)
        assert not np.array_equal(starts, np.sort(starts))  # shuffled, not in stream order
    assert len(set(offsets)) > 1


def hand_data(val_docs, train_docs=("ab", "cde", "f"), seq_len=3, batch_size=1, seed=0):
    cfg = Experiment(data=DataConfig(seq_len=seq_len, batch_size=batch_size))
    return LMData(cfg, seed, ByteTokenizer(), Documents(list(train_docs), list(val_docs)))


def test_segment_ids_hand_made_three_documents():
    # Stream: E a b E c d e E f. seq_len 3, so one training window per epoch at offset 0..3.
    data = hand_data(val_docs=["ab", "cde", "f"])
    expected = {"\x00ab": [1, 1, 1], "ab\x00": [1, 1, 2], "b\x00c": [1, 2, 2], "\x00cd": [1, 1, 1]}
    seen = set()
    for step in range(40):  # batch_size 1 and one window: step = epoch, each with its own offset
        batch = data.train_batch(step)
        key = "".join("\x00" if t == EOT else chr(t) for t in batch.inputs[0])
        assert batch.segment_ids[0].tolist() == expected[key]
        seen.add(key)
    assert seen == set(expected)
    # Validation windows stride 3 over the same stream: E a b | E c d | e E f (+ pad).
    rows = hand_data(val_docs=["ab", "cde", "f"], batch_size=4).val_batches(1)[0]
    a, b, c, d, e, f = (ord(ch) for ch in "abcdef")
    assert rows.inputs.tolist() == [[EOT, a, b], [EOT, c, d], [e, EOT, f], [PAD, PAD, PAD]]
    assert rows.targets.tolist() == [[a, b, EOT], [c, d, e], [EOT, f, PAD], [PAD, PAD, PAD]]
    assert rows.segment_ids.tolist() == [[1, 1, 1], [1, 1, 1], [1, 2, 2], [0, 0, 0]]
    assert rows.weights.tolist() == [[1, 1, 1], [1, 1, 1], [1, 1, 0], [0, 0, 0]]


def test_val_batches_fixed_padded_and_seed_independent(pydoc_data):
    data = pydoc_data
    n_real_rows = math.ceil((len(data.val_tokens) - 1) / data.seq_len)
    n = math.ceil(n_real_rows / data.batch_size) + 2  # more batches than the split fills
    first, second = data.val_batches(n), data.val_batches(n)
    for a, b in zip(first, second, strict=True):
        assert_batches_equal(a, b)
    other_seed = build_data(DataConfig(source="pydoc", seq_len=64, batch_size=8), seed=9)
    for a, b in zip(first, other_seed.val_batches(n), strict=True):
        assert_batches_equal(a, b)
    weights = np.concatenate([v.weights for v in first])
    targets = np.concatenate([v.targets for v in first])
    inputs = np.concatenate([v.inputs for v in first])
    # The real targets tile the validation stream exactly once; everything after is padding.
    np.testing.assert_array_equal(targets[weights == 1], data.val_tokens[1:])
    assert weights.sum() == len(data.val_tokens) - 1
    assert (weights[n_real_rows:] == 0).all() and (inputs[n_real_rows:] == PAD).all()
    assert (np.concatenate([v.segment_ids for v in first])[n_real_rows:] == 0).all()
    assert [x.shape for x in first[0]] == [(8, 64)] * 4


def test_split_is_by_document_and_independent_of_seed(pydoc_data):
    from pydoc_data.topics import topics

    docs = [topics[k] for k in sorted(topics)]
    other = build_data(DataConfig(source="pydoc", seq_len=64, batch_size=8), seed=42)
    assert other.val_docs == pydoc_data.val_docs and other.train_docs == pydoc_data.train_docs
    assert len(pydoc_data.val_docs) == math.ceil(0.1 * len(docs)) == 8
    val_ids = {id(d) for d in pydoc_data.val_docs}
    assert not val_ids & {id(d) for d in pydoc_data.train_docs}
    assert sorted(pydoc_data.train_docs + pydoc_data.val_docs) == sorted(docs)
    assert pydoc_data.val_text() == "\n\n".join(pydoc_data.val_docs)
    assert [len(s) for s in split_documents(list("abcdefghij"), 0.3, "x")] == [7, 3]
    assert [len(s) for s in split_documents(["a", "b"], 0.9, "x")] == [1, 1]
    assert [len(s) for s in split_documents(list("abcdefghij"), 0.01, "x")] == [9, 1]


def store_text(data, split: str) -> str:
    """A byte-tokenized store split's text, each document opened by "|" (for its EOT)."""
    reader = data.store.splits[split]
    tokens, _ = reader.read(0, reader.n_tokens)
    return bytes(np.where(tokens == 256, ord("|"), tokens).astype(np.uint8)).decode("utf-8")


def test_a_text_file_is_one_stream_read_through_a_cached_store(tmp_path):
    path = tmp_path / "corpus.txt"
    text = "".join(f"line {i}\n\n  indented — ünïcode {i}\n" for i in range(40))
    path.write_text(text, encoding="utf-8")
    cfg = DataConfig(source=f"text:{path}", seq_len=8, batch_size=2, val_fraction=0.2)
    data = build_data(cfg, 0)
    # Blank lines and indentation kept; the validation text is the file's tail, from a line start.
    train, val = store_text(data, "train"), store_text(data, "val")
    assert train.startswith("|") and val.startswith("|") and train[1:] + val[1:] == text
    assert 0.15 * len(text) < len(val) < 0.25 * len(text) and val[1:] in text and val[0] == "|"
    assert data.train_batch(0).inputs.shape == (2, 8)
    # Prepared once: a second run opens the same cached store.
    assert build_data(cfg, 1).store.path == data.store.path
    # data.text_split makes documents of a separator.
    split = build_data(dataclasses.replace(cfg, text_split="\\n\\n"), 0)
    assert split.store.path != data.store.path
    assert split.store.splits["train"].n_documents + split.store.splits["val"].n_documents == 41


def test_a_resumed_bpe_run_on_text_reopens_the_store_it_trained_on(tmp_path):
    from gptjax.data.store import open_store

    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"The {i % 13} cats sat on {i % 7} mats, line {i}.\n" for i in range(600)))
    cfg = DataConfig(source=f"text:{path}", tokenizer="bpe", tokenizer_vocab=512)
    first, tokenizer = open_store(cfg, tmp_path / "w" / "tokenizer.json")  # no workdir copy yet
    (tmp_path / "w").mkdir()
    tokenizer.save(tmp_path / "w" / "tokenizer.json")
    again, _ = open_store(cfg, tmp_path / "w" / "tokenizer.json")
    assert again.path == first.path
    # Another tokenizer in the workdir (init_from a run trained elsewhere): a store of its own.
    BpeTokenizer.train([path.read_text()[:5000]], 512).save(tmp_path / "w" / "tokenizer.json")
    other, _ = open_store(cfg, tmp_path / "w" / "tokenizer.json")
    assert other.path != first.path and other.tokenizer != first.tokenizer


def test_text_directory_every_file_recursively(tmp_path):
    files = {"b.txt": "bee " * 10, "a/z.md": "zed\n\nstill zed", "a/b/c": "ç" * 20, "d.txt": "dee " * 5}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / ".hidden").write_bytes(b"\xff\xfe not text")  # skipped like .git/
    data = build_data(DataConfig(source=f"text:{tmp_path}", seq_len=8, batch_size=2, val_fraction=0.25), 0)
    train, val = store_text(data, "train").split("|")[1:], store_text(data, "val").split("|")[1:]
    assert len(val) == 1
    ordered = [files[k] for k in sorted(files)]  # a/b/c, a/z.md, b.txt, d.txt
    assert [d for d in ordered if d in train] == train
    assert sorted(train + val) == sorted(files.values())


def error_of(cfg, seed=0) -> str:
    with pytest.raises(ConfigError) as info:
        build_data(cfg, seed)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_config_errors(tmp_path):
    assert "does not exist" in error_of(DataConfig(source=f"text:{tmp_path / 'missing.txt'}"))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café\n\nolé".encode("latin-1"))
    assert "latin1.txt is not UTF-8" in error_of(DataConfig(source=f"text:{bad}"))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n")
    assert "blank.txt holds only whitespace" in error_of(DataConfig(source=f"text:{blank}"))
    (tmp_path / "emptydir").mkdir()
    assert "emptydir holds no files" in error_of(DataConfig(source=f"text:{tmp_path / 'emptydir'}"))
    one = tmp_path / "one.txt"
    one.write_text("a single line, so no line start to hold out a validation tail from")
    assert "too short to hold out" in error_of(DataConfig(source=f"text:{one}"))
    with pytest.raises(ConfigError, match=r"training split too short: 201 tokens .* at least 258 "):
        hand_data(train_docs=["x" * 200], val_docs=["y" * 200], seq_len=128)
    with pytest.raises(ConfigError, match=r"validation split too short: 21 tokens .* at least 65 "):
        hand_data(train_docs=["x" * 300], val_docs=["y" * 20], seq_len=64)
    assert "unknown data.tokenizer 'wordpiece'" in error_of(DataConfig(tokenizer="wordpiece"))
    assert "unknown data.source 'hf:x'" in error_of(DataConfig(source="hf:x"))
    assert "takes no argument" in error_of(DataConfig(source="pydoc:x"))


def test_unigram_entropy_by_hand():
    assert unigram_entropy(np.array([0, 0, 1, 2])) == pytest.approx(1.5 * math.log(2))
    assert unigram_entropy(np.arange(4).repeat(3)) == pytest.approx(math.log(4))
    assert unigram_entropy(np.array([[7, 7], [7, 7]])) == 0.0
    counts = np.array([5, 1, 3, 1])
    p = counts / counts.sum()
    assert unigram_entropy(np.repeat(np.arange(4), counts)) == pytest.approx(-(p * np.log(p)).sum())


# ---------------------------------------------------------------- classification examples (pydoc)


def examples_error(cfg) -> str:
    with pytest.raises(ConfigError) as info:
        load_examples(cfg)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def pydoc_examples():
    return load_examples(DataConfig())


def flat_topic(name: str) -> str:
    from pydoc_data.topics import topics

    return " ".join(topics[name].split())


def test_topic_passages_by_hand():
    text = ("The \"pass\" statement\n********************\n\n   pass_stmt ::= \"pass\"\n\n"
            "\"pass\" is a null operation. When it is executed,\nnothing happens.\n\n"
            "   >>> def f(arg): pass\n\n"
            "One. Two is here. Three is here. Four is here. \"Five\" too.\n\n"
            "Too short.\n\n"
            "A sentence that is far too long: " + "word " * 80 + "end.\n")
    assert topic_passages(text) == [
        "\"pass\" is a null operation. When it is executed, nothing happens.",
        "One. Two is here. Three is here.",
        "Four is here. \"Five\" too.",
    ]


def test_pydoc_every_topic_classified_or_excluded():
    from pydoc_data.topics import topics

    classified = [t for names in PYDOC_CLASSES.values() for t in names]
    assert len(classified) == len(set(classified))  # one class per topic
    assert not set(classified) & set(PYDOC_EXCLUDED)
    assert set(topics) == set(classified) | set(PYDOC_EXCLUDED)


def test_pydoc_examples_labels_and_balance(pydoc_examples):
    ex = pydoc_examples
    assert ex.label_names == ["statements", "expressions", "data model", "built-in types"]
    for split in (ex.train, ex.val):
        counts = np.bincount([label for _, label in split], minlength=4)
        assert len(counts) == 4 and counts.min() > 0
        assert counts.max() / counts.sum() < 0.35  # the majority-class baseline stays near 1/4
        assert all(20 <= len(text) <= 400 and text == text.strip() for text, _ in split)
        assert len({text for text, _ in split}) == len(split)
    assert 0.08 < len(ex.val) / (len(ex.train) + len(ex.val)) < 0.15  # val_fraction 0.1
    # Each passage is text of a topic of its own class and of no other class's topic (checked on the raw
    # topics, not the extractor), so its label is unambiguous.
    class_text = {label: " ".join(flat_topic(t) for t in names)
                  for label, names in enumerate(PYDOC_CLASSES.values())}
    for text, label in ex.train + ex.val:
        assert [other for other in range(4) if text in class_text[other]] == [label]


def test_pydoc_examples_split_by_whole_topics(pydoc_examples):
    label_of, train_topics, val_topics = pydoc_topic_split(0.1)
    assert not set(train_topics) & set(val_topics)
    assert {label_of[t] for t in val_topics} == {0, 1, 2, 3} == {label_of[t] for t in train_topics}
    val_text = " ".join(flat_topic(t) for t in val_topics)
    assert not [text for text, _ in pydoc_examples.train if text in val_text]
    train_text = " ".join(flat_topic(t) for t in train_topics)
    # The split does hold out text: most validation passages occur in no training topic.
    assert sum(text not in train_text for text, _ in pydoc_examples.val) > 0.8 * len(pydoc_examples.val)


def test_pydoc_examples_deterministic_and_fraction(pydoc_examples):
    assert load_examples(DataConfig()) == pydoc_examples
    larger = load_examples(DataConfig(val_fraction=0.2))
    assert len(larger.val) > 1.5 * len(pydoc_examples.val)


def test_examples_config_errors(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    assert examples_error(DataConfig(source=f"text:{tmp_path / 'a.txt'}")).endswith(
        "classification needs labels; use pydoc or tfds:NAME")
    assert "unknown data.source 'wiki'" in examples_error(DataConfig(source="wiki"))
    assert "takes no argument" in examples_error(DataConfig(source="pydoc:x"))


# ---------------------------------------------------------------- tfds, read without TensorFlow
tfds = pytest.importorskip("tensorflow_datasets")

TRAIN_TEXTS = [f"train document {i}: " + "ü" * (i % 7) + " words" * 12 for i in range(30)]
VAL_TEXTS = [f"validation document {i} " * 8 for i in range(4)]


class TinyCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A two-split text dataset written locally; skip_registration makes tfds find it by files alone."""

    VERSION = tfds.core.Version("1.0.0")
    SPLITS = {"train": TRAIN_TEXTS, "validation": VAL_TEXTS}

    def _info(self):
        # Built explicitly: a builder outside a tfds package has no metadata files to infer it from.
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"text": tfds.features.Text(), "n": np.int32}))

    def _split_generators(self, dl_manager):
        return {name: self._generate_examples(texts) for name, texts in self.SPLITS.items()}

    def _generate_examples(self, texts):
        for i, text in enumerate(texts):
            yield i, {"text": text, "n": i}


class TinyTrainOnly(TinyCorpus, skip_registration=True):
    SPLITS = {"train": TRAIN_TEXTS}


def prepare(tmp_path_factory, name: str, *builder_classes) -> str:
    """A data_dir holding the given builders' datasets, prepared as array_record."""
    data_dir = tmp_path_factory.mktemp(name)
    for builder_class in builder_classes:
        builder_class(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return str(data_dir)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return prepare(tmp_path_factory, "tfds", TinyCorpus, TinyTrainOnly)


def tfds_config(tfds_dir, name="tiny_corpus", **kw):
    return DataConfig(source=f"tfds:{name}", tfds_data_dir=tfds_dir, seq_len=32, batch_size=4, **kw)


def test_tfds_local_dataset_without_tensorflow(tfds_dir):
    data = build_data(tfds_config(tfds_dir), seed=0)
    assert sorted(data.train_docs) == sorted(TRAIN_TEXTS)
    assert sorted(data.val_docs) == sorted(VAL_TEXTS)
    assert data.train_batch(0).inputs.shape == (4, 32)
    held_out = build_data(tfds_config(tfds_dir, "tiny_train_only"), seed=0)
    assert len(held_out.val_docs) == 3
    assert sorted(held_out.train_docs + held_out.val_docs) == sorted(TRAIN_TEXTS)
    assert "tensorflow" not in sys.modules


def test_tfds_errors(tfds_dir, tmp_path):
    message = error_of(tfds_config(tfds_dir, "no_such_dataset"))
    assert message.startswith("tfds dataset 'no_such_dataset' not found in ")
    assert "no feature data.tfds_text_key='body'" in error_of(tfds_config(tfds_dir, tfds_text_key="body"))
    assert "not Text" in error_of(tfds_config(tfds_dir, tfds_text_key="n"))
    assert "no split data.tfds_train_split='test'" in error_of(tfds_config(tfds_dir, tfds_train_split="test"))
    assert "does not exist" in error_of(tfds_config(str(tmp_path / "nowhere")))
    assert "'mnist' is not prepared in" in error_of(tfds_config(str(tmp_path), "mnist"))  # and not downloaded
    assert not list(tmp_path.rglob("*.array_record*"))
    cfg = dataclasses.replace(tfds_config(tfds_dir), source="tfds:")
    assert "needs a dataset name" in error_of(cfg)


LABELLED = {"train": [(f"a fine film number {i}" if i % 3 else f"a dull film number {i}", int(i % 3 != 0))
                      for i in range(12)],
            "validation": [("wonderful", 1), ("boring", 0), ("   ", 1)],
            "test": [("unlabelled", -1)]}


class TinyLabelled(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """An SST-2-shaped dataset: a "sentence" and a ClassLabel "label", -1 in the unlabelled test split."""

    VERSION = tfds.core.Version("1.0.0")
    SPLITS = LABELLED

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"sentence": tfds.features.Text(), "score": np.int64,
             "label": tfds.features.ClassLabel(names=["negative", "positive"])}))

    def _split_generators(self, dl_manager):
        return {name: self._generate_examples(pairs) for name, pairs in self.SPLITS.items()}

    def _generate_examples(self, pairs):
        for i, (text, label) in enumerate(pairs):
            yield i, {"sentence": text, "label": label, "score": 2 * label + 3}


class TinyLabelledTrainOnly(TinyLabelled, skip_registration=True):
    SPLITS = {"train": LABELLED["train"]}


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory):
    return prepare(tmp_path_factory, "tfds_labelled", TinyLabelled, TinyLabelledTrainOnly)


def test_tfds_examples_from_local_dataset(labelled_dir):
    cfg = DataConfig(source="tfds:tiny_labelled", tfds_data_dir=labelled_dir, tfds_text_key="sentence")
    ex = load_examples(cfg)
    assert ex.label_names == ["negative", "positive"]
    assert sorted(ex.train) == sorted(LABELLED["train"])
    assert sorted(ex.val) == [("boring", 0), ("wonderful", 1)]  # the blank sentence is dropped
    # An integer feature works too; its names are "0" … the largest label (scores are 3 and 5 here).
    scores = load_examples(dataclasses.replace(cfg, tfds_label_key="score"))
    assert scores.label_names == [str(i) for i in range(6)]
    assert sorted(scores.val) == [("boring", 3), ("wonderful", 5)]
    held_out = load_examples(dataclasses.replace(cfg, source="tfds:tiny_labelled_train_only"))
    assert len(held_out.val) == 2 and sorted(held_out.train + held_out.val) == sorted(LABELLED["train"])
    assert load_examples(dataclasses.replace(cfg, source="tfds:tiny_labelled_train_only")) == held_out
    assert "tensorflow" not in sys.modules


def test_tfds_examples_errors(labelled_dir, tfds_dir):
    cfg = DataConfig(source="tfds:tiny_labelled", tfds_data_dir=labelled_dir, tfds_text_key="sentence")
    assert "no feature data.tfds_label_key='stars'" in examples_error(
        dataclasses.replace(cfg, tfds_label_key="stars"))
    assert "is Text, not a ClassLabel or an integer scalar" in examples_error(
        dataclasses.replace(cfg, tfds_label_key="sentence"))
    unlabelled = dataclasses.replace(cfg, tfds_val_split="test")
    assert "split 'test' has label -1 (unlabelled?)" in examples_error(unlabelled)
    # The language-modelling corpus has no labels at all.
    assert "no feature data.tfds_label_key='label'" in examples_error(tfds_config(tfds_dir))
