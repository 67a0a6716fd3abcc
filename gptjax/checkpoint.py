"""Orbax checkpoints: parameters, optimizer state (optional) and a JSON record of where the run stands.

Each step is saved as separate items, `params`, `opt_state` and `meta` ({"step", "data_position",
"seed", …}), so parameters restore without the optimizer that trained them (`restore_params`: sample,
eval, a KL teacher, `train.init_from`, export; only a rule that evaluates an average of its iterates,
Schedule-Free, reads its optimizer state there) and a checkpoint may hold parameters only (`import-hf`
writes one at step 0; the first `train` in that workdir creates the optimizer state). Orbax writes each step
into a temporary directory and renames it when complete, so a run killed mid-write leaves the previous
checkpoint intact. Restores always go against an abstract target (`jax.eval_shape` of the tree), so
optax's NamedTuples come back as NamedTuples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ITEMS = ("params", "opt_state")


def checkpoint_steps(workdir: Path) -> list[int]:
    """The steps saved under `workdir/checkpoints`, ascending (orbax names each step's directory by its
    number); read from the directory names, so a caller that has not imported JAX need not."""
    directory = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def checkpoint_step(workdir: Path) -> int:
    """The newest checkpointed step of `workdir`, 0 when none."""
    return max(checkpoint_steps(workdir), default=0)


class Checkpointer:
    def __init__(self, directory: Path, keep: int):
        import orbax.checkpoint as ocp  # here, not at the top: `checkpoint_step` must stay JAX-free

        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, items: dict[str, Any], meta: dict[str, Any]) -> None:
        """Save the pytrees `items` (names from `ITEMS`) and `meta`; asynchronous, so training continues
        while the files are written."""
        args = self._ocp.args
        self.manager.save(step, args=args.Composite(**{k: args.StandardSave(v) for k, v in items.items()},
                                                     meta=args.JsonSave(meta)))

    def restore(self, step: int, abstract: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The items of `abstract` that step `step` holds (a parameters-only checkpoint has no
        `opt_state`), restored against those abstract trees, and its meta record."""
        args = self._ocp.args
        present = {k: v for k, v in abstract.items() if (self.directory / str(step) / k).is_dir()}
        restored = self.manager.restore(step, args=args.Composite(
            **{k: args.StandardRestore(v) for k, v in present.items()}, meta=args.JsonRestore()))
        return {k: restored[k] for k in present}, restored.meta

    def restore_latest(self, abstract: dict[str, Any], warn=print
                       ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """`restore` of the newest checkpoint that restores; None when there is none.

        A checkpoint that fails to restore (truncated or corrupted files, no parameters) is named in a
        warning and moved aside to `corrupt-<step>` — kept for inspection, never deleted — and the
        previous one is tried.
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                items, meta = self.restore(step, abstract)
                if "params" not in items:
                    raise FileNotFoundError("no params item")
                return items, meta
            except Exception as e:  # orbax/tensorstore raise many types for damaged files
                step_dir = self.directory / str(step)
                aside = self.directory / f"corrupt-{step}"
                warn(f"warning: checkpoint {step_dir} is unreadable ({type(e).__name__}); moved to "
                     f"{aside.name}, trying the previous one")
                step_dir.rename(aside)
                self.manager.reload()
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_params(workdir: Path) -> tuple[Any, Any, Any]:
    """(config, graphdef, params) of a workdir's latest checkpoint, for any family, from shapes alone: no
    data, no tokenizer, no mesh. The params are those to evaluate, sample from and export: the trained ones,
    or for a rule that evaluates an average (Schedule-Free's x) that average, from the optimizer state."""
    import jax

    from gptjax.config import ConfigError, from_dict
    from gptjax.models import abstract_params
    from gptjax.optimizers import RULES, build_optimizer
    from gptjax.optimizers_modern import eval_params

    workdir = Path(workdir)
    if not (workdir / "config.json").is_file():
        raise ConfigError(f"{workdir} is not a gptjax workdir (no config.json)")
    cfg = from_dict(json.loads((workdir / "config.json").read_text()))
    graphdef, abstract = abstract_params(cfg.model)
    items = {"params": abstract}
    if RULES[cfg.optim.rule].AVERAGED:
        items["opt_state"] = jax.eval_shape(build_optimizer(cfg.optim, cfg.train.steps).init, abstract)
    checkpointer = Checkpointer(workdir / "checkpoints", cfg.train.keep_checkpoints)
    restored = checkpointer.restore_latest(items)
    checkpointer.close()
    if restored is None:
        raise ConfigError(f"{workdir} has no checkpoint yet")
    params = restored[0]["params"]
    if "opt_state" in restored[0]:  # a parameters-only checkpoint (import-hf) has none: y = x at the start
        params = eval_params(restored[0]["opt_state"], params)
    return cfg, graphdef, params
