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

import numpy as np

from gptjax.data.packing import Batch, renumber_segments


def context_windows(stream_S: np.ndarray, doc_S: np.ndarray | None, window: int, stride: int,
                    pad_id: int) -> Batch:
    """All windows over the stream as one host-side Batch [R, window], weight 1 on the targets it scores.

    `doc_S` (document index per token, from 1) keeps documents apart through segment ids; None treats
    the stream as one document.
    """
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in [1, window], got stride {stride} and window {window}")
    total = len(stream_S)
    if doc_S is None:
        doc_S = np.ones(total, np.int32)
    # Window r reads tokens [r·stride, r·stride + window] and needs to reach the last target, total − 1.
    n_rows = max(1, math.ceil(max(total - 1 - window, 0) / stride) + 1)
    start_R1 = np.arange(n_rows, dtype=np.int64)[:, None] * stride
    pos_RW = start_R1 + np.arange(window + 1)
    real_RW = pos_RW < total
    clipped_RW = np.minimum(pos_RW, total - 1)
    tokens_RW = np.where(real_RW, stream_S[clipped_RW], pad_id).astype(np.int32)
    # Target j of window r sits at stream position r·stride + 1 + j; windows after the first score only
    # what lies past the previous window's end, r·stride + window − stride.
    fresh_RL = np.arange(window)[None, :] >= np.where(start_R1 > 0, window - stride, 0)
    weights_RL = (real_RW[:, 1:] & fresh_RL).astype(np.float32)
    doc_RL = np.where(real_RW[:, :-1], doc_S[clipped_RW[:, :-1]], 0)
    return Batch(inputs=np.ascontiguousarray(tokens_RW[:, :-1]),
                 targets=np.ascontiguousarray(tokens_RW[:, 1:]), weights=weights_RL,
                 segment_ids=renumber_segments(doc_RL))


def windowed_perplexity(evaluate, params, stream_S: np.ndarray, doc_S: np.ndarray | None, *, window: int,
                        stride: int, pad_id: int, rows: int) -> dict[str, float]:
    """Cross-entropy per token, perplexity and accuracy of the stream under `context_windows`, by the
    `evaluate` of `gptjax.train.build_evaluator`, `rows` windows at a time (the last batch padded with
    weight-0 rows)."""
    from gptjax import sharding

    context = evaluate.cfg.model.context
    if not 0 < window <= context:
        raise ValueError(f"window must be in [1, model.context = {context}], got {window}")
    windows = context_windows(stream_S, doc_S, window, stride, pad_id)
    n = len(windows.inputs)
    padded = -(-n // rows) * rows
    pad = [(0, padded - n), (0, 0)]
    windows = Batch(np.pad(windows.inputs, pad, constant_values=pad_id),
                    np.pad(windows.targets, pad, constant_values=pad_id),
                    np.pad(windows.weights, pad), np.pad(windows.segment_ids, pad))
    batches = [sharding.put_batch(Batch(*(x[i:i + rows] for x in windows)), evaluate.mesh)
               for i in range(0, padded, rows)]
    result = evaluate(params, batches)
    return {"window": window, "stride": stride, "windows": n, "tokens": result["tokens"],
            "loss": math.log(result["perplexity"]), "perplexity": result["perplexity"],
            "accuracy": result["accuracy"]}
