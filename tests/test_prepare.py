"""`prepare`: sources into a token store, parallel, resumable and deterministic; bad input in one line.

Documents are read back from the store and compared with the corpus as written (byte tokenizer: tokens are
the UTF-8 bytes), so every source is checked against its own files.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gptjax.cli import main
from gptjax.config import ConfigError, DataConfig
from gptjax.data.corpora import held_out, parse_source, plan_units
from gptjax.data.prepare import prepare
from gptjax.data.store import TokenStore
from gptjax.data.tokenizers import BpeTokenizer

REPO = Path(__file__).resolve().parent.parent
EOT = 256
quiet = dict(progress=False, log=lambda *_: None)


def documents(root, split):
    """The documents of a byte-tokenized store's split, decoded, in store order."""
    reader = TokenStore(root).splits[split]
    tokens, docs = reader.read(0, reader.n_tokens)
    out = []
    for d in np.unique(docs):
        body = tokens[docs == d]
        assert body[0] == EOT and not np.any(body[1:] == EOT)
        out.append(body[1:].astype(np.uint8).tobytes().decode("utf-8"))
    return out


def tree(root):
    """Every file under root and its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*"))
            if p.is_file()}


def cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-m", "gptjax", "prepare", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def words(seed, n):
    rng = np.random.default_rng(seed)
    vocab = ["alpha", "beta", "gamma", "delta", "ünï", "code()", "\tindent", "x=1;"]
    return [" ".join(rng.choice(vocab, size=int(rng.integers(3, 40)))) for _ in range(n)]


# ---------------------------------------------------------------- sources


def test_a_text_file_is_one_stream_with_a_contiguous_validation_tail(tmp_path):
    text = "ACT I\n\n  Scene one.\n\nHAMLET: Who's there?\n\n\n" + "\n\n".join(words(0, 400)) + "\n"
    (tmp_path / "play.txt").write_text(text)
    prepare(f"text:{tmp_path / 'play.txt'}", tmp_path / "s", DataConfig(val_fraction=0.2), workers=1,
            unit_mb=0.002, **quiet)
    train, val = documents(tmp_path / "s", "train"), documents(tmp_path / "s", "val")
    assert len(train) == 1 and len(val) == 1
    assert train[0] + val[0] == text  # blank lines, indentation and all
    assert 0.2 * len(text.encode()) - 200 < len(val[0].encode()) <= 0.2 * len(text.encode())
    assert train[0].endswith("\n") and not val[0][0].isspace()  # cut at the start of a line


def test_text_split_makes_documents_of_a_separator(tmp_path):
    docs = words(1, 200)
    (tmp_path / "c.txt").write_text("\n\n".join(docs) + "\n\n\n\n")
    cfg = DataConfig(text_split="\\n\\n", val_fraction=0.1)
    prepare(f"text:{tmp_path / 'c.txt'}", tmp_path / "s", cfg, workers=1, unit_mb=0.001, **quiet)
    train, val = documents(tmp_path / "s", "train"), documents(tmp_path / "s", "val")
    assert train + val == docs  # in order: the validation documents are the file's last ones
    assert 15 <= len(val) <= 25


def test_a_directory_or_glob_holds_whole_files_out(tmp_path):
    texts = {f"d/{i:02d}.txt": f"file {i}\n" + "\n".join(words(i, 5)) for i in range(20)}
    texts[".hidden/x.txt"] = "never read"
    for name, text in texts.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    prepare(f"text:{tmp_path / 'd'}", tmp_path / "s", DataConfig(val_fraction=0.1), workers=1, unit_mb=0.001,
            **quiet)
    train, val = documents(tmp_path / "s", "train"), documents(tmp_path / "s", "val")
    assert len(val) == 2 and sorted(train + val) == sorted(t for n, t in texts.items() if n.startswith("d/"))
    prepare(str(tmp_path / "d" / "1*.txt"), tmp_path / "g", DataConfig(val_fraction=0.1), workers=1, **quiet)
    both = documents(tmp_path / "g", "train") + documents(tmp_path / "g", "val")
    assert sorted(both) == sorted(texts[f"d/1{i}.txt"] for i in range(10))


def test_jsonl_records_by_a_named_field_held_out_by_a_fixed_hash(tmp_path):
    records = [{"body": t, "id": i} for i, t in enumerate(words(2, 300))]
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    (tmp_path / "a.jsonl").write_text("\n".join(lines[:200]) + "\n\n")
    (tmp_path / "b.jsonl").write_text("\n".join(lines[200:]))
    cfg = DataConfig(text_field="body", val_fraction=0.2)
    prepare(f"jsonl:{tmp_path}", tmp_path / "s", cfg, workers=1, unit_mb=0.003, **quiet)
    train, val = documents(tmp_path / "s", "train"), documents(tmp_path / "s", "val")
    offsets, expected_val = {}, []
    for name, chunk in (("a.jsonl", lines[:200]), ("b.jsonl", lines[200:])):
        position = 0
        for line in chunk:
            if held_out(f"{name}@{position}", 0.2):
                expected_val.append(json.loads(line)["body"])
            offsets[name] = position = position + len(line.encode()) + 1
    assert val == expected_val and sorted(train + val) == sorted(r["body"] for r in records)
    assert 40 <= len(val) <= 80


def test_parquet_streamed_by_row_groups(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = words(3, 500)
    table = pa.table({"text": texts, "n": list(range(500))})
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=50)
    prepare(str(tmp_path / "c.parquet"), tmp_path / "s", DataConfig(val_fraction=0.1), workers=1,
            unit_mb=0.001, **quiet)
    train, val = documents(tmp_path / "s", "train"), documents(tmp_path / "s", "val")
    assert val == [t for i, t in enumerate(texts) if held_out(f"c.parquet#{i}", 0.1)]
    assert train == [t for i, t in enumerate(texts) if not held_out(f"c.parquet#{i}", 0.1)]
    assert len(plan_units(str(tmp_path / "c.parquet"), DataConfig(), 1)) == 10  # one per row group


def test_tfds_array_record_shard_by_shard(tmp_path_factory):
    from tests.test_data import TRAIN_TEXTS, VAL_TEXTS, TinyCorpus, TinyTrainOnly
    from tests.test_data import prepare as prepare_tfds

    data_dir = prepare_tfds(tmp_path_factory, "tfds_store", TinyCorpus, TinyTrainOnly)
    root = tmp_path_factory.mktemp("out")
    cfg = DataConfig(tfds_data_dir=data_dir)
    prepare("tfds:tiny_corpus", root / "s", cfg, workers=1, **quiet)
    assert sorted(documents(root / "s", "train")) == sorted(TRAIN_TEXTS)
    assert sorted(documents(root / "s", "val")) == sorted(VAL_TEXTS)
    prepare("tfds:tiny_train_only", root / "t", cfg, workers=1, **quiet)
    both = documents(root / "t", "train") + documents(root / "t", "val")
    assert sorted(both) == sorted(TRAIN_TEXTS) and documents(root / "t", "val")
    assert "tensorflow" not in sys.modules


def test_source_names():
    assert parse_source("corpus.jsonl") == ("jsonl", "corpus.jsonl")
    assert parse_source("data/x.parquet") == ("parquet", "data/x.parquet")
    assert parse_source("book.txt") == ("text", "book.txt")
    assert parse_source("text:a.jsonl") == ("text", "a.jsonl")
    assert parse_source("pydoc") == ("pydoc", "")
    with pytest.raises(ConfigError, match="needs a path"):
        parse_source("jsonl:")


# ---------------------------------------------------------------- determinism, resume, tokenizers


def test_the_same_corpus_gives_a_byte_identical_store_with_any_number_of_processes(tmp_path):
    (tmp_path / "c").mkdir()
    for i in range(12):
        (tmp_path / "c" / f"{i}.txt").write_text("\n".join(words(10 + i, 200)))
    one = cli(f"text:{tmp_path / 'c'}", tmp_path / "one", "--workers", "1", "--unit-mb", "0.02")
    two = cli(f"text:{tmp_path / 'c'}", tmp_path / "two", "--workers", "2", "--unit-mb", "0.02")
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert "training tokens" in two.stdout
    assert tree(tmp_path / "one") == tree(tmp_path / "two")
    assert len(TokenStore(tmp_path / "one").manifest["splits"]["train"]["shards"]) > 3
    again = cli(f"text:{tmp_path / 'c'}", tmp_path / "one", "--workers", "2", "--unit-mb", "0.02")
    assert again.returncode == 0 and "already prepared" in again.stdout


def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_store(tmp_path):
    corpus = tmp_path / "big.txt"
    corpus.write_text("\n".join(words(7, 20_000)))  # ~ 1.3 MB, BPE-tokenized in a second or two
    BpeTokenizer.train(words(8, 2000), 1024).save(tmp_path / "tok.json")
    args = [f"text:{corpus}", None, "data.tokenizer=bpe", "data.tokenizer_vocab=1024", "--tokenizer",
            tmp_path / "tok.json", "--workers", "1", "--unit-mb", "0.02", "--quiet"]
    reference = cli(*[tmp_path / "straight" if a is None else a for a in args])
    assert reference.returncode == 0, reference.stderr
    killed = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.Popen([sys.executable, "-m", "gptjax", "prepare",
                             *[str(killed if a is None else a) for a in args]], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list((killed / "progress").glob("*.json"))) < 5:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "manifest.json").exists()
    finished = len(list((killed / "progress").glob("*.json")))
    resumed = cli(*[killed if a is None else a for a in args])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {killed}: {finished} of " in resumed.stdout
    assert tree(killed) == tree(tmp_path / "straight")


def test_tokenizers_never_mix_in_one_store(tmp_path):
    (tmp_path / "c.txt").write_text("\n".join(words(4, 500)))
    assert cli(tmp_path / "c.txt", tmp_path / "s").returncode == 0
    before = tree(tmp_path / "s")
    mixed = cli(tmp_path / "c.txt", tmp_path / "s", "data.tokenizer=bpe", "data.tokenizer_vocab=600")
    assert mixed.returncode == 2
    assert mixed.stderr.strip().splitlines() == [
        f"error: store {tmp_path / 's'} holds tokens of another tokenizer (tokenizer=byte; this command: "
        "tokenizer=bpe, tokenizer_sample_bytes=64000000, tokenizer_vocab=600); tokenizers never mix in one "
        "store: use another directory"]
    other = cli(tmp_path / "c.txt", tmp_path / "s", "data.val_fraction=0.3")
    assert other.returncode == 2 and "with other options" in other.stderr
    assert tree(tmp_path / "s") == before


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing lost


def one_line_error(capsys, *args) -> str:
    assert main(["prepare", *map(str, args), "--quiet", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    assert one_line_error(capsys, tmp_path / "empty.txt", tmp_path / "s1").endswith("empty.txt is empty")
    (tmp_path / "blank.txt").write_text("   \n\n  \n")
    assert one_line_error(capsys, tmp_path / "blank.txt", tmp_path / "s0").endswith("holds only whitespace")
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)))
    assert "img.png is binary, not text (a NUL byte at offset 8)" in \
        one_line_error(capsys, f"text:{tmp_path / 'img.png'}", tmp_path / "s2")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 3)
    assert "latin1.txt is not UTF-8 text (invalid byte b'\\xe9' at offset 3)" in \
        one_line_error(capsys, tmp_path / "latin1.txt", tmp_path / "s3")
    assert "does not exist" in one_line_error(capsys, tmp_path / "nowhere.txt", tmp_path / "s4")
    assert "prepare takes data.* overrides only" in \
        one_line_error(capsys, "pydoc", tmp_path / "s5", "train.steps=3")
    for name in ("s1", "s2", "s3", "s4", "s5"):
        assert not (tmp_path / name).exists()  # refused before anything was written


def test_bad_jsonl_lines_are_located_and_finished_shards_kept(tmp_path, capsys):
    good = [json.dumps({"text": t}) for t in words(5, 400)]
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "a.jsonl").write_text("\n".join(good) + "\n")
    (tmp_path / "j" / "b.jsonl").write_text("\n".join(good[:50] + ["{not json"] + good[50:]) + "\n")
    message = one_line_error(capsys, f"jsonl:{tmp_path / 'j'}", tmp_path / "s", "--unit-mb", "0.005")
    assert message.startswith(f"error: {tmp_path / 'j' / 'b.jsonl'}, line 51: line is not JSON (")
    kept = list((tmp_path / "s" / "progress").glob("*.json"))
    assert kept  # the units of a.jsonl, done before the bad line was met, stay for a resume
    (tmp_path / "k.jsonl").write_text(good[0] + "\n" + json.dumps({"body": "x"}) + "\n")
    assert one_line_error(capsys, tmp_path / "k.jsonl", tmp_path / "t").endswith(
        "k.jsonl, line 2: record has no field data.text_field='text'")
    (tmp_path / "n.jsonl").write_text(json.dumps({"text": 3}) + "\n")
    assert "field 'text' is int, not a string" in one_line_error(capsys, tmp_path / "n.jsonl", tmp_path / "u")


def test_parquet_without_the_column_is_refused_before_any_work(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["a b c"] * 10}), tmp_path / "c.parquet")
    message = one_line_error(capsys, tmp_path / "c.parquet", tmp_path / "s")
    assert message.endswith("c.parquet has no column data.text_field='text'; columns: content")
    assert not (tmp_path / "s").exists()
    (tmp_path / "fake.parquet").write_text("not parquet at all")
    assert "fake.parquet is not a Parquet file" in one_line_error(capsys, tmp_path / "fake.parquet",
                                                                  tmp_path / "t")


def test_a_truncated_shard_is_refused_then_prepared_again(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("\n".join(words(6, 3000)))
    assert main(["prepare", str(tmp_path / "c.txt"), str(tmp_path / "s"), "--quiet", "--workers", "1",
                 "--unit-mb", "0.02"]) == 0
    before = tree(tmp_path / "s")
    shard = tmp_path / "s" / "train" / "000002.tokens"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(ConfigError, match="train/000002.tokens is truncated or damaged"):
        TokenStore(tmp_path / "s")
    capsys.readouterr()
    assert main(["prepare", str(tmp_path / "c.txt"), str(tmp_path / "s"), "--quiet", "--workers", "1",
                 "--unit-mb", "0.02"]) == 0
    assert "shard train/000002 is damaged; preparing its unit again" in capsys.readouterr().out
    assert tree(tmp_path / "s") == before


def test_a_bpe_store_holds_the_tokens_of_encoding_the_whole_text(tmp_path, monkeypatch):
    import gptjax.data.prepare as prepare_module

    monkeypatch.setattr(prepare_module, "ENCODE_CHARS", 300)  # many pieces per unit
    text = "\n".join(words(9, 3000)) + "\n\n  indented\n\n\n\tlast line\n"
    (tmp_path / "c.txt").write_text(text)
    cfg = DataConfig(tokenizer="bpe", tokenizer_vocab=600, val_fraction=0.1)
    prepare(str(tmp_path / "c.txt"), tmp_path / "s", cfg, workers=1, unit_mb=0.02, tokenizer_sample_mb=0.05,
            **quiet)
    store = TokenStore(tmp_path / "s")
    tokenizer = store.load_tokenizer()
    assert store.tokenizer["kind"] == "bpe" and store.dtype == np.uint16
    assert len(store.manifest["splits"]["train"]["shards"]) > 3
    for split in ("train", "val"):
        reader = store.splits[split]
        tokens = reader.read(0, reader.n_tokens)[0]
        assert tokens[0] == tokenizer.eot_id and not np.any(tokens[1:] == tokenizer.eot_id)
        part = tokenizer.decode(tokens[1:])
        assert (text.startswith if split == "train" else text.endswith)(part)
        np.testing.assert_array_equal(tokens[1:], tokenizer.encode(part))


def test_a_hugging_face_tokenizer_file(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(words(11, 500), trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "c.txt").write_text("\n".join(words(12, 500)))
    refused = cli(tmp_path / "c.txt", tmp_path / "s", "data.tokenizer=hf")
    assert refused.returncode == 2 and "data.tokenizer=hf needs --tokenizer PATH" in refused.stderr
    assert not (tmp_path / "s").exists()
    done = cli(tmp_path / "c.txt", tmp_path / "s", "data.tokenizer=hf", "--tokenizer",
               tmp_path / "tokenizer.json")
    assert done.returncode == 0, done.stderr
    store = TokenStore(tmp_path / "s")
    assert store.tokenizer["kind"] == "hf" and store.tokenizer["eot_id"] == 0
    reader = store.splits["train"]
    tokens = reader.read(0, reader.n_tokens)[0]
    np.testing.assert_array_equal(tokens[1:], hf.encode(hf.decode(tokens[1:].tolist())).ids)


@pytest.mark.parametrize("separator", [b"", b"\n\n", b"<doc>"])
def test_record_starts_against_a_brute_force_reference(tmp_path, separator):
    from gptjax.data.corpora import _record_start

    rng = np.random.default_rng(len(separator))
    # Sparse separators (every ~20 KB) so searches run across the reader's 64 KiB blocks.
    data = bytearray(rng.choice(list(b"ab \t"), size=300_000).astype(np.uint8).tobytes())
    for at in rng.integers(0, len(data) - 8, size=15):
        data[at:at + max(1, len(separator))] = separator or b"\n"
    data[65_535:65_537] = separator[:2] or b"\n"  # one straddles the first block's end
    data = bytes(data)
    (tmp_path / "f").write_bytes(data)
    if separator:
        starts = [i + len(separator) for i in range(len(data)) if data.startswith(separator, i)]
    else:
        starts = [i + 1 for i in range(len(data) - 1) if data[i] == 10 and not chr(data[i + 1]).isspace()]
    with open(tmp_path / "f", "rb") as f:
        for offset in [*rng.integers(1, len(data), size=60), *starts[:5], 65_536, 65_537]:
            expected = min([s for s in starts if s >= offset], default=len(data))
            assert _record_start(f, int(offset), separator, len(data)) == expected, offset
