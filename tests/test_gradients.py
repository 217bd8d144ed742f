"""Gradients through `lj.unroll` equal finite differences in float64, in reverse and forward mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cells import CELL_FACTORIES, random_state
from helpers import assert_trees_all_close
from jax.test_util import check_grads

import lstmjax as lj


@pytest.fixture(params=sorted(CELL_FACTORIES))
def cell(request):
    return CELL_FACTORIES[request.param](3)


def _problem(cell):
    params = cell.init(jax.random.PRNGKey(0), 2, dtype=jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (6, 2, 2), jnp.float64)
    state = random_state(cell, params, 2, (2,))
    return params, xs, state


def _loss(cell, **unroll_options):
    def loss(params, xs, state):
        final, ys = lj.unroll(cell, params, xs, state, **unroll_options)
        leaves = jax.tree_util.tree_leaves(final)
        return jnp.sum(ys ** 2) + sum(jnp.sum(jnp.sin(leaf)) for leaf in leaves)
    return loss


@pytest.mark.parametrize("options", [{}, {"reverse": True}, {"lengths": np.array([4, 1])},
                                     {"mask": np.array([[1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 1]], bool).T},
                                     {"resets": np.array([[0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 1, 0]], bool).T}],
                         ids=["plain", "reverse", "lengths", "mask", "resets"])
def test_gradients_equal_finite_differences_float64(cell, options):
    with jax.enable_x64(True):
        params, xs, state = _problem(cell)
        assert params.w_x.dtype == jnp.float64
        check_grads(_loss(cell, **options), (params, xs, state), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_second_order_gradients_equal_finite_differences_float64(cell):
    with jax.enable_x64(True):
        params, xs, state = _problem(cell)
        check_grads(_loss(cell), (params, xs, state), order=2, modes=("rev",), atol=1e-5, rtol=1e-5)


def test_forward_mode_and_hessian_vector_products(cell):
    with jax.enable_x64(True):
        params, xs, state = _problem(cell)
        loss = _loss(cell, lengths=np.array([6, 3]))
        check_grads(loss, (params, xs, state), order=1, modes=("fwd",), atol=1e-6, rtol=1e-6)
        jac_forward = jax.jacfwd(loss)(params, xs, state)
        assert_trees_all_close(jac_forward, jax.grad(loss)(params, xs, state), rtol=1e-10, atol=1e-12)
        tangent = jax.tree_util.tree_map(jnp.ones_like, params)
        hvp = jax.jvp(lambda p: jax.grad(loss)(p, xs, state), (params,), (tangent,))[1]
        step = 1e-5
        shifted = jax.tree_util.tree_map(lambda p, t: p + step * t, params, tangent)
        shifted_back = jax.tree_util.tree_map(lambda p, t: p - step * t, params, tangent)
        central = jax.tree_util.tree_map(lambda a, b: (a - b) / (2 * step),
                                         jax.grad(loss)(shifted, xs, state), jax.grad(loss)(shifted_back, xs, state))
        assert_trees_all_close(hvp, central, rtol=1e-6, atol=1e-7)


def test_learnable_initial_state_is_just_more_parameters():
    """A shared `(H,)` initial state, broadcast over the batch, gets the summed gradient."""
    with jax.enable_x64(True):
        cell = lj.lstm(3)
        params = cell.init(jax.random.PRNGKey(0), 2, dtype=jnp.float64)
        xs = jax.random.normal(jax.random.PRNGKey(1), (5, 4, 2), jnp.float64)
        learnable = {"cell": params, "h0": jnp.full(3, 0.1), "c0": jnp.full(3, -0.2)}

        def loss(p):
            _, ys = lj.unroll(cell, p["cell"], xs, lj.LSTMState(h=p["h0"], c=p["c0"]))
            return jnp.mean((ys - 0.5) ** 2)

        check_grads(loss, (learnable,), order=1, modes=("rev",), atol=1e-7, rtol=1e-7)
        grads = jax.grad(loss)(learnable)
        assert float(jnp.linalg.norm(grads["h0"])) > 0 and float(jnp.linalg.norm(grads["c0"])) > 0

        def loss_batched_state(h0, c0):
            state = lj.LSTMState(h=jnp.broadcast_to(h0, (4, 3)), c=jnp.broadcast_to(c0, (4, 3)))
            return jnp.mean((lj.unroll(cell, params, xs, state)[1] - 0.5) ** 2)

        h_grad, c_grad = jax.grad(loss_batched_state, argnums=(0, 1))(learnable["h0"], learnable["c0"])
        assert_trees_all_close((grads["h0"], grads["c0"]), (h_grad, c_grad), rtol=1e-12, atol=1e-14)


def test_float64_runs_in_float64(cell):
    with jax.enable_x64(True):
        params, xs, state = _problem(cell)
        final, ys = lj.unroll(cell, params, xs, state)
        assert ys.dtype == jnp.float64
        assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(final))
