"""Batches for causal language modelling: both splits packed into token streams (`packing.py`), training
windows a pure function of (seed, step), validation windows tiling the split. The loss is
gptjax/objectives/causal_lm.py."""

from __future__ import annotations

import numpy as np

from gptjax.config import ConfigError, Experiment
from gptjax.data.batches import Batch
from gptjax.data.packing import TrainWindows, pack_documents, validation_rows
from gptjax.data.sources import Documents


class LMData:
    """Both splits of one corpus, packed; hands out training and validation batches.

    Attributes: `tokenizer`; `train_docs` / `val_docs` (lists of str); `train_tokens` / `val_tokens`
    (the packed int32 streams); `seq_len`, `batch_size`, `seed`; `windows_per_epoch`.
    """

    def __init__(self, cfg: Experiment, seed: int, tokenizer, docs: Documents):
        d = cfg.data
        self.tokenizer = tokenizer
        self.train_docs, self.val_docs = docs.train, docs.val
        self.seq_len, self.batch_size, self.seed = d.seq_len, d.batch_size, seed
        self.train_tokens, train_doc_S = pack_documents([tokenizer.encode(t) for t in docs.train],
                                                        tokenizer.eot_id)
        self.val_tokens, self._val_doc_S = pack_documents([tokenizer.encode(t) for t in docs.val],
                                                          tokenizer.eot_id)
        window = d.seq_len + 1
        if len(self.train_tokens) < 2 * window:
            # One window plus room for the epoch's random offset (up to seq_len tokens).
            raise ConfigError(f"training split too short: {len(self.train_tokens)} tokens "
                              f"(documents: {len(docs.train)}); data.seq_len={d.seq_len} needs at least "
                              f"{2 * window} (2 × (seq_len + 1)) for one training sequence")
        if len(self.val_tokens) < window:
            raise ConfigError(f"validation split too short: {len(self.val_tokens)} tokens "
                              f"(documents: {len(docs.val)}); data.seq_len={d.seq_len} needs at least "
                              f"{window} (seq_len + 1) for one sequence; raise data.val_fraction")
        self._train = TrainWindows(self.train_tokens, train_doc_S, d.seq_len, d.batch_size, seed)
        self.windows_per_epoch = self._train.windows_per_epoch

    def train_batch(self, step: int, rows=None) -> Batch:
        """Global batch `step`, [batch_size, seq_len] (or only its rows `rows`); the same for the same
        (seed, step), always."""
        batch = self._train.batch(step)
        return batch if rows is None else Batch(*(x[np.asarray(rows, dtype=np.int64)] for x in batch))

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
