"""Sweeps: expansion, sharding, skip/resume/failure through real subprocesses, pairing, vectorised trials."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from gptjax.cli import main
from gptjax.config import PRESETS, ConfigError
from gptjax.sweep import (
    Times,
    grid,
    load_sweep,
    parse_shard,
    per_optimizer,
    quasi_random,
    read_status,
    replace_path,
    run_sweep,
    shard_variants,
    with_seeds,
)
from tests.conftest import TINY_FILE, tiny_experiment

# Two variants that train and one whose corpus is missing: it passes validation and fails at run time.
SWEEP_FILE = TINY_FILE.replace("steps=40", "steps=4") + '''
import dataclasses
from gptjax.sweep import grid
def get_sweep(base):
    variants = grid(base, {"optim.preset": ["gpt2_adam", "gpt3_adamw"]})
    missing = dataclasses.replace(base.data, source="text:/no/such")
    variants["broken"] = dataclasses.replace(base, data=missing)
    return variants
'''


def test_grid_quasi_random_and_seeds_expand_as_replacements_of_the_base():
    base = tiny_experiment()
    axes = {"optim.preset": ["gpt2_adam", "t5_adafactor"], "optim.lr": [1e-3, 2e-3]}
    variants = with_seeds(grid(base, axes), [0, 1])
    assert len(variants) == 8
    v = variants["preset=t5_adafactor,lr=0.002,seed=1"]
    # The preset is swapped in first and the lr refines it, whatever the axes' order.
    assert v.optim == dataclasses.replace(PRESETS["t5_adafactor"], lr=2e-3)
    assert v.train == dataclasses.replace(base.train, seed=1) and v.model == base.model
    points = quasi_random(base, {"optim.lr": (1e-4, 1e-2, "log"), "optim.b2": (0.9, 0.999, "linear")}, 16,
                          method="sobol")
    lrs = np.array([c.optim.lr for c in points.values()])
    assert len(points) == 16 and len(set(lrs)) == 16
    assert lrs.min() >= 1e-4 and lrs.max() <= 1e-2
    # Low discrepancy: each decade of the log range holds half of the points.
    assert np.sum(lrs < 1e-3) == 8
    assert len(quasi_random(base, {"optim.lr": (1e-4, 1e-2, "log")}, 5, method="halton")) == 5
    with pytest.raises(ConfigError, match="no field 'optimm'"):
        grid(base, {"optimm.lr": [1.0]})


def test_per_optimizer_gives_each_preset_its_own_values():
    base = tiny_experiment()
    variants = per_optimizer(base, {"gpt2_adam": {"optim.lr": [1e-4, Times(10)], "optim.b2": [0.99]},
                                    "t5_adafactor": {"optim.lr": [Times(1)]}})
    # gpt2_adam's lr is 2.5e-4 and t5_adafactor's relative step 1e-3 (docs/optimizers.md, "Presets").
    assert list(variants) == ["preset=gpt2_adam,lr=0.0001,b2=0.99", "preset=gpt2_adam,lr=0.0025,b2=0.99",
                              "preset=t5_adafactor,lr=0.001"]
    assert variants["preset=gpt2_adam,lr=0.0025,b2=0.99"].optim == dataclasses.replace(
        PRESETS["gpt2_adam"], lr=2.5e-4 * 10, b2=0.99)
    assert variants["preset=t5_adafactor,lr=0.001"].optim == PRESETS["t5_adafactor"]
    assert variants["preset=t5_adafactor,lr=0.001"].model == base.model
    with pytest.raises(ConfigError, match="no field 'lrr'"):
        per_optimizer(base, {"gpt2_adam": {"optim.lrr": [Times(2)]}})


def test_shards_cover_every_variant_exactly_once():
    names = [f"v{i}" for i in range(23)]
    for n in (1, 2, 3, 7, 30):
        parts = [shard_variants(names, (i, n)) for i in range(n)]
        assert sorted(sum(parts, [])) == sorted(names)
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ConfigError, match="--shard must be i/N"):
            parse_shard(bad)


def test_bad_sweep_input_exits_2_with_one_line(capsys, tmp_path):
    assert main(["sweep", "nosuch"]) == 2
    assert main(["sweep", "default"]) == 2
    assert "defines no get_sweep()" in capsys.readouterr().err
    path = tmp_path / "s.py"
    path.write_text(SWEEP_FILE)
    assert main(["sweep", str(path), "--shard", "2/2"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_run_skips_finished_resumes_raised_steps_and_records_a_failure(tmp_path):
    path = tmp_path / "s.py"
    path.write_text(SWEEP_FILE)
    root = tmp_path / "runs"
    _, variants = load_sweep(str(path))
    assert sorted(variants) == ["broken", "preset=gpt2_adam", "preset=gpt3_adamw"]
    quiet = lambda *_: None  # noqa: E731
    results = run_sweep(str(path), root=root, jobs=2, log=quiet)
    assert results["preset=gpt2_adam"]["status"] == "done"
    assert results["broken"]["status"] == "failed"
    assert "/no/such" in results["broken"]["error"] and results["broken"]["returncode"] == 2
    assert read_status(root / "broken")["status"] == "failed"
    done_log = (root / "preset=gpt3_adamw" / "log.txt").read_text()

    # Again: the finished variants are not started (their logs unchanged), the failed one is retried.
    results = run_sweep(str(path), root=root, jobs=1, log=quiet)
    assert (root / "preset=gpt3_adamw" / "log.txt").read_text() == done_log
    assert results["broken"]["status"] == "failed"

    # More steps: each variant resumes from its checkpoint at step 4 instead of starting over.
    run_sweep(str(path), ["train.steps=6"], root=root, jobs=2, shard=(1, 2), log=quiet)
    assert "resumed from step 4" in (root / "preset=gpt2_adam" / "log.txt").read_text()
    steps = [r["step"] for r in map(json.loads, (root / "preset=gpt2_adam" / "metrics.jsonl").open())
             if r["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
    setups = [r for r in map(json.loads, (root / "preset=gpt2_adam" / "metrics.jsonl").open())
              if r["split"] == "setup"]
    assert [s["execution"] for s in setups] == ["separate", "separate"]  # a sweep's own process, twice
    assert read_status(root / "preset=gpt3_adamw")["steps"] == 4  # shard 0/2: not touched


def test_same_seed_pairs_initial_parameters_and_batches_across_optimizers():
    from gptjax.data import build_data
    from gptjax.train import build_steps, resolve

    base = tiny_experiment()
    variants = grid(base, {"optim.preset": ["gpt2_adam", "t5_adafactor"], "train.seed": [0, 1]})
    states, batches = {}, {}
    for name, cfg in variants.items():
        data = build_data(cfg.data, cfg.train.seed)
        states[name] = jax.device_get(build_steps(resolve(cfg, data.tokenizer.vocab_size)).init_params())
        batches[name] = [data.train_batch(k).inputs for k in (0, 5)]
    for seed in (0, 1):
        a, b = f"preset=gpt2_adam,seed={seed}", f"preset=t5_adafactor,seed={seed}"
        jax.tree.map(np.testing.assert_array_equal, states[a], states[b])
        for x, y in zip(batches[a], batches[b], strict=True):
            np.testing.assert_array_equal(x, y)
    # And a different seed really is a different replicate.
    assert not np.array_equal(batches["preset=gpt2_adam,seed=0"][0], batches["preset=gpt2_adam,seed=1"][0])


def test_vectorised_trials_equal_separate_runs(tmp_path):
    """A vmapped group (the sweep's path) against each trial's own compiled step, stepped by hand."""
    from gptjax.checkpoint import restore_params
    from gptjax.data import build_data
    from gptjax.metrics import objective_loss
    from gptjax.train import build_steps, resolve, train_trials
    from gptjax.trials import varying_fields

    base = tiny_experiment(steps=4, log_every=1, eval_every=4, checkpoint_every=4)
    trials = [(1e-3, 0.95, 0.01), (3e-3, 0.99, 0.1), (1e-2, 0.9, 0.0)]
    cfgs = [dataclasses.replace(base, optim=dataclasses.replace(base.optim, lr=lr, b2=b2, weight_decay=wd))
            for lr, b2, wd in trials]
    assert varying_fields(cfgs) == ("lr", "b2", "weight_decay")
    workdirs = [tmp_path / str(i) for i in range(len(cfgs))]
    train_trials(dict(zip(workdirs, cfgs, strict=True)), log=lambda *_: None)
    for workdir, cfg in zip(workdirs, cfgs, strict=True):
        data = build_data(cfg.data, cfg.train.seed)
        steps = build_steps(resolve(cfg, data.tokenizer.vocab_size))
        state, losses = steps.init(), []
        for k in range(4):
            state, metrics = steps.step(state, data.train_batch(k))
            losses.append(float(objective_loss(metrics)))
        np.testing.assert_allclose([r["loss"] for r in _records(workdir, "train")], losses, rtol=1e-6)
        # Where a gradient is rounding noise, Adam's m/√v is still O(1), so the two programs' roundings can
        # move such a parameter by a fraction of lr (Python 3.12's locked versions: 1.6e-5 at lr 1e-3); a
        # wrong lr, β2 or decay moves every parameter by the order of lr and fails rtol.
        jax.tree.map(lambda v, s, atol=0.05 * cfg.optim.lr: np.testing.assert_allclose(v, np.asarray(s),
                                                                                       rtol=1e-4, atol=atol),
                     jax.device_get(restore_params(workdir)[2]), jax.device_get(state.params))
    with pytest.raises(ConfigError, match="cannot be vectorised"):
        other_rule = dataclasses.replace(base, optim=dataclasses.replace(base.optim, rule="adam_l2"))
        train_trials({tmp_path / "a": base, tmp_path / "b": other_rule})


def test_a_group_whose_betas_differ_matches_separate_runs_to_float32_rounding():
    """β2 0.999 beside 0.98 in one group: the group holds them as float32 and a separate run rounds its
    Python floats to float32 too, so only the batched matmuls' summation order could set them apart. Here
    the losses are bit-identical; before the rounding, 1 − β2 differed by 1.3e-5 and the step-12 losses
    by 1.1e-6 (relative)."""
    from gptjax.data import build_data
    from gptjax.metrics import objective_loss
    from gptjax.train import build_steps, resolve

    base = tiny_experiment(steps=12)
    base = dataclasses.replace(base, model=dataclasses.replace(base.model, n_layer=1, n_embd=16, context=16),
                               data=dataclasses.replace(base.data, seq_len=16, batch_size=4),
                               optim=dataclasses.replace(PRESETS["gpt2_adam"], lr=3e-3))
    data = build_data(base.data, base.train.seed)
    cfgs = [resolve(replace_path(base, "optim.b2", b2), data.tokenizer.vocab_size) for b2 in (0.999, 0.98)]
    group, alone = build_steps(*cfgs), build_steps(cfgs[0])
    state = alone.init()
    stacked = group.stack([state, group.fresh[1](state.params)])  # one initialisation compiled, not two
    for k in range(12):
        stacked, in_group = group.step(stacked, data.train_batch(k))
        state, metrics = alone.step(state, data.train_batch(k))
        np.testing.assert_allclose(np.asarray(objective_loss(in_group))[0], objective_loss(metrics),
                                   rtol=3e-7, atol=0, err_msg=f"step {k + 1}")


# Two adam_l2 trials that differ in lr, eps and weight decay (zero in one): one vmapped group. The
# broken variant differs in its data, so it has no partner and runs (and fails) as without --vmap.
VMAP_FILE = TINY_FILE.replace("steps=40", "steps=4").replace("eval_every=1000", "eval_every=2") + '''
import dataclasses
from gptjax.sweep import replace_path
def get_sweep(base):
    return {"preset=bert_adam": replace_path(base, "optim.preset", "bert_adam"),
            "preset=gpt2_adam,weight_decay=0": replace_path(replace_path(base, "optim.preset", "gpt2_adam"),
                                                            "optim.weight_decay", 0.0),
            "broken": dataclasses.replace(base, data=dataclasses.replace(base.data, source="text:/no/such"))}
'''
GROUP = ["preset=bert_adam", "preset=gpt2_adam,weight_decay=0"]


@pytest.fixture(scope="module")
def vmap_sweep(tmp_path_factory):
    """The sweep above run once with --vmap: (experiment file, sweep directory, the sweep's log lines)."""
    path = tmp_path_factory.mktemp("vmap") / "v.py"
    path.write_text(VMAP_FILE)
    lines = []
    run_sweep(str(path), root=path.parent / "runs", jobs=2, vmap=True, log=lines.append)
    return path, path.parent / "runs", lines


def _records(workdir, split):
    return [r for r in map(json.loads, (workdir / "metrics.jsonl").open()) if r["split"] == split]


def _final_state(workdir):
    # A separate run's abstract state: a vmapped trial's checkpoint must restore into it as it is.
    from gptjax.checkpoint import Checkpointer
    from gptjax.config import from_dict
    from gptjax.train import build_steps

    cfg = from_dict(json.loads((workdir / "config.json").read_text()))
    steps = build_steps(cfg)  # config.json holds the resolved config
    checkpointer = Checkpointer(workdir / "checkpoints", cfg.train.keep_checkpoints)
    items, meta = checkpointer.restore_latest({"params": steps.abstract_params,
                                               "opt_state": steps.abstract_opt_states[0]})
    checkpointer.close()
    return jax.device_get(items), meta


def test_vmap_sweep_equals_separate_runs_falls_back_skips_and_reports(vmap_sweep, tmp_path):
    from gptjax.report import load_runs
    from gptjax.train import train

    path, root, lines = vmap_sweep
    assert lines[1] == ("vmap: 2 variants in 1 vmapped group(s); on their own, as without --vmap (no other "
                        "variant differs from them only in vectorisable optimizer fields): broken")
    assert {read_status(root / name)["status"] for name in GROUP} == {"done"}
    assert "2 vmapped trials (varying lr, eps, weight_decay)" in (root / GROUP[0] / "log.txt").read_text()
    broken = read_status(root / "broken")  # the normal path's child: its error, its exit code
    assert broken["status"] == "failed" and broken["returncode"] == 2 and "/no/such" in broken["error"]

    _, variants = load_sweep(str(path))
    finals = {}
    for name in GROUP:
        separate = tmp_path / name
        train(variants[name], separate, log=lambda *_: None)
        for split in ("train", "val"):
            mine, theirs = _records(root / name, split), _records(separate, split)
            steps = [1, 2, 3, 4] if split == "train" else [2, 4]
            assert [r["step"] for r in mine] == [r["step"] for r in theirs] == steps
            assert [set(r) for r in mine] == [set(r) for r in theirs]  # what report and plots read
            np.testing.assert_allclose([r["loss"] for r in mine], [r["loss"] for r in theirs], rtol=1e-6)
        # The whole final state, optimizer moments included, in a separate run's checkpoint layout.
        (state, meta), (reference, _) = _final_state(root / name), _final_state(separate)
        assert meta["step"] == 4
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), state, reference)
        finals[name] = state
    # Each trial had its own optimizer: from the same initial parameters (same seed) Adam moves each
    # parameter by about lr per step, so the lr 2.5e-4 trial ends about 12 times as far from them as the
    # lr 2e-5 one. (Their loss gap after 4 steps is too small to hold across JAX versions.)
    runs = {run.name: run for run in load_runs(root)}
    assert set(runs) == {*GROUP, "broken"} and all(runs[name].finished for name in GROUP)
    assert {runs[name].setups[0]["execution"] for name in GROUP} == {"vmapped group of 2"}
    from gptjax.data import build_tokenizer
    from gptjax.train import init_params, resolve

    cfg = resolve(variants[GROUP[0]], build_tokenizer(variants[GROUP[0]].data).vocab_size)
    start = jax.device_get(init_params(cfg.train.seed, cfg=cfg))
    squares = {name: jax.tree.map(lambda a, b: np.sum((np.asarray(a) - b) ** 2), finals[name]["params"],
                                   start)
               for name in GROUP}
    moved = {name: np.sqrt(sum(jax.tree.leaves(tree))) for name, tree in squares.items()}
    assert moved[GROUP[1]] > 6 * moved["preset=bert_adam"] > 0, moved

    # Again, on the shard that holds the group (a group is one unit of i/N): done, so nothing starts.
    group_log = (root / GROUP[0] / "log.txt").read_text()
    more = []
    run_sweep(str(path), root=root, vmap=True, shard=(1, 2), log=more.append)
    assert "2 in shard 1/2, 2 already done, 0 to run" in more[0]
    assert (root / GROUP[0] / "log.txt").read_text() == group_log


def test_vmap_group_resumes_after_an_interruption_as_if_never_stopped(vmap_sweep, tmp_path):
    import os
    import signal

    from gptjax.guards import Preempted
    from gptjax.sweep import checkpoint_step
    from gptjax.train import train_trials

    path, _, _ = vmap_sweep
    _, variants = load_sweep(str(path))
    # The uninterrupted reference runs in this process too: another device count partitions the step
    # differently, and Adam turns the rounding noise of a gradient that is zero in exact arithmetic (the
    # key bias: softmax ignores a shift shared by a row) into updates of the learning rate's size.
    whole = {tmp_path / "whole" / name: variants[name] for name in GROUP}
    train_trials(whole, log=lambda *_: None)
    trials = {tmp_path / "resumed" / name: variants[name] for name in GROUP}
    sent = []

    def interrupt_at_first_eval(line):  # step 2's evaluation: the loop stops after step 3
        if line.startswith("step") and not sent:
            sent.append(os.kill(os.getpid(), signal.SIGINT))

    with pytest.raises(Preempted, match="stopped by SIGINT at step 3"):
        train_trials(trials, log=interrupt_at_first_eval)
    assert [checkpoint_step(w) for w in trials] == [3, 3]
    resumed = train_trials(trials, log=lambda *_: None)
    for workdir, result in resumed.items():
        uninterrupted = tmp_path / "whole" / workdir.name
        assert result["step"] == 4
        assert result["val"]["loss"] == pytest.approx(_records(uninterrupted, "val")[-1]["loss"], rel=1e-6)
        assert [r["step"] for r in _records(workdir, "train")] == [1, 2, 3, 4]
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), _final_state(workdir)[0],
                     _final_state(uninterrupted)[0])


def test_a_diverging_vmapped_trial_is_dropped_and_the_others_train_on(tmp_path):
    from gptjax.train import train_trials

    base = tiny_experiment(steps=4, eval_every=2, checkpoint_every=2, max_nonfinite_steps=2)
    cfgs = [dataclasses.replace(base, optim=dataclasses.replace(base.optim, lr=lr)) for lr in (1e-3, 1e30)]
    out = train_trials({tmp_path / str(i): c for i, c in enumerate(cfgs)}, log=lambda *_: None)
    # Step 1's update is finite (if huge), the next two are not: dropped after step 3.
    assert out[tmp_path / "1"] == {"diverged": "training diverged: 2 non-finite steps in a row, the last at "
                                               "step 3; the last checkpoint holds finite parameters"}
    assert [r["split"] for r in map(json.loads, (tmp_path / "1" / "metrics.jsonl").open())] == \
        ["setup", "skipped", "val", "skipped"]
    assert out[tmp_path / "0"]["step"] == 4 and np.isfinite(out[tmp_path / "0"]["val"]["loss"])
    assert [r["step"] for r in _records(tmp_path / "0", "val")] == [2, 4]


def test_vmap_groups_differ_only_in_vectorisable_fields_and_shard_whole():
    from gptjax.sweep import shard_units, vmap_groups

    base = tiny_experiment()
    axes = {"optim.lr": [1e-3, 2e-3, 4e-3], "optim.weight_decay": [0.0, 0.1]}
    variants = with_seeds(grid(base, axes), [0, 1])
    variants.update(grid(base, {"optim.preset": ["t5_adafactor", "gpt2_adam", "bert_adam"]}))
    variants["adafactor_b2"] = replace_path(variants["preset=t5_adafactor"], "optim.b2", 0.9)
    variants["adafactor_lr"] = replace_path(variants["preset=t5_adafactor"], "optim.lr", 0.1)
    variants["fsdp"] = replace_path(base, "train.fsdp", 2)
    for lr in (1e-3, 2e-3):  # runs started from another's parameters keep their own init: never grouped
        variants[f"init_from_{lr}"] = replace_path(replace_path(base, "train.init_from", "runs/x"),
                                                   "optim.lr", lr)
    units = vmap_groups(variants)
    assert {len(u) for u in units if "lr=0.001,weight_decay=0,seed=0" in u} == {6}  # one per seed
    assert ["preset=bert_adam", "preset=gpt2_adam"] in units  # one rule, presets are only labels
    assert ["adafactor_lr", "preset=t5_adafactor"] in units  # Adafactor vectorises lr alone
    assert ["adafactor_b2"] in units and ["fsdp"] in units
    assert ["init_from_0.001"] in units and ["init_from_0.002"] in units
    # Variants at different checkpoints never share a group: it steps in lockstep.
    pair = {k: variants[k] for k in ("adafactor_lr", "preset=t5_adafactor")}
    split = vmap_groups(pair, {"adafactor_lr": 3})
    assert split == [["adafactor_lr"], ["preset=t5_adafactor"]]
    for n in (1, 2, 3, 9):
        parts = [shard_units(units, (i, n)) for i in range(n)]
        assert sorted(sum(parts, [])) == sorted(units)


def test_a_vmapped_group_trains_any_objective_like_separate_runs(tmp_path):
    """The group path serves every objective: BERT's masked LM with its trained tokenizer, here."""
    from gptjax.metrics import read_metrics
    from gptjax.train import train, train_trials
    from tests.test_train_objectives import tiny

    base = tiny("mlm", steps=2, eval_every=2, log_every=1, checkpoint_every=2)
    trials = {tmp_path / f"lr={lr}": replace_path(base, "optim.lr", lr) for lr in (1e-3, 3e-3)}
    train_trials(trials, log=lambda *_: None)
    train(trials[tmp_path / "lr=0.003"], tmp_path / "alone", log=lambda *_: None)
    for workdir in [*trials, tmp_path / "alone"]:
        assert (workdir / "tokenizer.json").exists()
    vmapped = [r for r in read_metrics(tmp_path / "lr=0.003") if r["split"] != "setup"]
    alone = [r for r in read_metrics(tmp_path / "alone") if r["split"] != "setup"]
    assert [r["split"] for r in vmapped] == [r["split"] for r in alone]
    for a, b in zip(vmapped, alone, strict=True):
        np.testing.assert_allclose(a["mlm"], b["mlm"], rtol=1e-5)
