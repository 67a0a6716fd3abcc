"""GPT-1 fine-tuning loss (Radford et al. 2018, §3.2): classify a text from the last token's hidden state
(the extract token), with the causal-LM loss on the same inputs as an auxiliary, L3 = L2 + λ·L1.
Batches: gptjax/data/classify.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gptjax.config import Experiment
from gptjax.data.batches import ClassifyBatch
from gptjax.losses import normalizer, score_parts


def last_index(segment_ids_BL: jax.Array) -> jax.Array:
    """Each row's last real (non-padding) position: rows are left-aligned, so the real count − 1."""
    return jnp.maximum(jnp.sum(segment_ids_BL > 0, axis=-1) - 1, 0)


def loss(model, batch: ClassifyBatch, *, cfg: Experiment, deterministic: bool, rngs=None
         ) -> tuple[dict[str, tuple[float, jax.Array]], dict[str, jax.Array]]:
    """Parts {"cls": (1, Σ class cross-entropy over examples), "lm": (objective.lm_weight, Σ causal-LM
    cross-entropy over real targets)}: L3 = L2 + λ·L1 once each is divided by its count."""
    x_BLD = model.hidden(batch.inputs, segment_ids_BL=batch.segment_ids, deterministic=deterministic,
                         rngs=rngs)
    class_logits_BC = model.classify(x_BLD, last_index(batch.segment_ids))
    return score_parts({"cls": (1.0, class_logits_BC[:, None], batch.labels[:, None],
                                batch.label_weights[:, None]),
                        "lm": (cfg.objective.lm_weight, model.logits(x_BLD), batch.targets, batch.weights)},
                       lm="lm")


def denominators(batch: ClassifyBatch, cfg: Experiment) -> dict[str, jax.Array]:
    """The real examples (cls) and real LM targets (lm) of the whole global batch."""
    del cfg
    return {"cls": normalizer(batch.label_weights), "lm": normalizer(batch.weights)}
