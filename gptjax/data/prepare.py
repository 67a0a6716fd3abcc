"""`python -m gptjax prepare SOURCE STORE`: tokenize a corpus once into a token store (`store.py`).

The source is planned into work units (`corpora.py`) and the units are tokenized by a pool of
processes, one shard per unit and split. Each finished unit writes its shards, then a progress record,
both by atomic rename, so an interrupted run (Ctrl-C, kill -9, a full disk) keeps every finished unit
and the same command resumes with the rest. The manifest is written last, from the progress records in
unit order, so the store is byte-identical however many processes made it and however often it was
resumed. A store remembers its plan (source, options, units) and tokenizer: preparing something else
into it is refused, so tokenizers never mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from gptjax.config import ConfigError, DataConfig
from gptjax.data.corpora import CorpusError, Unit, line_of, plan_units, unit_documents
from gptjax.data.store import (
    FORMAT,
    SPLITS,
    check_shard,
    describe_tokenizer,
    token_dtype,
    tokenizer_identity,
    write_atomic,
    write_shard,
)
from gptjax.data.tokenizers import BpeTokenizer, ByteTokenizer, HfTokenizer, Tokenizer

# The DataConfig fields that shape a store; the others (seq_len, batch_size, …) are the run's business.
STORE_OPTIONS = ("tokenizer", "tokenizer_vocab", "val_fraction", "text_split", "text_field", "tfds_data_dir",
                 "tfds_train_split", "tfds_val_split", "tfds_text_key")
ENCODE_CHARS = 1 << 20  # a long document is encoded in pieces of about this many characters
ENCODE_BATCH = 1024  # short documents are encoded this many at a time


def _canonical(value) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def build_plan(spec: str, cfg: DataConfig, unit_bytes: int, tokenizer_file: Path | None,
               tokenizer_sample_bytes: int) -> tuple[dict, list[Unit]]:
    """The plan of preparing `spec` (what a resumed run must agree with) and its units."""
    units = plan_units(spec, cfg, unit_bytes)
    options = {name: getattr(cfg, name) for name in STORE_OPTIONS}
    if cfg.tokenizer != "bpe":
        options.pop("tokenizer_vocab")
    if tokenizer_file is not None:
        options["tokenizer_file_sha256"] = hashlib.sha256(tokenizer_file.read_bytes()).hexdigest()
    elif cfg.tokenizer == "bpe":
        options["tokenizer_sample_bytes"] = tokenizer_sample_bytes
    plan = {"format": FORMAT, "source": spec, "options": options, "unit_bytes": unit_bytes,
            "units": [u.to_json() for u in units]}
    return plan, units


def _check_store_dir(root: Path, plan: dict) -> bool:
    """True if `root` holds this plan already (resume); refuse one holding something else."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise ConfigError(f"store {root} exists and is not a directory")
    previous = _read_json(root / "plan.json")
    if previous is None:
        if any(root.iterdir()):
            raise ConfigError(f"store {root} exists and is not a token store; use a new directory")
        return False
    tokenizer_options = lambda p: {k: v for k, v in p.get("options", {}).items() if k.startswith("tokenizer")}
    if tokenizer_options(previous) != tokenizer_options(plan):
        old, new = (", ".join(f"{k}={v}" for k, v in sorted(tokenizer_options(p).items()))
                    for p in (previous, plan))
        raise ConfigError(f"store {root} holds tokens of another tokenizer ({old}; this command: {new}); "
                          "tokenizers never mix in one store: use another directory")
    if previous != plan:
        what = [k for k in ("source", "options", "unit_bytes", "units") if previous.get(k) != plan.get(k)]
        raise ConfigError(f"store {root} was prepared from {previous.get('source')!r} with other "
                          f"{', '.join(what)} (the corpus changed, or other options); use another directory "
                          "or remove it")
    return True


def _given_tokenizer(cfg: DataConfig, tokenizer_file: Path | None) -> Tokenizer | None:
    """The tokenizer the command names (byte, or a file), loaded before anything is written; None for a
    BPE still to be trained."""
    if cfg.tokenizer == "byte":
        return ByteTokenizer()
    if tokenizer_file is None:
        if cfg.tokenizer == "hf":
            raise ConfigError("data.tokenizer=hf needs --tokenizer PATH (a tokenizer.json, e.g. an import-hf "
                              "workdir's)")
        return None
    tokenizer = (BpeTokenizer if cfg.tokenizer == "bpe" else HfTokenizer).load(tokenizer_file)
    if cfg.tokenizer == "bpe" and tokenizer.vocab_size != cfg.tokenizer_vocab:
        raise ConfigError(f"--tokenizer {tokenizer_file} has vocab_size {tokenizer.vocab_size}, but "
                          f"data.tokenizer_vocab={cfg.tokenizer_vocab}")
    return tokenizer


def _trained_tokenizer(cfg: DataConfig, root: Path, units: list[Unit], sample_bytes: int, log) -> Tokenizer:
    """The store's BPE: its saved copy when resuming, else one trained on the first `sample_bytes` of
    training text (in unit order, so the same corpus gives the same tokenizer)."""
    saved = root / "tokenizer.json"
    if saved.exists():
        return BpeTokenizer.load(saved)
    texts, total = [], 0
    for unit in units:
        for doc in unit_documents(unit, cfg):
            if doc.split == "train" and total < sample_bytes:
                texts.append(doc.text[:sample_bytes - total])
                total += len(texts[-1])
        if total >= sample_bytes:
            break
    log(f"training a {cfg.tokenizer_vocab}-token BPE on {total / 1e6:.1f} MB of training text")
    tokenizer = BpeTokenizer.train(texts, cfg.tokenizer_vocab)
    tokenizer.save(saved)
    return tokenizer


def _encode(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    if isinstance(tokenizer, ByteTokenizer):
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]
    # encode_batch keeps the tokenizer's encode_special_tokens switch: text never becomes a special id.
    encodings = tokenizer._hf.encode_batch(texts, add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int64) for e in encodings]


def _cuts(text: str) -> list[str]:
    """`text` in pieces of about ENCODE_CHARS, cut after a newline followed by non-whitespace, where
    GPT-2's pre-tokenizer splits anyway, so the pieces encode as the whole would."""
    pieces, start = [], 0
    while len(text) - start > ENCODE_CHARS:
        cut, at = -1, start + ENCODE_CHARS
        while (at := text.find("\n", at)) >= 0:
            if at + 1 < len(text) and not text[at + 1].isspace():
                cut = at + 1
                break
            at += 1
        if cut < 0:
            break
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


_WORKER: dict = {}


def _init_worker(cfg: DataConfig, root: Path, tokenizer: Tokenizer, units: list[Unit]) -> None:
    _WORKER.update(cfg=cfg, root=root, tokenizer=tokenizer, units=units)


def tokenize_unit(index: int) -> dict:
    """Tokenize unit `index` into its shards and write its progress record; returns the record."""
    cfg, root, tokenizer, units = (_WORKER[k] for k in ("cfg", "root", "tokenizer", "units"))
    dtype = token_dtype(tokenizer.vocab_size)
    pieces: dict[str, list[tuple[np.ndarray, bool]]] = {split: [] for split in SPLITS}
    pending: list[tuple[str, str, bool]] = []

    def flush() -> None:
        encoded = _encode(tokenizer, [text for _, text, _ in pending])
        for (split, _, new), tokens in zip(pending, encoded, strict=True):
            pieces[split].append((tokens.astype(dtype), new))
        pending.clear()

    for doc in unit_documents(units[index], cfg):
        for i, piece in enumerate(_cuts(doc.text)):
            pending.append((doc.split, piece, doc.new and i == 0))
        if len(pending) >= ENCODE_BATCH:
            flush()
    flush()
    record = {"unit": index, "size": units[index].size,
              **{split: write_shard(root, split, index, pieces[split], tokenizer.eot_id, dtype)
                 for split in SPLITS}}
    write_atomic(root / "progress" / f"{index:06d}.json", _canonical(record))
    return record


def _finished(root: Path, n_units: int, dtype: np.dtype) -> dict[int, dict]:
    """Progress records of units whose shards are intact; a damaged shard's unit is done again."""
    done = {}
    for index in range(n_units):
        record = _read_json(root / "progress" / f"{index:06d}.json")
        if record is None:
            continue
        try:
            for split in SPLITS:
                if record[split] is not None:
                    check_shard(root, record[split], dtype)
        except ConfigError:
            continue
        done[index] = record
    return done


def _reopen(root: Path, manifest: dict, units: list[Unit]) -> str | None:
    """Progress records again for a finished store's intact units; the first damaged shard's name."""
    records = {i: {"unit": i, "size": u.size, **dict.fromkeys(SPLITS)} for i, u in enumerate(units)}
    dtype, damaged = np.dtype(manifest["dtype"]), None
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            index = int(shard["name"].rsplit("/", 1)[1])
            if records[index] is None:
                continue
            try:
                check_shard(root, shard, dtype)
                records[index][split] = shard
            except ConfigError:
                damaged = damaged or shard["name"]
                records[index] = None
    if damaged:
        for index, record in records.items():
            if record is not None:
                write_atomic(root / "progress" / f"{index:06d}.json", _canonical(record))
        (root / "manifest.json").unlink()
    return damaged


def prepare(spec: str, store: Path, cfg: DataConfig, *, workers: int | None = None, unit_mb: float = 32.0,
            tokenizer_file: Path | None = None, tokenizer_sample_mb: float = 64.0, progress: bool = True,
            log=print) -> dict:
    """Tokenize source `spec` into the store at `store` (resuming a matching unfinished one); the manifest.

    ConfigError (one line) on bad input, before any work where it can be seen from file names, sizes
    and headers, and otherwise as soon as a worker meets it, keeping every shard already finished.
    """
    root = Path(store).expanduser()
    if tokenizer_file is not None:
        tokenizer_file = Path(tokenizer_file).expanduser()
        if not tokenizer_file.is_file():
            raise ConfigError(f"--tokenizer {tokenizer_file} is not a file")
    if unit_mb <= 0:
        raise ConfigError(f"--unit-mb must be positive, got {unit_mb}")
    unit_bytes, sample_bytes = max(1, int(unit_mb * 1e6)), int(tokenizer_sample_mb * 1e6)
    tokenizer = _given_tokenizer(cfg, tokenizer_file)
    plan, units = build_plan(spec, cfg, unit_bytes, tokenizer_file, sample_bytes)
    resuming = _check_store_dir(root, plan)
    (root / "progress").mkdir(parents=True, exist_ok=True)
    if resuming and (manifest := _read_json(root / "manifest.json")) is not None:
        damaged = _reopen(root, manifest, units)
        if not damaged:
            log(f"{root} is already prepared from {spec!r}: {manifest['splits']['train']['tokens']:,} "
                "training tokens")
            shutil.rmtree(root / "progress")
            return manifest
        log(f"{root}: shard {damaged} is damaged; preparing its unit again")
    for stale in root.rglob("*.tmp*"):  # left by a killed run
        stale.unlink()
    write_atomic(root / "plan.json", _canonical(plan))
    if tokenizer is None:
        tokenizer = _trained_tokenizer(cfg, root, units, sample_bytes, log)
    elif not isinstance(tokenizer, ByteTokenizer):
        tokenizer.save(root / "tokenizer.json")  # what training loads
    identity = tokenizer_identity(tokenizer)
    dtype = token_dtype(tokenizer.vocab_size)
    done = _finished(root, len(units), dtype)
    todo = [i for i in range(len(units)) if i not in done]
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    if done:
        log(f"resuming {root}: {len(done)} of {len(units)} units already done")
    log(f"preparing {spec!r} into {root}: {len(units)} units, {workers} processes, tokenizer "
        f"{describe_tokenizer(identity)}")
    _run_units(root, cfg, tokenizer, units, todo, done, workers, progress)
    return _write_manifest(root, plan, identity, dtype, [done[i] for i in range(len(units))])


def _run_units(root: Path, cfg: DataConfig, tokenizer: Tokenizer, units: list[Unit], todo: list[int],
               done: dict[int, dict], workers: int, progress: bool) -> None:
    from tqdm import tqdm

    is_tfds = units and units[0].kind == "tfds"
    bar = tqdm(total=sum(u.size for u in units), initial=sum(units[i].size for i in done),
               unit="record" if is_tfds else "B", unit_scale=True, desc="prepare", file=sys.stderr,
               dynamic_ncols=True, disable=(not progress) or None, smoothing=0.05)
    if not todo:
        bar.close()
        return
    try:
        if workers == 1:  # in this process: nothing to fork (and safe where JAX's threads run)
            _init_worker(cfg, root, tokenizer, units)
            for index in todo:
                record = tokenize_unit(index)
                done[index] = record
                bar.update(record["size"])
            return
        # Forked workers inherit the tokenizer; `tokenizers` must not use its own threads in them.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        with ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=_init_worker,
                                 initargs=(cfg, root, tokenizer, units)) as pool:
            pending = {pool.submit(tokenize_unit, i) for i in todo}
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in finished:
                        record = future.result()  # raises the worker's error
                        done[record["unit"]] = record
                        bar.update(record["size"])
            finally:
                for future in pending:
                    future.cancel()
    except CorpusError as e:
        raise ConfigError(_locate(e)) from None
    finally:
        bar.close()


def _locate(error: CorpusError) -> str:
    if error.path and error.offset >= 0:
        return f"{error.path}, line {line_of(error.path, error.offset)}: {error}"
    return str(error)


def _write_manifest(root: Path, plan: dict, identity: dict, dtype: np.dtype, records: list[dict]) -> dict:
    splits = {}
    for split in SPLITS:
        shards = [r[split] for r in records if r[split] is not None]
        splits[split] = {"tokens": sum(s["tokens"] for s in shards),
                         "documents": sum(s["documents"] for s in shards), "shards": shards}
    if splits["train"]["tokens"] == 0:
        raise ConfigError(f"{plan['source']}: no training text (every document is empty or held out)")
    if splits["val"]["tokens"] == 0:
        raise ConfigError(f"{plan['source']}: no validation text ({splits['train']['documents']} training "
                          f"documents, none held out); raise data.val_fraction")
    manifest = {"format": FORMAT, "source": plan["source"], "options": plan["options"], "tokenizer": identity,
                "dtype": dtype.name, "splits": splits}
    write_atomic(root / "manifest.json", _canonical(manifest))
    shutil.rmtree(root / "progress")
    return manifest


CACHE_ENV = "GPTJAX_CACHE_DIR"
QUIET_BYTES = 64 * 10**6  # a text source larger than this is prepared with a progress bar and more processes


def cache_root() -> Path:
    """Where on-the-fly stores go: $GPTJAX_CACHE_DIR, else $XDG_CACHE_HOME/gptjax or ~/.cache/gptjax."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "gptjax"


def prepared_text(cfg: DataConfig, tokenizer_file: Path | None = None, log=None) -> Path:
    """`data.source=text:PATH` prepared once into a cached store, so a run reads it by index in constant
    memory like any store; the path of that store. The cache key is every file's resolved path, size and
    modification time, the store options of `cfg` and the given tokenizer file's hash: a changed corpus
    or setting makes a new store, the same ones reuse it. Preparing holds a lock, so processes started
    together (a multi-process job on one machine) prepare it once; an interrupted one resumes."""
    import fcntl

    from gptjax.data.corpora import _files, parse_source

    _, arg = parse_source(cfg.source)
    files, _ = _files(arg)
    stats = [(str(p.resolve()), st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()]]

    def cached(file: Path | None) -> Path:
        identity = {"format": FORMAT, "files": stats, "options": {k: getattr(cfg, k) for k in STORE_OPTIONS},
                    "tokenizer_file": None if file is None else hashlib.sha256(file.read_bytes()).hexdigest()}
        return cache_root() / "stores" / f"text-{hashlib.sha256(_canonical(identity)).hexdigest()[:20]}"

    if tokenizer_file is not None:
        # A resumed run gives the tokenizer the first run took from the store it trained: that store.
        trained = _read_json(cached(None) / "manifest.json")
        given = tokenizer_identity(_given_tokenizer(cfg, Path(tokenizer_file)))
        if trained is not None and trained["tokenizer"] == given:
            return cached(None)
    root = cached(None if tokenizer_file is None else Path(tokenizer_file))
    if (root / "manifest.json").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    large = sum(size for _, size, _ in stats) > QUIET_BYTES
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if not (root / "manifest.json").exists():
            # A small corpus in this process (nothing forked beside JAX's threads), a large one on all cores.
            prepare(cfg.source, root, cfg, workers=None if large else 1, tokenizer_file=tokenizer_file,
                    progress=large, log=(log or (lambda line: print(line, file=sys.stderr))) if large
                    else (lambda *_: None))
    return root


def prepare_config(overrides: list[str]) -> DataConfig:
    """The `data.*` overrides of a prepare command as a validated DataConfig (other sections refused)."""
    from gptjax.config import Experiment, apply_overrides, validate

    for item in overrides:
        if not item.partition("=")[0].strip().startswith("data."):
            raise ConfigError(f"prepare takes data.* overrides only (data.tokenizer=bpe, "
                              f"data.val_fraction=…), got {item!r}")
    return validate(apply_overrides(Experiment(), overrides)).data


__all__ = ["STORE_OPTIONS", "build_plan", "cache_root", "prepare", "prepare_config", "prepared_text",
           "tokenize_unit"]
