"""Batches for BERT and RoBERTa pre-training: masked language modelling, with next-sentence prediction
(mlm_nsp) or without (mlm). One data class serves both; `objective.name` decides. The loss is
`gptjax/objectives/mlm.py`.

Masking (Devlin et al. 2019, §3.1 and A.1): of each sequence's non-special tokens, `mask_rate` are
chosen; each chosen token becomes [MASK] with probability `mask_token_rate`, a random non-special token
with probability `random_token_rate`, and stays unchanged otherwise. The loss is the cross-entropy of
the original token at the chosen positions only (gptjax/objectives/mlm.py). The number chosen is
floor(n·rate + u), u ~ U[0, 1) (fairseq's rounding), whose expectation is exactly n·rate, so short rows
are not biased by rounding.

mlm_nsp rows are BERT's `[CLS] A [SEP] B [SEP]`: documents are split into sentences (`split_sentences`),
grouped into chunks of consecutive sentences that fill the row, and each visit of a chunk cuts it into
A (its first sentences) and B, keeping B = the real continuation (NSP label 0) with probability 1/2 and
otherwise taking B from a random other document (label 1).
mlm rows are RoBERTa's FULL-SENTENCES (Liu et al. 2019, §4.2): `[CLS]` ([CLS]/[SEP] play RoBERTa's
<s>/</s>) then `seq_len − 1` contiguous tokens of the split's stream, in which every document ends with
[SEP]; rows cross document boundaries and attend across them, as RoBERTa's do.

Determinism: training example b of global batch `step` visits sequence perm_e[g mod N] (g = step·B + b,
e = g div N, perm_e from `default_rng([seed, e])`). Its random draws (the A/B cut, the NSP coin, the
random document, then the mask, in that order) come from `default_rng([seed, step, b])` — a fresh mask
every visit (RoBERTa's dynamic masking) — or, with `objective.static_masking`, from
`default_rng([seed, STATIC_TAG, sequence])`, so a sequence gets the same mask in every epoch (BERT).
Validation rows are the split's sequences in order with draws from `default_rng([VAL_SEED, row])`:
the same every call and for every training seed.

From a token store (`data.source=store:PATH`) the sequences are read by index (`StoreStreamSequences`,
`StoreSentencePairs`) and an epoch's order is grain's `index_shuffle` (`store.StoreOrder`) instead of a
permutation; the draws are the same.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

from gptjax.config import ConfigError, Experiment, ObjectiveConfig
from gptjax.data.batches import MaskedBatch, stack_batches, stack_rows
from gptjax.data.packing import VAL_SEED, EpochOrder
from gptjax.data.sources import Documents

STATIC_TAG = 2**31 - 1  # the middle key of static draws; a training step never reaches it


class MaskSpec(NamedTuple):
    """What masking needs to know: rates and the ids involved."""

    mask_id: int
    is_special: np.ndarray  # bool [vocab]: ids never chosen ([CLS], [SEP], [PAD], sentinels, …)
    replacement_ids: np.ndarray  # int32: the vocabulary random replacements are drawn from (non-special)
    mask_rate: float
    mask_token_rate: float
    random_token_rate: float


def make_mask_spec(ob: ObjectiveConfig, vocab_size: int, special_ids: np.ndarray, mask_id: int) -> MaskSpec:
    """The masking rules of `ob` for a vocabulary of `vocab_size` ids of which `special_ids` are special."""
    is_special = np.zeros(vocab_size, bool)
    is_special[np.asarray(special_ids, np.int64)] = True
    replacement_ids = np.flatnonzero(~is_special).astype(np.int32)
    return MaskSpec(int(mask_id), is_special, replacement_ids, ob.mask_rate, ob.mask_token_rate,
                    ob.random_token_rate)


def mask_sequence(tokens_L: np.ndarray, spec: MaskSpec, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(masked inputs_L, chosen_L bool) for one row; draws: count, positions, fate, replacements."""
    candidates = np.flatnonzero(~spec.is_special[tokens_L])
    k = min(int(np.floor(len(candidates) * spec.mask_rate + rng.random())), len(candidates))
    chosen_K = np.sort(rng.choice(candidates, size=k, replace=False))
    fate_K = rng.random(k)
    to_mask_K = fate_K < spec.mask_token_rate
    to_random_K = (fate_K >= spec.mask_token_rate) & (fate_K < spec.mask_token_rate + spec.random_token_rate)
    inputs_L = np.array(tokens_L, dtype=np.int32)
    inputs_L[chosen_K[to_mask_K]] = spec.mask_id
    picks = rng.integers(0, len(spec.replacement_ids), size=int(to_random_K.sum()))
    inputs_L[chosen_K[to_random_K]] = spec.replacement_ids[picks]
    chosen_L = np.zeros(len(tokens_L), dtype=bool)
    chosen_L[chosen_K] = True
    return inputs_L, chosen_L


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")


def split_sentences(text: str) -> list[str]:
    """Split `text` into sentences: after `.`, `!` or `?` (and any closing quotes or brackets) followed
    by whitespace, and before every blank line. Deliberately simple: abbreviations such as "e.g. x" are
    split too. The whitespace between sentences opens the next one (a byte-level BPE writes " Word" as
    one token), whitespace-only pieces join the next sentence, and `"".join(split_sentences(t)) == t`
    for any `t` that is not blank."""
    cuts = sorted({m.end() for m in _SENTENCE_END.finditer(text)}
                  | {m.start() for m in _PARAGRAPH.finditer(text)} | {len(text)})
    sentences, pending, start = [], "", 0
    for cut in cuts:
        piece, start = text[start:cut], cut
        if piece.strip():
            sentences.append(pending + piece)
            pending = ""
        else:
            pending += piece
    if pending and sentences:
        sentences[-1] += pending
    return sentences


def truncate_pair(a: np.ndarray, b: np.ndarray, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Shorten the longer of A and B one token at a time until both fit `max_tokens` (BERT's
    truncate_seq_pair). A loses tokens at its front and B at its back, so the A|B boundary, which is
    what NSP judges, is never cut (BERT picks the end at random)."""
    la, lb = len(a), len(b)
    while la + lb > max_tokens:
        if la > lb:
            la -= 1
        else:
            lb -= 1
    return a[len(a) - la:], b[:lb]


class StreamSequences:
    """RoBERTa's rows: `[CLS]` + seq_len − 1 tokens of the stream (each document followed by [SEP]).

    Sequence i is the i-th consecutive window. Training uses full windows only (`partial=False`); the
    validation side keeps the last, short one, padded.
    """

    def __init__(self, docs: list[str], tokenizer, seq_len: int, partial: bool, what: str):
        pieces = [np.append(tokenizer.encode(d), np.int32(tokenizer.sep_id)) for d in docs]
        self.tokens = np.concatenate(pieces).astype(np.int32) if pieces else np.empty(0, np.int32)
        self.cls_id, self.pad_id, self.seq_len = tokenizer.cls_id, tokenizer.pad_id, seq_len
        self.width = seq_len - 1
        n = len(self.tokens)
        self.count = -(-n // self.width) if partial else n // self.width
        if self.count == 0:
            raise ConfigError(f"{what} split too short for objective mlm: {n} tokens, data.seq_len="
                              f"{seq_len} needs at least {self.width}")

    def __len__(self) -> int:
        return self.count

    def example(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        """(tokens_L padded, type_ids_L, NSP label 0); RoBERTa's rows draw nothing here."""
        del rng
        body = self.tokens[i * self.width:(i + 1) * self.width]
        tokens_L = np.full(self.seq_len, self.pad_id, np.int32)
        tokens_L[0], tokens_L[1:1 + len(body)] = self.cls_id, body
        return tokens_L, np.zeros(self.seq_len, np.int32), 0


class SentencePairs:
    """BERT's rows: `[CLS] A [SEP] B [SEP]` built from chunks of consecutive sentences.

    Each document's sentences (pieces of at most seq_len − 3 tokens: a longer sentence, e.g. a code
    listing without full stops, is cut) are grouped greedily into chunks of at least two sentences
    holding at least seq_len − 3 tokens; a document's last single leftover sentence joins the chunk
    before it. Chunk i is sequence i. Documents of one sentence make no chunk but still serve as random
    B. (BERT also shortens 10% of its rows at random, `short_seq_prob`; every row here is filled.)
    """

    def __init__(self, docs: list[str], tokenizer, seq_len: int, what: str):
        self.max_tokens = seq_len - 3
        if self.max_tokens < 2:
            raise ConfigError(f"objective mlm_nsp needs data.seq_len >= 5 for [CLS] A [SEP] B [SEP], "
                              f"got {seq_len}")
        self.seq_len, self.tokenizer = seq_len, tokenizer
        self.docs = [s for s in (self._sentences(d, tokenizer) for d in docs) if s]
        self.chunks = [c for d, sentences in enumerate(self.docs) for c in self._chunks(d, sentences)]
        if len(self.docs) < 2 or not self.chunks:
            raise ConfigError(f"{what} split has {len(self.docs)} non-empty documents, {len(self.chunks)} "
                              "chunks of two or more sentences; objective mlm_nsp needs at least 2 documents "
                              "(a random next sentence comes from another one) and one of two sentences")
        self.tokens = np.concatenate([np.concatenate(s) for s in self.docs])

    def _sentences(self, text: str, tokenizer) -> list[np.ndarray]:
        out = []
        for sentence in split_sentences(text):
            ids = tokenizer.encode(sentence)
            out += [ids[i:i + self.max_tokens] for i in range(0, len(ids), self.max_tokens)]
        return [s for s in out if len(s)]

    def _chunks(self, d: int, sentences: list[np.ndarray]) -> list[tuple[int, int, int]]:
        chunks, start, total = [], 0, 0
        for i, s in enumerate(sentences):
            total += len(s)
            if total >= self.max_tokens and i + 1 - start >= 2:
                chunks.append((d, start, i + 1))
                start, total = i + 1, 0
        rest = len(sentences) - start
        if rest >= 2:
            chunks.append((d, start, len(sentences)))
        elif rest == 1 and chunks:
            chunks[-1] = (d, chunks[-1][1], len(sentences))
        return chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def pair(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        """(A, B, NSP label) of chunk i; draws: the coin, the cut, then the random document and start."""
        d, lo, hi = self.chunks[i]
        sentences = self.docs[d]
        label = int(rng.random() < 0.5)  # 1: B is random (BERT's convention: 0 = IsNext)
        cut = int(rng.integers(lo + 1, hi))  # at least one sentence on each side
        a = np.concatenate(sentences[lo:cut])
        if label == 0:
            b = np.concatenate(sentences[cut:hi])
        else:
            other = int(rng.integers(0, len(self.docs) - 1))
            other += other >= d  # any document but this one
            source = self.docs[other]
            j, target, b_parts = int(rng.integers(0, len(source))), max(1, self.max_tokens - len(a)), []
            while j < len(source) and sum(map(len, b_parts)) < target:
                b_parts.append(source[j])
                j += 1
            b = np.concatenate(b_parts)
        a, b = truncate_pair(a, b, self.max_tokens)
        return a, b, label

    def example(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        """(tokens_L padded, type_ids_L, NSP label) of chunk i."""
        return self._row_of(*self.pair(i, rng))

    def _row_of(self, a: np.ndarray, b: np.ndarray, label: int) -> tuple[np.ndarray, np.ndarray, int]:
        t = self.tokenizer
        row = np.concatenate([[t.cls_id], a, [t.sep_id], b, [t.sep_id]]).astype(np.int32)
        tokens_L = np.full(self.seq_len, t.pad_id, np.int32)
        tokens_L[:len(row)] = row
        type_ids_L = np.zeros(self.seq_len, np.int32)
        type_ids_L[len(a) + 2:len(row)] = 1
        return tokens_L, type_ids_L, label


class StoreStreamSequences(StreamSequences):
    """`StreamSequences` of a token store's split, read by index: the store's stream `[EOT] d1 [EOT] d2 …`
    read from its second token, each document start's EOT becoming the [SEP] that ends the document
    before it and a last [SEP] after the split's end, is exactly `d1 [SEP] d2 [SEP] …`."""

    def __init__(self, split, tokenizer, seq_len: int, partial: bool, what: str):
        from gptjax.data.store import UNIGRAM_TOKENS

        self.split, self.sep_id = split, tokenizer.sep_id
        self.cls_id, self.pad_id, self.seq_len = tokenizer.cls_id, tokenizer.pad_id, seq_len
        self.width = seq_len - 1
        n = split.n_tokens
        self.count = -(-n // self.width) if partial else n // self.width
        if self.count == 0:
            raise ConfigError(f"{what} split too short for objective mlm: {n} tokens, data.seq_len="
                              f"{seq_len} needs at least {self.width}")
        self.tokens = self.stream(0, min(n, UNIGRAM_TOKENS))

    def stream(self, a: int, b: int) -> np.ndarray:
        """Tokens [a, b) of the RoBERTa stream (b at most the split's length)."""
        n = self.split.n_tokens
        out = np.empty(0, np.int32)
        if a < n - 1:
            tokens, docs = self.split.read(a, min(b, n - 1) + 1)
            out = np.where(docs[1:] > docs[:-1], self.sep_id, tokens[1:]).astype(np.int32)
        return np.append(out, np.int32(self.sep_id)) if b >= n else out

    def example(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        del rng
        body = self.stream(i * self.width, min((i + 1) * self.width, self.split.n_tokens))
        tokens_L = np.full(self.seq_len, self.pad_id, np.int32)
        tokens_L[0], tokens_L[1:1 + len(body)] = self.cls_id, body
        return tokens_L, np.zeros(self.seq_len, np.int32), 0


class StoreSentencePairs(SentencePairs):
    """`SentencePairs` of a token store's split, in constant memory: chunk i is the longest run of one
    document inside tokens [i·M, (i + 1)·M) of the split (M = seq_len − 3, the document's EOT left out),
    decoded and split into sentences that are encoded one by one as `SentencePairs` does. A chunk of one
    sentence is cut between tokens instead; a chunk of fewer than 2 tokens (a window of 1-token
    documents) is an empty row of weight 0. A random B starts at a uniformly drawn position of another
    document (its first whole sentence, or the position itself at that document's start) and takes
    sentences until it is as long as the row has room for."""

    def __init__(self, split, tokenizer, seq_len: int, what: str):
        from gptjax.data.store import UNIGRAM_TOKENS

        self.max_tokens = seq_len - 3
        if self.max_tokens < 2:
            raise ConfigError(f"objective mlm_nsp needs data.seq_len >= 5 for [CLS] A [SEP] B [SEP], "
                              f"got {seq_len}")
        self.seq_len, self.tokenizer, self.split = seq_len, tokenizer, split
        self.count = -(-split.n_tokens // self.max_tokens)
        if split.n_documents < 2:
            raise ConfigError(f"{what} split has {split.n_documents} documents; objective mlm_nsp needs at "
                              "least 2 (a random next sentence comes from another one)")
        self.tokens = split.read(0, min(split.n_tokens, UNIGRAM_TOKENS))[0]

    def __len__(self) -> int:
        return self.count

    def _units(self, tokens: np.ndarray, whole_first: bool) -> list[np.ndarray]:
        """The sentences of `tokens`, decoded and re-encoded one by one as `SentencePairs` encodes them,
        cut to M tokens; without `whole_first` the first (a sentence's tail) is dropped when there are
        others."""
        # A window's edges may cut a character's bytes apart (U+FFFD once decoded): left out.
        sentences = self._sentences(self.tokenizer.decode(tokens).strip("\ufffd"), self.tokenizer)
        return sentences if whole_first or len(sentences) < 2 else sentences[1:]

    def chunk(self, i: int) -> tuple[np.ndarray, int]:
        """(tokens of chunk i, its document's first position)."""
        a = i * self.max_tokens
        b = min(a + self.max_tokens, self.split.n_tokens)
        tokens, docs = self.split.read(a, b)
        edges = np.flatnonzero(np.diff(docs)) + 1  # where a document starts inside the window
        bounds = np.concatenate([[0], edges, [b - a]])
        longest = int(np.argmax(np.diff(bounds)))
        lo, hi = int(bounds[longest]), int(bounds[longest + 1])
        start, _ = self.split.document_span(a + lo)
        return tokens[lo + int(start == a + lo):hi], start

    def pair(self, i: int, rng: np.random.Generator):
        """(A, B, NSP label) of chunk i, or None for an empty row; draws: the coin, the cut, then the
        random position."""
        body, doc_start = self.chunk(i)
        if len(body) < 2:
            return None
        label = int(rng.random() < 0.5)  # 1: B is random (BERT's convention: 0 = IsNext)
        units = self._units(body, True)
        if len(units) < 2:
            units = [body[j:j + 1] for j in range(len(body))]
        cut = int(rng.integers(1, len(units)))  # at least one unit on each side
        a = np.concatenate(units[:cut])
        if label == 0:
            b = np.concatenate(units[cut:])
        else:
            n = self.split.n_tokens
            doc_stop = self.split.document_span(doc_start)[1]
            # Uniform over the positions of every other document: the chunk's document is skipped.
            p = int(rng.integers(0, n - (doc_stop - doc_start)))
            p += (doc_stop - doc_start) if p >= doc_start else 0
            start, stop = self.split.document_span(p)
            target = max(1, self.max_tokens - len(a))
            tokens = self.split.read(p, min(stop, p + 2 * self.max_tokens + target))[0]
            tokens = tokens[int(p == start):]
            parts, total = [], 0
            for sentence in self._units(tokens, p <= start + 1) if len(tokens) else []:
                if total >= target:
                    break
                parts.append(sentence)
                total += len(sentence)
            b = np.concatenate(parts) if parts else tokens[:target]
        a, b = truncate_pair(a, b, self.max_tokens)
        return a, b, label

    def example(self, i: int, rng: np.random.Generator):
        return None if (pair := self.pair(i, rng)) is None else self._row_of(*pair)


class MaskedData:
    """Training and validation `MaskedBatch`es for mlm_nsp (BERT) or mlm (RoBERTa).

    Attributes: `tokenizer`, `nsp` (whether rows are sentence pairs), `spec` (MaskSpec), `train` / `val`
    (the sequences: `SentencePairs` or `StreamSequences`), `val_tokens` (the validation split's tokens),
    `seq_len`, `batch_size`, `seed`, `static` (objective.static_masking).
    """

    def __init__(self, cfg: Experiment, seed: int, tokenizer, source):
        ob, d = cfg.objective, cfg.data
        self.tokenizer, self.seed, self.static = tokenizer, seed, ob.static_masking
        self.seq_len, self.batch_size = d.seq_len, d.batch_size
        self.nsp = ob.name == "mlm_nsp"
        self.spec = make_mask_spec(ob, tokenizer.vocab_size, tokenizer.special_ids, tokenizer.mask_id)
        if isinstance(source, Documents):
            if self.nsp:
                self.train = SentencePairs(source.train, tokenizer, d.seq_len, "training")
                self.val = SentencePairs(source.val, tokenizer, d.seq_len, "validation")
            else:
                self.train = StreamSequences(source.train, tokenizer, d.seq_len, False, "training")
                self.val = StreamSequences(source.val, tokenizer, d.seq_len, True, "validation")
            self._order = EpochOrder(len(self.train), self.batch_size, self.seed)
        else:  # a token store: sequences read by index, the order never materialised
            from gptjax.data.store import StoreOrder

            train, val = source.splits["train"], source.splits["val"]
            if self.nsp:
                self.train = StoreSentencePairs(train, tokenizer, d.seq_len, "training")
                self.val = StoreSentencePairs(val, tokenizer, d.seq_len, "validation")
            else:
                self.train = StoreStreamSequences(train, tokenizer, d.seq_len, False, "training")
                self.val = StoreStreamSequences(val, tokenizer, d.seq_len, True, "validation")
            self._order = StoreOrder(len(self.train), self.batch_size, self.seed)
        self.val_tokens = self.val.tokens

    def sequences(self, step: int, rows=None) -> np.ndarray:
        """Indices (into `train`) of the sequences of global batch `step` (its rows `rows`, default all)."""
        if isinstance(self._order, EpochOrder):
            indices = self._order.indices(step)
            return indices if rows is None else indices[np.asarray(rows, dtype=np.int64)]
        return self._order.indices(step, rows)

    def _row(self, source, i: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        example = source.example(i, rng)
        if example is None:
            return self._empty_row()
        tokens_L, type_ids_L, label = example
        inputs_L, chosen_L = mask_sequence(tokens_L, self.spec, rng)
        real_L = np.arange(self.seq_len) < np.count_nonzero(tokens_L != self.tokenizer.pad_id)
        return (inputs_L, np.where(chosen_L, tokens_L, self.tokenizer.pad_id).astype(np.int32),
                chosen_L.astype(np.float32), real_L.astype(np.int32), type_ids_L, np.int32(label),
                np.float32(self.nsp))

    def _empty_row(self) -> tuple[np.ndarray, ...]:
        pad_L = np.full(self.seq_len, self.tokenizer.pad_id, np.int32)
        zeros_L = np.zeros(self.seq_len, np.int32)
        return pad_L, pad_L, zeros_L.astype(np.float32), zeros_L, zeros_L, np.int32(0), np.float32(0)

    def train_batch(self, step: int, rows=None) -> MaskedBatch:
        """Global batch `step`, [batch_size, seq_len] (or only its rows `rows`); the same for the same
        (seed, step), always."""
        rows_R = np.arange(self.batch_size) if rows is None else np.asarray(rows, dtype=np.int64)
        out = []
        for b, i in zip(rows_R, self.sequences(step, rows_R), strict=True):
            key = [self.seed, STATIC_TAG, int(i)] if self.static else [self.seed, step, int(b)]
            out.append(self._row(self.train, int(i), np.random.default_rng(key)))
        return stack_rows(MaskedBatch, out)

    def val_batches(self, n: int) -> list[MaskedBatch]:
        """The first n validation batches: identical every call and for every seed; rows past the end of
        the split are padding with weight 0 (and NSP weight 0)."""
        rows = [self._row(self.val, r, np.random.default_rng([VAL_SEED, r])) if r < len(self.val)
                else self._empty_row() for r in range(n * self.batch_size)]
        return stack_batches(MaskedBatch, rows, self.batch_size)
