"""What a workdir holds and whether a command may continue it, decided before anything is written.

`read_config` reads a workdir's `config.json` (or one line saying what is wrong with it). `check_resume`
compares the saved config with a new one field by field: a change that alters the saved state (the
model, the tokenizer, the objective, the optimizer's algorithm or the structure of its state) is
refused in one line naming the fields, unless `train.reset_optimizer=true` asks, for an optimizer change,
to keep the parameters and start a fresh optimizer state; every other change is allowed and listed
(`RESUMABLE` are the bookkeeping and placement fields among them). `check_init_from` and
`check_memory` find, from shapes alone, what would otherwise fail after the workdir exists.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from gptjax import storage
from gptjax.config import ConfigError, Experiment, from_dict, validate

# Fields that change neither the saved state nor the numbers a step computes: how long, how often
# records and checkpoints are written, where the run is placed and how it is compiled. Changing them
# on resume is routine (train.steps=… to train longer).
RESUMABLE = (
    "train.steps", "train.eval_every", "train.eval_batches", "train.log_every",
    "train.checkpoint_every", "train.keep_checkpoints", "train.max_nonfinite_steps", "train.progress",
    "train.compilation_cache_dir", "train.distributed", "train.coordinator_address", "train.num_processes",
    "train.process_id", "train.data_parallel", "train.fsdp", "train.grad_accum", "train.init_from",
    "train.reset_optimizer", "model.attention", "model.remat", "loss.chunked", "loss.chunked_above",
    "loss.chunk_tokens", "sample.prompt", "sample.max_new_tokens", "sample.temperature", "sample.top_k",
    "sample.top_p",
)
# Fields that decide what the saved parameters are and mean: never changed on resume.
MODEL_STATE = ("data.tokenizer", "data.tokenizer_vocab", "objective.name")
# Model fields that change computation only (activation dtype, kernel, dropout rate, recomputation).
MODEL_COMPUTE = ("model.dropout", "model.attention", "model.dtype", "model.remat")


def read_config(workdir: storage.PathLike, name: str = "config.json") -> Experiment:
    """The config in `workdir/config.json` (or a sweep variant's `variant.json`); ConfigError in one line
    when it is absent or damaged."""
    path = storage.path(workdir) / name
    if not path.is_file():
        raise ConfigError(f"{workdir} is not a gptjax workdir (no {name})")
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as e:
        detail = f"{e.msg} at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
        raise ConfigError(f"{path} is damaged (not JSON: {detail}); it records the run's config: restore "
                          "it, or use another workdir") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a JSON {type(data).__name__}, not a gptjax config (an object of "
                          "sections); restore it, or use another workdir")
    try:
        for section, value in data.items():
            if section != "name" and not isinstance(value, dict):
                raise ConfigError(f"section {section!r} is a {type(value).__name__}, not an object")
        return validate(from_dict(data))
    except (TypeError, ValueError) as e:  # ConfigError is a ValueError; a dataclass's TypeError too
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path} is not a valid gptjax config ({message}); restore it, or use another "
                          "workdir") from None


def _flat(cfg: Experiment) -> dict[str, Any]:
    flat = {"name": cfg.name}
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if dataclasses.is_dataclass(value):
            flat.update({f"{section.name}.{f.name}": getattr(value, f.name)
                         for f in dataclasses.fields(value)})
    return flat


def changed_fields(old: Experiment, new: Experiment) -> dict[str, tuple[Any, Any]]:
    """{dotted field: (old, new)} of every config field that differs (the experiment's name aside)."""
    a, b = _flat(old), _flat(new)
    return {k: (a.get(k), v) for k, v in b.items() if a.get(k) != v and k != "name"}


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """The changed fields of a resume in one line, those outside `RESUMABLE` (they change the training
    from here on) set apart."""
    show = lambda keys: ", ".join(f"{k} {changes[k][0]} → {changes[k][1]}" for k in keys)
    routine = [k for k in changes if k in RESUMABLE]
    training = [k for k in changes if k not in RESUMABLE]
    return "; ".join(([show(routine)] if routine else [])
                     + ([f"changing the training from here on: {show(training)}"] if training else []))


def _opt_state_difference(old: Experiment, new: Experiment, abstract_params) -> bool:
    """Whether the two configs' optimizers keep states of different structure or shapes."""
    import jax

    from gptjax.optimizers import build_optimizer

    def shape(cfg):
        state = jax.eval_shape(build_optimizer(cfg.optim, cfg.train.steps).init, abstract_params)
        leaves, treedef = jax.tree_util.tree_flatten(state)
        return treedef, [(x.shape, x.dtype) for x in leaves]

    return shape(old) != shape(new)


def check_resume(workdir: storage.PathLike, cfg: Experiment, abstract_params) -> dict[str, tuple[Any, Any]]:
    """Refuse to continue the run in `workdir` with a config that alters its saved state; return the
    fields that change (empty when the workdir holds no checkpoint: nothing there to continue or
    protect, so a run that never completed a step does not block a corrected command)."""
    from gptjax.checkpoint import checkpoint_steps

    if not checkpoint_steps(workdir):
        return {}
    old = read_config(workdir)
    changes = changed_fields(old, cfg)
    model = [k for k in changes if k.startswith("model.") and k not in MODEL_COMPUTE]
    model += [k for k in changes if k in MODEL_STATE]
    if model:
        shown = ", ".join(f"{k}={changes[k][0]} (now {changes[k][1]})" for k in model)
        raise ConfigError(f"{workdir} holds a run with {shown}; use another --workdir or remove it")
    optimizer = [k for k in changes if k in ("optim.preset", "optim.rule")]
    if not optimizer and _opt_state_difference(old, cfg, abstract_params):
        optimizer = [k for k in changes if k.startswith("optim.")]
    if optimizer and not cfg.train.reset_optimizer:
        shown = ", ".join(f"{k}={changes[k][0]} (now {changes[k][1]})" for k in optimizer)
        raise ConfigError(f"{workdir} holds a run with {shown}, which changes the saved optimizer state; "
                          "to keep its parameters and start a fresh optimizer state add "
                          f"train.reset_optimizer=true, or start anew in another --workdir with "
                          f"train.init_from={workdir}")
    return changes


def check_init_from(cfg: Experiment, abstract_params) -> None:
    """Refuse a `train.init_from` that is not a trained workdir of the same family and tokenizer, or
    whose parameters do not fit this model (compared by shape through `jax.eval_shape`, nothing read)."""
    from gptjax.checkpoint import checkpoint_steps
    from gptjax.config import known_experiments
    from gptjax.models import abstract_params as model_shapes

    source = storage.path(cfg.train.init_from)
    if not (source / "config.json").exists():
        hint = (f" (make experiment NAME={source.name})" if source.parent.name == "runs"
                and source.name in known_experiments() else "")
        raise ConfigError(f"train.init_from {source} is not a gptjax workdir (no config.json); "
                          f"train that run first{hint}")
    if not checkpoint_steps(source):  # import-hf writes step 0
        raise ConfigError(f"train.init_from {source} has no checkpoint yet")
    previous = read_config(source)
    if previous.model.family != cfg.model.family:
        raise ConfigError(f"train.init_from {source} holds a {previous.model.family} model, this run builds "
                          f"a {cfg.model.family} one; start from a {cfg.model.family} workdir, or use an "
                          f"experiment of the {previous.model.family} family (e.g. the experiment file "
                          f"import-hf wrote into {source})")
    if previous.data.tokenizer != cfg.data.tokenizer:
        # Its embedding rows belong to its tokenizer's ids: another tokenizer's ids would pick wrong rows.
        vocab = (f" data.tokenizer_vocab={previous.data.tokenizer_vocab}"
                 if previous.data.tokenizer == "bpe" else "")
        was, now = previous.data.tokenizer, cfg.data.tokenizer
        raise ConfigError(f"train.init_from {source} was trained with data.tokenizer={was}, this run has "
                          f"data.tokenizer={now}; its embeddings are indexed by that tokenizer's ids, so add "
                          f"data.tokenizer={was}{vocab} (its {source / 'tokenizer.json'} is then used, where "
                          f"it has one)")
    if abstract_params is None:
        return
    check_shapes(source, model_shapes(previous.model)[1], abstract_params)


def check_shapes(source: storage.PathLike, old_params, new_params) -> None:
    """Refuse `train.init_from` parameters (`old_params`, arrays or shapes) that this model
    (`new_params`) has in another shape or lacks; parameters only this model has are fine."""
    import flax

    name = lambda path: "/".join(str(p) for p in path)
    shapes = lambda tree: {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(tree).items()}
    old, new = shapes(old_params), shapes(new_params)
    for path, shape in sorted(old.items()):
        if path in new and shape != new[path]:
            raise ConfigError(f"train.init_from {source}: parameter {name(path)} has shape {shape} "
                              f"there, {new[path]} here")
    missing = sorted(name(path) for path in set(old) - set(new))
    if missing:
        raise ConfigError(f"train.init_from {source}: this model has no {missing[0]} "
                          f"(and {len(missing) - 1} more); model shapes must match")


def _device_memory(device) -> tuple[float, str]:
    """(bytes one device can hold, what that figure is)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return float(stats["bytes_limit"]), f"{device.device_kind} memory"
    import jax

    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return pages * size / max(1, jax.local_device_count()), "this host's memory shared by its devices"


def check_memory(cfg: Experiment, mesh, param_bytes: int, opt_state_bytes: int, *, trials: int = 1) -> None:
    """Refuse a step that cannot fit a device, from a lower bound of its memory: parameters, gradients
    and optimizer state (divided over train.fsdp) plus the residual stream every layer keeps for the
    backward pass (data.batch_size / train.grad_accum sequences over the data-parallel devices)."""
    import numpy as np

    m, d, t = cfg.model, cfg.data, cfg.train
    state = trials * (2 * param_bytes + opt_state_bytes) / max(1, t.fsdp)
    layers = m.n_layer + (m.n_decoder_layer or m.n_layer if m.family == "t5" else 0)
    itemsize = np.dtype(m.dtype).itemsize if m.dtype != "bfloat16" else 2
    data_parallel = max(1, mesh.devices.size // max(1, t.fsdp))
    activations = (trials * d.batch_size / t.grad_accum / data_parallel * d.seq_len * m.n_embd * layers
                   * itemsize)
    # One of this process's own devices: another host's cannot report its memory (every device of a mesh is
    # of one kind).
    import jax

    mine = [dev for dev in mesh.devices.flat if dev.process_index == jax.process_index()]
    available, what = _device_memory(mine[0] if mine else jax.local_devices()[0])
    if state + activations > available:
        gib = lambda b: f"{b / 2**30:,.1f} GiB"
        raise ConfigError(
            f"a step needs at least {gib(state + activations)} per device (parameters, gradients and "
            f"optimizer state {gib(state)}; activations {gib(activations)} for data.batch_size="
            f"{d.batch_size} × data.seq_len={d.seq_len} over {data_parallel} device(s)); {what} is "
            f"{gib(available)}: lower data.batch_size or raise train.grad_accum")
