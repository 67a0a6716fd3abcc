"""The train state, the pure train and eval steps, and the loop around them.

`train_step(state, batch)` is a pure function of pytrees, jitted over the device mesh with the state
donated; the model lives in it only as `nnx.merge(graphdef, params)`. Everything stateful (data position,
metrics, checkpoints, the progress bar) is in `train()`, on the host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gptjax import sharding
from gptjax.checkpoint import Checkpointer, checkpoint_steps
from gptjax.config import ConfigError, Experiment, from_dict, known_experiments, to_dict
from gptjax.data import build_tokenizer, unigram_entropy
from gptjax.flops import flops_per_token, peak_flops
from gptjax.generate import generate
from gptjax.guards import Diverged, Preempted, StopSignals, WorkdirLock
from gptjax.metrics import MetricsWriter, NullWriter, progress_bar
from gptjax.models import abstract_params, build_model, count_params, param_axes, split_params, tree_bytes
from gptjax.objectives import OBJECTIVES, build_objective_data
from gptjax.optimizers import build_optimizer, build_schedule, state_bytes


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def resolve(cfg: Experiment, vocab_size: int, n_classes: int = 0) -> Experiment:
    """Fill in what the config leaves to the data: the vocabulary size (0 = the tokenizer's) and, for a
    classification objective, the number of classes (0 = the data's)."""
    m = cfg.model
    if m.vocab_size and m.vocab_size < vocab_size:
        raise ConfigError(f"model.vocab_size ({m.vocab_size}) is smaller than the "
                          f"tokenizer's vocabulary ({vocab_size})")
    if m.n_classes and m.n_classes < n_classes:
        raise ConfigError(f"model.n_classes ({m.n_classes}) is smaller than the data's {n_classes} classes")
    return dataclasses.replace(cfg, model=dataclasses.replace(m, vocab_size=m.vocab_size or vocab_size,
                                                              n_classes=m.n_classes or n_classes))


def denominators(batch, cfg: Experiment) -> dict[str, jax.Array]:
    """Each loss part's normaliser over the whole global batch (1 where the batch has none of it)."""
    counts = OBJECTIVES[cfg.objective.name].denominators(batch, cfg)
    return {name: jnp.where(count > 0, count, 1.0) for name, count in counts.items()}


def loss_fn(params, batch, key, *, graphdef, cfg: Experiment, deterministic: bool, denominators,
            teacher=None):
    """The objective's loss Σ coefficient · part sum / part denominator, and the summed metrics.

    The denominators come from the whole global batch, so when the batch is split into micro-batches
    their losses (and gradients) add up to exactly the one-batch value.
    `teacher` is (graphdef, params) of the model the `kl` term distils from, or None.
    """
    model = nnx.merge(graphdef, params)
    rngs = None if deterministic else nnx.Rngs(dropout=key)
    extra = {} if teacher is None else {"teacher": nnx.merge(*teacher)}
    parts, metrics = OBJECTIVES[cfg.objective.name].loss(model, batch, cfg=cfg, deterministic=deterministic,
                                                         rngs=rngs, **extra)
    return sum(coef * value / denominators[name] for name, (coef, value) in parts.items()), metrics


def micro_batches(batch, k: int):
    """[B, ...] → [k, B/k, ...], micro-batch i taking rows i, i+k, …, so each stays spread over devices."""
    return jax.tree_util.tree_map(
        lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch)


def gradients(params, batch, key, *, graphdef, cfg: Experiment, teacher=None):
    """Gradient of the mean loss per real target token over the batch, in `train.grad_accum` pieces.

    Micro-batch gradients, each normalised by the whole batch's denominators, are added, so the
    result equals the one-batch gradient whatever the padding in each piece.
    """
    grad_fn = jax.grad(functools.partial(loss_fn, graphdef=graphdef, cfg=cfg, teacher=teacher,
                                         deterministic=cfg.model.dropout == 0.0,
                                         denominators=denominators(batch, cfg)), has_aux=True)
    k = cfg.train.grad_accum
    if k == 1:
        grads, metrics = grad_fn(params, batch, key)
    else:
        pieces = micro_batches(batch, k)

        def accumulate(carry, inputs):
            index, micro = inputs
            result = grad_fn(params, micro, jax.random.fold_in(key, index))
            return jax.tree_util.tree_map(jnp.add, carry, result), None

        first = jax.tree_util.tree_map(lambda x: x[0], pieces)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(grad_fn, params, first, key))
        (grads, metrics), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(k), pieces))
    return grads, metrics


def train_step(state: TrainState, batch, *, graphdef, tx, cfg: Experiment, teacher=None):
    # Dropout's key depends only on (seed, step): a resumed run draws the same masks.
    key = jax.random.fold_in(jax.random.key(cfg.train.seed), state.step)
    grads, metrics = gradients(state.params, batch, key, graphdef=graphdef, cfg=cfg, teacher=teacher)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    # A step with a non-finite loss or gradient is not applied: the state stays as it was (the step
    # counter still advances, so the offending batch is skipped) and the loop counts it.
    finite = jnp.isfinite(grad_norm) & jnp.all(jnp.array([jnp.all(jnp.isfinite(v)) for v in
                                                          jax.tree_util.tree_leaves(metrics)]))
    params, opt_state = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old),
                                               (params, opt_state), (state.params, state.opt_state))
    metrics = {**metrics, "grad_norm": grad_norm, "update_norm": optax.global_norm(updates),
               "param_norm": optax.global_norm(params), "nonfinite": 1.0 - finite.astype(jnp.float32)}
    return TrainState(state.step + 1, params, opt_state), metrics


def eval_step(params, batch, *, graphdef, cfg: Experiment, teacher=None):
    _, metrics = loss_fn(params, batch, None, graphdef=graphdef, cfg=cfg, deterministic=True,
                         denominators=denominators(batch, cfg), teacher=teacher)
    return metrics


def fresh_state(params, tx) -> TrainState:
    """Step 0: `params` with a freshly initialised optimizer state."""
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))


def init_state(seed: int, *, cfg: Experiment, tx) -> TrainState:
    _, params = split_params(build_model(cfg.model, seed))
    return fresh_state(params, tx)


class Run:
    """Everything needed to step, evaluate and checkpoint one experiment on one mesh."""

    def __init__(self, cfg: Experiment, vocab_size: int, n_classes: int = 0):
        self.cfg = cfg = resolve(cfg, vocab_size, n_classes)
        self.objective = OBJECTIVES[cfg.objective.name]
        # Each micro-batch is split over the data axis, so it is the micro-batch that must divide.
        k = cfg.train.grad_accum
        self.mesh = sharding.make_mesh(cfg.train, cfg.data.batch_size // k,
                                       "data.batch_size" if k == 1 else "data.batch_size / train.grad_accum")
        self.tx = build_optimizer(cfg.optim, cfg.train.steps)
        self.schedule = build_schedule(cfg.optim, cfg.train.steps)
        self.graphdef, abstract = abstract_params(cfg.model)
        self.teacher = load_teacher(cfg.loss.teacher, cfg.model.vocab_size) if cfg.loss.teacher else None
        self.n_params = count_params(abstract)
        self.param_bytes = tree_bytes(abstract)
        self.opt_state_bytes = state_bytes(self.tx, abstract)
        init = functools.partial(init_state, cfg.train.seed, cfg=cfg, tx=self.tx)
        self.abstract_state = jax.eval_shape(init)
        state_shardings = sharding.state_shardings(self.abstract_state, self.mesh, param_axes(cfg.model))
        self.abstract_state = jax.tree_util.tree_map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            self.abstract_state, state_shardings)
        replicated = sharding.replicated(self.mesh)
        self.init = jax.jit(init, out_shardings=state_shardings)
        # Given parameters (train.init_from), a fresh optimizer state and step 0.
        self.init_with = jax.jit(functools.partial(fresh_state, tx=self.tx), out_shardings=state_shardings)
        self.init_from = None  # the checkpoint step train.init_from starts from, set by train()
        self.step = jax.jit(
            sharding.constrained_on(self.mesh, functools.partial(train_step, graphdef=self.graphdef,
                                                                 tx=self.tx, cfg=cfg, teacher=self.teacher)),
            in_shardings=(state_shardings, sharding.batch_sharding(self.mesh)),
            out_shardings=(state_shardings, replicated), donate_argnums=0)
        self.eval = jax.jit(sharding.constrained_on(self.mesh, functools.partial(
                                eval_step, graphdef=self.graphdef, cfg=cfg, teacher=self.teacher)),
                            in_shardings=(state_shardings.params, sharding.batch_sharding(self.mesh)),
                            out_shardings=replicated)

    def evaluate(self, params, batches) -> dict[str, float]:
        totals: dict[str, Any] = {}
        for batch in batches:
            metrics = self.eval(params, batch)
            totals = {k: totals.get(k, 0.0) + v for k, v in metrics.items()}
        return self.objective.summarize({k: float(v) for k, v in jax.device_get(totals).items()})


def check_workdir(workdir: Path, cfg: Experiment) -> None:
    """Refuse to continue a run of a different model in the same workdir (before anything is written)."""
    path = workdir / "config.json"
    if not path.exists():
        return
    previous = from_dict(json.loads(path.read_text()))
    for field in dataclasses.fields(cfg.model):
        old, new = getattr(previous.model, field.name), getattr(cfg.model, field.name)
        if old != new and field.name not in ("dropout", "attention", "dtype"):
            raise ConfigError(f"{workdir} holds a run with model.{field.name}={old}, not {new}; "
                              f"use another --workdir or remove it")


def prompt_tokens(cfg: Experiment, tokenizer) -> np.ndarray:
    """The sampling prompt as tokens, behind the end-of-text token that starts every document."""
    s = cfg.sample
    prompt = np.concatenate([[tokenizer.eot_id], tokenizer.encode(s.prompt)]).astype(np.int32)
    if len(prompt) + s.max_new_tokens > cfg.model.context:
        raise ConfigError(f"prompt ({len(prompt)} tokens) + sample.max_new_tokens "
                          f"({s.max_new_tokens}) exceed the model's context ({cfg.model.context})")
    return prompt


def sample_text(run: Run, params, tokenizer, seed: int) -> str:
    s = run.cfg.sample
    prompt = prompt_tokens(run.cfg, tokenizer)
    # Ids the tokenizer cannot decode, and padding unless it doubles as end of text (GPT-2 has no pad).
    banned = tuple(i for i in range(run.cfg.model.vocab_size)
                   if i >= tokenizer.vocab_size or (i == tokenizer.pad_id != tokenizer.eot_id))
    tokens, count = generate(params, jnp.asarray(prompt[None]), jax.random.key(seed),
                             graphdef=run.graphdef, max_new_tokens=s.max_new_tokens,
                             temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                             eot_id=tokenizer.eot_id, banned=banned)
    new = np.asarray(tokens[0, : int(count[0])])
    return s.prompt + tokenizer.decode(new)


def train(cfg: Experiment, workdir: Path, *, log=print) -> dict[str, Any]:
    """Train (or resume) `cfg` in `workdir`; return the final validation metrics and the sample.

    Raises `Preempted` after checkpointing when SIGTERM/SIGINT arrives, `Diverged` after
    `train.max_nonfinite_steps` non-finite steps in a row, `ConfigError` for bad input (before writing).
    """
    workdir = Path(workdir)
    init_from = check_init_from(cfg)
    data = build_objective_data(cfg, tokenizer_path(cfg, workdir))
    if cfg.objective.name == "causal_lm":
        prompt_tokens(cfg, data.tokenizer)  # a sample that cannot fit fails now, not after training
    sharding.initialize_distributed(cfg.train)
    if cfg.train.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(Path(cfg.train.compilation_cache_dir).absolute()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    run = Run(cfg, data.tokenizer.vocab_size, getattr(data, "n_classes", 0))
    check_workdir(workdir, run.cfg)
    run.init_from = init_from
    # In a multi-host job every process computes and checkpoints (orbax writes cooperatively), but
    # only process 0 holds the lock and writes config, metrics and the sample.
    lead = jax.process_index() == 0
    with WorkdirLock(workdir) if lead else contextlib.nullcontext(), StopSignals() as stop:
        return _train_locked(run, data, workdir, stop, log if lead else (lambda *_: None), lead)


def _train_locked(run: Run, data, workdir: Path, stop: StopSignals, log, lead: bool) -> dict[str, Any]:
    cfg = run.cfg
    if lead:
        (workdir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
        if hasattr(data.tokenizer, "save") and not (workdir / "tokenizer.json").exists():
            data.tokenizer.save(workdir / "tokenizer.json")  # sample, eval and resume read it back
    checkpointer = Checkpointer(workdir / "checkpoints", cfg.train.keep_checkpoints)
    restored = checkpointer.restore_latest(run.abstract_state, warn=log)
    if restored is None:
        state = run.init()
        if run.init_from is not None:
            state = start_from(state, run)
            log(f"{cfg.name}: parameters from {cfg.train.init_from} (step {run.init_from})")
        log(f"{cfg.name}: {run.n_params:,} parameters ({run.param_bytes / 2**20:.1f} MiB), optimizer "
            f"{cfg.optim.preset} state {run.opt_state_bytes / run.n_params:.1f} bytes/parameter, "
            f"{len(run.mesh.devices.flat)} device(s), training to step {cfg.train.steps} in {workdir}")
    else:
        state, meta = restored
        log(f"{cfg.name}: resumed from step {meta['step']} in {workdir}, "
            f"training to step {cfg.train.steps}")
    start = int(state.step)

    val_batches = [sharding.put_batch(b, run.mesh) for b in data.val_batches(cfg.train.eval_batches)]
    t_compile = time.perf_counter()
    step_fn = run.step.lower(state, val_batches[0]).compile()  # ahead of time, to report its cost
    compile_s = time.perf_counter() - t_compile
    log(f"train step compiled in {compile_s:.1f} s")
    writer = MetricsWriter(workdir) if lead else NullWriter()
    model_flops = flops_per_token(cfg.model, cfg.data.seq_len, cfg.objective)
    peak = peak_flops(run.mesh.devices.flat[0])
    peak = peak * run.mesh.devices.size if peak else None
    unigram = unigram_entropy(data.val_tokens)  # what a model that ignores context can reach
    writer.write(start, "setup", {"val_unigram_entropy": unigram, "params": run.n_params,
                                  "param_bytes": run.param_bytes,
                                  "opt_state_bytes": run.opt_state_bytes,
                                  "opt_state_bytes_per_param": run.opt_state_bytes / run.n_params,
                                  "devices": len(run.mesh.devices.flat), "compile_s": compile_s,
                                  "flops_per_token": model_flops, "peak_flops": peak})
    bar = progress_bar(start, cfg.train.steps, cfg.train.progress and lead)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    t0 = time.perf_counter()
    window_start, window = t0, {}
    skipped = {"total": 0, "in_a_row": 0}
    val = None

    def flush(step: int, metrics) -> None:
        nonlocal window, window_start  # sums over the finite steps since the last log line
        host = jax.device_get(metrics)
        if host["nonfinite"]:
            skipped["total"] += 1
            skipped["in_a_row"] += 1
            writer.write(step, "skipped", {"reason": "non-finite loss or gradient",
                                           "in_a_row": skipped["in_a_row"], "total": skipped["total"]})
            bar.write(f"step {step:>6}  skipped: non-finite loss or gradient "
                      f"({skipped['in_a_row']} in a row)")
            if skipped["in_a_row"] >= cfg.train.max_nonfinite_steps:
                raise Diverged(f"training diverged: {skipped['in_a_row']} non-finite steps in a row, the "
                               f"last at step {step}; the last checkpoint holds finite parameters")
            return
        skipped["in_a_row"] = 0
        for key, value in host.items():
            window[key] = window.get(key, 0.0) + float(value)
        window["steps"] = window.get("steps", 0) + 1
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            now = time.perf_counter()
            record = run.objective.summarize(window)
            n = window["steps"]
            record.update(lr=float(run.schedule(step - 1)),
                          **{k: window[k] / n for k in ("grad_norm", "update_norm", "param_norm")},
                          skipped_steps=skipped["total"],
                          tokens_per_s=n * tokens_per_step / (now - window_start), elapsed_s=now - t0)
            record["mfu"] = record["tokens_per_s"] * model_flops / peak if peak else None
            writer.write(step, "train", record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}",
                            mfu=f"{record['mfu']:.1%}" if peak else "?")
            window, window_start = {}, now

    def save(step: int, state: TrainState) -> None:
        checkpointer.save(step, state, {"step": step, "data_position": step, "seed": cfg.train.seed})

    def evaluate(step: int, state: TrainState) -> None:
        nonlocal val
        val = run.evaluate(state.params, val_batches)
        writer.write(step, "val", {**val, "elapsed_s": time.perf_counter() - t0})
        bar.write(f"step {step:>6}  val loss {val['loss']:.4f}  perplexity "
                  f"{val['perplexity']:.2f}  accuracy {val['accuracy']:.3f}")

    try:
        state = step_loop(run, data, state, step_fn, start, flush=flush, save=save, evaluate=evaluate,
                          stop=stop, tick=lambda: bar.update(1), written="checkpoint and metrics")
    finally:
        bar.close()
        checkpointer.close()  # waits for the asynchronous writes
        writer.close()
    if val is None:
        val = run.evaluate(state.params, val_batches)
    text = ""
    # Multi-host: sample afterwards with `python -m gptjax sample`. Other objectives do not generate.
    if jax.process_count() == 1 and cfg.objective.name == "causal_lm":
        text = sample_text(run, state.params, data.tokenizer, cfg.train.seed)
        (workdir / "sample.txt").write_text(text + "\n")
    return {"val": val, "sample": text, "step": int(state.step), "val_unigram_entropy": unigram}


def step_loop(run: Run, data, state, step_fn, start: int, *, flush, save, evaluate, stop: StopSignals,
              tick=lambda: None, written: str) -> Any:
    """Steps `start + 1 … train.steps` of `step_fn` on the data's batches; returns the final state.

    A step's metrics are fetched (`flush(step, metrics)`) once the next step is queued, so the host never
    waits on the device; `evaluate(step, state)` and `save(step, state)` run every `train.eval_every` /
    `train.checkpoint_every` steps and at the end. SIGTERM/SIGINT: the step finishes, its metrics are
    flushed, the state saved, then `Preempted` (`written` says what was). Shared by a run and a vmapped
    group of trials (`gptjax/vectorised.py`), whose state is the stacked one.
    """
    t = run.cfg.train
    pending = None
    for step in range(start + 1, t.steps + 1):
        state, metrics = step_fn(state, sharding.put_batch(data.train_batch(step - 1), run.mesh))
        if pending is not None:
            flush(*pending)
        pending = (step, metrics)
        tick()
        if stop.received:
            flush(*pending)
            save(step, state)
            raise Preempted(f"stopped by {stop.name} at step {step}; {written} written, run the same "
                            f"command again to resume")
        if step % t.eval_every == 0 or step == t.steps:
            flush(*pending)
            pending = None
            evaluate(step, state)
        if step % t.checkpoint_every == 0 or step == t.steps:
            save(step, state)
    if pending is not None:
        flush(*pending)
    return state


def tokenizer_path(cfg: Experiment, workdir: Path) -> Path:
    """Where a trained tokenizer is kept: the workdir, or the run it starts from (same vocabulary)."""
    return Path(cfg.train.init_from or workdir) / "tokenizer.json"


def check_init_from(cfg: Experiment) -> int | None:
    """`train.init_from`'s latest step, checked before any work; None when not set."""
    if not cfg.train.init_from:
        return None
    source = Path(cfg.train.init_from)
    if not (source / "config.json").exists():
        hint = (f" (make experiment NAME={source.name})" if source.parent.name == "runs"
                and source.name in known_experiments() else "")
        raise ConfigError(f"train.init_from {source} is not a gptjax workdir (no config.json); "
                          f"train that run first{hint}")
    steps = checkpoint_steps(source)  # import-hf writes step 0
    if not steps:
        raise ConfigError(f"train.init_from {source} has no checkpoint yet")
    previous = from_dict(json.loads((source / "config.json").read_text()))
    if previous.model.family != cfg.model.family or previous.data.tokenizer != cfg.data.tokenizer:
        raise ConfigError(f"train.init_from {source} holds a {previous.model.family} model with the "
                          f"{previous.data.tokenizer} tokenizer; this run has {cfg.model.family} and "
                          f"{cfg.data.tokenizer}")
    return steps[-1]


def start_from(state: TrainState, run: Run) -> TrainState:
    """`state` with every parameter the `train.init_from` run also has replaced by that run's value.

    Parameters only this model has (a new classification head) keep their fresh initialisation; a
    parameter present in both with different shapes is an error naming it. The optimizer starts anew.
    """
    _, _, params = restore_params(Path(run.cfg.train.init_from))
    flat_new = flax.traverse_util.flatten_dict(jax.device_get(state.params))
    flat_old = flax.traverse_util.flatten_dict(jax.device_get(params))
    name = lambda path: "/".join(str(p) for p in path)
    for path, old in flat_old.items():
        if path in flat_new and old.shape != flat_new[path].shape:
            raise ConfigError(f"train.init_from {run.cfg.train.init_from}: parameter {name(path)} has shape "
                              f"{tuple(old.shape)} there, {tuple(flat_new[path].shape)} here")
    missing = sorted(name(path) for path in set(flat_old) - set(flat_new))
    if missing:
        raise ConfigError(f"train.init_from {run.cfg.train.init_from}: this model has no {missing[0]} "
                          f"(and {len(missing) - 1} more); model shapes must match")
    return run.init_with(flax.traverse_util.unflatten_dict({**flat_new, **flat_old}))


def load_teacher(workdir: str, vocab_size: int) -> tuple[Any, Any]:
    """(graphdef, params) of the trained model in `workdir`, for the `kl` term; same vocabulary required."""
    cfg, graphdef, params = restore_params(Path(workdir))
    if cfg.model.vocab_size != vocab_size:
        raise ConfigError(f"loss.teacher {workdir} has vocabulary {cfg.model.vocab_size}, "
                          f"the student {vocab_size}")
    return graphdef, params


def restore_params(workdir: Path) -> tuple[Experiment, Any, Any]:
    """(config, graphdef, params) of a workdir's latest checkpoint, for any family, from shapes alone:
    no data, no tokenizer, no mesh."""
    workdir = Path(workdir)
    if not (workdir / "config.json").is_file():
        raise ConfigError(f"{workdir} is not a gptjax workdir (no config.json)")
    cfg = from_dict(json.loads((workdir / "config.json").read_text()))
    graphdef, abstract = abstract_params(cfg.model)
    tx = build_optimizer(cfg.optim, cfg.train.steps)
    target = jax.eval_shape(functools.partial(fresh_state, tx=tx), abstract)
    checkpointer = Checkpointer(workdir / "checkpoints", cfg.train.keep_checkpoints)
    restored = checkpointer.restore_latest(target)
    checkpointer.close()
    if restored is None:
        raise ConfigError(f"{workdir} has no checkpoint yet")
    return cfg, graphdef, restored[0].params


def load_for_inference(workdir: Path) -> tuple[Run, Any, Any]:
    """(run, params, tokenizer) from a workdir's config.json, latest checkpoint and tokenizer."""
    cfg, _, params = restore_params(workdir)
    tokenizer = build_tokenizer(cfg.data, cache=Path(workdir) / "tokenizer.json")
    run = Run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, data_parallel=1)),
              tokenizer.vocab_size)
    return run, params, tokenizer
