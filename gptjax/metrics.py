"""Where numbers go: `metrics.jsonl` (the record reports are made from), TensorBoard, the terminal."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

from tqdm.auto import tqdm

from gptjax import storage


def _per(value: float, by: float) -> float:
    return value / by if by > 0 else float("nan")


def components(sums: dict) -> list[str]:
    """The loss components a set of summed metrics holds: every name with a `<name>_weighted`."""
    return [key.removesuffix("_weighted") for key in sums if key.endswith("_weighted")]


def objective_loss(sums: dict):
    """Σ over components of coefficient · sum / count, a component with count 0 adding 0: the train step's
    loss, from summed metrics. Plain arithmetic, so it serves host floats and device arrays alike."""
    return sum(sums[f"{c}_weighted"] / (sums[f"{c}_count"] + (sums[f"{c}_count"] == 0))
               for c in components(sums))


def summarize(sums: dict[str, float], lm: str) -> dict[str, float]:
    """The log record of every objective from its summed metrics, normalised once.

    The schema (produced by `gptjax.losses.component_metrics`): each loss component c (a part of the
    loss, or a term of causal_lm's one part) sums `<c>_sum`, `<c>_count` (what it is divided by) and
    `<c>_weighted` (coefficient · sum), and, when it predicts by arg-max, `<c>_correct`; `tokens` counts
    the real targets of component `lm`, the language-model prediction. The record: `loss`
    (`objective_loss`), each component's mean under its own name, `<c>_accuracy` for the components other
    than `lm` that predict, and `perplexity` (exp of `lm`'s cross-entropy per token), `accuracy` and
    `tokens` of `lm`. A component with no count has mean NaN.
    """
    tokens = sums["tokens"]
    record = {"loss": objective_loss(sums)}
    for c in components(sums):
        record[c] = _per(sums[f"{c}_sum"], sums[f"{c}_count"])
        if c != lm and f"{c}_correct" in sums:
            record[f"{c}_accuracy"] = _per(sums[f"{c}_correct"], sums[f"{c}_count"])
    record.update(perplexity=math.exp(min(_per(sums[f"{lm}_sum"], tokens), 700.0)),
                  accuracy=_per(sums[f"{lm}_correct"], tokens), tokens=tokens)
    return record


class _EventFiles:
    """tensorboardX's writer factory for bucket URLs: event files through `storage.Appender`, so
    TensorBoard goes through the same path library as everything else."""

    def open(self, path: str) -> storage.Appender:
        return storage.Appender(path, binary=True)

    def directory_check(self, path: str) -> None:
        pass  # a bucket has no directories to create


def _tensorboardx():
    """tensorboardX's writer and writer registry, imported without PyTorch: tensorboardX imports torch at
    import time when it is installed (to accept its tensors, which gptjax never logs), and that import is
    most of tensorboardX's import time, paid by every run and every sweep child."""
    import sys

    hidden = "torch" not in sys.modules
    if hidden:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX expects
    try:
        from tensorboardX import SummaryWriter
        from tensorboardX.record_writer import register_writer_factory
    finally:
        if hidden:
            del sys.modules["torch"]
    return SummaryWriter, register_writer_factory


class MetricsWriter:
    """Appends one JSON object per logged step and split to `metrics.jsonl`, mirrored to TensorBoard."""

    def __init__(self, workdir: storage.PathLike):
        SummaryWriter, register_writer_factory = _tensorboardx()

        workdir = storage.path(workdir)
        if storage.is_remote(workdir):
            register_writer_factory(os.fspath(workdir).split("://")[0], _EventFiles())
        self.path = workdir / "metrics.jsonl"
        self.file = storage.Appender(self.path)
        self.tb = SummaryWriter(os.fspath(workdir / "tensorboard"))

    def resume(self, step: int) -> str:
        """Make `metrics.jsonl` what a run that finished `step` leaves, before a start or resume at `step`
        appends to it: lines that are not records (a line torn by a kill mid-write) are dropped, and so
        are the records past `step` (written after the checkpoint resumed from, or past a damaged one
        set aside), which the resumed run writes again, and an earlier setup record at `step`. Each
        (step, split) then appears once. Returns a line saying what was dropped, or ""."""
        self.file.flush(force=True)
        if not self.path.exists():  # a bucket's object appears at the first upload
            return ""
        lines = self.path.read_bytes().decode("utf-8", errors="replace").splitlines()
        records, damaged = parse_records(lines)
        kept = [r for r in current_records(records)
                if r["step"] < step or (r["step"] == step and r["split"] != "setup")]
        if not damaged and len(kept) == len(records):
            return ""
        self.file.close()
        # atomic: a reader sees the old file or the repaired one
        storage.write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.file = storage.Appender(self.path)
        return (f"{self.path}: dropped {len(damaged)} damaged line(s) and {len(records) - len(kept)} "
                f"record(s) past step {step}, which this run writes again")

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        record = {"step": step, "split": split, **values}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        self.file.close()
        self.tb.close()


class NullWriter:
    """For the processes of a multi-host job other than the first: they compute, process 0 records."""

    def resume(self, step: int) -> str:
        return ""

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def parse_records(lines: list[str]) -> tuple[list[dict[str, Any]], list[int]]:
    """The records of `metrics.jsonl` lines (objects with an integer `step` and a string `split`) and the
    1-based numbers of the non-blank lines that are not records."""
    records, damaged = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if (isinstance(record, dict) and isinstance(record.get("step"), int)
                and isinstance(record.get("split"), str)):
            records.append(record)
        else:
            damaged.append(number)
    return records, damaged


def current_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the run as it now stands: a `setup` record at step S (a start or a resume there)
    supersedes every earlier record past S and an earlier setup at S, so that a file written by a run
    that resumed from an older checkpoint holds each (step, split) once."""
    current: list[dict[str, Any]] = []
    for record in records:
        if record["split"] == "setup":
            at = record["step"]
            current = [r for r in current if r["step"] < at or (r["step"] == at and r["split"] != "setup")]
        current.append(record)
    return current


def read_metrics(workdir: storage.PathLike) -> list[dict[str, Any]]:
    """A workdir's current records (`current_records`). A last line that is not a record is skipped (a
    run is writing it, or was killed mid-write; its next resume drops it); a damaged line before the last
    is a ConfigError naming the file and the line."""
    from gptjax.config import ConfigError

    path = storage.path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    last = max((n for n, line in enumerate(lines, 1) if line.strip()), default=0)
    records, damaged = parse_records(lines)
    if [n for n in damaged if n != last]:
        raise ConfigError(f"{path}: line {damaged[0]} is not a metrics record; resuming the run drops "
                          f"damaged lines, or remove it by hand")
    return current_records(records)


def progress_bar(start: int, total: int, enabled: bool) -> tqdm:
    """Step, loss, tokens/s and ETA on stderr; off when disabled or when stderr is not a terminal."""
    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr,
                disable=(not enabled) or None, smoothing=0.1)
