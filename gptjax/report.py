"""Reports of a sweep: markdown tables and PNG plots made from each variant's directory alone.

`write_report(root)` reads every variant directory under `root` (its `config.json` or `variant.json`, its
metrics and `status.json`), so it works while the sweep is still running: statistics use the finished
runs, and unfinished or failed variants are listed with their progress or error. A *setting* is a variant
without its seed; the seeds are its replicates. Final loss = the validation loss at the run's last step.
Intervals are 95% Student-t intervals over seeds; paired differences are taken seed by seed, which is
valid because the same seed gives every setting the same initial parameters and batches. The report says
only what the data supports: a verdict per paired comparison, warnings for thin evidence (fewer than 3
seeds, a best learning rate at the edge of its grid), the recipe each variant ran, the loss's unit, and
the execution mode behind every number of seconds. Runs trained vmapped and as separate processes are
never pooled or compared with each other. docs/reports.md explains how to read it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
from collections import defaultdict
from typing import Any

from gptjax import storage
from gptjax.config import PRESETS, ConfigError, to_dict
from gptjax.metrics import read_metrics
from gptjax.sweep import read_status
from gptjax.workdir import read_config

SEED_RE = re.compile(r"(^|,)seed=\d+(?=,|$)")
MIN_SEEDS = 3  # fewer replicates than this behind an interval: the report warns
VMAPPED, SEPARATE, UNKNOWN = "vmapped", "separate", "not recorded"
MODE_MEANING = {VMAPPED: "one vmapped program per group of trials", SEPARATE: "one process per variant",
                UNKNOWN: "no setup record"}

# The fields that make a training recipe, always stated; others appear when variants differ in them.
RECIPE = ("train.steps", "optim.schedule", "optim.warmup_steps", "optim.min_lr_ratio", "optim.grad_clip",
          "optim.weight_decay", "data.batch_size", "data.seq_len", "train.grad_accum")
# What a preset axis replaces that is a recipe rather than an update rule.
PRESET_RECIPE = ("optim.schedule", "optim.warmup_steps", "optim.min_lr_ratio", "optim.rsqrt_timescale",
                 "optim.grad_clip", "optim.weight_decay", "optim.decay_mask")
# Fields that change no number in a report: bookkeeping, or what each setting is already named by.
NOT_RECIPE = ("name", "train.seed", "train.progress", "train.log_every", "train.checkpoint_every",
              "train.keep_checkpoints", "train.compilation_cache_dir", "train.coordinator_address",
              "train.process_id", "optim.preset", "optim.lr")
# Keys of the setup record that hold the software and machine, read if present (any of them).
ENVIRONMENT_KEYS = ("environment", "env", "versions", "software", "machine")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "terms":  # loss.terms is one value: the dict of terms
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _load_average(value: Any) -> float | None:
    # os.getloadavg() is a triple (1, 5, 15 min); a single number is the 1-minute one.
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


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
    cfg: dict[str, Any] = dataclasses.field(default_factory=dict)  # the resolved config, flattened
    setups: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # one per start or resume
    log_text: str = ""  # first lines of log.txt: how a trial of a vmapped group says so when unrecorded

    @property
    def last_step(self) -> int:
        return max((r["step"] for r in self.val + self.train), default=0)

    @property
    def finished(self) -> bool:
        return bool(self.val) and self.val[-1]["step"] >= self.steps

    @property
    def final_loss(self) -> float:
        return self.val[-1]["loss"] if self.val else math.nan

    @property
    def relative_step(self) -> bool:
        """Adafactor with a relative step: `lr` is ρ, the step is ρ·RMS(θ), not a learning rate."""
        return (self.cfg.get("optim.rule") == "adafactor"
                and bool(self.cfg.get("optim.adafactor_relative_step", True)))

    @property
    def group_size(self) -> int:
        """Trials in the vmapped program that trained this run (1: a program of its own)."""
        sizes = [int(s.get("vmapped_trials", 1)) for s in self.setups]
        return max(sizes, default=1)

    @property
    def mode(self) -> str:
        """`vmapped` (one program for a group of trials) or `separate` (a process and program of its own),
        from the setup records (a vmapped group writes `vmapped_trials`; `execution` if a run names it),
        else from the log line a vmapped group leaves; "mixed" when a resume changed it."""
        modes = set()
        for setup in self.setups:
            named = setup.get("execution")
            if isinstance(named, str) and named:
                modes.add(VMAPPED if "vmap" in named else SEPARATE)
            else:
                modes.add(VMAPPED if int(setup.get("vmapped_trials", 1)) > 1 else SEPARATE)
        if not modes:
            return VMAPPED if "vmapped" in self.log_text else UNKNOWN
        return modes.pop() if len(modes) == 1 else "mixed"

    @property
    def load(self) -> float | None:
        """Mean load average over the records that carry one (`load_avg`), None when none does."""
        values = [_load_average(r.get("load_avg")) for r in self.setups + self.train]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    @property
    def cpus(self) -> int | None:
        """The machine's CPU count beside its load average in the setup record (`cpus`), if recorded."""
        counts = [s["cpus"] for s in self.setups if isinstance(s.get("cpus"), int)]
        return max(counts, default=None)

    @property
    def loaded(self) -> bool:
        """More runnable processes than CPUs when the run started: its seconds were slowed by others."""
        return self.load is not None and self.cpus is not None and self.load > self.cpus

    @property
    def jobs(self) -> int | None:
        """Sweep processes that ran beside this one (`jobs` in its setup record or status), if recorded."""
        for source in (*self.setups, self.status):
            if isinstance(source.get("jobs"), int):
                return source["jobs"]
        return None

    @property
    def resumed(self) -> bool:
        return len(self.setups) > 1


def _read_json(path: storage.PathLike) -> Any:
    """A JSON file's value, or a one-line ConfigError naming the file."""
    try:
        return json.loads(storage.path(path).read_bytes())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path} is unreadable or not JSON ({type(e).__name__}: {e})") from None


def _listing(root: storage.PathLike) -> dict[str, Any]:
    """The sweep's own `sweep.json` ({} when there is none), or a one-line ConfigError."""
    path = storage.path(root) / "sweep.json"
    listing = _read_json(path) if path.is_file() else {}
    if not isinstance(listing, dict):
        raise ConfigError(f"{path} is not a sweep listing (a JSON object); the next sweep rewrites it")
    return listing


def load_runs(root: storage.PathLike) -> list[RunInfo]:
    """Every variant directory under `root` that holds a config (config.json, else variant.json)."""
    root = storage.path(root)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a sweep directory (run `python -m gptjax sweep` first)")
    runs = []
    for workdir in sorted(p for p in root.iterdir() if p.is_dir()):
        path = next((workdir / f for f in ("config.json", "variant.json") if (workdir / f).is_file()), None)
        if path is None:
            continue
        cfg = to_dict(read_config(workdir, path.name))  # a damaged file: one line naming it
        records = read_metrics(workdir)
        log = workdir / "log.txt"
        setting = SEED_RE.sub("", workdir.name).strip(",") or workdir.name
        try:
            optim, train = cfg["optim"], cfg["train"]
            fields = dict(optimizer=optim["preset"], lr=optim["lr"], seed=train["seed"], steps=train["steps"])
        except (KeyError, TypeError) as e:
            raise ConfigError(f"{path} is not a gptjax config (no {e}); restore it or move the variant "
                              f"directory out of {root}") from None
        runs.append(RunInfo(
            name=workdir.name, setting=setting, **fields,
            val=sorted((r for r in records if r["split"] == "val"), key=lambda r: r["step"]),
            train=sorted((r for r in records if r["split"] == "train"), key=lambda r: r["step"]),
            status=read_status(workdir), cfg=_flatten(cfg),
            setups=[r for r in records if r["split"] == "setup"],
            log_text=log.read_bytes().decode(errors="replace")[:2000] if log.is_file() else ""))
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
    mode: str = SEPARATE  # every run of a setting has this execution mode (settings_of splits by it)

    @property
    def done(self) -> list[RunInfo]:
        return [r for r in self.runs if r.finished]

    @property
    def final(self) -> tuple[float, float]:
        return mean_ci([r.final_loss for r in self.done])

    @property
    def relative_step(self) -> bool:
        return self.runs[0].relative_step


def settings_of(runs: list[RunInfo]) -> list[Setting]:
    """Runs grouped by setting and execution mode: seeds of one setting trained vmapped and separately
    are two settings, never pooled (their losses need not agree; docs/reports.md)."""
    known: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        if run.mode != UNKNOWN:
            known[run.setting].add(run.mode)
    everywhere = set().union(*known.values())
    groups: dict[tuple[str, str], list[RunInfo]] = defaultdict(list)
    for run in runs:
        # A run that has not written its setup record yet (starting, or failed before training) joins its
        # setting's one mode, else the sweep's one mode, so that it does not make a mode of its own.
        mode = run.mode
        if mode == UNKNOWN and len(known[run.setting]) == 1:
            mode = next(iter(known[run.setting]))
        elif mode == UNKNOWN and not known[run.setting] and len(everywhere) == 1:
            mode = next(iter(everywhere))
        groups[run.setting, mode].append(run)
    ordered = sorted(groups.items(), key=lambda kv: (kv[1][0].optimizer, kv[1][0].lr, kv[0][1]))
    return [Setting(name, rs[0].optimizer, rs[0].lr, sorted(rs, key=lambda r: r.seed), mode)
            for (name, mode), rs in ordered]


def best_per_optimizer(settings: list[Setting]) -> dict[str, Setting]:
    """Per optimizer, its setting of lowest mean final loss among those with a finished run (pass the
    settings of one execution mode: `by_mode`)."""
    best: dict[str, Setting] = {}
    for s in settings:
        if s.done and (s.optimizer not in best or s.final[0] < best[s.optimizer].final[0]):
            best[s.optimizer] = s
    return dict(sorted(best.items(), key=lambda kv: kv[1].final[0]))


def by_mode(settings: list[Setting]) -> dict[str, list[Setting]]:
    modes: dict[str, list[Setting]] = defaultdict(list)
    for s in settings:
        modes[s.mode].append(s)
    return dict(sorted(modes.items()))


def grid_edge(settings: list[Setting], best: Setting) -> str | None:
    """Why `best`'s learning rate may not be the optimum of its optimizer's grid (among the finished
    settings of the same optimizer and mode), or None when both neighbours were tried and are worse."""
    lrs = sorted({s.lr for s in settings if s.optimizer == best.optimizer and s.mode == best.mode and s.done})
    what = "relative step" if best.relative_step else "lr"
    if len(lrs) == 1:
        return f"only one {what} tried ({lrs[0]:.3g}): not tuned"
    if best.lr == lrs[0]:
        return f"best {what} {best.lr:.3g} is the lowest of its grid ({lrs[0]:.3g} … {lrs[-1]:.3g}): " \
               f"the optimum is not bracketed, try lower"
    if best.lr == lrs[-1]:
        return f"best {what} {best.lr:.3g} is the highest of its grid ({lrs[0]:.3g} … {lrs[-1]:.3g}): " \
               f"the optimum is not bracketed, try higher"
    return None


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


def verdict(name: str, reference: str, mean: float, half: float, n: int) -> str:
    """What a paired difference `name` − `reference` (mean ± half over n seeds) supports, in words."""
    if n < 2 or math.isnan(half):
        return f"no interval: {n} paired seed{'s' if n != 1 else ''}"
    if abs(mean) <= half:
        said = "no difference the seeds agree on"
    elif mean > 0:
        said = f"{reference} lower by {mean:.3f} ± {half:.3f}"
    else:
        said = f"{name} lower by {-mean:.3f} ± {half:.3f}"
    return said + (f" (only {n} seeds: too few for a reliable interval)" if n < MIN_SEEDS else "")


@dataclasses.dataclass(frozen=True)
class Unit:
    """What the reported loss measures: `name` for headers, and whether bits per byte can sit beside it."""

    name: str
    per_byte: bool  # cross-entropy alone, per byte: bits/byte = nats/byte ÷ ln 2


def loss_unit(cfg: dict[str, Any]) -> Unit:
    """The unit of a run's validation loss from its flattened config: nats per byte for the byte
    tokenizer, per token otherwise; other normalisations and added loss terms said as such."""
    piece = "byte" if cfg.get("data.tokenizer", "byte") == "byte" else "token"
    terms = cfg.get("loss.terms") or {"ce": 1.0}
    normalization = cfg.get("loss.normalization", "token")
    if normalization == "sequence":
        return Unit("nats/sequence", False)
    if normalization == "sum":
        return Unit("nats summed over a batch", False)
    if set(terms) == {"ce"} and terms["ce"] == 1.0:
        return Unit(f"nats/{piece}", piece == "byte")
    return Unit(f"nats/{piece} of the objective " + " + ".join(f"{c:g}·{t}" for t, c in terms.items()), False)


def _fmt(mean: float, half: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def _bits(mean: float, half: float) -> str:
    return _fmt(mean / math.log(2), half / math.log(2))


def _step_size(s: Setting | RunInfo) -> tuple[str, str]:
    """(learning rate, Adafactor relative step ρ): one of the two columns is filled, the other "–"."""
    return ("–", f"{s.lr:.3g}") if s.relative_step else (f"{s.lr:.3g}", "–")


def default_target(best: dict[str, Setting]) -> float:
    """The worst optimizer's best mean final loss: a level every optimizer reaches at its best lr."""
    return max(s.final[0] for s in best.values())


def _execution(runs: list[RunInfo]) -> str:
    """How a set of runs was executed, for the seconds column: mode, group size, jobs, load average."""
    parts = []
    for r in runs:
        how = f"vmapped ×{r.group_size}" if r.mode == VMAPPED else r.mode
        if r.jobs is not None:
            how += f", {r.jobs} job{'s' if r.jobs != 1 else ''}"
        parts.append(how)
    text = ", ".join(sorted(set(parts)))
    loads = [r.load for r in runs if r.load is not None]
    text += f"; load {sum(loads) / len(loads):.1f}" if loads else "; load not recorded"
    cpus = {r.cpus for r in runs if r.cpus is not None}
    if loads and len(cpus) == 1:
        text += f" on {cpus.pop()} CPUs"
    return text


def environment(runs: list[RunInfo]) -> list[str]:
    """The software and machine each run recorded in its setup record (`ENVIRONMENT_KEYS`), one line
    per distinct environment, with the runs that share it when they differ."""
    seen: dict[str, list[str]] = defaultdict(list)
    for r in runs:
        found = {}
        for setup in r.setups[-1:]:  # the latest start: what the final numbers came from
            for key in ENVIRONMENT_KEYS:
                value = setup.get(key)
                if isinstance(value, dict):  # a list (e.g. device kinds) reads as its items
                    found.update({str(k): ", ".join(map(str, v)) if isinstance(v, list) else v
                                  for k, v in value.items()})
                elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
                    found[key] = value
            if isinstance(setup.get("devices"), int):
                found.setdefault("devices", setup["devices"])
        text = ", ".join(f"{k} {v}" for k, v in sorted(found.items())) if found else ""
        seen[text].append(r.name)
    known = {text: names for text, names in seen.items() if text}
    if not known:
        return ["Environment: not recorded in the runs' setup records."]
    if len(seen) == 1:
        return [f"Environment: {next(iter(known))}."]
    lines = ["Environment: **the runs differ** —"]
    for text, names in sorted(seen.items()):
        lines.append(f"- {text or 'not recorded'}: {len(names)} run(s), e.g. `{names[0]}`")
    return lines


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_value(v)}" for k, v in value.items())
    return str(value)


def recipe_section(settings: list[Setting], base: dict[str, Any] | None = None) -> list[str]:
    """The recipe every variant shares, a table of the fields in which settings differ, and what a
    preset axis replaced."""
    cfgs = {s.name: s.runs[0].cfg for s in settings}  # every seed of a setting has its recipe
    keys = sorted({k for cfg in cfgs.values() for k in cfg if k not in NOT_RECIPE
                   and not k.startswith("sample.")})
    differ = [k for k in keys if len({json.dumps(cfg.get(k), sort_keys=True) for cfg in cfgs.values()}) > 1]
    first = next(iter(cfgs.values()))
    shared = [f"{k} {_value(first.get(k))}" for k in RECIPE if k in keys and k not in differ]
    lines = ["## Recipe", ""]
    if shared:
        lines += [f"Every variant: {', '.join(shared)}.", ""]
    if differ:
        ordered = [k for k in RECIPE if k in differ] + [k for k in differ if k not in RECIPE]
        lines += ["Fields in which the settings differ (beyond lr and seed):", "",
                  "| setting | " + " | ".join(ordered) + " |", "| --- " * (len(ordered) + 1) + "|"]
        for name, cfg in cfgs.items():
            lines.append(f"| {name} | " + " | ".join(_value(cfg.get(k, "–")) for k in ordered) + " |")
        lines.append("")
    lines += preset_axis_notes(settings, base)
    return lines


def preset_axis_notes(settings: list[Setting], base: dict[str, Any] | None = None) -> list[str]:
    """What an `optim.preset=` axis did: it swaps in the whole preset, so each such variant runs the
    preset's own schedule, warmup, clipping and decay unless its name sets them too. With the base config
    (sweep.json's `base`, when a sweep records it) the replaced values are named; without it, that they may
    have been is said."""
    swapped = [s for s in settings if "preset=" in s.name and s.optimizer in PRESETS]
    if not swapped:
        return []
    presets = sorted({s.optimizer for s in swapped})
    named = sorted({part.split("=", 1)[0] for s in swapped for part in s.name.split(",") if "=" in part}
                   - {"preset", "lr"})
    lines = [f"**The preset axis replaced the whole optimizer section.** `optim.preset=` swaps in the "
             f"preset as defined, so {', '.join(presets)} ran with "
             f"{'its' if len(presets) == 1 else 'their'} own schedule, warmup, clipping and weight decay "
             f"(table above), not the base experiment's"
             + (f", except for what the variant names set ({', '.join(named)})." if named else ".")]
    if base is None:
        lines[0] += (" The sweep did not record its base config (sweep.json has no `base`), so whether "
                     "that dropped a schedule, clipping or decay the base set cannot be checked here.")
        return lines + [""]
    flat = _flatten(base)
    for preset in presets:
        lost = {}
        for s in swapped:
            if s.optimizer != preset:
                continue
            set_by_name = {part.split("=", 1)[0] for part in s.name.split(",")}
            for key in PRESET_RECIPE:
                ran = s.runs[0].cfg.get(key)
                if key in flat and key.removeprefix("optim.") not in set_by_name and ran != flat[key]:
                    lost.setdefault(key, f"{key.removeprefix('optim.')} {_value(flat[key])} → {_value(ran)}")
        if lost:
            lines.append(f"- {preset}: the base's {', '.join(lost[k] for k in PRESET_RECIPE if k in lost)}")
    if len(lines) == 1:
        lines[0] += " Here the base's recipe equals what every variant ran, so nothing was lost."
    return lines + [""]


def save_figure(fig, path) -> None:
    """A matplotlib figure as a PNG at `path`, a local path or a bucket URL."""
    buffer = io.BytesIO()  # matplotlib writes to a file object; the bytes go where the report goes
    fig.savefig(buffer, format="png", dpi=120)
    storage.write_atomic(path, buffer.getvalue())


def _plots(root, settings: list[Setting], best: dict[str, dict[str, Setting]], unit: Unit
           ) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    import numpy as np

    # One colour per optimizer in both plots; one line style per execution mode when they are mixed.
    names = sorted({s.optimizer for s in settings})
    colour = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}
    mixed = len(best) > 1
    style = {mode: ("-", "--", ":", "-.")[i % 4] for i, mode in enumerate(sorted(best))}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, best_of_mode in best.items():
        for name, s in best_of_mode.items():
            # Median and range over seeds at the steps every seed has logged.
            steps = sorted(set.intersection(*({r["step"] for r in run.val} for run in s.runs if run.val)))
            if not steps:
                continue
            loss_SR = np.array([[next(r["loss"] for r in run.val if r["step"] == t)
                                 for run in s.runs if run.val] for t in steps])
            label = f"{name} ({'ρ' if s.relative_step else 'lr'} {s.lr:.3g})" + (f", {mode}" if mixed else "")
            ax.plot(steps, np.median(loss_SR, axis=1), color=colour[name], linestyle=style[mode], label=label)
            ax.fill_between(steps, loss_SR.min(axis=1), loss_SR.max(axis=1), color=colour[name], alpha=0.2)
    ax.set(xlabel="step", ylabel=f"validation loss ({unit.name})",
           title="validation loss at each optimizer's best step size: median over seeds, band = min–max")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, root / "curves.png")
    plt.close(fig)

    # A learning rate and Adafactor's relative step are different quantities: one axis each.
    panels = [(False, "learning rate"), (True, "Adafactor relative step ρ (step = ρ·RMS(θ))")]
    panels = [(rel, text) for rel, text in panels if any(s.relative_step == rel and s.done for s in settings)]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels) if len(panels) > 1 else 7, 4.5),
                             squeeze=False)
    for ax, (relative, xlabel) in zip(axes[0], panels, strict=True):
        groups: dict[tuple[str, str], list[Setting]] = defaultdict(list)
        for s in settings:
            if s.done and s.relative_step == relative:
                groups[s.optimizer, s.mode].append(s)
        for (name, mode), group in sorted(groups.items()):
            group = sorted(group, key=lambda s: s.lr)
            means, halves = zip(*(s.final for s in group), strict=True)
            ax.errorbar([s.lr for s in group], means, yerr=np.nan_to_num(halves), marker="o", capsize=3,
                        color=colour[name], linestyle=style.get(mode, "-"),
                        label=name + (f", {mode}" if mixed else ""))
        ax.set(xscale="log", xlabel=xlabel, ylabel=f"final validation loss ({unit.name})",
               title="sensitivity: mean over seeds ± 95% CI")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, root / "lr_sensitivity.png")
    plt.close(fig)
    return ["curves.png", "lr_sensitivity.png"]


def _units(runs: list[RunInfo]) -> tuple[Unit, str]:
    units = sorted({loss_unit(r.cfg) for r in runs}, key=lambda u: u.name)
    if len(units) == 1:
        return units[0], units[0].name
    # Different units in one sweep: no comparison between them means anything; say so up front.
    return Unit("mixed units", False), "**mixed units: " + "; ".join(u.name for u in units) + "**"


def _comparison(settings: list[Setting], target: float | None, unit: Unit, warnings: list[str]
                ) -> list[str]:
    """The best step size per optimizer, time to a target and paired differences, for settings of one
    execution mode."""
    best = best_per_optimizer(settings)
    if not best:
        return ["", "No variant has finished yet."]
    target = default_target(best) if target is None else target
    bits = " | bits/byte" if unit.per_byte else ""
    lines = ["", "### Best step size per optimizer, and time to a target loss", "",
             f"Target validation loss {target:.3f} (first evaluation at or below it). Seconds are "
             f"`elapsed_s`, training time after compilation, and mean something only beside seconds of "
             f"the same execution (last column): a vmapped trial's are its group's wall time, and other "
             f"processes on the machine slow a run down.", "",
             f"| optimizer | best lr | best relative step ρ | final val loss{bits} | reached "
             f"| steps to target | seconds to target | execution |",
             "| --- | --- | --- | ---" + (" | ---" if unit.per_byte else "") + " | --- | --- | --- | --- |"]
    executions = set()
    for name, s in best.items():
        hits = [h for h in (time_to_target(r, target) for r in s.done) if h is not None]
        steps = _fmt(*mean_ci([float(h[0]) for h in hits]), digits=0) if hits else "not reached"
        secs = _fmt(*mean_ci([h[1] for h in hits]), digits=1) if hits else "–"
        if any(r.resumed for r in s.done) and hits:
            secs += " (resumed: time since the last start only)"
        how = _execution(s.done)
        executions.add(how.split(";")[0])
        lr, rho = _step_size(s)
        extra = f" | {_bits(*s.final)}" if unit.per_byte else ""
        lines.append(f"| {name} | {lr} | {rho} | {_fmt(*s.final)}{extra} | {len(hits)}/{len(s.done)} "
                     f"| {steps} | {secs} | {how} |")
        edge = grid_edge(settings, s)
        if edge:
            warnings.append(f"{name} ({s.mode}): {edge}.")
        if len(s.done) < MIN_SEEDS:
            warnings.append(f"{name} ({s.mode}): {len(s.done)} finished seed(s) behind its best setting; "
                            f"intervals need at least {MIN_SEEDS} to mean much.")
    if len(executions) > 1:
        lines += ["", f"**Seconds are not comparable between these rows**: they ran as "
                      f"{' / '.join(sorted(executions))}. Compare steps to target instead."]
    if len(best) > 1:
        reference, diffs = paired_differences(best)
        verdicts = {name: verdict(name, reference, *d) for name, d in diffs.items()}
        clearly_worse = [name for name, (m, h, n) in diffs.items() if n >= 2 and not math.isnan(h) and m > h]
        tied = [name for name in diffs if name not in clearly_worse]
        if not tied:
            summary = (f"{reference} has the lowest final loss, and every other optimizer's is higher by an "
                       f"interval that excludes 0.")
        else:
            summary = (f"No single best optimizer: {reference} has the lowest mean, but the seeds do not "
                       f"separate it from {', '.join(tied)}.")
        lines += ["", f"### Paired differences, each optimizer minus {reference} (the lowest mean)", "",
                  "Final loss of each optimizer at its best step size minus the reference's at its best, "
                  "seed by seed (same seed: same initial parameters and batches). An interval that contains "
                  "0 is no difference the seeds agree on.", "", summary, "",
                  f"| optimizer | minus {reference} | pairs | verdict |", "| --- | --- | --- | --- |"]
        for name, (mean, half, n) in diffs.items():
            lines.append(f"| {name} | {_fmt(mean, half)} | {n} | {verdicts[name]} |")
    return lines


def render(root, runs: list[RunInfo], target: float | None = None, plots: list[str] = ()) -> str:
    """The report's markdown for `runs` (see the module docstring and docs/reports.md)."""
    settings = settings_of(runs)
    modes = by_mode(settings)
    done = sum(r.finished for r in runs)
    unit, unit_text = _units(runs)
    # The sweep's own list (sweep.json) also counts the variants not started yet.
    sweep = _listing(root)
    planned = sweep.get("variants", [])
    not_started = sorted(set(planned) - {r.name for r in runs})
    bits_note = " (bits/byte = nats/byte ÷ ln 2 beside them)" if unit.per_byte else ""
    lines = [f"# Sweep report: {root.name}", "",
             f"{done} of {len(runs) + len(not_started)} variants finished; numbers are validation losses in "
             f"{unit_text}{bits_note} from `metrics.jsonl`, mean ± 95% t-interval over seeds of the finished "
             f"runs.", ""]
    lines += environment(runs) + [""]
    counts = {m: sum(len(s.runs) for s in ss) for m, ss in modes.items()}
    lines.append("Execution: " + "; ".join(f"{m} ({MODE_MEANING.get(m, 'resumed in another mode')}), {n} runs"
                                           for m, n in counts.items()) + ".")
    if len(modes) > 1:
        lines += ["", "**Runs of more than one execution mode.** Vmapped and separate runs of one setting "
                      "need not give the same losses (docs/reports.md), so they are kept apart: settings "
                      "are split by mode and each mode gets its own comparison below."]
    warnings: list[str] = []
    rows = []
    mixed = len(modes) > 1
    for s in settings:
        mark = "" if len(s.done) == len(s.runs) else " (unfinished runs excluded)"
        lr, rho = _step_size(s)
        extra = f" | {_bits(*s.final)}" if unit.per_byte else ""
        mode = f" | {s.mode}" if mixed else ""
        rows.append(f"| {s.optimizer} | {lr} | {rho}{mode} | {len(s.done)}/{len(s.runs)}{mark} "
                    f"| {_fmt(*s.final)}{extra} |")
    head = ("| optimizer | lr | relative step ρ" + (" | mode" if mixed else "")
            + " | runs done | final val loss" + (" | bits/byte |" if unit.per_byte else " |"))
    sections = []
    for mode, group in modes.items():
        if mixed:
            sections += ["", f"## Comparison within the {mode} runs"]
        else:
            sections += ["", "## Comparison"]
        sections += _comparison(group, target, unit, warnings)
    body = ["", "## Final loss per setting", "",
            "`lr` is a learning rate; Adafactor's relative step ρ is a step size relative to each "
            "parameter's RMS, on another scale: the two are never on one column or axis.", "",
            head, "|" + " --- |" * (head.count("|") - 1)]
    body += rows
    loaded = [r for r in runs if r.loaded]
    if loaded:
        worst = max(loaded, key=lambda r: r.load / r.cpus)
        warnings.append(f"{len(loaded)} run(s) started on a loaded machine, up to load average "
                        f"{worst.load:.1f} on {worst.cpus} CPUs (`{worst.name}`): other processes slowed "
                        f"them, so their seconds and tokens/s understate the machine; compare steps.")
    lines += ["", *recipe_section(settings, sweep.get("base"))]
    if warnings:
        lines += ["## Read with care", ""] + [f"- {w}" for w in warnings] + [""]
    lines += body + sections
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
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)) + "\n"  # sections end blank and start blank


def write_report(root: storage.PathLike, target: float | None = None):
    """Write `root/report.md` with `curves.png` and `lr_sensitivity.png` beside it; return its path."""
    root = storage.path(root)
    runs = load_runs(root)
    _listing(root)  # damaged: said before the plots are drawn
    settings = settings_of(runs)
    best = {mode: b for mode, group in by_mode(settings).items() if (b := best_per_optimizer(group))}
    plots = _plots(root, settings, best, _units(runs)[0]) if best else []
    path = root / "report.md"
    storage.write_atomic(path, render(root, runs, target, plots))
    return path
