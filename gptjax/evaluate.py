"""Perplexity of a long text under a sliding context window (`python -m gptjax eval <workdir>`).

The GPT-1 paper's objective scores each token given the k tokens before it. A text longer than the
window is read in windows of `window` tokens whose starts are `stride` apart: the first window scores all
its targets, each later one only its last `stride` targets (those no earlier window scored), so every
token after the first is scored exactly once, with between window − stride and window tokens of context
(fewer only at the start of the text, or of a document when the model was trained with document masks).
stride = window is the cheapest and gives the least context; stride 1 gives every token a full window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from gptjax.data.packing import Batch, renumber_segments


def window_count(total: int, window: int, stride: int) -> int:
    """How many windows cover a stream of `total` tokens (at least one)."""
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in [1, window], got stride {stride} and window {window}")
    # Window r reads tokens [r·stride, r·stride + window] and needs to reach the last target, total − 1.
    return max(1, math.ceil(max(total - 1 - window, 0) / stride) + 1)


def window_batches(read: Callable[[int, int], tuple[np.ndarray, np.ndarray | None]], total: int,
                   window: int, stride: int, pad_id: int, rows: int) -> Iterator[Batch]:
    """The windows over a stream of `total` tokens as host-side Batches of `rows` windows each (the last
    padded with weight-0 rows), weight 1 on the targets each scores.

    `read(a, b)` gives tokens [a, b) and their document numbers (None: one document), so a stream on
    disk is read a batch at a time and memory does not grow with its length.
    """
    n_rows = window_count(total, window, stride)
    for first in range(0, n_rows, rows):
        row_R1 = np.arange(first, first + rows, dtype=np.int64)[:, None]
        lo, hi = first * stride, min(total, (min(first + rows, n_rows) - 1) * stride + window + 1)
        tokens_S, doc_S = read(lo, hi)
        if doc_S is None:
            doc_S = np.ones(hi - lo, np.int64)
        pos_RW = row_R1 * stride + np.arange(window + 1)
        real_RW = (pos_RW < total) & (row_R1 < n_rows)
        clipped_RW = np.clip(pos_RW - lo, 0, hi - lo - 1)
        window_RW = np.where(real_RW, tokens_S[clipped_RW], pad_id).astype(np.int32)
        # Target j of window r sits at stream position r·stride + 1 + j; windows after the first score
        # only what lies past the previous window's end, r·stride + window − stride.
        fresh_RL = np.arange(window)[None, :] >= np.where(row_R1 > 0, window - stride, 0)
        doc_RL = np.where(real_RW[:, :-1], doc_S[clipped_RW[:, :-1]], 0)
        yield Batch(inputs=np.ascontiguousarray(window_RW[:, :-1]),
                    targets=np.ascontiguousarray(window_RW[:, 1:]),
                    weights=(real_RW[:, 1:] & fresh_RL).astype(np.float32),
                    segment_ids=renumber_segments(doc_RL))


def array_reader(stream_S: np.ndarray, doc_S: np.ndarray | None):
    """`read(a, b)` of a stream held in memory."""
    return lambda a, b: (stream_S[a:b], None if doc_S is None else doc_S[a:b])


def context_windows(stream_S: np.ndarray, doc_S: np.ndarray | None, window: int, stride: int,
                    pad_id: int) -> Batch:
    """All windows over the stream as one host-side Batch [R, window], weight 1 on the targets it scores.

    `doc_S` (document index per token, from 1) keeps documents apart through segment ids; None treats
    the stream as one document.
    """
    n_rows = window_count(len(stream_S), window, stride)
    return next(window_batches(array_reader(stream_S, doc_S), len(stream_S), window, stride, pad_id, n_rows))


def windowed_perplexity(evaluate, params, stream_S: np.ndarray, doc_S: np.ndarray | None, *, window: int,
                        stride: int, pad_id: int, rows: int) -> dict[str, float]:
    """Cross-entropy per token, perplexity and accuracy of the stream under `context_windows`, by the
    `evaluate` of `gptjax.train.build_evaluator`, `rows` windows at a time (the last batch padded with
    weight-0 rows)."""
    return streamed_perplexity(evaluate, params, array_reader(stream_S, doc_S), len(stream_S), window=window,
                               stride=stride, pad_id=pad_id, rows=rows)


def streamed_perplexity(evaluate, params, read, total: int, *, window: int, stride: int, pad_id: int,
                        rows: int) -> dict[str, float]:
    """`windowed_perplexity` of a stream read by `read(a, b)` a batch at a time (a store's split): the
    metrics are summed on the device as the batches go, so memory is constant in the stream's length."""
    from gptjax import sharding

    context = evaluate.cfg.model.context
    if not 0 < window <= context:
        raise ValueError(f"window must be in [1, model.context = {context}], got {window}")
    n = window_count(total, window, stride)
    batches = (sharding.put_batch(b, evaluate.mesh)
               for b in window_batches(read, total, window, stride, pad_id, rows))
    result = evaluate(params, batches)
    return {"window": window, "stride": stride, "windows": n, "tokens": result["tokens"],
            "loss": math.log(result["perplexity"]), "perplexity": result["perplexity"],
            "accuracy": result["accuracy"]}
