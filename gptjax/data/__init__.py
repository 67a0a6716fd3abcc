"""Data for causal language modelling: documents → tokens → packed, deterministic batches.

`build_data(cfg, seed)` reads the source (`sources.py`), tokenizes (`tokenizers.py`) and packs each
split into one token stream (`packing.py`). `LMData.train_batch(step)` is a pure function of
(seed, step), so training resumes from a step number alone; `val_batches(n)` is the same every call
and independent of the seed. Everything here is host-side NumPy; sharding onto devices is the
trainer's job.
"""

from __future__ import annotations

import numpy as np

from gptjax.config import ConfigError, DataConfig
from gptjax.data.packing import Batch, TrainWindows, pack_documents, validation_rows
from gptjax.data.sources import SOURCES, Documents, Examples, load_documents, load_examples, split_documents
from gptjax.data.tokenizers import TOKENIZERS, BpeTokenizer, ByteTokenizer, Tokenizer, build_tokenizer

__all__ = ["Batch", "BpeTokenizer", "ByteTokenizer", "Documents", "Examples", "LMData", "SOURCES",
           "TOKENIZERS", "Tokenizer", "build_data", "build_tokenizer", "load_documents", "load_examples",
           "split_documents", "unigram_entropy"]


class LMData:
    """Both splits of one corpus, packed; hands out training and validation batches.

    Attributes: `tokenizer`; `train_docs` / `val_docs` (lists of str); `train_tokens` / `val_tokens`
    (the packed int32 streams); `seq_len`, `batch_size`, `seed`; `windows_per_epoch`.
    """

    def __init__(self, cfg: DataConfig, seed: int, tokenizer: Tokenizer, docs: Documents):
        self.tokenizer = tokenizer
        self.train_docs, self.val_docs = docs.train, docs.val
        self.seq_len, self.batch_size, self.seed = cfg.seq_len, cfg.batch_size, seed
        self.train_tokens, train_doc_S = pack_documents([tokenizer.encode(d) for d in docs.train],
                                                        tokenizer.eot_id)
        self.val_tokens, self._val_doc_S = pack_documents([tokenizer.encode(d) for d in docs.val],
                                                          tokenizer.eot_id)
        window = cfg.seq_len + 1
        if len(self.train_tokens) < 2 * window:
            # One window plus room for the epoch's random offset (up to seq_len tokens).
            raise ConfigError(f"training split too short: {len(self.train_tokens)} tokens "
                              f"(documents: {len(docs.train)}); data.seq_len={cfg.seq_len} needs at least "
                              f"{2 * window} (2 × (seq_len + 1)) for one training sequence")
        if len(self.val_tokens) < window:
            raise ConfigError(f"validation split too short: {len(self.val_tokens)} tokens "
                              f"(documents: {len(docs.val)}); data.seq_len={cfg.seq_len} needs at least "
                              f"{window} (seq_len + 1) for one sequence; raise data.val_fraction")
        self._train = TrainWindows(self.train_tokens, train_doc_S, cfg.seq_len, cfg.batch_size, seed)
        self.windows_per_epoch = self._train.windows_per_epoch

    @property
    def steps_per_epoch(self) -> float:
        return self.windows_per_epoch / self.batch_size

    def train_batch(self, step: int) -> Batch:
        """Global batch `step`, [batch_size, seq_len]; the same for the same (seed, step), always."""
        return self._train.batch(step)

    def val_batches(self, n: int) -> list[Batch]:
        """The first n validation batches: identical every call, padded with weight-0 rows if short."""
        rows = validation_rows(self.val_tokens, self._val_doc_S, self.seq_len, n * self.batch_size,
                               self.tokenizer.pad_id)
        b = self.batch_size
        return [Batch(*(x[i * b:(i + 1) * b] for x in rows)) for i in range(n)]

    def val_text(self) -> str:
        """The validation documents joined by blank lines, for baselines and long-context evaluation."""
        return "\n\n".join(self.val_docs)

    def __repr__(self) -> str:
        return (f"LMData({len(self.train_docs)} train docs / {len(self.train_tokens)} tokens, "
                f"{len(self.val_docs)} val docs / {len(self.val_tokens)} tokens, seq_len={self.seq_len}, "
                f"batch_size={self.batch_size}, {self.windows_per_epoch} windows per epoch)")


def build_data(cfg: DataConfig, seed: int) -> LMData:
    """Tokenizer, documents and packed splits for `cfg`; ConfigError (one line) on bad input.

    Names are checked before any file is read, so a typo costs nothing. A trained tokenizer (bpe) is
    trained here on the training split; `gptjax.objectives.build_objective_data` also reuses a cached one.
    """
    if cfg.tokenizer not in TOKENIZERS:
        build_tokenizer(cfg)  # the one-line error, before the source is read
    if cfg.source.startswith("store:"):
        from gptjax.data.store import store_data

        return store_data(cfg, seed)
    docs = load_documents(cfg)
    return LMData(cfg, seed, build_tokenizer(cfg, train_docs=docs.train), docs)


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy in nats per token of the empirical unigram distribution of `tokens`.

    The loss a model reaches by ignoring context: a trained LM must go well below it.
    """
    counts = np.bincount(np.asarray(tokens).reshape(-1).astype(np.int64))
    if counts.sum() == 0:
        return 0.0
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
