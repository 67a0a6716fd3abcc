"""The training loop and its hooks: one loop for a run and for a vmapped group of trials.

`Trainer.run` steps a state through the compiled step on the data's batches and calls the hooks
registered with `add_hook(fn, every=N, needs=…)` at every N-th step and at the last one. What a hook
needs decides when it runs: `"metrics"` hooks get the step's metrics on the host once the next step is
queued, so the host never waits on the device; `"state"` hooks (evaluation, checkpoints) get the state
right after the step, once the metrics up to it have gone to their hooks; other hooks (progress, the
stop signal) run right after the step. A hook stops the run with `request_stop`: the hooks due at that
step still run, then those registered `on_stop` (the checkpoint), then the stop's exception is raised,
so a run stopped at step N leaves on disk what a run that finished step N leaves. The batches come from
a background thread that makes them two steps ahead (`Prefetch`), so the device does not wait on the host
either; how long the loop did wait is logged as `data_wait_s`.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from gptjax.config import Experiment
from gptjax.guards import Diverged, Preempted, StopSignals
from gptjax.metrics import progress_bar


@dataclasses.dataclass(frozen=True)
class Hook:
    fn: Callable[..., None]
    every: int
    needs: str | None  # "metrics", "state" or None
    on_stop: bool  # also when the run stops early, whatever the step


class Prefetch:
    """`make(index)` for index = first … end − 1, made ahead in a background thread into a queue of
    `depth`, so the host builds (and sends) the next batches while the device runs the step. `get` hands
    them out in order and adds the time it waited to `waited[index]`; an error in `make` is raised by
    the `get` of its index. Batches are pure functions of their index, so what is made ahead and never
    used (a stop) changes nothing."""

    def __init__(self, make: Callable[[int], Any], first: int, end: int, depth: int):
        self.make, self.waited = make, {}
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(first, end), daemon=True,
                                        name="gptjax-prefetch")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, first: int, end: int) -> None:
        for index in range(first, end):
            try:
                item = (index, self.make(index), None)
            except Exception as error:  # handed to the loop, which raises it at this step
                self._put((index, None, error))
                return
            if not self._put(item):
                return

    def get(self, index: int):
        t0 = time.perf_counter()
        got, batch, error = self._queue.get()
        self.waited[index] = time.perf_counter() - t0
        if error is not None:
            raise error
        assert got == index, (got, index)
        return batch

    def close(self) -> None:
        self._closed.set()
        self._thread.join()


class Trainer:
    """Runs `step(state, batch(step - 1))` for steps start + 1 … end, calling the hooks; the batches are
    made `prefetch` steps ahead in a background thread (`Prefetch`), and `data_wait(step)` is how long
    the loop waited for step's batch (~0 when the host keeps ahead of the device)."""

    def __init__(self, step: Callable, batch: Callable[[int], Any], *, end: int, prefetch: int = 2):
        self.step, self.batch, self.end, self.prefetch = step, batch, end, prefetch
        self.hooks: list[Hook] = []
        self._stop: Callable[[int], Exception] | None = None
        self._waited: dict[int, float] = {}

    def data_wait(self, step: int) -> float:
        """Seconds the loop waited for the batch of `step` (that is, of index step − 1); once per step."""
        return self._waited.pop(step - 1, 0.0)  # asked once per step: the dict stays small

    def add_hook(self, fn: Callable[..., None], *, every: int, needs: str | None = None,
                 on_stop: bool = False) -> None:
        """Call `fn(step, host_metrics)` (needs="metrics"), `fn(step, state)` (needs="state") or
        `fn(step)` at every `every`-th step and at the last; with `on_stop`, also when a stop is taken."""
        if needs not in ("metrics", "state", None):
            raise ValueError(f"needs must be 'metrics', 'state' or None, not {needs!r}")
        self.hooks.append(Hook(fn, every, needs, on_stop))

    def request_stop(self, error: Callable[[int], Exception]) -> None:
        """Stop after the current step: `error(step)` is raised once that step's hooks have run."""
        self._stop = error

    def compile(self, state, batch) -> float:
        """Compile the step ahead of time for these shapes (its cost is worth reporting); seconds taken."""
        t0 = time.perf_counter()
        self.step = self.step.lower(state, batch).compile()
        return time.perf_counter() - t0

    def _due(self, hook: Hook, step: int) -> bool:
        return step % hook.every == 0 or step == self.end

    def _call(self, needs: str | None, step: int, *args, stopping: bool = False) -> None:
        for hook in self.hooks:
            if hook.needs == needs and (self._due(hook, step) or (stopping and hook.on_stop)):
                hook.fn(step, *args)

    def run(self, state, start: int):
        """The state after step `end`, from `state` at step `start`."""
        pending = None  # (step, metrics on the device) not yet given to the metrics hooks

        def flush():
            nonlocal pending
            if pending is not None:
                step, metrics = pending
                pending = None
                self._call("metrics", step, jax.device_get(metrics))

        batches = Prefetch(self.batch, start, self.end, self.prefetch)
        self._waited = batches.waited
        try:
            for step in range(start + 1, self.end + 1):
                state, metrics = self.step(state, batches.get(step - 1))
                flush()  # the previous step's metrics, fetched while this step runs
                pending = (step, metrics)
                self._call(None, step)
                stopping = self._stop is not None
                if stopping or any(h.needs == "state" and self._due(h, step) for h in self.hooks):
                    flush()
                    self._call("state", step, state, stopping=stopping)
                if stopping:
                    raise self._stop(step)
            flush()
        finally:
            batches.close()
        return state


@dataclasses.dataclass
class Trial:
    """One trial's outputs and running tallies: its workdir, resolved config, writers and counters."""

    workdir: Path
    cfg: Experiment
    schedule: Callable
    writer: Any
    checkpointer: Any
    diverged: str = ""
    val: dict[str, float] | None = None
    skipped: int = 0
    in_a_row: int = 0
    window: dict[str, float] = dataclasses.field(default_factory=dict)
    window_start: float = 0.0
    elapsed_before: float = 0.0  # seconds the earlier processes of a resumed run took to its checkpoint


class Progress:
    """The progress bar (stderr, when enabled) and the lines that must not break it."""

    def __init__(self, start: int, total: int, enabled: bool, log):
        self.bar = progress_bar(start, total, enabled)
        self.log = log

    def tick(self, step: int) -> None:
        self.bar.update(1)

    def write(self, line: str) -> None:
        if self.bar.disable:
            self.log(line)
        else:
            self.bar.write(line)

    def close(self) -> None:
        self.bar.close()


class MetricsLog:
    """Each step's metrics summed per trial over the finite steps of a window (`accumulate`, every step)
    and written as one `train` record per trial at the log steps (`write`); a non-finite step is
    recorded as `skipped`, and `train.max_nonfinite_steps` of them in a row drop the trial."""

    def __init__(self, steps, trials: list[Trial], *, summarize, tokens_per_step: int, flops_per_token: float,
                 peak_flops: float | None, progress: Progress, started: float,
                 data_wait: Callable[[int], float] = lambda step: 0.0):
        self.steps, self.trials, self.summarize = steps, trials, summarize
        self.tokens_per_step, self.flops, self.peak = tokens_per_step, flops_per_token, peak_flops
        self.progress, self.started, self.data_wait = progress, started, data_wait
        self.waited, self.waited_steps = 0.0, 0  # the loop's wait on data over the current window
        self.finite = [False] * len(trials)
        for trial in trials:
            trial.window_start = started

    def _name(self, trial: Trial) -> str:
        return f"{trial.workdir.name}: " if len(self.trials) > 1 else ""

    def accumulate(self, step: int, host: dict[str, Any]) -> None:
        self.waited += self.data_wait(step)
        self.waited_steps += 1
        for i, trial in enumerate(self.trials):
            if trial.diverged:
                continue
            values = self.steps.trial_metrics(host, i)
            self.finite[i] = not values["nonfinite"]
            if not self.finite[i]:
                trial.skipped += 1
                trial.in_a_row += 1
                trial.writer.write(step, "skipped", {"reason": "non-finite loss or gradient",
                                                     "in_a_row": trial.in_a_row, "total": trial.skipped})
                self.progress.write(f"{self._name(trial)}step {step:>6}  skipped: non-finite loss or "
                                    f"gradient ({trial.in_a_row} in a row)")
                if trial.in_a_row >= trial.cfg.train.max_nonfinite_steps:
                    trial.diverged = (f"training diverged: {trial.in_a_row} non-finite steps in a row, the "
                                      f"last at step {step}; the last checkpoint holds finite parameters")
                    if len(self.trials) > 1:
                        self.progress.write(f"{self._name(trial)}{trial.diverged} (the other trials go on)")
                continue
            trial.in_a_row = 0
            for key, value in values.items():
                trial.window[key] = trial.window.get(key, 0.0) + value
            trial.window["steps"] = trial.window.get("steps", 0) + 1
        if all(trial.diverged for trial in self.trials):
            n = len(self.trials)
            raise Diverged(self.trials[0].diverged if n == 1 else
                           f"all {n} vmapped trials diverged, the last at step {step}")

    def write(self, step: int, host: dict[str, Any]) -> None:
        wrote = False
        for i, trial in enumerate(self.trials):
            if trial.diverged or not self.finite[i]:
                continue  # a skipped step's window goes on to the next log step
            wrote = True
            now = time.perf_counter()
            window, n = trial.window, trial.window["steps"]
            record = self.summarize(window)
            record.update(lr=float(trial.schedule(step - 1)),
                          **{k: window[k] / n for k in ("grad_norm", "update_norm", "param_norm")},
                          skipped_steps=trial.skipped,
                          tokens_per_s=n * self.tokens_per_step / (now - trial.window_start),
                          elapsed_s=trial.elapsed_before + now - self.started,
                          data_wait_s=self.waited / max(1, self.waited_steps))
            record["mfu"] = record["tokens_per_s"] * self.flops / self.peak if self.peak else None
            trial.writer.write(step, "train", record)
            if i == 0:
                self.progress.bar.set_postfix(loss=f"{record['loss']:.4f}",
                                              tok_s=f"{record['tokens_per_s']:,.0f}",
                                              mfu=f"{record['mfu']:.1%}" if self.peak else "?")
            trial.window, trial.window_start = {}, now
        if wrote:
            self.waited, self.waited_steps = 0.0, 0


class Evaluation:
    """Validation metrics of every trial still training: a `val` record each and one line."""

    def __init__(self, steps, trials: list[Trial], batches: list, progress: Progress, started: float):
        self.steps, self.trials, self.batches = steps, trials, batches
        self.progress, self.started = progress, started

    def __call__(self, step: int, state) -> None:
        alive = [(trial, s) for trial, s in zip(self.trials, self.steps.unstack(state), strict=True)
                 if not trial.diverged]
        for trial, trial_state in alive:
            trial.val = self.steps.evaluate(self.steps.eval_params(trial_state), self.batches)
            trial.writer.write(step, "val", {**trial.val, "elapsed_s": trial.elapsed_before
                                             + time.perf_counter() - self.started})
        if len(self.trials) == 1:
            val = self.trials[0].val
            self.progress.write(f"step {step:>6}  val loss {val['loss']:.4f}  perplexity "
                                f"{val['perplexity']:.2f}  accuracy {val['accuracy']:.3f}")
        else:
            self.progress.write(f"step {step:>6}  val loss " + "  ".join(
                f"{trial.workdir.name} {trial.val['loss']:.4f}" for trial, _ in alive))


class Checkpointing:
    """Each trial still training saves its own state (a separate run's layout) and where it stands."""

    def __init__(self, steps, trials: list[Trial]):
        self.steps, self.trials = steps, trials

    def __call__(self, step: int, state) -> None:
        for trial, s in zip(self.trials, self.steps.unstack(state), strict=True):
            if not trial.diverged:
                # The optimizer config the state belongs to: train.reset_optimizer compares against it.
                trial.checkpointer.save(step, {"params": s.params, "opt_state": s.opt_state},
                                        {"step": step, "data_position": step, "seed": trial.cfg.train.seed,
                                         "optim": dataclasses.asdict(trial.cfg.optim)})


class StopOnSignal:
    """SIGTERM/SIGINT (flagged by `StopSignals`) stops the run at the step it is on: `Preempted`."""

    def __init__(self, signals: StopSignals, trainer: Trainer, written: str):
        self.signals, self.trainer, self.written = signals, trainer, written

    def __call__(self, step: int) -> None:
        if self.signals.received:
            name, written = self.signals.name, self.written
            self.trainer.request_stop(lambda at: Preempted(
                f"stopped by {name} at step {at}; {written} written, run the same command again to resume"))
