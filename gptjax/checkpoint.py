"""Orbax checkpoints: parameters, optimizer state (optional) and a JSON record of where the run stands,
each step sealed by a SHA-256 manifest of its files.

Each step is saved as separate items, `params`, `opt_state` and `meta` ({"step", "data_position",
"seed", …}), so parameters restore without the optimizer that trained them (`restore_params`: sample,
eval, a KL teacher, `train.init_from`, export; only a rule that evaluates an average of its iterates,
Schedule-Free, reads its optimizer state there) and a checkpoint may hold parameters only (`import-hf`
writes one at step 0; the first `train` in that workdir creates the optimizer state). Orbax writes each step
into a temporary directory and renames it when complete, so a run killed mid-write leaves the previous
checkpoint intact; the writer hashes the finished files into `sha256.json` inside that temporary
directory just before the rename, so every complete step carries its manifest, and every restore checks
it first: a flipped byte that orbax would read without complaint is caught. Restores always go against
an abstract target (`jax.eval_shape` of the tree), so optax's NamedTuples come back as NamedTuples.

Only the process that holds the workdir's lock (a `Checkpointer(writer=True)`, i.e. `train`) writes,
moves a damaged checkpoint aside or lets orbax delete old ones; readers (`restore_params`: sample, eval,
init_from, a teacher, export) never change the directory and report on stderr.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import sys
from typing import Any

from gptjax import storage
from gptjax.config import ConfigError
from gptjax.storage import PathLike

ITEMS = ("params", "opt_state")
MANIFEST = "sha256.json"
# Written by orbax at the step's top level after the manifest (the commit record and its timestamp),
# so they cannot be in it; they hold no array data.
UNHASHED = (MANIFEST, "commit_success.txt", "_CHECKPOINT_METADATA")
TMP_MARK = ".orbax-checkpoint-tmp"


class StateMismatchError(ConfigError):
    """A checkpoint that is intact but holds a state of another structure than the one asked for (another
    optimizer, another model): a config change, not damage, so nothing is moved."""


def checkpoint_steps(workdir: PathLike) -> list[int]:
    """The steps saved under `workdir/checkpoints`, ascending (orbax names each step's directory by its
    number); read from the directory names, so a caller that has not imported JAX need not."""
    directory = storage.path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def checkpoint_step(workdir: PathLike) -> int:
    """The newest checkpointed step of `workdir`, 0 when none."""
    return max(checkpoint_steps(workdir), default=0)


def _files(step_dir: storage.epath.Path) -> list[storage.epath.Path]:
    return [p for p in storage.files_under(step_dir) if not (p.parent == step_dir and p.name in UNHASHED)]


def _sha256(path: storage.epath.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:  # in blocks, which any file object (a bucket's too) supports
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(step_dir: storage.epath.Path, items: tuple[str, ...] | None = None) -> dict[str, str]:
    """{path relative to `step_dir`: SHA-256} of a checkpoint step's files, or of those of `items` alone
    (hashlib releases the GIL, so a large checkpoint's files are hashed on several threads)."""
    files = [p for p in _files(step_dir) if items is None or p.relative_to(step_dir).parts[0] in items]
    with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1, len(files)))) as pool:
        digests = list(pool.map(_sha256, files))
    return {str(p.relative_to(step_dir)): d for p, d in zip(files, digests, strict=True)}


def write_manifest(step_dir: storage.epath.Path) -> None:
    """Hash the step's files into `step_dir/sha256.json` (written whole, then renamed into place)."""
    storage.write_atomic(step_dir / MANIFEST,
                         json.dumps({"sha256": file_hashes(step_dir)}, indent=0, sort_keys=True) + "\n")


def verify(step_dir: storage.epath.Path, items: tuple[str, ...] | None = None) -> str | None:
    """What is wrong with a step's files (or those of `items`: a reader of parameters need not hash the
    optimizer state) against its manifest ("" when nothing), or None when the step has no manifest
    (written before checksums existed). Raises FileNotFoundError if the step vanishes."""
    path = step_dir / MANIFEST
    if not path.is_file():
        if not step_dir.is_dir():
            raise FileNotFoundError(step_dir)
        return None
    try:
        expected = json.loads(path.read_text())["sha256"]
        assert isinstance(expected, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        return f"its {MANIFEST} is damaged"
    if items is not None:
        expected = {name: digest for name, digest in expected.items() if name.split("/")[0] in items}
    actual = file_hashes(step_dir, items)
    missing = sorted(set(expected) - set(actual))
    if missing:
        return f"{missing[0]} is missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    changed = sorted(name for name, digest in expected.items() if actual[name] != digest)
    if changed:
        return (f"{changed[0]} does not match its checksum"
                + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""))
    return ""


def _structure_difference(step_dir: storage.epath.Path, item: str, abstract: Any) -> str:
    """How the tree saved as `item` differs from `abstract` in paths or shapes ("" when it does not);
    read from orbax's metadata, so nothing is restored. Raises when the metadata is unreadable."""
    import jax
    import orbax.checkpoint as ocp

    def flat(tree):
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {"/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path):
                tuple(leaf.shape) for path, leaf in leaves}

    saved = flat(ocp.StandardCheckpointHandler().metadata(step_dir / item))
    wanted = flat(abstract)
    if set(saved) != set(wanted):
        extra, absent = sorted(set(saved) - set(wanted)), sorted(set(wanted) - set(saved))
        what = (f"has {extra[0]!r}, which this config's state has not" if extra
                else f"lacks {absent[0]!r}, which this config's state has")
        return f"its {item} ({len(saved)} arrays) {what} ({len(wanted)} arrays)"
    for name in sorted(wanted):
        if saved[name] != wanted[name]:
            return f"its {item} {name!r} has shape {saved[name]}, this config's {wanted[name]}"
    return ""


def _from_orbax(unraisable) -> bool:
    """Whether an unraisable error is the debris of an orbax read that failed: "Event loop is closed"
    posted by tensorstore's threads to the asyncio loop orbax closed, or a read coroutine of orbax's
    closed with its error still pending."""
    error, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return True
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _quiet_failed_reads() -> None:
    """Drop the ignored-exception tracebacks a failed orbax read leaves behind (`_from_orbax`); they
    would print after the warning that already says what failed. Every other one goes to the hook
    that was there before. Installed when a Checkpointer is made."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_orbax_debris", False):
        return

    def hook(unraisable) -> None:
        if not _from_orbax(unraisable):
            previous(unraisable)

    hook.drops_orbax_debris = True
    sys.unraisablehook = hook


class Checkpointer:
    def __init__(self, directory: PathLike, keep: int, *, writer: bool = True, warn=None):
        """`writer`: this process holds the workdir's lock (creates the directory, saves, hashes, deletes
        beyond `keep`, moves damaged checkpoints aside); a reader changes nothing. `warn` receives the
        one-line warnings of `restore_latest` (default: stderr)."""
        import jax
        import orbax.checkpoint as ocp  # here, not at the top: `checkpoint_step` must stay JAX-free

        self._ocp = ocp
        _quiet_failed_reads()
        self.writer = writer
        self.warn = warn or (lambda message: print(message, file=sys.stderr))
        directory = storage.path(directory)  # a gs:// directory is written through tensorstore
        self.directory = directory if storage.is_remote(directory) else directory.absolute()
        self._saving: int | None = None
        self.manager = None
        self.lead = jax.process_index() == 0  # the process that holds the lock in a multi-host job
        if writer:  # a reader has no manager: orbax's would list (and stat) steps a live run is deleting
            seal = ocp.AsyncOptions(post_finalization_callback=self._seal) if self.lead else None
            options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, async_options=seal)
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    def _seal(self) -> None:
        """Orbax calls this once a step's files are complete, before renaming its temporary directory:
        the manifest goes in, so the step appears with it."""
        step = self._saving
        candidates = sorted(self.directory.glob(f"{step}{TMP_MARK}*"))
        step_dir = candidates[-1] if candidates else self.directory / str(step)
        if step_dir.is_dir():
            write_manifest(step_dir)

    def save(self, step: int, items: dict[str, Any], meta: dict[str, Any]) -> None:
        """Save the pytrees `items` (names from `ITEMS`) and `meta`; asynchronous, so training continues
        while the files are written and hashed."""
        if not self.writer:
            raise RuntimeError("a reader's Checkpointer does not save")
        args = self._ocp.args
        self.manager.wait_until_finished()  # orbax would wait too; `_seal` must know which step it seals
        self._saving = step
        self.manager.save(step, args=args.Composite(**{k: args.StandardSave(v) for k, v in items.items()},
                                                     meta=args.JsonSave(meta)))

    def restore(self, step: int, abstract: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The items of `abstract` that step `step` holds (a parameters-only checkpoint has no
        `opt_state`), restored against those abstract trees, and its meta record; unverified."""
        ocp, args = self._ocp, self._ocp.args
        step_dir = self.directory / str(step)
        present = {k: v for k, v in abstract.items() if (step_dir / k).is_dir()}
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            restored = checkpointer.restore(step_dir, args=args.Composite(
                **{k: args.StandardRestore(v) for k, v in present.items()}, meta=args.JsonRestore()))
        return {k: restored[k] for k in present}, restored.meta

    def _check(self, step: int, abstract: dict[str, Any]) -> str:
        """Why step `step` cannot be used ("" when it can): damage found by the manifest, or missing
        parameters. Raises `StateMismatchError` for an intact step whose trees differ from `abstract`."""
        step_dir = self.directory / str(step)
        problem = verify(step_dir, (*abstract, "meta"))
        if problem:
            return problem
        if not (step_dir / "params").is_dir():
            return "it holds no params"
        for item, tree in abstract.items():
            if not (step_dir / item).is_dir():
                continue
            try:
                difference = _structure_difference(step_dir, item, tree)
            except FileNotFoundError:
                raise
            except Exception as e:  # orbax's metadata reader raises many types for damaged files
                return f"its {item} metadata is unreadable ({type(e).__name__})"
            if difference:
                hint = ("add train.reset_optimizer=true to keep its parameters and start a fresh optimizer "
                        "state" if item == "opt_state" else "use another --workdir")
                raise StateMismatchError(f"checkpoint {step_dir} is intact but {difference}: the config "
                                         f"changed since it was written; {hint}")
        return ""

    def restore_latest(self, abstract: dict[str, Any], warn=None
                       ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """`restore` of the newest checkpoint that verifies and restores; None when there is none.

        Each step is first checked against its manifest and its saved structure. An intact step of
        another structure raises `StateMismatchError` and nothing is moved. A damaged one is named in a
        warning and passed over for the previous one; the writer also moves it aside to
        `corrupt-<step>` (kept for inspection, never deleted). A reader whose step disappears while it
        reads (the trainer rotating `keep_checkpoints`) just reads the steps again.
        """
        warn = warn or self.warn
        skipped: set[int] = set()
        for _ in range(1000):  # a live run with keep_checkpoints=1 replaces the newest under a reader
            steps = [s for s in self._steps() if s not in skipped]
            if not steps:
                return None
            step = steps[-1]
            step_dir = self.directory / str(step)
            try:
                problem = self._check(step, abstract)
                if not problem:
                    try:
                        return self.restore(step, abstract)
                    except Exception as e:  # orbax/tensorstore raise many types for damaged files
                        problem = f"{type(e).__name__} while restoring"
            except FileNotFoundError:
                problem = "a file is missing"
            if not self.writer and (not step_dir.is_dir() or max(self._steps(), default=-1) > step):
                continue  # the run holding the workdir deleted it as it saved a newer one: read that
            skipped.add(step)
            if self.writer and self.lead and step_dir.is_dir():  # in a multi-host job, process 0 moves it
                aside = self.directory / f"corrupt-{step}"
                step_dir.rename(aside)
                self.manager.reload()
                warn(f"warning: checkpoint {step_dir} is unreadable ({problem}); moved to {aside.name}, "
                     f"trying the previous one")
            else:
                warn(f"warning: checkpoint {step_dir} is unreadable ({problem}); using the previous one")
        raise ConfigError(f"{self.directory}: the newest checkpoint kept being replaced while it was read; "
                          "try again")

    def _steps(self) -> list[int]:
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit()) \
            if self.directory.is_dir() else []

    def close(self) -> None:
        if self.manager is not None:
            self.manager.wait_until_finished()
            self.manager.close()


def restore_params(workdir: PathLike) -> tuple[Any, Any, Any]:
    """(config, graphdef, params) of a workdir's latest readable checkpoint, for any family, from shapes
    alone: no data, no tokenizer, no mesh. The params are those to evaluate, sample from and export: the
    trained ones, or for a rule that evaluates an average (Schedule-Free's x) that average, from the
    optimizer state. Reads only: nothing in `workdir` changes, and a damaged newest checkpoint is reported
    on stderr and the previous one used."""
    import jax

    from gptjax.models import abstract_params
    from gptjax.optimizers import RULES, build_optimizer
    from gptjax.optimizers_modern import eval_params
    from gptjax.workdir import read_config

    workdir = storage.path(workdir)
    cfg = read_config(workdir)
    if not checkpoint_steps(workdir):
        raise ConfigError(f"{workdir} has no checkpoint yet")
    graphdef, abstract = abstract_params(cfg.model)
    items = {"params": abstract}
    if RULES[cfg.optim.rule].AVERAGED:
        items["opt_state"] = jax.eval_shape(build_optimizer(cfg.optim, cfg.train.steps).init, abstract)
    checkpointer = Checkpointer(workdir / "checkpoints", cfg.train.keep_checkpoints, writer=False)
    try:
        restored = checkpointer.restore_latest(items)
    finally:
        checkpointer.close()
    if restored is None:
        raise ConfigError(f"{workdir} has no readable checkpoint")
    params = restored[0]["params"]
    if "opt_state" in restored[0]:  # a parameters-only checkpoint (import-hf) has none: y = x at the start
        params = eval_params(restored[0]["opt_state"], params)
    return cfg, graphdef, params
