"""The token store: a corpus tokenized once (`python -m gptjax prepare`), read by index while training.

Layout of a store directory:

- `manifest.json`, written last: the format, the source and options it was prepared from, the
  tokenizer's identity (kind, vocabulary size, special ids and a sha256 of its vocabulary and merges),
  the token dtype, and per split (`train`, `val`) its token and document counts and its shards in order.
- `train/NNNNNN.tokens`, `val/NNNNNN.tokens`: one shard per work unit, the split's packed stream as flat
  uint16 (uint32 when the vocabulary does not fit): each document is `[EOT] + tokens`, as in
  `packing.pack_documents`; a document cut across units continues without an EOT.
- `train/NNNNNN.docs`, `val/NNNNNN.docs`: int64 positions of the shard's document starts (its EOTs).
- `tokenizer.json` for a trained or Hugging Face tokenizer; `plan.json` and `progress/` while preparing.

Reading opens shards on first touch and reads tokens with pread, so opening a store costs the manifest
and one stat per shard whatever the corpus size, and the pages read stay in the page cache rather than in
the process (a memory map would count every page a random window touched, and its read-ahead, as the
process's own memory: 4.5 GB after 100,000 random windows of a 2.4 GB store). A split is one stream
across its shards: window [a, b) may span two.
Training windows (`StoreWindows`) follow `packing.TrainWindows`: epoch e starts at an offset in [0, L]
drawn from `default_rng([seed, e])` and visits its N windows in the order of grain's `index_shuffle`
(a bijection of [0, N) keyed by a second draw), so no permutation of all windows is ever built and a
batch is a pure function of (seed, step). `rows` selects the global batch rows a process holds.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import mmap
import os
from pathlib import Path

import numpy as np

from gptjax import storage
from gptjax.config import ConfigError, DataConfig
from gptjax.data.packing import Batch, renumber_segments, validation_rows
from gptjax.data.tokenizers import BpeTokenizer, ByteTokenizer, HfTokenizer, Tokenizer, build_tokenizer

FORMAT = "gptjax.TokenStore/1"
SPLITS = ("train", "val")
SHUFFLE_ROUNDS = 4  # index_shuffle's rounds: part of the batch contract, like the order of draws
UNIGRAM_TOKENS = 1 << 22  # validation tokens the unigram-entropy baseline reads (bounded start-up)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, uint32 otherwise."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def tokenizer_identity(tokenizer: Tokenizer) -> dict:
    """What makes two tokenizers the same: kind, sizes, special ids and a hash of vocabulary and merges."""
    if isinstance(tokenizer, ByteTokenizer):
        kind, content = "byte", b"gptjax.ByteTokenizer/258"
    else:
        kind = "bpe" if isinstance(tokenizer, BpeTokenizer) else "hf"
        # Canonical JSON (sorted keys) of the whole tokenizer: vocabulary, merges, pre-tokenizer, specials.
        content = json.dumps(json.loads(tokenizer._hf.to_str()), sort_keys=True,
                             ensure_ascii=False).encode("utf-8")
    return {"kind": kind, "vocab_size": int(tokenizer.vocab_size), "eot_id": int(tokenizer.eot_id),
            "pad_id": int(tokenizer.pad_id), "sha256": hashlib.sha256(content).hexdigest()}


def describe_tokenizer(identity: dict) -> str:
    return f"{identity['kind']} (vocabulary {identity['vocab_size']}, sha256 {identity['sha256'][:12]})"


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name and rename: a crash leaves the old file or none, never half of one."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_shard(root: Path, split: str, index: int, pieces: list[tuple[np.ndarray, bool]], eot_id: int,
                dtype: np.dtype) -> dict | None:
    """Pack (tokens, starts a document) pieces into shard `split/index`; its record, or None if empty."""
    if not pieces:
        return None
    lengths = np.array([len(t) + int(new) for t, new in pieces], dtype=np.int64)
    stream = np.empty(int(lengths.sum()), dtype=dtype)
    starts = np.cumsum(lengths) - lengths
    docs = []
    for (tokens, new), start in zip(pieces, starts, strict=True):
        if new:
            stream[start] = eot_id
            docs.append(start)
        stream[start + int(new):start + int(new) + len(tokens)] = tokens
    if len(stream) == 0:
        return None
    name = f"{split}/{index:06d}"
    (root / split).mkdir(exist_ok=True)
    data = stream.tobytes()
    write_atomic(root / f"{name}.tokens", data)
    write_atomic(root / f"{name}.docs", np.asarray(docs, dtype=np.int64).tobytes())
    return {"name": name, "tokens": len(stream), "documents": len(docs),
            "sha256": hashlib.sha256(data).hexdigest()}


class _Shard:
    """One shard opened for reading: its token file by descriptor (read with pread, so touched pages stay
    in the page cache and out of the process's memory) and its document starts memory-mapped for
    random access (8 bytes per document, a small fraction of the tokens)."""

    def __init__(self, root, shard: dict):
        self.tokens, self.fd = root / f"{shard['name']}.tokens", None
        self.docs = np.empty(0, np.int64)
        if storage.is_remote(root):  # a bucket: ranged reads of the tokens, the document starts read whole
            if shard["documents"]:
                self.docs = np.frombuffer((root / f"{shard['name']}.docs").read_bytes(), np.int64)
            return
        self.fd = os.open(self.tokens, os.O_RDONLY)
        if shard["documents"]:
            self.docs = np.memmap(root / f"{shard['name']}.docs", dtype=np.int64, mode="r")
            self.docs._mmap.madvise(mmap.MADV_RANDOM)  # no read-ahead around a binary search's probes

    def read(self, offset: int, size: int) -> bytes:
        return storage.read_range(self.tokens, offset, size) if self.fd is None else \
            os.pread(self.fd, size, offset)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.docs = None  # unmaps


class SplitReader:
    """One split's shards as a single token stream; shards are opened on first use and at most
    `OPEN_SHARDS` stay open (least recently used closed first), so memory and file descriptors stay
    bounded however many shards a store has."""

    OPEN_SHARDS = 64

    def __init__(self, root: Path, shards: list[dict], dtype: np.dtype):
        self.root, self.shards, self.dtype = root, shards, dtype
        tokens_K = np.array([s["tokens"] for s in shards], dtype=np.int64)
        docs_K = np.array([s["documents"] for s in shards], dtype=np.int64)
        self.offsets_K1 = np.concatenate([[0], np.cumsum(tokens_K)])  # shard k is [offsets[k], offsets[k+1])
        self.docs_before_K = np.cumsum(docs_K) - docs_K
        self.n_tokens = int(self.offsets_K1[-1])
        self.n_documents = int(docs_K.sum())
        self._open: collections.OrderedDict[int, _Shard] = collections.OrderedDict()

    def _shard(self, k: int) -> _Shard:
        if k in self._open:
            self._open.move_to_end(k)
        else:
            if len(self._open) >= self.OPEN_SHARDS:
                self._open.popitem(last=False)[1].close()
            self._open[k] = _Shard(self.root, self.shards[k])
        return self._open[k]

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens [start, stop) as int32 and the document number of each (documents started so far)."""
        if not 0 <= start <= stop <= self.n_tokens:
            raise IndexError(f"[{start}, {stop}) is outside the split's {self.n_tokens} tokens")
        tokens = np.empty(stop - start, np.int32)
        docs = np.empty(stop - start, np.int64)
        k = int(np.searchsorted(self.offsets_K1, start, side="right")) - 1
        position, size = start, self.dtype.itemsize
        while position < stop:
            shard = self._shard(k)
            lo, hi = position - self.offsets_K1[k], min(stop, self.offsets_K1[k + 1]) - self.offsets_K1[k]
            out = slice(position - start, position - start + (hi - lo))
            data = shard.read(int(lo) * size, int(hi - lo) * size)
            if len(data) != (hi - lo) * size:
                raise ConfigError(f"store {self.root}: shard {self.shards[k]['name']} ends early; run "
                                  "prepare again to redo it")
            tokens[out] = np.frombuffer(data, dtype=self.dtype)
            docs[out] = self.docs_before_K[k] + np.searchsorted(shard.docs, np.arange(lo, hi), side="right")
            position += hi - lo
            k += 1
        return tokens, docs

    def document_span(self, position: int) -> tuple[int, int]:
        """[start, stop) of the document holding `position`: from its EOT (or the split's start) to the
        next document's EOT (or the split's end), found in the shards' document starts."""
        if not 0 <= position < self.n_tokens:
            raise IndexError(f"{position} is outside the split's {self.n_tokens} tokens")
        k = int(np.searchsorted(self.offsets_K1, position, side="right")) - 1
        start, j = 0, k  # the last document start at or before `position`, walking back over shards
        local = position - self.offsets_K1[k]
        while j >= 0:
            docs = self._shard(j).docs
            i = int(np.searchsorted(docs, local, side="right")) - 1 if j == k else len(docs) - 1
            if i >= 0:
                start = int(self.offsets_K1[j] + docs[i])
                break
            j -= 1
        stop, j = self.n_tokens, k  # the first document start after it, walking forward
        while j < len(self.shards):
            docs = self._shard(j).docs
            i = int(np.searchsorted(docs, local, side="right")) if j == k else 0
            if i < len(docs):
                stop = int(self.offsets_K1[j] + docs[i])
                break
            j += 1
        return start, stop

    def windows(self, starts_R: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """`read` of [start, start + length) for each start, as [R, length] arrays."""
        tokens_RW = np.empty((len(starts_R), length), np.int32)
        docs_RW = np.empty((len(starts_R), length), np.int64)
        for r, start in enumerate(np.asarray(starts_R, dtype=np.int64)):
            tokens_RW[r], docs_RW[r] = self.read(int(start), int(start) + length)
        return tokens_RW, docs_RW


class TokenStore:
    """An opened store: its manifest, a `SplitReader` per split, and its tokenizer's identity."""

    def __init__(self, path: Path):
        self.path = path = storage.path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            hint = " (preparation unfinished: run prepare again to resume)" if (path / "plan.json").exists() \
                else ""
            raise ConfigError(f"{path} is not a prepared token store (no manifest.json){hint}")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read {manifest_path}: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ConfigError(f"{manifest_path} is not a {FORMAT} manifest")
        self.manifest = manifest
        self.dtype = np.dtype(manifest["dtype"])
        self.tokenizer = manifest["tokenizer"]
        for split in SPLITS:
            for shard in manifest["splits"][split]["shards"]:
                check_shard(path, shard, self.dtype)
        self.splits = {split: SplitReader(path, manifest["splits"][split]["shards"], self.dtype)
                       for split in SPLITS}

    def load_tokenizer(self) -> Tokenizer:
        """The tokenizer the store was prepared with (byte needs no file)."""
        kind = self.tokenizer["kind"]
        if kind == "byte":
            return ByteTokenizer()
        return (BpeTokenizer if kind == "bpe" else HfTokenizer).load(self.path / "tokenizer.json")


def check_shard(root: Path, shard: dict, dtype: np.dtype) -> None:
    """ConfigError (one line) unless both files of `shard` exist with the sizes the manifest gives."""
    sizes = ((".tokens", shard["tokens"] * dtype.itemsize), (".docs", shard["documents"] * 8))
    for suffix, expected in sizes:
        file = root / f"{shard['name']}{suffix}"
        if expected == 0 and suffix == ".docs":
            continue
        try:
            size = storage.size(file)
        except OSError:
            raise ConfigError(f"store {root}: shard file {file.relative_to(root)} is missing; run prepare "
                              "again to rebuild it") from None
        if size != expected:
            raise ConfigError(f"store {root}: shard file {file.relative_to(root)} is truncated or damaged "
                              f"({size} bytes, the manifest says {expected}); run prepare again to redo it")


def epoch_key(seed: int, epoch: int) -> int:
    """The key of epoch `epoch`'s index_shuffle for an order without a random offset (sequences)."""
    return int(np.random.default_rng([seed, epoch]).integers(0, 1 << 32))


def shuffled_index(g: int, n: int, key_of_epoch) -> tuple[int, int]:
    """(epoch, item) of the g-th visit when every epoch visits all n items in the order of grain's
    `index_shuffle` keyed by `key_of_epoch(epoch)`: a bijection of [0, n), never materialised."""
    from grain.experimental import index_shuffle

    epoch = g // n
    return epoch, int(index_shuffle(g % n, n - 1, key_of_epoch(epoch), SHUFFLE_ROUNDS))


class StoreOrder:
    """`EpochOrder` in constant memory: item indices of global batch `step` (rows `rows`), epochs of n
    items each in the order of `shuffled_index` keyed by `epoch_key(seed, e)`."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self._key = functools.lru_cache(maxsize=4)(functools.partial(epoch_key, seed))

    def indices(self, step: int, rows=None) -> np.ndarray:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        rows_R = np.arange(self.batch_size) if rows is None else np.asarray(rows, dtype=np.int64)
        return np.array([shuffled_index(step * self.batch_size + int(r), self.n, self._key)[1]
                         for r in rows_R], dtype=np.int64)


class StoreWindows:
    """Training windows of a split: start positions per global step, and the batches they make."""

    def __init__(self, split: SplitReader, seq_len: int, batch_size: int, seed: int):
        self.split, self.seq_len, self.batch_size, self.seed = split, seq_len, batch_size, seed
        window = seq_len + 1
        self.windows_per_epoch = max(0, (split.n_tokens - window) // window)  # as packing.TrainWindows
        self._epoch = functools.lru_cache(maxsize=4)(self._draw_epoch)

    def _draw_epoch(self, epoch: int) -> tuple[int, int]:
        rng = np.random.default_rng([self.seed, epoch])
        offset = int(rng.integers(0, self.seq_len + 1))  # drawn first, as packing.TrainWindows does
        return offset, int(rng.integers(0, 1 << 32))  # the key of this epoch's index_shuffle

    def starts(self, step: int, rows=None) -> np.ndarray:
        """Stream positions of rows `rows` (default: all B) of global batch `step`."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        rows_R = np.arange(self.batch_size) if rows is None else np.asarray(rows, dtype=np.int64)
        n = self.windows_per_epoch
        starts_R = np.empty(len(rows_R), dtype=np.int64)
        for r, row in enumerate(rows_R):
            epoch, index = shuffled_index(step * self.batch_size + int(row), n, lambda e: self._epoch(e)[1])
            starts_R[r] = self._epoch(epoch)[0] + index * (self.seq_len + 1)
        return starts_R

    def batch(self, step: int, rows=None) -> Batch:
        """Rows `rows` (default: all) of global batch `step`, read from the store."""
        starts_R = self.starts(step, rows)
        window_RW, doc_RW = self.split.windows(starts_R, self.seq_len + 1)
        doc_RL = doc_RW[:, :-1]
        return Batch(inputs=np.ascontiguousarray(window_RW[:, :-1]),
                     targets=np.ascontiguousarray(window_RW[:, 1:]),
                     weights=np.ones((len(starts_R), self.seq_len), np.float32),
                     segment_ids=renumber_segments(doc_RL))


def process_rows(batch_size: int, process_index: int, process_count: int) -> np.ndarray:
    """The global batch rows process `process_index` of `process_count` holds under a batch sharding over
    devices in process order: a contiguous block of batch_size / process_count rows."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    if batch_size % process_count:
        raise ConfigError(f"data.batch_size ({batch_size}) must be divisible by the {process_count} "
                          "processes")
    per = batch_size // process_count
    return np.arange(process_index * per, (process_index + 1) * per)


def addressable_rows(sharding, batch_size: int) -> np.ndarray:
    """The global batch rows this process's devices hold under a jax `sharding` of [batch_size, ...]."""
    rows = set()
    for index in sharding.addressable_devices_indices_map((batch_size, 1)).values():
        rows.update(range(*index[0].indices(batch_size)))
    return np.array(sorted(rows), dtype=np.int64)


def put_rows(batch, rows, sharding, batch_size: int):
    """Global jax arrays of a batch sharded by `sharding` (over its leading axis) from only the rows
    `rows` of it that this process holds (`addressable_rows`, in that order): each process hands over
    its own rows and no process ever holds the whole global batch."""
    import jax

    position = {int(r): k for k, r in enumerate(rows)}

    def put(x):
        x = np.asarray(x)

        def local(index):
            mine = [position[r] for r in range(*index[0].indices(batch_size))]
            return x[mine][(slice(None), *index[1:])]

        return jax.make_array_from_callback((batch_size, *x.shape[1:]), sharding, local)

    return jax.tree_util.tree_map(put, batch)


class StoreData:
    """Causal-LM data read from a token store: the interface of `LMData` (train_batch, val_batches,
    val_tokens, tokenizer, windows_per_epoch), in memory and start-up time independent of the corpus."""

    def __init__(self, cfg: DataConfig, seed: int, store: TokenStore, tokenizer: Tokenizer):
        self.store, self.tokenizer = store, tokenizer
        self.seq_len, self.batch_size, self.seed = cfg.seq_len, cfg.batch_size, seed
        train, val = store.splits["train"], store.splits["val"]
        window = cfg.seq_len + 1
        if train.n_tokens < 2 * window:
            raise ConfigError(f"store {store.path}: training split too short: {train.n_tokens} tokens; "
                              f"data.seq_len={cfg.seq_len} needs at least {2 * window} (2 × (seq_len + 1))")
        if val.n_tokens < window:
            raise ConfigError(f"store {store.path}: validation split too short: {val.n_tokens} tokens; "
                              f"data.seq_len={cfg.seq_len} needs at least {window}; prepare it with a larger "
                              "data.val_fraction")
        self._train = StoreWindows(train, cfg.seq_len, cfg.batch_size, seed)
        self.windows_per_epoch = self._train.windows_per_epoch
        self.val_tokens = val.read(0, min(val.n_tokens, UNIGRAM_TOKENS))[0]

    @property
    def steps_per_epoch(self) -> float:
        return self.windows_per_epoch / self.batch_size

    def train_batch(self, step: int, rows=None) -> Batch:
        """Global batch `step` (or only its rows `rows`); the same for the same (seed, step), always."""
        return self._train.batch(step, rows)

    def val_batches(self, n: int) -> list[Batch]:
        """The first n validation batches: identical every call, padded with weight-0 rows if short."""
        val = self.store.splits["val"]
        needed = min(val.n_tokens, n * self.batch_size * self.seq_len + 1)
        stream_S, doc_S = val.read(0, needed)
        rows = validation_rows(stream_S, doc_S + 1, self.seq_len, n * self.batch_size, self.tokenizer.pad_id)
        b = self.batch_size
        return [Batch(*(x[i * b:(i + 1) * b] for x in rows)) for i in range(n)]

    def __repr__(self) -> str:
        train, val = self.store.splits["train"], self.store.splits["val"]
        return (f"StoreData({self.store.path}: {train.n_documents} train docs / {train.n_tokens} tokens, "
                f"{val.n_documents} val docs / {val.n_tokens} tokens, seq_len={self.seq_len}, "
                f"batch_size={self.batch_size}, {self.windows_per_epoch} windows per epoch)")


def run_tokenizer(cfg: DataConfig, store: TokenStore, cache: Path | None) -> Tokenizer:
    """The run's tokenizer, which must be the store's: refused in one line when it is not.

    Without a workdir copy (`cache`) a bpe or hf run takes the store's; with one, the copy must match.
    """
    want = store.tokenizer
    if cfg.tokenizer != want["kind"]:
        raise ConfigError(f"store {store.path} was tokenized with {describe_tokenizer(want)}, but "
                          f"data.tokenizer={cfg.tokenizer}; set data.tokenizer={want['kind']}")
    if cfg.tokenizer == "bpe" and cfg.tokenizer_vocab != want["vocab_size"]:
        raise ConfigError(f"store {store.path} was tokenized with {describe_tokenizer(want)}, but "
                          f"data.tokenizer_vocab={cfg.tokenizer_vocab}; set "
                          f"data.tokenizer_vocab={want['vocab_size']}")
    if cfg.tokenizer in ("bpe", "hf") and (cache is None or not storage.path(cache).exists()):
        tokenizer = store.load_tokenizer()
    else:
        tokenizer = build_tokenizer(cfg, cache=cache)
    have = tokenizer_identity(tokenizer)
    if have != want:
        where = f" ({cache})" if cache is not None and storage.path(cache).exists() else ""
        raise ConfigError(f"store {store.path} was tokenized with {describe_tokenizer(want)}, this run's "
                          f"tokenizer{where} is {describe_tokenizer(have)}; prepare the corpus with this "
                          "tokenizer or use another workdir")
    return tokenizer


def read_by_store(source: str) -> bool:
    """Whether `data.source` is read through a token store: `store:PATH`, and `text:PATH`, prepared on
    the fly into a cached one (`prepare.prepared_text`)."""
    return source.startswith(("store:", "text:"))


def open_store(cfg: DataConfig, tokenizer_cache: Path | None = None) -> tuple[TokenStore, Tokenizer]:
    """The store of `cfg.source` (a `text:` source prepared on first use, with the workdir's tokenizer
    when it has one) and the run's tokenizer, which must be the store's; ConfigError (one line)."""
    if cfg.source.startswith("text:"):
        from gptjax.data.prepare import cache_root, prepared_text

        if storage.is_remote(cfg.source.removeprefix("text:")):
            raise ConfigError(f"data.source {cfg.source!r}: a text: corpus is prepared into a store on a "
                              "local disk; copy it there first (gcloud storage cp -r), or prepare a store "
                              "and train from store:gs://…")
        given = tokenizer_cache if cfg.tokenizer != "byte" and tokenizer_cache is not None \
            and storage.path(tokenizer_cache).exists() else None
        if given is not None and storage.is_remote(given):
            # The text: cache is local and keyed by the tokenizer's content: a local copy of a bucket's file.
            data = storage.path(given).read_bytes()
            given = cache_root() / "tokenizers" / f"{hashlib.sha256(data).hexdigest()[:20]}.json"
            given.parent.mkdir(parents=True, exist_ok=True)
            storage.write_atomic(given, data)
        path = prepared_text(cfg, given)
    else:
        path = storage.path(cfg.source.removeprefix("store:"))
    store = TokenStore(path)
    return store, run_tokenizer(cfg, store, tokenizer_cache)


def store_data(cfg: DataConfig, seed: int, tokenizer_cache: Path | None = None) -> StoreData:
    """`data.source=store:PATH` (or `text:PATH`) opened for a causal-LM run; ConfigError (one line) on any
    mismatch."""
    store, tokenizer = open_store(cfg, tokenizer_cache)
    return StoreData(cfg, seed, store, tokenizer)
