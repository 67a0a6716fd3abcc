"""Device mesh, shardings and multi-host start: `jax.jit` over a Mesh with `data` and `fsdp` axes.

The global batch is split over both axes (every device gets different rows). Parameters and optimizer
state are sharded along `fsdp` by one rule — the largest dimension divisible by the axis size, else
replicated — and replicated along `data`. With `fsdp` = 1 this is plain data parallelism. Shardings
are derived from `jax.eval_shape` of the initial state, so nothing is allocated whole on one device.
Losses are sums over the global batch normalised once, so any mesh gives the same numbers.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gptjax.config import ConfigError, TrainConfig

BATCH_AXES = ("data", "fsdp")


def initialize_distributed(cfg: TrainConfig) -> None:
    """Join a multi-process job (`train.distributed=true`) before any other JAX call.

    Cloud TPU VMs and SLURM clusters describe the job themselves; elsewhere give
    `train.coordinator_address`, `train.num_processes` and `train.process_id`.
    """
    if not cfg.distributed:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU jobs (tests, laptops)
    kwargs = {}
    if cfg.coordinator_address:
        kwargs = {"coordinator_address": cfg.coordinator_address, "num_processes": cfg.num_processes,
                  "process_id": cfg.process_id}
    jax.distributed.initialize(**kwargs)


def make_mesh(cfg: TrainConfig, batch_size: int, batch_name: str = "data.batch_size") -> Mesh:
    """A (data, fsdp) mesh over the first data·fsdp devices; data = -1 takes every remaining device.

    `batch_size` is what each step splits over the devices (`batch_name` says which setting it is).
    """
    devices = jax.devices()
    if cfg.fsdp > len(devices) or len(devices) % cfg.fsdp and cfg.data_parallel == -1:
        raise ConfigError(f"train.fsdp={cfg.fsdp} does not divide the {len(devices)} visible devices")
    data = len(devices) // cfg.fsdp if cfg.data_parallel == -1 else cfg.data_parallel
    n = data * cfg.fsdp
    if n > len(devices):
        raise ConfigError(f"train.data_parallel × train.fsdp = {data} × {cfg.fsdp} = {n}, but only "
                          f"{len(devices)} devices are visible")
    if batch_size % n:
        raise ConfigError(f"{batch_name} ({batch_size}) must be divisible by the number of devices "
                          f"it is split over ({n} = data {data} × fsdp {cfg.fsdp})")
    # Auto axis types: explicit sharding types make embedding gathers fail (docs/scaling.md).
    auto = jax.sharding.AxisType.Auto
    return jax.make_mesh((data, cfg.fsdp), BATCH_AXES, axis_types=(auto, auto), devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Shard the largest dimension divisible by the fsdp size along `fsdp`; replicate otherwise."""
    if fsdp == 1 or not shape:
        return P()
    candidates = [(size, -axis) for axis, size in enumerate(shape) if size % fsdp == 0]
    if not candidates:
        return P()
    _, negative_axis = max(candidates)
    spec = [None] * len(shape)
    spec[-negative_axis] = "fsdp"
    return P(*spec)


def state_shardings(abstract_state, mesh: Mesh):
    """A sharding for every leaf of the state (parameters and optimizer moments alike) by the rule."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree_util.tree_map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp)), abstract_state)


def put_batch(batch, mesh: Mesh):
    """Host NumPy global batch → global arrays split over (data, fsdp).

    Each process hands over only the rows its own devices hold, so the same call works on one host
    and on every host of a multi-host job (each computes the same deterministic global batch).
    """
    sharding = batch_sharding(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, batch)
