"""lj.map_seeds: the vmapped and the looped form give the same per-seed results as calling `fn` on each
row, the loop compiles `fn` once, "auto" picks the loop on the CPU, and bad arguments are refused."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_all_close
from jax import lax

import lstmjax as lj
from lstmjax import _seeds


def _training_program(steps: int = 20, hidden_size: int = 4, length: int = 6):
    """`train_one(seed) -> (final params, losses (steps,))`: a small LSTM trained on the adding problem,
    weights, TrainState key and batches all drawn from `PRNGKey(seed)`."""
    cell = lj.lstm(hidden_size)
    optimizer = optax.adam(0.05)

    def loss_fn(model, batch, key):
        _, ys = lj.unroll(cell, model["cell"], batch.xs)
        return jnp.mean((ys[-1] @ model["readout"] + model["bias"] - batch.targets) ** 2)

    step = lj.make_train_step(loss_fn, optimizer)

    def train_one(seed):
        key_model, key_readout, key_state, key_data = jax.random.split(jax.random.PRNGKey(seed), 4)
        model = {"cell": cell.init(key_model, 2), "readout": jax.random.normal(key_readout, (hidden_size,)),
                 "bias": jnp.zeros(())}
        state = lj.init_train_state(model, optimizer, key_state)

        def body(state, key):
            state, metrics = step(state, lj.adding_problem(key, 8, length))
            return state, metrics.loss

        state, losses = lax.scan(body, state, jax.random.split(key_data, steps))
        return state.params, losses

    return train_one


def test_vmap_and_loop_give_each_seeds_own_training_run():
    train_one = _training_program()
    seeds = jnp.arange(3)
    looped = lj.map_seeds(train_one, seeds, strategy="loop")
    vmapped = lj.map_seeds(train_one, seeds, strategy="vmap")
    assert looped[1].shape == vmapped[1].shape == (3, 20)
    assert_trees_all_close(vmapped, looped, rtol=1e-4, atol=1e-5)
    single = jax.jit(train_one)
    for k in range(3):
        assert_trees_all_close(jax.tree_util.tree_map(lambda a, k=k: a[k], looped), single(k), rtol=0, atol=0)
    assert not jnp.allclose(looped[1][0], looped[1][1])  # the seeds really differ


def test_rows_may_be_keys_or_a_pytree_of_hyperparameters():
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    draws = {name: lj.map_seeds(lambda key: jax.random.normal(key, (2,)), keys, strategy=name)
             for name in ("loop", "vmap")}
    expected = jnp.stack([jax.random.normal(key, (2,)) for key in keys])
    for got in draws.values():
        assert_trees_all_close(got, expected, rtol=0, atol=0)
    typed = jax.random.split(jax.random.key(0), 4)
    assert lj.map_seeds(lambda key: jax.random.uniform(key), typed, strategy="loop").shape == (4,)

    sweep = {"lr": jnp.array([0.1, 0.2, 0.3]), "scale": jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])}
    for strategy in ("loop", "vmap"):
        out = lj.map_seeds(lambda row: {"product": row["lr"] * row["scale"], "lr": row["lr"]}, sweep, strategy)
        assert_trees_all_close(out, {"product": sweep["lr"][:, None] * sweep["scale"], "lr": sweep["lr"]})


def test_python_ints_are_taken_as_an_int_array():
    for seeds in ([0, 1, 2], (0, 1, 2), range(3)):
        out = lj.map_seeds(lambda s: s * 2, seeds)
        assert out.dtype == jnp.int32 and out.tolist() == [0, 2, 4]


def test_the_loop_compiles_fn_once():
    traces = []

    def fn(seed):
        traces.append(seed)
        return jnp.sin(seed.astype(jnp.float32)) * jnp.ones(3)

    out = lj.map_seeds(fn, jnp.arange(5), strategy="loop")
    assert out.shape == (5, 3)
    assert len(traces) == 1
    lj.map_seeds(fn, jnp.arange(5, 10), strategy="loop")  # same fn, same row shape: no new trace
    assert len(traces) == 1


def test_vmap_traces_fn_once():
    traces = []

    def fn(seed):
        traces.append(seed)
        return seed + 1

    assert lj.map_seeds(fn, jnp.arange(4), strategy="vmap").tolist() == [1, 2, 3, 4]
    assert len(traces) == 1


def test_auto_loops_on_the_cpu_and_vmaps_elsewhere(monkeypatch):
    assert jax.default_backend() == "cpu"  # the test suite runs on the CPU
    assert _seeds.resolve_strategy("auto") == "loop"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert _seeds.resolve_strategy("auto") == "vmap"
    assert _seeds.resolve_strategy("loop") == "loop"


def test_auto_does_not_vmap_on_the_cpu(monkeypatch):
    def no_vmap(*args, **kwargs):
        raise AssertionError("map_seeds(strategy='auto') vmapped on the CPU")

    monkeypatch.setattr(jax, "vmap", no_vmap)
    assert lj.map_seeds(lambda s: s * 3, jnp.arange(3)).tolist() == [0, 3, 6]
    with pytest.raises(AssertionError, match="vmapped"):
        lj.map_seeds(lambda s: s * 3, jnp.arange(3), strategy="vmap")


@pytest.mark.parametrize(("seeds", "strategy", "message"), [
    (jnp.arange(3), "pmap", r"strategy must be one of \('auto', 'vmap', 'loop'\), got 'pmap'"),
    (jnp.arange(3), None, "strategy must be one of"),
    (jnp.arange(0), "loop", r"at least one row \(K >= 1\)"),
    ([], "auto", "at least one array"),
    ({}, "vmap", "at least one array"),
    (jnp.asarray(3), "loop", r"leading axis K, got leaf shapes \[\(\)\]"),
    ({"a": jnp.zeros(3), "b": jnp.zeros((4, 2))}, "loop", r"same leading axis K, got leaf shapes \[\(3,\), \(4, 2\)\]"),
])
def test_bad_arguments_are_refused(seeds, strategy, message):
    with pytest.raises(ValueError, match=message):
        lj.map_seeds(lambda s: s, seeds, strategy)


def test_fn_must_be_callable():
    with pytest.raises(TypeError, match="fn must be callable, got int"):
        lj.map_seeds(3, jnp.arange(2))


def test_a_list_of_keys_is_a_list_of_rows():
    keys = [jax.random.PRNGKey(k) for k in range(3)]
    rows = lj.map_seeds(lambda key: jax.random.normal(key, ()), keys, strategy="loop")
    assert rows.shape == (3,)
    np.testing.assert_allclose(rows, [float(jax.random.normal(k, ())) for k in keys])
    with pytest.raises(ValueError, match="seeds given as a list must be rows of one shape"):
        lj.map_seeds(lambda x: x, [jnp.zeros(2), jnp.zeros(3)])


def test_loop_inside_jit_runs_one_body_k_times():
    traces = []

    def fn(seed):
        traces.append(1)
        return seed * 2.0

    out = jax.jit(lambda seeds: lj.map_seeds(fn, seeds, strategy="loop"))(jnp.arange(5.0))
    np.testing.assert_allclose(out, 2.0 * np.arange(5.0))
    assert len(traces) == 1
