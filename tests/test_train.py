"""Training end to end on tiny configs: outputs, resume equality, 1 vs 8 devices, workdir safety."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from gptjax import environment
from gptjax.cli import main
from gptjax.config import ConfigError, to_dict
from gptjax.metrics import read_metrics
from gptjax.train import load_for_inference, train
from tests.conftest import tiny_experiment


def _train_losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if r["split"] == "train"}


def _params(workdir):
    return jax.device_get(load_for_inference(workdir)[2])


def test_a_run_writes_every_output_and_learns(tmp_path):
    cfg = tiny_experiment(steps=30, eval_every=10, log_every=5, checkpoint_every=10)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=3e-3))
    logged = []
    result = train(cfg, tmp_path, log=logged.append)
    assert json.loads((tmp_path / "config.json").read_text())["model"]["vocab_size"] == 258
    records = read_metrics(tmp_path)
    # The setup record: the software and devices (logged in one line too), how the run executed, and
    # the machine's load average and CPU count at its start.
    setup = records[0]
    assert setup["split"] == "setup" and setup["environment"] == environment.record()
    assert environment.summary(setup["environment"]) in logged
    assert setup["execution"] == "single" and setup["cpus"] == os.cpu_count() and len(setup["load_avg"]) == 3
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [5, 10, 15, 20, 25, 30]
    for key in ("loss", "perplexity", "lr", "tokens_per_s", "elapsed_s", "accuracy", "grad_norm"):
        assert key in train_records[0]
    assert all(r["data_wait_s"] >= 0 for r in train_records)  # measured by the prefetch test below
    assert train_records[0]["perplexity"] == pytest.approx(np.exp(train_records[0]["loss"]))
    assert all(r["tokens"] == 5 * 8 * 32 for r in train_records)  # sums over the 5 steps of a window
    last = train_records[-1]
    assert last["tokens_per_s"] >= last["tokens"] / last["elapsed_s"]  # a window is shorter than the run
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [10, 20, 30]
    assert val[-1]["loss"] < val[0]["loss"] < np.log(258)
    assert result["val"]["loss"] == pytest.approx(val[-1]["loss"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == \
        ["10", "20", "30"]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "sample.txt").read_text() == result["sample"] + "\n"


def test_tensorboard_reads_what_metrics_jsonl_holds(tmp_path):
    """`tensorboard --logdir runs` (the tensorboard extra, which `make install` includes) shows each
    numeric field of each split at its step; text and NaN are left out."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from gptjax.metrics import MetricsWriter

    writer = MetricsWriter(tmp_path)
    for step, loss in ((1, 5.5), (2, 5.25)):
        writer.write(step, "train", {"loss": loss, "lr": 1e-3, "note": "text"})
    writer.write(2, "val", {"loss": 5.0, "perplexity": float("nan")})
    writer.close()
    events = accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["train/loss", "train/lr", "val/loss"]
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 5.5), (2, 5.25)]
    assert [(e.step, e.value) for e in events.Scalars("val/loss")] == [(2, 5.0)]


def test_the_metrics_writer_leaves_pytorch_unimported_and_importable(tmp_path):
    """tensorboardX imports PyTorch at import time where it is installed, the most of its import cost;
    the writer keeps it out, and a later `import torch` (the user's own) still works."""
    pytest.importorskip("torch")
    code = ("import sys; from gptjax.metrics import MetricsWriter; w = MetricsWriter(sys.argv[1]); "
            "w.write(1, 'train', {'loss': 1.0}); w.close(); print('torch' in sys.modules); "
            "import torch; print(torch.ones(2).sum().item())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "2.0"]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_20_then_40_equals_40_straight(tmp_path):
    cfg20 = tiny_experiment(steps=20, checkpoint_every=10, eval_every=10, log_every=1)
    cfg40 = dataclasses.replace(cfg20, train=dataclasses.replace(cfg20.train, steps=40))
    train(cfg20, tmp_path / "resumed", log=lambda *_: None)
    first = read_metrics(tmp_path / "resumed")
    lines = []
    train(cfg40, tmp_path / "resumed", log=lines.append)
    train(cfg40, tmp_path / "straight", log=lambda *_: None)
    resumed, straight = _train_losses(tmp_path / "resumed"), _train_losses(tmp_path / "straight")
    assert sorted(resumed) == list(range(1, 41))
    assert resumed == straight
    assert not [line for line in lines if line.startswith("warning:")]  # a constant schedule: no jump
    # elapsed_s counts on from the 20 steps before (their last record, the step-20 validation).
    later = [r["elapsed_s"] for r in read_metrics(tmp_path / "resumed")[len(first):] if "elapsed_s" in r]
    assert min(later) > max(r["elapsed_s"] for r in first if "elapsed_s" in r)
    for a, b in zip(jax.tree_util.tree_leaves(_params(tmp_path / "resumed")),
                    jax.tree_util.tree_leaves(_params(tmp_path / "straight")), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_resume_that_stretches_the_schedule_says_so_and_how_to_keep_it(tmp_path):
    """Checked on a workdir's config.json and checkpoint directory alone (what the resume reads)."""
    from gptjax.optimizers import build_schedule
    from gptjax.train import warn_schedule_change

    cfg4 = tiny_experiment(steps=4)
    cosine = dataclasses.replace(cfg4.optim, schedule="cosine", min_lr_ratio=0.1)
    cfg4 = dataclasses.replace(cfg4, optim=cosine)
    cfg8 = dataclasses.replace(cfg4, train=dataclasses.replace(cfg4.train, steps=8))
    (tmp_path / "checkpoints" / "4").mkdir(parents=True)
    (tmp_path / "config.json").write_text(json.dumps(to_dict(cfg4)))
    lines = []
    warn_schedule_change(tmp_path, cfg8, lines.append)
    lr = cfg4.optim.lr
    # Step 5 (t = 5) of a cosine over 8 steps, 3/8 of it still ahead, against the floor 0.1·lr the 4-step
    # schedule had reached.
    stretched = lr * (0.1 + 0.9 * np.sin(0.5 * np.pi * 3 / 8) ** 2)
    assert len(lines) == 1 and "decays until step 8, not 4 (train.steps 4 -> 8)" in lines[0]
    assert f"step 5's learning rate is {stretched:.3g}, not the {0.1 * lr:.3g}" in lines[0]
    assert lines[0].endswith("add optim.schedule_steps=4")
    # The suggested override keeps the horizon: the rate stays at its floor after step 4, and no warning.
    kept = dataclasses.replace(cfg8, optim=dataclasses.replace(cfg8.optim, schedule_steps=4))
    np.testing.assert_allclose(build_schedule(kept.optim, 8)(np.arange(3, 8)), 0.1 * lr, rtol=1e-6)
    lines.clear()
    warn_schedule_change(tmp_path, kept, lines.append)
    constant = dataclasses.replace(cfg8, optim=dataclasses.replace(cfg8.optim, schedule="constant"))
    before = dataclasses.replace(constant, train=cfg4.train)
    (tmp_path / "config.json").write_text(json.dumps(to_dict(before)))
    warn_schedule_change(tmp_path, constant, lines.append)  # nothing moves: nothing to say
    assert lines == []


def test_one_and_eight_devices_give_the_same_losses(tmp_path):
    one = tiny_experiment(steps=8, log_every=1, eval_every=4, data_parallel=1)
    eight = tiny_experiment(steps=8, log_every=1, eval_every=4, data_parallel=8)
    train(one, tmp_path / "one", log=lambda *_: None)
    train(eight, tmp_path / "eight", log=lambda *_: None)
    losses_one, losses_eight = _train_losses(tmp_path / "one"), _train_losses(tmp_path / "eight")
    np.testing.assert_allclose([losses_eight[s] for s in range(1, 9)],
                               [losses_one[s] for s in range(1, 9)], rtol=1e-5)
    val = [[r["loss"] for r in read_metrics(tmp_path / w) if r["split"] == "val"] for w in ("one", "eight")]
    np.testing.assert_allclose(val[1], val[0], rtol=1e-5)


def test_batch_not_divisible_by_devices_is_refused_before_writing(tmp_path):
    cfg = tiny_experiment(data_parallel=3)
    with pytest.raises(ConfigError, match=r"data.batch_size \(8\) must be divisible"):
        train(cfg, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_a_workdir_of_another_model_is_refused_and_left_alone(tmp_path):
    cfg = tiny_experiment(steps=2, eval_every=2, checkpoint_every=2)
    train(cfg, tmp_path, log=lambda *_: None)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_layer=3),
                                train=dataclasses.replace(cfg.train, steps=4))
    with pytest.raises(ConfigError, match=r"holds a run with model.n_layer=2 \(now 3\)"):
        train(other, tmp_path, log=lambda *_: None)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_sample_command_reads_a_workdir(tmp_path, capsys, monkeypatch):
    cfg = tiny_experiment(steps=2, eval_every=2, checkpoint_every=2)
    train(cfg, tmp_path, log=lambda *_: None)
    capsys.readouterr()

    def no_optimizer(*_):
        raise AssertionError("inference built an optimizer")

    monkeypatch.setattr("gptjax.optimizers.build_optimizer", no_optimizer)  # parameters only
    monkeypatch.setattr("gptjax.train.build_optimizer", no_optimizer)
    assert main(["sample", str(tmp_path), "--prompt", "def ", "--max-new-tokens", "12",
                 "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("def ")
    assert main(["sample", str(tmp_path), "--prompt", "x" * 70]) == 2
    assert "exceed the model's context (64)" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "nowhere")]) == 2


def test_gradient_accumulation_equals_one_larger_batch():
    """k micro-batches of B/k rows give the gradient and update of one batch of B rows (rtol 1e-5)."""
    import functools

    from gptjax import sharding
    from gptjax.data import build_data
    from gptjax.train import build_steps, gradients, resolve

    results = []
    for k in (1, 4):
        cfg = tiny_experiment(steps=3, grad_accum=k)
        data = build_data(cfg.data, cfg.train.seed)
        # The split's last, partly padded batch: micro-batches hold unequal token counts.
        rows = -(-(len(data.val_tokens) - 1) // cfg.data.seq_len)
        batch = data.val_batches(rows // cfg.data.batch_size + 1)[-1]
        assert 0 < batch.weights.sum() < batch.weights.size
        run = build_steps(resolve(cfg, data.tokenizer.vocab_size))
        state, batch = run.init(), sharding.put_batch(batch, run.mesh)
        grad_fn = jax.jit(functools.partial(gradients, graphdef=run.graphdef, cfg=run.cfg))
        grads, _ = grad_fn(state.params, batch, jax.random.key(0))
        _, metrics = run.step(state, batch)
        results.append((jax.device_get(grads), jax.device_get(metrics)))
    (grads_1, metrics_1), (grads_k, metrics_k) = results
    leaves_1, leaves_k = jax.tree_util.tree_leaves(grads_1), jax.tree_util.tree_leaves(grads_k)
    for a, b in zip(leaves_1, leaves_k, strict=True):
        # Summation order differs: allow 1e-5 of the leaf's scale on entries near zero.
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())
    for key in ("ce_sum", "ce_count", "ce_correct", "grad_norm", "update_norm", "param_norm"):
        np.testing.assert_allclose(metrics_k[key], metrics_1[key], rtol=1e-5)


def test_the_compilation_cache_serves_a_repeated_run(tmp_path):
    """The second run finds every program in the cache: it adds no entry (timing is a benchmark's job)."""
    import os
    import subprocess
    import sys

    from tests.conftest import TINY_FILE

    experiment = tmp_path / "tinyrun.py"
    experiment.write_text(TINY_FILE)
    # As a user runs it: without the session's shared cache (tests/conftest.py), so that the entries
    # counted are the ones this experiment's train.compilation_cache_dir wrote.
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR",
                        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    entries = []
    for run in ("first", "second"):
        cache = f"train.compilation_cache_dir={tmp_path / 'cache'}"
        subprocess.run([sys.executable, "-m", "gptjax", "train", str(experiment), "--workdir",
                        str(tmp_path / run), "train.steps=2", cache],
                       env=env, check=True, capture_output=True, timeout=300)
        assert [r["step"] for r in read_metrics(tmp_path / run) if r["split"] == "train"] == [1, 2]
        entries.append(sorted(p.name for p in (tmp_path / "cache").iterdir()))
    assert entries[0] and entries[1] == entries[0]


def test_bfloat16_compute_still_learns(tmp_path):
    cfg = tiny_experiment(steps=30, eval_every=30, log_every=10, checkpoint_every=30)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="bfloat16"),
                              optim=dataclasses.replace(cfg.optim, lr=3e-3))
    result = train(cfg, tmp_path, log=lambda *_: None)
    params = _params(tmp_path)
    assert all(p.dtype == np.float32 for p in jax.tree_util.tree_leaves(params))  # master weights
    first = [r["loss"] for r in read_metrics(tmp_path) if r["split"] == "train"][0]
    assert np.isfinite(result["val"]["loss"]) and result["val"]["loss"] < first - 1.0


def test_scanned_layers_with_dropout_and_remat_train(tmp_path):
    cfg = tiny_experiment(steps=20, eval_every=20, log_every=10, checkpoint_every=20)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_layers=True, remat="dots",
                                                             dropout=0.1),
                              optim=dataclasses.replace(cfg.optim, lr=3e-3))
    result = train(cfg, tmp_path, log=lambda *_: None)
    first = [r["loss"] for r in read_metrics(tmp_path) if r["split"] == "train"][0]
    assert result["val"]["loss"] < first
    assert "layers" in _params(tmp_path) and "blocks" not in _params(tmp_path)


def test_a_parameters_only_checkpoint_trains_on_with_a_fresh_optimizer(tmp_path):
    """What import-hf leaves (parameters at step 0, no optimizer state): `train` there creates the
    optimizer state and trains exactly as a run that started from those parameters."""
    from gptjax.checkpoint import Checkpointer
    from gptjax.data import build_data
    from gptjax.train import build_steps, resolve

    cfg = tiny_experiment(steps=4, eval_every=4, log_every=1, checkpoint_every=4)
    train(cfg, tmp_path / "straight", log=lambda *_: None)
    params = build_steps(resolve(cfg, build_data(cfg.data, 0).tokenizer.vocab_size)).init_params()
    (tmp_path / "imported").mkdir()
    (tmp_path / "imported" / "config.json").write_text((tmp_path / "straight" / "config.json").read_text())
    checkpointer = Checkpointer(tmp_path / "imported" / "checkpoints", 5)
    checkpointer.save(0, {"params": params}, {"step": 0, "data_position": 0, "seed": 0})
    checkpointer.close()
    assert not (tmp_path / "imported" / "checkpoints" / "0" / "opt_state").exists()
    messages = []
    train(cfg, tmp_path / "imported", log=messages.append)
    assert any("resumed from step 0" in m for m in messages), messages
    assert _train_losses(tmp_path / "imported") == _train_losses(tmp_path / "straight")
    assert (tmp_path / "imported" / "checkpoints" / "4" / "opt_state").is_dir()
    for a, b in zip(jax.tree_util.tree_leaves(_params(tmp_path / "imported")),
                    jax.tree_util.tree_leaves(_params(tmp_path / "straight")), strict=True):
        np.testing.assert_array_equal(a, b)


def test_prefetch_hands_out_batches_in_order_measures_the_wait_and_raises_errors_at_their_step():
    import threading
    import time

    from gptjax.loop import Prefetch

    made = []

    def make(i):
        made.append(i)
        if i == 7:
            raise ValueError("bad shard at 7")
        return i * i

    batches = Prefetch(make, 3, 10, depth=2)
    deadline = time.monotonic() + 10
    while len(made) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert made == [3, 4, 5]  # the queue holds 2 ahead, the thread blocks holding the third
    assert [batches.get(i) for i in (3, 4, 5, 6)] == [9, 16, 25, 36]
    with pytest.raises(ValueError, match="bad shard at 7"):
        batches.get(7)
    batches.close()

    slow = Prefetch(lambda i: time.sleep(0.3) or i, 0, 3, depth=2)
    assert [slow.get(i) for i in range(3)] == [0, 1, 2]
    assert all(slow.waited[i] > 0.2 for i in range(3))  # the loop waited for every batch
    slow.close()
    fast = Prefetch(lambda i: i, 0, 3, depth=4)
    time.sleep(0.3)
    assert [fast.get(i) for i in range(3)] == [0, 1, 2] and max(fast.waited.values()) < 0.1
    fast.close()
    blocked = Prefetch(lambda i: i, 0, 100, depth=1)  # closed while its thread waits on a full queue
    blocked.close()
    assert not any(t.name == "gptjax-prefetch" and t.is_alive() for t in threading.enumerate())
