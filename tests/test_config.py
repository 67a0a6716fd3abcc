"""Config loading, overrides and validation: every bad input is one line and exit code 2."""

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from gptjax.cli import main
from gptjax.config import (
    PRESETS,
    ConfigError,
    Experiment,
    apply_overrides,
    from_dict,
    load_experiment,
    registry,
    to_dict,
    validate,
)

REPO = Path(__file__).resolve().parent.parent


def test_overrides_by_dotted_path_are_typed():
    cfg = apply_overrides(Experiment(), ["train.steps=200", "optim.lr=3e-4", "model.n_layer=2"])
    assert cfg.train.steps == 200 and isinstance(cfg.train.steps, int)
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.model.n_layer == 2
    assert dataclasses.is_dataclass(cfg.model) and cfg.data == Experiment().data


def test_preset_override_swaps_whole_optimizer_then_refines_fields_in_any_order():
    cfg = apply_overrides(Experiment(), ["optim.b2=0.95", "optim.preset=gpt2_adam"])
    assert cfg.optim == dataclasses.replace(PRESETS["gpt2_adam"], b2=0.95)


def test_config_round_trips_through_json_dict():
    cfg = load_experiment("default", ["train.steps=7"])
    assert from_dict(to_dict(cfg)) == cfg
    assert cfg.name == "default"


@pytest.mark.parametrize("args, message", [
    (["nosuch"], "unknown experiment 'nosuch'; known: "),
    (["../experiments/default"], "is not an existing .py file"),
    (["experiments/../../etc/passwd"], "is not an existing .py file"),
    (["default", "train.stepz=3"], "Did you mean: 'steps'?"),
    (["default", "train.steps=abc"], "could not be converted to Integer"),
    (["default", "train.steps=2.5"], "could not be converted to Integer"),
    (["default", "nokey"], "is not of the form key=value"),
    (["default", "optim.lr=0"], "optim.lr must be positive, got 0.0"),
    (["default", "optim.lr=-1e-3"], "optim.lr must be positive"),
    (["default", "optim.b1=1.0"], "optim.b1 must be in [0, 1), got 1.0"),
    (["default", "optim.b2=-0.1"], "optim.b2 must be in [0, 1)"),
    (["default", "model.n_embd=130"], "model.n_embd (130) must be divisible by model.n_head (4)"),
    (["default", "data.seq_len=512"], "data.seq_len (512) is longer than the model's context (128)"),
    (["default", "data.seq_len=1"], "data.seq_len must be at least 2 tokens"),
    (["default", "optim.preset=adam9"], "unknown optimizer preset 'adam9'; known: bert_adam"),
    (["default", "model.activation=swish"], "unknown model.activation 'swish'"),
    (["default", "data.source=ftp://x"], "unknown data.source"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, message, capsys, tmp_path):
    code = main(["train", *args, "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "w").exists()  # nothing written


def test_experiment_by_path(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text((REPO / "experiments" / "default.py").read_text())
    cfg = load_experiment(str(path), ["train.steps=3"])
    assert cfg.name == "mine" and cfg.train.steps == 3


def test_experiment_file_without_get_config(tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="defines no get_config"):
        load_experiment(str(path))


@pytest.mark.parametrize("override, message", [
    ("optim.lr=0", "optim.lr must be positive, got 0.0"),
    ("model.activation=swish", "unknown model.activation 'swish'; known: gelu, gelu_exact, relu, tanh, "
                               "sigmoid, swiglu"),
])
def test_bad_input_fails_before_jax_is_imported(override, message):
    code = (f"import sys; from gptjax.cli import main; rc = main(['train', 'default', '{override}']); "
            "assert 'jax' not in sys.modules, 'jax imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"error: {message}"


def test_overrides_may_come_after_options(tmp_path, capsys):
    code = main(["train", "default", "--workdir", str(tmp_path / "w"), "optim.lr=0"])
    assert code == 2 and "optim.lr must be positive" in capsys.readouterr().err


def test_bad_data_and_workdir_inputs_fail_before_anything_is_written(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    workdir = tmp_path / "w"
    cases = [
        (["train", "default", f"data.source=text:{empty}"], "empty"),
        (["train", "default", f"data.source=text:{tmp_path / 'missing.txt'}"], "missing.txt"),
        (["train", "default", "--workdir", str(empty)], "exists and is not a directory"),
        (["sample", str(tmp_path / "nowhere")], "is not a gptjax workdir"),
    ]
    for argv, message in cases:
        if argv[0] == "train" and "--workdir" not in argv:
            argv = [*argv, "--workdir", str(workdir)]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not workdir.exists() and empty.read_text() == ""


def test_an_empty_override_is_the_empty_string():
    assert apply_overrides(Experiment(), ["train.compilation_cache_dir="]).train.compilation_cache_dir == ""


# Every registry field: (dotted key, its known names as the implementation's registry lists them).
def registries():
    from gptjax import optimizers
    from gptjax.data.tokenizers import TOKENIZERS
    from gptjax.layers import ACTIVATIONS, ATTENTION_IMPLS
    from gptjax.losses import TERMS
    from gptjax.models import MODELS
    from gptjax.models.gpt import DTYPES, REMAT_POLICIES
    from gptjax.objectives import OBJECTIVES

    return {"model.family": MODELS, "model.activation": ACTIVATIONS, "model.dtype": DTYPES,
            "model.attention": ATTENTION_IMPLS, "model.remat": REMAT_POLICIES, "data.tokenizer": TOKENIZERS,
            "objective.name": OBJECTIVES, "optim.rule": optimizers.RULES,
            "optim.schedule": optimizers.SCHEDULES, "optim.decay_mask": optimizers.MASKS, "loss.terms": TERMS}


@pytest.mark.parametrize("key", ["model.family", "model.activation", "model.dtype", "model.attention",
                                 "model.remat", "data.tokenizer", "objective.name", "optim.rule",
                                 "optim.schedule", "optim.decay_mask"])
def test_an_unknown_registry_name_fails_with_the_names_the_implementation_knows(key):
    known = ", ".join(registries()[key])
    with pytest.raises(ConfigError) as e:
        apply_overrides(Experiment(), [f"{key}=nosuch"])
    assert str(e.value) == f"unknown {key} 'nosuch'; known: {known}"
    section, field = key.split(".")
    bad = dataclasses.replace(Experiment(), **{section: dataclasses.replace(getattr(Experiment(), section),
                                                                           **{field: "nosuch"})})
    with pytest.raises(ConfigError, match=f"^unknown {key} 'nosuch'; known: {known}$"):
        validate(bad)


def test_an_unknown_loss_term_fails_with_the_terms_the_loss_library_knows():
    with pytest.raises(ConfigError, match=f"known: {', '.join(registries()['loss.terms'])}$"):
        load_experiment("default", ["loss.terms.focal=1"])


def test_a_registry_must_implement_exactly_its_names():
    assert list(registry(Literal["a", "b"], {"b": 2, "a": 1})) == ["a", "b"]  # the Literal's order
    with pytest.raises(TypeError, match="implements"):
        registry(Literal["a", "b"], {"a": 1})
    with pytest.raises(TypeError, match="implements"):
        registry(Literal["a"], {"a": 1, "b": 2})
