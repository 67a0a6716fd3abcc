"""Batches for GPT-1 fine-tuning (Radford et al. 2018, §3.2): labelled texts to classify from the last
token's hidden state, with the causal-LM targets of the auxiliary loss (the loss:
gptjax/objectives/gpt1_finetune.py).

Rows are `[EOT] text [EOT]`: the leading EOT is the start token every pre-training document began with
(`packing.pack_documents`), and the final EOT serves as GPT-1's extract token, whose final hidden state
feeds the linear head (the byte and BPE vocabularies have no other token to spare for it). A text longer
than seq_len − 2 tokens keeps its beginning. The auxiliary targets are the inputs shifted by one, with
weight 1 wherever the target is a real token (the extract token included).

Training example b of global batch `step` is example perm_e[g mod N] (g = step·B + b, e = g div N,
perm_e from `default_rng([seed, e])`): a pure function of (seed, step). Validation is every validation
example in order, the last batch padded with rows of label weight 0.
"""

from __future__ import annotations

import numpy as np

from gptjax.config import ConfigError, Experiment
from gptjax.data.batches import ClassifyBatch
from gptjax.data.packing import EpochOrder
from gptjax.data.sources import Examples


def encode_examples(examples: list[tuple[str, int]], tokenizer, seq_len: int) -> ClassifyBatch:
    """All `examples` as one ClassifyBatch of [len(examples), seq_len] rows."""
    n, pad, eot = len(examples), tokenizer.pad_id, tokenizer.eot_id
    inputs_NL = np.full((n, seq_len), pad, np.int32)
    lengths_N = np.zeros(n, np.int64)
    for i, (text, _) in enumerate(examples):
        row = np.concatenate([[eot], tokenizer.encode(text)[:seq_len - 2], [eot]])
        inputs_NL[i, :len(row)], lengths_N[i] = row, len(row)
    position_NL = np.arange(seq_len)[None, :]
    targets_NL = np.concatenate([inputs_NL[:, 1:], np.full((n, 1), pad, np.int32)], axis=1)
    return ClassifyBatch(inputs=inputs_NL, targets=targets_NL,
                         weights=(position_NL < lengths_N[:, None] - 1).astype(np.float32),
                         segment_ids=(position_NL < lengths_N[:, None]).astype(np.int32),
                         labels=np.array([label for _, label in examples], np.int32).reshape(n),
                         label_weights=np.ones(n, np.float32))


class ClassifyData:
    """Training and validation `ClassifyBatch`es of labelled examples.

    Attributes: `tokenizer`, `label_names`, `n_classes` (len(label_names)), `train` / `val` (every
    example encoded, a ClassifyBatch each), `val_tokens` (the validation rows' real tokens), `seq_len`,
    `batch_size`, `seed`.
    """

    def __init__(self, cfg: Experiment, seed: int, tokenizer, examples: Examples):
        d = cfg.data
        self.tokenizer, self.seed, self.seq_len, self.batch_size = tokenizer, seed, d.seq_len, d.batch_size
        self.label_names = list(examples.label_names)
        self.n_classes = len(self.label_names)  # the data's classes; the model's head may have more
        if d.seq_len < 3:
            raise ConfigError(f"objective gpt1_finetune needs data.seq_len >= 3 for [EOT] text [EOT], "
                              f"got {d.seq_len}")
        if not examples.train or not examples.val:
            raise ConfigError(f"gpt1_finetune needs training and validation examples, got "
                              f"{len(examples.train)} and {len(examples.val)}")
        n_classes = cfg.model.n_classes or len(self.label_names)
        labels = [label for _, label in examples.train + examples.val]
        if min(labels) < 0 or max(labels) >= n_classes:
            raise ConfigError(f"labels must be in [0, {n_classes}) (model.n_classes or the data's classes), "
                              f"got {min(labels)}..{max(labels)}")
        self.train = encode_examples(examples.train, tokenizer, d.seq_len)
        self.val = encode_examples(examples.val, tokenizer, d.seq_len)
        self.val_tokens = self.val.inputs[self.val.segment_ids > 0]
        self._order = EpochOrder(len(self.train.labels), self.batch_size, self.seed)

    def examples(self, step: int) -> np.ndarray:
        """Indices (into `train`) of the examples of global batch `step`."""
        return self._order.indices(step)

    def train_batch(self, step: int, rows=None) -> ClassifyBatch:
        """Global batch `step`, [batch_size, seq_len] (or only its rows `rows`); the same for the same
        (seed, step), always."""
        index_B = self.examples(step)
        if rows is not None:
            index_B = index_B[np.asarray(rows, dtype=np.int64)]
        return ClassifyBatch(*(x[index_B] for x in self.train))

    @property
    def val_batch_count(self) -> int:
        """Batches that hold every validation example."""
        return -(-len(self.val.labels) // self.batch_size)

    def val_batches(self, n: int) -> list[ClassifyBatch]:
        """The first n validation batches: the validation examples in order, then padding rows (weight 0,
        label weight 0); identical every call and for every seed."""
        rows, have = n * self.batch_size, len(self.val.labels)
        index_R = np.minimum(np.arange(rows), have - 1)
        real_R = np.arange(rows) < have
        pad = self.tokenizer.pad_id
        fields = ClassifyBatch(
            inputs=np.where(real_R[:, None], self.val.inputs[index_R], pad).astype(np.int32),
            targets=np.where(real_R[:, None], self.val.targets[index_R], pad).astype(np.int32),
            weights=self.val.weights[index_R] * real_R[:, None],
            segment_ids=self.val.segment_ids[index_R] * real_R[:, None],
            labels=np.where(real_R, self.val.labels[index_R], 0).astype(np.int32),
            label_weights=real_R.astype(np.float32))
        b = self.batch_size
        return [ClassifyBatch(*(x[k * b:(k + 1) * b] for x in fields)) for k in range(n)]
