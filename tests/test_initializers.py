"""Initialisation presets and the forget-gate bias (distribution checks against PyTorch live in
test_torch_reference.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstmjax as lj

KEY = jax.random.PRNGKey(0)


def test_default_lstm_writes_forget_bias_one_and_zeros_elsewhere():
    b = lj.lstm(4).init(KEY, 3).b
    np.testing.assert_array_equal(b, np.r_[np.zeros(4), np.ones(4), np.zeros(8)])


@pytest.mark.parametrize("init", lj.INIT_PRESETS)
def test_explicit_forget_bias_is_written_into_the_forget_block(init):
    b = lj.lstm(4, forget_bias=2.5, init=init).init(KEY, 3).b
    np.testing.assert_array_equal(b[4:8], 2.5)
    b_preset = lj.lstm(4, init=init).init(KEY, 3).b
    np.testing.assert_array_equal(b[:4], b_preset[:4])
    np.testing.assert_array_equal(b[8:], b_preset[8:])


def test_pytorch_and_flax_presets_add_no_forget_offset():
    assert abs(float(jnp.mean(lj.lstm(256, init="pytorch").init(KEY, 8).b[256:512]))) < 0.01
    np.testing.assert_array_equal(lj.lstm(16, init="flax").init(KEY, 8).b, 0.0)


@pytest.mark.parametrize("factory", [lj.lstm, lj.gru, lj.rnn])
@pytest.mark.parametrize("init", lj.INIT_PRESETS)
def test_init_is_deterministic_in_the_key_and_respects_dtype(factory, init):
    cell = factory(6, init=init)
    first, again, other = cell.init(KEY, 3), cell.init(KEY, 3), cell.init(jax.random.PRNGKey(1), 3)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    for drawn in ("w_x", "w_h"):
        assert not np.array_equal(getattr(first, drawn), getattr(other, drawn))
    with jax.enable_x64(True):
        assert all(leaf.dtype == jnp.float64 for leaf in cell.init(KEY, 3, dtype=jnp.float64))


def test_flax_recurrent_blocks_are_orthogonal_and_lecun_scaled_input():
    params = lj.lstm(32, init="flax").init(KEY, 400)
    for block in np.split(np.asarray(params.w_h), 4, axis=1):
        np.testing.assert_allclose(block.T @ block, np.eye(32), atol=1e-5)
    assert abs(float(jnp.var(params.w_x)) * 400 - 1.0) < 0.05  # lecun normal: variance 1/fan_in


def test_keras_recurrent_matrix_has_orthonormal_rows_and_glorot_input():
    params = lj.lstm(16, init="keras").init(KEY, 200)
    w_h = np.asarray(params.w_h)
    np.testing.assert_allclose(w_h @ w_h.T, np.eye(16), atol=1e-5)
    bound = np.sqrt(6 / (200 + 64))
    assert float(jnp.max(jnp.abs(params.w_x))) <= bound
    assert abs(float(jnp.var(params.w_x)) / (bound ** 2 / 3) - 1) < 0.05


def test_custom_init_scheme():
    scheme = lj.InitScheme(input_kernel=jax.nn.initializers.ones, recurrent_kernel=jax.nn.initializers.zeros,
                           bias=jax.nn.initializers.constant(0.5), recurrent_bias=jax.nn.initializers.constant(0.25),
                           forget_bias=None, recurrent_per_gate=False)
    params = lj.gru(2, init=scheme).init(KEY, 3)
    np.testing.assert_array_equal(params.w_x, 1.0)
    np.testing.assert_array_equal(params.w_h, 0.0)
    np.testing.assert_array_equal(params.b, [0.75, 0.75, 0.75, 0.75, 0.5, 0.5])  # r, z hold both biases
    np.testing.assert_array_equal(params.b_hn, 0.25)
