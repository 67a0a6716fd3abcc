"""Optimizers: the update rules behind the named presets, learning-rate schedules and weight-decay masks.

`build_optimizer(cfg, total_steps)` turns an `OptimConfig` (usually one of `config.PRESETS`) into one pure
optax chain: global-norm clipping if asked, then the update rule from `RULES` (a frozen dataclass per rule
whose `build()` chains optax transformations), with the learning rate from `build_schedule`. Everything is
a function of (grads, state, params), so the train step can jit it and checkpoint its state. The formulas,
the preset table and the mapping of Adafactor onto optax's parameters are in docs/optimizers.md, and
tests/test_optimizers.py checks each rule against NumPy written from the papers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gptjax.config import ConfigError, DecayMask, OptimConfig, RuleName, ScheduleName, registry
from gptjax.models import tree_bytes
from gptjax.optimizers_modern import MODERN_RULES, AdamHyperparameters, UpdateRule
from gptjax.soap import key_name, linear_shape, linear_view

Mask = Callable[[Any], Any]  # params -> pytree of bools, True where weight decay applies

# Position tables get no weight decay, as in minGPT: like the biases the ndim rule spares, they are added
# to activations, not multiplied with them, so shrinking them does not limit the model's capacity. A
# leaf counts as one when a key on its path contains one of these (GPT's and BERT's `wpe`, T5's relative
# position bias tables `enc_bias` / `dec_bias`; name other families' tables `*position*`).
POSITION_KEYS = ("wpe", "position", "enc_bias", "dec_bias")


def _is_position_table(path: tuple) -> bool:
    return any(tag in key_name(key) for key in path for tag in POSITION_KEYS)


# Scanned layer stacks (`model.scan_layers`) live under this key with a leading layer axis, which does
# not count towards a parameter's dimensions: a stacked bias is still a vector.
STACKED_KEY = "layers"


def _ndim(path: tuple, x) -> int:
    """Dimensions of the parameter at `path` as a Linear would have them (`linear_shape`), without a
    scanned layer axis."""
    return len(linear_shape(path, x.shape)) - (1 if path and key_name(path[0]) == STACKED_KEY else 0)


def _decay_ndim2(params: Any) -> Any:
    # ndim >= 2 is nanoGPT's rule: matmul kernels and the token embedding decay; biases and LayerNorm
    # scales (vectors) do not. Shapes only, so it also works on jax.eval_shape output.
    return jax.tree_util.tree_map_with_path(
        lambda path, x: _ndim(path, x) >= 2 and not _is_position_table(path), params)


MASKS: dict[str, Mask] = registry(DecayMask, {
    "ndim>=2": _decay_ndim2,
    "all": lambda params: jax.tree.map(lambda _: True, params),
    "none": lambda params: jax.tree.map(lambda _: False, params),
})


def _lookup(registry: dict, what: str, name: str) -> Any:
    if name not in registry:
        raise ConfigError(f"unknown {what} {name!r}; known: {', '.join(registry)}")
    return registry[name]


def _warmup(cfg: OptimConfig, t: jax.Array) -> jax.Array:
    # Reaches lr at update `warmup_steps` and never multiplies the first update by zero.
    return jnp.minimum(1.0, t / cfg.warmup_steps) if cfg.warmup_steps > 0 else jnp.ones_like(t)


def _remaining(cfg: OptimConfig, t: jax.Array, total_steps: int) -> jax.Array:
    # Share of the decay still ahead, 1 - p with p = (t - warmup)/(total - warmup), computed from
    # (total - t) so that float32 keeps the last learning rates of a long run exact. A run that ends
    # within its warmup never decays.
    if total_steps <= cfg.warmup_steps:
        return jnp.ones_like(t)
    return jnp.clip((total_steps - t) / (total_steps - cfg.warmup_steps), 0.0, 1.0)


def _constant(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    return lambda count: cfg.lr * _warmup(cfg, count + 1.0)


def _linear(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    def schedule(count):
        t = count + 1.0
        r = cfg.min_lr_ratio
        return cfg.lr * _warmup(cfg, t) * (r + (1.0 - r) * _remaining(cfg, t, total_steps))
    return schedule


def _cosine(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    def schedule(count):
        t = count + 1.0
        r = cfg.min_lr_ratio
        # (1 + cos(π·p))/2 written as sin²(π·(1 - p)/2), exact near the end of the run as well.
        half = jnp.sin(0.5 * jnp.pi * _remaining(cfg, t, total_steps)) ** 2
        return cfg.lr * _warmup(cfg, t) * (r + (1.0 - r) * half)
    return schedule


def _rsqrt(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    # T5's 1/sqrt(max(n, 10^4)) is lr = 0.01, rsqrt_timescale = 10^4, warmup_steps = 0; with
    # warmup_steps = rsqrt_timescale it is the Transformer's lr·min(t/w, sqrt(w/t)).
    tau = float(cfg.rsqrt_timescale)

    def schedule(count):
        t = count + 1.0
        return cfg.lr * _warmup(cfg, t) * jnp.sqrt(tau / jnp.maximum(t, tau))
    return schedule


SCHEDULES: dict[str, Callable[[OptimConfig, int], optax.Schedule]] = registry(ScheduleName, {
    "constant": _constant,
    "linear": _linear,
    "cosine": _cosine,
    "rsqrt": _rsqrt,
})


def float32_hyperparameters(cfg: OptimConfig) -> OptimConfig:
    """`cfg` with every float field rounded to the precision JAX computes in: float32 (as trained), or
    float64 under `jax.enable_x64`, where nothing changes.

    A vmapped group of trials holds the hyperparameters on which its trials differ as float32 arrays
    (gptjax/trials.py); a separate run would otherwise hand optax the Python floats, and Python's
    1 − 0.999 is not float32's (1.3e-5 apart, relative). Rounded here, both runs see the same numbers.
    Traced values (a group's own hyperparameters) and schedules are left as they are."""
    dtype = jax.dtypes.canonicalize_dtype(np.float64)
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{k: float(np.asarray(v, dtype)) for k, v in values.items()
                                       if type(v) is float})


def build_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """The learning rate as a function of optax's update count c (0 for the first update): with t = c + 1,
    a linear ramp min(1, t/warmup_steps) times the schedule's shape (docs/optimizers.md, "Schedules");
    linear and cosine reach `min_lr_ratio·lr` at t = `optim.schedule_steps` (0: total_steps) and stay
    there. Float fields are taken at JAX's float precision (`float32_hyperparameters`)."""
    cfg = float32_hyperparameters(cfg)
    return _lookup(SCHEDULES, "optim.schedule", cfg.schedule)(cfg, cfg.schedule_steps or total_steps)


def _weight_decay(rate: float | optax.Schedule, mask: Mask) -> optax.GradientTransformation:
    # Adds rate·θ to the update on the masked leaves; a literal zero adds nothing to the chain or its
    # state, and an array (a vmapped trial's traced rate) always adds the term, which holds no state either.
    if isinstance(rate, (int, float)) and rate == 0:
        return optax.identity()
    return optax.add_decayed_weights(rate, mask=mask)


@dataclasses.dataclass(frozen=True)
class AdamL2(AdamHyperparameters):
    """Adam (Kingma & Ba 2015) on the L2-regularised gradient, "coupled" decay: g ← g + wd·θ on the masked
    leaves, then m and v are the usual bias-corrected moments of that g and θ ← θ − lr_t·m̂/(√v̂ + ε). The
    decay term passes through the adaptive scaling, so large-v weights are barely decayed."""

    def build(self, lr: optax.Schedule, mask: Mask) -> optax.GradientTransformation:
        return optax.chain(_weight_decay(self.weight_decay, mask),
                           optax.scale_by_adam(self.b1, self.b2, self.eps),
                           optax.scale_by_learning_rate(lr))


@dataclasses.dataclass(frozen=True)
class AdamW(AdamHyperparameters):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019): θ ← θ − lr_t·(m̂/(√v̂ + ε) + wd·θ), the
    decay beside the Adam step and outside its moments. As in optax.adamw and PyTorch, lr_t is the
    scheduled learning rate itself, so the decay per step is lr_t·wd (the paper scales wd by the schedule
    multiplier only)."""

    def build(self, lr: optax.Schedule, mask: Mask) -> optax.GradientTransformation:
        return optax.chain(optax.scale_by_adam(self.b1, self.b2, self.eps),
                           _weight_decay(self.weight_decay, mask),
                           optax.scale_by_learning_rate(lr))


def _bias_corrected_decay(b2: float) -> Callable[[jax.Array, Any], jax.Array]:
    """β̂2(t) = β2·(1 − β2^(t−1)) / (1 − β2^t), the decay under which Adafactor's uncorrected average
    equals Adam's bias-corrected v̂ (Shazeer & Stern 2018, §7); 0 at t = 1."""
    log_b2 = math.log(b2) if b2 > 0 else -math.inf

    def decay_rate(step, _):
        t = step + 1.0  # optax passes its 0-based count
        # expm1 keeps 1 − β2^t accurate in float32 where 1 − 0.999**t would cancel.
        return b2 * jnp.expm1((t - 1.0) * log_b2) / jnp.expm1(t * log_b2) if b2 > 0 else jnp.zeros_like(t)
    return decay_rate


def _power_decay(step, exponent):
    # The paper's β̂2(t) = 1 − t^(−c), with t = step + 1 as in optax's own default.
    return 1.0 - (step + 1.0) ** (-exponent)


@dataclasses.dataclass(frozen=True)
class Adafactor(UpdateRule):
    """Adafactor (Shazeer & Stern 2018, Algorithms 4 and 5): v estimated from row and column averages of
    g² + ε1 for tensors whose two largest dims are ≥ `factor_min_dim` (per element otherwise), update
    U = g/√v̂ clipped to RMS ≤ d, step α_t = ρ_t·max(ε2, RMS(θ)) when `relative_step`, then momentum
    m ← β1·m + (1 − β1)·α_t·Û without bias correction, as in tensor2tensor and Mesh TensorFlow. β2 is
    either constant with Adam's bias correction or the paper's 1 − t^(−c); weight decay, if any, is
    decoupled: θ ← θ − lr_t·wd·θ."""

    # b1, b2 and the decay are read in Python (momentum on or off, log β2, decay on or off): lr alone.
    TRACEABLE: ClassVar[tuple[str, ...]] = ("lr",)

    b1: float
    b2: float
    decay_exponent: float
    eps1: float
    eps2: float
    clip: float
    factor_min_dim: int
    relative_step: bool
    weight_decay: float

    @classmethod
    def from_config(cls, cfg: OptimConfig) -> Adafactor:
        # The table's ε is Adam's, added to √v; Adafactor adds ε1 to g² under the root, so ε1 = ε² puts the
        # floor of the denominator at the same ε (docs/optimizers.md).
        return cls(b1=cfg.b1, b2=cfg.b2, decay_exponent=cfg.adafactor_decay_exponent, eps1=cfg.eps ** 2,
                   eps2=cfg.adafactor_eps_scale, clip=cfg.adafactor_clip,
                   factor_min_dim=cfg.adafactor_factor_min_dim, relative_step=cfg.adafactor_relative_step,
                   weight_decay=cfg.weight_decay)

    def build(self, lr: optax.Schedule, mask: Mask) -> optax.GradientTransformation:
        # optax.adafactor has no hook for the β2 schedule, so the same chain is spelled out here.
        if self.decay_exponent > 0:
            second_moment = optax.scale_by_factored_rms(
                decay_rate=self.decay_exponent, min_dim_size_to_factor=self.factor_min_dim,
                epsilon=self.eps1, decay_rate_fn=_power_decay)
        else:
            second_moment = optax.scale_by_factored_rms(
                decay_rate=self.b2, min_dim_size_to_factor=self.factor_min_dim, epsilon=self.eps1,
                decay_rate_fn=_bias_corrected_decay(self.b2))
        parts = [linear_view(second_moment)]  # factored over a fused kernel's Linear shape
        if self.clip > 0:
            parts.append(optax.clip_by_block_rms(self.clip))
        parts.append(optax.scale_by_learning_rate(lr, flip_sign=False))
        if self.relative_step:
            parts.append(optax.scale_by_param_block_rms(self.eps2))
        if self.b1 > 0:
            parts.append(optax.ema(self.b1, debias=False))
        if self.weight_decay > 0:
            parts.append(_weight_decay(lambda count: self.weight_decay * lr(count), mask))
        parts.append(optax.scale(-1.0))
        return optax.chain(*parts)


RULES: dict[str, type[UpdateRule]] = registry(RuleName, {
    "adam_l2": AdamL2,
    "adamw": AdamW,
    "adafactor": Adafactor,
    **MODERN_RULES,  # gptjax/optimizers_modern.py
})


def build_rule(cfg: OptimConfig) -> UpdateRule:
    """The typed update rule `cfg.rule` with its hyperparameters taken from `cfg`."""
    return _lookup(RULES, "optim.rule", cfg.rule).from_config(cfg)


def build_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """The whole optax chain for `cfg`: clip the gradient's global norm to `grad_clip` (if > 0, before
    anything else, so the L2 term of adam_l2 is not clipped), then the update rule with the learning rate
    of `build_schedule(cfg, total_steps)` and weight decay on the leaves `MASKS[cfg.decay_mask]` marks
    ("ndim>=2" decays tensors of two or more dimensions except position tables; "all"; "none"). Float
    hyperparameters are rounded to float32 first (`float32_hyperparameters`; float64 under x64), as a
    vmapped group holds them, so that a trial computes the same update in a group and alone."""
    cfg = float32_hyperparameters(cfg)
    total_steps = cfg.schedule_steps or total_steps  # the horizon, when it is not the run's length
    schedule = build_schedule(cfg, total_steps)
    mask_fn = _lookup(MASKS, "optim.decay_mask", cfg.decay_mask)
    rule = build_rule(cfg)
    if hasattr(rule, "for_run"):  # numbers that depend on the run's length (AdEMAMix's T_α,β3)
        rule = rule.for_run(total_steps)
    tx = rule.build(schedule, mask_fn)
    if cfg.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
    return tx


def state_bytes(tx: optax.GradientTransformation, params: Any) -> int:
    """Bytes of `tx`'s state for `params` (arrays or jax.ShapeDtypeStruct), without allocating it: about
    8 per float32 parameter for Adam, far fewer for factored Adafactor."""
    return tree_bytes(jax.eval_shape(tx.init, params))
