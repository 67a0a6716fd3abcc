"""Device mesh, declarative shardings and multi-host start: `jax.jit` over a (data, fsdp, tensor) Mesh.

Every parameter is created with logical axis names, one per dimension (`logical_axes` metadata on its
nnx.Param: "vocab", "embed", "heads", "kv", "mlp", "layers", or None), and the main activations are
constrained with names too ("batch", "length", ...). `RULES` is the one table that maps logical names onto
the mesh axes:

- `data`: the batch is split over it, parameters are replicated along it (plain data parallelism);
- `fsdp`: the batch is split over it too, and parameters and optimizer state are sharded along it on
  their `embed` dimension (ZeRO-3 / FSDP: XLA gathers a weight where a matmul needs it whole);
- `tensor`: Megatron-style tensor parallelism. Attention heads and the MLP hidden width (and the
  vocabulary) are split over it; each device computes its heads and its slice of the hidden layer, and
  XLA adds the reductions after the output projections.

A dimension whose size the mesh axes do not divide is left whole (the byte tokenizer's 258-token
vocabulary on 4 devices); a mesh axis is used at most once per array, by the first dimension that asks
for it. Optimizer state follows the parameter it belongs to. Shardings are derived from `jax.eval_shape`
of the initial state, so nothing is allocated whole on one device. Losses are sums over the global batch
normalised once, so any mesh gives the numbers of one device (up to float summation order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gptjax.config import ConfigError, TrainConfig

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name → the mesh axes it is split over (None: never split). Parameters name their
# dimensions at creation (gptjax/layers.py and the models); docs/sharding.md explains each row.
RULES: dict[str, tuple[str, ...] | None] = {
    "batch": BATCH_AXES,  # activations: rows of the global batch
    "length": None,  # activations: sequence positions (no sequence parallelism)
    "embed": ("fsdp",),  # the model width D: FSDP shards parameters along it
    "vocab": ("tensor",),  # embedding rows and logits: vocabulary-parallel
    "heads": ("tensor",),  # attention heads (and the merged heads × head-width dimension)
    "kv": None,  # the width of one head
    "mlp": ("tensor",),  # the MLP hidden width
    "layers": None,  # the leading axis of scanned layer stacks
}
# The metadata key on each nnx.Param holding its logical names, one per dimension.
AXES_KEY = "logical_axes"


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


def mesh_shape(cfg: TrainConfig, n_devices: int) -> dict[str, int]:
    """{data, fsdp, tensor} sizes for `n_devices` devices; the one size given as -1 takes the rest.

    Pure arithmetic (no device is touched), shared by `make_mesh` and `describe --devices`.
    ConfigError when the sizes do not fit the devices.
    """
    sizes = {"data": cfg.data_parallel, "fsdp": cfg.fsdp, "tensor": cfg.tensor}
    rest = [axis for axis, size in sizes.items() if size == -1]
    fixed = math.prod(size for size in sizes.values() if size != -1)
    given = " × ".join(f"{axis} {size}" for axis, size in sizes.items())
    if rest:
        if n_devices % fixed:
            raise ConfigError(f"mesh {given}: {fixed} does not divide the {n_devices} devices")
        sizes[rest[0]] = n_devices // fixed
    elif fixed > n_devices:
        raise ConfigError(f"mesh {given} needs {fixed} devices, but there are {n_devices}")
    return sizes


def make_mesh(cfg: TrainConfig, batch_size: int, batch_name: str = "data.batch_size") -> Mesh:
    """The (data, fsdp, tensor) mesh over the first data·fsdp·tensor devices (`mesh_shape`).

    `batch_size` is what each step splits over the data and fsdp axes (`batch_name` says which setting it
    is); `tensor` devices share rows. The tensor axis is the innermost, so its devices are neighbours.
    """
    devices = jax.devices()
    sizes = mesh_shape(cfg, len(devices))
    rows = sizes["data"] * sizes["fsdp"]
    if batch_size % rows:
        raise ConfigError(f"{batch_name} ({batch_size}) must be divisible by the number of devices "
                          f"it is split over ({rows} = data {sizes['data']} × fsdp {sizes['fsdp']})")
    # Auto axis types: explicit sharding types make embedding gathers fail (docs/scaling.md).
    auto = jax.sharding.AxisType.Auto
    n = math.prod(sizes.values())
    return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES, axis_types=(auto,) * 3,
                         devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def logical_to_mesh(axes: Sequence[str | None], shape: Sequence[int], sizes: dict[str, int]) -> P:
    """The PartitionSpec of an array of `shape` whose dimensions are named `axes`, on a mesh of `sizes`.

    Each name is looked up in `RULES`; mesh axes of size 1, axes an earlier dimension already took, and
    axes whose product would not divide the dimension are dropped, so the spec is always valid.
    """
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {tuple(axes)} do not match an array of shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, size in zip(axes, shape, strict=True):
        if name is not None and name not in RULES:
            raise ValueError(f"unknown logical axis {name!r}; known: {', '.join(RULES)}")
        chosen: list[str] = []
        for axis in (RULES[name] or ()) if name else ():
            split = math.prod(sizes[a] for a in chosen) * sizes.get(axis, 1)
            if axis not in used and sizes.get(axis, 1) > 1 and size % split == 0:
                chosen.append(axis)
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _flat(tree) -> dict[tuple[str, ...], object]:
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, P))[0]
    return {tuple(_key_name(k) for k in path): leaf for path, leaf in leaves}


def state_specs(abstract_state, axes, sizes: dict[str, int]):
    """A PartitionSpec for every leaf of `abstract_state` (a TrainState, parameters or optimizer state).

    `axes` is the parameters' logical names (`gptjax.models.param_axes`: the pure params dict with a
    PartitionSpec of names per leaf). A leaf belongs to the parameter whose path ends its own path (Adam's
    moments sit under `mu`/`nu` with the parameters' keys) and takes its names when it has as many
    dimensions, or one more in front (a stacked group of vmapped trials, whose trial axis stays whole);
    factored statistics (Adafactor's row and column vectors), counts and anything else are small and
    replicated.
    """
    params = _flat(axes)
    depth = max(len(path) for path in params)

    def spec(path, x) -> P:
        names = tuple(_key_name(k) for k in path)
        for n in range(min(depth, len(names)), 0, -1):
            logical = params.get(names[-n:])
            if logical is None:
                continue
            if len(x.shape) in (len(logical), len(logical) + 1):
                leading = (None,) * (len(x.shape) - len(logical))
                return logical_to_mesh((*leading, *logical), x.shape, sizes)
            return P()
        return P()

    return jax.tree_util.tree_map_with_path(spec, abstract_state)


def state_shardings(abstract_state, mesh: Mesh, axes):
    """`state_specs` as NamedShardings on `mesh`: what `jax.jit` takes as in/out shardings."""
    sizes = dict(mesh.shape)
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), state_specs(abstract_state, axes, sizes),
                                  is_leaf=lambda x: isinstance(x, P))


def per_device_bytes(abstract_tree, specs, sizes: dict[str, int]) -> int:
    """Bytes one device holds of `abstract_tree` laid out by `specs` (a tree of PartitionSpecs)."""
    def shard_bytes(x, spec) -> int:
        split = 1
        for entry in spec:
            for axis in (entry,) if isinstance(entry, str) else (entry or ()):
                split *= sizes[axis]
        return x.size * x.dtype.itemsize // split

    return sum(shard_bytes(x, s) for x, s in zip(jax.tree_util.tree_leaves(abstract_tree),
                                                  jax.tree_util.tree_leaves(
                                                      specs, is_leaf=lambda x: isinstance(x, P)),
                                                  strict=True))


# The mesh activations are constrained on while a step is traced (`constrained_on`); none outside.
_ACTIVATION_MESH: list[Mesh] = []


def constrained_on(mesh: Mesh, fn):
    """`fn` whose activation constraints (`constrain`) apply on `mesh` while it is traced; wrap a step
    with it before `jax.jit`. Called outside such a wrapper (generation, tests), `constrain` does nothing."""
    def traced(*args, **kwargs):
        _ACTIVATION_MESH.append(mesh)
        try:
            return fn(*args, **kwargs)
        finally:
            _ACTIVATION_MESH.pop()

    return traced


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """`x` with a sharding constraint from its logical `axes` on the mesh of the step being traced.

    Anchors the layout where propagation alone could choose badly: rows over data and fsdp, heads and the
    MLP hidden width over tensor. A no-op outside `constrained_on` and on one device.
    """
    if not _ACTIVATION_MESH or _ACTIVATION_MESH[-1].size == 1:
        return x
    mesh = _ACTIVATION_MESH[-1]
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_mesh(axes, x.shape,
                                                                                   dict(mesh.shape))))


def put_batch(batch, mesh: Mesh):
    """Host NumPy global batch → global arrays split over (data, fsdp), replicated over tensor.

    Each process hands over only the rows its own devices hold, so the same call works on one host
    and on every host of a multi-host job (each computes the same deterministic global batch).
    """
    sharding = batch_sharding(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, batch)
