"""An AlgoPerf-style optimizer benchmark (Dahl et al. 2023; Kasimbeg et al. 2025) over the GPT, BERT and T5
workloads: the protocol as data (`Workload`, `Contender`), the sweep that runs it, and its scores.

A *workload* is an experiment with a validation-loss target and a step budget. A *contender* is an
optimizer preset with the search space it declares (dotted path → (low, high, "log" | "linear")). Every
contender gets the same budget on every workload: `trials` quasi-random points of its space per *study*,
and `studies` independent studies, each with its own points (scrambled with the study's number) and its
own `train.seed`, as AlgoPerf's external-tuning ruleset. Within a study the fastest trial counts: the
steps (and seconds) of its first validation record at or below the target, ∞ when no trial reaches it;
a workload's score is the median over studies. Performance profiles compare contenders over workloads:
ρ_s(τ) is the share of workloads on which s needs at most τ times the steps of the fastest contender,
and the benchmark score is the area under ρ_s on [1, τ_max] divided by τ_max − 1 (1: fastest
everywhere; 0: never within τ_max of the fastest). Schedule, warmup, clipping and step budget are the
workload's and the same for every contender, so that what differs is the update rule and its tuning;
only Schedule-Free keeps its constant rate (its averaging replaces the decay). The points of one
contender and study differ only in traceable fields, so `sweep --vmap` trains each as one program.
`experiments/optimizer_benchmark.py` is the runnable form; docs/optimizers.md, "An AlgoPerf-style
benchmark", the protocol in prose.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from gptjax import storage
from gptjax.config import PRESETS, ConfigError, Experiment
from gptjax.report import RunInfo, mean_ci, save_figure, time_to_target
from gptjax.sweep import apply_changes, quasi_random, variant_name

TAU_MAX = 4.0  # AlgoPerf's r_max: beyond 4× the fastest, a workload counts as not solved
Space = dict[str, tuple[float, float, str]]


@dataclasses.dataclass(frozen=True)
class Workload:
    """An experiment with its target and budget: `base` trains for `steps` and evaluates every
    `eval_every`; `target` is the validation loss to reach, `provenance` says how it was obtained."""

    name: str
    base: Experiment
    target: float
    steps: int
    eval_every: int
    provenance: str

    def config(self) -> Experiment:
        train = dataclasses.replace(self.base.train, steps=self.steps, eval_every=self.eval_every)
        return dataclasses.replace(self.base, train=train)


@dataclasses.dataclass(frozen=True)
class Contender:
    """An optimizer in the benchmark: a preset (its rule and untuned numbers), its search space, and
    fields `fixed` for every trial of it (say why beside them; e.g. a cost that the benchmark's size
    cannot pay)."""

    preset: str
    space: Space
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"benchmark contender: unknown optimizer preset {self.preset!r}; known: "
                              f"{', '.join(PRESETS)}")
        for path in self.fixed:
            if not path.startswith("optim.") or path in self.space:
                raise ConfigError(f"contender {self.preset}: fixed field {path} must be an optim field "
                                  f"outside the search space")
        for path, (low, high, scale) in self.space.items():
            if not path.startswith("optim."):
                raise ConfigError(f"contender {self.preset}: search space axis {path} is not an optim field")
            if scale not in ("log", "linear") or not low < high or (scale == "log" and low <= 0):
                raise ConfigError(f"contender {self.preset}: search space {path} needs low < high (> 0 for "
                                  f"log) and 'log' or 'linear', got {(low, high, scale)}")


def recipe(workload: Workload, preset: str) -> Experiment:
    """The workload's config with `preset`'s rule and numbers, its schedule, warmup and clipping kept from
    the workload (Schedule-Free: constant after the warmup)."""
    cfg = workload.config()
    own = cfg.optim
    optim = dataclasses.replace(PRESETS[preset], schedule=own.schedule, warmup_steps=own.warmup_steps,
                                min_lr_ratio=own.min_lr_ratio, grad_clip=own.grad_clip,
                                rsqrt_timescale=own.rsqrt_timescale)
    if optim.rule == "schedule_free_adamw":
        optim = dataclasses.replace(optim, schedule="constant")
    return dataclasses.replace(cfg, optim=optim)


def benchmark_sweep(workloads: Sequence[Workload], contenders: Sequence[Contender], trials: int,
                    studies: int) -> dict[str, Experiment]:
    """Every run of the benchmark, named `w=<workload>,preset=<preset>,<point>,seed=<study>`: the same
    number of points per contender, workload and study. ConfigError (one line) for bad input."""
    if trials < 1 or studies < 1:
        raise ConfigError(f"benchmark needs trials >= 1 and studies >= 1, got {trials} and {studies}")
    names = [c.preset for c in contenders]
    if len(set(names)) != len(names) or len({w.name for w in workloads}) != len(workloads):
        raise ConfigError("benchmark contenders and workloads must each be named once")
    for contender in contenders:
        contender.check()
    variants = {}
    for workload in workloads:
        for contender in contenders:
            base = apply_changes(recipe(workload, contender.preset), contender.fixed)
            for study in range(studies):
                seeded = apply_changes(base, {"train.seed": study})
                points = (quasi_random(seeded, contender.space, trials, seed=study) if contender.space
                          else {"default": seeded})
                for point, cfg in points.items():
                    head = variant_name({"w": workload.name, "preset": contender.preset})
                    variants[f"{head},{point},seed={study}"] = cfg
    return variants


@dataclasses.dataclass(frozen=True)
class Score:
    """One contender on one workload: per study the fastest trial's steps and seconds to target (None:
    not reached) and its final loss; the median over studies; the best point's hyperparameters."""

    steps: list[int | None]
    seconds: list[float | None]
    final: list[float]
    best: dict[str, Any]  # the searched fields of the fastest trial over all studies
    lrs: list[tuple[float, float]]  # (lr, final loss) of every finished trial: the sensitivity curve
    state_bytes_per_param: float | None
    tokens_per_s: float | None

    @property
    def median_steps(self) -> float:
        return _median([math.inf if s is None else s for s in self.steps])

    @property
    def median_seconds(self) -> float:
        return _median([math.inf if s is None else s for s in self.seconds])


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.inf


def _key(run: RunInfo, target: float) -> tuple[float, float]:
    hit = time_to_target(run, target)
    final = run.final_loss if run.val else math.inf
    return (math.inf if hit is None else hit[0], final if math.isfinite(final) else math.inf)


def score(runs: Sequence[RunInfo], workloads: Sequence[Workload], contenders: Sequence[Contender]
          ) -> dict[str, dict[str, Score]]:
    """workload → contender preset → `Score`, from the runs of `benchmark_sweep` (read by
    `report.load_runs`). A run that ended without reaching the target (diverged or failed included) counts
    ∞; one still running is not counted yet; a contender with no ended run on a workload is left out."""
    target = {w.name: w.target for w in workloads}
    groups: dict[tuple[str, str, int], list[RunInfo]] = defaultdict(list)
    for run in runs:
        name = next((p.split("=", 1)[1] for p in run.name.split(",") if p.startswith("w=")), None)
        if name in target and (run.finished or run.status.get("status") in ("done", "failed")):
            groups[name, run.optimizer, run.seed].append(run)
    table: dict[str, dict[str, Score]] = {}
    for workload in workloads:
        for contender in contenders:
            studies = sorted(s for (w, p, s) in groups if w == workload.name and p == contender.preset)
            if not studies:
                continue
            fastest = [min(groups[workload.name, contender.preset, s], key=lambda r: _key(r, workload.target))
                       for s in studies]
            hits = [time_to_target(r, workload.target) for r in fastest]
            overall = min(fastest, key=lambda r: _key(r, workload.target))
            every = [r for s in studies for r in groups[workload.name, contender.preset, s]]
            setup = overall.setups[-1] if overall.setups else {}
            rates = [r["tokens_per_s"] for r in overall.train if r.get("tokens_per_s")]
            table.setdefault(workload.name, {})[contender.preset] = Score(
                steps=[None if h is None else h[0] for h in hits],
                seconds=[None if h is None else h[1] for h in hits],
                final=[r.final_loss for r in fastest],
                best={path: overall.cfg.get(path) for path in contender.space},
                lrs=sorted((r.lr, r.final_loss) for r in every),
                state_bytes_per_param=setup.get("opt_state_bytes_per_param"),
                tokens_per_s=statistics.median(rates) if rates else None)
    return table


def performance_ratios(table: dict[str, dict[str, Score]], contenders: Sequence[str]
                       ) -> dict[str, list[float]]:
    """contender → per workload its median steps over the fastest contender's (∞: not reached, or not
    run; a workload no contender reaches counts ∞ for all)."""
    ratios: dict[str, list[float]] = {c: [] for c in contenders}
    for scores in table.values():
        best = min((s.median_steps for s in scores.values()), default=math.inf)
        for c in contenders:
            steps = scores[c].median_steps if c in scores else math.inf
            ratios[c].append(steps / best if math.isfinite(best) and math.isfinite(steps) else math.inf)
    return ratios


def profile(ratios: list[float], tau: float) -> float:
    """ρ(τ): the share of workloads solved within τ times the fastest contender's steps."""
    return sum(r <= tau for r in ratios) / len(ratios) if ratios else 0.0


def profile_area(ratios: list[float], tau_max: float = TAU_MAX) -> float:
    """∫ρ(τ)dτ over [1, τ_max] / (τ_max − 1): each workload solved at ratio r ≤ τ_max adds
    (τ_max − r)/(τ_max − 1), divided by the number of workloads (ρ is a step function)."""
    if not ratios:
        return 0.0
    return sum((tau_max - r) / (tau_max - 1) for r in ratios if r <= tau_max) / len(ratios)


def _fmt_steps(value: float) -> str:
    return "not reached" if not math.isfinite(value) else f"{value:g}"


def render(table: dict[str, dict[str, Score]], workloads: Sequence[Workload], contenders: Sequence[str],
           *, plots: Sequence[str] = (), notes: Sequence[str] = ()) -> str:
    """The benchmark's markdown page: the summary (profile areas), one table per workload, the plots and
    what is and is not significant."""
    ratios = performance_ratios(table, contenders)
    areas = sorted(((profile_area(ratios[c]), c) for c in contenders), reverse=True)
    lines = ["# Optimizer benchmark", "", *notes, "",
             f"## Summary: performance-profile area (τ_max = {TAU_MAX:g})", "",
             "| contender | area | workloads reached | steps / fastest, per workload |",
             "| --- | --- | --- | --- |"]
    for area, c in areas:
        reached = sum(math.isfinite(r) for r in ratios[c])
        per = ", ".join("∞" if not math.isfinite(r) else f"{r:.2f}" for r in ratios[c])
        lines.append(f"| {c} | {area:.3f} | {reached}/{len(ratios[c])} | {per} |")
    for workload in workloads:
        scores = table.get(workload.name, {})
        lines += ["", f"## Workload {workload.name}", "",
                  f"Target validation loss {workload.target:g} within {workload.steps} steps "
                  f"({workload.provenance}).", "",
                  "| contender | steps to target (median) | seconds (median) | final loss (mean ± 95% CI) | "
                  "best hyperparameters | step time vs adamw | state bytes/param |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        reference = next((s.tokens_per_s for c, s in scores.items() if PRESETS[c].rule == "adamw"
                          and s.tokens_per_s), None)
        for c in sorted(scores, key=lambda c: (scores[c].median_steps, _mean(scores[c].final))):
            s = scores[c]
            mean, half = mean_ci(_finite(s.final))
            ci = (f"{mean:.4f} ± {half:.4f}" if math.isfinite(half) else
                  f"{mean:.4f} (one study)" if math.isfinite(mean) else "no finite loss")
            best = ", ".join(f"{k.removeprefix('optim.')}={v:.3g}" for k, v in s.best.items()) or "preset"
            overhead = (f"{reference / s.tokens_per_s:.2f}×" if reference and s.tokens_per_s else "?")
            state = "?" if s.state_bytes_per_param is None else f"{s.state_bytes_per_param:.1f}"
            lines.append(f"| {c} | {_fmt_steps(s.median_steps)} | {_fmt_steps(s.median_seconds)} | {ci} | "
                         f"{best} | {overhead} | {state} |")
        missing = [c for c in contenders if c not in scores]
        if missing:
            lines += ["", f"No finished run yet: {', '.join(missing)}."]
    lines += ["", "## What is significant", "", *significance(table)]
    for plot in plots:
        lines += ["", f"![{plot}]({plot})"]
    return "\n".join(lines) + "\n"


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _mean(values: list[float]) -> float:
    values = _finite(values)
    return sum(values) / len(values) if values else math.inf


def significance(table: dict[str, dict[str, Score]]) -> list[str]:
    """Per workload, in plain words: which contenders' final losses are separated from the best one's by
    their 95% intervals, and which are not."""
    out = []
    for name, scores in table.items():
        if not scores:
            continue
        best = min(scores, key=lambda c: _mean(scores[c].final))
        b_mean, b_half = mean_ci(_finite(scores[best].final))
        if not math.isfinite(b_half):
            out.append(f"- {name}: one study per contender, so no interval; nothing here is significant.")
            continue
        apart, close = [], []
        for c, s in scores.items():
            if c == best:
                continue
            mean, half = mean_ci(_finite(s.final))
            (apart if math.isfinite(half) and mean - half > b_mean + b_half else close).append(c)
        out.append(f"- {name}: lowest final loss {best}. Worse beyond noise (95% intervals apart from its): "
                   f"{', '.join(sorted(apart)) or 'none'}. Not told apart from it with these studies: "
                   f"{', '.join(sorted(close)) or 'none'}.")
    return out


def _plots(out, table: dict[str, dict[str, Score]], contenders: Sequence[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    colour = {c: plt.get_cmap("tab20")(i % 20) for i, c in enumerate(contenders)}
    ratios = performance_ratios(table, contenders)
    taus = [1 + i * (TAU_MAX - 1) / 300 for i in range(301)]
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    for c in sorted(contenders, key=lambda c: -profile_area(ratios[c])):  # the legend ranks them
        ax.step(taus, [profile(ratios[c], t) for t in taus], where="post", color=colour[c],
                label=f"{c} ({profile_area(ratios[c]):.2f})")
    ax.set(xlabel="τ (steps to target / fastest contender's)", ylabel="share of workloads within τ",
           title="performance profiles (legend: area, the benchmark score)", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: it hid the steps
    fig.tight_layout()
    save_figure(fig, out / "performance_profiles.png")
    plt.close(fig)
    fig, axes = plt.subplots(1, max(1, len(table)), figsize=(5 * max(1, len(table)), 4), squeeze=False)
    for ax, (name, scores) in zip(axes[0], table.items(), strict=False):
        for c, s in scores.items():
            if s.lrs:
                ax.plot(*zip(*s.lrs, strict=True), "o", color=colour[c], label=c, markersize=4)
        ax.set(xscale="log", xlabel="lr (Adafactor: ρ; Prodigy: multiplier of d)",
               ylabel="final validation loss", title=f"{name}: every trial")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, out / "lr_sensitivity.png")
    plt.close(fig)
    return ["performance_profiles.png", "lr_sensitivity.png"]


def write_benchmark_report(root, out, workloads: Sequence[Workload], contenders: Sequence[Contender],
                           notes: Sequence[str] = ()):
    """Score the runs under `root` (a sweep directory of `benchmark_sweep`) and write `out/report.md`
    with its two plots; return the report's path."""
    from gptjax.report import load_runs

    out = storage.path(out)  # beside a sweep in a bucket too
    out.mkdir(parents=True, exist_ok=True)
    names = [c.preset for c in contenders]
    table = score(load_runs(root), workloads, contenders)  # a sweep in a bucket too
    plots = _plots(out, table, names) if table else []
    path = out / "report.md"
    storage.write_atomic(path, render(table, workloads, names, plots=plots, notes=notes))
    return path
