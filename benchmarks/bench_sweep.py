"""Trials per hour: 8 learning rates of the default model, one vmapped program vs one run after another.

    make bench-sweep   # python benchmarks/bench_sweep.py [--steps N] → benchmarks/results/sweep.json
    python benchmarks/bench_sweep.py --cli   # the two sweep commands → benchmarks/results/sweep_cli.json

Both sides train the same 8 trials (the default experiment, lr spread log-evenly over 5e-4 … 5e-3) for the
same steps on the same batches on CPU, and each is timed from building the program to the last step:
the sequential side compiles every trial (its learning rate is a constant of its program, as in a normal
run), the vmapped side compiles once (`gptjax.vectorised`). Their final losses must agree. With `--cli`,
what a user waits for instead: `python -m gptjax sweep x` (one process per trial, jobs 1) against
`python -m gptjax sweep x --vmap` (one process), start to exit, evaluation, metrics and checkpoints of
every trial included.
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
from gptjax.data import build_data
from gptjax.metrics import objective_loss, read_metrics
from gptjax.train import Run
from gptjax.vectorised import train_vectorised

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


def sequential(cfgs, steps):
    losses_TS, t0 = [], time.perf_counter()
    for cfg in cfgs:
        data = build_data(cfg.data, cfg.train.seed)
        run = Run(cfg, data.tokenizer.vocab_size)
        state = run.init()
        step = run.step.lower(state, data.train_batch(0)).compile()
        losses = []
        for k in range(steps):
            state, metrics = step(state, data.train_batch(k))
            losses.append(objective_loss(metrics))
        losses_TS.append(np.asarray(jax.device_get(losses)))
    return np.stack(losses_TS), time.perf_counter() - t0


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
                                       "train.compilation_cache_dir="])
    lrs = np.geomspace(5e-4, 5e-3, args.trials)
    cfgs = [dataclasses.replace(base, optim=dataclasses.replace(base.optim, lr=float(lr))) for lr in lrs]

    t0 = time.perf_counter()
    out = train_vectorised(cfgs)
    vmapped_s = time.perf_counter() - t0
    seq_TS, sequential_s = sequential(cfgs, args.steps)
    result = {
        "trials": args.trials, "steps": args.steps, "learning_rates": lrs.tolist(),
        "model": "experiments/default.py (842,752 parameters, batch 32 x 64)",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}",
        "vmapped_s": vmapped_s, "vmapped_compile_s": out["compile_s"],
        "vmapped_s_per_step": out["seconds"] / args.steps,
        "sequential_s": sequential_s,
        "vmapped_trials_per_hour": args.trials * 3600 / vmapped_s,
        "sequential_trials_per_hour": args.trials * 3600 / sequential_s,
        "speedup": sequential_s / vmapped_s,
        "max_relative_loss_difference": float(np.max(np.abs(out["loss_TS"] - seq_TS) / np.abs(seq_TS))),
        "final_losses": out["loss_TS"][:, -1].tolist(),
    }
    write_json(RESULTS / "sweep.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
