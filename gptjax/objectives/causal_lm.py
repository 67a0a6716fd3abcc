"""Causal language modelling (GPT): predict token t+1 from tokens ≤ t. Batches: gptjax/data/lm.py.

The batch already holds inputs = tokens[:, :-1] and targets = tokens[:, 1:] of the packed stream, with
weight 0 on padding targets; segment ids keep packed documents apart in attention. The loss is one part,
`lm`: the weighted sum of the terms `loss.terms` names (gptjax/losses.py), all under one normaliser so
that their sum divides once; every term is logged on its own, and cross-entropy is always computed too,
for perplexity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gptjax.config import CHUNKABLE_TERMS, Experiment, LossConfig
from gptjax.losses import (
    TERMS,
    LossTerms,
    chunked_lm_loss,
    component_metrics,
    correct_predictions,
    normalizer,
    score,
    weighted_sum,
)

DEFAULT_LOSS = LossConfig()


def use_chunked(loss: LossConfig, tokens: int, vocab: int) -> bool:
    """Whether the chunked cross-entropy runs: by choice, or by default once the logits get large."""
    if loss.chunked != "auto":
        return loss.chunked == "always"
    return all(name in CHUNKABLE_TERMS for name in loss.terms) and tokens * vocab >= loss.chunked_above


def output_matrix(model: nnx.Module):
    """The [V, D] matrix the logits are computed with: the tied token embedding or the output head."""
    if model.cfg.tie_embeddings:
        return model.wte.embedding[...]
    return model.lm_head.kernel[...].T


def causal_lm_loss(model: nnx.Module, batch, *, document_mask: bool, deterministic: bool,
                   rngs: nnx.Rngs | None = None, loss: LossConfig = DEFAULT_LOSS,
                   batch_rows: int | None = None,
                   teacher: nnx.Module | None = None) -> tuple[LossTerms, dict]:
    """(combined loss terms, summed metrics) of one batch; normalise with `LossTerms.mean()`.

    Metrics follow `gptjax.metrics.summarize`: for every term (and `ce`, always) `<term>_sum`,
    `<term>_count` (the normaliser) and `<term>_weighted` (coefficient · sum), `ce_correct`, and `tokens`
    (real targets). `batch_rows` is the global batch's row count, which the `sum` normalisation splits
    over micro-batches. `teacher` is needed by the `kl` term only.
    """
    segment_ids_BL = batch.segment_ids if document_mask else None
    x_BLD = model.hidden(batch.inputs, segment_ids_BL=segment_ids_BL, deterministic=deterministic, rngs=rngs)
    weights_BL = batch.weights.astype(jnp.float32)
    weight = normalizer(weights_BL, loss.normalization, batch_rows)
    B, L, D = x_BLD.shape
    w_VD = output_matrix(model)
    if use_chunked(loss, B * L, w_VD.shape[0]):
        coefs = tuple(loss.terms.get(name, 0.0) for name in CHUNKABLE_TERMS)
        total, stats = chunked_lm_loss(x_BLD.reshape(B * L, D), w_VD.astype(x_BLD.dtype),
                                       batch.targets.reshape(-1), weights_BL.reshape(-1), coefs,
                                       loss.chunk_tokens)
        sums = {name: getattr(stats, name) for name in {**loss.terms, "ce": 0.0}}
        correct = stats.correct
    else:
        logits_BLV = model.logits(x_BLD)
        teacher_logits_BLV = None
        if "kl" in loss.terms:
            teacher_logits_BLV = jax.lax.stop_gradient(
                teacher(batch.inputs, segment_ids_BL=segment_ids_BL, deterministic=True))
        scored = score(logits_BLV, batch.targets, inputs_BL=batch.inputs, segment_ids_BL=segment_ids_BL,
                       teacher_logits_BLV=teacher_logits_BLV, temperature=loss.kl_temperature)
        sums = {name: weighted_sum(TERMS[name](scored), weights_BL) for name in {**loss.terms, "ce": 0.0}}
        total = sum(coef * sums[name] for name, coef in loss.terms.items())
        correct = correct_predictions(logits_BLV, batch.targets, weights_BL)
    metrics = {"tokens": jnp.sum(weights_BL)}
    for name, value in sums.items():
        metrics.update(component_metrics(name, loss.terms.get(name, 0.0), value, weight))
    metrics["ce_correct"] = correct
    return LossTerms(total, weight), metrics


def loss(model: nnx.Module, batch, *, cfg: Experiment, deterministic: bool, rngs: nnx.Rngs | None = None,
         teacher: nnx.Module | None = None) -> tuple[dict, dict]:
    """The objective interface (gptjax/objectives/__init__.py): one part, `lm`, the combined terms' sum."""
    terms, metrics = causal_lm_loss(model, batch, document_mask=cfg.data.document_mask,
                                    deterministic=deterministic, rngs=rngs, loss=cfg.loss,
                                    batch_rows=cfg.data.batch_size, teacher=teacher)
    return {"lm": (1.0, terms.sum)}, metrics


def denominators(batch, cfg: Experiment) -> dict[str, jax.Array]:
    """What the `lm` part is divided by, from the whole global batch (`loss.normalization`)."""
    return {"lm": normalizer(batch.weights, cfg.loss.normalization, cfg.data.batch_size)}
