"""Trials per hour: 8 learning rates of the default model, one vmapped program vs one run after another.

    make bench-sweep   # python benchmarks/bench_sweep.py [--steps N] → benchmarks/results/sweep.json
    make bench-sweep-throughput   # python benchmarks/bench_sweep.py --throughput → sweep_throughput.json
    python benchmarks/bench_sweep.py --cli   # the two sweep commands → benchmarks/results/sweep_cli.json

Both sides train the same 8 trials (the default experiment, lr spread log-evenly over 5e-4 … 5e-3) for the
same steps on the same batches on CPU through the path the command line takes (`gptjax.train`): the
sequential side calls `train()` once per trial and compiles every trial (its learning rate is a constant
of its program, as in a normal run), the vmapped side calls `train_trials()` once and compiles once
(gptjax/trials.py). Each is timed from the call to its return, evaluation, metrics, checkpoints and
samples included, with the step compile times from the runs' setup records. Their losses must agree.
With `--cli`, what a user waits for instead: `python -m gptjax sweep x` (one process per trial, jobs 1)
against `python -m gptjax sweep x --vmap` (one process), start to exit.

With `--throughput` (`make bench-sweep-throughput`), trials per hour of the optimizer-comparison workload
(experiments/optimizer_comparison.py: the five forum presets × 2 learning rates × 3 seeds of the default
model, here at `--steps` 200 with its evaluation, checkpoints and samples) for each way the sweep command
can run it (`--jobs 1`, `--jobs <cores>` with each child confined to its share of the cores, `--vmap`, and
both), against the same trials in a nanoGPT-style PyTorch GPT (benchmarks/bench_torch.py's) trained one
after another → benchmarks/results/sweep_throughput.json. The PyTorch trials run in one process that is
timed from its first trial, so they pay no process start or import, which the sweep's children do: the
comparison leans towards PyTorch. `--quick` (2 presets × 2 rates × 1 seed, 20 steps, a few minutes)
proves the code and writes sweep_throughput_quick.json instead. `--modes jobs2,vmap_jobs2` measures those
modes (and PyTorch, unless `--no-torch`) again and replaces them in the results file, keeping the others:
each mode records when it was measured.
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from common import RESULTS, write_json

from gptjax.config import load_experiment
from gptjax.metrics import read_metrics
from gptjax.train import train, train_trials

SWEEP_FILE = """
import numpy as np
from gptjax.config import load_experiment
from gptjax.sweep import grid
def get_config():
    return load_experiment("default")
def get_sweep(base):
    return grid(base, {{"optim.lr": [float(x) for x in np.geomspace(5e-4, 5e-3, {trials})]}})
"""


def cli(args) -> dict:
    """Wall time of the two sweep commands on the same experiment, each into a fresh directory."""
    overrides = [f"train.steps={args.steps}", "train.data_parallel=1", "train.compilation_cache_dir=",
                 "train.progress=false"]
    seconds, losses = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lr_sweep.py"
        path.write_text(SWEEP_FILE.format(trials=args.trials))
        for mode, flags in (("vmapped", ["--vmap"]), ("sequential", [])):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "gptjax", "sweep", str(path), *overrides, *flags,
                            "--dir", str(Path(tmp) / mode)], check=True, cwd=Path(__file__).parent.parent)
            seconds[mode] = time.perf_counter() - t0
            runs = sorted(run for run in (Path(tmp) / mode).iterdir() if run.is_dir())
            losses[mode] = np.array([[r["loss"] for r in read_metrics(run) if r["split"] == "val"][-1]
                                     for run in runs])
    return {"trials": args.trials, "steps": args.steps,
            "command": f"python -m gptjax sweep <{args.trials} lrs of default> {' '.join(overrides)} "
                       "[--vmap]",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}",
            "load_average_1min_after": os.getloadavg()[0],
            "vmapped_s": seconds["vmapped"], "sequential_s": seconds["sequential"],
            "vmapped_trials_per_hour": args.trials * 3600 / seconds["vmapped"],
            "sequential_trials_per_hour": args.trials * 3600 / seconds["sequential"],
            "speedup": seconds["sequential"] / seconds["vmapped"],
            "max_relative_val_loss_difference": float(np.max(np.abs(losses["vmapped"] - losses["sequential"])
                                                             / losses["sequential"]))}


# The optimizer-comparison workload: experiments/optimizer_comparison.py's base config and its sweep, over a
# chosen subset of its presets, learning-rate multipliers and seeds (all of them unless --quick).
WORKLOAD_FILE = """
from gptjax.config import load_experiment
from gptjax.sweep import Times, per_optimizer, with_seeds
def get_config():
    return load_experiment("optimizer_comparison")
def get_sweep(base):
    lrs = {{"optim.lr": [Times(m) for m in {multipliers!r}]}}
    return with_seeds(per_optimizer(base, {{p: lrs for p in {presets!r}}}), {seeds!r})
"""
QUICK = {"presets": ("gpt2_adam", "t5_adafactor"), "multipliers": (1.0, 10.0), "seeds": (0,), "steps": 20}


def _final_val(workdir: Path) -> float | None:
    vals = [r["loss"] for r in read_metrics(workdir) if r["split"] == "val"]
    return vals[-1] if vals else None


def _modes(cores: int) -> dict[str, list[str]]:
    """The sweep command's ways of running the workload, by name: its flags."""
    modes = {"jobs1": ["--jobs", "1", "--no-vmap"]}
    if cores > 1:
        modes[f"jobs{cores}"] = ["--jobs", str(cores), "--no-vmap"]
    modes["vmap"] = ["--jobs", "1", "--vmap"]
    if cores > 1:
        modes[f"vmap_jobs{cores}"] = ["--jobs", str(cores), "--vmap"]
    return modes


def _torch_spec(variants: dict, tmp: Path) -> Path:
    """What the PyTorch process needs of each variant, as JSON (it imports no JAX program of ours)."""
    from gptjax.config import to_dict

    spec = {"root": str(tmp / "torch"), "trials": {name: to_dict(cfg) for name, cfg in variants.items()}}
    path = tmp / "torch_spec.json"
    path.write_text(json.dumps(spec))
    return path


def torch_trials(spec_path: Path) -> dict:
    """Train every trial of the spec one after another in a nanoGPT-style PyTorch GPT, doing what a sweep
    child does: the steps, the loss fetched every log_every steps, validation every eval_every steps on
    eval_batches batches, a checkpoint (model and optimizer) every checkpoint_every steps and at the end,
    and a sample of max_new_tokens. Timed from the first trial's start to the last one's end."""
    from pydoc_data.topics import topics

    import torch
    from bench_torch import NanoSide

    from gptjax.config import from_dict

    spec = json.loads(Path(spec_path).read_text())
    text = np.frombuffer("".join(topics[k] for k in sorted(topics)).encode(), np.uint8).astype(np.int64)
    split = int(0.9 * len(text))
    train_ids, val_ids = torch.from_numpy(text[:split]), torch.from_numpy(text[split:])
    torch.set_num_threads(len(os.sched_getaffinity(0)))

    def batch(ids, rng, B, L):
        starts = rng.integers(0, len(ids) - L - 1, B)
        rows = torch.stack([ids[s:s + L + 1] for s in starts])
        return rows[:, :-1], rows[:, 1:]

    def optimizer(o, params):
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": o.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        if o.rule == "adafactor":
            return torch.optim.Adafactor(groups, lr=o.lr)
        cls = {"adam_l2": torch.optim.Adam, "adamw": torch.optim.AdamW}[o.rule]
        try:
            return cls(groups, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, fused=True)
        except (RuntimeError, ValueError):
            return cls(groups, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, foreach=True)

    finals = {}
    t0 = time.perf_counter()
    for name, raw in spec["trials"].items():
        cfg = from_dict(raw)
        t, B, L = cfg.train, cfg.data.batch_size, cfg.data.seq_len
        torch.manual_seed(t.seed)
        rng = np.random.default_rng(t.seed)
        side = NanoSide(cfg, [], seed=t.seed)  # each seed its own initial parameters, as in the sweep
        side.opt = optimizer(cfg.optim, list(side.model.parameters()))
        out = Path(spec["root"]) / name
        out.mkdir(parents=True, exist_ok=True)
        val = None
        for step in range(1, t.steps + 1):
            inputs, targets = batch(train_ids, rng, B, L)
            loss = torch.nn.functional.cross_entropy(side.logits(inputs).reshape(-1, side.wte.num_embeddings),
                                                     targets.reshape(-1))
            side.opt.zero_grad(set_to_none=True)
            loss.backward()
            side.opt.step()
            if step % t.log_every == 0:
                loss.item()
            if step % t.eval_every == 0 or step == t.steps:
                side.model.eval()
                with torch.no_grad():
                    vrng = np.random.default_rng(1234)
                    losses = [torch.nn.functional.cross_entropy(side.logits(x).flatten(0, 1), y.flatten())
                              for x, y in (batch(val_ids, vrng, B, L) for _ in range(t.eval_batches))]
                val = float(torch.stack(losses).mean())
                side.model.train()
            if step % t.checkpoint_every == 0 or step == t.steps:
                torch.save({"model": side.model.state_dict(), "optimizer": side.opt.state_dict(),
                            "step": step}, out / "ckpt.pt")
        with torch.no_grad():
            ids = torch.tensor([list(cfg.sample.prompt.encode())])
            for _ in range(cfg.sample.max_new_tokens):
                logits = side.logits(ids[:, -cfg.model.context:])[:, -1] / cfg.sample.temperature
                ids = torch.cat([ids, torch.multinomial(torch.softmax(logits, -1), 1)], dim=1)
        finals[name] = val
    return {"seconds": time.perf_counter() - t0, "final_val_losses": finals, "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}


def throughput(args) -> dict:
    """Each mode of the sweep command on the workload, start to exit, then the PyTorch trials."""
    from gptjax.sweep import choose_parallelism, load_sweep, machine

    work = dict(QUICK) if args.quick else {"presets": ("bert_adam", "roberta_adam", "t5_adafactor",
                                                       "gpt2_adam", "gpt3_adamw"),
                                           "multipliers": (1.0, 10.0), "seeds": (0, 1, 2), "steps": 200}
    steps = args.steps or work["steps"]
    cores = len(os.sched_getaffinity(0))
    modes = _modes(cores)
    if args.modes:
        modes = {m: modes[m] for m in args.modes.split(",")}
    repo = Path(__file__).parent.parent
    result = {"workload": {"experiment": "optimizer_comparison", "presets": list(work["presets"]),
                           "lr_multipliers": list(work["multipliers"]), "seeds": list(work["seeds"]),
                           "steps": steps},
              "cores": cores, "load_average_before": os.getloadavg(), "modes": {}}
    chosen = choose_parallelism(*machine())
    result["default_choice"] = {"jobs": chosen.jobs, "vmap": chosen.vmap, "why": chosen.why}
    finals = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "workload.py"
        path.write_text(WORKLOAD_FILE.format(**work))
        overrides = [f"train.steps={steps}"]
        _, variants = load_sweep(str(path), overrides)
        result["trials"] = trials = len(variants)
        for mode, flags in modes.items():
            root = tmp / mode
            cache = f"train.compilation_cache_dir={root / 'jax-cache'}"  # a first sweep's compiles
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "gptjax", "sweep", str(path), *overrides, cache,
                                   *flags, "--dir", str(root)], cwd=repo, capture_output=True, text=True)
            seconds = time.perf_counter() - t0
            done = sum(json.loads((root / n / "status.json").read_text()).get("status") == "done"
                       for n in variants if (root / n / "status.json").exists())
            finals[mode] = {n: _final_val(root / n) for n in variants}
            result["modes"][mode] = {"flags": " ".join(flags), "measured": _now(), "seconds": seconds,
                                     "done": done, "trials_per_hour": trials * 3600 / seconds,
                                     "load_average_1min_before": load,
                                     "load_average_1min_after": os.getloadavg()[0]}
            print(f"{mode:>12}: {seconds:7.1f} s, {trials * 3600 / seconds:6.1f} trials/h, "
                  f"{done}/{trials} done (load {load:.1f})", flush=True)
            if proc.returncode:
                print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        if not args.no_torch:
            load = os.getloadavg()[0]
            spec = _torch_spec(variants, tmp)
            proc = subprocess.run([sys.executable, __file__, "--torch-trials", str(spec)], cwd=repo,
                                  capture_output=True, text=True, check=True)
            torch_result = json.loads(proc.stdout.strip().splitlines()[-1])
            seconds = torch_result.pop("seconds")
            finals["torch_nanogpt"] = torch_result.pop("final_val_losses")
            result["torch_nanogpt_sequential"] = {
                **torch_result, "measured": _now(), "seconds": seconds,
                "trials_per_hour": trials * 3600 / seconds, "load_average_1min_before": load,
                "load_average_1min_after": os.getloadavg()[0]}
            print(f"{'PyTorch':>12}: {seconds:7.1f} s, {trials * 3600 / seconds:6.1f} trials/h "
                  "(nanoGPT-style, one process, one trial after another)", flush=True)
    result["final_val_losses"] = finals
    result["load_average_after"] = os.getloadavg()
    return summarise(result)


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="minutes")


def summarise(result: dict) -> dict:
    """The figures derived from the measured ones: each mode's ratio to PyTorch, the largest relative
    disagreement of the modes' final validation losses (the sweep modes train the same trials, so they
    must agree, vmapped groups within rounding; PyTorch's are its own model's and are not compared), and
    the best mode."""
    modes, finals = result["modes"], result["final_val_losses"]
    if "torch_nanogpt_sequential" in result:
        base = result["torch_nanogpt_sequential"]["trials_per_hour"]
        for r in modes.values():
            r["ratio_to_torch"] = r["trials_per_hour"] / base
    reference = finals[next(iter(modes))]
    result["max_relative_val_loss_difference_between_modes"] = max(
        (abs(finals[m][n] - reference[n]) / reference[n] for m in modes for n in reference
         if finals[m].get(n) is not None and reference[n] is not None), default=None)
    result["best_mode"] = max(modes, key=lambda m: modes[m]["trials_per_hour"])
    return result


def remeasured(old: dict, new: dict) -> dict:
    """`old` (a results file) with the modes, and the PyTorch side if it ran, that `new` measured again in
    place of its own: a mode disturbed by other work is measured again without rerunning the hour. Each
    mode and the PyTorch side keep the time they were measured ("measured"); the workload must match."""
    if old["workload"] != new["workload"]:
        raise SystemExit(f"bench_sweep: the results file's workload {old['workload']} is not this run's "
                         f"{new['workload']}; run every mode (no --modes) to replace it")
    kept = {m: {"measured": f"by {old.get('written')}", **r} for m, r in old["modes"].items()}
    merged = {**old, "modes": {**kept, **new["modes"]},
              "final_val_losses": {**old["final_val_losses"], **new["final_val_losses"]},
              "load_average_after": new["load_average_after"]}
    if "torch_nanogpt_sequential" in new:
        merged["torch_nanogpt_sequential"] = new["torch_nanogpt_sequential"]
    merged.pop("command", None)  # write_json records this command line and time
    merged.pop("written", None)
    return summarise(merged)


def _losses(workdir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(workdir) if r["split"] == "train"]


def _compile_s(workdir: Path) -> float:
    return [r["compile_s"] for r in read_metrics(workdir) if r["split"] == "setup"][0]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, help="steps per trial (default 30; with --throughput 200, "
                                             "--quick 20)")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--cli", action="store_true", help="time the sweep commands instead (sweep_cli.json)")
    p.add_argument("--throughput", action="store_true",
                   help="trials/hour of the optimizer-comparison workload per sweep mode and in PyTorch "
                        "(sweep_throughput.json)")
    p.add_argument("--quick", action="store_true", help="with --throughput: 4 trials of 20 steps, to prove "
                                                         "the code (sweep_throughput_quick.json)")
    p.add_argument("--modes", help="with --throughput: only these modes, comma-separated, measured again in "
                                   "the results file (with PyTorch unless --no-torch)")
    p.add_argument("--no-torch", action="store_true", help="with --throughput: no PyTorch side (not written)")
    p.add_argument("--torch-trials", help=argparse.SUPPRESS)  # the PyTorch side's own process
    args = p.parse_args()
    if args.torch_trials:
        print(json.dumps(torch_trials(Path(args.torch_trials))))
        return
    if args.throughput:
        result = throughput(args)
        print(json.dumps({k: v for k, v in result.items() if k != "final_val_losses"}, indent=2))
        path = RESULTS / ("sweep_throughput_quick.json" if args.quick else "sweep_throughput.json")
        if args.modes and path.exists():  # those modes measured again, the others kept
            write_json(path, remeasured(json.loads(path.read_text()), result))
        elif not (args.modes or args.no_torch):
            write_json(path, result)
        return
    args.steps = args.steps or 30
    if args.cli:
        result = cli(args)
        write_json(RESULTS / "sweep_cli.json", result)
        print(json.dumps(result, indent=2))
        return
    base = load_experiment("default", [f"train.steps={args.steps}", "train.data_parallel=1",
                                       "train.compilation_cache_dir=", "train.log_every=1",
                                       "train.progress=false"])
    lrs = np.geomspace(5e-4, 5e-3, args.trials)
    cfgs = [dataclasses.replace(base, optim=dataclasses.replace(base.optim, lr=float(lr))) for lr in lrs]

    quiet = lambda *_: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        vmapped = {Path(tmp) / "vmapped" / str(i): cfg for i, cfg in enumerate(cfgs)}
        t0 = time.perf_counter()
        train_trials(vmapped, log=quiet)
        vmapped_s = time.perf_counter() - t0
        sequential = {Path(tmp) / "sequential" / str(i): cfg for i, cfg in enumerate(cfgs)}
        t0 = time.perf_counter()
        for workdir, cfg in sequential.items():
            train(cfg, workdir, log=quiet)
        sequential_s = time.perf_counter() - t0
        vmapped_TS = np.array([_losses(w) for w in vmapped])
        sequential_TS = np.array([_losses(w) for w in sequential])
        vmapped_compile_s = _compile_s(next(iter(vmapped)))
        sequential_compile_s = sum(_compile_s(w) for w in sequential)
    result = {
        "trials": args.trials, "steps": args.steps, "learning_rates": lrs.tolist(),
        "model": "experiments/default.py (842,752 parameters, batch 32 x 64)",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}",
        "load_average_1min_after": os.getloadavg()[0],
        "vmapped_s": vmapped_s, "vmapped_compile_s": vmapped_compile_s,
        "sequential_s": sequential_s, "sequential_compile_s": sequential_compile_s,
        "vmapped_trials_per_hour": args.trials * 3600 / vmapped_s,
        "sequential_trials_per_hour": args.trials * 3600 / sequential_s,
        "speedup": sequential_s / vmapped_s,
        "max_relative_loss_difference": float(np.max(np.abs(vmapped_TS - sequential_TS)
                                                     / np.abs(sequential_TS))),
        "final_losses": vmapped_TS[:, -1].tolist(),
    }
    write_json(RESULTS / "sweep.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
