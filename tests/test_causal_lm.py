"""The causal-LM objective with the loss library: chunked equals plain inside the model, every term is
logged on its own in train and validation records, `sum` normalisation is exact under accumulation, and
the `loss` config section is validated before JAX starts."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import sharding
from gptjax.cli import main
from gptjax.config import ConfigError, LossConfig, load_experiment, validate
from gptjax.data import build_data
from gptjax.metrics import read_metrics
from gptjax.models import build_model, split_params
from gptjax.objectives.causal_lm import causal_lm_loss, use_chunked
from gptjax.train import build_steps, gradients, resolve, train
from tests.conftest import tiny_experiment


def _batch(cfg):
    return build_data(cfg.data, 0).train_batch(0)


@pytest.mark.parametrize("tie", [True, False])
def test_chunked_equals_plain_through_the_model_in_value_and_gradients(tie):
    cfg = resolve(tiny_experiment(), 258)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, tie_embeddings=tie))
    graphdef, params = split_params(build_model(cfg.model, 0))
    batch = jax.tree_util.tree_map(jnp.asarray, _batch(cfg))
    batch = batch._replace(weights=batch.weights.at[0, :5].set(0.0))  # some padding
    terms = {"ce": 0.9, "label_smoothing": 0.1, "z": 1e-3}

    def loss(params, chunked):
        from flax import nnx

        lc = LossConfig(terms=terms, chunked=chunked, chunk_tokens=48)
        total, metrics = causal_lm_loss(nnx.merge(graphdef, params), batch, document_mask=True,
                                        deterministic=True, loss=lc)
        return total.sum, metrics

    (plain, m_plain), g_plain = jax.jit(jax.value_and_grad(functools.partial(loss, chunked="never"),
                                                           has_aux=True))(params)
    (chunk, m_chunk), g_chunk = jax.jit(jax.value_and_grad(functools.partial(loss, chunked="always"),
                                                           has_aux=True))(params)
    np.testing.assert_allclose(float(chunk), float(plain), rtol=1e-5)
    for key in ("ce_sum", "z_sum", "label_smoothing_sum", "ce_correct", "ce_count", "tokens"):
        np.testing.assert_allclose(float(m_chunk[key]), float(m_plain[key]), rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(g_plain), jax.tree_util.tree_leaves(g_chunk), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))


def test_auto_chunks_only_large_logits_and_only_chunkable_terms():
    assert not use_chunked(LossConfig(), 32 * 128, 258)  # the default experiment keeps the plain path
    assert use_chunked(LossConfig(), 8192, 50257)
    assert not use_chunked(LossConfig(terms={"ce": 1.0, "mse": 0.1}), 8192, 50257)
    assert use_chunked(LossConfig(chunked="always"), 4, 4)
    assert not use_chunked(LossConfig(chunked="never"), 8192, 50257)


def test_every_term_is_logged_on_its_own_in_train_and_val_records(tmp_path):
    terms = {"ce": 0.9, "label_smoothing": 0.1, "z": 1e-4, "mse": 0.5, "unlikelihood": 0.1}
    cfg = validate(dataclasses.replace(tiny_experiment(steps=4, eval_every=4, log_every=2),
                                       loss=LossConfig(terms=terms)))
    train(cfg, tmp_path, log=lambda *_: None)
    records = [r for r in read_metrics(tmp_path) if r["split"] in ("train", "val")]
    assert {r["split"] for r in records} == {"train", "val"}
    for r in records:
        assert r["loss"] == pytest.approx(sum(c * r[name] for name, c in terms.items()), rel=1e-5)
        assert r["perplexity"] == pytest.approx(np.exp(r["ce"]), rel=1e-5)
        assert 0 < r["mse"] < 2 and r["unlikelihood"] > 0 and r["z"] > 0


def test_default_loss_is_plain_cross_entropy():
    cfg = resolve(tiny_experiment(), 258)
    model = build_model(cfg.model, 0)
    batch = jax.tree_util.tree_map(jnp.asarray, _batch(cfg))
    terms, metrics = causal_lm_loss(model, batch, document_mask=True, deterministic=True)
    logits = np.asarray(model(batch.inputs, segment_ids_BL=batch.segment_ids), np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, np.asarray(batch.targets)[..., None], -1)[..., 0]
    ce = float(((lse - picked) * np.asarray(batch.weights)).sum())
    assert set(metrics) == {"tokens", "ce_sum", "ce_count", "ce_weighted", "ce_correct"}
    np.testing.assert_allclose(float(terms.sum), ce, rtol=1e-5)
    assert float(terms.weight) == float(metrics["ce_count"]) == float(metrics["tokens"])
    assert float(metrics["tokens"]) == float(batch.weights.sum())


def test_sum_normalisation_is_exact_under_gradient_accumulation():
    results = []
    for k in (1, 2):
        cfg = dataclasses.replace(tiny_experiment(grad_accum=k), loss=LossConfig(normalization="sum"))
        run = build_steps(resolve(cfg, 258))
        batch = _batch(run.cfg)
        batch = batch._replace(weights=batch.weights * (np.arange(8) != 3)[:, None])  # an empty row
        grad_fn = jax.jit(functools.partial(gradients, graphdef=run.graphdef, cfg=run.cfg))
        grads, metrics = grad_fn(run.init().params, sharding.put_batch(batch, run.mesh), jax.random.key(0))
        results.append((jax.device_get(grads), jax.device_get(metrics)))
    (g1, m1), (g2, m2) = results
    assert float(m1["ce_count"]) == float(m2["ce_count"]) == 1.0
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())


def test_kl_distils_from_a_trained_teacher(tmp_path):
    teacher = tiny_experiment(steps=2, eval_every=2)
    train(teacher, tmp_path / "teacher", log=lambda *_: None)
    student = validate(dataclasses.replace(
        tiny_experiment(steps=2, eval_every=2, seed=1),
        loss=LossConfig(terms={"ce": 0.5, "kl": 0.5}, teacher=str(tmp_path / "teacher"), kl_temperature=2.0)))
    result = train(student, tmp_path / "student", log=lambda *_: None)
    assert result["val"]["kl"] > 0
    assert result["val"]["loss"] == pytest.approx(0.5 * result["val"]["ce"] + 0.5 * result["val"]["kl"],
                                                  rel=1e-5)


def test_loss_terms_parse_from_the_command_line():
    cfg = load_experiment("default", ["loss.terms={ce: 1.0, z: 1e-4}"])
    assert cfg.loss.terms == {"ce": 1.0, "z": 1e-4}
    assert load_experiment("default", ["loss.terms={mse: 1}"]).loss.terms == {"mse": 1.0}  # replaced
    assert load_experiment("default", ["loss.terms.z=1e-4"]).loss.terms == {"ce": 1.0, "z": 1e-4}
    assert load_experiment("default", []).loss == LossConfig()


@pytest.mark.parametrize("overrides, message", [
    (["loss.terms={ce: 1, focal: 1}"],
     "unknown loss term 'focal' in loss.terms; known: ce, label_smoothing, z, kl, mse, unlikelihood"),
    (["loss.terms.z=-1"], "loss.terms.z must be finite and >= 0"),
    (["loss.terms={ce: 0}"], "at least one positive coefficient"),
    (["loss.normalization=seq"], "unknown loss.normalization 'seq'; known: token, sequence, sum"),
    (["loss.chunked=always", "loss.terms.mse=0.1"], "loss.chunked=always cannot compute mse"),
    (["loss.terms.kl=1"], "loss.teacher is empty"),
    (["loss.teacher=runs/x"], "loss.teacher is set but loss.terms has no kl term"),
])
def test_bad_loss_config_is_one_line(overrides, message, capsys, tmp_path):
    with pytest.raises(ConfigError, match=message):
        load_experiment("default", overrides)
    assert main(["train", "default", *overrides, "--workdir", str(tmp_path / "w")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
