"""Model families by name; experiments pick one with `model.family`."""

from __future__ import annotations

import jax
from flax import nnx

from gptjax.config import Family, ModelConfig, registry
from gptjax.models.bert import Bert
from gptjax.models.gpt import GPT, count_params
from gptjax.models.t5 import T5

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


def abstract_params(cfg: ModelConfig):
    """(graphdef, params as ShapeDtypeStructs) without allocating: `nnx.eval_shape` of the init."""
    return split_params(nnx.eval_shape(lambda: build_model(cfg, seed=0)))


__all__ = ["GPT", "Bert", "T5", "MODELS", "abstract_params", "build_model", "count_params", "split_params",
           "tree_bytes"]
