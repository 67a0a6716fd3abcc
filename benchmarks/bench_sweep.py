"""Trials per hour: 8 learning rates of the default model, one vmapped program vs one run after another.

    make bench-sweep   # python benchmarks/bench_sweep.py [--steps N] → benchmarks/results/sweep.json
    python benchmarks/bench_sweep.py --cli   # the two sweep commands → benchmarks/results/sweep_cli.json

Both sides train the same 8 trials (the default experiment, lr spread log-evenly over 5e-4 … 5e-3) for the
same steps on the same batches on CPU through the path the command line takes (`gptjax.train`): the
sequential side calls `train()` once per trial and compiles every trial (its learning rate is a constant
of its program, as in a normal run), the vmapped side calls `train_trials()` once and compiles once
(gptjax/trials.py). Each is timed from the call to its return, evaluation, metrics, checkpoints and
samples included, with the step compile times from the runs' setup records. Their losses must agree.
With `--cli`, what a user waits for instead: `python -m gptjax sweep x` (one process per trial, jobs 1)
against `python -m gptjax sweep x --vmap` (one process), start to exit.
"""

import argparse
import dataclasses
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


def _losses(workdir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(workdir) if r["split"] == "train"]


def _compile_s(workdir: Path) -> float:
    return [r["compile_s"] for r in read_metrics(workdir) if r["split"] == "setup"][0]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--cli", action="store_true", help="time the sweep commands instead (sweep_cli.json)")
    args = p.parse_args()
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
