"""Reports of a sweep: markdown tables and PNG plots made from each variant's `metrics.jsonl` alone.

`write_report(root)` reads every variant directory under `root` (its `config.json` or `variant.json`, its
metrics and `status.json`), so it works while the sweep is still running: statistics use the finished
runs, and unfinished or failed variants are listed with their progress or error. A *setting* is a variant
without its seed; the seeds are its replicates. Final loss = the validation loss at the run's last step.
Intervals are 95% Student-t intervals over seeds; paired differences are taken seed by seed, which is
valid because the same seed gives every setting the same initial parameters and batches.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from gptjax import environment
from gptjax.config import ConfigError
from gptjax.metrics import read_metrics
from gptjax.sweep import read_status

SEED_RE = re.compile(r"(^|,)seed=\d+(?=,|$)")


@dataclasses.dataclass
class RunInfo:
    name: str
    setting: str  # the name without its seed
    optimizer: str  # optim.preset
    lr: float
    seed: int
    steps: int  # train.steps the run aims for
    val: list[dict[str, Any]]  # the validation records, in step order
    train: list[dict[str, Any]]
    status: dict[str, Any]

    @property
    def last_step(self) -> int:
        return max((r["step"] for r in self.val + self.train), default=0)

    @property
    def finished(self) -> bool:
        return bool(self.val) and self.val[-1]["step"] >= self.steps

    @property
    def final_loss(self) -> float:
        return self.val[-1]["loss"] if self.val else math.nan


def load_runs(root: Path) -> list[RunInfo]:
    """Every variant directory under `root` that holds a config (config.json, else variant.json)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a sweep directory (run `python -m gptjax sweep` first)")
    runs = []
    for workdir in sorted(p for p in root.iterdir() if p.is_dir()):
        path = next((workdir / f for f in ("config.json", "variant.json") if (workdir / f).is_file()), None)
        if path is None:
            continue
        cfg = json.loads(path.read_text())
        records = read_metrics(workdir)
        seed = cfg["train"]["seed"]
        setting = SEED_RE.sub("", workdir.name).strip(",") or workdir.name
        runs.append(RunInfo(
            name=workdir.name, setting=setting, optimizer=cfg["optim"]["preset"], lr=cfg["optim"]["lr"],
            seed=seed, steps=cfg["train"]["steps"],
            val=sorted((r for r in records if r["split"] == "val"), key=lambda r: r["step"]),
            train=sorted((r for r in records if r["split"] == "train"), key=lambda r: r["step"]),
            status=read_status(workdir)))
    if not runs:
        raise ConfigError(f"{root} holds no variant directories yet")
    return runs


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t interval (nan for fewer than two values)."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)


@dataclasses.dataclass
class Setting:
    name: str
    optimizer: str
    lr: float
    runs: list[RunInfo]

    @property
    def done(self) -> list[RunInfo]:
        return [r for r in self.runs if r.finished]

    @property
    def final(self) -> tuple[float, float]:
        return mean_ci([r.final_loss for r in self.done])


def settings_of(runs: list[RunInfo]) -> list[Setting]:
    groups: dict[str, list[RunInfo]] = defaultdict(list)
    for run in runs:
        groups[run.setting].append(run)
    return [Setting(name, rs[0].optimizer, rs[0].lr, sorted(rs, key=lambda r: r.seed))
            for name, rs in sorted(groups.items(), key=lambda kv: (kv[1][0].optimizer, kv[1][0].lr))]


def best_per_optimizer(settings: list[Setting]) -> dict[str, Setting]:
    """Per optimizer, its setting of lowest mean final loss among those with a finished run."""
    best: dict[str, Setting] = {}
    for s in settings:
        if s.done and (s.optimizer not in best or s.final[0] < best[s.optimizer].final[0]):
            best[s.optimizer] = s
    return dict(sorted(best.items(), key=lambda kv: kv[1].final[0]))


def time_to_target(run: RunInfo, target: float) -> tuple[int, float] | None:
    """(step, elapsed seconds) of the first validation record at or below `target`, or None."""
    for record in run.val:
        # The default target is a mean of final losses; rounding must not hide a run that ends on it.
        if record["loss"] <= target * (1 + 1e-9):
            return record["step"], record.get("elapsed_s", math.nan)
    return None


def paired_differences(best: dict[str, Setting]) -> tuple[str, dict[str, tuple[float, float, int]]]:
    """Reference = the optimizer with the lowest mean; for each other one, mean ± CI of its final loss minus
    the reference's, seed by seed over the seeds both finished, and the number of pairs."""
    reference = next(iter(best))
    ref = {r.seed: r.final_loss for r in best[reference].done}
    diffs = {}
    for name, s in best.items():
        if name == reference:
            continue
        pairs = [r.final_loss - ref[r.seed] for r in s.done if r.seed in ref]
        diffs[name] = (*mean_ci(pairs), len(pairs))
    return reference, diffs


def _fmt(mean: float, half: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def default_target(best: dict[str, Setting]) -> float:
    """The worst optimizer's best mean final loss: a level every optimizer reaches at its best lr."""
    return max(s.final[0] for s in best.values())


def _plots(root: Path, settings: list[Setting], best: dict[str, Setting]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    import numpy as np

    # One colour per optimizer in both plots.
    names = sorted({s.optimizer for s in settings})
    colour = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, s in best.items():
        # Median and range over seeds at the steps every seed has logged.
        steps = sorted(set.intersection(*({r["step"] for r in run.val} for run in s.runs if run.val)))
        if not steps:
            continue
        loss_SR = np.array([[next(r["loss"] for r in run.val if r["step"] == t) for run in s.runs if run.val]
                            for t in steps])
        ax.plot(steps, np.median(loss_SR, axis=1), color=colour[name], label=f"{name} (lr {s.lr:.3g})")
        ax.fill_between(steps, loss_SR.min(axis=1), loss_SR.max(axis=1), color=colour[name], alpha=0.2)
    ax.set(xlabel="step", ylabel="validation loss (nats/token)",
           title="validation loss at each optimizer's best lr: median over seeds, band = min–max")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(root / "curves.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_optimizer: dict[str, list[Setting]] = defaultdict(list)
    for s in settings:
        if s.done:
            by_optimizer[s.optimizer].append(s)
    for name, group in sorted(by_optimizer.items()):
        group = sorted(group, key=lambda s: s.lr)
        means, halves = zip(*(s.final for s in group), strict=True)
        ax.errorbar([s.lr for s in group], means, yerr=np.nan_to_num(halves), marker="o", capsize=3,
                    color=colour[name], label=name)
    ax.set(xscale="log", xlabel="learning rate", ylabel="final validation loss (nats/token)",
           title="learning-rate sensitivity: mean over seeds ± 95% CI")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(root / "lr_sensitivity.png", dpi=120)
    plt.close(fig)
    return ["curves.png", "lr_sensitivity.png"]


def render(root: Path, runs: list[RunInfo], target: float | None = None, plots: list[str] = ()) -> str:
    """The report's markdown for `runs` (see the module docstring for what each number means)."""
    settings = settings_of(runs)
    best = best_per_optimizer(settings)
    done = sum(r.finished for r in runs)
    # The sweep's own list (sweep.json) also counts the variants not started yet.
    listing = root / "sweep.json"
    planned = json.loads(listing.read_text())["variants"] if listing.is_file() else []
    not_started = sorted(set(planned) - {r.name for r in runs})
    lines = [f"# Sweep report: {root.name}", "",
             f"{done} of {len(runs) + len(not_started)} variants finished; numbers are validation losses "
             f"(nats/token) from `metrics.jsonl`, mean ± 95% t-interval over seeds of the finished runs.", ""]
    lines += environment.report_lines(rec for r in runs for rec in read_metrics(root / r.name))
    lines += ["## Final loss per setting", "", "| optimizer | lr | runs done | final val loss |",
              "| --- | --- | --- | --- |"]
    for s in settings:
        mark = "" if len(s.done) == len(s.runs) else " (unfinished runs excluded)"
        lines.append(f"| {s.optimizer} | {s.lr:.3g} | {len(s.done)}/{len(s.runs)}{mark} | {_fmt(*s.final)} |")
    if not best:
        lines += ["", "No variant has finished yet."]
        return "\n".join(lines) + "\n"
    target = default_target(best) if target is None else target
    lines += ["", "## Best learning rate per optimizer, and time to a target loss", "",
              f"Target validation loss {target:.3f} (first evaluation at or below it; seconds of training "
              f"after compilation, `elapsed_s`).", "",
              "| optimizer | best lr | final val loss | reached | steps to target | seconds to target |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, s in best.items():
        hits = [h for h in (time_to_target(r, target) for r in s.done) if h is not None]
        steps = _fmt(*mean_ci([float(h[0]) for h in hits]), digits=0) if hits else "not reached"
        secs = _fmt(*mean_ci([h[1] for h in hits]), digits=1) if hits else "–"
        lines.append(f"| {name} | {s.lr:.3g} | {_fmt(*s.final)} | {len(hits)}/{len(s.done)} | {steps} "
                     f"| {secs} |")
    if len(best) > 1:
        reference, diffs = paired_differences(best)
        lines += ["", f"## Paired differences against the best optimizer, {reference}", "",
                  "Final loss of each optimizer at its best lr minus the reference's at its best lr, seed by "
                  "seed (same seed: same initial parameters and batches); an interval that excludes 0 is a "
                  "difference the seeds agree on.", "",
                  f"| optimizer | minus {reference} | pairs |", "| --- | --- | --- |"]
        for name, (mean, half, n) in diffs.items():
            lines.append(f"| {name} | {_fmt(mean, half)} | {n} |")
    pending = [r for r in runs if not r.finished]
    if pending or not_started:
        lines += ["", "## Unfinished or failed variants", "", "| variant | status | step | latest val loss |",
                  "| --- | --- | --- | --- |"]
        for r in pending:
            status = r.status.get("status", "pending")
            if status == "failed":
                status = f"failed: {r.status.get('error', '')}".replace("|", "\\|")
            latest = _fmt(r.final_loss, math.nan)
            lines.append(f"| {r.name} | {status} | {r.last_step}/{r.steps} | {latest} |")
        lines += [f"| {name} | not started | – | – |" for name in not_started]
    for png in plots:
        lines += ["", f"![{png}]({png})"]
    return "\n".join(lines) + "\n"


def write_report(root: Path, target: float | None = None) -> Path:
    """Write `root/report.md` with `curves.png` and `lr_sensitivity.png` beside it; return its path."""
    root = Path(root)
    runs = load_runs(root)
    best = best_per_optimizer(settings_of(runs))
    plots = _plots(root, settings_of(runs), best) if best else []
    path = root / "report.md"
    path.write_text(render(root, runs, target, plots))
    return path
