"""BERT and RoBERTa pre-training losses: masked language modelling over the chosen positions (mlm), plus
next-sentence prediction over the rows that carry it (mlm_nsp). Batches: gptjax/data/masked.py."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from gptjax.config import Experiment
from gptjax.data.batches import MaskedBatch
from gptjax.losses import normalizer, score_parts


def loss(model, batch: MaskedBatch, *, cfg: Experiment, deterministic: bool, rngs=None
         ) -> tuple[dict[str, tuple[float, jax.Array]], dict[str, jax.Array]]:
    """Parts {"mlm": (1, Σ CE over chosen positions)} and, for mlm_nsp, {"nsp": (nsp_weight, Σ NSP CE over
    rows with NSP weight)}, and their summed metrics (`gptjax.losses.score_parts`)."""
    type_ids_BL = batch.type_ids if cfg.objective.name == "mlm_nsp" else None
    x_BLD = model.hidden(batch.inputs, segment_ids_BL=batch.segment_ids, type_ids_BL=type_ids_BL,
                         deterministic=deterministic, rngs=rngs)
    # The vocabulary projection only where a token was chosen (as BERT's gather of masked positions):
    # a row has at most ceil(L·rate) of them (floor(n·rate + u) with n ≤ L), so the top P weights hold
    # every chosen position, and the other P − chosen carry weight 0. ~1/6 of the head's cost at 15%.
    P = min(math.ceil(x_BLD.shape[1] * cfg.objective.mask_rate), x_BLD.shape[1])
    _, index_BP = jax.lax.top_k(batch.weights.astype(jnp.float32), P)
    take = lambda a: jnp.take_along_axis(a, index_BP.reshape(*index_BP.shape, *[1] * (a.ndim - 2)), axis=1)
    logits_BPV = model.mlm_logits(take(x_BLD))
    scored = {"mlm": (1.0, logits_BPV, take(batch.targets), take(batch.weights))}
    if cfg.objective.name == "mlm_nsp":
        # NSP is a one-position "sequence" per row, so the token-level helpers score it too.
        scored["nsp"] = (cfg.objective.nsp_weight, model.nsp_logits(x_BLD)[:, None],
                         batch.nsp_labels[:, None], batch.nsp_weights[:, None])
    return score_parts(scored, lm="mlm")


def denominators(batch: MaskedBatch, cfg: Experiment) -> dict[str, jax.Array]:
    """The chosen positions (mlm) and, for mlm_nsp, the NSP-scored rows of the whole global batch."""
    out = {"mlm": normalizer(batch.weights)}
    if cfg.objective.name == "mlm_nsp":
        out["nsp"] = normalizer(batch.nsp_weights)
    return out
