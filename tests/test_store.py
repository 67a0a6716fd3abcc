"""The token store's reader: streams across shards, windows by index, batches per (seed, step) and rows,
tokenizer identity, and the checks on opening; against the in-memory pipeline and plain-NumPy references."""

import dataclasses
import json

import numpy as np
import pytest
from grain.experimental import index_shuffle

from gptjax.config import ConfigError, DataConfig
from gptjax.data import ByteTokenizer, build_data, unigram_entropy
from gptjax.data.prepare import prepare
from gptjax.data.store import (
    SplitReader,
    StoreData,
    TokenStore,
    addressable_rows,
    process_rows,
    run_tokenizer,
    store_data,
    token_dtype,
    tokenizer_identity,
)
from gptjax.data.tokenizers import BpeTokenizer
from tests.test_data import assert_batches_equal, reference_segments

EOT = 256
quiet = dict(progress=False, log=lambda *_: None)


@pytest.fixture(scope="module")
def pydoc_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("pydoc") / "store"
    prepare("pydoc", root, DataConfig(), workers=1, **quiet)
    return root


def cfg_of(root, **kw):
    return DataConfig(source=f"store:{root}", **{"seq_len": 64, "batch_size": 8, **kw})


def test_pydoc_store_holds_the_in_memory_pipelines_streams(pydoc_store):
    memory = build_data(DataConfig(source="pydoc", seq_len=64, batch_size=8), seed=0)
    store = TokenStore(pydoc_store)
    train, val = store.splits["train"], store.splits["val"]
    tokens, docs = train.read(0, train.n_tokens)
    np.testing.assert_array_equal(tokens, memory.train_tokens)
    np.testing.assert_array_equal(tokens == EOT, np.diff(np.concatenate([[0], docs])) == 1)
    assert train.n_documents == len(memory.train_docs) and val.n_documents == len(memory.val_docs)
    # Same split, same packing: the validation batches are the in-memory pipeline's, row for row.
    data = store_data(cfg_of(pydoc_store), seed=3)
    for a, b in zip(data.val_batches(3), memory.val_batches(3), strict=True):
        assert_batches_equal(a, b)
    np.testing.assert_array_equal(data.val_tokens, memory.val_tokens)


def test_windows_follow_the_spec_and_visit_each_once_per_epoch(pydoc_store):
    data = store_data(cfg_of(pydoc_store, batch_size=7), seed=5)
    stream, doc = TokenStore(pydoc_store).splits["train"].read(0, data._train.split.n_tokens)
    n, window = data.windows_per_epoch, 65
    assert n == (len(stream) - window) // window
    for step in (0, 1, n // 7, n // 7 + 1):  # the last crosses into epoch 1
        batch = data.train_batch(step)
        for b in range(7):
            g = step * 7 + b
            rng = np.random.default_rng([5, g // n])
            offset = int(rng.integers(0, 65))
            start = offset + index_shuffle(g % n, n - 1, int(rng.integers(0, 1 << 32)), 4) * window
            np.testing.assert_array_equal(batch.inputs[b], stream[start:start + 64])
            np.testing.assert_array_equal(batch.targets[b], stream[start + 1:start + 65])
            assert list(batch.segment_ids[b]) == reference_segments(doc[start:start + 64])
    visited = np.concatenate([data._train.starts(s) for s in range(3 * n // 7 + 1)])[: 3 * n]
    for epoch in range(3):
        offset = int(np.random.default_rng([5, epoch]).integers(0, 65))
        index = (visited[epoch * n:(epoch + 1) * n] - offset) // window
        assert sorted(index) == list(range(n))


def test_a_batch_is_a_pure_function_of_seed_and_step(pydoc_store):
    a, b = store_data(cfg_of(pydoc_store), seed=0), store_data(cfg_of(pydoc_store), seed=0)
    assert_batches_equal(a.train_batch(17), b.train_batch(17))
    b.train_batch(3)  # what was read before does not matter
    assert_batches_equal(a.train_batch(4), b.train_batch(4))
    other = store_data(cfg_of(pydoc_store), seed=1)
    assert not np.array_equal(a.train_batch(17).inputs, other.train_batch(17).inputs)
    assert_batches_equal(a.val_batches(2)[1], other.val_batches(2)[1])  # validation ignores the seed


def test_each_process_reads_only_its_rows_and_together_the_global_batch(pydoc_store):
    data = store_data(cfg_of(pydoc_store), seed=0)
    assert [list(process_rows(8, i, 4)) for i in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    for step in (0, 9):
        whole = data.train_batch(step)
        parts = [data.train_batch(step, rows=process_rows(8, i, 2)) for i in range(2)]
        for field, *pieces in zip(whole, *parts, strict=True):
            np.testing.assert_array_equal(np.concatenate(pieces), field)
        odd = data.train_batch(step, rows=[7, 1])
        np.testing.assert_array_equal(odd.inputs, whole.inputs[[7, 1]])
    with pytest.raises(ConfigError, match="divisible by the 3 processes"):
        process_rows(8, 0, 3)


def test_addressable_rows_of_a_real_batch_sharding():
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    assert list(addressable_rows(sharding, 16)) == list(range(16))  # one process holds every device


def test_reads_cross_shard_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(SplitReader, "OPEN_SHARDS", 2)  # shards are closed and reopened as reads move on
    corpus = tmp_path / "book.txt"
    rng = np.random.default_rng(0)
    lines = ["".join(rng.choice(list("abcdé \t"), size=int(rng.integers(0, 60)))) for _ in range(3000)]
    text = "\n".join(lines) + "\n"
    corpus.write_text(text)
    prepare(f"text:{corpus}", tmp_path / "s", DataConfig(), workers=1, unit_mb=0.01, **quiet)
    store = TokenStore(tmp_path / "s")
    train = store.splits["train"]
    assert len(train.shards) > 5
    data = corpus.read_bytes()
    expected = np.concatenate([[EOT], np.frombuffer(data, np.uint8)[: train.n_tokens - 1]])
    tokens, docs = train.read(0, train.n_tokens)
    np.testing.assert_array_equal(tokens, expected)
    assert set(docs) == {1}  # one document across every shard
    for start in range(0, train.n_tokens - 500, 977):
        np.testing.assert_array_equal(train.read(start, start + 500)[0], expected[start:start + 500])
    assert len(train._open) == 2


def test_token_dtype_and_tokenizer_identity(tmp_path):
    assert token_dtype(258) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(250_000) == np.uint32
    docs = ["the cat sat on the mat " * 20, "a dog and a cat " * 30]
    bpe = BpeTokenizer.train(docs, 512)
    bpe.save(tmp_path / "t.json")
    assert tokenizer_identity(BpeTokenizer.load(tmp_path / "t.json")) == tokenizer_identity(bpe)
    other = BpeTokenizer.train(docs[:1], 512)
    assert tokenizer_identity(other)["sha256"] != tokenizer_identity(bpe)["sha256"]
    assert tokenizer_identity(ByteTokenizer())["kind"] == "byte"


def test_a_store_of_another_tokenizer_is_refused(pydoc_store, tmp_path):
    store = TokenStore(pydoc_store)
    with pytest.raises(ConfigError, match=r"tokenized with byte \(vocabulary 258.*data.tokenizer=bpe; set "
                                          r"data.tokenizer=byte"):
        run_tokenizer(cfg_of(pydoc_store, tokenizer="bpe"), store, None)
    bpe_store = tmp_path / "bpe"
    prepare("pydoc", bpe_store, DataConfig(tokenizer="bpe", tokenizer_vocab=600), workers=1, **quiet)
    cfg = cfg_of(bpe_store, tokenizer="bpe", tokenizer_vocab=600)
    tokenizer = run_tokenizer(cfg, TokenStore(bpe_store), None)
    assert tokenizer_identity(tokenizer) == TokenStore(bpe_store).tokenizer
    assert TokenStore(bpe_store).dtype == np.uint16
    stranger = tmp_path / "workdir_tokenizer.json"
    BpeTokenizer.train(["something else entirely " * 50], 600).save(stranger)
    with pytest.raises(ConfigError, match=r"this run's tokenizer \(.*workdir_tokenizer.json\) is bpe"):
        run_tokenizer(cfg, TokenStore(bpe_store), stranger)
    with pytest.raises(ConfigError, match="data.tokenizer_vocab=700; set data.tokenizer_vocab=600"):
        run_tokenizer(dataclasses.replace(cfg, tokenizer_vocab=700), TokenStore(bpe_store), None)


def test_opening_checks_every_shard_and_the_manifest(pydoc_store, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(pydoc_store, copy)
    shard = copy / "train" / "000000.tokens"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ConfigError, match=r"shard file train/000000.tokens is truncated or damaged "
                                          r"\(\d+ bytes, the manifest says \d+\)"):
        TokenStore(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ConfigError, match="not a prepared token store.*run prepare again to resume"):
        TokenStore(copy)
    (copy / "manifest.json").write_text(json.dumps({"format": "something/1"}))
    with pytest.raises(ConfigError, match="is not a gptjax.TokenStore/1 manifest"):
        TokenStore(copy)
    with pytest.raises(ConfigError, match="not a prepared token store"):
        TokenStore(tmp_path / "nowhere")


def test_short_splits_are_refused_with_the_numbers(pydoc_store):
    with pytest.raises(ConfigError, match=r"validation split too short: \d+ tokens; data.seq_len=100000"):
        StoreData(cfg_of(pydoc_store, seq_len=100_000), 0, TokenStore(pydoc_store), ByteTokenizer())


# ---------------------------------------------------------------- training from a store


def test_training_reads_the_store_and_refuses_another_tokenizer_in_one_line(pydoc_store, tmp_path, capsys):
    from gptjax.cli import main
    from gptjax.metrics import read_metrics
    from gptjax.train import train
    from tests.conftest import tiny_experiment

    cfg = tiny_experiment(steps=4, eval_every=2)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=f"store:{pydoc_store}"))
    result = train(cfg, tmp_path / "w", log=lambda *_: None)
    memory = build_data(DataConfig(source="pydoc"), seed=0)
    # Same validation text (the store holds pydoc's split), so the same unigram baseline.
    assert result["val_unigram_entropy"] == pytest.approx(unigram_entropy(memory.val_tokens))
    assert [r["step"] for r in read_metrics(tmp_path / "w") if r["split"] == "val"] == [2, 4]
    code = main(["train", "default", f"data.source=store:{pydoc_store}", "data.tokenizer=bpe",
                 "--workdir", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "was tokenized with byte (vocabulary 258" in err[0]
    assert not (tmp_path / "x").exists()
    code = main(["train", "default", f"data.source=store:{pydoc_store}", "objective.name=gpt1_finetune",
                 "--workdir", str(tmp_path / "y")])
    assert code == 2 and "gpt1_finetune needs labelled examples" in capsys.readouterr().err


@pytest.mark.slow
def test_kill_9_then_resume_on_a_store_is_bit_identical(pydoc_store, tmp_path):
    import subprocess

    from tests.test_guards import REPO, _command, _final_params, _wait_for_step

    source = f"data.source=store:{pydoc_store}"
    cmd, env = _command(tmp_path, tmp_path / "straight", "train.steps=30", source)
    subprocess.run(cmd, env=env, cwd=REPO, check=True, capture_output=True, timeout=300)
    workdir = tmp_path / "killed"
    cmd, env = _command(tmp_path, workdir, "train.steps=30", source)
    for target in (7, 18):
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_step(workdir, target, proc)
        proc.kill()
        proc.wait()
    subprocess.run(cmd, env=env, cwd=REPO, check=True, capture_output=True, timeout=300)
    for a, b in zip(_final_params(workdir), _final_params(tmp_path / "straight"), strict=True):
        np.testing.assert_array_equal(a, b)
