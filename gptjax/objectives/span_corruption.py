"""T5 span corruption loss: the decoder's cross-entropy over the real targets, teacher-forced on the
corrupted spans. Batches: gptjax/data/spans.py."""

from __future__ import annotations

import jax

from gptjax.config import Experiment
from gptjax.data.batches import Seq2SeqBatch
from gptjax.losses import normalizer, score_parts


def loss(model, batch: Seq2SeqBatch, *, cfg: Experiment, deterministic: bool, rngs=None
         ) -> tuple[dict[str, tuple[float, jax.Array]], dict[str, jax.Array]]:
    """Parts {"ce": (1, Σ decoder cross-entropy over real targets)}, teacher-forced; summed metrics."""
    del cfg
    enc_BLD = model.encode(batch.enc_inputs, segment_ids_BL=batch.enc_segment_ids,
                           deterministic=deterministic, rngs=rngs)
    x_BTD = model.decode_hidden(batch.dec_inputs, enc_BLD, enc_segment_ids_BL=batch.enc_segment_ids,
                                dec_segment_ids_BT=batch.dec_segment_ids, deterministic=deterministic,
                                rngs=rngs)
    return score_parts({"ce": (1.0, model.logits(x_BTD), batch.targets, batch.weights)}, lm="ce")


def denominators(batch: Seq2SeqBatch, cfg: Experiment) -> dict[str, jax.Array]:
    """The real target tokens of the whole global batch."""
    del cfg
    return {"ce": normalizer(batch.weights)}
