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


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Normalise summed metrics once: the objective (`loss`), each term under its own name, perplexity
    and token accuracy.

    `loss_sum` and every `<term>_sum` are divided by the objective's normaliser `weight` (real target
    tokens unless `loss.normalization` says otherwise); perplexity = exp(cross-entropy per real target
    token) and accuracy are per real target token (`tokens`) whatever the normalisation.
    """
    weight, tokens = sums["weight"], sums["tokens"]
    record = {"loss": _per(sums["loss_sum"], weight)}
    record.update({key.removesuffix("_sum"): _per(value, weight) for key, value in sums.items()
                   if key.endswith("_sum") and key != "loss_sum"})
    ce_per_token = _per(sums["ce_sum"], tokens)
    record.update(perplexity=math.exp(min(ce_per_token, 700.0)), accuracy=_per(sums["correct"], tokens),
                  tokens=tokens)
    return record


def summarize_parts(sums: dict[str, float], parts: tuple[str, ...], lm_part: str) -> dict[str, float]:
    """The log record from summed metrics: `loss` = Σ coef·sum / max(count, 1) (the train step's formula),
    each part's mean and accuracy, `perplexity` = exp(mean CE of `lm_part`), `accuracy` and `tokens` (its
    token accuracy and count). A part with no count has mean NaN."""
    record = {"loss": sum(sums[f"{p}_weighted"] / max(sums[f"{p}_count"], 1.0) for p in parts)}
    for p in parts:
        record[p] = _per(sums[f"{p}_sum"], sums[f"{p}_count"])
        record[f"{p}_accuracy"] = _per(sums[f"{p}_correct"], sums[f"{p}_count"])
    record.update(perplexity=math.exp(min(record[lm_part], 700.0)),
                  accuracy=record[f"{lm_part}_accuracy"], tokens=sums[f"{lm_part}_count"])
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
