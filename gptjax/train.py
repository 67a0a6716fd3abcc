"""The train state, the pure train and eval steps, the compiled `Steps` of a run, and `train()`.

`train_step(state, batch)` is a pure function of pytrees, jitted over the device mesh with the state
donated; the model lives in it only as `nnx.merge(graphdef, params)`. `build_steps` turns resolved
configs into an immutable `Steps` value: one config is one run, several are a vmapped group of trials
(gptjax/trials.py) whose state has a leading trial axis. `train_trials` runs either through the one loop
of gptjax/loop.py, with logging, evaluation, checkpoints, stop signals and the progress bar as hooks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from gptjax import environment, sharding, storage
from gptjax.checkpoint import Checkpointer, StateMismatchError, checkpoint_steps, restore_params
from gptjax.config import ConfigError, Experiment, to_dict
from gptjax.data import build_tokenizer, unigram_entropy
from gptjax.flops import flops_per_token, peak_flops
from gptjax.generate import prompt_tokens, sample_text
from gptjax.guards import StopSignals, workdir_lock
from gptjax.loop import Checkpointing, Evaluation, MetricsLog, Progress, StopOnSignal, Trainer, Trial
from gptjax.metrics import MetricsWriter, NullWriter, read_metrics
from gptjax.models import abstract_model, build_model, count_params, param_axes, split_params, tree_bytes
from gptjax.objectives import OBJECTIVES, build_objective_data
from gptjax.optimizers import RULES, build_optimizer, build_schedule
from gptjax.optimizers_modern import eval_params
from gptjax.trials import Layout, injected_optimizer, varying_fields
from gptjax.workdir import (
    check_init_from,
    check_memory,
    check_resume,
    check_shapes,
    describe_changes,
    read_config,
)


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


def curvature_loss(batch, key, *, graphdef, cfg: Experiment, teacher=None):
    """params → the mean loss of the batch's first micro-batch, for rules that estimate curvature from the
    loss itself (`NEEDS_LOSS`: Sophia's Hessian-vector products). One micro-batch, as the step's memory is
    sized for one; Sophia's authors also estimate on a part of the batch."""
    micro = jax.tree_util.tree_map(lambda x: x[0], micro_batches(batch, cfg.train.grad_accum))
    return lambda params: loss_fn(params, micro, key, graphdef=graphdef, cfg=cfg, teacher=teacher,
                                  deterministic=cfg.model.dropout == 0.0,
                                  denominators=denominators(micro, cfg))[0]


def train_step(state: TrainState, batch, *, graphdef, tx, cfg: Experiment, teacher=None):
    # Dropout's key depends only on (seed, step): a resumed run draws the same masks.
    key = jax.random.fold_in(jax.random.key(cfg.train.seed), state.step)
    grads, metrics = gradients(state.params, batch, key, graphdef=graphdef, cfg=cfg, teacher=teacher)
    extra = ({"obj_fn": curvature_loss(batch, key, graphdef=graphdef, cfg=cfg, teacher=teacher)}
             if RULES[cfg.optim.rule].NEEDS_LOSS else {})
    updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra)
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


def init_params(seed: int, *, cfg: Experiment):
    return split_params(build_model(cfg.model, seed))[1]


def _with_shardings(abstract, shardings):
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                  abstract, shardings)


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """The jitted eval step of a model on a mesh; called on parameters and batches, it returns the
    objective's summary of the summed metrics (loss, perplexity, accuracy, …)."""

    cfg: Experiment
    mesh: Mesh
    eval: Any  # jitted (params, batch) -> summed metrics

    def __call__(self, params, batches) -> dict[str, float]:
        totals: dict[str, Any] = {}
        for batch in batches:
            metrics = self.eval(params, batch)
            totals = {k: totals.get(k, 0.0) + v for k, v in metrics.items()}
        return OBJECTIVES[self.cfg.objective.name].summarize(
            {k: float(v) for k, v in jax.device_get(totals).items()})


def build_evaluator(cfg: Experiment, graphdef, mesh: Mesh, *, teacher=None, param_shardings=None
                    ) -> Evaluator:
    """An `Evaluator` of the resolved `cfg`; needs parameters only, no optimizer."""
    fn = jax.jit(sharding.constrained_on(mesh, functools.partial(eval_step, graphdef=graphdef, cfg=cfg,
                                                                 teacher=teacher)),
                 in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))
    return Evaluator(cfg, mesh, fn)


def inference_mesh(cfg: Experiment) -> Mesh:
    """One data-parallel device (times train.fsdp × train.tensor), for sampling and evaluating a trained
    workdir."""
    return sharding.make_mesh(dataclasses.replace(cfg.train, data_parallel=1), cfg.data.batch_size)


@dataclasses.dataclass(frozen=True)
class Steps:
    """Everything compiled to step, evaluate and checkpoint one run, or a vmapped group of trials, on one
    mesh; built once by `build_steps` and never changed. The loop's state is a `TrainState`, stacked on
    a leading trial axis for a group; each trial's own state ("separate": what its checkpoints hold)
    goes in with `stack` and comes out with `unstack`."""

    cfgs: tuple[Experiment, ...]  # resolved, one per trial; they differ only in traceable optim fields
    mesh: Mesh
    graphdef: Any
    teacher: Any  # (graphdef, params) of loss.teacher, or None
    layouts: tuple[Layout, ...] | None  # a group's per-trial optimizer layouts; None for a single run
    abstract_params: Any  # with shardings
    abstract_opt_states: tuple[Any, ...]  # each trial's separate optimizer state, with shardings
    init_params: Any  # jitted () -> the parameters of seed train.seed
    fresh: tuple[Any, ...]  # per trial, jitted params -> its separate state at step 0
    step: Any  # jitted (state, batch) -> (state, metrics), the state donated
    evaluate: Evaluator
    n_params: int
    param_bytes: int

    @property
    def cfg(self) -> Experiment:
        return self.cfgs[0]

    def opt_state_bytes(self, trial: int = 0) -> int:
        return tree_bytes(self.abstract_opt_states[trial])

    def stack(self, states: list[TrainState]) -> TrainState:
        """The loop's state from each trial's separate state."""
        if self.layouts is None:
            return states[0]
        # Stacked on the host and sent once: eager device ops would compile one small program per shape.
        vmapped = jax.device_get([TrainState(s.step, s.params, layout.to_vmapped(s.step, s.opt_state))
                                  for layout, s in zip(self.layouts, states, strict=True)])
        stacked = jax.tree.map(lambda *xs: np.stack(xs), *vmapped)
        return jax.device_put(stacked, sharding.replicated(self.mesh))

    def unstack(self, state: TrainState) -> list[TrainState]:
        """Each trial's separate state from the loop's."""
        if self.layouts is None:
            return [state]
        trials = _unstack(state, len(self.layouts))
        return [TrainState(s.step, s.params, layout.to_separate(s.opt_state))
                for layout, s in zip(self.layouts, trials, strict=True)]

    def trial_metrics(self, host: dict[str, Any], trial: int) -> dict[str, float]:
        """Trial `trial`'s metrics of a step, from the step's metrics on the host."""
        return {k: float(v if self.layouts is None else v[trial]) for k, v in host.items()}

    def eval_params(self, state: TrainState):
        """The parameters to evaluate and sample from, from one trial's separate state: the trained ones,
        or for a rule that evaluates an average (`AVERAGED`: Schedule-Free's x) that average."""
        if not RULES[self.cfg.optim.rule].AVERAGED:
            return state.params
        return _eval_params(state.opt_state, state.params)

    def init(self) -> TrainState:
        """The loop's state at step 0: seed train.seed's parameters and fresh optimizer states."""
        params = self.init_params()
        return self.stack([fresh(params) for fresh in self.fresh])


_eval_params = jax.jit(eval_params)


@functools.partial(jax.jit, static_argnums=1)
def _unstack(state, n: int):
    return [jax.tree.map(lambda x, i=i: x[i], state) for i in range(n)]


def build_steps(*cfgs: Experiment) -> Steps:
    """The compiled `Steps` of resolved configs (`resolve`): one config is one run; several are a vmapped
    group of trials that differ only in the traceable hyperparameters of one update rule
    (`gptjax.trials.varying_fields`), trained on one shared batch per step."""
    cfg = cfgs[0]
    group = len(cfgs) > 1
    fields = varying_fields(cfgs) if group else ()
    if group and (cfg.train.fsdp != 1 or cfg.train.tensor != 1 or jax.process_count() > 1):
        raise ConfigError("vmapped trials keep their stacked state replicated: train.fsdp and train.tensor "
                          "must be 1, and one host")
    # Each micro-batch is split over the data axis, so it is the micro-batch that must divide.
    k = cfg.train.grad_accum
    mesh = sharding.make_mesh(cfg.train, cfg.data.batch_size // k,
                              "data.batch_size" if k == 1 else "data.batch_size / train.grad_accum")
    model = abstract_model(cfg.model)
    graphdef, abstract = split_params(model)
    axes = param_axes(model)  # the logical names each parameter declares, mapped onto the mesh by RULES
    teacher = load_teacher(cfg.loss.teacher, cfg.model.vocab_size) if cfg.loss.teacher else None
    separate_txs = [build_optimizer(c.optim, c.train.steps) for c in cfgs]
    states = [jax.eval_shape(functools.partial(fresh_state, tx=tx), abstract) for tx in separate_txs]
    shardings = [sharding.state_shardings(s, mesh, axes) for s in states]
    states = [_with_shardings(s, sh) for s, sh in zip(states, shardings, strict=True)]
    replicated = sharding.replicated(mesh)
    if group:
        tx = injected_optimizer(cfg.optim, fields, cfg.train.steps)
        injected = jax.eval_shape(tx.init, abstract)
        layouts = tuple(Layout(c, fields, s.opt_state, injected) for c, s in zip(cfgs, states, strict=True))
        step_fn = jax.vmap(functools.partial(train_step, graphdef=graphdef, tx=tx, cfg=cfg, teacher=teacher),
                           in_axes=(0, None))  # the batch is shared: each trial sees its separate run's
        state_sharding, metric_sharding = replicated, replicated
    else:
        tx, layouts = separate_txs[0], None
        step_fn = sharding.constrained_on(
            mesh, functools.partial(train_step, graphdef=graphdef, tx=tx, cfg=cfg, teacher=teacher))
        state_sharding, metric_sharding = shardings[0], replicated
    step = jax.jit(step_fn, in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                   out_shardings=(state_sharding, metric_sharding), donate_argnums=0)
    fresh = tuple(jax.jit(functools.partial(fresh_state, tx=t), out_shardings=sh)
                  for t, sh in zip(separate_txs, shardings, strict=True))
    return Steps(
        cfgs=tuple(cfgs), mesh=mesh, graphdef=graphdef, teacher=teacher, layouts=layouts,
        abstract_params=states[0].params, abstract_opt_states=tuple(s.opt_state for s in states),
        init_params=jax.jit(functools.partial(init_params, cfg.train.seed, cfg=cfg),
                            out_shardings=shardings[0].params),
        fresh=fresh, step=step,
        evaluate=build_evaluator(cfg, graphdef, mesh, teacher=teacher, param_shardings=shardings[0].params),
        n_params=count_params(abstract), param_bytes=tree_bytes(abstract))


def warn_schedule_change(workdir: storage.PathLike, cfg: Experiment, log) -> None:
    """On resume, say so when the config's schedule horizon (`optim.schedule_steps`, else `train.steps`)
    differs from the run's so far and moves the learning rate of the next step, and how to keep it."""
    path, at = storage.path(workdir) / "config.json", checkpoint_steps(workdir)
    if not path.exists() or not at or at[-1] >= cfg.train.steps:
        return
    previous, start = read_config(workdir), at[-1]
    old_horizon = previous.optim.schedule_steps or previous.train.steps
    new_horizon = cfg.optim.schedule_steps or cfg.train.steps
    if old_horizon == new_horizon:
        return
    # Update `start` (optax's count) is the next step's; a constant schedule or a warmup gives the same.
    old = build_schedule(previous.optim, previous.train.steps)
    old_lr, new_lr = float(old(start)), float(build_schedule(cfg.optim, cfg.train.steps)(start))
    if abs(new_lr - old_lr) <= 1e-6 * max(abs(old_lr), abs(new_lr)):
        return
    log(f"warning: {workdir}: the {cfg.optim.schedule} schedule now decays until step {new_horizon}, not "
        f"{old_horizon} (train.steps {previous.train.steps} -> {cfg.train.steps}): step {start + 1}'s "
        f"learning rate is {new_lr:.3g}, not the {old_lr:.3g} this run was heading for. To keep the "
        f"schedule as it was (after step {old_horizon} the rate stays at {float(old(old_horizon - 1)):.3g}), "
        f"add optim.schedule_steps={old_horizon}")


def elapsed_before(workdir: storage.PathLike, step: int) -> float:
    """Seconds of training a resumed run's earlier processes recorded up to `step`, its checkpoint: the
    last `elapsed_s` at or before it in metrics.jsonl (records past it are work the resume redoes)."""
    return max((r["elapsed_s"] for r in read_metrics(workdir) if r["step"] <= step and "elapsed_s" in r),
               default=0.0)


def merge_init_from(params, source: storage.PathLike):
    """`params` with every parameter the run in `source` also has replaced by that run's value.

    Parameters only this model has (a new classification head) keep their fresh initialisation; a
    parameter present in both with different shapes is an error naming it. The optimizer starts anew.
    """
    _, _, old_params = restore_params(source)
    check_shapes(source, old_params, params)
    flat_new = flax.traverse_util.flatten_dict(jax.device_get(params))
    flat_old = flax.traverse_util.flatten_dict(jax.device_get(old_params))
    return flax.traverse_util.unflatten_dict({**flat_new, **flat_old})


def load_teacher(workdir: str, vocab_size: int) -> tuple[Any, Any]:
    """(graphdef, params) of the trained model in `workdir`, for the `kl` term; same vocabulary required."""
    cfg, graphdef, params = restore_params(workdir)
    if cfg.model.vocab_size != vocab_size:
        raise ConfigError(f"loss.teacher {workdir} has vocabulary {cfg.model.vocab_size}, "
                          f"the student {vocab_size}")
    return graphdef, params


def load_for_inference(workdir: storage.PathLike) -> tuple[Experiment, Any, Any, Any]:
    """(config, graphdef, params, tokenizer) of a workdir's config.json, latest checkpoint's parameters
    and tokenizer; no optimizer is built."""
    cfg, graphdef, params = restore_params(workdir)
    return cfg, graphdef, params, build_tokenizer(cfg.data, cache=storage.path(workdir) / "tokenizer.json")


def train(cfg: Experiment, workdir: storage.PathLike, *, log=print, execution: str = "single"
          ) -> dict[str, Any]:
    """Train (or resume) `cfg` in `workdir`; return the final validation metrics and the sample.

    Raises `Preempted` after checkpointing when SIGTERM/SIGINT arrives, `Diverged` after
    `train.max_nonfinite_steps` non-finite steps in a row, `ConfigError` for bad input (before writing).
    `execution` is what the setup record says about how the run was executed: "single" (a run of its
    own) or "separate" (one variant of a sweep, in a process of its own).
    """
    return train_trials({workdir: cfg}, log=log, execution=execution)[workdir]


def train_trials(trials: dict[storage.PathLike, Experiment], *, log=print, execution: str = "single"
                 ) -> dict[storage.PathLike, dict[str, Any]]:
    """Train (or resume) each config in its workdir: one alone, or several (as `varying_fields` allows)
    as one vmapped group, each trial writing to its workdir what it would write alone: `config.json`,
    `metrics.jsonl` (setup, train, val and skipped records; tokens/s and MFU count one trial's tokens),
    checkpoints of its own state, `sample.txt` (causal LM, one host). A group resumes from checkpoints
    at one step. A trial with `train.max_nonfinite_steps` non-finite steps in a row is dropped (result
    {"diverged": message}) while the others train on, and `Diverged` is raised once none is left; the
    rest return {"val", "sample", "step", "val_unigram_entropy"}. SIGTERM/SIGINT: the hooks due at that
    step run, every trial checkpoints, then `Preempted`. ConfigError for bad input, before writing.
    Each setup record holds the environment (gptjax/environment.py), `execution` (a group's is "vmapped
    group of K", else the one given), the load average at the start and the number of CPUs."""
    workdirs, cfgs = [storage.path(w) for w in trials], list(trials.values())
    if len(cfgs) > 1:
        varying_fields(cfgs)
        if cfgs[0].train.init_from:
            raise ConfigError("vmapped trials start from one initialisation; train.init_from runs train "
                              "alone")
    if cfgs[0].train.init_from:
        check_init_from(cfgs[0], None)  # a workdir of this family and tokenizer; its shapes once resolved
    # A trained tokenizer (bpe) is the same for every trial, and for the run init_from starts from.
    saved = [storage.path(cfgs[0].train.init_from or w) / "tokenizer.json" for w in workdirs]
    data = build_objective_data(cfgs[0], next((p for p in saved if p.exists()), saved[0]))
    if cfgs[0].objective.name == "causal_lm":
        prompt_tokens(cfgs[0], data.tokenizer)  # a sample that cannot fit fails now, not after training
    sharding.initialize_distributed(cfgs[0].train)
    if cfgs[0].train.compilation_cache_dir:
        cache = cfgs[0].train.compilation_cache_dir  # JAX reads and writes a gs:// one itself
        cache = cache if storage.is_remote(cache) else str(Path(cache).absolute())
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    cfgs = [resolve(c, data.tokenizer.vocab_size, getattr(data, "n_classes", 0)) for c in cfgs]
    steps = build_steps(*cfgs)
    # Everything that can be found from shapes is found here, before the workdirs are touched.
    if cfgs[0].train.init_from:
        check_init_from(steps.cfg, steps.abstract_params)
    check_memory(steps.cfg, steps.mesh, steps.param_bytes,
                 max(steps.opt_state_bytes(i) for i in range(len(cfgs))), trials=len(cfgs))
    for workdir, cfg in zip(workdirs, cfgs, strict=True):
        changes = check_resume(workdir, cfg, steps.abstract_params)
        if changes:
            log(f"{workdir}: resuming with changed fields: {describe_changes(changes)}")
        if jax.process_index() == 0:
            warn_schedule_change(workdir, cfg, log)
    # In a multi-host job every process computes and checkpoints (orbax writes cooperatively), but
    # only process 0 holds the locks and writes configs, metrics and samples.
    lead = jax.process_index() == 0
    with contextlib.ExitStack() as stack:
        for workdir in workdirs if lead else ():
            stack.enter_context(workdir_lock(workdir))
        stop = stack.enter_context(StopSignals())
        results = _train_locked(steps, data, workdirs, stop, log if lead else (lambda *_: None), lead,
                                execution)
    return dict(zip(trials, results.values(), strict=True))  # under the caller's own keys


def _train_locked(steps: Steps, data, workdirs: list, stop: StopSignals, log, lead: bool, execution: str):
    trials = []
    for workdir, c in zip(workdirs, steps.cfgs, strict=True):
        if lead:
            storage.write_atomic(workdir / "config.json", json.dumps(to_dict(c), indent=2) + "\n")
            if hasattr(data.tokenizer, "save") and not (workdir / "tokenizer.json").exists():
                data.tokenizer.save(workdir / "tokenizer.json")  # sample, eval and resume read it back
        trials.append(Trial(workdir=workdir, cfg=c, schedule=build_schedule(c.optim, c.train.steps),
                            writer=MetricsWriter(workdir) if lead else NullWriter(),
                            checkpointer=Checkpointer(workdir / "checkpoints", c.train.keep_checkpoints)))
    try:
        return _train(steps, data, trials, stop, log, execution)
    finally:
        for trial in trials:
            trial.checkpointer.close()  # waits for the asynchronous writes
            trial.writer.close()


def _restore_trial(trial: Trial, abstract_params, abstract_opt_state, log):
    """(items, meta) of a trial's latest checkpoint, or None; with train.reset_optimizer, the parameters
    alone (a fresh optimizer state follows) while the checkpoint's optimizer differs from the config's."""
    cfg, checkpointer = trial.cfg, trial.checkpointer
    full = {"params": abstract_params, "opt_state": abstract_opt_state}
    if not cfg.train.reset_optimizer:
        return checkpointer.restore_latest(full, warn=log)
    with contextlib.suppress(StateMismatchError):  # the other optimizer's state: reset below
        restored = checkpointer.restore_latest(full, warn=log)
        if (restored is None or "opt_state" not in restored[0]
                or restored[1].get("optim") == dataclasses.asdict(cfg.optim)):
            return restored
    items, meta = checkpointer.restore_latest({"params": abstract_params}, warn=log)
    saved = meta.get("optim", {}).get("preset", "unrecorded")
    log(f"{cfg.name}: train.reset_optimizer: parameters of step {meta['step']} kept, a fresh "
        f"{cfg.optim.preset} optimizer state (the checkpoint's was {saved})")
    return items, meta


def _restore(steps: Steps, trials: list[Trial], log) -> tuple[TrainState, int]:
    """The loop's state at the trials' latest checkpoint, or at step 0 (init_from's parameters if set)."""
    restored = [_restore_trial(t, steps.abstract_params, opt, log)
                for t, opt in zip(trials, steps.abstract_opt_states, strict=True)]
    at = {0 if r is None else r[1]["step"] for r in restored}
    if len(at) > 1:
        raise ConfigError(f"the trials of {', '.join(t.workdir.name for t in trials)} have checkpoints at "
                          f"different steps ({sorted(at)}); run the sweep again, it groups them by step")
    start = at.pop()
    cfg, n = steps.cfg, len(trials)
    if restored[0] is None:
        params = steps.init_params()  # one seed, so every trial starts from these parameters
        if cfg.train.init_from:
            params = merge_init_from(params, cfg.train.init_from)
            log(f"{cfg.name}: parameters from {cfg.train.init_from} "
                f"(step {checkpoint_steps(cfg.train.init_from)[-1]})")
        separate = [fresh(params) for fresh in steps.fresh]
        what = (f"{n} vmapped trials (varying {', '.join(steps.layouts[0].hparams) or 'nothing'}) of "
                if n > 1 else "")
        log(f"{cfg.name}: {what}{steps.n_params:,} parameters ({steps.param_bytes / 2**20:.1f} MiB), "
            f"optimizer {cfg.optim.preset} state {steps.opt_state_bytes() / steps.n_params:.1f} "
            f"bytes/parameter, {len(steps.mesh.devices.flat)} device(s), training to step "
            f"{cfg.train.steps} in {', '.join(str(t.workdir) for t in trials)}")
        return steps.stack(separate), 0
    separate = []
    for fresh, (items, meta) in zip(steps.fresh, restored, strict=True):
        state = fresh(items["params"])  # a parameters-only checkpoint (import-hf): a fresh optimizer
        if "opt_state" in items:
            state = TrainState(state.step, state.params, items["opt_state"])
        step = jax.device_put(np.int32(meta["step"]), state.step.sharding)
        separate.append(TrainState(step, state.params, state.opt_state))
    what = f"{n} vmapped trials " if n > 1 else ""
    log(f"{cfg.name}: {what}resumed from step {start} in {', '.join(str(t.workdir) for t in trials)}, "
        f"training to step {cfg.train.steps}")
    return steps.stack(separate), start


def host_batches(data, mesh: Mesh, batch_size: int):
    """index → the global training batch on the mesh, of which this process reads only the rows its
    devices hold (`train_batch(index, rows)`): host i of N reads its own share of a store."""
    from gptjax.data.store import addressable_rows, put_rows

    batch_sharding = sharding.batch_sharding(mesh)
    rows = addressable_rows(batch_sharding, batch_size)
    if len(rows) == batch_size:  # one process (or every row here): the whole batch, as always
        return lambda index: sharding.put_batch(data.train_batch(index), mesh)
    return lambda index: put_rows(data.train_batch(index, rows=rows), rows, batch_sharding, batch_size)


def _train(steps: Steps, data, trials: list[Trial], stop: StopSignals, log, execution: str
           ) -> dict[Any, dict[str, Any]]:
    cfg, t = steps.cfg, steps.cfg.train
    state, start = _restore(steps, trials, log)
    for trial in trials:  # a torn last line, or records past a resumed step, would be read twice
        if note := trial.writer.resume(start):
            log(note)
    for trial in trials if start else ():
        trial.elapsed_before = elapsed_before(trial.workdir, start)  # elapsed_s counts on from there
    val_batches = [sharding.put_batch(b, steps.mesh) for b in data.val_batches(t.eval_batches)]
    trainer = Trainer(steps.step, host_batches(data, steps.mesh, cfg.data.batch_size), end=t.steps)
    compile_s = trainer.compile(state, val_batches[0])  # ahead of time, to report its cost
    log(f"{'vmapped ' if len(trials) > 1 else ''}train step compiled in {compile_s:.1f} s")
    model_flops = flops_per_token(cfg.model, cfg.data.seq_len, cfg.objective)
    peak = peak_flops(steps.mesh.devices.flat[0])
    peak = peak * steps.mesh.devices.size if peak else None
    unigram = unigram_entropy(data.val_tokens)  # what a model that ignores context can reach
    env = environment.announce(log)  # platform, device kinds, versions; warns when an accelerator is unused
    # How this program ran and how busy the machine was as it started: seconds are comparable only
    # between runs of one execution on an unloaded machine (the report says when they are not).
    execution = f"vmapped group of {len(trials)}" if len(trials) > 1 else execution
    machine = {"execution": execution, "load_avg": list(os.getloadavg()), "cpus": environment.cpus()}
    for i, trial in enumerate(trials):
        group = {"vmapped_trials": len(trials)} if len(trials) > 1 else {}
        trial.writer.write(start, "setup", {
            "environment": env, **machine, "val_unigram_entropy": unigram, "params": steps.n_params,
            "param_bytes": steps.param_bytes,
            "opt_state_bytes": steps.opt_state_bytes(i),
            "opt_state_bytes_per_param": steps.opt_state_bytes(i) / steps.n_params,
            "devices": len(steps.mesh.devices.flat), "compile_s": compile_s,
            "flops_per_token": model_flops, "peak_flops": peak, **group})
    progress = Progress(start, t.steps, t.progress and jax.process_index() == 0, log)
    started = time.perf_counter()
    metrics = MetricsLog(steps, trials, summarize=OBJECTIVES[cfg.objective.name].summarize,
                         tokens_per_step=cfg.data.batch_size * cfg.data.seq_len, flops_per_token=model_flops,
                         peak_flops=peak, progress=progress, started=started, data_wait=trainer.data_wait)
    trainer.add_hook(metrics.accumulate, every=1, needs="metrics")
    trainer.add_hook(metrics.write, every=t.log_every, needs="metrics")
    trainer.add_hook(progress.tick, every=1)
    written = (f"checkpoints and metrics of the {len(trials)} trials" if len(trials) > 1
               else "checkpoint and metrics")
    trainer.add_hook(StopOnSignal(stop, trainer, written), every=1)
    trainer.add_hook(Evaluation(steps, trials, val_batches, progress, started), every=t.eval_every,
                     needs="state")
    trainer.add_hook(Checkpointing(steps, trials), every=t.checkpoint_every, needs="state", on_stop=True)
    try:
        state = trainer.run(state, start)
    finally:
        progress.close()
    results = {}
    final = steps.unstack(state)
    for trial, trial_state in zip(trials, final, strict=True):
        if trial.diverged:
            results[trial.workdir] = {"diverged": trial.diverged}
            continue
        evaluated = steps.eval_params(trial_state)
        if trial.val is None:  # resumed at the last step: nothing left to train
            trial.val = steps.evaluate(evaluated, val_batches)
        text = ""
        # Multi-host: sample afterwards with `python -m gptjax sample`. Other objectives do not generate.
        if jax.process_count() == 1 and cfg.objective.name == "causal_lm":
            text = sample_text(trial.cfg, steps.graphdef, evaluated, data.tokenizer, t.seed)
            (trial.workdir / "sample.txt").write_text(text + "\n")
        results[trial.workdir] = {"val": trial.val, "sample": text, "step": int(trial_state.step),
                                  "val_unigram_entropy": unigram}
    return results
