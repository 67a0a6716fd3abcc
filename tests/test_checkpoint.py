"""Checkpoints: the SHA-256 manifest each step carries, verification on restore, and readers that never
change a workdir — also beside a live training that rotates its checkpoints every step."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from gptjax.checkpoint import MANIFEST, Checkpointer, checkpoint_steps, restore_params
from gptjax.cli import main
from gptjax.data import build_data
from gptjax.models import abstract_params
from gptjax.train import build_steps, resolve
from tests.conftest import TINY_FILE, TRAINED_CFG

REPO = Path(__file__).resolve().parent.parent


def _copy(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "w")
    return tmp_path / "w"


def _snapshot(workdir):
    return {str(p.relative_to(workdir)): p.read_bytes() if p.is_file() else None for p in workdir.rglob("*")}


def _step_params(workdir, step):
    """Parameters of one step, restored directly (no verification): the independent reference."""
    cfg = json.loads((workdir / "config.json").read_text())
    from gptjax.config import from_dict

    checkpointer = Checkpointer(workdir / "checkpoints", 5, writer=False)
    items, _ = checkpointer.restore(step, {"params": abstract_params(from_dict(cfg).model)[1]})
    checkpointer.close()
    return jax.tree_util.tree_leaves(jax.device_get(items["params"]))


def _flip(path, offset, n=8):
    data = bytearray(path.read_bytes())
    data[offset:offset + n] = bytes(b ^ 0xFF for b in data[offset:offset + n])
    path.write_bytes(bytes(data))


def _largest_data_file(step_dir, item="params"):
    return max((p for p in (step_dir / item).rglob("*") if p.is_file() and "/d/" in str(p)),
               key=lambda p: p.stat().st_size)


def test_every_step_carries_a_manifest_of_its_files(trained):
    for step in checkpoint_steps(trained):
        step_dir = trained / "checkpoints" / str(step)
        manifest = json.loads((step_dir / MANIFEST).read_text())["sha256"]
        # Recomputed here with hashlib over every array file orbax wrote: all are listed, all match.
        data_files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent != step_dir]
        assert len(data_files) > 10
        for path in data_files:
            assert manifest[str(path.relative_to(step_dir))] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("item", ["params", "opt_state"])
def test_eight_flipped_bytes_are_caught_readers_fall_back_and_only_the_holder_moves_them(trained, tmp_path,
                                                                                        capsys, item):
    workdir = _copy(trained, tmp_path)
    target = _largest_data_file(workdir / "checkpoints" / "4", item)
    size = target.stat().st_size
    _flip(target, size // 2)
    assert target.stat().st_size == size
    before = _snapshot(workdir)
    # A reader (sample, eval, init_from): the previous step's parameters, a warning on stderr, no
    # change. A reader of parameters does not read (or hash) the optimizer state: step 4 serves it.
    _, _, params = restore_params(workdir)
    err = capsys.readouterr().err
    if item == "params":
        assert "checkpoints/4 is unreadable" in err and "does not match its checksum" in err
        assert "using the previous one" in err
    else:
        assert err == ""
    reference = _step_params(workdir, 2 if item == "params" else 4)
    for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(params)), reference, strict=True):
        np.testing.assert_array_equal(a, b)
    assert _snapshot(workdir) == before
    # The lock holder (train) moves it aside and resumes from step 2.
    cfg = TRAINED_CFG
    steps = build_steps(resolve(cfg, build_data(cfg.data, 0).tokenizer.vocab_size))
    messages = []
    checkpointer = Checkpointer(workdir / "checkpoints", 5)
    restored = checkpointer.restore_latest({"params": steps.abstract_params,
                                            "opt_state": steps.abstract_opt_states[0]}, warn=messages.append)
    checkpointer.close()
    assert restored[1]["step"] == 2
    assert len(messages) == 1 and "does not match its checksum" in messages[0] and "corrupt-4" in messages[0]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "corrupt-4"]


def test_sample_on_a_workdir_without_checkpoints_writes_nothing(trained, tmp_path, capsys):
    workdir = tmp_path / "w"
    workdir.mkdir()
    shutil.copy(trained / "config.json", workdir / "config.json")
    assert main(["sample", str(workdir)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == f"error: {workdir} has no checkpoint yet"
    assert sorted(p.name for p in workdir.iterdir()) == ["config.json"]


@pytest.mark.slow
def test_restores_in_a_loop_beside_a_live_training_never_rename_and_never_crash_it(tmp_path):
    """The trainer replaces its only checkpoint every step (keep_checkpoints=1) while this process
    restores the workdir's parameters again and again, as `sample` or `eval` would."""
    experiment = tmp_path / "tinyrun.py"
    experiment.write_text(TINY_FILE)
    workdir = tmp_path / "w"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.Popen([sys.executable, "-m", "gptjax", "train", str(experiment), "--workdir",
                             str(workdir), "train.steps=30", "train.checkpoint_every=1",
                             "train.keep_checkpoints=1"],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not checkpoint_steps(workdir) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    seen = []
    while proc.poll() is None and time.time() < deadline:
        seen.append(restore_params(workdir)[2] is not None)
        names = {p.name for p in (workdir / "checkpoints").iterdir()}
        assert not any(n.startswith("corrupt") for n in names), names
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(seen) >= 3 and all(seen)
    assert checkpoint_steps(workdir) == [30]
    assert not any(p.name.startswith("corrupt") for p in (workdir / "checkpoints").iterdir())
