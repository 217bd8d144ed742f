"""The GRU's native CPU path of `lj.unroll` (`lstmjax._native_gru`, kernel `lstmjax/native/gru_cpu.cc`).

As for the LSTM's (`test_native.py`, whose comparison helpers these tests share): for every shape
(padded rows and units included), direction, `lengths`/`mask` and kind of derivative it equals the
XLA step-by-step scan of the same cell, in float32 to rounding; `vmap` works over data (folded into
the kernel's batch) and over weights; `lj.unroll` takes it exactly where it should. The tests skip
where the kernel cannot be built (no g++, no AVX-512).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_all_close
from test_native import (
    _loss,
    _ops,
    _options,
    _xla,
    check_empty_vmap_disable_jit_and_export,
    check_forward_mode_and_second_derivatives,
    check_gradient_runs_both_kernels,
    check_native_accuracy,
    check_remat_per_chunk,
    check_xla_path_where_the_kernel_does_not_apply,
)

import lstmjax as lj
from lstmjax import _native_gru
from lstmjax._native_build import native_kernel_status


@pytest.fixture(scope="module", autouse=True)
def kernel():
    status = native_kernel_status()
    if not status.available:
        pytest.skip(f"native kernel unavailable: {status.reason}")


def _problem(steps, batch_shape, inputs, hidden, seed=0):
    cell = lj.gru(hidden)
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = jax.tree_util.tree_map(lambda w: 2.0 * w, cell.init(keys[0], inputs))  # gates away from 0.5
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

CASES = {"B20_H64": (False, ""), "B3_H40_padded-reverse": (True, ""), "unbatched_H32": (False, ""),
         "T1_B8_H96": (False, ""), "B20_H64-lengths": (False, "lengths"),
         "B3_H40_padded-mask-reverse": (True, "mask"), "batch2x3_H16_padded-lengths-reverse": (True, "lengths")}


@pytest.mark.parametrize("case", CASES)
def test_native_path_is_as_accurate_as_the_xla_scan_with_gradients(case):
    """Also with `lengths` (0 and T included) and `mask` (held steps, zero outputs)."""
    reverse, kinds = CASES[case]
    shape = SHAPES[case.split("-")[0]]
    cell, params, xs, state = _problem(*shape)
    options = _options(kinds, shape[0], shape[1])
    check_native_accuracy(cell, params, xs, state, reverse, options, "gru_forward")


def test_the_gradient_runs_the_backward_kernel_and_no_loop():
    check_gradient_runs_both_kernels(*_problem(*SHAPES["B3_H40_padded"]), "gru")


def test_forward_mode_and_second_derivatives_equal_the_xla_scan():
    check_forward_mode_and_second_derivatives(*_problem(*SHAPES["B3_H40_padded"]), reverse_over_forward=False)


def test_vmap_over_data_folds_into_the_kernel_and_over_weights_maps_it():
    cell, params, xs, state = _problem(*SHAPES["B3_H40_padded"])
    many_xs = jnp.stack([xs, 0.5 * xs, -xs])
    lengths = jnp.array([[9, 0, 4], [1, 9, 9], [3, 3, 0]])  # mapped with the data: folded into the batch too
    with_lengths = lambda c: jax.jit(jax.vmap(lambda x, n: jax.grad(  # noqa: E731
        lambda p: _loss(c, lengths=n)(p, x, state))(params)))
    jaxpr = jax.make_jaxpr(with_lengths(cell))(many_xs, lengths)
    assert "gru_backward" in str(jaxpr) and "lax.map" not in str(jaxpr) and " while[" not in str(jaxpr)
    assert_trees_all_close(with_lengths(cell)(many_xs, lengths), with_lengths(_xla(cell))(many_xs, lengths),
                           rtol=1e-4, atol=2e-5)
    seeds = jax.tree_util.tree_map(lambda w: jnp.stack([w, 0.7 * w]), params)
    over_seeds = jax.vmap(jax.grad(_loss(cell)), in_axes=(0, None, None))
    assert "gru_backward" in _ops(over_seeds, seeds, xs, state)
    assert_trees_all_close(jax.jit(over_seeds)(seeds, xs, state),
                           jax.vmap(jax.grad(_loss(_xla(cell))), in_axes=(0, None, None))(seeds, xs, state),
                           rtol=1e-4, atol=2e-5)


def test_an_empty_vmap_axis_disable_jit_and_export_work_as_on_xla():
    check_empty_vmap_disable_jit_and_export(*_problem(*SHAPES["B3_H40_padded"]), "gru")


def test_nan_inputs_give_nan_outputs():
    cell, params, xs, state = _problem(*SHAPES["B20_H64"])
    _, ys = lj.unroll(cell, params, xs.at[3, 5, 0].set(jnp.nan), state)
    assert not np.isnan(np.asarray(ys[:3])).any()
    assert np.isnan(np.asarray(ys[3:, 5])).all(), "the sequence with the NaN input must be NaN from there on"
    assert not np.isnan(np.asarray(ys[:, 4])).any(), "other sequences are independent of it"


def test_remat_runs_one_kernel_pair_per_chunk_with_the_plain_gradient():
    check_remat_per_chunk(*_problem(*SHAPES["B20_H64"]), "gru", chunk=5)


@pytest.mark.parametrize("case", ["float64", "resets", "below_threshold", "with_internals", "lstm"])
def test_lj_unroll_uses_the_xla_path_where_the_kernel_does_not_apply(case):
    check_xla_path_where_the_kernel_does_not_apply(case, lambda hidden: _problem(6, (4,), 3, hidden), "gru",
                                                   _native_gru.MIN_HIDDEN_SIZE, lj.lstm(64))


def test_kernel_refuses_inconsistent_shapes_by_name():
    """The custom calls check their buffers themselves (the wrappers never send such shapes)."""
    forward = jax.jit(lambda *a: jax.ffi.ffi_call(_native_gru.TARGETS["gru_forward"], [
        jax.ShapeDtypeStruct((2, 4, 32), jnp.float32), jax.ShapeDtypeStruct((2, 4, 96), jnp.float32),
        jax.ShapeDtypeStruct((2, 4, 32), jnp.float32)])(*a, threads=np.int32(1), save=np.int32(1)))
    xz, valid, w_h, b_hn, h0 = (jnp.zeros((2, 4, 96)), jnp.ones((2, 4), jnp.uint8), jnp.zeros((32, 96)),
                                jnp.zeros(32), jnp.zeros((4, 32)))
    with pytest.raises(Exception, match=r"b_hn has shape \(33,\) but must be \(H,\) = \(32,\)"):
        jax.block_until_ready(forward(xz, valid, w_h, jnp.zeros(33), h0))
    with pytest.raises(Exception, match=r"valid has shape \(4, 2\) but must be \(T, B\) = \(2, 4\)"):
        jax.block_until_ready(forward(xz, valid.T, w_h, b_hn, h0))
    gates = jax.ShapeDtypeStruct((2, 4, 96), jnp.float32)
    backward = jax.jit(lambda *a: jax.ffi.ffi_call(_native_gru.TARGETS["gru_backward"], [
        gates, gates, jax.ShapeDtypeStruct((4, 32), jnp.float32)])(*a, threads=np.int32(1)))
    hidden = jnp.zeros((2, 4, 32))
    with pytest.raises(Exception, match=r"hn has shape \(2, 4, 96\) but must be \(T, B, H\) = \(2, 4, 32\)"):
        jax.block_until_ready(backward(w_h, xz, xz, hidden, h0, valid, hidden))
