"""Sweep reports: every number and every statement against a hand computation on hand-made run directories."""

import dataclasses
import json
import math
import struct

import pytest

from gptjax.cli import main
from gptjax.config import PRESETS, to_dict
from gptjax.report import (
    best_per_optimizer,
    default_target,
    grid_edge,
    load_runs,
    loss_unit,
    mean_ci,
    paired_differences,
    render,
    settings_of,
    time_to_target,
    verdict,
)
from tests.conftest import tiny_experiment

T2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom
T1 = 12.706204736174707  # 1 degree of freedom

# (preset, lr) → per seed the validation losses at steps 10 and 20 (train.steps = 20).
RUNS = {
    ("gpt2_adam", 1e-3): {0: [2.5, 2.0], 1: [2.6, 2.2], 2: [2.3, 2.4]},
    ("gpt2_adam", 1e-2): {0: [3.0, 3.0], 1: [3.0, 3.0], 2: [3.0, 3.0]},
    ("gpt3_adamw", 1e-3): {0: [2.1, 1.9], 1: [2.2, 2.0], 2: [2.4, 2.3]},
}


def _write_run(root, name, cfg, losses, *, setup=None, train=None, status="done", log=None):
    """A variant directory as a sweep leaves it: config.json, metrics.jsonl (one setup record, then a
    train and a val record at steps 10, 20, …, val elapsed_s = step/10 + 0.5) and status.json."""
    workdir = root / name
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(to_dict(cfg)))
    setups = setup if isinstance(setup, list) else [{"params": 1, **(setup or {})}]
    records = [{"step": 0, "split": "setup", **s} for s in setups]
    for i, loss in enumerate(losses):
        step = 10 * (i + 1)
        records.append({"step": step, "split": "train", "loss": loss + 0.1, "elapsed_s": step / 10,
                        **(train or {})})
        records.append({"step": step, "split": "val", "loss": loss, "elapsed_s": step / 10 + 0.5})
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (workdir / "status.json").write_text(json.dumps({"status": status}))
    if log is not None:
        (workdir / "log.txt").write_text(log)


def _cfg(preset, lr, seed, steps=20, **optim):
    base = tiny_experiment(steps=steps)
    return dataclasses.replace(base, optim=dataclasses.replace(PRESETS[preset], lr=lr, **optim),
                               train=dataclasses.replace(base.train, seed=seed))


def _write_sweep(root, unfinished=True, runs=RUNS, **run_args):
    for (preset, lr), seeds in runs.items():
        for seed, losses in seeds.items():
            _write_run(root, f"preset={preset},lr={lr:.3g},seed={seed}", _cfg(preset, lr, seed), losses,
                       **run_args)
    if unfinished:  # a fourth seed of gpt3_adamw still running at step 10: listed, not averaged
        workdir = root / "preset=gpt3_adamw,lr=0.001,seed=3"
        workdir.mkdir()
        (workdir / "config.json").write_text(json.dumps(to_dict(_cfg("gpt3_adamw", 1e-3, 3))))
        (workdir / "metrics.jsonl").write_text(json.dumps({"step": 10, "split": "val", "loss": 0.5}) + "\n")
        (workdir / "status.json").write_text(json.dumps({"status": "running"}))


def test_mean_and_interval_by_hand():
    mean, half = mean_ci([2.0, 2.2, 2.4])
    assert mean == pytest.approx(2.2)
    assert half == pytest.approx(T2 * 0.2 / math.sqrt(3))
    assert math.isnan(mean_ci([1.0])[1])


def test_report_numbers_equal_a_hand_computation(tmp_path):
    _write_sweep(tmp_path)
    runs = load_runs(tmp_path)
    assert len(runs) == 10 and sum(r.finished for r in runs) == 9
    settings = {s.name: s for s in settings_of(runs)}
    adam = settings["preset=gpt2_adam,lr=0.001"]
    assert adam.final == pytest.approx((2.2, T2 * 0.2 / math.sqrt(3)))
    adamw = settings["preset=gpt3_adamw,lr=0.001"]
    assert len(adamw.runs) == 4 and len(adamw.done) == 3  # the unfinished seed 3 is left out
    # gpt3_adamw finals 1.9, 2.0, 2.3: mean 2.0667, sd 0.20817.
    assert adamw.final == pytest.approx((6.2 / 3, T2 * 0.2081666 / math.sqrt(3)), rel=1e-5)

    best = best_per_optimizer(list(settings.values()))
    assert list(best) == ["gpt3_adamw", "gpt2_adam"]  # ordered best first
    assert best["gpt2_adam"].lr == 1e-3  # 2.2 beats lr 1e-2's 3.0

    # Paired by seed: gpt2_adam − gpt3_adamw = 0.1, 0.2, 0.1 → mean 0.1333, sd 0.057735.
    reference, diffs = paired_differences(best)
    assert reference == "gpt3_adamw"
    mean, half, n = diffs["gpt2_adam"]
    assert n == 3 and mean == pytest.approx(0.4 / 3)
    assert half == pytest.approx(T2 * 0.0577350 / math.sqrt(3), rel=1e-5)  # 0.143 > 0.133: contains 0

    # Default target: the worse optimizer's best mean, 2.2. gpt2_adam seed 0 reaches it at step 20
    # (2.0), seed 1 at 20 (2.2), seed 2 never (2.3, 2.4); gpt3_adamw seeds 0, 1 at step 10, 2 never.
    target = default_target(best)
    assert target == pytest.approx(2.2)
    hits = [time_to_target(r, target) for r in best["gpt2_adam"].done]
    assert hits == [(20, 2.5), (20, 2.5), None]
    assert [time_to_target(r, target) for r in best["gpt3_adamw"].done] == [(10, 1.5), (10, 1.5), None]

    text = render(tmp_path, runs)
    assert "9 of 10 variants finished" in text
    # Byte tokenizer, cross-entropy alone: nats/byte, and bits/byte = nats/ln 2 (2.2/ln 2 = 3.174).
    assert "validation losses in nats/byte (bits/byte" in text and "nats/token" not in text
    assert "| gpt2_adam | 0.001 | – | 3/3 | 2.200 ± 0.497 | 3.174 ± 0.717 |" in text
    assert ("| gpt3_adamw | 0.001 | – | 3/4 (unfinished runs excluded) | 2.067 ± 0.517 | 2.982 ± 0.746 |"
            in text)
    assert "Target validation loss 2.200" in text
    assert ("| gpt2_adam | 0.001 | – | 2.200 ± 0.497 | 3.174 ± 0.717 | 2/3 | 20 ± 0 | 2.5 ± 0.0 "
            "| separate; load not recorded |") in text
    assert "| gpt3_adamw | 0.001 | – | 2.067 ± 0.517 | 2.982 ± 0.746 | 2/3 | 10 ± 0 | 1.5 ± 0.0 |" in text
    assert "| preset=gpt3_adamw,lr=0.001,seed=3 | running | 10/20 | 0.500 |" in text


def test_verdicts_say_what_the_seeds_support(tmp_path):
    # The data above: 0.133 ± 0.143 contains 0, so no winner may be named, in a heading or anywhere.
    _write_sweep(tmp_path / "tie", unfinished=False)
    text = render(tmp_path / "tie", load_runs(tmp_path / "tie"))
    assert "against the best optimizer" not in text and "Paired differences against" not in text
    assert "| gpt2_adam | 0.133 ± 0.143 | 3 | no difference the seeds agree on |" in text
    assert "No single best optimizer: gpt3_adamw has the lowest mean, but the seeds do not separate it " \
           "from gpt2_adam." in text

    # Differences 0.10, 0.12, 0.11: mean 0.11, sd 0.01, half-width t·0.01/√3 = 0.0248, excluding 0.
    clear = {("gpt2_adam", 1e-3): {0: [2.5, 2.0], 1: [2.6, 2.12], 2: [2.3, 2.41]},
             ("gpt3_adamw", 1e-3): {0: [2.1, 1.9], 1: [2.2, 2.0], 2: [2.4, 2.3]}}
    _write_sweep(tmp_path / "clear", unfinished=False, runs=clear)
    text = render(tmp_path / "clear", load_runs(tmp_path / "clear"))
    assert "| gpt2_adam | 0.110 ± 0.025 | 3 | gpt3_adamw lower by 0.110 ± 0.025 |" in text
    assert "gpt3_adamw has the lowest final loss, and every other optimizer's is higher by an interval " \
           "that excludes 0." in text

    # Two seeds: the interval is t(1)·sd/√2 and the verdict warns; one seed: no interval at all.
    assert verdict("a", "b", 0.3, 0.1, 2) == "b lower by 0.300 ± 0.100 (only 2 seeds: too few for a " \
                                            "reliable interval)"
    assert verdict("a", "b", -0.3, 0.1, 3) == "a lower by 0.300 ± 0.100"
    assert verdict("a", "b", 0.05, 0.1, 5) == "no difference the seeds agree on"
    assert verdict("a", "b", 0.05, math.nan, 1) == "no interval: 1 paired seed"
    two = {("gpt2_adam", 1e-3): {0: [2.5, 2.0], 1: [2.6, 2.3]}, ("gpt3_adamw", 1e-3): {0: [2.1, 1.9],
                                                                                      1: [2.2, 2.0]}}
    _write_sweep(tmp_path / "two", unfinished=False, runs=two)
    text = render(tmp_path / "two", load_runs(tmp_path / "two"))
    half = T1 * math.sqrt(0.02) / math.sqrt(2)  # differences 0.1, 0.3: sd √0.02
    assert f"| gpt2_adam | 0.200 ± {half:.3f} | 2 | no difference the seeds agree on (only 2 seeds" in text
    assert "- gpt3_adamw (separate): 2 finished seed(s) behind its best setting; intervals need at least 3" \
           in text


def test_best_learning_rate_at_the_edge_of_its_grid_is_flagged(tmp_path):
    grid = {("gpt2_adam", 1e-3): {0: [2.5, 2.4]}, ("gpt2_adam", 3e-3): {0: [2.5, 2.1]},
            ("gpt2_adam", 1e-2): {0: [2.5, 2.3]},  # best in the middle: bracketed
            ("bert_adam", 1e-4): {0: [2.9, 2.8]}, ("bert_adam", 1e-3): {0: [2.6, 2.5]},  # best at the top
            ("gpt3_adamw", 1e-3): {0: [2.2, 2.0]}}  # one lr only
    _write_sweep(tmp_path, unfinished=False, runs=grid)
    settings = settings_of(load_runs(tmp_path))
    best = best_per_optimizer(settings)
    assert grid_edge(settings, best["gpt2_adam"]) is None
    assert grid_edge(settings, best["bert_adam"]) == (
        "best lr 0.001 is the highest of its grid (0.0001 … 0.001): the optimum is not bracketed, try higher")
    assert grid_edge(settings, best["gpt3_adamw"]) == "only one lr tried (0.001): not tuned"
    text = render(tmp_path, load_runs(tmp_path))
    assert "- bert_adam (separate): best lr 0.001 is the highest of its grid" in text
    assert "gpt2_adam (separate): best lr" not in text


def test_recipe_differences_and_what_a_preset_axis_replaced(tmp_path):
    # Two settings of one preset differing in warmup and clipping, and a preset swapped in whole.
    base = tiny_experiment(steps=20)
    long = dataclasses.replace(PRESETS["gpt3_adamw"], lr=1e-3, warmup_steps=5, grad_clip=1.0)
    for seed in (0, 1, 2):
        train = dataclasses.replace(base.train, seed=seed)
        _write_run(tmp_path, f"preset=gpt3_adamw,lr=0.001,seed={seed}",
                   dataclasses.replace(base, optim=dataclasses.replace(PRESETS["gpt3_adamw"], lr=1e-3),
                                       train=train), [2.2, 2.0])
        _write_run(tmp_path, f"preset=gpt3_adamw,lr=0.001,warmup_steps=5,seed={seed}",
                   dataclasses.replace(base, optim=long, train=train), [2.3, 2.1])
    text = render(tmp_path, load_runs(tmp_path))
    assert ("Every variant: train.steps 20, optim.schedule constant, optim.min_lr_ratio 0, "
            "optim.weight_decay 0.01, data.batch_size 8, data.seq_len 32, train.grad_accum 1.") in text
    assert "| setting | optim.warmup_steps | optim.grad_clip |" in text
    assert "| preset=gpt3_adamw,lr=0.001 | 0 | 0 |" in text
    assert "| preset=gpt3_adamw,lr=0.001,warmup_steps=5 | 5 | 1 |" in text
    assert "The preset axis replaced the whole optimizer section" in text
    assert "sweep.json has no `base`" in text

    # With the base recorded (sweep.json's `base`), the values the preset replaced are named.
    recipe = dataclasses.replace(PRESETS["gpt3_adamw"], schedule="cosine", warmup_steps=30, grad_clip=1.0,
                                 weight_decay=0.1)
    sweep = {"variants": sorted(p.name for p in tmp_path.iterdir()),
             "base": to_dict(dataclasses.replace(base, optim=recipe))}
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    text = render(tmp_path, load_runs(tmp_path))
    assert ("- gpt3_adamw: the base's schedule cosine → constant, warmup_steps 30 → 0, grad_clip 1 → 0, "
            "weight_decay 0.1 → 0.01") in text


def test_adafactor_relative_step_has_its_own_column_and_axis(tmp_path):
    runs = {("gpt2_adam", 1e-3): {0: [2.5, 2.2]}, ("t5_adafactor", 1e-2): {0: [2.4, 2.1]}}
    _write_sweep(tmp_path / "x", unfinished=False, runs=runs)
    text = render(tmp_path / "x", load_runs(tmp_path / "x"))
    assert "| optimizer | lr | relative step ρ | runs done |" in text
    assert "| gpt2_adam | 0.001 | – | 1/1 |" in text and "| t5_adafactor | – | 0.01 | 1/1 |" in text
    assert "best relative step 0.01" not in text  # only one ρ: "only one relative step tried"
    assert "t5_adafactor (separate): only one relative step tried (0.01)" in text
    assert main(["report", "x", "--dir", str(tmp_path / "x")]) == 0
    # Two panels side by side (learning rate | relative step): the PNG is twice as wide, 14 in × 120 dpi.
    width = struct.unpack(">I", (tmp_path / "x" / "lr_sensitivity.png").read_bytes()[16:20])[0]
    assert width == 14 * 120
    only_adam = {("gpt2_adam", 1e-3): {0: [2.5, 2.2]}}
    _write_sweep(tmp_path / "y", unfinished=False, runs=only_adam)
    assert main(["report", "y", "--dir", str(tmp_path / "y")]) == 0
    assert struct.unpack(">I", (tmp_path / "y" / "lr_sensitivity.png").read_bytes()[16:20])[0] == 7 * 120


def test_execution_modes_are_kept_apart_and_marked_on_seconds(tmp_path):
    # The same two settings, seeds 0-2, once vmapped (groups of 3, load 3.5) and once separately (load 1):
    # vmapped copies under other names, since a sweep directory holds one run per variant name.
    _write_sweep(tmp_path, unfinished=False, runs={k: v for k, v in RUNS.items() if k[1] == 1e-3},
                 setup={"load_avg": [1.0, 1.0, 1.0]})
    shifted = {("gpt2_adam", 1e-3): {0: [2.5, 2.3], 1: [2.6, 2.2], 2: [2.3, 2.4]},
               ("gpt3_adamw", 1e-3): {0: [2.1, 1.9], 1: [2.2, 2.0], 2: [2.4, 2.3]}}
    for (preset, lr), seeds in shifted.items():
        for seed, losses in seeds.items():
            _write_run(tmp_path, f"preset={preset},lr={lr:.3g},seed={seed},vm", _cfg(preset, lr, seed),
                       losses, setup={"vmapped_trials": 3}, train={"load_avg": 3.5})
    runs = load_runs(tmp_path)
    assert {r.mode for r in runs} == {"separate", "vmapped"}
    assert {r.load for r in runs} == {1.0, 3.5}
    # The ",vm" names keep their seed apart from the setting: "preset=gpt2_adam,lr=0.001,vm".
    settings = settings_of(runs)
    assert len(settings) == 4 and all(len(s.runs) == 3 for s in settings)
    text = render(tmp_path, runs)
    assert "**Runs of more than one execution mode.**" in text
    assert "## Comparison within the separate runs" in text
    assert "## Comparison within the vmapped runs" in text
    assert "| separate; load 1.0 |" in text and "| vmapped ×3; load 3.5 |" in text
    # Within the vmapped runs: gpt2 − gpt3 = 0.4, 0.2, 0.1 → mean 0.2333, sd 0.15275.
    half = T2 * 0.152753 / math.sqrt(3)
    assert f"| gpt2_adam | 0.233 ± {half:.3f} | 3 | no difference the seeds agree on |" in text
    assert "| gpt2_adam | 0.133 ± 0.143 | 3 |" in text  # the separate runs' own comparison


def test_seconds_of_different_group_sizes_are_not_compared(tmp_path):
    runs = {("gpt2_adam", 1e-3): {0: [2.5, 2.2]}, ("gpt3_adamw", 1e-3): {0: [2.4, 2.1]}}
    for (preset, lr), seeds in runs.items():
        for seed, losses in seeds.items():
            trials = 6 if preset == "gpt2_adam" else 2
            _write_run(tmp_path, f"preset={preset},lr={lr:.3g},seed={seed}", _cfg(preset, lr, seed), losses,
                       setup={"vmapped_trials": trials, "jobs": 2})
    text = render(tmp_path, load_runs(tmp_path))
    assert ("**Seconds are not comparable between these rows**: they ran as vmapped ×2, 2 jobs / "
            "vmapped ×6, 2 jobs.") in text


def test_a_run_started_on_a_loaded_machine_is_flagged(tmp_path):
    # Seeds 0-1 started with 5 runnable processes on 2 CPUs, seed 2 with 1.5: only the first two count.
    runs = {("gpt2_adam", 1e-3): RUNS[("gpt2_adam", 1e-3)]}
    for seed, losses in runs[("gpt2_adam", 1e-3)].items():
        load = [5.0, 4.0, 3.0] if seed < 2 else [1.5, 1.0, 1.0]
        _write_run(tmp_path, f"lr=0.001,seed={seed}", _cfg("gpt2_adam", 1e-3, seed), losses,
                   setup={"execution": "separate", "load_avg": load, "cpus": 2})
    loaded = load_runs(tmp_path)
    assert [r.loaded for r in loaded] == [True, True, False] and loaded[0].cpus == 2
    text = render(tmp_path, loaded)
    assert ("2 run(s) started on a loaded machine, up to load average 5.0 on 2 CPUs (`lr=0.001,seed=0`)"
            in text)
    assert f"| separate; load {(5 + 5 + 1.5) / 3:.1f} on 2 CPUs |" in text
    assert "loaded machine" not in render(tmp_path, loaded[2:])


def test_mode_from_the_log_when_no_setup_record_and_resumed_runs_marked(tmp_path):
    _write_run(tmp_path, "preset=gpt2_adam,lr=0.001,seed=0", _cfg("gpt2_adam", 1e-3, 0), [2.5, 2.2], setup=[],
               log="trained vmapped with preset=gpt2_adam,lr=0.01,seed=0; the group's output is in ../x\n")
    _write_run(tmp_path, "preset=gpt3_adamw,lr=0.001,seed=0", _cfg("gpt3_adamw", 1e-3, 0), [2.4, 2.1],
               setup=[{"vmapped_trials": 2}, {"step": 10, "params": 1}])  # resumed at 10
    gpt2, gpt3 = load_runs(tmp_path)
    assert gpt2.mode == "vmapped" and gpt3.mode == "mixed" and gpt3.resumed
    # A variant that failed before training (no setup record, no log) makes no mode of its own.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "variant.json").write_text(json.dumps(to_dict(_cfg("gpt2_adam", 1e-2, 0))))
    (broken / "status.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    runs = [r for r in load_runs(tmp_path) if r.name != gpt3.name]
    assert [s.mode for s in settings_of(runs)] == ["vmapped", "vmapped"]
    assert "more than one execution mode" not in render(tmp_path, runs)
    text = render(tmp_path, [gpt3])
    assert "(resumed: time since the last start only)" in text


def test_units_follow_the_tokenizer_and_the_loss():
    base = to_dict(tiny_experiment())
    flat = {"data.tokenizer": "byte", "loss.terms": {"ce": 1.0}, "loss.normalization": "token"}
    assert loss_unit(flat).name == "nats/byte" and loss_unit(flat).per_byte
    assert loss_unit({**flat, "data.tokenizer": "bpe"}).name == "nats/token"
    assert not loss_unit({**flat, "data.tokenizer": "bpe"}).per_byte
    assert loss_unit({**flat, "loss.normalization": "sequence"}).name == "nats/sequence"
    z = loss_unit({**flat, "loss.terms": {"ce": 1.0, "z": 1e-4}})
    assert z.name == "nats/byte of the objective 1·ce + 0.0001·z" and not z.per_byte
    assert base["data"]["tokenizer"] == "byte"  # what the hand-made sweeps above use


def test_bpe_sweep_says_nats_per_token_without_bits_per_byte(tmp_path):
    base = tiny_experiment(steps=20)
    for seed in (0, 1):
        cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, tokenizer="bpe"),
                                  train=dataclasses.replace(base.train, seed=seed))
        _write_run(tmp_path, f"lr=0.00025,seed={seed}", cfg, [2.5, 2.2],
                   setup={"environment": {"jax": "0.10.2", "python": "3.11.7"}})
    text = render(tmp_path, load_runs(tmp_path))
    assert "validation losses in nats/token from" in text and "bits/byte" not in text
    assert "Environment: jax 0.10.2, python 3.11.7." in text


def test_environments_that_differ_are_listed(tmp_path):
    _write_run(tmp_path, "lr=0.001,seed=0", _cfg("gpt2_adam", 1e-3, 0), [2.5, 2.2],
               setup={"versions": {"jax": "0.10.2"}})
    _write_run(tmp_path, "lr=0.001,seed=1", _cfg("gpt2_adam", 1e-3, 1), [2.5, 2.2],
               setup={"versions": {"jax": "0.9.0"}})
    text = render(tmp_path, load_runs(tmp_path))
    assert "Environment: **the runs differ**" in text
    assert "- jax 0.10.2: 1 run(s), e.g. `lr=0.001,seed=0`" in text


def test_report_command_writes_markdown_and_plots(tmp_path, capsys):
    _write_sweep(tmp_path / "x")
    names = sorted(p.name for p in (tmp_path / "x").iterdir()) + ["preset=gpt2_adam,lr=0.1,seed=0"]
    (tmp_path / "x" / "sweep.json").write_text(json.dumps({"variants": names}))
    assert main(["report", "x", "--dir", str(tmp_path / "x"), "--target", "2.5"]) == 0
    text = (tmp_path / "x" / "report.md").read_text()
    assert "Target validation loss 2.500" in text and "![curves.png](curves.png)" in text
    assert "9 of 11 variants finished" in text and "| preset=gpt2_adam,lr=0.1,seed=0 | not started |" in text
    for png in ("curves.png", "lr_sensitivity.png"):
        assert (tmp_path / "x" / png).read_bytes()[:4] == b"\x89PNG"
    assert main(["report", "nosuch", "--dir", str(tmp_path / "nosuch")]) == 2
    assert "is not a sweep directory" in capsys.readouterr().err
