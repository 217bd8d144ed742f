"""The cell families every generic test runs over, and small builders of random inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import lstmjax as lj

CELL_FACTORIES = {
    "lstm": lambda hidden: lj.lstm(hidden),
    "gru": lambda hidden: lj.gru(hidden),
    "rnn_tanh": lambda hidden: lj.rnn(hidden),
    "rnn_relu": lambda hidden: lj.rnn(hidden, activation="relu"),
}


def random_inputs(seed: int, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(seed), shape, dtype)


def random_state(cell: lj.Cell, params, seed: int, batch_shape: tuple[int, ...]):
    """A nonzero state with the structure of `cell.initial_state`."""
    zeros = cell.initial_state(params, batch_shape)
    leaves, tree = jax.tree_util.tree_flatten(zeros)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [0.5 * jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)])


def python_loop(cell: lj.Cell, params, xs, state):
    """Unrolls with a plain Python loop over `cell.step`, independent of `lj.unroll`."""
    ys = []
    for t in range(xs.shape[0]):
        state, y = cell.step(params, state, xs[t])
        ys.append(y)
    if not ys:
        return state, jnp.zeros((0, *xs.shape[1:-1], cell.hidden_size), xs.dtype)
    return state, jnp.stack(ys)
