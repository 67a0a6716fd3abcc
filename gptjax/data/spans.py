"""Batches for T5 span corruption (Raffel et al. 2020, §3.1.4): drop spans of the input, predict them in
the decoder (the loss: gptjax/objectives/span_corruption.py).

A window of n raw tokens gets a noise mask with round(n·density) noise tokens (at least 1, at most
n − 1) in round(noise / mean_span_length) spans (at least 1): the noise tokens and the non-noise tokens
are each cut into that many non-empty spans by a uniformly random composition (distinct cut points),
and the spans are interleaved starting with non-noise — T5's `random_spans_noise_mask`, so the text
always opens with kept tokens and the last span is noise. Python's `round` (half to even) matches
`tf.round`. The encoder input is the kept text with the k-th noise span replaced by sentinel k
(<extra_id_k>), then [EOT] as EOS; the target is sentinel k followed by noise span k for every k, then
[EOT]; the decoder input is the target shifted right behind the pad id (T5's decoder start token).

Lengths: with noise(n) and spans(n) as above, the encoder input has n − noise(n) + spans(n) + 1 tokens
and the target noise(n) + spans(n) + 1. The raw window length is the largest n whose encoder input fits
`data.seq_len` (`raw_length`; 141 raw tokens for seq_len 128 at density 0.15, mean 3), and the decoder
length is that n's target length (29 there; both from `span_lengths`, which gptjax/flops.py reads too);
both counts grow with n, so every shorter window fits too.

Windows are taken from the split's packed stream (`[EOT] doc` concatenated, as causal_lm) by the same
per-epoch offset and permutation (`packing.TrainWindows`), so a window may cross a document boundary
and the encoder attends across it. Example b of global batch `step` draws its mask from
`default_rng([seed, step, b])`; validation rows are consecutive windows with masks from
`default_rng([VAL_SEED, row])`, the same every call and for every seed.
"""

from __future__ import annotations

import numpy as np

from gptjax.config import ConfigError, Experiment
from gptjax.data.batches import Seq2SeqBatch, stack_batches, stack_rows
from gptjax.data.packing import VAL_SEED, TrainWindows, pack_documents
from gptjax.data.sources import Documents


def span_counts(n: int, density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a window of n >= 2 tokens, as T5 counts them."""
    noise = min(max(int(round(n * density)), 1), n - 1)
    spans = max(int(round(noise / mean_span_length)), 1)
    return noise, min(spans, noise, n - noise)  # every span, noise or kept, holds at least one token


def corrupted_lengths(n: int, density: float, mean_span_length: float) -> tuple[int, int]:
    """(encoder input length, target length) of a window of n raw tokens, EOS included in both."""
    noise, spans = span_counts(n, density, mean_span_length)
    return n - noise + spans + 1, noise + spans + 1


def raw_length(seq_len: int, density: float, mean_span_length: float) -> int:
    """The largest raw window n whose encoder input, n − noise(n) + spans(n) + 1, fits `seq_len`."""
    limit = int((seq_len + 2) / (1.0 - density)) + 2  # beyond it the kept tokens alone exceed seq_len
    fitting = [n for n in range(2, limit + 1)
               if corrupted_lengths(n, density, mean_span_length)[0] <= seq_len]
    if not fitting:
        raise ConfigError(f"data.seq_len={seq_len} is too short for span corruption (needs >= 3)")
    return max(fitting)


def span_lengths(seq_len: int, density: float, mean_span_length: float) -> tuple[int, int]:
    """(raw window length, decoder length) of span-corrupted rows whose encoder input is `seq_len` long."""
    n = raw_length(seq_len, density, mean_span_length)
    return n, corrupted_lengths(n, density, mean_span_length)[1]


def _composition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """`total` split into `parts` positive lengths, uniformly over all such compositions."""
    cuts = np.sort(rng.choice(total - 1, size=parts - 1, replace=False) + 1)
    return np.diff(np.concatenate([[0], cuts, [total]]))


def noise_mask(n: int, density: float, mean_span_length: float, rng: np.random.Generator) -> np.ndarray:
    """bool[n], True on noise tokens; draws the noise spans' lengths, then the kept spans'."""
    noise, spans = span_counts(n, density, mean_span_length)
    noise_S = _composition(noise, spans, rng)
    kept_S = _composition(n - noise, spans, rng)
    lengths_2S = np.stack([kept_S, noise_S], axis=1).reshape(-1)
    return np.repeat(np.tile([False, True], spans), lengths_2S)


def _replace_spans(tokens_N: np.ndarray, drop_N: np.ndarray, sentinel_ids: np.ndarray) -> np.ndarray:
    """`tokens_N` without the `drop_N` tokens, each dropped span replaced by the next sentinel."""
    first_N = drop_N & ~np.concatenate([[False], drop_N[:-1]])
    span_N = np.cumsum(first_N) - 1
    out_N = np.where(first_N, sentinel_ids[np.maximum(span_N, 0)], tokens_N)
    return out_N[~drop_N | first_N].astype(np.int32)


def corrupt(tokens_N: np.ndarray, mask_N: np.ndarray, sentinel_ids: np.ndarray, eos_id: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """(encoder input, target), each ending in EOS: the kept text with sentinel k for noise span k, and
    sentinel k before noise span k (the kept spans are what the target's sentinels stand for)."""
    eos = np.array([eos_id], np.int32)
    return (np.concatenate([_replace_spans(tokens_N, mask_N, sentinel_ids), eos]),
            np.concatenate([_replace_spans(tokens_N, ~mask_N, sentinel_ids), eos]))


class SpanData:
    """Training and validation `Seq2SeqBatch`es of span-corrupted windows.

    Attributes: `tokenizer`, `raw_length` (tokens per window), `seq_len` (encoder length), `target_length`
    (decoder length), `val_tokens` (the validation stream, its first 4 M tokens from a store),
    `train_tokens` (in memory only), `batch_size`, `seed`. The source is documents or a token store,
    whose windows are read by index in the order of `store.StoreWindows`.
    """

    def __init__(self, cfg: Experiment, seed: int, tokenizer, docs):
        ob, d = cfg.objective, cfg.data
        self.tokenizer, self.seed, self.batch_size, self.seq_len = tokenizer, seed, d.batch_size, d.seq_len
        self.density, self.mean_span = ob.noise_density, ob.mean_span_length
        self.raw_length, self.target_length = span_lengths(d.seq_len, self.density, self.mean_span)
        self.sentinel_ids = np.asarray(tokenizer.sentinel_ids, np.int32)
        spans = span_counts(self.raw_length, self.density, self.mean_span)[1]
        if spans > len(self.sentinel_ids):
            raise ConfigError(f"span corruption of {self.raw_length}-token windows (data.seq_len="
                              f"{d.seq_len}) makes {spans} spans, more than the tokenizer's "
                              f"{len(self.sentinel_ids)} sentinels; lower data.seq_len or raise "
                              "objective.mean_span_length")
        if isinstance(docs, Documents):
            self.train_tokens, train_doc_S = pack_documents([tokenizer.encode(t) for t in docs.train],
                                                            tokenizer.eot_id)
            self.val_tokens, _ = pack_documents([tokenizer.encode(t) for t in docs.val], tokenizer.eot_id)
            n_train, n_val = len(self.train_tokens), len(self.val_tokens)
            self._read_train = lambda a, b: self.train_tokens[a:b]
            self._read_val = lambda a, b: self.val_tokens[a:b]
        else:  # a token store: windows read by index, the order never materialised
            from gptjax.data.store import UNIGRAM_TOKENS

            train, val = docs.splits["train"], docs.splits["val"]
            n_train, n_val = train.n_tokens, val.n_tokens
            self._read_train = lambda a, b: train.read(a, b)[0]
            self._read_val = lambda a, b: val.read(a, min(b, n_val))[0]
            self.val_tokens = val.read(0, min(n_val, UNIGRAM_TOKENS))[0]
        if n_train < 2 * self.raw_length:
            raise ConfigError(f"training split too short for span corruption: {n_train} "
                              f"tokens, data.seq_len={d.seq_len} needs at least {2 * self.raw_length}")
        if n_val < 2:
            raise ConfigError("validation split too short for span corruption: raise data.val_fraction")
        self._n_val = n_val
        # The windows read W = their seq_len + 1 tokens (a causal-LM input plus one target).
        if isinstance(docs, Documents):
            self._train = TrainWindows(self.train_tokens, train_doc_S, self.raw_length - 1, d.batch_size,
                                       seed)
        else:
            from gptjax.data.store import StoreWindows

            self._train = StoreWindows(train, self.raw_length - 1, d.batch_size, seed)

    def _row(self, tokens_N: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        pad = self.tokenizer.pad_id
        enc_N, target_N = corrupt(tokens_N, noise_mask(len(tokens_N), self.density, self.mean_span, rng),
                                  self.sentinel_ids, self.tokenizer.eot_id)
        enc_L = np.full(self.seq_len, pad, np.int32)
        enc_L[:len(enc_N)] = enc_N
        targets_T = np.full(self.target_length, pad, np.int32)
        targets_T[:len(target_N)] = target_N
        dec_T = np.concatenate([[pad], targets_T[:-1]]).astype(np.int32)
        real_T = np.arange(self.target_length) < len(target_N)
        return (enc_L, (np.arange(self.seq_len) < len(enc_N)).astype(np.int32), dec_T, targets_T,
                real_T.astype(np.float32), real_T.astype(np.int32))

    def _empty_row(self) -> tuple[np.ndarray, ...]:
        pad, L, T = self.tokenizer.pad_id, self.seq_len, self.target_length
        return (np.full(L, pad, np.int32), np.zeros(L, np.int32), np.full(T, pad, np.int32),
                np.full(T, pad, np.int32), np.zeros(T, np.float32), np.zeros(T, np.int32))

    def train_batch(self, step: int, rows=None) -> Seq2SeqBatch:
        """Global batch `step` (or only its rows `rows`): encoder [batch_size, seq_len], decoder
        [batch_size, target_length]."""
        rows_R = np.arange(self.batch_size) if rows is None else np.asarray(rows, dtype=np.int64)
        if isinstance(self._train, TrainWindows):
            starts_R = self._train.starts(step)[rows_R]
        else:
            starts_R = self._train.starts(step, rows_R)
        out = [self._row(self._read_train(int(s), int(s) + self.raw_length),
                         np.random.default_rng([self.seed, step, int(b)]))
               for b, s in zip(rows_R, starts_R, strict=True)]
        return stack_rows(Seq2SeqBatch, out)

    def val_batches(self, n: int) -> list[Seq2SeqBatch]:
        """The first n validation batches: consecutive windows of the split (the last one shorter), the
        same every call and for every seed; rows past the end are padding with weight 0."""
        rows = []
        for r in range(n * self.batch_size):
            a = min(r * self.raw_length, self._n_val)
            window = self._read_val(a, min(a + self.raw_length, self._n_val))
            rows.append(self._row(window, np.random.default_rng([VAL_SEED, r])) if len(window) >= 2
                        else self._empty_row())
        return stack_batches(Seq2SeqBatch, rows, self.batch_size)
