"""Tokenizers: text ⇄ int32 token ids, with the special ids the data pipeline and objectives need.

Every tokenizer exposes `vocab_size`, `eot_id` (end of text, which also opens every document, so the
model can be sampled from it), `pad_id` (fills short validation rows; its targets carry weight 0) and
`special_ids` (every id that ordinary text never produces). Three are registered:

- `byte`: UTF-8 bytes; needs no training and no files, so any text is covered offline. It has no
  [CLS]/[SEP]/[MASK]/sentinels, so BERT, RoBERTa and T5 objectives need `bpe`.
- `bpe`: byte-level BPE (GPT-2's scheme, Radford et al. 2019: BPE over bytes, so every string is
  representable and nothing is unknown) trained with HF `tokenizers` on the training split only, so
  no validation text leaks into the vocabulary. Its special tokens take the lowest ids, in the order
  of `BPE_SPECIAL_TOKENS`, with T5's 100 sentinels (Raffel et al. 2020) after BERT's four.
- `hf`: a pre-trained checkpoint's tokenizer.json, as `import-hf` writes it into the workdir.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gptjax.config import ConfigError, DataConfig, TokenizerKind, first_line, registry


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, then EOT (256) and PAD (257).

    Encoding never fails and decoding any id sequence gives valid text (a sequence cut inside a
    multi-byte character decodes with U+FFFD), which is what sampling from a byte model needs.
    """

    vocab_size: int = 258
    eot_id: int = 256
    pad_id: int = 257
    special_ids: np.ndarray = np.array([256, 257], dtype=np.int32)

    def encode(self, text: str) -> np.ndarray:
        """The UTF-8 bytes of `text` as int32 ids; no special tokens are added."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        """Text of `ids` (list, NumPy or JAX array); special ids are dropped, bad UTF-8 replaced."""
        ids_N = np.asarray(ids).reshape(-1)
        ids_N = ids_N[(ids_N >= 0) & (ids_N < 256)]
        return ids_N.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=258, eot_id=256, pad_id=257)"


# The smallest BPE trained here: the 361 special and byte ids plus room for merges. A limit of training
# only: a checkpoint's imported vocabulary (import-hf) may be smaller.
MIN_BPE_VOCAB = 512
N_SENTINELS = 100  # T5's <extra_id_0> … <extra_id_99>
BPE_SPECIAL_TOKENS = ("[PAD]", "[EOT]", "[CLS]", "[SEP]", "[MASK]",
                      *(f"<extra_id_{i}>" for i in range(N_SENTINELS)))
_FORMAT = "gptjax.BpeTokenizer/1"  # the saved file's first key, so a stray tokenizer.json is refused


class BpeTokenizer:
    """Byte-level BPE with [PAD]=0, [EOT]=1, [CLS]=2, [SEP]=3, [MASK]=4 and sentinels 5..104.

    Build with `train(docs, vocab_size)` or `load(path)`. `encode` never yields a special id: the
    text "[MASK]" or "<extra_id_0>" in a document is ordinary text, so a corpus cannot forge the
    objective's control tokens. `decode(encode(t)) == t` for every str `t`. `vocab_size` is the
    requested size even when the corpus supports fewer merges; the ids in that gap are never produced
    (the model's embedding just has a few unused rows), so a cached tokenizer always matches the config.
    """

    pad_id: int = 0
    eot_id: int = 1
    cls_id: int = 2
    sep_id: int = 3
    mask_id: int = 4

    def __init__(self, hf_tokenizer, vocab_size: int):
        from tokenizers import Tokenizer as HfTokenizer

        if not isinstance(hf_tokenizer, HfTokenizer):
            raise TypeError(f"expected a tokenizers.Tokenizer, got {type(hf_tokenizer).__name__}")
        for i, token in enumerate(BPE_SPECIAL_TOKENS):
            if (got := hf_tokenizer.token_to_id(token)) != i:
                raise ValueError(f"special token {token} must have id {i}, not {got}")
        if (n := hf_tokenizer.get_vocab_size()) > vocab_size:
            raise ValueError(f"tokenizer has {n} tokens, more than vocab_size={vocab_size}")
        # Not serialised by `tokenizers`, so set on every construction: special tokens in the input text
        # are split like any other text instead of being matched as added tokens.
        hf_tokenizer.encode_special_tokens = True
        self._hf = hf_tokenizer
        self._n_learned_end = hf_tokenizer.get_vocab_size()  # ids in [this, vocab_size) are never produced
        self.vocab_size = vocab_size
        self.sentinel_ids = np.arange(5, 5 + N_SENTINELS, dtype=np.int32)
        self.special_ids = np.arange(len(BPE_SPECIAL_TOKENS), dtype=np.int32)

    @classmethod
    def train(cls, docs: list[str], vocab_size: int) -> BpeTokenizer:
        """Learn merges on `docs` until `vocab_size` tokens (specials and the 256 bytes included).

        Deterministic: the same documents give a byte-identical saved file, also in another process
        (tested): the byte alphabet is fixed up front, so token ids, and the trainer's tie-breaks on
        them, do not depend on hash order.
        """
        from tokenizers import Tokenizer as HfTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        n_base = len(BPE_SPECIAL_TOKENS) + 256
        if vocab_size < n_base:
            raise ConfigError(f"data.tokenizer_vocab={vocab_size} is below the {n_base} ids of the special "
                              "tokens and the 256 bytes")
        hf = HfTokenizer(models.BPE())
        # GPT-2's pre-tokenizer regex, no prefix space and no normaliser, so decoding gives back the
        # exact input (a normaliser such as NFC would change some strings).
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(BPE_SPECIAL_TOKENS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        hf.train_from_iterator(docs, trainer=trainer)
        return cls(hf, vocab_size)

    def encode(self, text: str) -> np.ndarray:
        """The ids of `text` as int32; no special tokens are added and none can come from the text."""
        return np.asarray(self._hf.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode(self, ids) -> str:
        """Text of `ids` (list, NumPy or JAX array); special and never-produced ids are dropped.

        A sequence cut inside a multi-byte character decodes with U+FFFD, as the byte tokenizer does.
        """
        ids_N = np.asarray(ids).reshape(-1).astype(np.int64)
        ids_N = ids_N[(ids_N >= len(BPE_SPECIAL_TOKENS)) & (ids_N < self._n_learned_end)]
        return self._hf.decode(ids_N.tolist(), skip_special_tokens=True)

    def token(self, i: int) -> str:
        """The vocabulary entry of id `i` (bytes shown in GPT-2's printable byte alphabet)."""
        return self._hf.id_to_token(int(i)) or ""

    def save(self, path: Path) -> None:
        """Write the tokenizer as one JSON file (the `tokenizers` JSON inside a small envelope).

        Written to a temporary name and renamed, so a crash never leaves a truncated file behind.
        """
        path = Path(path)
        payload = {"format": _FORMAT, "vocab_size": self.vocab_size,
                   "tokenizer": json.loads(self._hf.to_str())}
        tmp = path.with_name(f"{path.name}.tmp")
        tmp.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> BpeTokenizer:
        """The tokenizer saved at `path`; ConfigError (one line) if it is missing or not one of ours."""
        from tokenizers import Tokenizer as HfTokenizer

        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
                raise ValueError(f"not a {_FORMAT} file")
            return cls(HfTokenizer.from_str(json.dumps(payload["tokenizer"])), int(payload["vocab_size"]))
        except Exception as e:  # OSError, JSONDecodeError, or tokenizers' bare Exception with its parse error
            raise ConfigError(f"cannot load the BPE tokenizer {path}: {first_line(e)}") from None

    def __getstate__(self) -> dict:
        return {"tokenizer": self._hf.to_str(), "vocab_size": self.vocab_size}

    def __setstate__(self, state: dict) -> None:
        # Through __init__, because `tokenizers` pickles without the encode_special_tokens switch: a
        # copy sent to a worker process would otherwise turn the text "[MASK]" into the special id.
        from tokenizers import Tokenizer as HfTokenizer

        self.__init__(HfTokenizer.from_str(state["tokenizer"]), state["vocab_size"])

    def __repr__(self) -> str:
        return (f"BpeTokenizer(vocab_size={self.vocab_size}, learned={self._n_learned_end}, "
                f"pad_id=0, eot_id=1, cls_id=2, sep_id=3, mask_id=4, sentinels 5..{4 + N_SENTINELS})")


def _byte(cfg: DataConfig, train_docs: list[str] | None, cache: Path | None) -> ByteTokenizer:
    return ByteTokenizer()


def _bpe(cfg: DataConfig, train_docs: list[str] | None, cache: Path | None) -> BpeTokenizer:
    if cache is not None and Path(cache).exists():
        tokenizer = BpeTokenizer.load(cache)
        if tokenizer.vocab_size != cfg.tokenizer_vocab:
            raise ConfigError(f"the cached BPE tokenizer {cache} has vocab_size {tokenizer.vocab_size}, but "
                              f"data.tokenizer_vocab={cfg.tokenizer_vocab}; delete it or use a new workdir")
        return tokenizer
    if cfg.tokenizer_vocab < MIN_BPE_VOCAB:
        raise ConfigError(f"data.tokenizer_vocab must be >= {MIN_BPE_VOCAB} to train a BPE, "
                          f"got {cfg.tokenizer_vocab}")
    if not train_docs:
        raise ConfigError("data.tokenizer=bpe needs training documents or a saved tokenizer file; "
                          "got neither")
    return BpeTokenizer.train(train_docs, cfg.tokenizer_vocab)


class HfTokenizer:
    """A Hugging Face `tokenizers` tokenizer.json (GPT-2, BERT, T5 checkpoints) behind gptjax's tokenizer
    interface: `vocab_size`, `eot_id`, `pad_id`, `special_ids`, `encode`, `decode`, and `cls_id` /
    `sep_id` / `mask_id` / `sentinel_ids` where the vocabulary has them.

    End of text is GPT-2's <|endoftext|>, T5's </s> or BERT's [SEP]; padding is [PAD] or <pad>, and for
    GPT-2, which has none, <|endoftext|> (padded targets carry weight 0, so the id does not matter there).
    `encode` adds no special tokens (no [CLS], no </s>): the objectives place them.
    """

    EOT_TOKENS = ("<|endoftext|>", "</s>", "[SEP]")
    PAD_TOKENS = ("[PAD]", "<pad>")

    def __init__(self, hf_tokenizer):
        self._hf = hf_tokenizer
        self.vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)
        eot = [i for t in self.EOT_TOKENS if (i := hf_tokenizer.token_to_id(t)) is not None]
        if not eot:
            raise ConfigError(f"tokenizer has none of the end-of-text tokens {', '.join(self.EOT_TOKENS)}")
        self.eot_id = eot[0]
        pad = [i for t in self.PAD_TOKENS if (i := hf_tokenizer.token_to_id(t)) is not None]
        self.pad_id = pad[0] if pad else self.eot_id
        for attr, token in (("cls_id", "[CLS]"), ("sep_id", "[SEP]"), ("mask_id", "[MASK]")):
            if (i := hf_tokenizer.token_to_id(token)) is not None:
                setattr(self, attr, i)
        sentinels = []
        while (i := hf_tokenizer.token_to_id(f"<extra_id_{len(sentinels)}>")) is not None:
            sentinels.append(i)
        if sentinels:
            self.sentinel_ids = np.array(sentinels, np.int32)
        added = [t.content for t in hf_tokenizer.get_added_tokens_decoder().values() if t.special]
        special = {hf_tokenizer.token_to_id(t) for t in added} | {self.eot_id, self.pad_id}
        self.special_ids = np.array(sorted(special), np.int32)

    @classmethod
    def load(cls, path: Path) -> HfTokenizer:
        """The tokenizer.json at `path`; ConfigError (one line) if it is missing or unreadable."""
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_file(str(path)))
        except ConfigError:
            raise
        except Exception as e:  # tokenizers raises a bare Exception with its parse error
            raise ConfigError(f"cannot load the tokenizer {path}: {first_line(e)}") from None

    def save(self, path: Path) -> None:
        """Write the tokenizer.json again (a run started with train.init_from keeps its own copy)."""
        self._hf.save(str(path))

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._hf.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode(self, ids) -> str:
        """Text of `ids` (list, NumPy or JAX array), special tokens dropped."""
        ids = np.asarray(ids).reshape(-1).astype(np.int64).tolist()
        return self._hf.decode(ids, skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"HfTokenizer(vocab_size={self.vocab_size}, eot_id={self.eot_id}, pad_id={self.pad_id})"


def hf_tokenizer(cfg: DataConfig, train_docs: list[str] | None, cache: Path | None) -> HfTokenizer:
    """Registry builder for `data.tokenizer=hf`: the workdir's tokenizer.json (written by `import-hf`)."""
    if cache is None or not Path(cache).is_file():
        raise ConfigError(f"data.tokenizer=hf needs the workdir's tokenizer.json (from import-hf); {cache} "
                          "does not exist")
    return HfTokenizer.load(cache)


Tokenizer = ByteTokenizer | BpeTokenizer | HfTokenizer

# name → builder(cfg, training documents, cache file); the caller saves a trained tokenizer itself.
TOKENIZERS: dict[str, Callable[[DataConfig, list[str] | None, Path | None], Tokenizer]] = registry(
    TokenizerKind, {"byte": _byte, "bpe": _bpe, "hf": hf_tokenizer})


def build_tokenizer(cfg: DataConfig, train_docs: list[str] | None = None,
                    cache: Path | None = None) -> Tokenizer:
    """The tokenizer named by `cfg.tokenizer`; an unknown name is a ConfigError listing the known ones.

    `byte` ignores the other arguments. `bpe` loads `cache` if that file exists (ConfigError if its
    vocab_size differs from `cfg.tokenizer_vocab`), otherwise trains on `train_docs`; it never writes
    the cache, so the caller can save it under its workdir lock with `tokenizer.save(cache)`.
    """
    if cfg.tokenizer not in TOKENIZERS:
        raise ConfigError(f"unknown data.tokenizer {cfg.tokenizer!r}; known: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[cfg.tokenizer](cfg, train_docs, cache)
