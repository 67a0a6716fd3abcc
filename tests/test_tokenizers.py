"""Tests of gptjax.data.tokenizers: the byte-level BPE against its contract, the byte tokenizer unchanged."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gptjax.config import ConfigError, DataConfig
from gptjax.data import BpeTokenizer, ByteTokenizer, build_tokenizer
from gptjax.data.tokenizers import BPE_SPECIAL_TOKENS

UNICODE_TEXTS = [
    "",
    "plain ascii, with  two spaces and a tab\tand\nnewlines\r\n",
    "héllo wörld — ½ ∑ → 日本語のテキスト, 한국어, עברית, emoji 🎉👩‍👩‍👧 and a combining e\u0301",
    "\x00\x01 control bytes \ufeff BOM, \u2028 line separator, surrogate-free astral 𝔘𝔫𝔦",
    "   leading and trailing spaces   ",
    "def f(x):\n    return x ** 2  # indented code\n",
]
# Every spelling a document could use to forge a control token, alone and inside words.
FORGERIES = [*BPE_SPECIAL_TOKENS[:5], "<extra_id_0>", "<extra_id_99>", "x[MASK]y", "a<extra_id_7>b",
             "[PAD][EOT][CLS][SEP]", " [MASK] "]


@pytest.fixture(scope="module")
def pydoc_train():
    from gptjax.data.sources import load_documents

    return load_documents(DataConfig()).train


@pytest.fixture(scope="module")
def bpe(pydoc_train):
    return BpeTokenizer.train(pydoc_train, 1024)


def test_special_ids_exact(bpe):
    assert (bpe.pad_id, bpe.eot_id, bpe.cls_id, bpe.sep_id, bpe.mask_id) == (0, 1, 2, 3, 4)
    assert bpe.sentinel_ids.dtype == np.int32 and bpe.special_ids.dtype == np.int32
    np.testing.assert_array_equal(bpe.sentinel_ids, np.arange(5, 105))
    np.testing.assert_array_equal(bpe.special_ids, np.arange(105))
    assert [bpe.token(i) for i in range(5)] == ["[PAD]", "[EOT]", "[CLS]", "[SEP]", "[MASK]"]
    assert [bpe.token(i) for i in bpe.sentinel_ids] == [f"<extra_id_{i}>" for i in range(100)]
    assert bpe.vocab_size == 1024


def test_round_trip_unicode(bpe):
    for text in UNICODE_TEXTS:
        ids = bpe.encode(text)
        assert ids.dtype == np.int32 and ids.ndim == 1
        assert bpe.decode(ids) == text
        assert bpe.decode(ids.tolist()) == text
    # Characters never seen in training still encode (as bytes), so nothing is unknown.
    unseen = "ꙮ𓀀"
    assert bpe.decode(bpe.encode(unseen)) == unseen
    assert len(bpe.encode(unseen)) == len(unseen.encode("utf-8"))


def test_decode_jax_array_and_drops_specials(bpe):
    import jax.numpy as jnp

    ids = bpe.encode("return value")
    with_specials = np.concatenate([[bpe.cls_id], ids[:1], bpe.sentinel_ids[:2], ids[1:], [bpe.eot_id, 0, 0]])
    assert bpe.decode(jnp.asarray(with_specials, dtype=jnp.int32)) == "return value"
    assert bpe.decode(with_specials.reshape(1, -1)) == "return value"
    assert bpe.decode([]) == ""


def test_text_never_produces_special_ids(bpe, pydoc_train):
    for text in FORGERIES:
        ids = bpe.encode(text)
        assert not np.isin(ids, bpe.special_ids).any(), text
        assert bpe.decode(ids) == text
    # The whole training corpus too (it mentions "[MASK]"-like brackets and angle brackets often).
    ids = np.concatenate([bpe.encode(d) for d in pydoc_train[:20]])
    assert ids.min() >= 105 and ids.max() < bpe.vocab_size


def gpt2_byte_alphabet() -> set[str]:
    """GPT-2's printable stand-ins for the 256 bytes (Radford et al. 2019, encoder.py), written out."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b) for b in printable} | {chr(256 + n) for n in range(len(others))}


def test_compresses_and_is_byte_level(bpe, pydoc_train):
    """Ids 105..360 are the 256 single bytes; learned merges shorten the training text."""
    assert {bpe.token(i) for i in range(105, 105 + 256)} == gpt2_byte_alphabet()
    doc = pydoc_train[0]
    assert len(bpe.encode(doc)) < 0.6 * len(doc.encode("utf-8"))
    assert bpe.encode(" the").tolist() == [next(i for i in range(bpe.vocab_size) if bpe.token(i) == "Ġthe")]


def test_training_is_deterministic(pydoc_train, tmp_path):
    """Same documents → identical vocabulary and merges, also in a fresh process (new hash seeds)."""
    a = BpeTokenizer.train(pydoc_train[:30], 800)
    b = BpeTokenizer.train(pydoc_train[:30], 800)
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    code = ("import sys; from gptjax.data import BpeTokenizer; from gptjax.config import DataConfig;"
            "from gptjax.data.sources import load_documents;"
            "BpeTokenizer.train(load_documents(DataConfig()).train[:30], 800).save(sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.json")], check=True,
                   env={**os.environ, "PYTHONHASHSEED": "123"})
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "c.json").read_bytes()
    # A different corpus gives a different vocabulary, so the comparison above could fail.
    c = BpeTokenizer.train(pydoc_train[30:60], 800)
    c.save(tmp_path / "d.json")
    assert (tmp_path / "a.json").read_bytes() != (tmp_path / "d.json").read_bytes()


def test_save_load_equal(bpe, pydoc_train, tmp_path):
    path = tmp_path / "tokenizer.json"
    bpe.save(path)
    assert json.loads(path.read_text())["vocab_size"] == 1024
    assert list(tmp_path.iterdir()) == [path]  # one JSON file, no temporary left behind
    loaded = BpeTokenizer.load(path)
    assert loaded.vocab_size == bpe.vocab_size
    np.testing.assert_array_equal(loaded.special_ids, bpe.special_ids)
    for text in [*UNICODE_TEXTS, *FORGERIES, pydoc_train[3]]:
        np.testing.assert_array_equal(loaded.encode(text), bpe.encode(text))
    assert not np.isin(loaded.encode("[MASK] <extra_id_0>"), loaded.special_ids).any()


def test_pickle_and_deepcopy_keep_specials_out_of_text(bpe):
    """A copy sent to a worker process must encode exactly as the original, forgeries included."""
    import copy
    import pickle

    for other in (pickle.loads(pickle.dumps(bpe)), copy.deepcopy(bpe)):
        assert other.vocab_size == bpe.vocab_size
        for text in [*FORGERIES, UNICODE_TEXTS[2]]:
            np.testing.assert_array_equal(other.encode(text), bpe.encode(text))


def test_small_corpus_keeps_requested_vocab_size():
    """Too few merges for the vocabulary: the size stays as asked, the gap ids are never produced."""
    tok = BpeTokenizer.train(["ab ab ab cd"], 512)
    assert tok.vocab_size == 512
    ids = tok.encode("ab ab cd ef")
    assert ids.max() < 105 + 256 + 10
    assert tok.decode(ids) == "ab ab cd ef"
    assert tok.decode([511, 500]) == ""


def test_build_tokenizer_cache_and_errors(pydoc_train, tmp_path):
    cfg = DataConfig(tokenizer="bpe", tokenizer_vocab=600)
    cache = tmp_path / "tokenizer.json"
    trained = build_tokenizer(cfg, pydoc_train[:10], cache)
    assert isinstance(trained, BpeTokenizer) and trained.vocab_size == 600
    assert not cache.exists()  # the caller saves it, under its lock
    trained.save(cache)
    loaded = build_tokenizer(cfg, None, cache)  # no documents needed once cached
    np.testing.assert_array_equal(loaded.encode(pydoc_train[0]), trained.encode(pydoc_train[0]))
    with pytest.raises(ConfigError) as e:
        build_tokenizer(DataConfig(tokenizer="bpe", tokenizer_vocab=700), pydoc_train[:10], cache)
    assert "vocab_size 600" in str(e.value) and "data.tokenizer_vocab=700" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="needs training documents") as e:
        build_tokenizer(cfg, None, tmp_path / "absent.json")
    assert "\n" not in str(e.value)
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(ConfigError, match="cannot load the BPE tokenizer") as e:
        build_tokenizer(cfg, None, tmp_path / "bad.json")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="data.tokenizer_vocab must be >= 512 to train a BPE, got 511"):
        build_tokenizer(DataConfig(tokenizer="bpe", tokenizer_vocab=511), pydoc_train[:10])
    with pytest.raises(ConfigError, match="unknown data.tokenizer 'wordpiece'; known: byte, bpe"):
        build_tokenizer(DataConfig(tokenizer="wordpiece"))


def test_byte_tokenizer_unchanged():
    tok = build_tokenizer(DataConfig())
    assert isinstance(tok, ByteTokenizer)
    assert isinstance(build_tokenizer(DataConfig(), ["ignored"], None), ByteTokenizer)
    assert (tok.vocab_size, tok.eot_id, tok.pad_id) == (258, 256, 257)
    np.testing.assert_array_equal(tok.special_ids, [256, 257])
    text = "héllo 🎉"
    np.testing.assert_array_equal(tok.encode(text), list(text.encode("utf-8")))
    assert tok.decode([*text.encode("utf-8"), 256, 257]) == text
