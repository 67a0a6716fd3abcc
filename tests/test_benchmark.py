"""The AlgoPerf-style benchmark (gptjax/benchmark.py): its sweep gives every contender the same budget,
its scores and performance profiles equal values worked out by hand on made-up runs, and bad input is one
line (or an honest "not reached"), never a crash."""

import math

import pytest

from gptjax.benchmark import (
    Contender,
    Workload,
    benchmark_sweep,
    performance_ratios,
    profile,
    profile_area,
    render,
    score,
)
from gptjax.config import ConfigError
from gptjax.report import RunInfo
from tests.conftest import tiny_experiment

WORKLOADS = (Workload("a", tiny_experiment(), target=2.0, steps=30, eval_every=10, provenance="by hand"),
             Workload("b", tiny_experiment(), target=1.0, steps=40, eval_every=10, provenance="by hand"))
CONTENDERS = (Contender("gpt3_adamw", {"optim.lr": (1e-4, 1e-2, "log"), "optim.b2": (0.9, 0.99, "linear")}),
              Contender("lion_paper", {"optim.lr": (1e-5, 1e-3, "log")}))


def test_profile_and_its_area_by_hand():
    ratios = [1.0, 2.0, math.inf]
    assert [profile(ratios, t) for t in (0.5, 1.0, 1.9, 2.0, 100.0)] == [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3]
    # ∫_1^4 ρ = 3·(1/3) + 2·(1/3) over 3: workload 1 counts from τ = 1, workload 2 from τ = 2.
    assert profile_area(ratios) == pytest.approx((3 + 2) / 3 / 3)
    assert profile_area([5.0]) == 0.0 and profile_area([1.0, 1.0]) == 1.0


def test_every_contender_gets_the_same_budget_and_its_groups_vmap():
    from gptjax.sweep import vmap_groups

    variants = benchmark_sweep(WORKLOADS, CONTENDERS, trials=3, studies=2)
    assert len(variants) == 2 * 2 * 2 * 3
    for w in ("a", "b"):
        for c in ("gpt3_adamw", "lion_paper"):
            for s in (0, 1):
                runs = [cfg for name, cfg in variants.items()
                        if name.startswith(f"w={w},preset={c},") and name.endswith(f",seed={s}")]
                assert len(runs) == 3 and {cfg.train.seed for cfg in runs} == {s}
                assert all(cfg.optim.preset == c and cfg.train.steps == {"a": 30, "b": 40}[w] for cfg in runs)
                assert len({cfg.optim.lr for cfg in runs}) == 3
    # Studies draw different points; one contender's points in one study form one vmapped group.
    lrs = [{cfg.optim.lr for n, cfg in variants.items() if n.startswith("w=a,preset=lion_paper,")
            and n.endswith(f"seed={s}")} for s in (0, 1)]
    assert lrs[0] != lrs[1]
    assert sorted(len(g) for g in vmap_groups(variants)) == [3] * 8
    # A contender's fixed fields reach every trial of it and no other contender's.
    soap = Contender("soap_paper", {"optim.lr": (1e-3, 1e-2, "log")}, fixed={"optim.soap_max_precond_dim": 7})
    variants = benchmark_sweep(WORKLOADS, (*CONTENDERS, soap), trials=2, studies=1)
    dims = {",preset=soap_paper," in n: set() for n in variants}
    for name, cfg in variants.items():
        dims[",preset=soap_paper," in name].add(cfg.optim.soap_max_precond_dim)
    assert dims == {True: {7}, False: {10_000}}


@pytest.mark.parametrize("contender, message", [
    (Contender("gpt3_adamw", {"optim.lr": (1e-2, 1e-4, "log")}), "search space optim.lr needs low < high"),
    (Contender("sgd", {}), "unknown optimizer preset 'sgd'"),
    (Contender("gpt3_adamw", {"train.steps": (1, 2, "linear")}), "train.steps is not an optim field"),
    (Contender("gpt3_adamw", {}, fixed={"train.steps": 3}), "fixed field train.steps must be an optim field"),
    (Contender("gpt3_adamw", {"optim.lr": (1e-3, 1e-2, "log")}, fixed={"optim.lr": 1e-3}),
     "fixed field optim.lr must be an optim field outside the search space"),
])
def test_bad_contenders_are_one_line(contender, message):
    with pytest.raises(ConfigError, match=message):
        benchmark_sweep(WORKLOADS, (contender,), trials=2, studies=1)


def run(w: str, preset: str, study: int, lr: float, losses: list[float]) -> RunInfo:
    """A finished run evaluated at steps 10, 20, 30, 10 s apart."""
    return RunInfo(name=f"w={w},preset={preset},lr={lr},seed={study}", setting="", optimizer=preset, lr=lr,
                   seed=study, steps=30,
                   val=[{"step": 10 * (i + 1), "loss": loss, "elapsed_s": 10.0 * (i + 1)}
                        for i, loss in enumerate(losses)],
                   train=[{"step": 30, "tokens_per_s": 1000.0 if preset == "gpt3_adamw" else 500.0}],
                   status={}, cfg={"optim.lr": lr, "optim.b2": 0.95},
                   setups=[{"opt_state_bytes_per_param": 8.0}])


RUNS = [
    # Workload a (target 2.0): AdamW reaches it at step 20 in study 0 (its faster trial), 30 in study 1;
    # Lion at 10 and 30: medians 25 and 20.
    run("a", "gpt3_adamw", 0, 1e-3, [3.0, 1.9, 1.5]), run("a", "gpt3_adamw", 0, 1e-2, [3.0, 2.5, 2.1]),
    run("a", "gpt3_adamw", 1, 2e-3, [3.0, 2.2, 1.8]), run("a", "gpt3_adamw", 1, 3e-4, [3.0, 2.9, 2.8]),
    run("a", "lion_paper", 0, 1e-4, [1.9, 1.7, 1.6]), run("a", "lion_paper", 1, 1e-4, [2.5, 2.2, 2.0]),
    # Workload b (target 1.0): only AdamW reaches it, and in one study of two only: the median is ∞.
    run("b", "gpt3_adamw", 0, 1e-3, [3.0, 1.0, 0.9]), run("b", "gpt3_adamw", 1, 1e-3, [3.0, 2.0, 1.5]),
    run("b", "lion_paper", 0, 1e-4, [2.0, 1.5, 1.2]), run("b", "lion_paper", 1, 1e-4, [2.0, 1.5, 1.1]),
]


def test_scores_medians_and_ratios_by_hand():
    table = score(RUNS, WORKLOADS, CONTENDERS)
    adamw, lion = table["a"]["gpt3_adamw"], table["a"]["lion_paper"]
    assert adamw.steps == [20, 30] and adamw.seconds == [20.0, 30.0] and adamw.median_steps == 25
    assert adamw.final == [1.5, 1.8] and adamw.best == {"optim.lr": 1e-3, "optim.b2": 0.95}
    assert lion.steps == [10, 30] and lion.median_steps == 20
    assert table["b"]["gpt3_adamw"].steps == [20, None] and math.isinf(table["b"]["gpt3_adamw"].median_steps)
    assert table["b"]["lion_paper"].steps == [None, None]
    ratios = performance_ratios(table, ["gpt3_adamw", "lion_paper"])
    assert ratios["gpt3_adamw"] == [25 / 20, math.inf] and ratios["lion_paper"] == [1.0, math.inf]
    page = render(table, WORKLOADS, ["gpt3_adamw", "lion_paper"])
    assert "| lion_paper | 0.500 | 1/2 | 1.00, ∞ |" in page  # area (4 − 1)/3 / 2 workloads
    assert f"| gpt3_adamw | {(4 - 1.25) / 3 / 2:.3f} | 1/2 | 1.25, ∞ |" in page
    # A target no contender's median reaches is reported, not a crash; step time against AdamW's.
    assert "| gpt3_adamw | not reached | not reached |" in page
    assert "| lion_paper | 20 | 20 | 1.8000 ± " in page and "| 2.00× | 8.0 |" in page


def test_a_contender_without_runs_is_named_not_scored():
    table = score([r for r in RUNS if r.optimizer == "gpt3_adamw"], WORKLOADS, CONTENDERS)
    page = render(table, WORKLOADS, ["gpt3_adamw", "lion_paper"])
    assert "No finished run yet: lion_paper." in page
    assert "| lion_paper | 0.000 | 0/2 | ∞, ∞ |" in page


def test_the_benchmark_experiment_expands_and_validates():
    from gptjax.sweep import load_sweep, vmap_groups

    _, variants = load_sweep("optimizer_benchmark")
    presets = {cfg.optim.preset for cfg in variants.values()}
    assert len(presets) >= 12 and {"w=gpt", "w=bert", "w=t5"} == {n.split(",")[0] for n in variants}
    assert all(len(group) == 4 for group in vmap_groups(variants))  # TRIALS points, one program each


def test_a_failed_run_counts_as_not_reached_and_a_running_one_not_yet():
    def third_study(status: str) -> RunInfo:
        return RunInfo(name="w=a,preset=lion_paper,lr=0.001,seed=2", setting="", optimizer="lion_paper",
                       lr=1e-3, seed=2, steps=30, val=[], train=[], status={"status": status})

    lion = score([*RUNS, third_study("failed")], WORKLOADS, CONTENDERS)["a"]["lion_paper"]
    assert lion.steps == [10, 30, None] and lion.median_steps == 30
    # Its missing final loss is left out of the interval (1.6 and 2.0), not turned into nan.
    assert "| 1.8000 ± " in render({"a": {"lion_paper": lion}}, WORKLOADS[:1], ["lion_paper"])
    assert score([*RUNS, third_study("running")], WORKLOADS, CONTENDERS)["a"]["lion_paper"].steps == [10, 30]


def test_significance_names_who_is_apart_from_the_best_and_who_is_not():
    from gptjax.benchmark import Score, significance

    def final(*losses):
        return Score(steps=[], seconds=[], final=list(losses), best={}, lrs=[], state_bytes_per_param=None,
                     tokens_per_s=None)

    # 95% Student-t, 2 degrees of freedom (t = 4.303, sd 0.1): 1.1 ± 0.248, 1.4 ± 0.248, 2.1 ± 0.248.
    lines = significance({"a": {"best": final(1.0, 1.1, 1.2), "near": final(1.3, 1.4, 1.5),
                                "far": final(2.0, 2.1, 2.2)},
                          "b": {"x": final(1.0), "y": final(2.0)}})
    assert lines == ["- a: lowest final loss best. Worse beyond noise (95% intervals apart from its): far. "
                     "Not told apart from it with these studies: near.",
                     "- b: one study per contender, so no interval; nothing here is significant."]
