"""Optimizers against NumPy written from the papers: Adam with coupled L2 and AdamW (Kingma & Ba 2015;
Loshchilov & Hutter 2019), Adafactor (Shazeer & Stern 2018), the schedules, the weight-decay mask, and
every preset's numbers as the forum's table says. Comparisons run in float64 (`jax.enable_x64`) so that a
mismatch of any one hyperparameter shows far above rounding."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gptjax import optimizers as opt
from gptjax.config import PRESETS, ConfigError, Experiment, OptimConfig, apply_overrides, validate

# The forum's table, typed again, not read from PRESETS: rule, lr, β1, β2, ε, weight decay, then what the
# forum leaves out (schedule, warmup, min_lr_ratio, grad_clip, rsqrt τ) and Adafactor's own settings.
FORUM = dict(schedule="constant", warmup=0, min_lr_ratio=0.0, clip=0.0, tau=10_000)
ADAFACTOR = dict(exponent=0.0, eps2=1e-3, d=1.0, factor_min_dim=128, relative=True)
EXPECTED = {
    "bert_adam": dict(rule="adam_l2", lr=2e-5, b1=0.9, b2=0.999, eps=1e-6, wd=0.01, **FORUM),
    "roberta_adam": dict(rule="adam_l2", lr=1e-4, b1=0.9, b2=0.98, eps=1e-6, wd=0.01, **FORUM),
    "t5_adafactor": dict(rule="adafactor", lr=1e-3, b1=0.9, b2=0.999, eps=1e-6, wd=0.0, **FORUM,
                         **ADAFACTOR),
    "gpt2_adam": dict(rule="adam_l2", lr=2.5e-4, b1=0.9, b2=0.999, eps=1e-8, wd=0.01, **FORUM),
    "gpt3_adamw": dict(rule="adamw", lr=2.5e-4, b1=0.9, b2=0.95, eps=1e-8, wd=0.01, **FORUM),
    "bert_adam_paper": dict(rule="adamw", lr=1e-4, b1=0.9, b2=0.999, eps=1e-6, wd=0.01, schedule="linear",
                            warmup=10_000, min_lr_ratio=0.0, clip=1.0, tau=10_000),
    "roberta_adam_paper": dict(rule="adamw", lr=6e-4, b1=0.9, b2=0.98, eps=1e-6, wd=0.01, schedule="linear",
                               warmup=24_000, min_lr_ratio=0.0, clip=0.0, tau=10_000),
    "t5_adafactor_paper": dict(rule="adafactor", lr=1e-2, b1=0.0, b2=0.999, eps=1e-15, wd=0.0,
                               schedule="rsqrt", warmup=0, min_lr_ratio=0.0, clip=0.0, tau=10_000,
                               **{**ADAFACTOR, "exponent": 0.8}),
    "t5_adafactor_finetune_paper": dict(rule="adafactor", lr=1e-3, b1=0.0, b2=0.999, eps=1e-15, wd=0.0,
                                        **FORUM, **{**ADAFACTOR, "exponent": 0.8}),
    "gpt2_adam_paper": dict(rule="adamw", lr=2.5e-4, b1=0.9, b2=0.999, eps=1e-8, wd=0.01, schedule="cosine",
                            warmup=2000, min_lr_ratio=0.0, clip=0.0, tau=10_000),
    "gpt3_adamw_paper": dict(rule="adamw", lr=6e-4, b1=0.9, b2=0.95, eps=1e-8, wd=0.1, schedule="cosine",
                             warmup=750, min_lr_ratio=0.1, clip=1.0, tau=10_000),
}
FIELDS = dict(lr="lr", b1="b1", b2="b2", eps="eps", wd="weight_decay", schedule="schedule",
              warmup="warmup_steps", min_lr_ratio="min_lr_ratio", clip="grad_clip", tau="rsqrt_timescale",
              exponent="adafactor_decay_exponent", eps2="adafactor_eps_scale", d="adafactor_clip",
              factor_min_dim="adafactor_factor_min_dim", relative="adafactor_relative_step")



def ref_lr(h: dict, t: int, total: int) -> float:
    """Learning rate of the t-th update (t from 1)."""
    ramp = min(1.0, t / h["warmup"]) if h["warmup"] else 1.0
    # Decay runs from t = warmup to t = total; a run that ends inside its warmup has none.
    p = min(max((t - h["warmup"]) / (total - h["warmup"]), 0.0), 1.0) if total > h["warmup"] else 0.0
    r = h["min_lr_ratio"]
    shape = {"constant": 1.0, "linear": 1.0 - (1.0 - r) * p,
             "cosine": r + (1.0 - r) * (1.0 + math.cos(math.pi * p)) / 2,
             "rsqrt": math.sqrt(h["tau"] / max(t, h["tau"]))}[h["schedule"]]
    return h["lr"] * ramp * shape


def ref_decayed(name: str, x: np.ndarray) -> bool:
    return x.ndim >= 2 and "wpe" not in name


def ref_clip(grads: dict, c: float) -> dict:
    norm = math.sqrt(sum(float(np.sum(g ** 2)) for g in grads.values()))
    return {k: g * min(1.0, c / norm) for k, g in grads.items()} if c > 0 else grads


def ref_adam(h: dict, params: dict, grad_steps: list, total: int, decayed=ref_decayed) -> dict:
    """Kingma & Ba 2015, Algorithm 1; coupled: g ← g + wd·θ first, decoupled: θ ← θ − lr_t·wd·θ beside."""
    x = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v = {k: np.zeros_like(v) for k, v in x.items()}
    for t, grads in enumerate(grad_steps, start=1):
        lr = ref_lr(h, t, total)
        grads = ref_clip(grads, h["clip"])
        for k in x:
            wd = h["wd"] if decayed(k, x[k]) else 0.0
            g = grads[k] + wd * x[k] if h["rule"] == "adam_l2" else grads[k]
            m[k] = h["b1"] * m[k] + (1 - h["b1"]) * g
            v[k] = h["b2"] * v[k] + (1 - h["b2"]) * g * g
            m_hat, v_hat = m[k] / (1 - h["b1"] ** t), v[k] / (1 - h["b2"] ** t)
            step = m_hat / (np.sqrt(v_hat) + h["eps"])
            if h["rule"] == "adamw":
                step = step + wd * x[k]
            x[k] = x[k] - lr * step
    return x


def rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(a * a)))


def ref_adafactor(h: dict, params: dict, grad_steps: list, total: int) -> dict:
    """Shazeer & Stern 2018, Algorithms 4 (matrix) and 5 (vector) with ρ_t from the schedule, ε1 = ε²,
    α_t = ρ_t·max(ε2, RMS(X_{t−1})), update clipping at d, then momentum m ← β1·m + (1 − β1)·α_t·Û
    (tensor2tensor's order, no bias correction). A constant β2 is kept as Adam keeps it, raw averages
    divided by 1 − β2^t (§7); the exponent form uses β̂2t = 1 − t^(−c) on the raw averages."""
    eps1 = h["eps"] ** 2
    x = {k: v.copy() for k, v in params.items()}
    row, col, full, mom = {}, {}, {}, {k: np.zeros_like(v) for k, v in x.items()}
    for k, p in x.items():
        row[k], col[k], full[k] = np.zeros(p.shape[0]), np.zeros(p.shape[-1]), np.zeros_like(p)
    for t, grads in enumerate(grad_steps, start=1):
        rho = ref_lr(h, t, total)
        grads = ref_clip(grads, h["clip"])
        if h["exponent"]:
            beta, debias = 1.0 - t ** (-h["exponent"]), 1.0
        else:
            beta, debias = h["b2"], 1.0 - h["b2"] ** t
        for k in x:
            g = grads[k]
            g2 = g * g + eps1
            if g.ndim == 2 and min(g.shape) >= h["factor_min_dim"]:
                row[k] = beta * row[k] + (1 - beta) * g2.sum(axis=1)  # R_t, sums over columns
                col[k] = beta * col[k] + (1 - beta) * g2.sum(axis=0)  # C_t, sums over rows
                r_hat, c_hat = row[k] / debias, col[k] / debias
                v_hat = np.outer(r_hat, c_hat) / r_hat.sum()
            else:
                full[k] = beta * full[k] + (1 - beta) * g2
                v_hat = full[k] / debias
            u = g / np.sqrt(v_hat)
            if h["d"]:
                u = u / max(1.0, rms(u) / h["d"])
            alpha = rho * max(h["eps2"], rms(x[k])) if h["relative"] else rho
            step = alpha * u
            if h["b1"]:
                mom[k] = h["b1"] * mom[k] + (1 - h["b1"]) * step
                step = mom[k]
            if h["wd"] and ref_decayed(k, x[k]):
                step = step + rho * h["wd"] * x[k]
            x[k] = x[k] - step
    return x


def reference(h: dict, params: dict, grad_steps: list, total: int) -> dict:
    return (ref_adafactor if h["rule"] == "adafactor" else ref_adam)(h, params, grad_steps, total)



def problem(steps: int = 3, seed: int = 0):
    """Flat params with every kind of leaf: a matrix Adafactor factors, a bias starting at zero (RMS below
    ε2), a LayerNorm scale whose gradients are near Adam's ε, a small matrix with gradients near the T5
    paper's ε (1e-15), and a position table. Gradient scales differ per leaf and per step."""
    rng = np.random.default_rng(seed)
    params = {"kernel": rng.normal(size=(128, 160)), "bias": np.zeros(160), "scale": 1 + rng.normal(size=8),
              "small": rng.normal(size=(4, 3)), "wpe": rng.normal(size=(16, 8))}
    scales = {"kernel": 1.0, "bias": 1e-3, "scale": 1e-7, "small": 1e-15, "wpe": 0.5}
    grad_steps = [{k: scales[k] * (1 + t) * rng.normal(size=p.shape) for k, p in params.items()}
                  for t in range(steps)]
    return params, grad_steps


def run(cfg: OptimConfig, params: dict, grad_steps: list, total: int, x64: bool = True) -> dict:
    """The train step's use of the optimizer: jitted update then apply_updates, in float64 by default."""
    with jax.enable_x64(x64):
        tx = opt.build_optimizer(cfg, total)
        p = {k: jnp.asarray(v, jnp.float64 if x64 else jnp.float32) for k, v in params.items()}
        state = tx.init(p)

        @jax.jit
        def step(p, state, g):
            updates, state = tx.update(g, state, p)
            return optax.apply_updates(p, updates), state

        for grads in grad_steps:
            p, state = step(p, state, {k: jnp.asarray(v, p[k].dtype) for k, v in grads.items()})
        return {k: np.asarray(v, np.float64) for k, v in p.items()}


def assert_same_moves(got: dict, want: dict, start: dict, rtol: float = 1e-7, ulps: float = 0.0) -> None:
    # Compare the displacement θ_T − θ_0, not θ_T, so a wrong hyperparameter cannot hide under θ_0;
    # `ulps` > 0 (float32 runs) also allows that many roundings of θ and of the leaf's largest move.
    for k in start:
        scale = float(np.max(np.abs(start[k]))) + float(np.max(np.abs(want[k] - start[k])))
        atol = max(1e-300, ulps * float(np.finfo(np.float32).eps) * scale)
        np.testing.assert_allclose(got[k] - start[k], want[k] - start[k], rtol=rtol, atol=atol, err_msg=k)


def moves_match(got: dict, want: dict, start: dict, rtol: float = 1e-7) -> bool:
    return all(np.allclose(got[k] - start[k], want[k] - start[k], rtol=rtol, atol=1e-300) for k in start)


def config_for(h: dict, **extra) -> OptimConfig:
    kwargs = {FIELDS[k]: v for k, v in h.items() if k in FIELDS}
    return OptimConfig(preset="gpt3_adamw", rule=h["rule"], **{**kwargs, **extra})



def test_presets_carry_the_numbers_of_spec_section_2():
    assert list(PRESETS)[:5] == ["bert_adam", "roberta_adam", "t5_adafactor", "gpt2_adam", "gpt3_adamw"]
    # The rules beyond the forum have their own table in tests/test_optimizers_modern.py.
    assert {n for n, c in PRESETS.items() if c.rule in ("adam_l2", "adamw", "adafactor")} == set(EXPECTED)
    for name, h in EXPECTED.items():
        cfg = PRESETS[name]
        assert cfg.preset == name and cfg.rule == h["rule"]
        got = {key: getattr(cfg, field) for key, field in FIELDS.items() if key in h}
        assert got == {key: h[key] for key in got}, name
        assert cfg.decay_mask == "ndim>=2"
        validate(dataclasses.replace(Experiment(), optim=cfg))
    assert OptimConfig() == PRESETS["gpt3_adamw"]  # the defaults are the default preset, nothing hidden


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_preset_equals_numpy_of_its_paper_for_several_steps(name):
    h = EXPECTED[name]
    params, grad_steps = problem(steps=4)
    total = 40
    got = run(PRESETS[name], params, grad_steps, total)
    assert_same_moves(got, reference(h, params, grad_steps, total), params)
    # The comparison sees every number: the reference with any one of them 10% off no longer matches.
    perturbed = {"lr": h["lr"] * 1.1, "b1": 0.5 if h["b1"] == 0 else 1 - (1 - h["b1"]) * 1.1,
                 "eps": h["eps"] * 1.1, "wd": h["wd"] * 1.1, "clip": h["clip"] * 1.1,
                 "warmup": h["warmup"] * 1.1}
    if h["rule"] != "adafactor" or not h["exponent"]:
        perturbed["b2"] = 1 - (1 - h["b2"]) * 1.1
    if h["rule"] == "adafactor":
        perturbed.update(eps2=h["eps2"] * 1.1, d=h["d"] * 1.1)
        if h["exponent"]:
            perturbed["exponent"] = h["exponent"] * 1.1
    for key, value in perturbed.items():
        if value != h[key]:
            wrong = reference({**h, key: value}, params, grad_steps, total)
            assert not moves_match(got, wrong, params), f"{name}: {key} does not reach the optimizer"


@pytest.mark.parametrize("name", ["gpt2_adam", "gpt3_adamw_paper", "t5_adafactor", "t5_adafactor_paper"])
def test_presets_in_float32_as_trained(name):
    # The train step runs float32: the same references hold to float32 rounding of the moves.
    params, grad_steps = problem(steps=4)
    params32 = {k: v.astype(np.float32).astype(np.float64) for k, v in params.items()}
    got = run(PRESETS[name], params32, grad_steps, 40, x64=False)
    assert_same_moves(got, reference(EXPECTED[name], params32, grad_steps, 40), params32, rtol=1e-4, ulps=8)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_preset_schedule_over_a_whole_run(name):
    h = EXPECTED[name]
    for total in (100_000, 150):  # a long run, and one that ends inside most warmups (no decay then)
        schedule = opt.build_schedule(PRESETS[name], total)
        for count in (0, 1, 99, 148, 149, 749, 1999, 9_999, 23_999, 40_000, 99_998, 99_999, 150_000):
            want = ref_lr(h, count + 1, total)
            assert float(schedule(count)) == pytest.approx(want, rel=1e-6), (total, count)


def test_preset_swapped_by_override_then_refined_reaches_the_optimizer():
    cfg = validate(apply_overrides(Experiment(), ["optim.b2=0.99", "optim.preset=roberta_adam",
                                                  "optim.weight_decay=0.05"])).optim
    assert (cfg.preset, cfg.rule, cfg.lr, cfg.b2, cfg.weight_decay) == ("roberta_adam", "adam_l2", 1e-4, 0.99,
                                                                        0.05)
    params, grad_steps = problem()
    h = {**EXPECTED["roberta_adam"], "b2": 0.99, "wd": 0.05}
    assert_same_moves(run(cfg, params, grad_steps, 10), ref_adam(h, params, grad_steps, 10), params)


def test_unknown_names_fail_with_the_known_ones():
    with pytest.raises(ConfigError, match="unknown optimizer preset 'adam9'; known: bert_adam, roberta_adam"):
        apply_overrides(Experiment(), ["optim.preset=adam9"])
    with pytest.raises(ConfigError, match="unknown optim.preset 'mine'; known: bert_adam"):
        validate(dataclasses.replace(Experiment(), optim=OptimConfig(preset="mine")))
    with pytest.raises(ConfigError, match="unknown optim.rule 'sgd'; known: adam_l2, adamw, adafactor"):
        validate(dataclasses.replace(Experiment(), optim=OptimConfig(rule="sgd")))
    with pytest.raises(ConfigError, match="unknown optim.rule 'sgd'; known: adam_l2, adamw, adafactor"):
        opt.build_optimizer(OptimConfig(rule="sgd"), 10)
    with pytest.raises(ConfigError, match="unknown optim.schedule 'step'; known: constant, linear, cosine"):
        opt.build_schedule(OptimConfig(schedule="step"), 10)
    with pytest.raises(ConfigError, match="unknown optim.decay_mask 'bias'; known: ndim>=2, all, none"):
        opt.build_optimizer(OptimConfig(decay_mask="bias"), 10)


@pytest.mark.parametrize("override, message", [
    ("optim.adafactor_decay_exponent=1.5", "optim.adafactor_decay_exponent must be in [0, 1]"),
    ("optim.adafactor_clip=-1", "optim.adafactor_clip must be >= 0"),
    ("optim.rsqrt_timescale=0", "optim.rsqrt_timescale must be positive"),
    ("optim.adafactor_factor_min_dim=0", "optim.adafactor_factor_min_dim must be positive"),
    ("optim.eps=1e-20", "optim.eps must be >= 1e-18 for adafactor"),
])
def test_adafactor_and_schedule_fields_are_range_checked(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(apply_overrides(Experiment(), ["optim.preset=t5_adafactor", override]))



@pytest.mark.parametrize("clip", [0.0, 5.0])
def test_adam_l2_and_adamw_differ_on_the_same_gradients_and_each_equals_its_formula(clip):
    params, grad_steps = problem(steps=5, seed=1)
    h = dict(lr=1e-2, b1=0.9, b2=0.99, eps=1e-8, wd=0.1, schedule="cosine", warmup=2, min_lr_ratio=0.1,
             clip=clip, tau=10_000)
    results = {}
    for rule in ("adam_l2", "adamw"):
        hr = {**h, "rule": rule}
        results[rule] = run(config_for(hr), params, grad_steps, total=6)
        assert_same_moves(results[rule], ref_adam(hr, params, grad_steps, 6), params)
    for k in ("kernel", "small"):  # decayed leaves move differently
        assert np.max(np.abs(results["adam_l2"][k] - results["adamw"][k])) > 1e-4, k
    for k in ("bias", "scale", "wpe"):  # undecayed leaves: the two rules are the same Adam
        np.testing.assert_allclose(results["adam_l2"][k], results["adamw"][k], rtol=1e-12, atol=0)


def test_with_zero_gradients_adamw_shrinks_by_lr_wd_and_adam_l2_steps_by_about_lr():
    # Decoupled decay ignores the moments: θ·(1 − lr·wd) exactly. Coupled decay is a gradient wd·θ, so
    # Adam normalises it: the first step is lr·sign(θ) whatever wd is.
    x = {"w": np.array([[2.0, -0.5], [0.25, 4.0]])}
    zero = [{"w": np.zeros((2, 2))}]
    h = dict(lr=1e-2, b1=0.9, b2=0.999, eps=1e-12, wd=0.1, schedule="constant", warmup=0, min_lr_ratio=0.0,
             clip=0.0, tau=10_000)
    np.testing.assert_allclose(run(config_for({**h, "rule": "adamw"}), x, zero, 10)["w"],
                               x["w"] * (1 - 1e-2 * 0.1), rtol=1e-14)
    np.testing.assert_allclose(run(config_for({**h, "rule": "adam_l2"}), x, zero, 10)["w"],
                               x["w"] - 1e-2 * np.sign(x["w"]), rtol=1e-9)



def test_adafactor_one_update_of_a_matrix_and_a_vector_matches_shazeer_and_stern():
    rng = np.random.default_rng(2)
    params = {"matrix": rng.normal(size=(128, 192)) * 0.02, "vector": 1.0 + 0.1 * rng.normal(size=192)}
    grads = {"matrix": rng.normal(size=(128, 192)), "vector": 1e-3 * rng.normal(size=192)}
    cfg = PRESETS["t5_adafactor"]
    got = run(cfg, params, [grads], total=100)
    # By hand, t = 1: β̂2 = 0 so v̂ is this step's g² + ε1 (factored for the matrix), ρ = 1e-3,
    # α = ρ·max(1e-3, RMS(θ)), Û = U / max(1, RMS(U)), and momentum keeps (1 − β1)·α·Û = 0.1·α·Û.
    eps1 = 1e-6 ** 2
    g2 = grads["matrix"] ** 2 + eps1
    r, c = g2.sum(axis=1), g2.sum(axis=0)
    u = grads["matrix"] / np.sqrt(np.outer(r, c) / r.sum())
    u /= max(1.0, rms(u))
    want_matrix = params["matrix"] - 0.1 * 1e-3 * max(1e-3, rms(params["matrix"])) * u
    u = grads["vector"] / np.sqrt(grads["vector"] ** 2 + eps1)
    u /= max(1.0, rms(u))
    want_vector = params["vector"] - 0.1 * 1e-3 * max(1e-3, rms(params["vector"])) * u
    assert_same_moves(got, {"matrix": want_matrix, "vector": want_vector}, params, rtol=1e-9)
    # The matrix's second moment is really factored: a row and a column vector, no (128, 192) array.
    with jax.enable_x64(True):
        state = opt.build_optimizer(cfg, 100).init({k: jnp.asarray(v) for k, v in params.items()})
    factored = next(s for s in state if isinstance(s, optax.FactoredState))
    assert factored.v_row["matrix"].shape == (128,) and factored.v_col["matrix"].shape == (192,)
    assert factored.v["vector"].shape == (192,)


def test_adafactor_maps_beta2_and_epsilon_onto_optax():
    rule = opt.build_rule(PRESETS["t5_adafactor"])
    assert (rule.eps1, rule.eps2, rule.clip, rule.b1, rule.relative_step) == (pytest.approx(1e-12), 1e-3, 1.0,
                                                                              0.9, True)
    # optax calls decay_rate_fn with its 0-based count; β̂2(t) = β2(1 − β2^(t−1))/(1 − β2^t).
    decay = opt._bias_corrected_decay(0.999)
    b2 = 0.999
    for t in (1, 2, 3, 1000):
        assert float(decay(t - 1, None)) == pytest.approx(b2 * (1 - b2 ** (t - 1)) / (1 - b2 ** t), rel=1e-6)
    # Under that β̂2 the uncorrected average of g² is Adam's bias-corrected v̂, at every step.
    rng = np.random.default_rng(3)
    g2 = rng.uniform(size=50)
    avg, v = 0.0, 0.0
    for t in range(1, 51):
        beta = float(decay(t - 1, None))
        avg = beta * avg + (1 - beta) * g2[t - 1]
        v = b2 * v + (1 - b2) * g2[t - 1]
        assert avg == pytest.approx(v / (1 - b2 ** t), rel=1e-5)
    # The paper's schedule instead: β̂2(t) = 1 − t^(−0.8), 0 at t = 1.
    for t in (1, 2, 10_000):
        assert float(opt._power_decay(t - 1, 0.8)) == pytest.approx(1 - t ** -0.8, abs=1e-7)
    assert opt.build_rule(PRESETS["t5_adafactor_paper"]).eps1 == pytest.approx(1e-30)


def test_adafactor_other_branches_absolute_step_no_clipping_and_decoupled_decay():
    params, grad_steps = problem(steps=3, seed=5)
    h = {**EXPECTED["t5_adafactor"], "lr": 1e-2, "b1": 0.5, "wd": 0.1, "relative": False, "d": 0.0,
         "schedule": "cosine", "warmup": 2, "min_lr_ratio": 0.1}
    got = run(config_for(h), params, grad_steps, total=5)
    assert_same_moves(got, ref_adafactor(h, params, grad_steps, 5), params)


def test_adafactor_state_is_far_smaller_than_adams():
    shapes = {"kernel": jax.ShapeDtypeStruct((512, 2048), jnp.float32),
              "bias": jax.ShapeDtypeStruct((2048,), jnp.float32)}
    n = 512 * 2048 + 2048
    adam = opt.state_bytes(opt.build_optimizer(PRESETS["gpt3_adamw"], 10), shapes)
    assert adam == 8 * n + 8  # m and v in float32, plus two int32 step counts (Adam's, the schedule's)
    t5 = opt.state_bytes(opt.build_optimizer(PRESETS["t5_adafactor_paper"], 10), shapes) / n
    assert t5 < 0.1  # rows + columns only
    t5_momentum = opt.state_bytes(opt.build_optimizer(PRESETS["t5_adafactor"], 10), shapes) / n
    assert 4 < t5_momentum < 4.1  # β1 = 0.9 adds one float32 per parameter



def values(cfg: OptimConfig, total: int, counts) -> list[float]:
    schedule = jax.jit(opt.build_schedule(cfg, total))
    return [float(schedule(jnp.asarray(c, jnp.int32))) for c in counts]


def test_schedule_values_at_chosen_steps():
    base = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    # count c is the (c + 1)-th update: warmup gives lr/10 to the first, lr to the 10th.
    assert values(dataclasses.replace(base, schedule="constant"), 110, [0, 4, 9, 10, 500]) == pytest.approx(
        [0.1, 0.5, 1.0, 1.0, 1.0])
    # linear: from lr at t = 10 down to 0.1 at t = 110; halfway (t = 60) 0.55.
    assert values(dataclasses.replace(base, schedule="linear"), 110, [0, 9, 59, 109, 200]) == pytest.approx(
        [0.1, 1.0, 0.55, 0.1, 0.1])
    # cosine: 0.1 + 0.9·(1 + cos(π·p))/2; a quarter of the way (t = 35) 0.1 + 0.45·(1 + √½).
    cosine = dataclasses.replace(base, schedule="cosine")
    assert values(cosine, 110, [9, 34, 59, 109, 10**6]) == pytest.approx(
        [1.0, 0.1 + 0.45 * (1 + math.sqrt(0.5)), 0.55, 0.1, 0.1])
    # No warmup, no floor: the first update gets the full lr and the last one 0.
    plain = OptimConfig(lr=2.0, schedule="cosine", warmup_steps=0, min_lr_ratio=0.0)
    assert values(plain, 4, [0, 1, 3]) == pytest.approx([2.0 * (1 + math.cos(math.pi / 4)) / 2, 1.0, 0.0],
                                                         abs=1e-6)


def test_rsqrt_is_t5s_inverse_square_root_and_the_transformers_with_warmup():
    t5 = PRESETS["t5_adafactor_paper"]  # lr 0.01, τ = 10^4, no ramp: 1/sqrt(max(t, 10^4))
    counts = [0, 5_000, 9_999, 39_999, 999_999]
    assert values(t5, 10**6, counts) == pytest.approx([1 / math.sqrt(max(c + 1, 10**4)) for c in counts])
    assert values(t5, 10**6, [39_999])[0] == pytest.approx(0.005)
    noam = OptimConfig(lr=1.0, schedule="rsqrt", warmup_steps=100, rsqrt_timescale=100)
    assert values(noam, 10**6, [0, 49, 99, 399]) == pytest.approx([0.01, 0.5, 1.0, 0.5])



def gpt_like_params():
    ones = np.ones
    block = {"ln_1": {"scale": ones(8), "bias": ones(8)},
             "attn": {"c_attn": {"kernel": ones((8, 24)), "bias": ones(24)},
                      "c_proj": {"kernel": ones((8, 8)), "bias": ones(8)}},
             "mlp": {"c_fc": {"kernel": ones((8, 32)), "bias": ones(32)}}}
    return {"wte": {"embedding": ones((50, 8))}, "wpe": {"embedding": ones((16, 8))},
            "blocks": {0: block, 1: block}, "ln_f": {"scale": ones(8), "bias": ones(8)}}


def decayed_paths(mask) -> set[str]:
    return {jax.tree_util.keystr(path) for path, on in jax.tree_util.tree_leaves_with_path(mask) if on}


def test_default_mask_decays_matrices_but_not_biases_norms_or_position_embeddings():
    params = gpt_like_params()
    assert decayed_paths(opt.MASKS["ndim>=2"](params)) == {
        "['wte']['embedding']",
        *(f"['blocks'][{i}]{p}" for i in (0, 1) for p in ("['attn']['c_attn']['kernel']",
                                                          "['attn']['c_proj']['kernel']",
                                                          "['mlp']['c_fc']['kernel']"))}
    n = len(jax.tree.leaves(params))
    assert len(decayed_paths(opt.MASKS["all"](params))) == n
    assert decayed_paths(opt.MASKS["none"](params)) == set()
    shapes = jax.eval_shape(lambda: jax.tree.map(jnp.asarray, params))
    assert decayed_paths(opt.MASKS["ndim>=2"](shapes)) == decayed_paths(opt.MASKS["ndim>=2"](params))
    default = opt.MASKS["ndim>=2"]
    assert decayed_paths(default({"position_embeddings": np.ones((4, 4)), "w": np.ones((4, 4))})) == {"['w']"}
    # T5's relative position bias tables are position tables too.
    assert decayed_paths(default({"enc_bias": {"embedding": np.ones((32, 8))},
                                  "dec_bias": {"embedding": np.ones((32, 8))}})) == set()


def test_mask_on_the_gpt_models_own_parameters():
    from flax import nnx

    from gptjax.config import ModelConfig
    from gptjax.models.gpt import GPT

    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, context=8, vocab_size=20), rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])
    on = decayed_paths(opt.MASKS["ndim>=2"](params))
    everything = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
    assert "['wte']['embedding']" in on and "['wpe']['embedding']" not in on
    assert all(p.endswith("['kernel']") or p == "['wte']['embedding']" for p in on)
    assert all(p in on for p in everything if p.endswith("['kernel']"))


def test_mask_on_the_t5_models_own_parameters():
    """T5's relative position tables, whatever the model calls them, are not decayed; its kernels and the
    shared embedding are, its RMS-norm scales not."""
    from gptjax.config import ModelConfig
    from gptjax.models import abstract_params

    _, params = abstract_params(ModelConfig(family="t5", n_layer=1, n_head=2, n_embd=16, context=8,
                                            vocab_size=40))
    on = decayed_paths(opt.MASKS["ndim>=2"](params))
    everything = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
    relative_tables = {p for p, x in everything.items() if x.shape == (32, 2)}  # [buckets, heads]
    assert len(relative_tables) == 2 and not relative_tables & on
    assert on == {p for p in everything if p.endswith("['kernel']")} | {"['wte']['embedding']"}


@pytest.mark.parametrize("kind, decayed", [("all", lambda k, x: True), ("none", lambda k, x: False)])
def test_decay_mask_choice_reaches_the_optimizer(kind, decayed):
    params, grad_steps = problem(seed=4)
    h = {**EXPECTED["gpt3_adamw"], "lr": 1e-2, "wd": 0.1}
    got = run(config_for(h, decay_mask=kind), params, grad_steps, 10)
    assert_same_moves(got, ref_adam(h, params, grad_steps, 10, decayed), params)
