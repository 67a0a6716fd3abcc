"""Every objective through the real train step: loss falls, gradient accumulation stays exact with
several loss parts, `train.init_from` carries a pre-trained GPT into fine-tuning, and combinations that
make no sense are refused before any work."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.config import ConfigError, DataConfig, ModelConfig, ObjectiveConfig, validate
from gptjax.metrics import read_metrics
from gptjax.models import build_model, split_params
from gptjax.objectives import build_objective_data
from gptjax.train import gradients, resolve, train
from tests.conftest import tiny_experiment

FAMILY = {"mlm_nsp": "bert", "mlm": "bert", "span_corruption": "t5", "gpt1_finetune": "gpt"}


def tiny(objective: str, **train):
    """A tiny model of the objective's family on the offline corpus; the BPE keeps its vocabulary small."""
    cfg = tiny_experiment(**train)
    tokenizer = "byte" if objective == "gpt1_finetune" else "bpe"
    model = dataclasses.replace(cfg.model, family=FAMILY[objective], bias=FAMILY[objective] != "t5",
                                relative_buckets=8, relative_max_distance=32)
    return validate(dataclasses.replace(
        cfg, name=objective, model=model,
        data=DataConfig(tokenizer=tokenizer, tokenizer_vocab=600, seq_len=32, batch_size=8),
        objective=ObjectiveConfig(name=objective),
        optim=dataclasses.replace(cfg.optim, lr=3e-3)))


@pytest.mark.parametrize("objective", ["mlm_nsp", "mlm", "span_corruption", "gpt1_finetune"])
def test_each_objective_trains_and_logs_its_parts(objective, tmp_path):
    cfg = tiny(objective, steps=12, eval_every=12, log_every=4, checkpoint_every=12)
    result = train(cfg, tmp_path)
    records = read_metrics(tmp_path)
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert losses[-1] < losses[0]
    parts = {"mlm_nsp": ("mlm", "nsp", "nsp_accuracy"), "mlm": ("mlm",), "span_corruption": ("ce",),
             "gpt1_finetune": ("cls", "lm", "cls_accuracy")}[objective]
    for part in parts:
        assert np.isfinite(result["val"][part])
    assert (tmp_path / "tokenizer.json").exists() == (objective != "gpt1_finetune")
    assert not (tmp_path / "sample.txt").exists()  # only a causal LM samples at the end


@pytest.mark.parametrize("objective", ["mlm_nsp", "gpt1_finetune", "span_corruption"])
def test_gradient_accumulation_is_exact_with_several_loss_parts(objective):
    cfg = tiny(objective)
    data = build_objective_data(cfg)
    cfg = resolve(cfg, data.tokenizer.vocab_size, getattr(data, "n_classes", 0))
    batch = jax.tree_util.tree_map(jnp.asarray, data.val_batches(1)[0])
    graphdef, params = split_params(build_model(cfg.model, 0))
    results = []
    for k in (1, 2, 4):
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, grad_accum=k))
        step = jax.jit(functools.partial(gradients, graphdef=graphdef, cfg=c))
        grads, _ = step(params, batch, jax.random.key(0))
        results.append(grads)
    for other in results[1:]:
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7),
                               results[0], other)


def test_init_from_copies_the_pretrained_gpt_and_adds_a_fresh_head(tmp_path):
    pretrained = tiny_experiment(steps=3, checkpoint_every=3)
    train(pretrained, tmp_path / "pre")
    cfg = tiny("gpt1_finetune", steps=1, eval_every=1, checkpoint_every=1, log_every=1,
               init_from=str(tmp_path / "pre"))
    # steps=1 with a zero learning rate leaves the copied parameters as they were loaded.
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=1e-30, weight_decay=0.0))
    train(cfg, tmp_path / "ft")
    from gptjax.train import load_for_inference

    before = load_for_inference(tmp_path / "pre")[2]
    after = load_for_inference(tmp_path / "ft")[2]
    np.testing.assert_allclose(after["wte"]["embedding"], before["wte"]["embedding"], rtol=1e-6)
    np.testing.assert_allclose(after["blocks"][1]["mlp"]["c_fc"]["kernel"],
                               before["blocks"][1]["mlp"]["c_fc"]["kernel"], rtol=1e-6)
    assert "head" in after and "head" not in before
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["model"]["n_classes"] == 4


def test_init_from_refuses_a_model_of_another_shape_before_writing(tmp_path):
    train(tiny_experiment(steps=1, checkpoint_every=1), tmp_path / "pre")
    cfg = tiny("gpt1_finetune", init_from=str(tmp_path / "pre"))
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_embd=64))
    with pytest.raises(ConfigError, match="parameter .* has shape"):
        train(cfg, tmp_path / "ft")
    with pytest.raises(ConfigError, match="not a gptjax workdir"):
        train(tiny("gpt1_finetune", init_from=str(tmp_path / "nowhere")), tmp_path / "ft2")
    assert not (tmp_path / "ft2").exists()
    # Another tokenizer: refused with the override that fixes it.
    bpe = tiny("gpt1_finetune", init_from=str(tmp_path / "pre"))
    bpe = dataclasses.replace(bpe, data=dataclasses.replace(bpe.data, tokenizer="bpe"))
    with pytest.raises(ConfigError, match="trained with data.tokenizer=byte, this run has data.tokenizer=bpe;"
                                          ".* so add data.tokenizer=byte "):
        train(bpe, tmp_path / "ft3")
    assert not (tmp_path / "ft3").exists()


@pytest.mark.parametrize("change, message", [
    ({"model": ModelConfig(family="gpt"), "objective": ObjectiveConfig(name="span_corruption")},
     "span_corruption trains a t5 model, not model.family=gpt"),
    ({"model": ModelConfig(family="bert"), "objective": ObjectiveConfig(name="causal_lm")},
     "causal_lm trains a gpt model, not model.family=bert"),
    ({"model": ModelConfig(family="bert"), "objective": ObjectiveConfig(name="mlm")},
     "needs .* which data.tokenizer=byte lacks"),
])
def test_combinations_that_make_no_sense_are_refused_with_the_reason(change, message):
    with pytest.raises(ConfigError, match=message):
        validate(dataclasses.replace(tiny_experiment(), **change))
