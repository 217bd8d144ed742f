"""The vanilla RNN's native CPU path of `lj.unroll` (`lstmjax._native_rnn`, kernel `lstmjax/native/rnn_cpu.cc`).

As for the GRU's (`test_native_gru.py`) and the LSTM's (`test_native.py`, whose comparison helpers
these tests share): for every activation (tanh, relu, linear), shape (padded rows and units
included), direction, `lengths`/`mask` and kind of derivative it equals the XLA step-by-step scan of
the same cell, in float32 to rounding; `vmap` works over data (folded into the kernel's batch) and
over weights; `lj.unroll` takes it exactly where it should. The tests skip where the kernel cannot
be built (no g++, no AVX-512).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_all_close
from test_native import (
    _in_float64,
    _loss,
    _ops,
    _options,
    _xla,
    assert_as_accurate_as_xla,
    check_empty_vmap_disable_jit_and_export,
    check_forward_mode_and_second_derivatives,
    check_gradient_runs_both_kernels,
    check_native_accuracy,
    check_remat_per_chunk,
    check_xla_path_where_the_kernel_does_not_apply,
)

import lstmjax as lj
from lstmjax import _fused, _native_rnn
from lstmjax._native_build import native_kernel_status


@pytest.fixture(scope="module", autouse=True)
def kernel():
    status = native_kernel_status()
    if not status.available:
        pytest.skip(f"native kernel unavailable: {status.reason}")


def _problem(steps, batch_shape, inputs, hidden, activation="tanh", seed=0):
    cell = lj.rnn(hidden, activation=activation)
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = jax.tree_util.tree_map(lambda w: 1.5 * w, cell.init(keys[0], inputs))  # well into tanh's curve
    xs = jax.random.normal(keys[1], (steps, *batch_shape, inputs))
    state = 0.5 * jax.random.normal(keys[2], (*batch_shape, hidden))
    return cell, params, xs, state


SHAPES = {
    "B20_H64": (12, (20,), 16, 64),  # 5 row blocks: an uneven split over the workers
    "B3_H40_padded": (9, (3,), 5, 40),
    "unbatched_H32": (6, (), 3, 32),
    "batch2x3_H16_padded": (5, (2, 3), 4, 16),
    "T1_B8_H96": (1, (8,), 7, 96),
}

CASES = {"tanh-B20_H64": (False, ""), "tanh-unbatched_H32": (False, ""), "tanh-T1_B8_H96": (False, ""),
         "tanh-B3_H40_padded-mask-reverse": (True, "mask"),
         "tanh-batch2x3_H16_padded-lengths-reverse": (True, "lengths"),
         "relu-B20_H64-mask": (False, "mask"), "relu-batch2x3_H16_padded-lengths-reverse": (True, "lengths"),
         "linear-B3_H40_padded-mask-reverse": (True, "mask")}


@pytest.mark.parametrize("case", CASES)
def test_native_path_is_as_accurate_as_the_xla_scan_with_gradients(case):
    """Every activation, also with `lengths` (0 and T included) and `mask` (held steps, zero outputs),
    at hidden sizes that are not multiples of 32 (padded units) and batches that are not multiples of 4."""
    reverse, kinds = CASES[case]
    activation, name = case.split("-")[:2]
    shape = SHAPES[name]
    cell, params, xs, state = _problem(*shape, activation=activation)
    options = _options(kinds, shape[0], shape[1])
    check_native_accuracy(cell, params, xs, state, reverse, options, "rnn_forward")


def test_the_gradient_runs_the_backward_kernel_and_no_loop():
    check_gradient_runs_both_kernels(*_problem(*SHAPES["B3_H40_padded"]), "rnn")


def test_relu_at_zero_has_jaxs_zero_derivative():
    """Units whose pre-activation is exactly 0 at every step (zero weights and bias) have relu'(0) = 0, as
    `jax.nn.relu`: no gradient reaches their weights, and the rest equals the XLA scan."""
    cell, params, xs, state = _problem(*SHAPES["B3_H40_padded"], activation="relu")
    dead = slice(0, 8)
    params = lj.RNNParams(w_x=params.w_x.at[:, dead].set(0.0), w_h=params.w_h.at[:, dead].set(0.0),
                          b=params.b.at[dead].set(0.0))
    state = state.at[:, dead].set(0.0)
    gradient = lambda c: jax.grad(_loss(c), argnums=(0, 2))  # noqa: E731
    native = jax.jit(gradient(cell))(params, xs, state)
    assert not np.asarray(native[0].b[dead]).any() and not np.asarray(native[0].w_x[:, dead]).any()
    assert not np.asarray(native[0].w_h[:, dead]).any()
    assert_as_accurate_as_xla(native, gradient(_xla(cell))(params, xs, state),
                              _in_float64(gradient(_xla(cell)), params, xs, state))


def test_forward_mode_and_second_derivatives_equal_the_xla_scan():
    check_forward_mode_and_second_derivatives(*_problem(*SHAPES["B3_H40_padded"]), reverse_over_forward=False)


def test_vmap_over_data_folds_into_the_kernel_and_over_weights_maps_it():
    cell, params, xs, state = _problem(*SHAPES["B3_H40_padded"], activation="relu")
    many_xs = jnp.stack([xs, 0.5 * xs, -xs])
    lengths = jnp.array([[9, 0, 4], [1, 9, 9], [3, 3, 0]])  # mapped with the data: folded into the batch too
    with_lengths = lambda c: jax.jit(jax.vmap(lambda x, n: jax.grad(  # noqa: E731
        lambda p: _loss(c, lengths=n)(p, x, state))(params)))
    jaxpr = jax.make_jaxpr(with_lengths(cell))(many_xs, lengths)
    assert "rnn_backward" in str(jaxpr) and "lax.map" not in str(jaxpr) and " while[" not in str(jaxpr)
    assert_trees_all_close(with_lengths(cell)(many_xs, lengths), with_lengths(_xla(cell))(many_xs, lengths),
                           rtol=1e-4, atol=2e-5)
    seeds = jax.tree_util.tree_map(lambda w: jnp.stack([w, 0.7 * w]), params)
    over_seeds = jax.vmap(jax.grad(_loss(cell)), in_axes=(0, None, None))
    assert "rnn_backward" in _ops(over_seeds, seeds, xs, state)
    assert_trees_all_close(jax.jit(over_seeds)(seeds, xs, state),
                           jax.vmap(jax.grad(_loss(_xla(cell))), in_axes=(0, None, None))(seeds, xs, state),
                           rtol=1e-4, atol=2e-5)


def test_an_empty_vmap_axis_disable_jit_and_export_work_as_on_xla():
    check_empty_vmap_disable_jit_and_export(*_problem(*SHAPES["B3_H40_padded"]), "rnn")


@pytest.mark.parametrize("activation", ["tanh", "relu", "linear"])
def test_nan_inputs_give_nan_outputs_and_gradients(activation):
    """relu(NaN) is NaN too; the gradients are NaN exactly where the XLA scan's are."""
    cell, params, xs, state = _problem(*SHAPES["B20_H64"], activation=activation)
    xs = xs.at[3, 5, 0].set(jnp.nan)
    _, ys = lj.unroll(cell, params, xs, state)
    assert not np.isnan(np.asarray(ys[:3])).any()
    assert np.isnan(np.asarray(ys[3:, 5])).all(), "the sequence with the NaN input must be NaN from there on"
    assert not np.isnan(np.asarray(ys[:, 4])).any(), "other sequences are independent of it"
    gradient = jax.jit(jax.grad(_loss(cell), argnums=(0, 1)))(params, xs, state)
    expected = jax.grad(_loss(_xla(cell)), argnums=(0, 1))(params, xs, state)
    for native, xla in zip(jax.tree_util.tree_leaves(gradient), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(np.isnan(np.asarray(native)), np.isnan(np.asarray(xla)))


def test_remat_runs_one_kernel_pair_per_chunk_with_the_plain_gradient():
    check_remat_per_chunk(*_problem(*SHAPES["B20_H64"]), "rnn", chunk=5)


@pytest.mark.parametrize("case", ["float64", "resets", "below_threshold", "with_internals", "gru"])
def test_lj_unroll_uses_the_xla_path_where_the_kernel_does_not_apply(case):
    if case == "below_threshold" and _native_rnn.MIN_HIDDEN_SIZE == 1:
        pytest.skip("the kernel is used at every hidden size")
    check_xla_path_where_the_kernel_does_not_apply(case, lambda hidden: _problem(6, (4,), 3, hidden), "rnn",
                                                   _native_rnn.MIN_HIDDEN_SIZE, lj.gru(64))


def test_kernel_refuses_inconsistent_shapes_and_activations_by_name():
    """The custom calls check their buffers and attributes themselves (the wrappers never send such)."""
    hidden = jax.ShapeDtypeStruct((2, 4, 32), jnp.float32)
    forward = lambda activation=0: jax.jit(lambda *a: jax.ffi.ffi_call(  # noqa: E731
        _native_rnn.TARGETS["rnn_forward"], [hidden])(*a, threads=np.int32(1), activation=np.int32(activation)))
    xz, valid, w_h, h0 = jnp.zeros((2, 4, 32)), jnp.ones((2, 4), jnp.uint8), jnp.zeros((32, 32)), jnp.zeros((4, 32))
    with pytest.raises(Exception, match=r"h0 has shape \(4, 33\) but must be \(B, H\) = \(4, 32\)"):
        jax.block_until_ready(forward()(xz, valid, w_h, jnp.zeros((4, 33))))
    with pytest.raises(Exception, match=r"valid has shape \(4, 2\) but must be \(T, B\) = \(2, 4\)"):
        jax.block_until_ready(forward()(xz, valid.T, w_h, h0))
    with pytest.raises(Exception, match=r"attribute activation = 3 must be 0 \(tanh\), 1 \(relu\) or 2 \(linear\)"):
        jax.block_until_ready(forward(3)(xz, valid, w_h, h0))
    backward = jax.jit(lambda *a: jax.ffi.ffi_call(_native_rnn.TARGETS["rnn_backward"], [
        hidden, jax.ShapeDtypeStruct((4, 32), jnp.float32)])(*a, threads=np.int32(1), activation=np.int32(1)))
    with pytest.raises(Exception, match=r"ct_hs has shape \(2, 4, 64\) but must be \(T, B, H\) = \(2, 4, 32\)"):
        jax.block_until_ready(backward(w_h, xz, valid, jnp.zeros((2, 4, 64))))


def test_where_the_kernel_does_not_apply_the_xla_fast_path_still_does(monkeypatch):
    """From `H = 256` the RNN keeps its XLA fast path (`lstmjax._fused`) for what the kernel does not take."""
    calls = []
    original = _fused.fused_unroll
    monkeypatch.setattr("lstmjax._unroll.fused_unroll", lambda *args: calls.append(1) or original(*args))
    cell, params, xs, state = _problem(3, (4,), 3, 256, activation="relu")
    assert "rnn_forward" in _ops(lambda p: lj.unroll(cell, p, xs, state), params) and not calls
    with jax.enable_x64(True):
        params, xs, state = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), (params, xs, state))
        assert "rnn_forward" not in _ops(lambda p: lj.unroll(cell, p, xs, state), params)
    assert calls == [1]
