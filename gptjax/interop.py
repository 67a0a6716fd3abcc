"""Hugging Face checkpoints ⇄ gptjax workdirs: GPT-2, BERT and T5 (v1.0), no torch and no network.

`import_hf(hf_dir, workdir)` reads a `config.json` + `model.safetensors` (the `safetensors` NumPy
API), builds the matching `Experiment`, maps every tensor onto the parameter layout of
`gptjax.models.split_params` and writes a workdir at step 0: `config.json` plus an orbax checkpoint of
the parameters alone, so `sample`, `eval`, `train` (in that workdir, with the experiment file
`<workdir>/<name>.py` written beside it; it creates the optimizer state) and `train.init_from` start
from it. `export_hf(workdir, hf_dir)` writes the inverse.

Each family is one table of `Tensor` rows (a gptjax parameter ← the HF tensors it is made of, and how):
GPT-2's Conv1D weights are already (in, out) as ours; torch Linear weights (BERT, T5) are (out, in) and
are transposed; BERT's and T5's separate query/key/value matrices are concatenated into `c_attn`
(q|k|v) and T5's cross-attention key/value into `c_kv` (k|v), whose parts have an axis of their own here
([D, 3, D] for HF's [D, 3D]: the same numbers, reshaped). Every shape is checked against
`abstract_params` of the config, and a tensor of the file that no row uses is an error naming it, so a
checkpoint of a variant this code does not implement is refused instead of half-loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pprint
import tempfile
from typing import Any

import numpy as np

from gptjax import storage
from gptjax.config import (
    PRESETS,
    ConfigError,
    DataConfig,
    Experiment,
    ModelConfig,
    ObjectiveConfig,
    SampleConfig,
    apply_overrides,
    to_dict,
    validate,
)
from gptjax.storage import PathLike


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One gptjax parameter (`path` in the pure params dict) made of HF tensors `names`.

    `how`: `copy` (one tensor as it is), `T` (one torch Linear weight, transposed to (in, out)), `cat_T`
    (several Linear weights, each transposed, concatenated on the output axis), `cat` (biases joined).
    """

    path: tuple
    names: tuple[str, ...]
    how: str = "copy"


# Fused projections (gptjax.layers.FusedDense): HF's [D, n·F] kernel and [n·F] bias are our [D, n, F]
# and [n, F], the parts on their own axis.
FUSED = ("c_attn", "c_kv")


def _fused_to_hf(path: tuple, value: np.ndarray) -> np.ndarray:
    if len(path) < 2 or path[-2] not in FUSED:
        return value
    return value.reshape(value.shape[0], -1) if path[-1] == "kernel" else value.reshape(-1)


# HF activation names → ours. GPT-2's "gelu_new" is the tanh approximation (our `gelu`); BERT's "gelu"
# is the exact erf form.
ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact", "relu": "relu",
               "tanh": "tanh", "sigmoid": "sigmoid"}
# What `transformers` assumes for a key an older config.json omits (its configuration classes' defaults).
HF_DEFAULTS = {
    "gpt2": {"tie_word_embeddings": True, "n_inner": None, "activation_function": "gelu_new",
             "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.1, "scale_attn_by_inverse_layer_idx": False,
             "add_cross_attention": False},
    "bert": {"tie_word_embeddings": True, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
             "hidden_dropout_prob": 0.1, "type_vocab_size": 2, "position_embedding_type": "absolute"},
    "t5": {"tie_word_embeddings": True, "feed_forward_proj": "relu", "num_decoder_layers": None,
           "dropout_rate": 0.1, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
           "layer_norm_epsilon": 1e-6, "n_positions": 512},
}


def _hf(hf: dict[str, Any], key: str) -> Any:
    if key in hf:
        return hf[key]
    if key in HF_DEFAULTS[hf["model_type"]]:
        return HF_DEFAULTS[hf["model_type"]][key]
    raise ConfigError(f"config.json has no {key!r}, which a {hf.get('model_type')} model needs")


def _ratio(inner: int, d: int, what: str) -> int:
    if inner % d:
        raise ConfigError(f"{what}={inner} is not a multiple of the width {d}; gptjax needs model.mlp_ratio "
                          "to be an integer")
    return inner // d


def _activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ConfigError(f"activation {name!r} has no gptjax equivalent; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _gpt2_model(hf: dict[str, Any]) -> ModelConfig:
    for flag in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
        if _hf(hf, flag):
            raise ConfigError(f"config.json sets {flag}, which gptjax's GPT does not implement")
    d = hf["n_embd"]
    inner = _hf(hf, "n_inner")
    return ModelConfig(family="gpt", n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=d,
                       context=hf["n_positions"], vocab_size=hf["vocab_size"],
                       mlp_ratio=4 if inner is None else _ratio(inner, d, "n_inner"),
                       activation=_activation(_hf(hf, "activation_function")), dropout=_hf(hf, "resid_pdrop"),
                       bias=True, tie_embeddings=_hf(hf, "tie_word_embeddings"),
                       layer_norm_eps=_hf(hf, "layer_norm_epsilon"))


def _gpt2_tensors(m: ModelConfig) -> list[Tensor]:
    rows = [Tensor(("wte", "embedding"), ("wte.weight",)), Tensor(("wpe", "embedding"), ("wpe.weight",)),
            Tensor(("ln_f", "scale"), ("ln_f.weight",)), Tensor(("ln_f", "bias"), ("ln_f.bias",))]
    for i in range(m.n_layer):
        for ours, theirs in (("ln_1", "ln_1"), ("ln_2", "ln_2")):
            rows += [Tensor(("blocks", i, ours, "scale"), (f"h.{i}.{theirs}.weight",)),
                     Tensor(("blocks", i, ours, "bias"), (f"h.{i}.{theirs}.bias",))]
        for module in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            a, b = module.split(".")
            rows += [Tensor(("blocks", i, a, b, "kernel"), (f"h.{i}.{module}.weight",)),  # Conv1D: (in, out)
                     Tensor(("blocks", i, a, b, "bias"), (f"h.{i}.{module}.bias",))]
    if not m.tie_embeddings:
        rows.append(Tensor(("lm_head", "kernel"), ("lm_head.weight",), "T"))
    return rows


def _bert_model(hf: dict[str, Any]) -> ModelConfig:
    if _hf(hf, "position_embedding_type") != "absolute":
        raise ConfigError(f"position_embedding_type={hf['position_embedding_type']!r}: gptjax's BERT has "
                          "absolute (learned) positions only")
    if not _hf(hf, "tie_word_embeddings"):
        raise ConfigError("tie_word_embeddings=false: gptjax's BERT ties the MLM decoder to the embedding")
    d = hf["hidden_size"]
    return ModelConfig(family="bert", n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                       n_embd=d,
                       context=hf["max_position_embeddings"], vocab_size=hf["vocab_size"],
                       mlp_ratio=_ratio(hf["intermediate_size"], d, "intermediate_size"),
                       activation=_activation(_hf(hf, "hidden_act")), dropout=_hf(hf, "hidden_dropout_prob"),
                       bias=True, tie_embeddings=True, layer_norm_eps=_hf(hf, "layer_norm_eps"),
                       type_vocab_size=_hf(hf, "type_vocab_size"))


def _linear(path: tuple, name: str) -> list[Tensor]:
    """A torch Linear with bias: weight (out, in) transposed, bias as is."""
    return [Tensor((*path, "kernel"), (f"{name}.weight",), "T"), Tensor((*path, "bias"), (f"{name}.bias",))]


def _norm(path: tuple, name: str) -> list[Tensor]:
    return [Tensor((*path, "scale"), (f"{name}.weight",)), Tensor((*path, "bias"), (f"{name}.bias",))]


def _bert_tensors(m: ModelConfig) -> list[Tensor]:
    e = "bert.embeddings"
    rows = [Tensor(("wte", "embedding"), (f"{e}.word_embeddings.weight",)),
            Tensor(("wpe", "embedding"), (f"{e}.position_embeddings.weight",)),
            *_norm(("ln_e",), f"{e}.LayerNorm")]
    if m.type_vocab_size:
        rows.append(Tensor(("wtt", "embedding"), (f"{e}.token_type_embeddings.weight",)))
    for i in range(m.n_layer):
        layer, block = f"bert.encoder.layer.{i}", ("blocks", i)
        qkv = tuple(f"{layer}.attention.self.{x}" for x in ("query", "key", "value"))
        rows += [Tensor((*block, "attn", "c_attn", "kernel"), tuple(f"{n}.weight" for n in qkv), "cat_T"),
                 Tensor((*block, "attn", "c_attn", "bias"), tuple(f"{n}.bias" for n in qkv), "cat"),
                 *_linear((*block, "attn", "c_proj"), f"{layer}.attention.output.dense"),
                 *_norm((*block, "ln_1"), f"{layer}.attention.output.LayerNorm"),
                 *_linear((*block, "mlp", "c_fc"), f"{layer}.intermediate.dense"),
                 *_linear((*block, "mlp", "c_proj"), f"{layer}.output.dense"),
                 *_norm((*block, "ln_2"), f"{layer}.output.LayerNorm")]
    return [*rows, *_linear(("pooler",), "bert.pooler.dense"),
            *_linear(("mlm_dense",), "cls.predictions.transform.dense"),
            *_norm(("mlm_ln",), "cls.predictions.transform.LayerNorm"),
            Tensor(("mlm_bias",), ("cls.predictions.bias",)), *_linear(("nsp",), "cls.seq_relationship")]


def _t5_model(hf: dict[str, Any]) -> ModelConfig:
    if _hf(hf, "feed_forward_proj") != "relu":
        raise ConfigError(f"feed_forward_proj={hf['feed_forward_proj']!r} (T5 v1.1 / Flan-T5 style): "
                          "gptjax's T5 is the v1.0 layout with a ReLU MLP")
    d, heads = hf["d_model"], hf["num_heads"]
    if hf["d_kv"] * heads != d:
        raise ConfigError(f"d_kv={hf['d_kv']} × num_heads={heads} != d_model={d}; gptjax's attention "
                          "width equals the model width")
    return ModelConfig(family="t5", n_layer=hf["num_layers"], n_head=heads, n_embd=d,
                       context=_hf(hf, "n_positions"), vocab_size=hf["vocab_size"],
                       mlp_ratio=_ratio(hf["d_ff"], d, "d_ff"), activation="relu",
                       dropout=_hf(hf, "dropout_rate"), bias=False,
                       tie_embeddings=_hf(hf, "tie_word_embeddings"),
                       layer_norm_eps=_hf(hf, "layer_norm_epsilon"),
                       type_vocab_size=0, n_decoder_layer=_hf(hf, "num_decoder_layers") or hf["num_layers"],
                       relative_buckets=_hf(hf, "relative_attention_num_buckets"),
                       relative_max_distance=_hf(hf, "relative_attention_max_distance"))


def _t5_tensors(m: ModelConfig) -> list[Tensor]:
    def attention(path: tuple, name: str) -> list[Tensor]:
        return [Tensor((*path, "c_attn", "kernel"), tuple(f"{name}.{x}.weight" for x in "qkv"), "cat_T"),
                Tensor((*path, "c_proj", "kernel"), (f"{name}.o.weight",), "T")]

    def mlp(path: tuple, name: str) -> list[Tensor]:
        return [Tensor((*path, "c_fc", "kernel"), (f"{name}.wi.weight",), "T"),
                Tensor((*path, "c_proj", "kernel"), (f"{name}.wo.weight",), "T")]

    bias = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    rows = [Tensor(("wte", "embedding"), ("shared.weight",)),
            # T5 keeps the relative bias in the first layer of each stack and shares it with the rest.
            Tensor(("enc_bias", "embedding"), (f"encoder.{bias}",)),
            Tensor(("dec_bias", "embedding"), (f"decoder.{bias}",)),
            Tensor(("enc_ln_f", "scale"), ("encoder.final_layer_norm.weight",)),
            Tensor(("dec_ln_f", "scale"), ("decoder.final_layer_norm.weight",))]
    for i in range(m.n_layer):
        b, p = f"encoder.block.{i}.layer", ("encoder", i)
        rows += [Tensor((*p, "ln_1", "scale"), (f"{b}.0.layer_norm.weight",)),
                 *attention((*p, "attn"), f"{b}.0.SelfAttention"),
                 Tensor((*p, "ln_2", "scale"), (f"{b}.1.layer_norm.weight",)),
                 *mlp((*p, "mlp"), f"{b}.1.DenseReluDense")]
    for i in range(m.n_decoder_layer or m.n_layer):
        b, p = f"decoder.block.{i}.layer", ("decoder", i)
        rows += [Tensor((*p, "ln_1", "scale"), (f"{b}.0.layer_norm.weight",)),
                 *attention((*p, "attn"), f"{b}.0.SelfAttention"),
                 Tensor((*p, "ln_3", "scale"), (f"{b}.1.layer_norm.weight",)),
                 Tensor((*p, "cross", "c_q", "kernel"), (f"{b}.1.EncDecAttention.q.weight",), "T"),
                 Tensor((*p, "cross", "c_kv", "kernel"),
                        (f"{b}.1.EncDecAttention.k.weight", f"{b}.1.EncDecAttention.v.weight"), "cat_T"),
                 Tensor((*p, "cross", "c_proj", "kernel"), (f"{b}.1.EncDecAttention.o.weight",), "T"),
                 Tensor((*p, "ln_2", "scale"), (f"{b}.2.layer_norm.weight",)),
                 *mlp((*p, "mlp"), f"{b}.2.DenseReluDense")]
    if not m.tie_embeddings:
        rows.append(Tensor(("lm_head", "kernel"), ("lm_head.weight",), "T"))
    return rows


@dataclasses.dataclass(frozen=True)
class Family:
    """How one HF `model_type` maps onto gptjax: config, tensor table, and what the file may also hold."""

    model: Any  # HF config dict → ModelConfig
    tensors: Any  # ModelConfig → list[Tensor]
    prefix: str  # stripped from the file's names if present (GPT2LMHeadModel saves `transformer.h.0…`)
    # Copies of a tied tensor (name → the name it must equal), accepted and checked when present.
    tied: Any  # ModelConfig → dict[str, str]
    buffers: tuple[str, ...]  # non-parameter tensors some versions save (name suffixes), ignored
    objective: str
    preset: str


FAMILIES: dict[str, Family] = {
    "gpt2": Family(_gpt2_model, _gpt2_tensors, "transformer.",
                   lambda m: {"lm_head.weight": "wte.weight"} if m.tie_embeddings else {},
                   (".attn.bias", ".attn.masked_bias"), "causal_lm", "gpt2_adam"),
    "bert": Family(_bert_model, _bert_tensors, "",
                   lambda m: {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
                              "cls.predictions.decoder.bias": "cls.predictions.bias"},
                   ("embeddings.position_ids",), "mlm_nsp", "bert_adam"),
    "t5": Family(_t5_model, _t5_tensors, "",
                 lambda m: {"encoder.embed_tokens.weight": "shared.weight",
                            "decoder.embed_tokens.weight": "shared.weight",
                            **({"lm_head.weight": "shared.weight"} if m.tie_embeddings else {})},
                 (), "span_corruption", "t5_adafactor"),
}


def read_hf_dir(hf_dir: PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config.json as a dict, every tensor of model.safetensors — or of its shards — as float32 NumPy;
    float16 and bfloat16 checkpoints are widened)."""
    hf_dir = storage.path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise ConfigError(f"{hf_dir} has no config.json (expected a Hugging Face model directory)")
    try:
        hf = json.loads((hf_dir / "config.json").read_bytes())
    except (UnicodeDecodeError, ValueError) as e:
        detail = f"{e.msg} at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
        raise ConfigError(f"{hf_dir / 'config.json'} is not JSON ({detail})") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{hf_dir / 'config.json'} holds a JSON {type(hf).__name__}, not a model config")
    _family(hf)  # an unsupported model_type is refused before any tensor is read
    index = hf_dir / "model.safetensors.index.json"
    if (hf_dir / "model.safetensors").is_file():
        files = [hf_dir / "model.safetensors"]
    elif index.is_file():
        files = [hf_dir / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    else:
        raise ConfigError(f"{hf_dir} has no model.safetensors (convert a pytorch_model.bin with "
                          "transformers' save_pretrained(safe_serialization=True) first)")
    tensors = {}
    for f in files:
        try:
            tensors.update({k: np.asarray(v, np.float32) for k, v in _load(f).items()})
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise ConfigError(f"cannot read {f}: {str(e).strip().splitlines()[0]}") from None
    return hf, tensors


def _load(path: PathLike) -> dict[str, Any]:
    from safetensors.numpy import load_file

    path = storage.path(path)
    if storage.is_remote(path):  # safetensors reads a file (bfloat16 only that way): copied from the bucket
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, path.name)
            storage.write_atomic(local, path.read_bytes())
            return _load(local)
    try:
        return load_file(os.fspath(path))
    except TypeError:  # bfloat16, which NumPy lacks: read as JAX arrays, converted to float32 by the caller
        from safetensors.flax import load_file as load_jax

        return load_jax(os.fspath(path))


def _absolute(p):
    return p if storage.is_remote(p) else p.absolute()


def _family(hf: dict[str, Any]) -> Family:
    kind = hf.get("model_type")
    if kind not in FAMILIES:
        raise ConfigError(f"config.json model_type={kind!r} is not importable; known: {', '.join(FAMILIES)}")
    return FAMILIES[kind]


def hf_experiment(hf: dict[str, Any], name: str, tokenizer: str | None = None) -> Experiment:
    """The gptjax experiment of an HF config: its model, the family's objective and forum preset, and the
    default data and training settings (override them like any experiment's)."""
    family = _family(hf)
    model = family.model(hf)
    if tokenizer is None:
        # Without the checkpoint's own tokenizer (import_hf then insists on an explicit data.tokenizer):
        # bytes for GPT-2 (256 of its ids are then used), a BPE of the model's vocabulary size for the
        # objectives that need special tokens. Meaningful text needs the checkpoint's tokenizer.json.
        tokenizer = "byte" if family.objective == "causal_lm" else "bpe"
    data = DataConfig(tokenizer=tokenizer, seq_len=min(DataConfig.seq_len, model.context))
    if tokenizer == "bpe":
        data = dataclasses.replace(data, tokenizer_vocab=model.vocab_size)
    return Experiment(name=name, model=model, data=data,
                      optim=PRESETS[family.preset], objective=ObjectiveConfig(name=family.objective),
                      sample=SampleConfig(max_new_tokens=min(SampleConfig.max_new_tokens,
                                                             model.context // 2)))


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix):] if prefix and name.startswith(prefix) else name


def _join(how: str, parts: list[np.ndarray]) -> np.ndarray:
    if how == "copy":
        return parts[0]
    if how == "T":
        return parts[0].T
    if how == "cat_T":
        return np.concatenate([p.T for p in parts], axis=1)
    return np.concatenate(parts, axis=0)  # cat


def hf_to_params(hf: dict[str, Any], tensors: dict[str, np.ndarray], model: ModelConfig) -> dict:
    """The pure params dict of `model` (the `split_params` layout) from HF tensors; ConfigError naming the
    first missing, misshapen, contradictory or unused tensor."""
    from flax.traverse_util import flatten_dict, unflatten_dict

    from gptjax.models import abstract_params

    family = _family(hf)
    tensors = {_strip(k, family.prefix): v for k, v in tensors.items()}
    unused = {k for k in tensors if not k.endswith(family.buffers)}
    for copy, original in family.tied(model).items():
        if copy in tensors:
            if original not in tensors or not np.array_equal(tensors[copy], tensors[original]):
                raise ConfigError(f"tensor {copy} differs from {original}, which config.json ties it to")
            unused.discard(copy)
    flat = {}
    for row in family.tensors(model):
        for n in row.names:
            if n not in tensors:
                raise ConfigError(f"tensor {n} is missing from the checkpoint (needed for "
                                  f"{'.'.join(map(str, row.path))})")
            unused.discard(n)
        flat[row.path] = _join(row.how, [tensors[n] for n in row.names])
    if unused:
        raise ConfigError(f"tensor {sorted(unused)[0]} of the checkpoint is not used by the gptjax "
                          f"{model.family} model ({len(unused)} unused in all)")
    _, abstract = abstract_params(model)
    out = {}
    for key, leaf in flatten_dict(abstract).items():
        name = ".".join(map(str, key))
        if key not in flat:
            raise ConfigError(f"no checkpoint tensor maps to gptjax parameter {name}")
        out[key] = flat.pop(key)
        if out[key].shape != leaf.shape and out[key].shape == _fused_to_hf(key, np.empty(leaf.shape)).shape:
            out[key] = out[key].reshape(leaf.shape)
        if out[key].shape != leaf.shape:
            raise ConfigError(f"gptjax parameter {name} has shape {leaf.shape}, the checkpoint gives "
                              f"{out[key].shape}")
    if flat:  # a table row for a parameter the model does not have: a bug in the table, not user input
        raise AssertionError(f"rows for unknown parameters: {sorted(flat)}")
    return unflatten_dict(out)


# Written beside the checkpoint so the imported model is an experiment like any other: `train` resumes from
# step 0 in the workdir (or starts another run from it with train.init_from) with the usual overrides.
EXPERIMENT_FILE = '''"""{name}, imported by `python -m gptjax import-hf {hf_dir} {workdir}`.

The settings below are the checkpoint's model and gptjax's defaults for the rest (data.source=pydoc,
train.steps=1000, the {preset} preset at a pre-training learning rate). Fine-tune it on your text:

    {finetune}
"""

from gptjax.config import from_dict

CONFIG = {config}


def get_config():
    return from_dict(CONFIG)
'''

# What a fine-tune usually changes from pre-training, per objective: a few hundred steps, warmed up and
# decayed, at a learning rate well below the pre-training one (T5's paper fine-tunes with Adafactor at a
# constant 1e-3 without the relative step).
FINETUNE = {
    "causal_lm": "train.steps=300 optim.lr=1e-4 optim.schedule=cosine optim.warmup_steps=30",
    "mlm_nsp": "train.steps=300 optim.lr=2e-5 optim.schedule=linear optim.warmup_steps=30",
    "span_corruption": "train.steps=300 optim.lr=1e-3 optim.adafactor_relative_step=false",
}


def experiment_file(workdir: PathLike) -> storage.epath.Path:
    """The experiment file `import_hf` writes into `workdir`: `<workdir>/<workdir's name>.py`."""
    workdir = storage.path(workdir)
    return workdir / f"{_absolute(workdir).name}.py"


def finetune_command(cfg: Experiment, workdir: PathLike) -> str:
    """The command that fine-tunes the imported model in `workdir` on a text file into a new workdir."""
    return (f"python -m gptjax train {experiment_file(workdir)} train.init_from={workdir} "
            f"--workdir runs/{cfg.name}-finetuned data.source=text:YOUR_TEXT {FINETUNE[cfg.objective.name]}")


def _tokenizer_override(overrides: list[str]) -> str | None:
    values = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].strip() == "data.tokenizer"]
    return values[-1].strip() if values else None


def import_hf(hf_dir: PathLike, workdir: PathLike, overrides: list[str] = ()) -> Experiment:
    """Convert the HF model in `hf_dir` into a new gptjax workdir at step 0; returns its config.

    The workdir must not exist yet (or be empty); the experiment is named after it and written as
    `experiment_file(workdir)`. The checkpoint's `tokenizer.json` is copied along and used
    (`data.tokenizer=hf`); without one, a `data.tokenizer=` override must say which tokenizer to use
    instead, since any other tokenizer's ids mean nothing to the checkpoint's embeddings.
    """
    hf_dir, workdir, overrides = storage.path(hf_dir), storage.path(workdir), list(overrides)
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise ConfigError(f"workdir {workdir} already exists and is not empty; import into a new one")
    has_tokenizer = (hf_dir / "tokenizer.json").is_file()
    asked = _tokenizer_override(overrides)
    if (hf_dir / "config.json").is_file() and not has_tokenizer and asked is None:
        # Refused before any tensor is read. Another tokenizer's ids index the checkpoint's embedding
        # rows of other tokens: training, sampling and eval run and print nonsense as if all were well.
        raise ConfigError(f"{hf_dir} has no tokenizer.json, and the checkpoint's embeddings are indexed by "
                          "its tokenizer's ids: put the tokenizer.json of the same Hugging Face model "
                          "beside its config.json (tokenizers' Tokenizer.save, or AutoTokenizer's "
                          "save_pretrained, writes one), or pass data.tokenizer=byte (or bpe) to train "
                          "the model on another tokenizer's ids on purpose")
    hf, tensors = read_hf_dir(hf_dir)
    # The checkpoint's own tokenizer (`data.tokenizer=hf`, gptjax/data/tokenizers.py) unless told otherwise.
    tokenizer = asked or ("hf" if has_tokenizer else None)
    try:
        imported = hf_experiment(hf, _absolute(workdir).name, tokenizer)
    except (KeyError, TypeError, ValueError) as e:  # a key absent or of the wrong type
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{hf_dir / 'config.json'} is not a usable {hf['model_type']} config "
                          f"({type(e).__name__}: {e})") from None
    cfg = validate(apply_overrides(imported, overrides))
    if cfg.data.tokenizer == "hf" and not has_tokenizer:
        raise ConfigError(f"data.tokenizer=hf needs {hf_dir / 'tokenizer.json'}, which does not exist")
    params = hf_to_params(hf, tensors, cfg.model)
    from gptjax.checkpoint import Checkpointer

    workdir.mkdir(parents=True, exist_ok=True)
    storage.write_atomic(workdir / "config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
    storage.write_atomic(experiment_file(workdir), EXPERIMENT_FILE.format(
        hf_dir=hf_dir, workdir=workdir, name=cfg.name, preset=cfg.optim.preset,
        finetune=finetune_command(cfg, workdir), config=pprint.pformat(to_dict(cfg), sort_dicts=False)))
    if has_tokenizer:
        storage.write_atomic(workdir / "tokenizer.json", (hf_dir / "tokenizer.json").read_bytes())
    # Parameters only: the first `train` in this workdir creates the optimizer state of its own config.
    checkpointer = Checkpointer(workdir / "checkpoints", cfg.train.keep_checkpoints)
    checkpointer.save(0, {"params": params}, {"step": 0, "data_position": 0, "seed": cfg.train.seed,
                                              "imported_from": str(_absolute(hf_dir))})
    checkpointer.close()
    return cfg


# Exporting writes the HF config keys gptjax knows; `transformers` fills in the rest with its defaults.
_REVERSE_ACTIVATIONS = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu", "tanh": "tanh",
                        "sigmoid": "sigmoid"}


def _hf_config(m: ModelConfig) -> dict[str, Any]:
    if m.family == "gpt":
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": m.n_layer,
                "n_head": m.n_head, "n_embd": m.n_embd, "n_positions": m.context, "vocab_size": m.vocab_size,
                "n_inner": m.mlp_ratio * m.n_embd, "activation_function": _REVERSE_ACTIVATIONS[m.activation],
                "layer_norm_epsilon": m.layer_norm_eps, "tie_word_embeddings": m.tie_embeddings,
                "resid_pdrop": m.dropout, "embd_pdrop": m.dropout, "attn_pdrop": m.dropout}
    if m.family == "bert":
        return {"model_type": "bert", "architectures": ["BertForPreTraining"], "num_hidden_layers": m.n_layer,
                "num_attention_heads": m.n_head, "hidden_size": m.n_embd,
                "max_position_embeddings": m.context, "vocab_size": m.vocab_size,
                "intermediate_size": m.mlp_ratio * m.n_embd, "hidden_act": _REVERSE_ACTIVATIONS[m.activation],
                "layer_norm_eps": m.layer_norm_eps, "type_vocab_size": m.type_vocab_size,
                "hidden_dropout_prob": m.dropout, "attention_probs_dropout_prob": m.dropout}
    return {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"], "num_layers": m.n_layer,
            "num_decoder_layers": m.n_decoder_layer or m.n_layer, "num_heads": m.n_head, "d_model": m.n_embd,
            "d_kv": m.n_embd // m.n_head, "d_ff": m.mlp_ratio * m.n_embd, "vocab_size": m.vocab_size,
            "feed_forward_proj": "relu", "relative_attention_num_buckets": m.relative_buckets,
            "relative_attention_max_distance": m.relative_max_distance,
            "layer_norm_epsilon": m.layer_norm_eps,
            "tie_word_embeddings": m.tie_embeddings, "dropout_rate": m.dropout, "n_positions": m.context,
            "is_encoder_decoder": True, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}


def export_hf(workdir: PathLike, hf_dir: PathLike) -> Experiment:
    """Write a gptjax workdir's latest parameters as an HF directory (config.json + model.safetensors,
    and tokenizer.json if the workdir has one) that `from_pretrained` loads; the inverse of `import_hf`."""
    from flax.traverse_util import flatten_dict
    from safetensors.numpy import save

    from gptjax.checkpoint import restore_params

    cfg, _, params = restore_params(workdir)
    m = cfg.model
    if m.scan_layers:
        raise ConfigError("export needs an unscanned model (model.scan_layers=false)")
    if m.activation not in _REVERSE_ACTIVATIONS or (m.family == "t5" and m.activation != "relu"):
        raise ConfigError(f"model.activation={m.activation} has no {m.family} equivalent in transformers")
    family = FAMILIES[_hf_config(m)["model_type"]]
    flat = {key: np.asarray(leaf) for key, leaf in flatten_dict(params).items()}
    tensors = {}
    for row in family.tensors(m):
        value = _fused_to_hf(row.path, flat[row.path])
        if row.how == "copy":
            tensors[row.names[0]] = value
        elif row.how == "T":
            tensors[row.names[0]] = value.T
        else:
            axis = 1 if row.how == "cat_T" else 0
            for n, part in zip(row.names, np.split(value, len(row.names), axis=axis), strict=True):
                tensors[n] = part.T if row.how == "cat_T" else part
    tensors = {(family.prefix + k if family.prefix and not k.startswith("lm_head") else k):
               np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}
    hf_dir = storage.path(hf_dir)
    hf_dir.mkdir(parents=True, exist_ok=True)
    storage.write_atomic(hf_dir / "config.json", json.dumps(_hf_config(m), indent=2) + "\n")
    storage.write_atomic(hf_dir / "model.safetensors", save(tensors, metadata={"format": "pt"}))
    tokenizer = storage.path(workdir) / "tokenizer.json"
    if tokenizer.is_file():
        storage.write_atomic(hf_dir / "tokenizer.json", tokenizer.read_bytes())
    return cfg
