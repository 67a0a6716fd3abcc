"""Objectives: how a model and a batch become loss terms, and how text becomes those batches.

One module per objective, each exporting the same interface, registered in `OBJECTIVES`:

- a data class built as `Data(cfg, seed, tokenizer, source)` with `tokenizer`, `val_tokens`,
  `train_batch(step)` (a pure function of (seed, step)) and `val_batches(n)`; `source` is the
  `Documents` of `data.source`, or its labelled `Examples` for a classification objective;
- `loss(model, batch, *, cfg, deterministic, rngs)` → ({part: (coefficient, summed loss)}, summed metrics);
- `denominators(batch, cfg)` → {part: what its sum is divided by}, taken from the whole global batch,
  so the step's loss Σ coefficient · sum / denominator is exact under gradient accumulation;
- `summarize(sums)` → the log record (loss, each part, perplexity, accuracy, …) from metric sums.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from gptjax.data import build_tokenizer, load_documents, load_examples
from gptjax.objectives import causal_lm, gpt1_finetune, mlm, span_corruption
from gptjax.objectives.causal_lm import causal_lm_loss


@dataclasses.dataclass(frozen=True)
class Objective:
    data: Callable  # (cfg, seed, tokenizer, source) -> data object
    loss: Callable
    denominators: Callable  # (batch, cfg) -> {part: denominator}
    summarize: Callable
    labelled: bool = False  # its source is labelled examples (data.load_examples), not documents


def _module(module, data, labelled: bool = False) -> Objective:
    return Objective(data, module.loss, module.denominators, module.summarize, labelled)


OBJECTIVES: dict[str, Objective] = {
    "causal_lm": _module(causal_lm, lambda cfg, seed, tokenizer, docs: causal_lm.LMData(cfg.data, seed,
                                                                                         tokenizer, docs)),
    "mlm_nsp": _module(mlm, mlm.MaskedData),
    "mlm": _module(mlm, mlm.MaskedData),
    "span_corruption": _module(span_corruption, span_corruption.SpanData),
    "gpt1_finetune": _module(gpt1_finetune, gpt1_finetune.ClassifyData, labelled=True),
}


def build_objective_data(cfg, tokenizer_cache: Path | None = None):
    """The data object of `cfg.objective` for `cfg.data`: source read, tokenizer loaded from
    `tokenizer_cache` when that file exists or else trained on the training split (not saved here: the
    caller saves it once it holds the workdir), batches ready. ConfigError (one line) on bad input."""
    if cfg.data.source.startswith("store:"):  # a prepared token store: causal_lm (config.validate checks)
        from gptjax.data.store import store_data

        return store_data(cfg.data, cfg.train.seed, tokenizer_cache)
    objective = OBJECTIVES[cfg.objective.name]
    source = load_examples(cfg.data) if objective.labelled else load_documents(cfg.data)
    texts = [text for text, _ in source.train] if objective.labelled else source.train
    tokenizer = build_tokenizer(cfg.data, train_docs=texts, cache=tokenizer_cache)
    return objective.data(cfg, cfg.train.seed, tokenizer, source)


__all__ = ["OBJECTIVES", "Objective", "build_objective_data", "causal_lm_loss"]
