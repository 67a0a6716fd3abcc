"""Reliability: preemption, crashes, non-finite steps, damaged checkpoints, one writer per workdir.

The subprocess tests run the real command line on a tiny model and send real signals.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from gptjax import sharding
from gptjax.config import ConfigError
from gptjax.data import build_data
from gptjax.guards import Diverged, Preempted, WorkdirLock
from gptjax.metrics import read_metrics
from gptjax.train import build_steps, load_for_inference, resolve, train
from tests.conftest import TINY_FILE, tiny_experiment

REPO = Path(__file__).resolve().parent.parent


def _command(tmp_path, workdir, *overrides):
    experiment = tmp_path / "tinyrun.py"
    experiment.write_text(TINY_FILE)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return ([sys.executable, "-m", "gptjax", "train", str(experiment), "--workdir", str(workdir),
             *overrides], env)


def _wait_for_step(workdir, step, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        steps = [r["step"] for r in read_metrics(workdir) if r["split"] == "train"]
        if steps and max(steps) >= step:
            return max(steps)
        time.sleep(0.05)
    raise AssertionError("the run did not reach the step in time")


def _final_params(workdir):
    return jax.tree_util.tree_leaves(jax.device_get(load_for_inference(workdir)[2]))


@pytest.mark.slow
def test_kill_9_three_times_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    steps = 40
    cmd, env = _command(tmp_path, tmp_path / "straight", f"train.steps={steps}")
    subprocess.run(cmd, env=env, cwd=REPO, check=True, capture_output=True, timeout=300)
    workdir = tmp_path / "killed"
    rng = np.random.default_rng(0)
    cmd, env = _command(tmp_path, workdir, f"train.steps={steps}")
    for _ in range(3):
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        done = max([r["step"] for r in read_metrics(workdir) if r["split"] == "train"], default=0)
        _wait_for_step(workdir, done + int(rng.integers(1, 9)), proc)
        proc.kill()  # SIGKILL: no handler runs, a checkpoint may be half written
        proc.wait()
    subprocess.run(cmd, env=env, cwd=REPO, check=True, capture_output=True, timeout=300)
    for a, b in zip(_final_params(workdir), _final_params(tmp_path / "straight"), strict=True):
        np.testing.assert_array_equal(a, b)
    # The records written past each kill's last checkpoint were dropped on resume: each step once.
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["split"] == "train"] == list(range(1, steps + 1))
    assert len({(r["step"], r["split"]) for r in lines}) == len(lines)


def test_a_non_finite_step_is_not_applied_and_is_counted():
    cfg = tiny_experiment()
    data = build_data(cfg.data, 0)
    run = build_steps(resolve(cfg, data.tokenizer.vocab_size))
    state = run.init()
    before = jax.device_get(state.params)
    batch = data.train_batch(0)
    poisoned = batch._replace(weights=np.full_like(batch.weights, np.nan))
    state, metrics = run.step(state, sharding.put_batch(poisoned, run.mesh))
    assert float(metrics["nonfinite"]) == 1.0 and int(state.step) == 1
    after = jax.device_get(state.params)
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
    state, metrics = run.step(state, sharding.put_batch(batch, run.mesh))
    assert float(metrics["nonfinite"]) == 0.0


def test_an_absurd_learning_rate_stops_the_run_naming_the_step_and_checkpoints_stay_finite(tmp_path):
    cfg = tiny_experiment(steps=60, checkpoint_every=1, max_nonfinite_steps=3, log_every=1)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=1e30))
    with pytest.raises(Diverged, match=r"3 non-finite steps in a row, the last at step \d+"):
        train(cfg, tmp_path, log=lambda *_: None)
    skipped = [r for r in read_metrics(tmp_path) if r["split"] == "skipped"]
    assert [r["in_a_row"] for r in skipped][-3:] == [1, 2, 3]
    params = _final_params(tmp_path)
    assert all(np.all(np.isfinite(p)) for p in params)


def test_a_stop_at_step_n_leaves_what_a_run_that_finished_step_n_leaves(tmp_path):
    """The hooks due at the stop's step (here evaluation) run before it is taken, and it checkpoints."""
    cfg = tiny_experiment(steps=6, eval_every=1, log_every=1, checkpoint_every=100)
    # A constant learning rate, so that the run to step 3 takes the same steps as the one to 6.
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, schedule="constant"))
    sent = []

    def interrupt_at_step_2(line):  # the signal lands during step 2's evaluation: the stop is at 3
        if line.startswith("step      2  val") and not sent:
            sent.append(os.kill(os.getpid(), signal.SIGINT))

    with pytest.raises(Preempted, match="stopped by SIGINT at step 3"):
        train(cfg, tmp_path / "stopped", log=interrupt_at_step_2)
    cfg3 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=3))
    train(cfg3, tmp_path / "finished", log=lambda *_: None)
    records = [[(r["split"], r["step"], r.get("loss")) for r in read_metrics(tmp_path / w)]
               for w in ("stopped", "finished")]
    assert records[0] == records[1]
    assert [p.name for p in (tmp_path / "stopped" / "checkpoints").iterdir() if p.name.isdigit()] == ["3"]
    for a, b in zip(_final_params(tmp_path / "stopped"), _final_params(tmp_path / "finished"), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_damaged_latest_checkpoint_is_set_aside_and_the_previous_one_resumes(tmp_path):
    cfg = tiny_experiment(steps=6, checkpoint_every=3, eval_every=100)
    train(cfg, tmp_path, log=lambda *_: None)
    for path in (tmp_path / "checkpoints" / "6").rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and "state" in str(path):
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    messages = []
    cfg9 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=9))
    result = train(cfg9, tmp_path, log=messages.append)
    assert any("checkpoints/6 is unreadable" in m and "corrupt-6" in m for m in messages), messages
    assert any("resumed from step 3" in m for m in messages)
    assert (tmp_path / "checkpoints" / "corrupt-6").is_dir() and result["step"] == 9


def test_a_second_writer_is_refused_and_the_workdir_left_alone(tmp_path):
    cfg = tiny_experiment(steps=2, eval_every=2, checkpoint_every=2)
    with WorkdirLock(tmp_path):
        with pytest.raises(ConfigError, match=r"is in use by pid \d+ on "):
            train(cfg, tmp_path, log=lambda *_: None)
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
    train(cfg, tmp_path, log=lambda *_: None)  # free again once released


def test_a_crashed_holder_does_not_leave_the_lock_stuck(tmp_path):
    code = ("import sys, time; from gptjax.guards import WorkdirLock; "
            f"lock = WorkdirLock({str(tmp_path)!r}).__enter__(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match="in use by pid"), WorkdirLock(tmp_path):
        pass
    proc.kill()
    proc.wait()
    with WorkdirLock(tmp_path) as lock:  # acquired at once: the dead holder's flock is gone
        assert lock.path.read_text().startswith(f"pid {os.getpid()} ")
