"""Document sources: where the text comes from, as two lists of documents (train, validation).

`data.source` picks one builder from `SOURCES` by the part before the first colon:

- `pydoc`: the standard library's documentation topics (`pydoc_data.topics`), in every CPython, so
  the default experiment runs offline with nothing downloaded.
- `text:PATH`: a file, directory or glob of UTF-8 text; never read into a list here: it is prepared on
  first use into a cached token store (`prepare.prepared_text`), which every objective reads by index.
- `tfds:NAME`: a tensorflow-datasets dataset already prepared as array_record in `data.tfds_data_dir`,
  read by random access without TensorFlow (TensorFlow would add 1.4 GB to the install).

Sources without a validation split hold out whole documents with a fixed seed, so runs with
different training seeds are evaluated on the same text and no document is in both splits.

`load_examples(cfg)` gives labelled (text, label) pairs for classification fine-tuning from the same
sources: `pydoc` becomes a 4-class task (which part of the documentation a passage comes from, split
by whole topics), `tfds:NAME` adds `data.tfds_label_key`, and `text:PATH`, having no labels, is refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gptjax.config import ConfigError, DataConfig, first_line

SPLIT_SEED = 1_234_567  # fixed on purpose: the validation split must not depend on train.seed


class Documents(NamedTuple):
    train: list[str]
    val: list[str]


def split_documents(docs: list[str], val_fraction: float, what: str) -> Documents:
    """Hold out ceil(val_fraction·n) documents (at least 1, leaving at least 1) by a fixed permutation.

    Both splits keep the corpus order, so `val_text()` reads like the original.
    """
    n = len(docs)
    if n < 2:
        raise ConfigError(f"{what} has {n} document{'' if n == 1 else 's'}; at least 2 are needed to hold "
                          "one out for validation (separate documents in a file by blank lines)")
    train_idx, val_idx = _hold_out(n, val_fraction)
    return Documents([docs[i] for i in train_idx], [docs[i] for i in val_idx])


def _hold_out(n: int, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of n >= 2 items: ceil(val_fraction·n) held out (at least 1, leaving 1), sorted."""
    # The epsilon keeps 0.3·10 (= 3.0000000000000004 in floating point) at 3 documents, not 4.
    n_val = min(max(1, math.ceil(val_fraction * n - 1e-9)), n - 1)
    order_N = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(order_N[n_val:]), np.sort(order_N[:n_val])


def _pydoc(cfg: DataConfig, arg: str) -> Documents:
    if arg:
        raise ConfigError(f"data.source 'pydoc' takes no argument, got {cfg.source!r}")
    from pydoc_data.topics import topics

    docs = [topics[key] for key in sorted(topics)]
    return split_documents([d for d in docs if d.strip()], cfg.val_fraction, "data.source 'pydoc'")


def _text(cfg: DataConfig, arg: str) -> Documents:
    # A text corpus can be any size: it is never read into a list, but prepared into a cached token store
    # (gptjax.data.store.open_store) that every objective reads by index.
    raise ConfigError(f"data.source {cfg.source!r} is read through a token store (prepared on first use), "
                      "not as a list of documents")


def _split_name(split: str) -> str:
    return re.split(r"[\[+]", split, maxsplit=1)[0]  # "train[:90%]" → "train"


def _open_tfds(cfg: DataConfig, name: str):
    """The prepared builder of `name`, checked for array_record, the text feature and the train split."""
    if not name:
        raise ConfigError("data.source 'tfds:' needs a dataset name, e.g. tfds:lm1b")
    if cfg.tfds_data_dir is not None and not Path(cfg.tfds_data_dir).expanduser().is_dir():
        raise ConfigError(f"data.tfds_data_dir {cfg.tfds_data_dir} does not exist")
    # Imported here: tfds takes half a second to import, which only this source should pay.
    import tensorflow_datasets as tfds

    data_dir = tfds.core.constants.DATA_DIR  # tfds's default: $TFDS_DATA_DIR or ~/tensorflow_datasets
    if cfg.tfds_data_dir:
        data_dir = str(Path(cfg.tfds_data_dir).expanduser())
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise ConfigError(f"tfds dataset {name!r} not found in {data_dir}") from None
    except Exception as e:  # tfds raises ValueError, AssertionError, … with pages of help: keep line 1
        raise ConfigError(f"cannot load tfds dataset {name!r} from {data_dir}: {first_line(e)}") from None
    if not builder.is_prepared():
        raise ConfigError(f"tfds dataset {name!r} is not prepared in {data_dir}; prepare it with "
                          "download_and_prepare(file_format='array_record') (no download happens here)")
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    if file_format != "array_record":
        raise ConfigError(f"tfds dataset {name!r} in {data_dir} is stored as {file_format}; reading without "
                          "TensorFlow needs file_format='array_record'")
    features = builder.info.features
    if cfg.tfds_text_key not in features:
        raise ConfigError(f"tfds dataset {name!r} has no feature data.tfds_text_key={cfg.tfds_text_key!r}; "
                          f"features: {', '.join(features.keys())}")
    if not isinstance(features[cfg.tfds_text_key], tfds.features.Text):
        raise ConfigError(f"tfds feature {name}:{cfg.tfds_text_key} is "
                          f"{type(features[cfg.tfds_text_key]).__name__}, not Text")
    splits = list(builder.info.splits.keys())
    if _split_name(cfg.tfds_train_split) not in splits:
        raise ConfigError(f"tfds dataset {name!r} has no split data.tfds_train_split="
                          f"{cfg.tfds_train_split!r}; splits: {', '.join(splits)}")
    return builder


def _tfds(cfg: DataConfig, name: str) -> Documents:
    import grain  # as tfds, only this source pays for the import

    builder = _open_tfds(cfg, name)
    splits = list(builder.info.splits.keys())

    def read(split: str) -> list[str]:
        # Text features are written from str, so the stored bytes are UTF-8 by construction.
        texts = grain.MapDataset.source(builder.as_data_source(split=split)).map(
            lambda ex: ex[cfg.tfds_text_key].decode("utf-8", errors="replace"))
        return [t for t in texts if t.strip()]

    what = f"data.source {cfg.source!r} split {cfg.tfds_train_split!r}"
    train = read(cfg.tfds_train_split)
    if _split_name(cfg.tfds_val_split) not in splits:
        return split_documents(train, cfg.val_fraction, what)
    if not train:
        raise ConfigError(f"{what}: empty corpus (no non-blank text)")
    val = read(cfg.tfds_val_split)
    if not val:
        raise ConfigError(f"data.source {cfg.source!r} split {cfg.tfds_val_split!r}: no non-blank text")
    return Documents(train, val)


# The part of data.source before the first colon → builder(cfg, the part after it).
SOURCES: dict[str, Callable[[DataConfig, str], Documents]] = {
    "pydoc": _pydoc,
    "text": _text,
    "tfds": _tfds,
}


def load_documents(cfg: DataConfig) -> Documents:
    """The (train, validation) documents of `cfg.source`; ConfigError (one line) on any bad input."""
    kind, _, arg = cfg.source.partition(":")
    if kind not in SOURCES:
        raise ConfigError(f"unknown data.source {cfg.source!r}; known: pydoc, text:PATH, tfds:NAME")
    return SOURCES[kind](cfg, arg)


# ---------------------------------------------------------------- labelled examples (classification)


class Examples(NamedTuple):
    """Labelled passages for classification: (text, label) pairs, label in range(len(label_names))."""

    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    label_names: list[str]


# The pydoc task: which part of the documentation a passage comes from. Each pydoc topic is a section
# label of one reStructuredText file of CPython's Doc/ tree (Doc/tools/extensions/pyspecific.py lists
# them), so the file is the ground truth, and each file has its own register: statements describe what
# a statement does when executed, expressions how a value is computed from operands and literals, the
# data model which special method Python calls, and the built-in types what a method of a str, list or
# dict returns. Lexical analysis (literals, identifiers) joins expressions, whose atoms it defines.
# Left out on purpose: "compound" and "specialnames" (chapter-wide labels that contain other topics
# whole), "else" (the text of "if" under a second name), the execution model chapter (4 topics nested
# in one another, 39 passages: too few to hold one out and keep the class in training) and "debugger"
# (pdb's manual, a tool rather than a type, whose 105 passages would swamp its class).
PYDOC_CLASSES: dict[str, tuple[str, ...]] = {
    "statements": ("assert", "assignment", "augassign", "break", "continue", "del", "global", "import",
                   "nonlocal", "pass", "raise", "return", "yield", "async", "class", "for", "function",
                   "if", "try", "while", "with"),
    "expressions": ("atom-identifiers", "atom-literals", "attribute-references", "await", "binary",
                    "bitwise", "booleans", "calls", "comparisons", "conversions", "dict", "exprlists",
                    "in", "lambda", "lists", "operator-summary", "power", "shifting", "slicings",
                    "subscriptions", "unary", "floating", "identifiers", "imaginary", "integers",
                    "numbers", "strings", "id-classes"),
    "data model": ("attribute-access", "callable-types", "context-managers", "customization",
                   "numeric-types", "objects", "sequence-types", "types"),
    "built-in types": ("bltin-code-objects", "bltin-ellipsis-object", "bltin-null-object",
                       "bltin-type-objects", "specialattrs", "string-methods", "truth", "typesfunctions",
                       "typesmapping", "typesmethods", "typesmodules", "typesseq", "typesseq-mutable",
                       "formatstrings"),
}
PYDOC_EXCLUDED = ("compound", "specialnames", "else", "execmodel", "naming", "exceptions",
                  "dynamic-features", "debugger")

_UNDERLINE = re.compile(r"[*=\-~^\"#+]{3,}")  # a heading's underline in pydoc's plain text
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"*(])")
MAX_PASSAGE_SENTENCES, MIN_PASSAGE_CHARS, MAX_PASSAGE_CHARS = 3, 20, 400


def topic_passages(text: str) -> list[str]:
    """Prose passages of one pydoc topic: up to 3 consecutive sentences of a paragraph, 20–400 chars.

    Headings are dropped (their wording, "The "assert" statement", would give the label away), and so
    are grammar rules, interpreter sessions, tables and lines without five words, which are not prose.
    Each paragraph is reflowed onto one line with single spaces; a sentence over 400 characters is dropped.
    """
    passages = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in paragraph.split("\n")]
        if any(_UNDERLINE.fullmatch(line) for line in lines):
            continue
        flat = " ".join(paragraph.split())  # reflowed; runs of spaces (two after a full stop) become one
        if ("::=" in flat or flat.startswith((">>>", "+-", "|", "..."))
                or len(re.findall(r"[A-Za-z]{2,}", flat)) < 5 or not re.search(r"[.:?!]$", flat)):
            continue
        chunk, n_sentences = "", 0
        for sentence in _SENTENCE_END.split(flat):
            if chunk and (len(chunk) + 1 + len(sentence) > MAX_PASSAGE_CHARS
                          or n_sentences == MAX_PASSAGE_SENTENCES):
                passages.append(chunk)
                chunk, n_sentences = "", 0
            chunk, n_sentences = f"{chunk} {sentence}".strip(), n_sentences + 1
        passages.append(chunk)
    return [p for p in passages if MIN_PASSAGE_CHARS <= len(p) <= MAX_PASSAGE_CHARS]


def pydoc_topic_split(val_fraction: float) -> tuple[dict[str, int], list[str], list[str]]:
    """(topic → label, train topics, val topics): whole topics held out per class with SPLIT_SEED.

    Stratified by passages, since topics range from 1 to 150 passages: each class visits its topics
    (those in this Python) in a fixed random order and holds one out whenever that keeps its held-out
    passages within 1.25·ceil(val_fraction · its passages), until that target is reached. A class
    whose every topic is too big holds out its smallest; at least one topic always stays in training.
    """
    from pydoc_data.topics import topics

    label_of, train, val = {}, [], []
    for label, names in enumerate(PYDOC_CLASSES.values()):
        present = sorted(t for t in names if t in topics)
        label_of.update(dict.fromkeys(present, label))
        size = {t: len(set(topic_passages(topics[t]))) for t in present}
        target = math.ceil(val_fraction * sum(size.values()))
        held, n_held = [], 0
        for i in np.random.default_rng(SPLIT_SEED).permutation(len(present)):
            if n_held >= target or len(held) == len(present) - 1:
                break
            if n_held + size[present[i]] <= 1.25 * target:
                held.append(present[i])
                n_held += size[present[i]]
        if not held and len(present) > 1:
            held = [min(present, key=lambda t: (size[t], t))]
        train += [t for t in present if t not in held]
        val += held
    return label_of, sorted(train), sorted(val)


def _pydoc_examples(cfg: DataConfig, arg: str) -> Examples:
    if arg:
        raise ConfigError(f"data.source 'pydoc' takes no argument, got {cfg.source!r}")
    from pydoc_data.topics import topics

    label_of, train_topics, val_topics = pydoc_topic_split(cfg.val_fraction)
    passages = {name: topic_passages(topics[name]) for name in label_of}
    labels_of_passage: dict[str, set[int]] = {}
    for name, texts in passages.items():
        for text in texts:
            labels_of_passage.setdefault(text, set()).add(label_of[name])
    # A passage in topics of two classes (a "see also" line shared by "with" and the data model) has
    # no single answer.
    ambiguous = {text for text, labels in labels_of_passage.items() if len(labels) > 1}

    def examples(names: list[str], exclude: set[str]) -> list[tuple[str, int]]:
        # Topics overlap ("augassign" is a section of "assignment"): each passage once per split.
        seen, out = exclude | ambiguous, []
        for name in names:
            for passage in passages[name]:
                if passage not in seen:
                    seen.add(passage)
                    out.append((passage, label_of[name]))
        return out

    val = examples(val_topics, set())
    # A passage a held-out topic shares with a training topic stays out of training.
    train = examples(train_topics, {text for text, _ in val})
    return Examples(train, val, list(PYDOC_CLASSES))


def _text_examples(cfg: DataConfig, arg: str) -> Examples:
    raise ConfigError(f"data.source {cfg.source!r}: classification needs labels; use pydoc or tfds:NAME")


def _tfds_examples(cfg: DataConfig, name: str) -> Examples:
    builder = _open_tfds(cfg, name)
    import grain
    import tensorflow_datasets as tfds

    features, key = builder.info.features, cfg.tfds_label_key
    if key not in features:
        raise ConfigError(f"tfds dataset {name!r} has no feature data.tfds_label_key={key!r}; "
                          f"features: {', '.join(features.keys())}")
    feature = features[key]
    is_int = isinstance(feature, tfds.features.Tensor) and np.issubdtype(feature.np_dtype, np.integer)
    if not isinstance(feature, tfds.features.ClassLabel) and not (is_int and feature.shape == ()):
        raise ConfigError(f"tfds feature {name}:{key} is {type(feature).__name__}, not a ClassLabel or "
                          "an integer scalar")

    def read(split: str) -> list[tuple[str, int]]:
        pairs = grain.MapDataset.source(builder.as_data_source(split=split)).map(
            lambda ex: (ex[cfg.tfds_text_key].decode("utf-8", errors="replace"), int(ex[key])))
        pairs = [(text, label) for text, label in pairs if text.strip()]
        if not pairs:
            raise ConfigError(f"data.source {cfg.source!r} split {split!r}: no non-blank text")
        if (low := min(label for _, label in pairs)) < 0:
            # GLUE's test splits are unlabelled and store -1.
            raise ConfigError(f"data.source {cfg.source!r} split {split!r} has label {low} (unlabelled?); "
                              "labels must be >= 0")
        return pairs

    train = read(cfg.tfds_train_split)
    if _split_name(cfg.tfds_val_split) in builder.info.splits:
        val = read(cfg.tfds_val_split)
    else:
        if len(train) < 2:
            raise ConfigError(f"data.source {cfg.source!r} split {cfg.tfds_train_split!r} has {len(train)} "
                              "example; at least 2 are needed to hold one out for validation")
        train_idx, val_idx = _hold_out(len(train), cfg.val_fraction)
        train, val = [train[i] for i in train_idx], [train[i] for i in val_idx]
    if isinstance(feature, tfds.features.ClassLabel):
        names = list(feature.names)
    else:
        names = [str(i) for i in range(1 + max(label for _, label in train + val))]
    if (high := max(label for _, label in train + val)) >= len(names):
        raise ConfigError(f"data.source {cfg.source!r}: label {high} is out of range for {len(names)} "
                          "class names")
    return Examples(train, val, names)


# The part of data.source before the first colon → builder of labelled examples.
EXAMPLE_SOURCES: dict[str, Callable[[DataConfig, str], Examples]] = {
    "pydoc": _pydoc_examples,
    "text": _text_examples,
    "tfds": _tfds_examples,
}


def load_examples(cfg: DataConfig) -> Examples:
    """The (train, validation) labelled examples of `cfg.source`; ConfigError (one line) on bad input.

    `pydoc` is the offline task of `PYDOC_CLASSES` (4 classes, split by whole topics); `tfds:NAME`
    reads `data.tfds_text_key` and `data.tfds_label_key` (label names from its ClassLabel feature);
    `text:PATH` has no labels and is refused.
    """
    kind, _, arg = cfg.source.partition(":")
    if kind not in EXAMPLE_SOURCES:
        raise ConfigError(f"unknown data.source {cfg.source!r}; known: pydoc, text:PATH, tfds:NAME")
    return EXAMPLE_SOURCES[kind](cfg, arg)
