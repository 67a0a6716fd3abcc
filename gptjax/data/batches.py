"""The batches each objective trains on: host-side NumPy NamedTuples (so JAX pytrees as they are).

Every array has the global batch as its leading axis, so one data-parallel sharding fits every field.
Shape letters: B rows, L (encoder) sequence length, T decoder / target length.
Segment ids follow one rule everywhere: 0 marks padding (never attended to, weight 0), and within a row
positions with different non-zero ids never attend to each other (packed documents).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Batch(NamedTuple):
    """Causal LM: windows of the packed stream (gptjax/data/packing.py)."""

    inputs: np.ndarray  # int32 [B, L]
    targets: np.ndarray  # int32 [B, L], the inputs shifted by one in the packed stream
    weights: np.ndarray  # float32 [B, L], 1.0 where the target is a real token, 0.0 for padding
    segment_ids: np.ndarray  # int32 [B, L], document of each input position, 1..k within a row, 0 = pad


class MaskedBatch(NamedTuple):
    """BERT / RoBERTa: `[CLS] A [SEP] B [SEP]` (mlm_nsp) or a plain stretch of text (mlm), masked."""

    inputs: np.ndarray  # int32 [B, L], after masking ([MASK] / random / unchanged at chosen positions)
    targets: np.ndarray  # int32 [B, L], the original token at chosen positions, pad id elsewhere
    weights: np.ndarray  # float32 [B, L], 1.0 at chosen positions only: the MLM loss is over these
    segment_ids: np.ndarray  # int32 [B, L], 1 on real tokens, 0 on padding (the attention padding mask)
    type_ids: np.ndarray  # int32 [B, L], 0 for [CLS] A [SEP], 1 for B [SEP] (all 0 without NSP)
    nsp_labels: np.ndarray  # int32 [B], 0: B is A's real next sentence, 1: B is random (BERT's convention)
    nsp_weights: np.ndarray  # float32 [B], 1.0 where NSP is scored (mlm_nsp), 0.0 otherwise


class Seq2SeqBatch(NamedTuple):
    """T5 span corruption: encoder input with sentinels; decoder predicts the dropped spans."""

    enc_inputs: np.ndarray  # int32 [B, L], the text with each dropped span replaced by one sentinel
    enc_segment_ids: np.ndarray  # int32 [B, L], 1 on real tokens, 0 on padding
    dec_inputs: np.ndarray  # int32 [B, T], targets shifted right, starting with the pad id (T5's start)
    targets: np.ndarray  # int32 [B, T], sentinel, span, sentinel, span, …, EOS, then pad
    weights: np.ndarray  # float32 [B, T], 1.0 on real targets (EOS included), 0.0 on padding
    dec_segment_ids: np.ndarray  # int32 [B, T], 1 on real decoder positions, 0 on padding


class ClassifyBatch(NamedTuple):
    """GPT-1 fine-tuning: a text ending in the extract token, its class, and the auxiliary LM targets."""

    inputs: np.ndarray  # int32 [B, L], [EOT] text [EOT]: the last real token is the extract token
    targets: np.ndarray  # int32 [B, L], inputs shifted by one (the auxiliary causal-LM loss)
    weights: np.ndarray  # float32 [B, L], 1.0 where targets are real tokens
    segment_ids: np.ndarray  # int32 [B, L], 1 on real tokens, 0 on padding
    labels: np.ndarray  # int32 [B], the class
    label_weights: np.ndarray  # float32 [B], 1.0 for real examples, 0.0 for padding rows


def stack_rows(batch_type, rows: list[tuple[np.ndarray, ...]]):
    """One batch of `batch_type` from per-row tuples of its fields, in field order."""
    return batch_type(*(np.stack(column) for column in zip(*rows, strict=True)))


def stack_batches(batch_type, rows: list[tuple[np.ndarray, ...]], batch_size: int) -> list:
    """Consecutive batches of `batch_size` rows each (validation: len(rows) is a multiple of it)."""
    return [stack_rows(batch_type, rows[k:k + batch_size]) for k in range(0, len(rows), batch_size)]
