"""FLOPs per token from the stated formula, checked against the model's own matmul weights; MFU logged."""

import jax
import pytest

from gptjax.config import ModelConfig, ObjectiveConfig
from gptjax.flops import flops_per_token, peak_flops
from gptjax.metrics import read_metrics
from gptjax.models import abstract_params
from gptjax.train import train
from tests.conftest import tiny_experiment


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_flops_per_token_is_6n_plus_attention_with_n_the_matmul_weights(activation):
    cfg = ModelConfig(n_layer=12, n_head=12, n_embd=768, context=1024, vocab_size=50257,
                      activation=activation)
    _, params = abstract_params(cfg)
    paths = jax.tree_util.tree_leaves_with_path(params)
    matmul = sum(x.size for path, x in paths if "kernel" in jax.tree_util.keystr(path))
    matmul += params["wte"]["embedding"].size  # the tied output head
    assert flops_per_token(cfg, 1024) == 6 * matmul + 12 * 12 * 1024 * 768
    if activation == "gelu":
        assert flops_per_token(cfg, 1024) == pytest.approx(6 * 123.5e6 + 113.2e6, rel=1e-3)


def test_bert_counts_the_mlm_head_on_the_gathered_positions_only():
    cfg = ModelConfig(family="bert", n_layer=2, n_head=2, n_embd=64, context=128, vocab_size=1000)
    body = 2 * (64 * 192 + 64 * 64 + 64 * 256 + 256 * 64)
    head = 20 / 128 * (64 * 64 + 1000 * 64)  # ceil(0.15 · 128) = 20 gathered positions of 128
    assert flops_per_token(cfg, 128, ObjectiveConfig(name="mlm")) == pytest.approx(
        6 * (body + head) + 12 * 2 * 128 * 64, rel=1e-12)


def test_t5_counts_the_decoder_on_its_targets_and_cross_attention_on_the_encoder():
    cfg = ModelConfig(family="t5", n_layer=2, n_decoder_layer=3, n_head=2, n_embd=64, vocab_size=1000,
                      bias=False, activation="relu")
    layer = 64 * 192 + 64 * 64 + 64 * 256 + 256 * 64
    # seq_len 128 holds a raw window of 141 tokens: 21 dropped in 7 spans, 29 targets (EOS included).
    t, r = 29, 29 / 128
    decoder_per_target = 3 * (layer + 2 * 64 * 64) + 1000 * 64  # self-attn + MLP, cross q and out, head
    cross_kv_per_source = 3 * 2 * 64 * 64
    n = 2 * layer + r * decoder_per_target + cross_kv_per_source
    attention = 12 * 64 * (2 * 128 + 3 * r * (t + 128))
    assert flops_per_token(cfg, 128, ObjectiveConfig(name="span_corruption")) == pytest.approx(
        6 * n + attention, rel=1e-12)


def test_mfu_is_logged_against_the_measured_cpu_peak(tmp_path):
    cfg = tiny_experiment(steps=4, log_every=2, eval_every=4)
    train(cfg, tmp_path, log=lambda *_: None)
    records = read_metrics(tmp_path)
    setup = [r for r in records if r["split"] == "setup"][0]
    assert setup["peak_flops"] == peak_flops(jax.devices()[0]) > 1e9
    for r in (r for r in records if r["split"] == "train"):
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * setup["flops_per_token"] / setup["peak_flops"])
        assert 0 < r["mfu"] < 1
