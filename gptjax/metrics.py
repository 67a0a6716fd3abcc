"""Where numbers go: `metrics.jsonl` (the record reports are made from), TensorBoard, the terminal."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


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


class MetricsWriter:
    """Appends one JSON object per logged step and split to `metrics.jsonl`, mirrored to TensorBoard."""

    def __init__(self, workdir: Path):
        from tensorboardX import SummaryWriter

        self.path = Path(workdir) / "metrics.jsonl"
        self.file = self.path.open("a")
        self.tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

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

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(workdir: Path) -> list[dict[str, Any]]:
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def progress_bar(start: int, total: int, enabled: bool) -> tqdm:
    """Step, loss, tokens/s and ETA on stderr; off when disabled or when stderr is not a terminal."""
    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr,
                disable=(not enabled) or None, smoothing=0.1)
