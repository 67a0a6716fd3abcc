"""Host-side data: text → tokens → the batches every objective trains on, deterministic per (seed, step).

One place for each step: `sources.py` reads documents (or labelled examples) and splits them,
`tokenizers.py` turns text into ids, `packing.py` packs documents into streams and samples windows,
`batches.py` holds every batch type, and one module per objective builds its batches: `lm.py` (causal_lm),
`masked.py` (mlm_nsp, mlm), `spans.py` (span_corruption), `classify.py` (gpt1_finetune). Each data class
is built as `Data(cfg, seed, tokenizer, source)` (source: documents, labelled examples or an opened token
store, `store.py`) and hands out `train_batch(step, rows=None)`, a pure function of (seed, step) whose
`rows` pick the global batch rows one process holds, so training resumes from a step number alone, and
`val_batches(n)`, the same every call
and for every seed. Everything here is NumPy; sharding onto devices is the trainer's job, and the
losses are in gptjax/objectives/.
"""

from __future__ import annotations

import numpy as np

from gptjax.config import DataConfig, Experiment
from gptjax.data.batches import Batch
from gptjax.data.lm import LMData
from gptjax.data.sources import SOURCES, Documents, Examples, load_documents, load_examples, split_documents
from gptjax.data.tokenizers import TOKENIZERS, BpeTokenizer, ByteTokenizer, Tokenizer, build_tokenizer

__all__ = ["Batch", "BpeTokenizer", "ByteTokenizer", "Documents", "Examples", "LMData", "SOURCES",
           "TOKENIZERS", "Tokenizer", "build_data", "build_tokenizer", "load_documents", "load_examples",
           "split_documents", "unigram_entropy"]


def build_data(cfg: DataConfig, seed: int) -> LMData:
    """Tokenizer, documents and packed causal-LM splits for `cfg`; ConfigError (one line) on bad input.

    Names are checked before any file is read, so a typo costs nothing. A trained tokenizer (bpe) is
    trained here on the training split; `gptjax.objectives.build_objective_data` builds any objective's
    data and also reuses a cached tokenizer.
    """
    if cfg.tokenizer not in TOKENIZERS:
        build_tokenizer(cfg)  # the one-line error, before the source is read
    if cfg.source.startswith(("store:", "text:")):  # a text source through a cached store, as in training
        from gptjax.data.store import store_data

        return store_data(cfg, seed)
    docs = load_documents(cfg)
    return LMData(Experiment(data=cfg), seed, build_tokenizer(cfg, train_docs=docs.train), docs)


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy in nats per token of the empirical unigram distribution of `tokens`.

    The loss a model reaches by ignoring context: a trained LM must go well below it.
    """
    counts = np.bincount(np.asarray(tokens).reshape(-1).astype(np.int64))
    if counts.sum() == 0:
        return 0.0
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
