"""Declarative sharding: logical names → mesh axes by the rules table, every parameter named, (data, fsdp,
tensor) meshes giving the losses of one device for GPT, BERT and T5, and bad meshes refused in one line."""

import dataclasses

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from jax.sharding import PartitionSpec as P

from gptjax import cli
from gptjax.config import (
    PRESETS,
    ConfigError,
    DataConfig,
    ModelConfig,
    ObjectiveConfig,
    TrainConfig,
    validate,
)
from gptjax.metrics import read_metrics
from gptjax.models import param_axes
from gptjax.objectives import build_objective_data
from gptjax.sharding import RULES, logical_to_mesh, make_mesh, mesh_shape, put_batch
from gptjax.train import build_steps, resolve, train
from tests.conftest import TINY_FILE, tiny_experiment

MESH_222 = {"data": 2, "fsdp": 2, "tensor": 2}


def test_rules_map_logical_names_onto_the_mesh():
    assert logical_to_mesh(("vocab", "embed"), (264, 32), MESH_222) == P("tensor", "fsdp")
    assert logical_to_mesh(("embed", None, "heads"), (32, 3, 32), MESH_222) == P("fsdp", None, "tensor")
    assert logical_to_mesh(("mlp", "embed"), (128, 32), MESH_222) == P("tensor", "fsdp")
    assert logical_to_mesh(("layers", "embed"), (2, 32), MESH_222) == P(None, "fsdp")
    # A dimension the axes do not divide stays whole (the byte vocabulary's 258 rows, 4 ways).
    mesh_124 = {"data": 1, "fsdp": 2, "tensor": 4}
    assert logical_to_mesh(("vocab", "embed"), (258, 32), mesh_124) == P(None, "fsdp")
    # Rows over data and fsdp; the width then finds fsdp taken and stays whole.
    assert logical_to_mesh(("batch", "length", "embed"), (8, 16, 32), MESH_222) == P(("data", "fsdp"))
    assert logical_to_mesh(("batch", "length", "heads", "kv"), (8, 16, 4, 8),
                           {"data": 1, "fsdp": 4, "tensor": 2}) == P("fsdp", None, "tensor")
    # Axes of size 1 are never named: one device, no constraint.
    assert logical_to_mesh(("vocab", "embed"), (264, 32), {"data": 8, "fsdp": 1, "tensor": 1}) == P()
    with pytest.raises(ValueError, match="unknown logical axis 'width'"):
        logical_to_mesh(("width",), (8,), MESH_222)
    with pytest.raises(ValueError, match="do not match an array of shape"):
        logical_to_mesh(("embed",), (8, 8), MESH_222)


FAMILIES = {
    "gpt": ModelConfig(n_layer=2, n_head=4, n_embd=32, context=64, vocab_size=300),
    "gpt_scanned_swiglu_untied": ModelConfig(n_layer=2, n_head=4, n_embd=32, context=64, vocab_size=300,
                                             scan_layers=True, activation="swiglu", tie_embeddings=False),
    "gpt_classifier": ModelConfig(n_layer=1, n_head=4, n_embd=32, context=64, vocab_size=300, n_classes=3),
    "bert": ModelConfig(family="bert", n_layer=1, n_head=4, n_embd=32, context=64, vocab_size=300),
    "t5": ModelConfig(family="t5", n_layer=1, n_head=4, n_embd=32, context=64, vocab_size=300, bias=False,
                      activation="relu", relative_buckets=8, relative_max_distance=32),
}


@pytest.mark.parametrize("name", FAMILIES)
def test_every_parameter_names_each_of_its_dimensions(name):
    axes = flatten_dict(param_axes(FAMILIES[name]))  # raises on a parameter without (enough) names
    assert all(n is None or n in RULES for spec in axes.values() for n in spec)
    if name == "gpt":
        assert axes[("wte", "embedding")] == P("vocab", "embed")
        assert axes[("blocks", 0, "attn", "c_attn", "kernel")] == P("embed", None, "heads")
        assert axes[("blocks", 0, "attn", "c_proj", "kernel")] == P("heads", "embed")
        assert axes[("blocks", 1, "mlp", "c_fc", "kernel")] == P("embed", "mlp")
        assert axes[("blocks", 1, "mlp", "c_proj", "kernel")] == P("mlp", "embed")
    if name == "gpt_scanned_swiglu_untied":
        assert axes[("layers", "mlp", "c_fc", "kernel")] == P("layers", "embed", None, "mlp")
        assert axes[("lm_head", "kernel")] == P("embed", "vocab")
    if name == "t5":
        assert axes[("decoder", 0, "cross", "c_kv", "kernel")] == P("embed", None, "heads")
        assert axes[("enc_bias", "embedding")] == P(None, "heads")


def test_mesh_sizes_and_their_errors():
    sizes = lambda data, fsdp, tensor: mesh_shape(TrainConfig(data_parallel=data, fsdp=fsdp, tensor=tensor),
                                                  8)
    assert sizes(-1, 2, 2) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sizes(1, -1, 4) == {"data": 1, "fsdp": 2, "tensor": 4}
    assert sizes(2, 1, 1) == {"data": 2, "fsdp": 1, "tensor": 1}  # the first 2 of 8 devices
    with pytest.raises(ConfigError, match="mesh data -1 × fsdp 3 × tensor 1: 3 does not divide the 8"):
        mesh_shape(TrainConfig(fsdp=3), 8)
    with pytest.raises(ConfigError, match="needs 16 devices, but there are 8"):
        mesh_shape(TrainConfig(data_parallel=4, fsdp=2, tensor=2), 8)
    mesh = make_mesh(TrainConfig(data_parallel=1, fsdp=2, tensor=4), 8)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 4}
    with pytest.raises(ConfigError, match=r"batch_size \(6\) must be divisible .* \(4 = data 2 × fsdp 2\)"):
        make_mesh(TrainConfig(data_parallel=2, fsdp=2, tensor=2), 6)


def test_bad_mesh_settings_are_refused_by_the_config():
    cfg = tiny_experiment()
    for fields, message in [({"tensor": 3}, r"model.n_head \(2\) must be divisible by train.tensor \(3\)"),
                            ({"tensor": 0}, "train.tensor must be positive"),
                            ({"fsdp": 0}, "train.fsdp must be positive or -1"),
                            ({"data_parallel": -1, "fsdp": -1}, "cannot both be -1")]:
        with pytest.raises(ConfigError, match=message):
            validate(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **fields)))


@pytest.mark.parametrize("overrides, message", [
    (["train.tensor=4"], "model.n_head (2) must be divisible by train.tensor (4)"),
    (["train.data_parallel=-1", "train.fsdp=3"], "3 does not divide the 8 devices"),
])
def test_bad_mesh_on_the_command_line_is_one_line_and_exit_2(tmp_path, capsys, overrides, message):
    experiment = tmp_path / "tinyrun.py"
    experiment.write_text(TINY_FILE)
    code = cli.main(["train", str(experiment), "--workdir", str(tmp_path / "run"), *overrides])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def _tiny(family: str, data: int, fsdp: int, tensor: int, optim: str = "gpt3_adamw", **optim_fields):
    """A tiny model of `family` with 4 heads (splittable 4 ways) on the offline corpus."""
    cfg = tiny_experiment(data_parallel=data, fsdp=fsdp, tensor=tensor)
    objective = {"gpt": "causal_lm", "bert": "mlm_nsp", "t5": "span_corruption"}[family]
    model = dataclasses.replace(FAMILIES[family], vocab_size=0 if family == "gpt" else 600, n_layer=1)
    if family == "gpt":
        model = dataclasses.replace(model, vocab_size=264)  # the byte tokenizer's 258, padded to split 8 ways
    tokenizer = "byte" if family == "gpt" else "bpe"
    return validate(dataclasses.replace(
        cfg, name=family, model=model, objective=ObjectiveConfig(name=objective),
        data=DataConfig(tokenizer=tokenizer, tokenizer_vocab=600, seq_len=32, batch_size=8),
        optim=dataclasses.replace(PRESETS[optim], lr=3e-3, **optim_fields)))


def _metrics(cfg, steps: int = 2):
    """Every metric of `steps` train steps and one evaluation, on the mesh of `cfg.train`."""
    data = build_objective_data(cfg)
    run = build_steps(resolve(cfg, data.tokenizer.vocab_size, getattr(data, "n_classes", 0)))
    state = run.init()
    out = []
    for step in range(steps):
        state, metrics = run.step(state, put_batch(data.train_batch(step), run.mesh))
        out.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    val = run.evaluate(state.params, [put_batch(b, run.mesh) for b in data.val_batches(1)])
    return out, val


MESHES = [(8, 1, 1), (2, 2, 2), (1, 4, 2), (1, 2, 4)]


@pytest.fixture(scope="module")
def one_device():
    return {family: _metrics(_tiny(family, 1, 1, 1)) for family in ("gpt", "bert", "t5")}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt", "bert", "t5"])
@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: "x".join(map(str, m)))
def test_meshes_give_the_losses_of_one_device(one_device, family, mesh):
    steps, val = _metrics(_tiny(family, *mesh))
    expected_steps, expected_val = one_device[family]
    for got, expected in zip(steps, expected_steps, strict=True):
        assert got.keys() == expected.keys()
        for key in expected:
            np.testing.assert_allclose(got[key], expected[key], rtol=2e-5, atol=1e-6, err_msg=key)
    for key in expected_val:
        np.testing.assert_allclose(val[key], expected_val[key], rtol=2e-5, atol=1e-6, err_msg=key)


@pytest.fixture(scope="module")
def one_device_losses(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one")
    train(tiny_experiment(steps=4, log_every=1, eval_every=4, data_parallel=1), workdir, log=lambda *_: None)
    records = read_metrics(workdir)
    return {split: [r["loss"] for r in records if r["split"] == split] for split in ("train", "val")}


# Through train() and the loop; the tensor meshes, and BERT and T5, are the slow test's above.
@pytest.mark.parametrize("data, fsdp", [(8, 1), (4, 2), (1, 8)])
def test_training_on_a_mesh_logs_the_losses_of_one_device(tmp_path, one_device_losses, data, fsdp):
    train(tiny_experiment(steps=4, log_every=1, eval_every=4, data_parallel=data, fsdp=fsdp), tmp_path,
          log=lambda *_: None)
    for split, expected in one_device_losses.items():
        mesh = [r["loss"] for r in read_metrics(tmp_path) if r["split"] == split]
        np.testing.assert_allclose(mesh, expected, rtol=1e-5)


def _spec(x) -> P:
    return x.sharding.spec


def test_state_is_sharded_as_the_rules_say():
    cfg = _tiny("gpt", 2, 2, 2)
    run = build_steps(resolve(cfg, 258))
    state = run.init()
    flat = flatten_dict(state.params)
    block = ("blocks", 0)
    expected = {  # path → (spec, the shape of each device's shard)
        ("wte", "embedding"): (P("tensor", "fsdp"), (132, 16)),  # 264 × 32: vocab over tensor, width fsdp
        ("wpe", "embedding"): (P(None, "fsdp"), (64, 16)),
        (*block, "attn", "c_attn", "kernel"): (P("fsdp", None, "tensor"), (16, 3, 16)),  # 2 of 4 heads each
        (*block, "attn", "c_attn", "bias"): (P(None, "tensor"), (3, 16)),
        (*block, "attn", "c_proj", "kernel"): (P("tensor", "fsdp"), (16, 16)),
        (*block, "mlp", "c_fc", "kernel"): (P("fsdp", "tensor"), (16, 64)),
        (*block, "mlp", "c_proj", "kernel"): (P("tensor", "fsdp"), (64, 16)),
        (*block, "ln_1", "scale"): (P("fsdp"), (16,)),
    }
    for path, (spec, shard) in expected.items():
        assert _spec(flat[path]) == spec, path
        assert {s.data.shape for s in flat[path].addressable_shards} == {shard}, path
    # Adam's moments lie exactly like their parameters; its step counts are replicated.
    kernel = flat[(*block, "attn", "c_attn", "kernel")]
    moments = [x for x in jax.tree_util.tree_leaves(state.opt_state) if x.shape == kernel.shape]
    assert len(moments) == 2 and all(_spec(x) == P("fsdp", None, "tensor") for x in moments)  # mu, nu
    assert all(_spec(x) == P() for x in jax.tree_util.tree_leaves(state.opt_state) if x.ndim == 0)


def test_adafactor_keeps_its_momentum_sharded_and_its_factored_statistics_whole():
    cfg = _tiny("t5", 2, 2, 2, "t5_adafactor", adafactor_factor_min_dim=8)
    run = build_steps(resolve(cfg, 600))
    state = run.init()
    kernel = state.params["encoder"][0]["mlp"]["c_fc"]["kernel"]  # [32, 128]
    assert _spec(kernel) == P("fsdp", "tensor")
    flat = {tuple(str(k) for k in path): x
            for path, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]}
    mine = {path: x for path, x in flat.items() if "['encoder']" in path and "['c_fc']" in path
            and "['kernel']" in path}
    momentum = [x for x in mine.values() if x.shape == kernel.shape]
    factored = [x for x in mine.values() if x.shape in ((32,), (128,))]
    assert len(momentum) == 1 and _spec(momentum[0]) == P("fsdp", "tensor")
    assert len(factored) == 2 and all(_spec(x) == P() for x in factored)


def test_describe_reports_the_bytes_each_device_holds_on_the_mesh(capsys):
    from gptjax.config import load_experiment
    from gptjax.describe import describe

    cfg = load_experiment("default", ["model.n_layer=1", "model.n_embd=64", "model.n_head=4",
                                      "model.vocab_size=256", "model.context=64", "data.seq_len=64",
                                      "sample.max_new_tokens=8", "train.data_parallel=1", "train.fsdp=2",
                                      "train.tensor=2"])
    d = describe(cfg, devices=4)
    assert d.mesh == {"data": 1, "fsdp": 2, "tensor": 2}
    # By hand: every matrix is split 4 ways (a width over fsdp, vocab/heads/hidden over tensor): wte
    # 256·64, c_attn 64·3·64, c_proj 64·64, c_fc 64·256, MLP c_proj 256·64; the position table (64·64) and
    # every vector 2 ways: six norm vectors of 64, the biases 3·64 (heads), 64, 256 (hidden), 64.
    matrices = 256 * 64 + 64 * 3 * 64 + 64 * 64 + 64 * 256 + 256 * 64
    halves = 64 * 64 + 6 * 64 + 3 * 64 + 64 + 256 + 64
    assert d.param_bytes_per_device == 4 * (matrices // 4 + halves // 2)
    # Adam's m and v lie like the parameters; its two int32 step counts are replicated.
    assert d.opt_state_bytes_per_device == 2 * d.param_bytes_per_device + 2 * 4
    assert d.state_bytes_per_device == 4 * d.param_bytes_per_device + 8
    assert cli.main(["describe", "default", "--devices", "4", "train.data_parallel=1", "train.fsdp=2",
                     "train.tensor=2"]) == 0
    assert "per device on 4 devices (data 1 × fsdp 2 × tensor 2):" in capsys.readouterr().out
    assert cli.main(["describe", "default", "--devices", "6", "train.fsdp=4"]) == 2
    assert "4 does not divide the 6 devices" in capsys.readouterr().err
