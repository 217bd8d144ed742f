"""The LSTM's cuDNN path (`lstmjax._cudnn`, opt-in with `LSTMJAX_CUDNN=1`).

Off a GPU its primitives lower to their references, so these tests check everything around cuDNN's
calls (the layout, the custom JVP, the transposition into the backward primitive, `vmap`, forward
mode and higher derivatives, `lj.unroll`'s dispatch) against `lj.unroll`'s XLA scan; on a GPU with
jaxlib's cuDNN bindings the same tests run on cuDNN itself (at full float32 precision:
`JAX_DEFAULT_MATMUL_PRECISION=highest`, as `experiments/gpu_checks.sh` runs them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_all_close, equations
from jax.flatten_util import ravel_pytree

import lstmjax as lj
import lstmjax._unroll as unroll_module
from lstmjax import _cudnn

HIDDEN, INPUTS = 8, 3  # below every native CPU kernel's smallest H: lj.unroll's reference here is its XLA scan
RTOL, ATOL = 2e-5, 2e-6


def _problem(batch_shape=(2, 3), steps=6, seed=0):
    cell = lj.lstm(HIDDEN, init="pytorch")  # every bias nonzero
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = cell.init(keys[0], INPUTS)
    xs = jax.random.normal(keys[1], (steps, *batch_shape, INPUTS))
    state = lj.LSTMState(h=0.5 * jax.random.normal(keys[2], (*batch_shape, HIDDEN)),
                         c=0.5 * jax.random.normal(keys[3], (*batch_shape, HIDDEN)))
    return cell, params, xs, state


def _loss(unroll):
    """A loss of everything the unroll returns, weighted so that no output's cotangent is uniform."""
    def loss(params, xs, state):
        final, ys = unroll(params, xs, state)
        weights = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
        return jnp.sum(weights * ys) + jnp.sum(final.h ** 2) - jnp.sum(jnp.sin(final.c))
    return loss


def _both(reverse=False):
    """`(cudnn, xla)`: the cuDNN path called directly, and `lj.unroll` without it (whatever `LSTMJAX_CUDNN`
    says: the XLA scan at this H)."""
    cell = lj.lstm(HIDDEN)

    def xla(p, x, s):
        with _cudnn.forced(False):
            return lj.unroll(cell, p, x, s, reverse=reverse)

    return (lambda p, x, s: _cudnn.cudnn_unroll(p, x, s, reverse)), xla


@pytest.mark.parametrize("batch_shape, reverse", [((2, 3), False), ((5,), True), ((1,), False)])
def test_values_and_final_state_equal_lj_unrolls(batch_shape, reverse):
    _, params, xs, state = _problem(batch_shape)
    cudnn, xla = _both(reverse)
    assert_trees_all_close(cudnn(params, xs, state), xla(params, xs, state), RTOL, ATOL)


def test_gradients_equal_lj_unrolls_and_run_the_backward_primitive():
    """`jax.grad` transposes the tangent primitive into `cudnn_lstm_backward` (cuDNN's backward pass on a
    GPU): one call, no scan around it; the gradients of the weights, inputs and both memories equal the
    XLA scan's."""
    _, params, xs, state = _problem()
    cudnn, xla = _both()
    grad = jax.grad(_loss(cudnn), argnums=(0, 1, 2))
    assert_trees_all_close(grad(params, xs, state), jax.grad(_loss(xla), argnums=(0, 1, 2))(params, xs, state),
                           RTOL, ATOL)
    names = [eqn.primitive.name for eqn, _ in equations(jax.make_jaxpr(grad)(params, xs, state).jaxpr)]
    assert names.count("cudnn_lstm_forward") == 1 and names.count("cudnn_lstm_backward") == 1
    assert "cudnn_lstm_tangent" not in names


def test_forward_mode_and_second_derivatives_equal_lj_unrolls():
    """What `jax.experimental.rnn`'s custom_vjp cannot do: `jax.jvp`, `jax.jacfwd`, and Hessian-vector
    products both ways (forward over reverse, reverse over reverse)."""
    _, params, xs, state = _problem(batch_shape=(2,), steps=4)
    direction = jax.tree_util.tree_map(lambda a: jnp.cos(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape), params)
    flat_direction = ravel_pytree(direction)[0]
    results = []
    for unroll in _both():
        of_params = lambda p: _loss(unroll)(p, xs, state)  # noqa: B023
        jvp = jax.jvp(of_params, (params,), (direction,))
        jac = jax.jacfwd(lambda x: unroll(params, x, state)[1])(xs)  # noqa: B023
        hvp_forward_over_reverse = jax.jvp(jax.grad(of_params), (params,), (direction,))[1]
        hvp_reverse_over_reverse = jax.grad(
            lambda p: jnp.vdot(ravel_pytree(jax.grad(of_params)(p))[0], flat_direction))(params)
        results.append((jvp, jac, hvp_forward_over_reverse, hvp_reverse_over_reverse))
    assert_trees_all_close(results[0], results[1], 1e-4, 1e-5)


def test_vmap_over_data_and_over_models_equals_a_loop():
    """Under `vmap` the primitives run their references, vmapped (XLA's batched scan)."""
    _, params, xs, state = _problem(batch_shape=(3,))
    cudnn, xla = _both()
    stacked_xs = jnp.stack([xs, 2 * xs])
    over_data = jax.vmap(lambda x: cudnn(params, x, state))(stacked_xs)
    assert_trees_all_close(over_data, jax.vmap(lambda x: xla(params, x, state))(stacked_xs), RTOL, ATOL)
    models = jax.tree_util.tree_map(lambda a: jnp.stack([a, -a]), params)
    grads = jax.vmap(jax.grad(_loss(cudnn)), in_axes=(0, None, None))(models, xs, state)
    for k in range(2):
        one = jax.tree_util.tree_map(lambda a: a[k], models)  # noqa: B023
        assert_trees_all_close(jax.tree_util.tree_map(lambda a: a[k], grads),  # noqa: B023
                               jax.grad(_loss(xla))(one, xs, state), RTOL, ATOL)


def test_cudnns_layout_is_the_one_jax_experimental_rnn_unpacks():
    rnn = pytest.importorskip("jax.experimental.rnn")
    _, params, _, _ = _problem()
    w = _cudnn.flat_weights(*params)
    assert w.shape == (4 * HIDDEN * (INPUTS + HIDDEN + 2),)
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(w, INPUTS, HIDDEN, 1, False)
    np.testing.assert_array_equal(w_ih[0], params.w_x.T)
    np.testing.assert_array_equal(w_hh[0], params.w_h.T)
    np.testing.assert_array_equal(b_ih[0], params.b)
    np.testing.assert_array_equal(b_hh[0], 0)
    assert_trees_all_close(_cudnn.unflat_weights(w, INPUTS, HIDDEN), tuple(params), 0, 0)


@pytest.fixture
def dispatch_here(monkeypatch):
    """`lj.unroll` takes the cuDNN path where it would on a GPU with `LSTMJAX_CUDNN=1` (here: through the
    references)."""
    monkeypatch.setattr(unroll_module, "can_run_on_gpu", lambda *args: True)
    with _cudnn.forced(True):
        yield


def _primitives(fn, *args):
    return {eqn.primitive.name for eqn, _ in equations(jax.make_jaxpr(fn)(*args).jaxpr)}


def test_lj_unroll_takes_the_path_with_remat_and_reverse(dispatch_here):
    cell, params, xs, state = _problem(steps=6)
    for options in ({}, {"reverse": True}, {"remat": 3}, {"remat": 2, "reverse": True}):
        loss = _loss(lambda p, x, s: lj.unroll(cell, p, x, s, **options))  # noqa: B023
        assert "cudnn_lstm_forward" in _primitives(jax.grad(loss), params, xs, state), options
        want = jax.value_and_grad(_loss(lambda p, x, s: lj.unroll(lj.lstm(HIDDEN), p, x, s, **options)))  # noqa: B023
        assert_trees_all_close(jax.value_and_grad(loss)(params, xs, state), _without_path(want, params, xs, state),
                               RTOL, ATOL)


def _without_path(fn, *args):
    """`fn(*args)` with `lj.unroll`'s cuDNN path not asked for."""
    with _cudnn.forced(False):
        return fn(*args)


def test_lj_unroll_leaves_the_path_where_cudnn_would_not_run_every_step(dispatch_here):
    """cuDNN runs every step: `lengths`, `mask`, `resets`, remat chunks that pad the last one, and the
    internals keep to the XLA scan."""
    cell, params, xs, state = _problem(steps=6)
    lengths = jnp.full(xs.shape[1:-1], 6)
    for options in ({"lengths": lengths}, {"mask": jnp.ones(xs.shape[:-1], bool)},
                    {"resets": jnp.zeros(xs.shape[:-1], bool)}, {"remat": 4}):
        assert "cudnn_lstm_forward" not in _primitives(
            lambda p: lj.unroll(cell, p, xs, state, **options)[1], params), options  # noqa: B023
    assert "cudnn_lstm_forward" not in _primitives(lambda p: lj.unroll_with_internals(cell, p, xs, state)[1], params)


def test_the_path_is_opt_in_and_needs_a_cuda_gpu(monkeypatch):
    _, params, xs, state = _problem()
    monkeypatch.delenv("LSTMJAX_CUDNN", raising=False)
    assert not _cudnn.enabled()
    for value, on in (("1", True), ("true", True), ("ON", True), ("0", False), ("", False)):
        monkeypatch.setenv("LSTMJAX_CUDNN", value)
        assert _cudnn.enabled() is on, value
    with _cudnn.forced(False):
        assert not _cudnn.enabled()
        with _cudnn.forced(True):
            assert _cudnn.enabled()
        assert not _cudnn.enabled()
    here = _cudnn.on_cuda() and _cudnn.bindings_available()
    assert _cudnn.can_run_on_gpu(params, xs, state) is here
    if jax.default_backend() != "gpu":
        assert not _cudnn.on_cuda() and _cudnn.reserve_size(2, 6, INPUTS, HIDDEN, None) == 0
    # where it would run, it still declines float16, bfloat16 products and problems past MAX_STEP_UNITS
    monkeypatch.setattr(_cudnn, "on_cuda", lambda: True)
    monkeypatch.setattr(_cudnn, "bindings_available", lambda: True)
    assert _cudnn.can_run_on_gpu(params, xs, state)
    assert not _cudnn.can_run_on_gpu(jax.tree_util.tree_map(lambda a: a.astype(jnp.float16), params), xs, state)
    with jax.default_matmul_precision("bfloat16"):
        assert not _cudnn.can_run_on_gpu(params, xs, state)
    monkeypatch.setattr(_cudnn, "MAX_STEP_UNITS", xs.size // INPUTS * HIDDEN - 1)
    assert not _cudnn.can_run_on_gpu(params, xs, state)


def test_an_eager_lj_unroll_asks_again_on_every_call(dispatch_here):
    """`lj.unroll` outside `jit` caches its compilation: whether the path was asked for is part of the key."""
    _, params, xs, state = _problem()
    traced = []

    def spy(*args):
        traced.append(True)
        return _cudnn.cudnn_unroll(*args)

    cell = lj.lstm(HIDDEN)
    cell = cell._replace(fused=cell.fused._replace(gpu=spy))
    counts = []
    for enabled in (False, True, False, True):
        with _cudnn.forced(enabled):
            before = len(traced)
            lj.unroll(cell, params, xs, state)
            counts.append(len(traced) - before)
    assert counts == [0, 1, 0, 0]  # traced once, when first asked for; then the compiled program is reused


def test_a_jitted_training_step_equals_lj_unrolls():
    """Forward and backward passes in one compiled program (on a GPU: both cuDNN calls in one XLA program)."""
    _, params, xs, state = _problem()
    cudnn, xla = _both()
    step = jax.jit(jax.value_and_grad(_loss(cudnn), argnums=(0, 1, 2)))
    want = jax.value_and_grad(_loss(xla), argnums=(0, 1, 2))(params, xs, state)
    assert_trees_all_close(step(params, xs, state), want, RTOL, ATOL)


def test_one_forward_pass_serves_several_backward_passes():
    """cuDNN declares its reserve an input/output of the backward pass: a `jax.vjp` function called twice,
    and its JVP (Gauss-Newton products), must still give the XLA scan's results."""
    _, params, xs, state = _problem()
    cudnn, xla = _both()
    outputs = lambda unroll: (lambda p: unroll(p, xs, state)[1])  # noqa: E731
    (_, cudnn_vjp), (ys, xla_vjp) = jax.vjp(outputs(cudnn), params), jax.vjp(outputs(xla), params)
    first, second = jnp.cos(ys), jnp.sin(3 * ys)
    want = [xla_vjp(first), xla_vjp(second)]
    assert_trees_all_close([cudnn_vjp(first), cudnn_vjp(second)], want, RTOL, ATOL)
    assert_trees_all_close(cudnn_vjp(first), want[0], RTOL, ATOL)  # once more, after the second
    tangent = jax.jvp(cudnn_vjp, (first,), (second,))
    assert_trees_all_close(tangent, jax.jvp(xla_vjp, (first,), (second,)), RTOL, ATOL)


def test_tf32_products_stay_close():
    """With TF32 allowed (JAX's default on a GPU, which cuDNN then follows) the path still computes the same
    LSTM as the XLA scan under the same setting, to TF32's precision (about 1e-3 per product)."""
    _, params, xs, state = _problem()
    cudnn, xla = _both()
    with jax.default_matmul_precision("tensorfloat32"):
        got = jax.value_and_grad(_loss(cudnn))(params, xs, state)
        want = jax.value_and_grad(_loss(xla))(params, xs, state)
    assert_trees_all_close(got, want, 3e-2, 3e-3)


def test_export_and_eager_calls_use_the_references():
    """`jax.export` cannot serialise a cuDNN custom call: the exported program runs the references."""
    _, params, xs, state = _problem()
    cudnn, xla = _both()
    exported = jax.export.export(jax.jit(lambda p, x, s: cudnn(p, x, s)[1]))(params, xs, state)
    np.testing.assert_allclose(exported.call(params, xs, state), xla(params, xs, state)[1], RTOL, ATOL)
    with jax.disable_jit():
        assert_trees_all_close(cudnn(params, xs, state), xla(params, xs, state), RTOL, ATOL)
