"""What a workdir holds and whether a command may continue it: damaged config files, a changed config
compared field by field (refused, or train.reset_optimizer), and the checks made before a workdir is
created (init_from shapes, a step's memory)."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from gptjax.checkpoint import Checkpointer, checkpoint_steps
from gptjax.cli import main
from gptjax.config import PRESETS, ConfigError, from_dict, to_dict
from gptjax.data import build_data
from gptjax.train import build_steps, resolve, train
from gptjax.workdir import check_resume, describe_changes, read_config
from tests.conftest import TRAINED_CFG

CFG = TRAINED_CFG  # the config of the `trained` workdir (tests/conftest.py)


def _copy(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "w")
    return tmp_path / "w"


def _snapshot(workdir):
    return {str(p.relative_to(workdir)): p.read_bytes() if p.is_file() else None for p in workdir.rglob("*")}


def _with(cfg=CFG, **sections):
    return dataclasses.replace(cfg, **{k: dataclasses.replace(getattr(cfg, k), **v)
                                       for k, v in sections.items()})


def _resolved(cfg):
    return resolve(cfg, build_data(cfg.data, 0).tokenizer.vocab_size)


DAMAGED = {
    "not JSON": (b"this is not json\n", "is damaged (not JSON: Expecting value at line 1)"),
    "truncated": (None, "is damaged (not JSON: "),
    "a list": (b"[]\n", "holds a JSON list, not a gptjax config"),
    "binary": (b"\x80\x81garbage", "is damaged (not JSON: not UTF-8 text)"),
    "a section not an object": (b'{"model": 3}', "section 'model' is a int, not an object"),
    "an unknown field": (b'{"model": {"n_layers": 3}}', "unexpected keyword argument 'n_layers'"),
}


@pytest.mark.parametrize("damage", list(DAMAGED))
def test_a_damaged_config_json_is_one_line_and_exit_2_for_sample_and_train(trained, tmp_path, capsys, damage):
    workdir = _copy(trained, tmp_path)
    content, message = DAMAGED[damage]
    path = workdir / "config.json"
    path.write_bytes(content if content is not None else path.read_bytes()[: path.stat().st_size // 2])
    before = _snapshot(workdir)
    with pytest.raises(ConfigError, match="config.json"):
        read_config(workdir)
    assert main(["sample", str(workdir)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and message in err, err
    if damage in ("not JSON", "a list"):  # train reads the same function; two cases show it
        with pytest.raises(ConfigError, match="config.json"):
            train(CFG, workdir, log=lambda *_: None)
    assert _snapshot(workdir) == before


def test_a_changed_optimizer_is_refused_naming_the_fields_and_nothing_moves(trained, tmp_path):
    workdir = _copy(trained, tmp_path)
    before = _snapshot(workdir)
    adafactor = dataclasses.replace(CFG, optim=PRESETS["t5_adafactor"])
    with pytest.raises(ConfigError, match=r"optim.preset=gpt3_adamw \(now t5_adafactor\).*"
                                          r"train.reset_optimizer=true.*train.init_from="):
        train(adafactor, workdir, log=lambda *_: None)
    # grad_clip 0 -> 1 adds a clipping stage to the optimizer chain: its state changes structure.
    with pytest.raises(ConfigError, match=r"optim.grad_clip=0.0 \(now 1.0\), which changes the saved"):
        train(_with(optim={"grad_clip": 1.0}), workdir, log=lambda *_: None)
    with pytest.raises(ConfigError, match=r"model.n_embd=32 \(now 48\)"):
        train(_with(model={"n_embd": 48}), workdir, log=lambda *_: None)
    assert _snapshot(workdir) == before


def test_fields_that_leave_the_state_alone_may_change_on_resume(trained):
    cfg = _resolved(_with(train={"steps": 9, "eval_every": 3, "log_every": 1, "keep_checkpoints": 1},
                          optim={"lr": 1e-4, "grad_clip": 0.0}, model={"dtype": "bfloat16"}))
    changes = check_resume(trained, cfg, build_steps(cfg).abstract_params)
    assert changes == {"train.steps": (4, 9), "train.eval_every": (100, 3), "train.log_every": (2, 1),
                       "train.keep_checkpoints": (3, 1), "optim.lr": (2.5e-4, 1e-4),
                       "model.dtype": ("float32", "bfloat16")}
    assert describe_changes(changes) == (
        "train.steps 4 → 9, train.eval_every 100 → 3, train.log_every 2 → 1, train.keep_checkpoints 3 → 1; "
        "changing the training from here on: model.dtype float32 → bfloat16, optim.lr 0.00025 → 0.0001")


def test_an_intact_checkpoint_of_another_structure_is_refused_not_moved(trained, tmp_path):
    """config.json says Adafactor (as a reset run killed before its first checkpoint would leave it)
    but the checkpoints hold Adam's state: a mismatch, classified before anything is moved."""
    workdir = _copy(trained, tmp_path)
    adafactor = _resolved(dataclasses.replace(CFG, optim=PRESETS["t5_adafactor"]))
    (workdir / "config.json").write_text(json.dumps(to_dict(adafactor)))
    with pytest.raises(ConfigError, match=r"checkpoints/4 is intact but its opt_state .*"
                                          r"train.reset_optimizer"):
        train(adafactor, workdir, log=lambda *_: None)
    assert checkpoint_steps(workdir) == [2, 4]
    assert not any(p.name.startswith("corrupt") for p in (workdir / "checkpoints").iterdir())


@pytest.mark.slow
def test_reset_optimizer_keeps_the_parameters_and_starts_a_fresh_optimizer_state(trained, tmp_path):
    workdir = _copy(trained, tmp_path)
    adafactor = dataclasses.replace(CFG, optim=PRESETS["t5_adafactor"],
                                    train=dataclasses.replace(CFG.train, steps=6, reset_optimizer=True))
    messages = []
    result = train(adafactor, workdir, log=messages.append)
    assert result["step"] == 6
    assert any("train.reset_optimizer: parameters of step 4 kept, a fresh t5_adafactor optimizer state "
               "(the checkpoint's was gpt3_adamw)" in m for m in messages), messages
    # Step 6 holds Adafactor's state and records it, so the same command resumes it as saved.
    resolved = _resolved(adafactor)
    steps = build_steps(resolved)
    checkpointer = Checkpointer(workdir / "checkpoints", 5, writer=False)
    items, meta = checkpointer.restore_latest({"params": steps.abstract_params,
                                               "opt_state": steps.abstract_opt_states[0]})
    checkpointer.close()
    assert meta["step"] == 6 and meta["optim"] == dataclasses.asdict(resolved.optim)
    assert jax.tree_util.tree_structure(items["opt_state"]) == jax.tree_util.tree_structure(
        steps.abstract_opt_states[0])
    assert check_resume(workdir, resolved, steps.abstract_params) == {}


def test_init_from_of_other_shapes_is_refused_before_the_workdir_exists(trained, tmp_path):
    cfg = _with(model={"n_embd": 48}, train={"init_from": str(trained)})
    # The first parameter in path order: the fused q, k, v bias, [3, n_embd].
    with pytest.raises(ConfigError, match=r"train.init_from .*: parameter blocks/0/attn/c_attn/bias has "
                                          r"shape \(3, 32\) there, \(3, 48\) here"):
        train(cfg, tmp_path / "new", log=lambda *_: None)
    assert not (tmp_path / "new").exists()


def test_a_workdir_that_never_completed_a_step_does_not_block_a_corrected_command(trained, tmp_path):
    """What a late failure used to leave (.lock, an empty checkpoints/, the wrong config.json)."""
    workdir = tmp_path / "w"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / ".lock").write_text("")
    wrong = _with(model={"n_embd": 64})
    (workdir / "config.json").write_text(json.dumps(to_dict(wrong)))
    cfg = _resolved(CFG)
    assert check_resume(workdir, cfg, build_steps(cfg).abstract_params) == {}
    (workdir / "config.json").write_text("[]")  # a damaged one protects nothing either
    assert check_resume(workdir, cfg, build_steps(cfg).abstract_params) == {}
    with pytest.raises(ConfigError, match=r"model.n_embd=32 \(now 64\)"):
        check_resume(trained, _resolved(wrong), build_steps(_resolved(wrong)).abstract_params)


def test_an_absurd_batch_is_refused_in_one_line_before_the_workdir_exists(tmp_path):
    cfg = _with(data={"batch_size": 100_000_000})
    with pytest.raises(ConfigError, match=r"a step needs at least [\d,.]+ GiB per device .*data.batch_size="
                                          r"100000000.*lower data.batch_size or raise train.grad_accum"):
        train(cfg, tmp_path / "w", log=lambda *_: None)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("content,message", [
    (b"garbage {", "config.json is not JSON (Expecting value at line 1)"),
    (b'"gpt2"', "config.json holds a JSON str, not a model config"),
    (b'{"model_type": "gpt2"}', "is not a usable gpt2 config (KeyError: 'n_embd')"),
])
def test_import_hf_with_a_garbage_config_json_is_one_line(tmp_path, capsys, content, message):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_bytes(content)
    from safetensors.numpy import save_file

    save_file({"wte.weight": np.zeros((4, 2), np.float32)}, hf / "model.safetensors")  # readable tensors
    assert main(["import-hf", str(hf), str(tmp_path / "w"), "data.tokenizer=byte"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "w").exists()


def test_read_config_round_trips_a_saved_config(trained):
    assert read_config(trained) == from_dict(json.loads((trained / "config.json").read_text()))


def test_report_names_a_damaged_variant_config_in_one_line(tmp_path, capsys):
    variant = tmp_path / "sweep" / "lr=0.001"
    variant.mkdir(parents=True)
    (variant / "config.json").write_text('{"optim": {"preset": "gpt3_adamw", "lr": 0.0')  # torn
    (variant / "metrics.jsonl").write_text("")
    assert main(["report", "x", "--dir", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: {variant / 'config.json'} is damaged (not JSON: Expecting ',' delimiter "
                           "at line 1); it records the run's config: restore it, or use another workdir")
