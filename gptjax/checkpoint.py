"""Orbax checkpoints of the train state plus a JSON record of where the run stands.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed
mid-write leaves the previous checkpoint intact. Restores always go against an abstract target
(`jax.eval_shape` of the state) so optax's NamedTuples come back as NamedTuples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


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

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict[str, Any]) -> None:
        """Asynchronous: training continues while the files are written."""
        args = self._ocp.args
        self.manager.save(step, args=args.Composite(state=args.StandardSave(state), meta=args.JsonSave(meta)))

    def restore(self, step: int, abstract_state) -> tuple[Any, dict[str, Any]]:
        args = self._ocp.args
        restored = self.manager.restore(step, args=args.Composite(
            state=args.StandardRestore(abstract_state), meta=args.JsonRestore()))
        return restored.state, restored.meta

    def restore_latest(self, abstract_state, warn=print) -> tuple[Any, dict[str, Any]] | None:
        """The newest checkpoint that restores; None when there is none.

        A checkpoint that fails to restore (truncated or corrupted files) is named in a warning and
        moved aside to `corrupt-<step>` — kept for inspection, never deleted — and the previous one
        is tried.
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return self.restore(step, abstract_state)
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
