"""Objectives: what a model is trained to predict, each one registered unit in `OBJECTIVES`.

An objective is its batches (a data class in gptjax/data/, built as `Data(cfg, seed, tokenizer, source)`,
with `tokenizer`, `val_tokens`, `train_batch(step)` a pure function of (seed, step), and `val_batches(n)`)
and its loss (a module here), tied together by one `Objective` entry below:

- `loss(model, batch, *, cfg, deterministic, rngs)` → ({part: (coefficient, summed loss)}, summed metrics
  in the schema of `gptjax.metrics.summarize`);
- `denominators(batch, cfg)` → {part: what its sum is divided by}, taken from the whole global batch,
  so the step's loss Σ coefficient · sum / denominator is exact under gradient accumulation;
- `lm`: the loss component whose predictions perplexity and accuracy are measured on;
- `labelled`: whether its source is labelled examples (`data.load_examples`) rather than documents.

Which model families an objective trains is `config.OBJECTIVE_FAMILIES`, checked before JAX starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from gptjax import metrics
from gptjax.config import ObjectiveName, registry
from gptjax.data import build_tokenizer, load_documents, load_examples
from gptjax.data.classify import ClassifyData
from gptjax.data.lm import LMData
from gptjax.data.masked import MaskedData
from gptjax.data.spans import SpanData
from gptjax.data.store import read_by_store
from gptjax.objectives import causal_lm, gpt1_finetune, mlm, span_corruption
from gptjax.objectives.causal_lm import causal_lm_loss


@dataclasses.dataclass(frozen=True)
class Objective:
    data: Callable  # (cfg, seed, tokenizer, source) -> data object
    loss: Callable  # (model, batch, *, cfg, deterministic, rngs) -> (parts, summed metrics)
    denominators: Callable  # (batch, cfg) -> {part: denominator}
    lm: str  # the component of the summed metrics that perplexity and accuracy come from
    labelled: bool = False  # its source is labelled examples (data.load_examples), not documents

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """The log record (loss, each component, perplexity, accuracy, …) from summed metrics."""
        return metrics.summarize(sums, self.lm)


OBJECTIVES: dict[str, Objective] = registry(ObjectiveName, {
    "causal_lm": Objective(LMData, causal_lm.loss, causal_lm.denominators, lm="ce"),
    "mlm_nsp": Objective(MaskedData, mlm.loss, mlm.denominators, lm="mlm"),
    "mlm": Objective(MaskedData, mlm.loss, mlm.denominators, lm="mlm"),
    "span_corruption": Objective(SpanData, span_corruption.loss, span_corruption.denominators, lm="ce"),
    "gpt1_finetune": Objective(ClassifyData, gpt1_finetune.loss, gpt1_finetune.denominators, lm="lm",
                               labelled=True),
})


def build_objective_data(cfg, tokenizer_cache: Path | None = None):
    """The data object of `cfg.objective` for `cfg.data`: source read, tokenizer loaded from
    `tokenizer_cache` when that file exists or else trained on the training split (not saved here: the
    caller saves it once it holds the workdir), batches ready. ConfigError (one line) on bad input."""
    objective = OBJECTIVES[cfg.objective.name]
    if read_by_store(cfg.data.source) and not objective.labelled:
        # A token store, or a text source prepared into a cached one (a labelled objective refuses text:).
        from gptjax.data.store import StoreData, open_store

        store, tokenizer = open_store(cfg.data, tokenizer_cache)
        if cfg.objective.name == "causal_lm":
            return StoreData(cfg.data, cfg.train.seed, store, tokenizer)
        return objective.data(cfg, cfg.train.seed, tokenizer, store)
    source = load_examples(cfg.data) if objective.labelled else load_documents(cfg.data)
    texts = [text for text, _ in source.train] if objective.labelled else source.train
    tokenizer = build_tokenizer(cfg.data, train_docs=texts, cache=tokenizer_cache)
    return objective.data(cfg, cfg.train.seed, tokenizer, source)


__all__ = ["OBJECTIVES", "Objective", "build_objective_data", "causal_lm_loss"]
