"""Vectorised sweeps: trials that differ only in continuous optimizer hyperparameters, trained as one program.

The trials share the model, the update rule, the seed (so the initial parameters and every batch) and
everything else; only the fields in `sweep.VECTORISABLE[rule]` may differ. `optax.inject_hyperparams` turns
those fields into arrays in the optimizer state, and `jax.vmap` over a stack of train states runs
`train.train_step` — the very step a separate run uses — for all trials at once: one compilation instead
of one per trial, and small matrix multiplies batched into larger ones that keep the cores busy.
`train_group` is what `python -m gptjax sweep x --vmap` runs for each group: every trial keeps its own
workdir, metrics and checkpoints, in the layout of a separate run, so a trial resumes, samples and
reports as if it had been trained alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gptjax import sharding
from gptjax.checkpoint import Checkpointer
from gptjax.config import ConfigError, Experiment, OptimConfig, to_dict
from gptjax.data import build_data, unigram_entropy
from gptjax.flops import flops_per_token, peak_flops
from gptjax.guards import Diverged, StopSignals, WorkdirLock
from gptjax.metrics import MetricsWriter
from gptjax.models import abstract_params, build_model, split_params, tree_bytes
from gptjax.objectives import build_objective_data
from gptjax.optimizers import build_optimizer, build_schedule
from gptjax.sweep import varying_fields
from gptjax.train import Run, TrainState, fresh_state, resolve, step_loop, train_step


def _factory(cfg: OptimConfig, total_steps: int):
    # Named parameters, not **kwargs: inject_hyperparams finds the hyperparameters by signature, and the
    # ones left None stay static.
    def factory(lr=None, b1=None, b2=None, eps=None, weight_decay=None):
        given = {"lr": lr, "b1": b1, "b2": b2, "eps": eps, "weight_decay": weight_decay}
        changes = {k: v for k, v in given.items() if v is not None}
        if "weight_decay" in changes:
            # A traced rate cannot answer the rules' "is the decay zero?" test; a schedule skips it and
            # adds wd·θ exactly as the constant would.
            changes["weight_decay"] = lambda count: weight_decay
        return build_optimizer(dataclasses.replace(cfg, **changes), total_steps)
    return factory


def injected_optimizer(cfg: OptimConfig, fields: Sequence[str], total_steps: int
                       ) -> optax.GradientTransformation:
    """`build_optimizer(cfg)` with `fields` held as arrays in its state (optax.inject_hyperparams), so
    one compiled update serves every value of them; the state's values, not `cfg`'s, are used."""
    return optax.inject_hyperparams(_factory(cfg, total_steps))(**{f: getattr(cfg, f) for f in fields})


def train_vectorised(cfgs: Sequence[Experiment], *, log_every: int = 1) -> dict[str, Any]:
    """Train all `cfgs` for `train.steps` steps as one vmapped program on one device. Returns the
    per-step train losses `loss_TS` [trials, steps] (every `log_every`-th step), the final parameters
    stacked on a leading trial axis, and `compile_s` / `seconds` (wall time of compiling and training)."""
    fields = varying_fields(cfgs)
    data = build_data(cfgs[0].data, cfgs[0].train.seed)
    cfg = resolve(cfgs[0], data.tokenizer.vocab_size)
    steps = cfg.train.steps
    tx = injected_optimizer(cfg.optim, fields, steps)
    graphdef, _ = abstract_params(cfg.model)
    hparams_T = {f: jnp.asarray([getattr(c.optim, f) for c in cfgs], jnp.float32) for f in fields}

    def init(hparams):
        # The same seed in every trial: identical initial parameters, as in separate runs.
        _, params = split_params(build_model(cfg.model, cfg.train.seed))
        return fresh_state(params, optax.inject_hyperparams(_factory(cfg.optim, steps))(**hparams))

    step = functools.partial(train_step, graphdef=graphdef, tx=tx, cfg=cfg)
    # The batch is shared (in_axes None): every trial sees the same data, as separate runs would.
    vstep = jax.jit(jax.vmap(step, in_axes=(0, None)), donate_argnums=0)
    states = jax.jit(jax.vmap(init))(hparams_T)
    t0 = time.perf_counter()
    batch = data.train_batch(0)
    compiled = vstep.lower(states, batch).compile()
    compile_s = time.perf_counter() - t0
    losses, t1 = [], time.perf_counter()
    pending = None
    for i in range(steps):
        states, metrics = compiled(states, data.train_batch(i))
        if pending is not None:  # fetched one step late, so the host never waits on the device
            losses.append(np.asarray(pending))
        pending = metrics["loss_sum"] / metrics["weight"] if (i + 1) % log_every == 0 else None
    if pending is not None:
        losses.append(np.asarray(pending))
    jax.block_until_ready(states)
    return {"loss_TS": np.stack(losses, axis=1), "params": states.params, "fields": fields,
            "compile_s": compile_s, "seconds": time.perf_counter() - t1}


# The state of a weight decay given as a schedule, as `_factory` gives it: a step count that the
# constant schedule ignores, and that a separate run's constant decay does not keep.
_DECAY_SCHEDULE_STATE = type(optax.add_decayed_weights(lambda count: 0.0).init({}))


def _is_decay_schedule(x) -> bool:
    return isinstance(x, _DECAY_SCHEDULE_STATE)


class _Layout:
    """Moves one trial between the vmapped program's state (optimizer state under inject_hyperparams,
    with the trial's hyperparameters in it) and a separate run's (`build_optimizer` of the trial's own
    config), which is what its checkpoints hold. Both hold the same moments in the same order; the
    vmapped one adds only the hyperparameters and step counts that no value depends on (a constant decay
    schedule's, inject_hyperparams' own), so the move is a relabelling of the same leaves."""

    def __init__(self, cfg: Experiment, injected, fields: Sequence[str], abstract_params_, replicated):
        self.cfg = cfg
        self.tx = build_optimizer(cfg.optim, cfg.train.steps)
        self.hparams = {f: jnp.asarray(getattr(cfg.optim, f), jnp.float32) for f in fields}
        shapes = jax.eval_shape(functools.partial(fresh_state, tx=self.tx), abstract_params_)
        self.abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                                     shapes)
        self.injected = injected  # the vmapped optimizer's abstract state, the same for every trial
        own = [(x.shape, x.dtype) for x in jax.tree.leaves(self.abstract.opt_state)]
        if own != [(x.shape, x.dtype) for x in self._moments(self.injected.inner_state)]:
            raise ConfigError(f"optimizer {cfg.optim.preset}: its state differs from the vmapped one's; "
                              f"run this sweep without --vmap")

    @staticmethod
    def _moments(inner) -> list:
        return [x for x in jax.tree.leaves(inner, is_leaf=_is_decay_schedule) if not _is_decay_schedule(x)]

    def init(self, params) -> TrainState:
        return fresh_state(params, self.tx)

    def to_vmapped(self, state: TrainState) -> TrainState:
        step = jnp.asarray(state.step, jnp.int32)
        own = iter(jax.tree.leaves(state.opt_state))
        inner = jax.tree.map(lambda x: x._replace(count=step) if _is_decay_schedule(x) else next(own),
                             self.injected.inner_state, is_leaf=_is_decay_schedule)
        opt_state = self.injected._replace(count=step, hyperparams=self.hparams, inner_state=inner)
        return TrainState(state.step, state.params, opt_state)

    def to_separate(self, state: TrainState) -> TrainState:
        opt_state = jax.tree.unflatten(jax.tree.structure(self.abstract.opt_state),
                                       self._moments(state.opt_state.inner_state))
        return TrainState(state.step, state.params, opt_state)


def train_group(trials: dict[Path, Experiment], *, log=print) -> dict[Path, dict[str, Any]]:
    """Train (or resume) the `trials` (workdir → config; configs as `varying_fields` allows) as one
    vmapped program over the mesh of their `train` config, each writing to its workdir what a separate
    `train()` writes there: `config.json`, `metrics.jsonl` (setup, train, val and skipped records with
    the same keys, per trial; tokens/s and MFU count one trial's tokens) and checkpoints of its own state
    in a separate run's layout (so `sample`, `eval` and a later run without vmap resume them). All trials
    resume from their latest checkpoints, which must be at one step. A trial with
    `train.max_nonfinite_steps` non-finite steps in a row is dropped (result {"diverged": message}) and
    the others train on; the rest return {"val": final validation metrics, "step"}. SIGTERM/SIGINT:
    every trial checkpoints, then `Preempted`. No sample is drawn (`python -m gptjax sample <workdir>`)."""
    workdirs = [Path(w) for w in trials]
    cfgs = list(trials.values())
    fields = varying_fields(cfgs)
    if cfgs[0].train.init_from:
        raise ConfigError("vmapped trials start from one initialisation; train.init_from runs train alone")
    # A trained tokenizer (bpe) is the same for every trial: any trial's saved copy serves the group.
    saved = [w / "tokenizer.json" for w in workdirs if (w / "tokenizer.json").exists()]
    data = build_objective_data(cfgs[0], saved[0] if saved else None)
    sharding.initialize_distributed(cfgs[0].train)
    if cfgs[0].train.compilation_cache_dir:  # as train() does
        cache = Path(cfgs[0].train.compilation_cache_dir).absolute()
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if cfgs[0].train.fsdp != 1 or cfgs[0].train.tensor != 1 or jax.process_count() > 1:
        raise ConfigError("vmapped trials keep their stacked state replicated: train.fsdp and train.tensor "
                          "must be 1, and one host")
    n_classes = getattr(data, "n_classes", 0)
    run = Run(cfgs[0], data.tokenizer.vocab_size, n_classes)
    cfg = run.cfg
    cfgs = [resolve(c, data.tokenizer.vocab_size, n_classes) for c in cfgs]
    replicated = NamedSharding(run.mesh, P())
    tx = injected_optimizer(cfg.optim, fields, cfg.train.steps)
    injected = jax.eval_shape(tx.init, run.abstract_state.params)
    layouts = [_Layout(c, injected, fields, run.abstract_state.params, replicated) for c in cfgs]
    with contextlib.ExitStack() as stack:
        for workdir in workdirs:
            stack.enter_context(WorkdirLock(workdir))
        stop = stack.enter_context(StopSignals())
        return _train_group_locked(run, data, workdirs, layouts, tx, stop, log)


def _train_group_locked(run: Run, data, workdirs: list[Path], layouts: list[_Layout], tx, stop, log):
    cfg, n = run.cfg, len(workdirs)
    for workdir, layout in zip(workdirs, layouts, strict=True):
        (workdir / "config.json").write_text(json.dumps(to_dict(layout.cfg), indent=2) + "\n")
        if hasattr(data.tokenizer, "save") and not (workdir / "tokenizer.json").exists():
            data.tokenizer.save(workdir / "tokenizer.json")
    checkpointers = [Checkpointer(w / "checkpoints", cfg.train.keep_checkpoints) for w in workdirs]
    restored = [c.restore_latest(layout.abstract, warn=log) for c, layout in zip(checkpointers, layouts,
                                                                                   strict=True)]
    at = {0 if r is None else r[1]["step"] for r in restored}
    if len(at) > 1:
        raise ConfigError(f"the trials of {', '.join(w.name for w in workdirs)} have checkpoints at "
                          f"different steps ({sorted(at)}); run the sweep again, it groups them by step")
    if restored[0] is None:
        params = run.init().params  # one seed, so every trial starts from these parameters
        separate = [layout.init(params) for layout in layouts]
        log(f"{cfg.name}: {n} vmapped trials (varying {', '.join(layouts[0].hparams) or 'nothing'}) of "
            f"{run.n_params:,} parameters, {len(run.mesh.devices.flat)} device(s), training to step "
            f"{cfg.train.steps} in {', '.join(str(w) for w in workdirs)}")
    else:
        separate = [state for state, _ in restored]
        log(f"{cfg.name}: {n} vmapped trials resumed from step {at.pop()}, training to step "
            f"{cfg.train.steps}")
    # Stacked on the host and sent once: eager device ops would compile one small program per shape.
    vmapped = jax.device_get([layout.to_vmapped(s) for layout, s in zip(layouts, separate, strict=True)])
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *vmapped)
    state = jax.device_put(stacked, NamedSharding(run.mesh, P()))
    start = int(state.step[0])
    unstack = jax.jit(lambda s: [jax.tree.map(lambda x, i=i: x[i], s) for i in range(n)])

    step = functools.partial(train_step, graphdef=run.graphdef, tx=tx, cfg=cfg, teacher=run.teacher)
    # The batch is shared (in_axes None): every trial sees the batches its separate run would.
    vstep = jax.jit(jax.vmap(step, in_axes=(0, None)), donate_argnums=0)
    val_batches = [sharding.put_batch(b, run.mesh) for b in data.val_batches(cfg.train.eval_batches)]
    t_compile = time.perf_counter()
    step_fn = vstep.lower(state, val_batches[0]).compile()
    compile_s = time.perf_counter() - t_compile
    log(f"vmapped train step compiled in {compile_s:.1f} s")
    writers = [MetricsWriter(w) for w in workdirs]
    schedules = [build_schedule(lay.cfg.optim, cfg.train.steps) for lay in layouts]
    model_flops = flops_per_token(cfg.model, cfg.data.seq_len, cfg.objective)
    peak = peak_flops(run.mesh.devices.flat[0])
    peak = peak * run.mesh.devices.size if peak else None
    unigram = unigram_entropy(data.val_tokens)
    for writer, layout in zip(writers, layouts, strict=True):
        opt_bytes = tree_bytes(layout.abstract.opt_state)
        writer.write(start, "setup", {"val_unigram_entropy": unigram, "params": run.n_params,
                                      "param_bytes": run.param_bytes, "opt_state_bytes": opt_bytes,
                                      "opt_state_bytes_per_param": opt_bytes / run.n_params,
                                      "devices": len(run.mesh.devices.flat), "compile_s": compile_s,
                                      "flops_per_token": model_flops, "peak_flops": peak,
                                      "vmapped_trials": n})
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    t0 = time.perf_counter()
    alive = list(range(n))
    diverged: dict[int, str] = {}
    windows = [{} for _ in range(n)]
    window_starts = [t0] * n
    in_a_row, skipped = [0] * n, [0] * n
    vals: list[dict[str, float] | None] = [None] * n

    def flush(step: int, metrics) -> None:
        host = jax.device_get(metrics)
        for i in list(alive):
            values = {k: float(v[i]) for k, v in host.items()}
            if values["nonfinite"]:
                skipped[i] += 1
                in_a_row[i] += 1
                writers[i].write(step, "skipped", {"reason": "non-finite loss or gradient",
                                                   "in_a_row": in_a_row[i], "total": skipped[i]})
                if in_a_row[i] >= cfg.train.max_nonfinite_steps:
                    diverged[i] = (f"training diverged: {in_a_row[i]} non-finite steps in a row, the last at "
                                   f"step {step}; the last checkpoint holds finite parameters")
                    alive.remove(i)
                    log(f"{workdirs[i].name}: {diverged[i]} (the other trials go on)")
                continue
            in_a_row[i] = 0
            for key, value in values.items():
                windows[i][key] = windows[i].get(key, 0.0) + value
            windows[i]["steps"] = windows[i].get("steps", 0) + 1
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                now = time.perf_counter()
                record = run.objective.summarize(windows[i])
                k = windows[i]["steps"]
                norms = ("grad_norm", "update_norm", "param_norm")
                record.update(lr=float(schedules[i](step - 1)), **{key: windows[i][key] / k for key in norms},
                              skipped_steps=skipped[i],
                              tokens_per_s=k * tokens_per_step / (now - window_starts[i]), elapsed_s=now - t0)
                record["mfu"] = record["tokens_per_s"] * model_flops / peak if peak else None
                writers[i].write(step, "train", record)
                windows[i], window_starts[i] = {}, now
        if not alive:
            raise Diverged(f"all {n} vmapped trials diverged, the last at step {step}")

    def save(step: int, state) -> None:
        trials = unstack(state)
        for i in alive:
            checkpointers[i].save(step, layouts[i].to_separate(trials[i]),
                                  {"step": step, "data_position": step, "seed": cfg.train.seed})

    def evaluate(step: int, state) -> None:
        trials = unstack(state)
        for i in alive:
            vals[i] = run.evaluate(trials[i].params, val_batches)
            writers[i].write(step, "val", {**vals[i], "elapsed_s": time.perf_counter() - t0})
        log(f"step {step:>6}  val loss " + "  ".join(f"{workdirs[i].name} {vals[i]['loss']:.4f}"
                                                     for i in alive))

    try:
        state = step_loop(run, data, state, step_fn, start, flush=flush, save=save, evaluate=evaluate,
                          stop=stop, written=f"checkpoints and metrics of the {n} trials")
    finally:
        for checkpointer in checkpointers:
            checkpointer.close()  # waits for the asynchronous writes
        for writer in writers:
            writer.close()
    results = {}
    for i, workdir in enumerate(workdirs):
        if i in diverged:
            results[workdir] = {"diverged": diverged[i]}
            continue
        if vals[i] is None:  # resumed at the last step: nothing left to train
            vals[i] = run.evaluate(unstack(state)[i].params, val_batches)
        results[workdir] = {"val": vals[i], "step": int(state.step[i])}
    return results
