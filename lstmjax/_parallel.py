"""Data parallelism with JAX's own sharding: a one-axis device mesh, the batch split along it.

The train step does not change: `jax.jit` compiles it for the shardings of its inputs (GSPMD),
so with the parameters replicated and the batch split over the devices, each device computes
the loss and gradient of its slice and XLA inserts the all-reduce that sums them. The same code
runs on one device or N:

    mesh = lj.data_parallel_mesh()                    # every device, one axis named "batch"
    state = lj.replicate(state, mesh)                 # parameters, optimizer state, step, key
    batch = lj.shard_batch(batch, mesh)               # lj.Batch: xs (T, B, F) split on B, targets (B,)
    state, metrics = train_step(state, batch)         # jitted once; metrics are replicated

`lj.fit(..., mesh=mesh)` does the two placements for you. lstmjax is time-major: the batch axis
of `xs` is axis 1 (`(T, B, F)`), of `targets` axis 0; `shard_batch` takes `batch_axes` to say so
for other batch layouts. The batch size must be a multiple of the number of devices.

Several hosts (multi-controller JAX). Every process runs the same script and first calls

    jax.distributed.initialize()                      # on TPU pods, SLURM, Open MPI: found automatically
    # elsewhere: jax.distributed.initialize(coordinator_address="10.0.0.1:1234",
    #                                       num_processes=2, process_id=int(os.environ["RANK"]))

before any other JAX call. `jax.devices()` then lists the devices of all processes, so
`data_parallel_mesh()` spans them all. `shard_batch` builds each global array from a batch that
must be the same on every process: with a data source that is a pure function of
`(key, step)` (as `lj.fit` expects) it is, and each process keeps only its own devices' slices.
(To load different data on each host instead, build the global arrays with
`jax.make_array_from_process_local_data`.) Checkpoints go to a file system that every process
sees; every process calls save and restore (Orbax coordinates them), and `lj.fit` shows its
progress bar on process 0 only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lstmjax._tasks import Batch

BATCH_AXIS_NAME = "batch"
"""The name of the data-parallel mesh axis."""

TIME_MAJOR_BATCH_AXES = Batch(xs=1, targets=0)
"""Where the batch axis is in an `lj.Batch`: `xs` is `(T, B, F)`, `targets` is `(B,)`."""


def data_parallel_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = BATCH_AXIS_NAME) -> Mesh:
    """A one-dimensional device mesh for data parallelism.

    Args:
        devices: the devices to use; default `jax.devices()` (all devices of all processes).
        axis_name: the mesh axis name that the batch is split along.

    Returns:
        `jax.sharding.Mesh` of shape `(len(devices),)` with axis `axis_name`.
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must name at least one device, got an empty sequence")
    return Mesh(np.asarray(devices, dtype=object), (axis_name,))


def _mesh_axis(mesh: Mesh, axis_name: str | None) -> str:
    if axis_name is None:
        if len(mesh.axis_names) != 1:
            raise ValueError(f"mesh has axes {mesh.axis_names}; pass axis_name to say which one splits the batch")
        return mesh.axis_names[0]
    if axis_name not in mesh.axis_names:
        raise ValueError(f"axis_name {axis_name!r} is not an axis of the mesh, which has {mesh.axis_names}")
    return axis_name


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of `tree` on every device of `mesh` (a fully replicated `NamedSharding`)."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def batch_sharding(batch: Any, mesh: Mesh, batch_axes: Any = None, axis_name: str | None = None) -> Any:
    """The `NamedSharding` of each leaf of `batch` that splits its batch axis over `mesh`.

    Args:
        batch: a pytree of arrays (only shapes are read).
        mesh: the device mesh, e.g. from `data_parallel_mesh()`.
        batch_axes: the index of the batch axis: an int for every leaf, or a pytree prefix of
            `batch` with an int (or `None`: replicate that leaf) per subtree. Default: for an
            `lj.Batch`, `TIME_MAJOR_BATCH_AXES` (`xs` axis 1, `targets` axis 0); otherwise required.
        axis_name: the mesh axis to split along; default the mesh's only axis.

    Returns:
        A pytree of `NamedSharding` with the structure of `batch`.

    Raises:
        ValueError: naming the leaf, if its batch axis does not exist or its size is not a
            multiple of the number of devices along `axis_name`.
    """
    axis_name = _mesh_axis(mesh, axis_name)
    if batch_axes is None:
        if not isinstance(batch, Batch):
            raise ValueError(
                f"batch_axes is required for a batch of type {type(batch).__name__} (the default covers "
                "lj.Batch only); pass e.g. batch_axes=1 for time-major arrays (T, B, ...)"
            )
        batch_axes = TIME_MAJOR_BATCH_AXES
    num_devices = mesh.shape[axis_name]

    def leaf_sharding(path, x, axis):
        if axis is None:
            return NamedSharding(mesh, PartitionSpec())
        shape = np.shape(x)
        name = "batch" + jax.tree_util.keystr(path)
        if isinstance(axis, bool) or not isinstance(axis, int | np.integer) or not -len(shape) <= axis < len(shape):
            raise ValueError(f"{name}: batch axis {axis!r} does not exist in an array of shape {shape}")
        axis = int(axis) % len(shape)
        if shape[axis] % num_devices:
            raise ValueError(
                f"{name}: batch axis {axis} has size {shape[axis]}, which is not a multiple of the "
                f"{num_devices} devices of mesh axis {axis_name!r}; expected a batch size divisible by {num_devices}"
            )
        spec = [None] * len(shape)
        spec[axis] = axis_name
        return NamedSharding(mesh, PartitionSpec(*spec))

    is_none = lambda a: a is None  # noqa: E731
    axes_with_paths, axes_def = jax.tree_util.tree_flatten_with_path(batch_axes, is_leaf=is_none)
    try:
        subtrees = axes_def.flatten_up_to(batch)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"batch_axes must be an int or a pytree prefix of the batch; got {batch_axes!r} for a batch "
            f"with structure {jax.tree_util.tree_structure(batch)}"
        ) from error
    shardings = [
        jax.tree_util.tree_map_with_path(lambda sub_path, x, p=path, a=axis: leaf_sharding(p + sub_path, x, a), subtree)
        for (path, axis), subtree in zip(axes_with_paths, subtrees, strict=True)
    ]
    return axes_def.unflatten(shardings)


def shard_batch(batch: Any, mesh: Mesh, batch_axes: Any = None, axis_name: str | None = None) -> Any:
    """Splits `batch` along its batch axis over the devices of `mesh`.

    Every process must pass the same (global) `batch`; see the module docstring for several hosts.

    Args:
        batch: a pytree of arrays; for an `lj.Batch`, `xs: (T, B, F)` and `targets: (B,)`.
        mesh: the device mesh, e.g. from `data_parallel_mesh()`.
        batch_axes: see `batch_sharding` (default: `lj.Batch`'s time-major layout).
        axis_name: the mesh axis to split along; default the mesh's only axis.

    Returns:
        `batch` with each leaf a global `jax.Array` sharded along its batch axis.
    """
    return jax.device_put(batch, batch_sharding(batch, mesh, batch_axes, axis_name))
