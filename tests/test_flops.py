"""FLOPs per token: the formula of gptjax/flops.py against what the model actually multiplies, counted from
the dot_generals in the jaxpr of the objective's loss gradient (the work of a training step); MFU logged."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.config import ModelConfig, ObjectiveConfig
from gptjax.data.batches import Batch, MaskedBatch, Seq2SeqBatch
from gptjax.data.spans import span_lengths
from gptjax.flops import flops_per_token, peak_flops
from gptjax.metrics import read_metrics
from gptjax.models import build_model, split_params
from gptjax.objectives import OBJECTIVES
from gptjax.train import train
from tests.conftest import tiny_experiment

B = 2


def matmul_flops(jaxpr) -> int:
    """2 · (output elements) · (contracted length), summed over every dot_general of `jaxpr` and the
    jaxprs inside it (a scan's body counted once per iteration)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in lhs_contract)
        assert eqn.primitive.name not in ("cond", "while"), "count would depend on the branch taken"
        repeat = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += repeat * matmul_flops(inner)
    return total


def batch_for(cfg, seq_len: int):
    """A batch of the objective's shapes (values do not change what is multiplied)."""
    ones, zeros = np.ones((B, seq_len), np.int32), np.zeros((B, seq_len), np.int32)
    weights = np.ones((B, seq_len), np.float32)
    if cfg.objective.name == "causal_lm":
        return Batch(ones, ones, weights, ones)
    if cfg.objective.name == "mlm":
        return MaskedBatch(ones, ones, weights, ones, zeros, np.zeros(B, np.int32), np.zeros(B, np.float32))
    t = span_lengths(seq_len, cfg.objective.noise_density, cfg.objective.mean_span_length)[1]
    dec = np.ones((B, t), np.int32)
    return Seq2SeqBatch(ones, ones, dec, dec, np.ones((B, t), np.float32), dec)


def counted_flops_per_token(cfg) -> float:
    """Matmul FLOPs of one gradient of the objective's loss, per (encoder) input token."""
    graphdef, params = split_params(build_model(cfg.model, 0))
    batch = jax.tree_util.tree_map(jnp.asarray, batch_for(cfg, cfg.data.seq_len))

    def loss(params):
        from flax import nnx

        parts, _ = OBJECTIVES[cfg.objective.name].loss(nnx.merge(graphdef, params), batch, cfg=cfg,
                                                       deterministic=True)
        return sum(coef * value for coef, value in parts.values())

    return matmul_flops(jax.make_jaxpr(jax.grad(loss))(params).jaxpr) / (B * cfg.data.seq_len)


def experiment(family: str, objective: str, seq_len: int, **model):
    cfg = tiny_experiment()
    return dataclasses.replace(
        cfg, model=ModelConfig(family=family, n_layer=2, n_head=2, n_embd=32, context=64, vocab_size=300,
                               **model),
        data=dataclasses.replace(cfg.data, seq_len=seq_len), objective=ObjectiveConfig(name=objective))


@pytest.mark.parametrize("cfg", [
    experiment("gpt", "causal_lm", 24),
    experiment("gpt", "causal_lm", 16, activation="swiglu", tie_embeddings=False, mlp_ratio=3),
    experiment("bert", "mlm", 40),  # the MLM head on ceil(0.15 · 40) = 6 gathered positions of 40
    experiment("t5", "span_corruption", 48, n_decoder_layer=3, bias=False, activation="relu"),
], ids=["gpt", "gpt-swiglu-untied", "bert-mlm", "t5-span-corruption"])
def test_flops_per_token_is_what_a_training_step_multiplies(cfg):
    """Backward matmuls are twice the forward's, so the gradient's count is the training step's 3×."""
    assert flops_per_token(cfg.model, cfg.data.seq_len, cfg.objective) == pytest.approx(
        counted_flops_per_token(cfg), rel=1e-12)


def test_gpt2_small_matches_the_published_count():
    """GPT-2 small (124M parameters, 85M of them in the layers): 6·N + 12·L·T·D at T = 1024 with
    N ≈ 123.5M matmul weights (the 1024 × 768 position embedding is a lookup)."""
    cfg = ModelConfig(n_layer=12, n_head=12, n_embd=768, context=1024, vocab_size=50257)
    assert flops_per_token(cfg, 1024) == pytest.approx(6 * 123.5e6 + 113.2e6, rel=1e-3)


def test_mfu_is_logged_against_the_measured_cpu_peak(tmp_path):
    cfg = tiny_experiment(steps=4, log_every=2, eval_every=4)
    train(cfg, tmp_path, log=lambda *_: None)
    records = read_metrics(tmp_path)
    setup = [r for r in records if r["split"] == "setup"][0]
    assert setup["peak_flops"] == peak_flops(jax.devices()[0]) > 1e9
    for r in (r for r in records if r["split"] == "train"):
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * setup["flops_per_token"] / setup["peak_flops"])
        assert 0 < r["mfu"] < 1
