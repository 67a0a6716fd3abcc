"""Corpora for `prepare`: a source split into work units, each read as a stream of documents.

A source is planned in the main process from file sizes and metadata alone (nothing is read whole):
`plan_units(spec, cfg, unit_bytes)` returns `Unit`s, each a few tens of MB of input that one worker
reads with `unit_documents(unit, cfg)` and turns into one shard per split. Units depend only on the
corpus and `unit_bytes`, never on the number of workers, so the store is the same however it is made.

Sources (`spec`):

- `pydoc`: the standard library's documentation topics, held out as the in-memory `pydoc` source does.
- `text:PATH`, a file, a directory (every non-hidden file, recursively) or a glob. A file is one
  document unless `data.text_split` names a separator (escapes such as `\\n` are decoded). A single
  file's last `data.val_fraction` of bytes (from a line start) is validation, a document of its own;
  a directory's or glob's files are held out whole by a fixed permutation. A bare path is `text:`
  unless it ends in .jsonl or .parquet.
- `jsonl:PATH` and `parquet:PATH` (file, directory or glob): one document per record, its
  `data.text_field` field; `parquet` is streamed in record batches of its row groups (pyarrow).
- `tfds:NAME`: a tensorflow-datasets dataset in array_record, read by record ranges aligned to its
  shard files; its validation split if it has one.

Records of `jsonl`, `parquet` and `tfds` (without a validation split) are held out by a keyed hash of
where they are (file and byte offset, row or record index): fixed, independent of the seed and of how
the corpus is cut into units.
"""

from __future__ import annotations

import codecs
import functools
import glob
import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gptjax.config import ConfigError, DataConfig, first_line

KINDS = ("pydoc", "text", "jsonl", "parquet", "tfds")
_HOLD_OUT_KEY = b"gptjax.hold-out/1"  # changing it changes every hash-held-out validation split
_SNIFF_BYTES = 1 << 16


class CorpusError(ConfigError):
    """Bad input found while reading a unit; `path` and `offset` locate it (the line is found later)."""

    def __init__(self, message: str, path: str = "", offset: int = -1):
        super().__init__(message)
        self.path, self.offset = path, offset

    def __reduce__(self):  # raised in a worker process, pickled back to the parent whole
        return CorpusError, (str(self), self.path, self.offset)


class Unit(NamedTuple):
    """One worker's share of the corpus: `pieces` are (path, start, stop) byte / row / record ranges."""

    kind: str
    pieces: tuple[tuple[str, int, int], ...]
    split: str  # "train" | "val": all of it; "hash": per document; "val-start": val, opening a document;
    # "pydoc": the pydoc source's own hold-out
    size: int  # input bytes (records for tfds), for the progress bar
    root: str  # paths in hold-out keys are relative to it, so a moved corpus keeps its split

    def to_json(self) -> list:
        return [self.kind, [list(p) for p in self.pieces], self.split, self.size, self.root]


def text_separator(cfg: DataConfig) -> str:
    """`data.text_split` with backslash escapes decoded ('' = a file is one document)."""
    try:
        return codecs.decode(cfg.text_split, "unicode_escape") if cfg.text_split else ""
    except UnicodeDecodeError as e:
        raise ConfigError(f"data.text_split={cfg.text_split!r} is not a valid escaped string: "
                          f"{e.reason}") from None


def parse_source(spec: str) -> tuple[str, str]:
    """(kind, argument) of a prepare source; a bare path is text, JSON Lines or Parquet by its suffix."""
    kind, sep, arg = spec.partition(":")
    if sep and kind in KINDS:
        if kind != "pydoc" and not arg:
            raise ConfigError(f"source {spec!r} needs a path or name after the colon")
        if kind == "pydoc" and arg:
            raise ConfigError(f"source 'pydoc' takes no argument, got {spec!r}")
        return kind, arg
    if spec == "pydoc":
        return "pydoc", ""
    suffix = spec.rsplit(".", 1)[-1].lower() if "." in Path(spec).name else ""
    return {"jsonl": "jsonl", "parquet": "parquet"}.get(suffix, "text"), spec


def held_out(key: str, val_fraction: float) -> bool:
    """Whether the document at `key` is validation: a keyed hash, uniform in [0, 1), below the fraction."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, key=_HOLD_OUT_KEY).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < val_fraction


def _files(arg: str, suffixes: tuple[str, ...] = ()) -> tuple[list[Path], Path]:
    """(files, root) of a file, directory or glob, in a fixed order; ConfigError if there are none."""
    path = Path(arg).expanduser()
    if glob.has_magic(arg):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        # The glob's fixed leading directory: the first part holding a wildcard and everything after go.
        parts = path.parts
        fixed = next(i for i, p in enumerate(parts) if glob.has_magic(p))
        root = Path(*parts[:fixed]) if fixed else Path(".")
    elif path.is_dir():
        root = path
        files = sorted((p for p in path.rglob("*") if p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                       key=lambda p: p.relative_to(path).as_posix())
        if suffixes:
            files = [p for p in files if p.name.lower().endswith(suffixes)]
    elif path.is_file():
        files, root = [path], path.parent
    else:
        raise ConfigError(f"{arg} does not exist")
    if not files:
        what = f" ending in {' or '.join(suffixes)}" if suffixes and path.is_dir() else ""
        raise ConfigError(f"{arg} matches no files" if glob.has_magic(arg) else f"{arg} holds no files{what}")
    return files, root


def _has_text(path: Path) -> bool:
    """Refuse a binary file before any work (a NUL byte or bad UTF-8 in its first 64 KiB); False if the
    file is empty or, when that short, only whitespace."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or type(e).__name__}") from None
    if (nul := head.find(b"\0")) >= 0:
        raise ConfigError(f"{path} is binary, not text (a NUL byte at offset {nul})")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # a character cut by the 64 KiB limit is fine
            raise ConfigError(f"{path} is not UTF-8 text (invalid byte {head[e.start:e.start + 1]!r} at "
                              f"offset {e.start})") from None
    return len(head) == _SNIFF_BYTES or bool(head.strip())


def _record_start(f, offset: int, separator: bytes, size: int) -> int:
    """The first record start at or after `offset` (`size` if none): just after a separator, or without
    one just after a newline followed by non-whitespace, where byte-level BPE's pre-tokenizer cuts anyway
    (so a file tokenized in chunks gives the tokens of the whole file)."""
    if offset <= 0:
        return 0
    sep = separator or b"\n"
    base = max(0, offset - len(sep))  # a separator may end exactly at `offset`
    f.seek(base)
    buffer, searched = b"", 0
    while True:
        block = f.read(1 << 16)
        buffer += block
        i = searched
        while (i := buffer.find(sep, i)) >= 0:
            cut = base + i + len(sep)
            following = buffer[i + len(sep):i + len(sep) + 1]
            if cut >= offset and (separator or (following and not following.isspace())):
                return cut
            if not separator and not following:
                break  # the byte after this newline is in the next block
            i += 1
        if not block:
            return size
        searched = max(0, len(buffer) - len(sep))


def _byte_units(kind: str, path: Path, root: Path, separator: bytes, unit_bytes: int, split: str,
                start: int = 0, stop: int | None = None) -> list[Unit]:
    """Units of about `unit_bytes` covering bytes [start, stop) of a file, cut at record starts."""
    size = path.stat().st_size if stop is None else stop
    cuts = [start]
    with open(path, "rb") as f:
        for nominal in range(start + unit_bytes, size, unit_bytes):
            cut = _record_start(f, nominal, separator, size)
            if cut > cuts[-1] and cut < size:
                cuts.append(cut)
    cuts.append(size)
    return [Unit(kind, ((str(path), a, b),), split, b - a, str(root))
            for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]


def _group_files(kind: str, files: list[Path], root: Path, unit_bytes: int, split: str) -> list[Unit]:
    """Consecutive small files grouped into units of about `unit_bytes`; a large file is its own unit."""
    units, group, total = [], [], 0
    for path in files:
        size = path.stat().st_size
        if group and total + size > unit_bytes:
            units.append(Unit(kind, tuple(group), split, total, str(root)))
            group, total = [], 0
        group.append((str(path), 0, size))
        total += size
    if group:
        units.append(Unit(kind, tuple(group), split, total, str(root)))
    return units


def plan_units(spec: str, cfg: DataConfig, unit_bytes: int) -> list[Unit]:
    """The work units of source `spec`; ConfigError (one line) on anything wrong found without reading."""
    kind, arg = parse_source(spec)
    if kind == "pydoc":
        from pydoc_data.topics import topics

        return [Unit("pydoc", (("pydoc", 0, len(topics)),), "pydoc", sum(map(len, topics.values())), "")]
    if kind == "tfds":
        return _tfds_units(arg, cfg)
    if kind == "text":
        separator = text_separator(cfg).encode("utf-8")
        files, root = _files(arg)
        if len(files) == 1 and not _has_text(files[0]):
            raise ConfigError(f"{files[0]} is empty" if files[0].stat().st_size == 0 else
                              f"{files[0]} holds only whitespace")
        files = [path for path in files if _has_text(path)]
        if not files:
            raise ConfigError(f"{arg} holds no text (every file is empty or whitespace)")
        if len(files) == 1:
            path = files[0]
            size = path.stat().st_size
            # The last val_fraction of the bytes, from a record start, is the validation text.
            with open(path, "rb") as f:
                tail = _record_start(f, size - math.ceil(cfg.val_fraction * size), separator, size)
            if tail <= 0 or tail >= size:
                raise ConfigError(f"{path} ({size} bytes) is too short to hold out data.val_fraction="
                                  f"{cfg.val_fraction} of it at a line boundary")
            train = _byte_units("text", path, root, separator, unit_bytes, "train", 0, tail)
            val = _byte_units("text", path, root, separator, unit_bytes, "val", tail, size)
            if not separator:  # one stream: the tail starts a validation document of its own
                val[0] = val[0]._replace(split="val-start")
            return _merge(train + val, unit_bytes)
        n_val = min(max(1, math.ceil(cfg.val_fraction * len(files) - 1e-9)), len(files) - 1)
        order = np.random.default_rng(1_234_567).permutation(len(files))
        val_files = {files[i] for i in order[:n_val]}
        units = []
        for path in files:
            units += _byte_units("text", path, root, separator, unit_bytes,
                                 "val" if path in val_files else "train")
        return _merge(units, unit_bytes)
    if kind == "jsonl":
        files, root = _files(arg, (".jsonl", ".json"))
        units = []
        for path in files:
            if _has_text(path):
                units += _byte_units("jsonl", path, root, b"\n", unit_bytes, "hash")
        if not units:
            raise ConfigError(f"{arg}: every JSON Lines file is empty")
        return _merge(units, unit_bytes)
    return _parquet_units(arg, cfg, unit_bytes)


def _merge(units: list[Unit], unit_bytes: int) -> list[Unit]:
    """Consecutive units of one split merged while they stay within `unit_bytes` (many small files)."""
    merged: list[Unit] = []
    for unit in units:
        last = merged[-1] if merged else None
        if last is not None and last.split == unit.split and last.size + unit.size <= unit_bytes:
            merged[-1] = last._replace(pieces=last.pieces + unit.pieces, size=last.size + unit.size)
        else:
            merged.append(unit)
    return merged


def _parquet_units(arg: str, cfg: DataConfig, unit_bytes: int) -> list[Unit]:
    import pyarrow.parquet as pq

    files, root = _files(arg, (".parquet",))
    units = []
    for path in files:
        try:
            meta = pq.ParquetFile(path).metadata
        except Exception as e:  # pyarrow raises ArrowInvalid with the reason
            raise ConfigError(f"{path} is not a Parquet file: {first_line(e)}") from None
        names = meta.schema.to_arrow_schema().names
        if cfg.text_field not in names:
            raise ConfigError(f"{path} has no column data.text_field={cfg.text_field!r}; columns: "
                              f"{', '.join(names)}")
        start, total = 0, 0
        for g in range(meta.num_row_groups):
            total += meta.row_group(g).total_byte_size
            if total >= unit_bytes or g == meta.num_row_groups - 1:
                units.append(Unit("parquet", ((str(path), start, g + 1),), "hash", total, str(root)))
                start, total = g + 1, 0
    return units


def _open_tfds(name: str, cfg: DataConfig):
    from gptjax.data.sources import _open_tfds as open_tfds

    return open_tfds(cfg, name)


def _tfds_units(name: str, cfg: DataConfig) -> list[Unit]:
    from gptjax.data.sources import _split_name

    builder = _open_tfds(name, cfg)
    splits = builder.info.splits
    has_val = _split_name(cfg.tfds_val_split) in splits
    units = []
    for split, policy in ((cfg.tfds_train_split, "train" if has_val else "hash"),
                          *(((cfg.tfds_val_split, "val"),) if has_val else ())):
        # One unit per array_record shard file, so each worker reads one file's records.
        lengths = list(splits[_split_name(split)].shard_lengths) or [splits[_split_name(split)].num_examples]
        start = 0
        for n in lengths:
            units.append(Unit("tfds", ((f"{name}/{split}", start, start + n),), policy, n, ""))
            start += n
    return units


class Document(NamedTuple):
    split: str  # "train" | "val"
    text: str
    new: bool  # starts a document (an EOT goes before it); False continues the previous one


def unit_documents(unit: Unit, cfg: DataConfig) -> Iterator[Document]:
    """The documents of one unit in corpus order; CorpusError (one line, with where) on bad input."""
    kind = unit.kind
    if kind == "pydoc":
        yield from _pydoc_documents(cfg)
    elif kind == "text":
        yield from _text_documents(unit, cfg)
    elif kind == "jsonl":
        yield from _jsonl_documents(unit, cfg)
    elif kind == "parquet":
        yield from _parquet_documents(unit, cfg)
    else:
        yield from _tfds_documents(unit, cfg)


def _pydoc_documents(cfg: DataConfig) -> Iterator[Document]:
    from pydoc_data.topics import topics

    from gptjax.data.sources import _hold_out

    # The in-memory pydoc source's split exactly, so both paths validate on the same text.
    docs = [d for d in (topics[key] for key in sorted(topics)) if d.strip()]
    train, val = _hold_out(len(docs), cfg.val_fraction)
    val_set = set(val.tolist())
    for i, doc in enumerate(docs):
        yield Document("val" if i in val_set else "train", doc, True)


def _read(path: str, start: int, stop: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(stop - start)


def _decode(data: bytes, path: str, start: int) -> str:
    if (nul := data.find(b"\0")) >= 0:
        raise CorpusError(f"{path} is binary, not text (a NUL byte at offset {start + nul})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path} is not UTF-8 text (invalid byte {data[e.start:e.start + 1]!r} at offset "
                          f"{start + e.start})") from None


def _relative(path: str, root: str) -> str:
    return Path(path).relative_to(root).as_posix() if root else path


def _text_documents(unit: Unit, cfg: DataConfig) -> Iterator[Document]:
    separator = text_separator(cfg)
    for path, start, stop in unit.pieces:
        text = _decode(_read(path, start, stop), path, start)
        if start == 0:
            text = text.removeprefix("\ufeff")
        if not separator:
            # One stream: a file (or the validation tail) starts a document, a later chunk continues it.
            new = start == 0 or unit.split == "val-start"
            if text or new:
                yield Document(unit.split.removesuffix("-start"), text, new)
            continue
        for doc in text.split(separator):
            if doc.strip():
                yield Document(unit.split, doc, True)


def _jsonl_documents(unit: Unit, cfg: DataConfig) -> Iterator[Document]:
    field = cfg.text_field
    for path, start, stop in unit.pieces:
        offset, name = start, _relative(path, unit.root)
        for line in _read(path, start, stop).split(b"\n"):
            here, offset = offset, offset + len(line) + 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CorpusError(f"line is not JSON ({first_line(e)})", path, here) from None
            if not isinstance(record, dict) or field not in record:
                raise CorpusError(f"record has no field data.text_field={field!r}", path, here)
            text = record[field]
            if not isinstance(text, str):
                raise CorpusError(f"field {field!r} is {type(text).__name__}, not a string", path, here)
            if text.strip():
                val = held_out(f"{name}@{here}", cfg.val_fraction)
                yield Document("val" if val else "train", text, True)


def _parquet_documents(unit: Unit, cfg: DataConfig) -> Iterator[Document]:
    import pyarrow.parquet as pq

    for path, first_group, stop_group in unit.pieces:
        file = pq.ParquetFile(path)
        row = sum(file.metadata.row_group(g).num_rows for g in range(first_group))
        name = _relative(path, unit.root)
        # Streamed in record batches: a unit never holds more than one batch of text at a time.
        for batch in file.iter_batches(batch_size=1024, row_groups=range(first_group, stop_group),
                                       columns=[cfg.text_field]):
            for text in batch.column(0).to_pylist():
                if not isinstance(text, str):
                    raise CorpusError(f"{path} row {row}: column {cfg.text_field!r} is "
                                      f"{type(text).__name__}, not a string")
                if text.strip():
                    val = held_out(f"{name}#{row}", cfg.val_fraction)
                    yield Document("val" if val else "train", text, True)
                row += 1


@functools.lru_cache(maxsize=4)
def _tfds_source(name: str, split: str, cfg: DataConfig):
    """A split's random-access data source, opened once per process (a worker reads many of its shards)."""
    return _open_tfds(name, cfg).as_data_source(split=split)


def _tfds_documents(unit: Unit, cfg: DataConfig) -> Iterator[Document]:
    ((where, start, stop),) = unit.pieces
    name, split = where.split("/", 1)
    source = _tfds_source(name, split, cfg)
    for i in range(start, stop):
        # Text features are written from str, so the stored bytes are UTF-8 by construction.
        text = source[i][cfg.tfds_text_key].decode("utf-8", errors="replace")
        if text.strip():
            which = unit.split if unit.split != "hash" else (
                "val" if held_out(f"{where}#{i}", cfg.val_fraction) else "train")
            yield Document(which, text, True)


def line_of(path: str, offset: int) -> int:
    """1-based line number of byte `offset` in `path` (read in blocks; used only to report an error)."""
    count, done = 1, 0
    with open(path, "rb") as f:
        while done < offset:
            block = f.read(min(1 << 20, offset - done))
            if not block:
                break
            count += block.count(b"\n")
            done += len(block)
    return count
