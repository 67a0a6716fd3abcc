"""`describe`: parameter counts against the published GPT-2 sizes and hand formulas, memory against a hand
computation of Adam's state, step time against the FLOPs formula, and nothing allocated."""

import dataclasses

import jax
import pytest

from gptjax import cli
from gptjax.config import PRESETS, load_experiment
from gptjax.describe import ACCELERATORS, component, describe

GPT2 = ["model.vocab_size=50257", "model.context=1024"]
# (layers, width, heads) → the published parameter count with tied embeddings (Radford et al. 2019, as
# counted by Hugging Face's GPT2LMHeadModel; the paper's table rounds them to 117M/345M/762M/1542M).
GPT2_SIZES = {(12, 768, 12): 124_439_808, (24, 1024, 16): 354_823_168,
              (36, 1280, 20): 774_030_080, (48, 1600, 25): 1_557_611_200}


def gpt(n_layer, d, heads, *more):
    return load_experiment("default", [*GPT2, f"model.n_layer={n_layer}", f"model.n_embd={d}",
                                       f"model.n_head={heads}", *more])


def hand_count(n_layer, d, vocab, context) -> int:
    """GPT-2 layout with biases: per layer qkv + out (4d² + 4d), MLP (8d² + 5d), two LayerNorms (4d)."""
    return n_layer * (12 * d * d + 13 * d) + (vocab + context) * d + 2 * d


@pytest.mark.parametrize("shape", list(GPT2_SIZES))
def test_gpt2_parameter_counts_are_the_published_ones(shape):
    d = describe(gpt(*shape))
    assert d.params["total"] == GPT2_SIZES[shape] == hand_count(shape[0], shape[1], 50257, 1024)
    assert d.params["heads"] == 0  # tied: the output head is the token embedding
    assert d.params["embeddings"] == (50257 + 1024) * shape[1]


def test_bert_base_and_t5_small_counts_are_the_published_ones():
    """BERT-base with its pre-training heads and T5-small (v1.0), as `transformers` counts them
    (BertForPreTraining(BertConfig()) and T5ForConditionalGeneration(T5Config()).num_parameters())."""
    bert = load_experiment("bert_adam", ["model.vocab_size=30522", "model.n_layer=12", "model.n_embd=768",
                                         "model.n_head=12", "model.context=512"])
    d = describe(bert)
    assert d.params["total"] == 110_106_428
    # MLM transform dense (d² + d) and LayerNorm (2d), output bias V, pooler (d² + d), NSP (2d + 2).
    assert d.params["heads"] == 2 * 768**2 + 6 * 768 + 30522 + 2
    t5 = load_experiment("t5_adafactor", ["model.vocab_size=32128", "model.n_layer=6", "model.n_embd=512",
                                          "model.n_head=8", "model.context=512", "model.mlp_ratio=4"])
    d = describe(t5)
    assert d.params["total"] == 60_506_624 and d.n_layers == 12
    assert d.params["embeddings"] == 32128 * 512 + 2 * 32 * 8  # shared embedding, two relative biases


def test_gpt2_small_components_per_layer():
    d = describe(gpt(12, 768, 12))
    assert d.per_layer == {"embeddings": 0, "attention": 4 * 768**2 + 4 * 768,
                           "mlp": 8 * 768**2 + 5 * 768, "norms": 4 * 768, "heads": 0}
    assert d.params["norms"] == 12 * 4 * 768 + 2 * 768  # the final LayerNorm too
    untied = describe(gpt(12, 768, 12, "model.tie_embeddings=false"))
    assert untied.params["heads"] == 50257 * 768
    assert untied.params["total"] == d.params["total"] + 50257 * 768


def test_memory_matches_a_hand_computation():
    cfg = gpt(12, 768, 12)
    n = GPT2_SIZES[(12, 768, 12)]
    for preset in ("gpt3_adamw", "gpt2_adam"):
        d = describe(dataclasses.replace(cfg, optim=PRESETS[preset]))
        assert d.param_bytes == d.grad_bytes == 4 * n
        # Adam's m and v in float32, plus two int32 step counters (Adam's bias correction, the schedule).
        assert d.opt_state_bytes == 2 * 4 * n + 2 * 4
        assert d.state_bytes == 16 * n + 8
    # Adafactor with momentum: a full float32 first moment (4 bytes/param) and a factored second moment,
    # a row and a column vector per matrix, which is under 1% more here.
    d = describe(dataclasses.replace(cfg, optim=PRESETS["t5_adafactor"]))
    assert 4 * n < d.opt_state_bytes < 4.04 * n


def test_step_time_is_the_flops_formula_over_the_peak():
    d = describe(gpt(12, 768, 12, "data.seq_len=1024", "data.batch_size=8"), accelerator="v5p", mfu=0.5,
                 devices=4)
    n_matmul = 12 * 12 * 768**2 + 50257 * 768  # every weight but the position embedding and biases/norms
    flops = 6 * n_matmul + 12 * 12 * 1024 * 768
    assert d.tokens_per_step == 8 * 1024
    assert d.flops_per_token == pytest.approx(flops, rel=1e-12)
    assert d.step_seconds == pytest.approx(flops * 8 * 1024 / (4 * 459e12 * 0.5), rel=1e-12)


def test_every_family_parameter_maps_to_a_component():
    assert component(("blocks", 3, "attn", "c_attn", "kernel")) == "attention"
    assert component(("decoder", 0, "cross", "c_kv", "kernel")) == "attention"
    assert component(("layers", "mlp", "c_fc", "bias")) == "mlp"
    assert component(("encoder", 1, "ln_2", "scale")) == "norms"
    assert component(("enc_ln_f", "scale")) == "norms"
    assert component(("enc_bias", "embedding")) == "embeddings"
    assert component(("mlm_ln", "scale")) == "heads"
    assert component(("nsp", "kernel")) == "heads"


@pytest.mark.slow  # building the abstract 96-layer model takes ~12 s (flax Rngs under tracing)
def test_gpt3_175b_is_described_without_allocating(capsys):
    """The GPT-3 175B shape (Brown et al. 2020, Table 2.1) through the command line, in process."""
    live = len(jax.live_arrays())
    code = cli.main(["describe", "default", "model.vocab_size=50257", "model.context=2048",
                     "model.n_layer=96", "model.n_embd=12288", "model.n_head=96", "data.seq_len=2048",
                     "--accelerator", "v5p"])
    out = capsys.readouterr().out
    assert code == 0
    assert hand_count(96, 12288, 50257, 2048) == 174_604_259_328
    assert "174,604,259,328" in out
    assert "2.54 TiB" in out  # 16 bytes per parameter with Adam: 174.6e9 × 16 / 2^40
    # Nothing on a device (shapes only); its 700 GB of float32 parameters could not have been allocated.
    assert len(jax.live_arrays()) == live


def test_bad_input_is_one_line_and_exit_2(capsys):
    assert cli.main(["describe", "default", "--accelerator", "tpu9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown accelerator 'tpu9'" in err and ", ".join(ACCELERATORS) in err
    assert cli.main(["describe", "default", "--mfu", "1.5"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert cli.main(["describe", "default", "model.n_embd=130"]) == 2  # not divisible by 4 heads
