"""The train step: compiles once, vmapped seeds equal separate runs, non-finite steps are skipped,
and an LSTM learns a small adding problem."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from helpers import assert_trees_all_close

import lstmjax as lj

CELL = lj.lstm(16)


def _model_params(key):
    key_cell, key_readout = jax.random.split(key)
    readout = jax.random.normal(key_readout, (16,)) * 0.1
    return {"cell": CELL.init(key_cell, 2), "readout": readout, "bias": jnp.zeros(())}


def _mse(params, batch, key):
    del key
    _, ys = lj.unroll(CELL, params["cell"], batch.xs)
    return jnp.mean((ys[-1] @ params["readout"] + params["bias"] - batch.targets) ** 2)


def test_train_step_compiles_once():
    traces = []

    def loss_fn(params, batch, key):
        traces.append(1)
        return _mse(params, batch, key)

    optimizer = optax.adam(1e-2)
    step = jax.jit(lj.make_train_step(loss_fn, optimizer))
    state = lj.init_train_state(_model_params(jax.random.PRNGKey(0)), optimizer, jax.random.PRNGKey(1))
    for i in range(3):
        state, _ = step(state, lj.adding_problem(jax.random.PRNGKey(i), 8, 10))
    assert len(traces) == 1
    assert int(state.step) == 3


def test_vmapped_seeds_equal_separate_runs():
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    step = lj.make_train_step(_mse, optimizer)
    seeds = jax.random.split(jax.random.PRNGKey(0), 3)
    states = jax.vmap(lambda k: lj.init_train_state(_model_params(k), optimizer, k))(seeds)
    batches = [lj.adding_problem(jax.random.PRNGKey(10 + i), 8, 10) for i in range(4)]
    vmapped_step = jax.jit(jax.vmap(step, in_axes=(0, None)))
    single_step = jax.jit(step)
    for batch in batches:
        states, metrics = vmapped_step(states, batch)
    for s, key in enumerate(seeds):
        state = lj.init_train_state(_model_params(key), optimizer, key)
        for batch in batches:
            state, single_metrics = single_step(state, batch)
        assert_trees_all_close(jax.tree_util.tree_map(lambda a: a[s], states), state, rtol=1e-5, atol=1e-6)
        assert_trees_all_close(metrics.loss[s], single_metrics.loss, rtol=1e-5, atol=1e-7)


def test_non_finite_loss_skips_the_update_and_keeps_the_last_good_state():
    optimizer = optax.sgd(0.1)

    def loss_fn(params, batch, key):
        return _mse(params, batch, key) * batch.targets.sum() / jnp.where(batch.targets[0] > 100, 0.0, 1.0)

    step = jax.jit(lj.make_train_step(loss_fn, optimizer))
    state = lj.init_train_state(_model_params(jax.random.PRNGKey(0)), optimizer, jax.random.PRNGKey(1))
    good = lj.adding_problem(jax.random.PRNGKey(2), 4, 10)
    bad = good._replace(targets=good.targets.at[0].set(1000.0))
    state, metrics = step(state, good)
    assert bool(metrics.finite)
    after_bad, metrics = step(state, bad)
    assert not bool(metrics.finite)
    assert_trees_all_close((after_bad.params, after_bad.opt_state), (state.params, state.opt_state), rtol=0, atol=0)
    assert int(after_bad.step) == int(state.step) + 1


def test_lstm_learns_a_small_adding_problem():
    """T = 20, 400 Adam steps: far below the memoryless baseline MSE 1/6."""
    optimizer = optax.adam(1e-2)
    step = jax.jit(lj.make_train_step(_mse, optimizer))
    state = lj.init_train_state(_model_params(jax.random.PRNGKey(0)), optimizer, jax.random.PRNGKey(1))
    data_keys = jax.random.split(jax.random.PRNGKey(2), 400)
    for key in data_keys:
        state, metrics = step(state, lj.adding_problem(key, 64, 20))
    test = lj.adding_problem(jax.random.PRNGKey(99), 1000, 20)
    test_mse = float(_mse(state.params, test, None))
    assert test_mse < 0.01, f"test MSE {test_mse:.4f} (baseline {lj.ADDING_BASELINE_MSE:.3f})"
    assert np.isfinite(float(metrics.loss))
