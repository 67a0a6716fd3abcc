"""Update rules beyond the forum's presets: LAMB, Lion, Sophia, Muon, Schedule-Free AdamW, AdEMAMix, ADOPT,
NAdamW, Prodigy and SOAP, and `UpdateRule`, the base of these and of the forum's rules in
`gptjax/optimizers.py` (where `RULES` registers them all under `MODERN_RULES`' names and the forum's).

A rule is a frozen dataclass of its hyperparameters, read from the `OptimConfig` field of the same name
(or `CONFIG_PREFIX` + name), with `build(lr_schedule, decay_mask)` giving its optax chain. Each declares
`TRACEABLE`, the `OptimConfig` fields that may be arrays (so a vmapped sweep can vary them): `build()`
never branches on them, and a class that omits the declaration or names a field `OptimConfig` lacks is
refused when it is defined. Weight decay is applied as each paper applies it and only on the leaves the
decay mask selects. Two rules need the train loop's help: Sophia's Hessian estimate needs the loss as a
function of the parameters (`NEEDS_LOSS`: the train step passes it to `update` as `obj_fn`), and
Schedule-Free AdamW's parameters for evaluation, sampling and export are `eval_params(opt_state, params)`,
not the parameters it trains (`AVERAGED`). Formulas, preset numbers and sources: docs/optimizers.md,
"Rules beyond the forum".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import contrib

from gptjax.config import OptimConfig
from gptjax.soap import key_name, linear_shape, linear_view, scale_by_soap

Mask = Callable[[Any], Any]
Schedule = Callable[[Any], Any]

# Keys of the transformer's layer stacks (GPT/BERT `blocks`, scanned `layers`, T5 `encoder`/`decoder`):
# Muon orthogonalises the 2-D kernels under them, the "hidden" matrices of Jordan et al.
HIDDEN_STACKS = ("blocks", "layers", "encoder", "decoder")
STACKED_KEY = "layers"  # scanned stacks carry a leading layer axis (gptjax/optimizers.py)


OPTIM_FIELDS = frozenset(f.name for f in dataclasses.fields(OptimConfig))


@dataclasses.dataclass(frozen=True)
class UpdateRule:
    """An update rule: its hyperparameters as fields, each read by `from_config` from the `OptimConfig` field
    `CONFIG_PREFIX` + name if there is one, else of the same name (a field with neither keeps its default);
    `build(lr, mask)` returns the optax chain. Subclasses declare `TRACEABLE` (checked on definition), and
    set `NEEDS_LOSS` when `update` needs `obj_fn` and `AVERAGED` when the parameters to evaluate are not the
    trained ones (`eval_params`)."""

    # The OptimConfig fields that enter the rule only through arithmetic (no Python branch on their value),
    # so a vmapped group of trials may hold them as traced values: one program for every value.
    TRACEABLE: ClassVar[tuple[str, ...]]
    CONFIG_PREFIX: ClassVar[str] = ""
    NEEDS_LOSS: ClassVar[bool] = False
    AVERAGED: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        declarations = ("TRACEABLE", "CONFIG_PREFIX", "NEEDS_LOSS", "AVERAGED")
        misspelt = [name for name in vars(cls) if name.upper() in declarations and name not in declarations]
        if misspelt:
            raise TypeError(f"update rule {cls.__name__} declares {misspelt[0]!r}; the name is "
                            f"{misspelt[0].upper()!r}")
        if not hasattr(cls, "TRACEABLE"):
            raise TypeError(f"update rule {cls.__name__} must declare TRACEABLE (its OptimConfig fields that "
                            f"a vmapped sweep may vary; () for none)")
        unknown = [name for name in cls.TRACEABLE if name not in OPTIM_FIELDS]
        if unknown:
            raise TypeError(f"update rule {cls.__name__}: TRACEABLE names {unknown[0]!r}, not an OptimConfig "
                            f"field")

    @classmethod
    def config_field(cls, name: str) -> str | None:
        """The OptimConfig field that rule field `name` is read from, None if none."""
        for candidate in (cls.CONFIG_PREFIX + name, name):
            if candidate in OPTIM_FIELDS:
                return candidate
        return None

    @classmethod
    def from_config(cls, cfg: OptimConfig):
        values = {f.name: getattr(cfg, cls.config_field(f.name)) for f in dataclasses.fields(cls)
                  if cls.config_field(f.name)}
        return cls(**values)

    def build(self, lr: Schedule, mask: Mask) -> optax.GradientTransformation:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class AdamHyperparameters(UpdateRule):
    """The four numbers most rules share: β1, β2, ε and the weight decay, all traceable with the lr."""

    TRACEABLE: ClassVar[tuple[str, ...]] = ("lr", "b1", "b2", "eps", "weight_decay")
    b1: Any
    b2: Any
    eps: Any
    weight_decay: Any


def _decay(rate: Any, mask: Mask) -> optax.GradientTransformation:
    # A literal zero adds nothing to the chain; an array (a traced sweep value) always adds the term.
    if isinstance(rate, (int, float)) and rate == 0:
        return optax.identity()
    return optax.add_decayed_weights(rate, mask=mask)


def _decay_after_first(rate: Any, mask: Mask) -> optax.GradientTransformation:
    # For rules whose first call only gathers statistics and leaves θ where it is (ADOPT, SOAP). The
    # schedule's step count is kept whatever the rate, so that a separate run's state and a vmapped
    # trial's (rate traced) have the same leaves.
    return optax.add_decayed_weights(lambda count: jnp.where(count > 0, rate, 0.0), mask=mask)


@dataclasses.dataclass(frozen=True)
class Lamb(AdamHyperparameters):
    """LAMB (You et al. 2019, Algorithm 2): Adam's bias-corrected direction r = m̂/(√v̂ + ε), the decay added
    to it, u = r + wd·θ (masked), then a per-tensor trust ratio: θ ← θ − lr_t·(‖θ‖/‖u‖)·u, with ratio 1
    where either norm is 0. The decay sits inside the trust ratio, as in the paper."""

    def build(self, lr: Schedule, mask: Mask) -> optax.GradientTransformation:
        return optax.lamb(lr, b1=self.b1, b2=self.b2, eps=self.eps, weight_decay=self.weight_decay, mask=mask)


@dataclasses.dataclass(frozen=True)
class Lion(UpdateRule):
    """Lion (Chen et al. 2023, Program 1): u = sign(β1·m + (1 − β1)·g), then m ← β2·m + (1 − β2)·g, and
    θ ← θ − lr_t·(u + wd·θ), decoupled decay on the masked leaves. The sign makes every coordinate move by
    lr_t, so the paper advises lr 3–10× smaller and wd 3–10× larger than AdamW's (same lr·wd)."""

    TRACEABLE: ClassVar[tuple[str, ...]] = ("lr", "b1", "b2", "weight_decay")
    b1: Any
    b2: Any
    weight_decay: Any

    def build(self, lr: Schedule, mask: Mask) -> optax.GradientTransformation:
        return optax.lion(lr, b1=self.b1, b2=self.b2, weight_decay=self.weight_decay, mask=mask)


@dataclasses.dataclass(frozen=True)
class NAdamW(AdamHyperparameters):
    """NAdam (Dozat 2016) with decoupled decay: m̂ = β1·m_t/(1 − β1^(t+1)) + (1 − β1)·g_t/(1 − β1^t) (the
    Nesterov look-ahead), θ ← θ − lr_t·(m̂/(√v̂ + ε) + wd·θ); AlgoPerf's NAdamW baseline."""

    def build(self, lr: Schedule, mask: Mask) -> optax.GradientTransformation:
        return optax.nadamw(lr, b1=self.b1, b2=self.b2, eps=self.eps, weight_decay=self.weight_decay,
                            mask=mask)


@dataclasses.dataclass(frozen=True)
class Adopt(AdamHyperparameters):
    """ADOPT (Taniguchi et al. 2024, Algorithm 2 with clipping): the first call only sets v = g²; then
    m ← β1·m + (1 − β1)·clip(g/max(√v, ε), t^¼) with the *previous* v, θ ← θ − lr_t·(m + wd·θ), and only
    then v ← β2·v + (1 − β2)·g². Decay decoupled (the authors' code with decouple=True), from the second
    call on, since the first moves nothing."""

    def build(self, lr: Schedule, mask: Mask) -> optax.GradientTransformation:
        return optax.chain(contrib.scale_by_adopt(self.b1, self.b2, self.eps),
                           _decay_after_first(self.weight_decay, mask), optax.scale_by_learning_rate(lr))


def ademamix_alpha(t, alpha, warmup: int):
    """f_α(t) = min(t·α/T, α) (Pagliardini et al. 2024, Algorithm 1), t counted from 1; α when T = 0."""
    return alpha if warmup == 0 else jnp.minimum(t * alpha / warmup, alpha)


def ademamix_b3(t, b3, b_start, warmup: int):
    """f_β3(t) = min(exp(ln β_start·ln β3 / ((1 − t/T)·ln β3 + (t/T)·ln β_start)), β3): β_start at t = 0,
    β3 from t = T on, the half-life 1/(1 − β) growing about linearly in between; β3 when T = 0."""
    if warmup == 0:
        return b3
    s = jnp.minimum(t / warmup, 1.0)
    log_start, log_b3 = jnp.log(b_start), jnp.log(b3)
    return jnp.minimum(jnp.exp(log_start * log_b3 / ((1.0 - s) * log_b3 + s * log_start)), b3)


@dataclasses.dataclass(frozen=True)
class AdEMAMix(AdamHyperparameters):
    """AdEMAMix (Pagliardini et al. 2024, Algorithm 1): Adam's m̂1, v̂ plus a slow, uncorrected EMA
    m2 ← β3(t)·m2 + (1 − β3(t))·g; θ ← θ − lr_t·((m̂1 + α(t)·m2)/(√v̂ + ε) + wd·θ), decay decoupled. α and β3
    warm up over T_α,β3 = `warmup` updates (the paper sets it to the run's length, β_start = β1)."""

    TRACEABLE: ClassVar[tuple[str, ...]] = (*AdamHyperparameters.TRACEABLE, "ademamix_b3", "ademamix_alpha")
    CONFIG_PREFIX: ClassVar[str] = "ademamix_"
    b3: Any
    alpha: Any
    warmup_steps: int  # T_α,β3; -1 until `for_run` sets the run's length

    def for_run(self, total_steps: int) -> AdEMAMix:
        """The rule for a run of `total_steps` updates: T_α,β3 = -1 becomes the run's length."""
        return dataclasses.replace(self, warmup_steps=total_steps) if self.warmup_steps < 0 else self

    def build(self, lr: Schedule, mask: Mask) -> optax.GradientTransformation:
        if self.warmup_steps < 0:
            raise ValueError("AdEMAMix's T_α,β3 is the run's length: call for_run(total_steps) first")
        # optax passes its 0-based count; the paper's t starts at 1.
        alpha = lambda count: ademamix_alpha(count + 1.0, self.alpha, self.warmup_steps)  # noqa: E731
        b3 = lambda count: ademamix_b3(count + 1.0, self.b3, self.b1, self.warmup_steps)  # noqa: E731
        return optax.chain(contrib.scale_by_ademamix(self.b1, self.b2, b3, alpha, self.eps),
                           _decay(self.weight_decay, mask), optax.scale_by_learning_rate(lr))


class ScaleBySophiaState(NamedTuple):
    count: jax.Array
    mu: Any  # m, the gradient's EMA (no bias correction, as in the paper)
    nu: Any  # h, the EMA of the Hessian diagonal estimates
    estimator: Any  # the estimator's state (Hutchinson: its random key)


def scale_by_sophia(b1, b2, eps, gamma, interval: int, estimator: optax.GradientTransformationExtraArgs
                    ) -> optax.GradientTransformationExtraArgs:
    """Sophia's direction (Liu et al. 2023, Algorithm 3): m ← β1·m + (1 − β1)·g; at updates t ≡ 1 (mod k)
    h ← β2·h + (1 − β2)·ĥ from `estimator` *before* the step, so the first update already uses ĥ_1; the
    direction is clip(m / max(γ·h, ε), 1) per coordinate. `update` needs `obj_fn` (params → loss)."""

    def init(params):
        return ScaleBySophiaState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params),
                                  jax.tree.map(jnp.zeros_like, params), estimator.init(params))

    def update(updates, state, params=None, **extra):
        if "obj_fn" not in extra or params is None:
            raise ValueError("rule sophia needs params and obj_fn (the loss as a function of the parameters) "
                             "in tx.update(grads, state, params, obj_fn=...)")
        mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, updates)

        def refresh(est_state, nu):
            hessian, est_state = estimator.update(updates, est_state, params, obj_fn=extra["obj_fn"])
            return est_state, jax.tree.map(lambda h, e: b2 * h + (1.0 - b2) * e, nu, hessian)

        est_state, nu = jax.lax.cond(state.count % interval == 0, refresh, lambda e, n: (e, n),
                                     state.estimator, state.nu)
        direction = jax.tree.map(lambda m, h: jnp.clip(m / jnp.maximum(gamma * h, eps), -1.0, 1.0), mu, nu)
        return direction, ScaleBySophiaState(optax.safe_int32_increment(state.count), mu, nu, est_state)

    return optax.GradientTransformationExtraArgs(init, update)


@dataclasses.dataclass(frozen=True)
class Sophia(AdamHyperparameters):
    """Sophia-H (Liu et al. 2023): `scale_by_sophia` with Hutchinson's estimator ĥ = u ⊙ (∇²L·u), u with
    random ±1 entries (optax's; the paper draws u from N(0, I), the same expectation), refreshed every k =
    `interval` updates; θ ← θ − lr_t·(clip(m/max(γ·h, ε), 1) + wd·θ), decay decoupled (Algorithm 3, line
    "θ ← θ − η_t·λ·θ"). The train step passes `obj_fn` to `tx.update` (`NEEDS_LOSS`)."""

    TRACEABLE: ClassVar[tuple[str, ...]] = (*AdamHyperparameters.TRACEABLE, "sophia_gamma")
    CONFIG_PREFIX: ClassVar[str] = "sophia_"
    NEEDS_LOSS: ClassVar[bool] = True
    gamma: Any
    interval: int
    seed: int = 0  # of Hutchinson's random signs

    def build(self, lr: Schedule, mask: Mask) -> optax.GradientTransformationExtraArgs:
        estimator = contrib.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(self.seed))
        return optax.chain(scale_by_sophia(self.b1, self.b2, self.eps, self.gamma, self.interval, estimator),
                           _decay(self.weight_decay, mask), optax.scale_by_learning_rate(lr))


def is_hidden_matrix(path: tuple, x) -> bool:
    """A 2-D kernel inside the layer stack (a leading layer axis aside, a fused kernel taken as its Linear
    shape): what Muon orthogonalises. Embeddings, position tables, the output head, classifier and pooler
    heads, norms and biases are not."""
    names = [key_name(k) for k in path]
    ndim = len(linear_shape(path, x.shape)) - (1 if names and names[0] == STACKED_KEY else 0)
    return bool(names) and names[0] in HIDDEN_STACKS and names[-1] == "kernel" and ndim == 2


def muon_labels(params: Any) -> Any:
    """"muon" for the hidden matrices, "adamw" for every other leaf."""
    return jax.tree_util.tree_map_with_path(lambda p, x: "muon" if is_hidden_matrix(p, x) else "adamw",
                                            params)


# Jordan's quintic Newton–Schulz coefficients (a, b, c), chosen to maximise the slope at zero.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalise(x: jax.Array, steps: int, eps: float = 1e-7) -> jax.Array:
    """Approximately U·Vᵀ of x = U·S·Vᵀ by `steps` quintic Newton–Schulz iterations X ← aX + (bA + cA²)X,
    A = XXᵀ, after scaling x to Frobenius norm ≤ 1; on the short side, as in Jordan et al. 2024."""
    a, b, c = NEWTON_SCHULZ
    tall = x.shape[0] > x.shape[1]
    y = x.T if tall else x
    y = y / (jnp.linalg.norm(y) + eps)
    for _ in range(steps):
        gram = y @ y.T
        y = a * y + (b * gram + c * gram @ gram) @ y
    return y.T if tall else y


class MuonState(NamedTuple):
    mu: Any  # momentum of the hidden matrices


def scale_by_muon(momentum, ns_steps: int, rms_scale: float) -> optax.GradientTransformation:
    """Muon's direction for the leaves it is given (Jordan et al. 2024): m ← β·m + (1 − β)·g, Nesterov
    look-ahead u = β·m + (1 − β)·g, O = orthogonalise(u), then O·√max(1, fan_out/fan_in) (Jordan) or, with
    `rms_scale` c > 0, O·c·√max(fan_in, fan_out) (Liu et al. 2025: update RMS c, AdamW's typical 0.2).
    A kernel is (fan_in, fan_out), a fused one ([D, n, F]) orthogonalised as its Linear [D, n·F] while
    its momentum keeps the parameter's layout; a leading layer axis is orthogonalised layer by layer."""

    def direction(path, u):
        def one(u):
            fan_in, fan_out = u.shape
            scale = rms_scale * math.sqrt(max(fan_in, fan_out)) if rms_scale > 0 else \
                math.sqrt(max(1.0, fan_out / fan_in))
            return scale * orthogonalise(u, ns_steps)
        linear = u.reshape(linear_shape(path, u.shape))
        return (jax.vmap(one)(linear) if linear.ndim == 3 else one(linear)).reshape(u.shape)

    def init(params):
        return MuonState(jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: momentum * m + (1.0 - momentum) * g, state.mu, updates)
        look_ahead = jax.tree.map(lambda m, g: momentum * m + (1.0 - momentum) * g, mu, updates)
        return jax.tree_util.tree_map_with_path(direction, look_ahead), MuonState(mu)

    return optax.GradientTransformation(init, update)


@dataclasses.dataclass(frozen=True)
class Muon(AdamHyperparameters):
    """Muon with its partition (Jordan et al. 2024; Liu et al. 2025): the hidden matrices (`is_hidden_matrix`)
    take θ ← θ − lr_t·(scale·orthogonalise(Nesterov momentum) + wd·θ); every other leaf (embeddings, head,
    norms, biases) takes AdamW with β1, β2, ε and the learning rate `adam_lr_ratio`·lr_t. Decay decoupled
    in both parts, on the masked leaves."""

    TRACEABLE: ClassVar[tuple[str, ...]] = (*AdamHyperparameters.TRACEABLE, "muon_momentum",
                                            "muon_adam_lr_ratio")
    CONFIG_PREFIX: ClassVar[str] = "muon_"
    momentum: Any
    ns_steps: int
    rms_scale: float
    adam_lr_ratio: Any

    def build(self, lr: Schedule, mask: Mask) -> optax.GradientTransformation:
        adam_lr = lambda count: self.adam_lr_ratio * lr(count)  # noqa: E731
        return optax.partition(
            {"muon": optax.chain(scale_by_muon(self.momentum, self.ns_steps, self.rms_scale),
                                 _decay(self.weight_decay, mask), optax.scale_by_learning_rate(lr)),
             "adamw": optax.chain(optax.scale_by_adam(self.b1, self.b2, self.eps),
                                  _decay(self.weight_decay, mask), optax.scale_by_learning_rate(adam_lr))},
            muon_labels)


@dataclasses.dataclass(frozen=True)
class ScheduleFreeAdamW(AdamHyperparameters):
    """Schedule-Free AdamW (Defazio et al. 2024, Algorithm 1). The model is trained at y, the gradient's
    point; z is the base sequence and x the weighted average that is evaluated:
    y_t = (1 − β1)·z_t + β1·x_t;  v ← β2·v + (1 − β2)·g²;  γ_t = lr_t·√(1 − β2^t);
    z ← z − γ_t·(g/(√v + ε) + wd·y_t);  c = γ_t²/Σγ_i² (with γ_i the running maximum, as optax and the
    authors' code);  x ← (1 − c)·x + c·z. lr_t should be a warmup then constant (no decay: the averaging
    replaces it). `eval_params` maps the trained y and the state to x (`AVERAGED`)."""

    AVERAGED: ClassVar[bool] = True

    def build(self, lr: Schedule, mask: Mask) -> optax.GradientTransformationExtraArgs:
        # γ_t with the paper's √(1 − β2^t): t = count + 1 for the base chain's 0-based count, while the
        # wrapper evaluates its schedule at its own step count, which starts at 1.
        gamma = lambda count: lr(count) * jnp.sqrt(1.0 - self.b2 ** (count + 1.0))  # noqa: E731
        base = optax.chain(optax.scale_by_rms(decay=self.b2, eps=self.eps, eps_in_sqrt=False),
                           _decay(self.weight_decay, mask), optax.scale_by_learning_rate(gamma))
        return contrib.schedule_free(base, learning_rate=lambda step: gamma(step - 1), b1=self.b1,
                                     weight_lr_power=2.0)


def eval_params(opt_state: Any, params: Any) -> Any:
    """The parameters to evaluate, sample from and export: for Schedule-Free the average
    x = (y − (1 − β1)·z)/β1 recovered from the trained y and the state's z; for every other rule `params`
    unchanged. Works on any state that holds one schedule-free state (under clipping, inject_hyperparams)."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, contrib.ScheduleFreeState))
             if isinstance(s, contrib.ScheduleFreeState)]
    if not found:
        return params
    return contrib.schedule_free_eval_params(found[0], params)


def _prodigy_masked(lr: Schedule, b1, b2, eps, d0, weight_decay, mask: Mask) -> optax.GradientTransformation:
    # optax's prodigy decays every leaf; its decay is turned off and added here on the masked leaves with
    # the same step size, dlr = d·lr_t·√(1 − β2^t)/(1 − β1^t) from the state before the update.
    inner = contrib.prodigy(lr, betas=(b1, b2), eps=eps, estim_lr0=d0, weight_decay=0.0)

    def update(updates, state, params=None, **extra):
        t = state.count + 1.0
        dlr = state.estim_lr * lr(state.count) * jnp.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
        step, new_state = inner.update(updates, state, params)
        on = mask(params)
        step = jax.tree.map(lambda s, p, m: s - weight_decay * dlr * p if m else s, step, params, on)
        return step, new_state

    return optax.GradientTransformationExtraArgs(inner.init, update)


@dataclasses.dataclass(frozen=True)
class Prodigy(AdamHyperparameters):
    """Prodigy (Mishchenko & Defazio 2023, Algorithm 4, Adam version): Adam on d·g with lr_t a schedule
    multiplier around 1, the distance estimate d growing as max(d, Σ-weighted ⟨g, θ0 − θ⟩ / ‖s‖₁) with
    β3 = √β2; decay decoupled at the same step, θ ← θ − wd·d·lr_t·(bias corrections)·θ, on masked leaves."""

    CONFIG_PREFIX: ClassVar[str] = "prodigy_"
    d0: Any

    def build(self, lr: Schedule, mask: Mask) -> optax.GradientTransformation:
        return _prodigy_masked(lr, self.b1, self.b2, self.eps, self.d0, self.weight_decay, mask)


@dataclasses.dataclass(frozen=True)
class Soap(AdamHyperparameters):
    """SOAP (Vyas et al. 2024): `gptjax.soap.scale_by_soap` (Adam in Shampoo's eigenbasis for matrices,
    Adam for vectors), then decoupled decay θ ← θ − lr_t·wd·θ on the masked leaves from the second call on
    (the first only gathers the preconditioner), then the learning rate."""

    CONFIG_PREFIX: ClassVar[str] = "soap_"
    precondition_frequency: int
    max_precond_dim: int

    def build(self, lr: Schedule, mask: Mask) -> optax.GradientTransformation:
        # A fused kernel is preconditioned as its Linear [D, n·F] (state in that shape), not as a 3-D tensor.
        return optax.chain(linear_view(scale_by_soap(self.b1, self.b2, self.eps,
                                                     precondition_frequency=self.precondition_frequency,
                                                     max_precond_dim=self.max_precond_dim)),
                           _decay_after_first(self.weight_decay, mask), optax.scale_by_learning_rate(lr))


MODERN_RULES: dict[str, type[UpdateRule]] = {
    "lamb": Lamb,
    "lion": Lion,
    "sophia": Sophia,
    "muon": Muon,
    "schedule_free_adamw": ScheduleFreeAdamW,
    "ademamix": AdEMAMix,
    "adopt": Adopt,
    "nadamw": NAdamW,
    "prodigy": Prodigy,
    "soap": Soap,
}
