"""Meshes: (data, fsdp) shapes give the losses of one device; parameters sharded by rule."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gptjax.config import ConfigError, TrainConfig
from gptjax.data import build_data
from gptjax.metrics import read_metrics
from gptjax.sharding import fsdp_spec, make_mesh
from gptjax.train import build_steps, resolve, train
from tests.conftest import tiny_experiment


def test_fsdp_rule_shards_the_largest_divisible_dimension():
    assert fsdp_spec((258, 32), 2) == P("fsdp", None)
    assert fsdp_spec((258, 32), 4) == P(None, "fsdp")  # 258 is not divisible by 4
    assert fsdp_spec((256, 32), 2) == P("fsdp", None)
    assert fsdp_spec((30, 96), 4) == P(None, "fsdp")
    assert fsdp_spec((30, 98), 4) == P()
    assert fsdp_spec((128,), 8) == P("fsdp")
    assert fsdp_spec((), 8) == P()
    assert fsdp_spec((256, 32), 1) == P()


def test_mesh_shapes_and_their_errors():
    assert dict(make_mesh(TrainConfig(data_parallel=-1, fsdp=2), 8).shape) == {"data": 4, "fsdp": 2}
    assert dict(make_mesh(TrainConfig(data_parallel=1, fsdp=1), 8).shape) == {"data": 1, "fsdp": 1}
    with pytest.raises(ConfigError, match="train.fsdp=3 does not divide the 8 visible devices"):
        make_mesh(TrainConfig(fsdp=3), 24)
    with pytest.raises(ConfigError, match="= 4 × 4 = 16, but only 8 devices"):
        make_mesh(TrainConfig(data_parallel=4, fsdp=4), 32)
    with pytest.raises(ConfigError, match=r"batch_size \(12\) must be divisible .* \(8 = data 4 × fsdp 2\)"):
        make_mesh(TrainConfig(data_parallel=4, fsdp=2), 12)


def test_state_is_sharded_along_fsdp_and_never_whole_on_one_device():
    cfg = tiny_experiment(data_parallel=2, fsdp=4)
    state = build_steps(resolve(cfg, build_data(cfg.data, 0).tokenizer.vocab_size)).init()
    embedding = state.params["wte"]["embedding"]  # (258, 32): 32 is divisible by 4, 258 is not
    assert embedding.sharding.spec == P(None, "fsdp")
    assert {shard.data.shape for shard in embedding.addressable_shards} == {(258, 8)}
    moments = [x for x in jax.tree_util.tree_leaves(state.opt_state) if x.shape == embedding.shape]
    assert moments and all(x.sharding.spec == P(None, "fsdp") for x in moments)


@pytest.fixture(scope="module")
def one_device_losses(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one")
    train(tiny_experiment(steps=4, log_every=1, eval_every=4, data_parallel=1), workdir, log=lambda *_: None)
    records = read_metrics(workdir)
    return {split: [r["loss"] for r in records if r["split"] == split] for split in ("train", "val")}


@pytest.mark.parametrize("data, fsdp", [(8, 1), (4, 2), (1, 8)])
def test_meshes_give_the_losses_of_one_device(tmp_path, one_device_losses, data, fsdp):
    train(tiny_experiment(steps=4, log_every=1, eval_every=4, data_parallel=data, fsdp=fsdp), tmp_path,
          log=lambda *_: None)
    for split, expected in one_device_losses.items():
        mesh = [r["loss"] for r in read_metrics(tmp_path) if r["split"] == split]
        np.testing.assert_allclose(mesh, expected, rtol=1e-5)
