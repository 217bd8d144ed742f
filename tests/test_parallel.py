"""Data parallelism: the batch is split over the devices of a mesh, the state replicated, and
training on 4 (simulated CPU) devices gives the losses of training on one, to float tolerance.

XLA_FLAGS=--xla_force_host_platform_device_count=4 only takes effect before JAX initialises,
so the multi-device run happens in a subprocess."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

import lstmjax as lj
from lstmjax._fit import batches_from_key, fit
from lstmjax._parallel import (
    TIME_MAJOR_BATCH_AXES,
    batch_sharding,
    data_parallel_mesh,
    replicate,
    shard_batch,
)

FOUR_DEVICES_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    import lstmjax as lj
    from jax.sharding import PartitionSpec
    from lstmjax._fit import batches_from_key, fit
    from lstmjax._parallel import data_parallel_mesh, shard_batch

    directory = sys.argv[1]
    cell = lj.lstm(4)
    optimizer = optax.adam(1e-2)
    traces = []

    def mse(params, batch):
        _, ys = lj.unroll(cell, params["cell"], batch.xs)
        return jnp.mean((ys[-1] @ params["readout"] - batch.targets) ** 2)

    def loss_fn(params, batch, key):
        traces.append(1)  # counts traces of the train step
        return mse(params, batch)

    train_step = jax.jit(lj.make_train_step(loss_fn, optimizer))

    @jax.jit
    def initial_state():
        key_cell, key_readout = jax.random.split(jax.random.PRNGKey(0))
        params = {"cell": cell.init(key_cell, 2), "readout": jax.random.normal(key_readout, (4,)) * 0.1}
        return lj.init_train_state(params, optimizer, jax.random.PRNGKey(1))

    state = initial_state()
    batch_fn = batches_from_key(lambda key: lj.adding_problem(key, 8, 6), jax.random.PRNGKey(2))

    mesh = data_parallel_mesh()
    batch = shard_batch(batch_fn(0), mesh)
    single_history, single_state = fit(train_step, state, batch_fn, 8)
    traces.clear()
    history, sharded_state = fit(train_step, state, batch_fn, 8, mesh=mesh)
    sharded_traces = len(traces)
    # Interrupted after 5 steps and resumed, on the mesh: the same as the uninterrupted sharded run.
    fit(train_step, state, batch_fn, 5, mesh=mesh, checkpoint_dir=directory)
    resumed_history, resumed_state = fit(train_step, state, batch_fn, 8, mesh=mesh,
                                         checkpoint_dir=directory)
    try:
        shard_batch(lj.adding_problem(jax.random.PRNGKey(0), 6, 6), mesh)
        divisibility_error = ""
    except ValueError as error:
        divisibility_error = str(error)
    leaves = lambda tree: [np.asarray(jax.random.key_data(x) if x.dtype == jax.dtypes.prng_key else x).tolist()
                           for x in jax.tree_util.tree_leaves(tree)]
    print(json.dumps({
        "num_devices": jax.device_count(),
        "xs_spec": str(batch.xs.sharding.spec), "targets_spec": str(batch.targets.sharding.spec),
        "xs_shard_shapes": sorted({tuple(s.data.shape) for s in batch.xs.addressable_shards}),
        "xs_shard_devices": len({s.device for s in batch.xs.addressable_shards}),
        "state_replicated": all(x.sharding.is_fully_replicated and len(x.sharding.device_set) == 4
                                for x in jax.tree_util.tree_leaves(sharded_state)),
        "sharded_traces": sharded_traces, "traces_after_resume": len(traces),
        "single_loss": single_history["loss"].tolist(), "sharded_loss": history["loss"].tolist(),
        "resumed_loss": resumed_history["loss"].tolist(),
        "single_state": leaves(single_state), "sharded_state": leaves(sharded_state),
        "resumed_state": leaves(resumed_state),
        "divisibility_error": divisibility_error,
    }))
    """
)


def test_four_devices_split_the_batch_and_give_the_losses_of_one(tmp_path):
    """One subprocess (so that one JAX process compiles it all), several claims."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICES_SCRIPT, str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads(result.stdout.strip().splitlines()[-1])

    # The batch axis is split over 4 devices (time-major: xs (T, B, F), B split) and the state replicated.
    assert run["num_devices"] == 4
    assert run["xs_spec"] == str(PartitionSpec(None, "batch", None))
    assert run["targets_spec"] == str(PartitionSpec("batch"))
    assert run["xs_shard_shapes"] == [[6, 2, 2]] and run["xs_shard_devices"] == 4
    assert run["state_replicated"]
    assert "not a multiple of the 4 devices" in run["divisibility_error"]
    # Four devices give the losses and parameters of one, to float tolerance.
    np.testing.assert_allclose(run["sharded_loss"], run["single_loss"], rtol=1e-5, atol=1e-7)
    for sharded, single in zip(run["sharded_state"], run["single_state"], strict=True):
        np.testing.assert_allclose(sharded, single, rtol=1e-4, atol=1e-6)
    # The sharded step compiles once, also after a restore, and resuming on the mesh is exact.
    assert run["sharded_traces"] == 1 and run["traces_after_resume"] == 1
    assert run["resumed_loss"] == run["sharded_loss"]
    assert run["resumed_state"] == run["sharded_state"]


def test_the_same_code_on_a_one_device_mesh_gives_the_unsharded_result():
    optimizer = optax.sgd(0.1)

    def loss_fn(w, batch, key):  # a linear read-out of the last step: compiles fast
        return jnp.mean((batch.xs[-1] @ w - batch.targets) ** 2)

    train_step = jax.jit(lj.make_train_step(loss_fn, optimizer))
    state = lj.init_train_state(jnp.zeros(2), optimizer, jax.random.PRNGKey(1))
    batch_fn = batches_from_key(lambda key: lj.adding_problem(key, 4, 5), jax.random.PRNGKey(2))
    history, final = fit(train_step, state, batch_fn, 4)
    mesh_history, mesh_final = fit(train_step, state, batch_fn, 4, mesh=data_parallel_mesh())
    assert mesh_final.params.sharding.mesh.shape == {"batch": 1}
    np.testing.assert_allclose(mesh_history["loss"], history["loss"], rtol=1e-6)
    np.testing.assert_allclose(mesh_final.params, final.params, rtol=1e-6)


def test_mesh_and_placement_helpers():
    mesh = data_parallel_mesh()
    assert mesh.axis_names == ("batch",) and mesh.shape["batch"] == jax.device_count()
    batch = lj.adding_problem(jax.random.PRNGKey(0), 4, 5)
    sharded = shard_batch(batch, mesh)
    assert isinstance(sharded, lj.Batch)
    assert sharded.xs.sharding.spec == PartitionSpec(None, "batch", None)
    np.testing.assert_array_equal(sharded.xs, batch.xs)
    assert batch_sharding(batch, mesh) == batch_sharding(batch, mesh, TIME_MAJOR_BATCH_AXES)
    batch_major = {"inputs": jnp.zeros((4, 5, 2)), "labels": jnp.zeros((4,), jnp.int32)}
    assert shard_batch(batch_major, mesh, batch_axes=0)["inputs"].sharding.spec == PartitionSpec("batch", None, None)
    partly = shard_batch(batch_major, mesh, batch_axes={"inputs": 0, "labels": None})
    assert partly["labels"].sharding.spec == PartitionSpec()
    replicated = replicate({"w": jnp.ones(3)}, mesh)
    assert replicated["w"].sharding.is_fully_replicated


@pytest.mark.parametrize(
    ("batch", "kwargs", "match"),
    [
        ({"x": jnp.zeros((4, 2))}, {}, "batch_axes is required for a batch of type dict"),
        (
            {"x": jnp.zeros((4, 2))},
            {"batch_axes": 2},
            r"batch\['x'\]: batch axis 2 does not exist in an array of shape \(4, 2\)",
        ),
        ({"x": jnp.zeros((4, 2))}, {"batch_axes": {"y": 0}}, "batch_axes must be an int or a pytree prefix"),
        ({"x": jnp.zeros((4, 2))}, {"batch_axes": 0, "axis_name": "data"}, "axis_name 'data' is not an axis"),
    ],
)
def test_placement_errors_name_the_problem(batch, kwargs, match):
    with pytest.raises(ValueError, match=match):
        shard_batch(batch, data_parallel_mesh(), **kwargs)
