"""Packing documents into fixed-length causal-LM sequences, deterministically per (seed, step).

Shape letters: B batch rows, L sequence length (model inputs), W = L + 1 window tokens, S tokens in a
split's stream, N windows per epoch.

Each document becomes `[EOT] + tokens`, so EOT marks a beginning of document (a model can be sampled
from it) and predicting it ends the previous one; all documents of a split are concatenated into
one stream. Training reads windows of W tokens (inputs = w[:-1], targets = w[1:]): epoch e starts at
an offset in [0, L] and visits its N windows in a permuted order, both drawn from
`np.random.default_rng([seed, e])`, and global batch `step` takes windows step·B … step·B + B − 1 of
the epochs laid end to end. A batch is therefore a pure function of (seed, step): a resumed run sees
exactly the batches it would have seen, with no iterator state to checkpoint.
"""

from __future__ import annotations

import functools

import numpy as np

from gptjax.data.batches import Batch

# The first key of every validation draw (masks, pairs, spans): fixed on purpose, so validation batches
# do not depend on train.seed.
VAL_SEED = 7_654_321


def pack_documents(tokens: list[np.ndarray], eot_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate `[EOT] + doc` for every document: (stream_S int32, document index_S int32, from 1)."""
    lengths_D = np.array([len(t) for t in tokens], dtype=np.int64) + 1
    starts_D = np.cumsum(lengths_D) - lengths_D
    stream_S = np.empty(int(lengths_D.sum()), dtype=np.int32)
    stream_S[starts_D] = eot_id
    body_S = np.ones(len(stream_S), dtype=bool)
    body_S[starts_D] = False
    stream_S[body_S] = np.concatenate(tokens) if tokens else np.empty(0, np.int32)
    # Documents are numbered by construction rather than by searching for EOT, so a tokenizer whose
    # text could contain the EOT id would still get correct segments.
    doc_S = np.repeat(np.arange(1, len(tokens) + 1, dtype=np.int32), lengths_D)
    return stream_S, doc_S


def renumber_segments(doc_BL: np.ndarray) -> np.ndarray:
    """Document indices of each row renumbered 1..k (0 stays padding); rows are contiguous slices."""
    first_B1 = np.where(doc_BL > 0, doc_BL, np.iinfo(np.int32).max).min(axis=1, keepdims=True)
    return np.where(doc_BL > 0, doc_BL - first_B1 + 1, 0).astype(np.int32)


class EpochOrder:
    """Indices into n items for each global training step: epoch e visits all n in the order of
    `default_rng([seed, e]).permutation(n)`, batches of `batch_size` run on across epoch boundaries."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self._permutation = functools.lru_cache(maxsize=4)(
            lambda epoch: np.random.default_rng([seed, epoch]).permutation(n))

    def indices(self, step: int) -> np.ndarray:
        """The `batch_size` indices of global batch `step`."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        g_B = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        return np.array([self._permutation(int(g // self.n))[g % self.n] for g in g_B], dtype=np.int64)


class TrainWindows:
    """The training side: window starts per global step, and the batches they make."""

    def __init__(self, stream_S: np.ndarray, doc_S: np.ndarray, seq_len: int, batch_size: int,
                 seed: int):
        self.stream_S, self.doc_S = stream_S, doc_S
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        window = seq_len + 1
        # The same N for every epoch whatever its offset: the largest offset (L) must still fit N windows.
        self.windows_per_epoch = max(0, (len(stream_S) - window) // window)
        self._epoch = functools.lru_cache(maxsize=4)(self._draw_epoch)

    def _draw_epoch(self, epoch: int) -> tuple[int, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        # The offset is drawn before the permutation: the order of draws is part of the contract.
        offset = int(rng.integers(0, self.seq_len + 1))
        return offset, rng.permutation(self.windows_per_epoch)

    def starts(self, step: int) -> np.ndarray:
        """Stream positions of the B windows of global batch `step`."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        n = self.windows_per_epoch
        global_B = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epoch_B, index_B = global_B // n, global_B % n
        starts_B = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epoch_B):  # one epoch per batch, two at a boundary (more only if B > N)
            offset, perm_N = self._epoch(int(epoch))
            here = epoch_B == epoch
            starts_B[here] = offset + perm_N[index_B[here]] * (self.seq_len + 1)
        return starts_B

    def batch(self, step: int) -> Batch:
        starts_B = self.starts(step)
        window_BW = self.stream_S[starts_B[:, None] + np.arange(self.seq_len + 1)]
        doc_BL = self.doc_S[starts_B[:, None] + np.arange(self.seq_len)]
        return Batch(inputs=np.ascontiguousarray(window_BW[:, :-1]),
                     targets=np.ascontiguousarray(window_BW[:, 1:]),
                     weights=np.ones((self.batch_size, self.seq_len), np.float32),
                     segment_ids=renumber_segments(doc_BL))


def validation_rows(stream_S: np.ndarray, doc_S: np.ndarray, seq_len: int, n_rows: int,
                    pad_id: int) -> Batch:
    """The first `n_rows` validation rows: consecutive windows of stride L, so targets tile the stream.

    Every token after the first is predicted exactly once. The last window is cut short and padded,
    and rows past the end of the split are all padding; padding has weight 0 and segment id 0.
    """
    total = len(stream_S)
    row_R1 = np.arange(n_rows, dtype=np.int64)[:, None] * seq_len
    pos_RW = row_R1 + np.arange(seq_len + 1)
    real_RW = pos_RW < total
    clipped_RW = np.minimum(pos_RW, total - 1)
    window_RW = np.where(real_RW, stream_S[clipped_RW], pad_id).astype(np.int32)
    doc_RL = np.where(real_RW[:, :-1], doc_S[clipped_RW[:, :-1]], 0)
    return Batch(inputs=np.ascontiguousarray(window_RW[:, :-1]),
                 targets=np.ascontiguousarray(window_RW[:, 1:]),
                 weights=real_RW[:, 1:].astype(np.float32),
                 segment_ids=renumber_segments(doc_RL))
