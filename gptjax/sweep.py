"""Sweeps: an experiment's named variants, expanded from its `get_sweep()`, each trained into its own workdir.

An experiment file may define `get_sweep(base) -> dict[str, Experiment]`, `base` being its `get_config()`
with the command line's overrides applied; every variant is a `dataclasses.replace` of it, built with the
helpers here: `grid` (every combination of a few values per field), `per_optimizer` (a grid per preset,
over values of its own), `quasi_random` (Halton or Sobol points in continuous ranges, log-uniform where
asked) and `with_seeds`. `run_sweep` trains each variant in a
subprocess into `runs/<experiment>/<variant>/`, several at once with `jobs`, only every N-th with a shard
i/N; a finished variant (its `status.json` says done) is skipped, an interrupted one resumes from its
checkpoints (train() does that for any workdir that holds some), a failed one is recorded with its error
and the others go on. Variants that share `train.seed` share their initial parameters and batch order, so
their differences are the optimizer's (paired by construction). With `vmap`, variants that differ only in
the traceable hyperparameters of one update rule (`TRACEABLE` in gptjax/optimizers.py) are trained as a
group in one process and one vmapped program (gptjax/trials.py), each still into its own workdir with its
own metrics and checkpoints; the others run as above.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gptjax import storage
from gptjax.checkpoint import checkpoint_step
from gptjax.config import (
    PRESETS,
    ConfigError,
    Experiment,
    experiment_path,
    from_dict,
    to_dict,
    validate,
)
from gptjax.guards import (
    EXIT_BAD_INPUT,
    EXIT_PREEMPTED,
    ObjectLock,
    Preempted,
    StopSignals,
    WorkdirLock,
    check_writable,
    stopped,
)

NAME_RE = re.compile(r"[A-Za-z0-9_.=,+-]+")
STATUS = "status.json"  # in each variant's workdir: {"status": "done" | "failed" | "running", ...}
CPUS_ENV = "GPTJAX_SWEEP_CPUS"  # a sweep child's cores, comma-separated (`cpu_slots`)

def replace_path(cfg: Experiment, path: str, value: Any) -> Experiment:
    """`cfg` with the field at dotted `path` (e.g. "optim.lr") set to `value`; "optim.preset" swaps in the
    whole preset, as on the command line, so a preset axis compares the presets exactly as defined."""
    if path == "optim.preset":
        if value not in PRESETS:
            raise ConfigError(f"unknown optimizer preset {value!r}; known: {', '.join(PRESETS)}")
        return dataclasses.replace(cfg, optim=PRESETS[value])
    head, _, rest = path.partition(".")
    names = [f.name for f in dataclasses.fields(cfg)]
    if head not in names:
        raise ConfigError(f"sweep axis {path!r}: no field {head!r} in {type(cfg).__name__}; known: "
                          f"{', '.join(names)}")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: replace_path(getattr(cfg, head), rest, value)})


def _label(path: str, value: Any) -> str:
    key = path.rsplit(".", 1)[-1]
    if isinstance(value, float):
        value = f"{value:.3g}"
    return f"{key}={value}"


def variant_name(changes: dict[str, Any]) -> str:
    """`preset=gpt2_adam,lr=0.001,seed=0` for {"optim.preset": "gpt2_adam", "optim.lr": 1e-3, ...}: the
    last component of each path with its value (floats to 3 significant digits), in the given order."""
    return ",".join(_label(path, value) for path, value in changes.items())


def apply_changes(base: Experiment, changes: dict[str, Any]) -> Experiment:
    # Presets first, so that a later "optim.lr" refines the preset instead of being replaced by it.
    ordered = sorted(changes.items(), key=lambda item: item[0] != "optim.preset")
    for path, value in ordered:
        base = replace_path(base, path, value)
    return base


def grid(base: Experiment, axes: dict[str, Sequence[Any]]) -> dict[str, Experiment]:
    """Every combination of the values of `axes` (dotted path → values), named by `variant_name`."""
    paths = list(axes)
    variants = {}
    for values in itertools.product(*(axes[p] for p in paths)):
        changes = dict(zip(paths, values, strict=True))
        variants[variant_name(changes)] = apply_changes(base, changes)
    return variants


def quasi_random(base: Experiment, ranges: dict[str, tuple[float, float, str]], n: int, *,
                 method: str = "halton", seed: int = 0) -> dict[str, Experiment]:
    """`n` variants at low-discrepancy points of the box `ranges` (dotted path → (low, high, "log" or
    "linear")): scrambled Halton or Sobol from scipy, which cover a range more evenly than random draws
    and, unlike a grid, give every trial a distinct value on every axis."""
    from scipy.stats import qmc

    samplers = {"halton": qmc.Halton, "sobol": qmc.Sobol}
    if method not in samplers:
        raise ConfigError(f"unknown quasi-random method {method!r}; known: {', '.join(samplers)}")
    for path, (low, high, scale) in ranges.items():
        if scale not in ("log", "linear") or not low < high or (scale == "log" and low <= 0):
            raise ConfigError(f"sweep range {path}: need low < high (> 0 for log) and 'log' or 'linear', "
                              f"got {(low, high, scale)}")
    unit_ND = samplers[method](d=len(ranges), scramble=True, seed=seed).random(n)
    variants = {}
    for point_D in unit_ND:
        changes = {}
        for (path, (low, high, scale)), u in zip(ranges.items(), point_D, strict=True):
            if scale == "log":
                changes[path] = float(math.exp(math.log(low) + u * (math.log(high) - math.log(low))))
            else:
                changes[path] = float(low + u * (high - low))
        variants[variant_name(changes)] = apply_changes(base, changes)
    return variants


def with_seeds(variants: dict[str, Experiment], seeds: Sequence[int]) -> dict[str, Experiment]:
    """Each variant once per seed, named `<name>,seed=<s>`: the seeds are the replicates a report averages
    over, and the same seed gives every variant the same initial parameters and batches."""
    return {f"{name},seed={s}": replace_path(cfg, "train.seed", s)
            for name, cfg in variants.items() for s in seeds}


@dataclasses.dataclass(frozen=True)
class Times:
    """A sweep value relative to the preset's own: `Times(10)` on "optim.lr" is ten times the preset's lr."""

    factor: float


def _field(cfg: Any, path: str) -> Any:
    for name in path.split("."):
        if not hasattr(cfg, name):
            raise ConfigError(f"sweep axis {path!r}: no field {name!r} in {type(cfg).__name__}")
        cfg = getattr(cfg, name)
    return cfg


def per_optimizer(base: Experiment, spaces: dict[str, dict[str, Sequence[Any]]]) -> dict[str, Experiment]:
    """A grid per optimizer preset over axes of its own: {"gpt2_adam": {"optim.lr": [1e-4, 1e-3]},
    "t5_adafactor": {"optim.lr": [Times(1), Times(10)]}}, since Adam's step sizes and Adafactor's relative
    steps share no scale. A `Times(k)` value is k times the preset's own value of that field. Each
    variant is `apply_changes(base, {"optim.preset": preset, **point})`, named `preset=…,lr=…` by
    `variant_name`; the preset swaps in its whole definition, as everywhere (docs/reports.md)."""
    variants = {}
    for preset, axes in spaces.items():
        own = apply_changes(base, {"optim.preset": preset})
        paths = list(axes)
        values = [[_field(own, p) * v.factor if isinstance(v, Times) else v for v in axes[p]] for p in paths]
        for point in itertools.product(*values):
            changes = {"optim.preset": preset, **dict(zip(paths, point, strict=True))}
            variants[variant_name(changes)] = apply_changes(base, changes)
    return variants


def load_sweep(experiment: str, overrides: Sequence[str] = ()) -> tuple[Experiment, dict[str, Experiment]]:
    """The base config (with the overrides) and the validated variants of an experiment's `get_sweep()`."""
    from gptjax.config import load_experiment

    base = load_experiment(experiment, list(overrides))
    path, module = _module(experiment)
    if not hasattr(module, "get_sweep"):
        raise ConfigError(f"experiment file {path} defines no get_sweep(); a sweep needs one "
                          f"(see experiments/optimizer_comparison.py)")
    try:
        variants = module.get_sweep(base)
    except Exception as e:  # the user's code: where it failed, in one line
        raise ConfigError(f"experiment file {path}: get_sweep() raised {type(e).__name__}: {e}") from None
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{path}: get_sweep() must return a non-empty dict of name → Experiment")
    for name, cfg in variants.items():
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ConfigError(f"{path}: variant name {name!r} must use only letters, digits and _.=,+-")
        if not isinstance(cfg, Experiment):
            raise ConfigError(f"{path}: variant {name!r} is a {type(cfg).__name__}, not an Experiment")
        try:
            validate(cfg)
        except ConfigError as e:
            raise ConfigError(f"variant {name!r}: {e}") from None
    return base, {name: dataclasses.replace(cfg, name=base.name) for name, cfg in variants.items()}


def _module(experiment: str):
    """(path, module) of an experiment file, loaded afresh."""
    import importlib.util

    path = experiment_path(experiment)
    spec = importlib.util.spec_from_file_location(f"gptjax_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file: report where it failed, in one line
        raise ConfigError(f"experiment file {path} failed to load: {type(e).__name__}: {e}") from None
    return path, module


def defines_sweep(experiment: str) -> bool:
    """Whether the experiment file defines `get_sweep()`."""
    return hasattr(_module(experiment)[1], "get_sweep")


def experiment_report(experiment: str) -> Callable | None:
    """The report of its own that a sweep's experiment file may define, `write_report(root)` (the optimizer
    benchmark's scores), which `make experiment` and `report` write after the common one; else None."""
    report = getattr(_module(experiment)[1], "write_report", None)
    return report if callable(report) else None


def machine() -> tuple[int, str]:
    """(cores this process may use, "cpu" or the accelerator JAX will compute on: "gpu", "tpu"), decided
    without importing JAX: `JAX_PLATFORMS`' first entry if set, else the machine's NVIDIA or TPU device
    files."""
    cores = len(os.sched_getaffinity(0))
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        first = platforms.split(",")[0].strip()
        return cores, "cpu" if first == "cpu" else ("tpu" if first == "tpu" else "gpu")
    if Path("/dev/nvidia0").exists():
        return cores, "gpu"
    if any(Path("/dev").glob("accel[0-9]*")) or Path("/dev/vfio/0").exists():
        return cores, "tpu"
    return cores, "cpu"


@dataclasses.dataclass(frozen=True)
class Parallelism:
    """How a sweep runs its variants when the command line does not say: `jobs` children at once, variants
    that can share a vmapped program grouped (`vmap`), and why, in words for the line a sweep prints."""

    jobs: int
    vmap: bool
    why: str


def choose_parallelism(cores: int, device: str) -> Parallelism:
    """The fastest way measured to run a sweep on this machine (benchmarks/README.md, "Sweep throughput").
    On a CPU: one child per core, each confined to its own core (`cpu_slots`), and vmapped groups, which
    share one start-up, one compile and one program among a group's trials. On a GPU or TPU: one child,
    since each JAX process claims most of the accelerator's memory, and vmapped groups, since one small
    trial leaves most of the accelerator idle. Vectorising is chosen alike on every machine, so that hosts
    that split a sweep with `--shard` split it into the same units."""
    if device == "cpu":
        jobs = max(1, cores)
        return Parallelism(jobs, True, f"{cores}-core CPU: {jobs} job(s)"
                           + (", one core each" if jobs > 1 else "") + ", vmapped groups")
    return Parallelism(1, True, f"{device.upper()}: 1 job (each process claims most of its memory), "
                                "vmapped groups")


def resolve_parallelism(jobs: int | None, vmap: bool | None, chosen: Parallelism | None = None, *,
                        split: bool = False) -> tuple[int, bool, str]:
    """(jobs, vmap, the line a sweep prints about what it chose, "" if the command line gave both): what
    the command line gave, the rest from `choose_parallelism` for this machine (or `chosen`). A sweep
    split across hosts (`split`: a shard of several, or `--per-host`) is not vmapped unless asked, since
    a vmapped group trains on one host and the shards would be split by groups, leaving hosts idle."""
    chosen = chosen or choose_parallelism(*machine())
    picked = [what for what, given in (("jobs", jobs), ("vmap", vmap)) if given is None]
    jobs = chosen.jobs if jobs is None else jobs
    why = chosen.why
    if vmap is None and split:
        vmap, why = False, f"{why} (vmap off: the sweep is split across hosts)"
    vmap = chosen.vmap if vmap is None else vmap
    how = f"{jobs} job(s)" + (", one vmapped program per group of variants" if vmap else ", no vmap")
    if not picked:
        return jobs, vmap, ""
    return jobs, vmap, (f"parallelism: {how} ({' and '.join(picked)} chosen for this machine, {why}; "
                        "--jobs N and --vmap/--no-vmap choose)")


def cpu_slots(jobs: int, cpus: Sequence[int] | None = None) -> list[frozenset[int]] | None:
    """The cores of each of `jobs` children running at once: this process's cores (or `cpus`) split into
    `jobs` disjoint sets of equal size, the remainder left out. XLA's CPU client sizes its thread pool by
    the cores its process may run on, and its flags do not confine it (with `--xla_cpu_multi_thread_eigen=
    false` a child still kept 3-4 threads busy on 2 cores), so an affinity mask is what gives each child
    its share. None (no confinement) for one job, or for more jobs than cores."""
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if jobs <= 1 or jobs > len(cpus):
        return None
    width = len(cpus) // jobs
    return [frozenset(cpus[k * width:(k + 1) * width]) for k in range(jobs)]


def parse_shard(text: str) -> tuple[int, int]:
    """"i/N" → (i, N) with 0 <= i < N: this host runs the variants whose index is i modulo N."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not int(match.group(2)) > int(match.group(1)) >= 0:
        raise ConfigError(f"--shard must be i/N with 0 <= i < N (e.g. 0/4), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def shard_variants(names: Sequence[str], shard: tuple[int, int]) -> list[str]:
    """The names of shard i of N: every N-th, by position in sorted order, so that every host computes the
    same split from the same experiment file and each variant lands on exactly one host."""
    i, n = shard
    return [name for k, name in enumerate(sorted(names)) if k % n == i]


def _group_key(cfg: Experiment) -> str | None:
    # The config with its traceable fields blanked: equal keys, one program. Sharded (fsdp, tensor) or
    # multi-host trials stay alone, since a vmapped group keeps its stacked state replicated, and so do
    # runs started from another's parameters (train.init_from), which the group's one init cannot serve.
    from gptjax.trials import traceable

    fields = traceable(cfg.optim.rule)
    t = cfg.train
    if not fields or t.fsdp != 1 or t.tensor != 1 or t.distributed or t.init_from:
        return None
    blank = dataclasses.replace(cfg.optim, preset="", **{f: 0.0 for f in fields})
    return json.dumps(to_dict(dataclasses.replace(cfg, optim=blank)), sort_keys=True)


def vmap_groups(variants: dict[str, Experiment], resume_steps: dict[str, int] | None = None
                ) -> list[list[str]]:
    """`variants` partitioned into the units a vmapped sweep trains together, sorted: variants whose
    configs are equal but for their rule's `TRACEABLE` fields (gptjax/optimizers.py) and the preset's name
    share a unit, unless `resume_steps` puts them at different checkpoints (a group steps in lockstep); every
    other variant is a unit of its own, trained as without vmap. Seeds are not vmapped: a seed changes
    the initial parameters and the batches, which one shared batch per step cannot serve."""
    resume_steps = resume_steps or {}
    groups: dict[tuple[str, int], list[str]] = {}
    units = []
    for name in sorted(variants):
        key = _group_key(variants[name])
        if key is None:
            units.append([name])
        else:
            groups.setdefault((key, resume_steps.get(name, 0)), []).append(name)
    return sorted(units + list(groups.values()))


def shard_units(units: Sequence[Sequence[str]], shard: tuple[int, int]) -> list[list[str]]:
    """Shard i of N of `units` (as `shard_variants`, a vmapped group counting as one)."""
    i, n = shard
    return [list(unit) for k, unit in enumerate(sorted(units)) if k % n == i]


def read_status(workdir: storage.PathLike) -> dict[str, Any]:
    path = storage.path(workdir) / STATUS
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged: unknown, so the variant is run (and resumes)
        return {}
    return status if isinstance(status, dict) else {}


def _write_status(workdir: storage.PathLike, **values: Any) -> None:
    # Atomic: a report made meanwhile never reads half a file.
    storage.write_atomic(storage.path(workdir) / STATUS, json.dumps(values) + "\n")


def _log_file(root, name: str):
    """Where a variant's output goes as it runs: its `log.txt`, or for a sweep in a bucket a local file
    (a child's output needs a file descriptor) copied to the bucket when the variant finishes."""
    if not storage.is_remote(root):
        return root / name / "log.txt"
    local = storage.path(tempfile.gettempdir()) / "gptjax-sweep-logs" / os.fspath(root).replace("://", "/")
    local.joinpath(name).mkdir(parents=True, exist_ok=True)
    return local / name / "log.txt"


def _last_error(log) -> str:
    lines = [line.strip() for line in log.read_bytes().decode(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):  # the exception's own line, not the traceback's frames
        if re.match(r"^(error|[A-Za-z_.]*(Error|Exception|Diverged|Preempted)\b)", line):
            return line[:500]
    return lines[-1][:500] if lines else "no output"


def _start(unit: Sequence[str], variants: dict[str, Experiment], root,
           child_env: dict[str, str] | None = None, cpus: frozenset[int] | None = None) -> subprocess.Popen:
    # One child per unit: a variant alone, or a vmapped group whose output goes to its first log.
    for name in unit:
        (root / name).mkdir(parents=True, exist_ok=True)
        storage.write_atomic(root / name / "variant.json",
                             json.dumps(to_dict(variants[name]), indent=2) + "\n")
    for name in unit[1:]:
        with _log_file(root, name).open("a") as log:
            log.write(f"trained vmapped with {', '.join(n for n in unit if n != name)}; the group's "
                      f"output is in ../{unit[0]}/log.txt\n")
    env = {**os.environ, **(child_env or {})}
    if cpus:  # the child confines itself to these cores before JAX starts its threads (`cpu_slots`)
        env[CPUS_ENV] = ",".join(str(c) for c in sorted(cpus))
    with _log_file(root, unit[0]).open("a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gptjax.sweep", *(str(root / n) for n in unit)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    for name in unit:
        _write_status(root / name, status="running", pid=proc.pid, started=time.time())
    return proc


class VariantLock(WorkdirLock):
    """The sweep's lock on one variant (`<variant>/.sweep.lock`, an exclusive `flock` the kernel drops
    however the sweep dies), held while the variant's child runs: only its holder writes the variant's
    `variant.json`, `status.json` and `log.txt`, so a second sweep on the same directory leaves a variant
    that another one is training alone (and says so) instead of recording it as failed."""

    def __init__(self, workdir: storage.PathLike):
        super().__init__(workdir)
        self.path = storage.path(workdir) / ".sweep.lock"

    def take(self) -> str:
        """Take the lock: "" once held, else who holds it ("pid N on host")."""
        try:
            self.__enter__()
        except ConfigError:
            return self.path.read_text().strip() or "another sweep"
        return ""


class ObjectVariantLock(ObjectLock):
    """`VariantLock` of a sweep in a bucket: the lock object `<variant>/.sweep.lock`, with `ObjectLock`'s
    heartbeat and take-over of a lock whose holder died."""

    KEY = ".sweep.lock"

    def take(self) -> str:
        """Take the lock: "" once held, else who holds it."""
        try:
            self.__enter__()
        except ConfigError:
            return self.holder
        return ""


def variant_lock(workdir: storage.PathLike) -> VariantLock | ObjectVariantLock:
    """The sweep's lock on a variant: `flock` on a local disk, a lock object on a bucket."""
    workdir = storage.path(workdir)
    return ObjectVariantLock(os.fspath(workdir)) if storage.is_remote(workdir) else VariantLock(workdir)


def _done(workdir: storage.PathLike, cfg: Experiment) -> bool:
    # Done means done to the variant's current train.steps: raising the steps trains it on.
    status = read_status(workdir)
    return status.get("status") == "done" and status.get("steps") == cfg.train.steps


def run_sweep(experiment: str, overrides: Sequence[str] = (), *, root: storage.PathLike | None = None,
              jobs: int | None = 1, shard: tuple[int, int] = (0, 1), vmap: bool | None = False,
              per_host: bool = False,
              child_env: dict[str, str] | None = None, log=print) -> dict[str, dict[str, Any]]:
    """Train every variant of `experiment`'s sweep (this shard's) into `root/<variant>/` (default
    `runs/<experiment>`), `jobs` subprocesses at a time; return each variant's status. Finished variants
    are skipped, interrupted ones resumed, failed ones recorded in their `status.json` with the error's
    last line (their `log.txt` holds the whole output) while the others continue. With `vmap`, the
    `vmap_groups` of the variants are the units (sharded, and each trained in one subprocess) and a line
    names the variants that no other variant could share a program with. `jobs` or `vmap` None: chosen
    for this machine (`resolve_parallelism`), and a line says what was chosen. A variant whose `VariantLock`
    another sweep holds is left alone, with the status {"status": "running elsewhere", "holder": …}
    returned (and nothing written into it). SIGTERM/SIGINT: no new child starts, the running ones get
    the signal, checkpoint and exit, each is recorded `stopped` at its checkpointed step, then
    `Preempted` is raised. `root` may be a bucket (gs://…): each variant's output is then logged locally
    and copied to its `log.txt` when it finishes. `per_host` (the shard is this host's, gptjax/hosts.py)
    refuses variants that join a multi-host job; `child_env` is added to each child's environment."""
    base, variants = load_sweep(experiment, overrides)
    root = storage.path(root or f"runs/{base.name}")
    if root.exists() and not root.is_dir():
        raise ConfigError(f"sweep directory {root} exists and is not a directory")
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    jobs, vmap, parallelism = resolve_parallelism(jobs, vmap, split=shard[1] > 1 or per_host)
    if per_host and (joined := sorted(n for n, v in variants.items() if v.train.distributed)):
        raise ConfigError(f"--per-host trains each variant on one host's devices, but {joined[0]} sets "
                          "train.distributed=true (a job across hosts); drop --per-host to run it on all")
    check_writable(root, "sweep directory")
    # Shards are drawn from the whole sweep, not from what is left, so every host splits it alike.
    if vmap:
        mine = [name for unit in shard_units(vmap_groups(variants), shard) for name in unit]
    else:
        mine = shard_variants(list(variants), shard)
    root.mkdir(parents=True, exist_ok=True)
    # Written whole under a temporary name of this process's: two sweeps at once each write the same listing.
    storage.write_atomic(root / "sweep.json", json.dumps({"experiment": base.name,
                                                          "variants": sorted(variants)}, indent=2) + "\n")
    todo = [name for name in mine if not _done(root / name, variants[name])]
    log(f"sweep {base.name}: {len(variants)} variants, {len(mine)} in shard {shard[0]}/{shard[1]}, "
        f"{len(mine) - len(todo)} already done, {len(todo)} to run with {jobs} job(s) in {root}")
    if parallelism:
        log(parallelism)
    if vmap:
        # Regrouped among those left, at their checkpoints: a group resumes in lockstep from one step.
        queue = vmap_groups({n: variants[n] for n in todo}, {n: checkpoint_step(root / n) for n in todo})
        alone = [unit[0] for unit in queue if len(unit) == 1]
        log(f"vmap: {len(todo) - len(alone)} variants in {len(queue) - len(alone)} vmapped group(s)"
            + (f"; on their own, as without --vmap (no other variant differs from them only in "
               f"vectorisable optimizer fields): {', '.join(alone)}" if alone else ""))
    else:
        queue = [[name] for name in todo]
    # Each child at once gets its own share of the cores; fewer units than jobs get wider shares.
    slots = cpu_slots(min(jobs, len(queue)))
    free_slots, slot_of = list(range(len(slots or []))), {}
    results = {name: read_status(root / name) for name in mine if name not in todo}
    running: dict[tuple[str, ...], tuple[subprocess.Popen, float, list, dict]] = {}
    counter = {"finished": 0}

    def record(unit: tuple[str, ...], proc: subprocess.Popen, t0: float, locks: list,
               before: dict[str, dict]) -> None:
        seconds = time.time() - t0
        error = _last_error(_log_file(root, unit[0])) if proc.returncode else ""
        if storage.is_remote(root):
            for name in unit:
                storage.write_atomic(root / name / "log.txt", _log_file(root, name).read_bytes())
        how = f" (vmapped, {len(unit)} trials)" if len(unit) > 1 else ""
        for name in unit:
            counter["finished"] += 1
            tally = f"[{counter['finished']}/{len(todo)}] {name}"
            previous = read_status(root / name)
            if proc.returncode == 0 and previous.get("status") == "failed":
                status = previous  # a vmapped trial that diverged while the others trained on
            elif proc.returncode == 0:
                status = {"status": "done", "steps": variants[name].train.steps, "seconds": seconds}
                log(f"{tally}: done in {seconds:.0f} s{how}")
            elif proc.returncode in (EXIT_PREEMPTED, -signal.SIGTERM, -signal.SIGINT):
                # (a child that the signal reached before it could catch one had not trained yet)
                status = {"status": "stopped", "step": checkpoint_step(root / name), "seconds": seconds}
                log(f"{tally}: stopped at step {status['step']}, its checkpoint; the same command resumes it")
            elif proc.returncode == EXIT_BAD_INPUT and "is in use by" in error:
                # Its workdir is being trained by a `train` outside any sweep: not this variant's failure.
                results[name] = {"status": "running elsewhere", "holder": error}
                log(f"{tally}: running elsewhere ({error}); left alone")
                if before[name]:
                    _write_status(root / name, **before[name])
                else:
                    (root / name / STATUS).unlink()
                continue
            else:
                status = {"status": "failed", "returncode": proc.returncode, "error": error,
                          "seconds": seconds}
            if status["status"] == "failed":
                log(f"{tally}: FAILED (exit {status['returncode']}){how}: {status['error']}")
            _write_status(root / name, **status)
            results[name] = status
        for lock in locks:
            lock.__exit__()

    def start(unit: list[str]) -> None:
        locks, free = [], []
        for name in unit:
            lock = variant_lock(root / name)
            holder = lock.take()
            if holder:
                results[name] = {"status": "running elsewhere", "holder": holder}
                log(f"{name}: running elsewhere ({holder}); left alone")
            elif _done(root / name, variants[name]):  # finished by another sweep since the count above
                lock.__exit__()
                results[name] = read_status(root / name)
            else:
                locks.append(lock)
                free.append(name)
        if free:
            before = {name: read_status(root / name) for name in free}
            slot = free_slots.pop(0) if slots else None
            cpus = slots[slot] if slots else None
            running[tuple(free)] = (_start(free, variants, root, child_env, cpus), time.time(), locks,
                                    before)
            if slots:
                slot_of[tuple(free)] = slot

    with StopSignals() as stop:
        try:
            while (queue or running) and not stop.received:
                while queue and len(running) < jobs and not stop.received:
                    start(queue.pop(0))
                time.sleep(0.2)
                for unit, child in list(running.items()):
                    if child[0].poll() is not None:
                        del running[unit]
                        if unit in slot_of:
                            free_slots.append(slot_of.pop(unit))
                        record(unit, *child)
        finally:
            # Stopped (or failing): the children checkpoint and exit at the step they are on. A signal
            # from a terminal reached them already; one sent to this process alone is passed on.
            for proc, *_ in running.values():
                if stop.received and proc.poll() is None:
                    proc.send_signal(stop.received)
            for unit, child in running.items():
                child[0].wait()
                record(unit, *child)
    counts = {what: sorted(n for n, s in results.items() if s.get("status") == what)
              for what in ("done", "failed", "stopped", "running elsewhere")}
    log(f"sweep {base.name}: " + ", ".join(
        f"{len(names)} {what}" + (f": {', '.join(names)}" if names and what != "done" else "")
        for what, names in counts.items() if names or what in ("done", "failed")))
    if stop.received:
        raise Preempted(f"stopped by {stop.name}; the variants that were training checkpointed and are "
                        f"recorded as stopped; run the same command again to resume them")
    return results


def _guarded(work) -> tuple[int, Any]:
    """(exit code, result) of `work()` in a child process: bad input is 2, a stop or a divergence its own
    code, each with one line on stderr."""
    from gptjax.guards import Diverged, Preempted

    try:
        return 0, work()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2, None
    except (Preempted, Diverged) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return e.exit_code, None
    except KeyboardInterrupt as e:  # stopped outside the training loop (gptjax.guards.Interrupted)
        return stopped(e, "outside the training loop; the sweep resumes the variant"), None


def _run_variant(workdir) -> int:
    """Child process: train the variant whose config `run_sweep` left in `workdir/variant.json`."""
    from gptjax.train import train

    cfg = validate(from_dict(json.loads((workdir / "variant.json").read_text())))
    code, result = _guarded(lambda: train(cfg, workdir, execution="separate"))  # a process of its own
    if code == 0:
        print(f"final validation loss {result['val']['loss']:.4f} at step {result['step']}")
    return code


def _run_group(workdirs: Sequence) -> int:
    """Child process: train the variants left in `workdirs` by `run_sweep` as one vmapped group; a trial
    that diverges is recorded failed in its own `status.json` while the others train on."""
    from gptjax.guards import EXIT_DIVERGED
    from gptjax.train import train_trials

    trials = {w: validate(from_dict(json.loads((w / "variant.json").read_text()))) for w in workdirs}
    code, results = _guarded(lambda: train_trials(trials))
    if code:
        return code
    for workdir, result in results.items():
        if "diverged" in result:
            _write_status(workdir, status="failed", returncode=EXIT_DIVERGED,
                          error=f"Diverged: {result['diverged']}")
        else:
            print(f"{workdir.name}: final validation loss {result['val']['loss']:.4f} at step "
                  f"{result['step']}")
    return 0


if __name__ == "__main__":
    from gptjax.guards import stop_on_signals

    if os.environ.get(CPUS_ENV):  # before JAX sizes its thread pool by the cores this process may use
        os.sched_setaffinity(0, {int(c) for c in os.environ[CPUS_ENV].split(",")})
    stop_on_signals()
    paths = [storage.path(a) for a in sys.argv[1:]]
    sys.exit(_run_variant(paths[0]) if len(paths) == 1 else _run_group(paths))
