"""Model families by name; experiments pick one with `model.family`."""

from __future__ import annotations

import jax
from flax import nnx
from flax.traverse_util import unflatten_dict
from jax.sharding import PartitionSpec

from gptjax.config import Family, ModelConfig, registry
from gptjax.models.bert import Bert
from gptjax.models.gpt import GPT, count_params
from gptjax.models.t5 import T5
from gptjax.sharding import AXES_KEY

MODELS = registry(Family, {"gpt": GPT, "bert": Bert, "t5": T5})


def tree_bytes(tree) -> int:
    """Bytes of a pytree of arrays or jax.ShapeDtypeStructs (parameters, optimizer state)."""
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def build_model(cfg: ModelConfig, seed: int) -> nnx.Module:
    return MODELS[cfg.family](cfg, rngs=nnx.Rngs(params=seed))


def split_params(model: nnx.Module):
    """(graphdef, params as a plain nested dict of arrays): the pure form every jitted function takes."""
    graphdef, state = nnx.split(model, nnx.Param)
    return graphdef, nnx.to_pure_dict(state)


def abstract_model(cfg: ModelConfig) -> nnx.Module:
    """The model with ShapeDtypeStructs for arrays, without allocating: `nnx.eval_shape` of the init."""
    return nnx.eval_shape(lambda: build_model(cfg, seed=0))


def abstract_params(cfg: ModelConfig):
    """(graphdef, params as ShapeDtypeStructs) without allocating."""
    return split_params(abstract_model(cfg))


def param_axes(model: ModelConfig | nnx.Module):
    """The logical axis names of every parameter, declared where it is created: the pure params dict
    (the `split_params` layout) with a PartitionSpec of names per leaf, e.g. P("embed", None, "heads").
    Takes a config or an (abstract) model built from one."""
    if isinstance(model, ModelConfig):
        model = abstract_model(model)
    _, state = nnx.split(model, nnx.Param)
    flat = {}
    for path, variable in nnx.to_flat_state(state):
        axes = variable.get_metadata(AXES_KEY, None)
        if axes is None or len(axes) != len(variable.shape):
            raise ValueError(f"parameter {'.'.join(map(str, path))} of shape {variable.shape} declares "
                             f"logical axes {axes}; every parameter names each of its dimensions")
        flat[path] = PartitionSpec(*axes)
    return unflatten_dict(flat)


__all__ = ["GPT", "Bert", "T5", "MODELS", "abstract_model", "abstract_params", "build_model", "count_params",
           "param_axes", "split_params", "tree_bytes"]
