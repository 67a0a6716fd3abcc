"""A vmapped group of trials: runs that differ only in their optimizer's traceable hyperparameters.

The trials share the model, the update rule, the seed (so the initial parameters and every batch) and
everything else; only the fields each rule declares in `TRACEABLE` (`gptjax.optimizers.RULES`) may differ.
`optax.inject_hyperparams` turns those fields into arrays in the optimizer state, and `jax.vmap` over a
stack of train states runs the very step a separate run uses for all trials at once: one compilation
instead of one per trial, and small matrix multiplies batched into larger ones. Each trial's checkpoints
hold a separate run's layout (`Layout`), so a trial resumes, samples and reports as if trained alone.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from gptjax.config import ConfigError, Experiment, OptimConfig
from gptjax.optimizers import RULES, build_optimizer


def traceable(rule: str) -> tuple[str, ...]:
    """The OptimConfig fields that rule `rule` lets a vmapped group vary (none for an unknown rule)."""
    return RULES[rule].TRACEABLE if rule in RULES else ()


def varying_fields(cfgs: Sequence[Experiment]) -> tuple[str, ...]:
    """The optimizer fields on which `cfgs` differ (the preset's name aside); ConfigError unless nothing
    else differs and each of those fields is traceable for the rule."""
    base = cfgs[0]
    for cfg in cfgs[1:]:
        if dataclasses.replace(cfg, optim=base.optim) != base:
            raise ConfigError("vmapped trials must differ only in optim fields (same model, data, seed, "
                              "steps)")
    names = [f.name for f in dataclasses.fields(OptimConfig) if f.name != "preset"]
    varying = tuple(n for n in names if len({getattr(c.optim, n) for c in cfgs}) > 1)
    allowed = traceable(base.optim.rule)
    bad = [n for n in varying if n not in allowed]
    if bad:
        raise ConfigError(f"optim.{bad[0]} cannot be vectorised for rule {base.optim.rule}; "
                          f"vectorisable: {', '.join(allowed) or 'nothing'}")
    return varying


def injected_optimizer(cfg: OptimConfig, fields: Sequence[str], total_steps: int
                       ) -> optax.GradientTransformation:
    """`build_optimizer(cfg)` with `fields` held as arrays in its state (optax.inject_hyperparams), so
    one compiled update serves every value of them; the state's values, not `cfg`'s, are used. The rules
    take an array wherever they take the number, and hold the same state for it (a traced weight decay,
    zero or not, adds wd·θ with no state, as a constant one does)."""
    def factory(**given):
        return build_optimizer(dataclasses.replace(cfg, **given), total_steps)

    # inject_hyperparams finds the hyperparameters by signature: name them.
    factory.__signature__ = inspect.Signature(
        [inspect.Parameter(f, inspect.Parameter.KEYWORD_ONLY) for f in fields])
    return optax.inject_hyperparams(factory)(**{f: getattr(cfg, f) for f in fields})


class Layout:
    """Moves one trial between the vmapped program's state (optimizer state under inject_hyperparams,
    with the trial's hyperparameters in it) and a separate run's (`build_optimizer` of the trial's own
    config), which is what its checkpoints hold. The inner state holds the same leaves in the same order
    as the separate one; the vmapped one adds only the hyperparameters and inject_hyperparams' own step
    count, which no value depends on, so the move is a relabelling of the same leaves."""

    def __init__(self, cfg: Experiment, fields: Sequence[str], separate_opt_state, injected_opt_state):
        self.hparams = {f: jnp.asarray(getattr(cfg.optim, f), jnp.float32) for f in fields}
        self.separate = separate_opt_state  # abstract: a separate run's optimizer state
        self.injected = injected_opt_state  # abstract: the vmapped optimizer's, the same for every trial
        own = [(x.shape, x.dtype) for x in jax.tree.leaves(separate_opt_state)]
        if own != [(x.shape, x.dtype) for x in jax.tree.leaves(injected_opt_state.inner_state)]:
            raise ConfigError(f"optimizer {cfg.optim.preset}: its state differs from the vmapped one's; "
                              f"run this sweep without --vmap")

    def to_vmapped(self, step, opt_state):
        inner = jax.tree.unflatten(jax.tree.structure(self.injected.inner_state), jax.tree.leaves(opt_state))
        return self.injected._replace(count=jnp.asarray(step, jnp.int32), hyperparams=self.hparams,
                                      inner_state=inner)

    def to_separate(self, opt_state):
        return jax.tree.unflatten(jax.tree.structure(self.separate), jax.tree.leaves(opt_state.inner_state))
