"""Bad input gets a ValueError that names the argument, what was received and what was expected."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstmjax as lj

CELL = lj.lstm(4)
PARAMS = CELL.init(jax.random.PRNGKey(0), 3)
XS = jnp.ones((5, 2, 3))


@pytest.mark.parametrize("call, pattern", [
    (lambda: lj.unroll(CELL, PARAMS, jnp.ones((5, 2, 7))),
     r"xs of shape \(5, 2, 7\).*input_size=3.*got shape \(2, 7\)"),
    (lambda: lj.unroll(CELL, PARAMS, jnp.ones(3)), r"xs must have shape \(T, \*batch, input_size\), got shape \(3,\)"),
    (lambda: lj.unroll(CELL, PARAMS, jnp.ones((5, 2, 3), jnp.int32)), r"floating dtype, got int32"),
    (lambda: lj.unroll(CELL, PARAMS, XS, lj.LSTMState(jnp.zeros((3, 4)), jnp.zeros((3, 4)))),
     r"state\.h must have shape \(2, 4\).*or \(4,\).*got shape \(3, 4\)"),
    (lambda: lj.unroll(CELL, PARAMS, XS, jnp.zeros((2, 4))), r"state must have the structure"),
    (lambda: lj.unroll(CELL, PARAMS, XS, lengths=np.array([1, 2, 3])),
     r"lengths must have the batch shape of xs, \(2,\), got shape \(3,\)"),
    (lambda: lj.unroll(CELL, PARAMS, XS, lengths=np.array([1.0, 2.0])),
     r"lengths must have an integer dtype, got float"),
    (lambda: lj.unroll(CELL, PARAMS, XS, lengths=np.array([6, 2])),
     r"lengths must lie in \[0, T=5\], got values from 2 to 6"),
    (lambda: lj.unroll(CELL, PARAMS, XS, lengths=np.array([-1, 2])), r"lengths must lie in \[0, T=5\]"),
    (lambda: lj.unroll(CELL, PARAMS, XS, mask=np.ones((5, 3), bool)),
     r"mask must have shape \(T, \*batch\) = \(5, 2\), got shape \(5, 3\)"),
    (lambda: lj.unroll(CELL, PARAMS, XS, mask=np.ones((5, 2))), r"mask must have dtype bool, got float"),
    (lambda: lj.unroll(CELL, PARAMS, XS, resets=np.ones((2, 5), bool)),
     r"resets must have shape \(T, \*batch\) = \(5, 2\)"),
    (lambda: lj.unroll("lstm", PARAMS, XS), r"cell must be an lj.Cell"),
    (lambda: lj.unroll(lj.lstm(5), PARAMS, XS),
     r"params\.w_x of the LSTM cell must have shape \(3, 20\), got shape \(3, 16\)"),
    (lambda: lj.unroll(lj.gru(4), PARAMS, XS), r"params must be an lj.GRUParams, got LSTMParams"),
    (lambda: CELL.step(PARAMS, CELL.initial_state(PARAMS), jnp.ones((2, 3))),
     r"state\.h must have shape .* \(2, 4\).*got shape \(4,\)"),
    (lambda: CELL.step(PARAMS, CELL.initial_state(PARAMS), jnp.ones(2)),
     r"x must have shape \(\.\.\., input_size=3\).*got shape \(2,\)"),
    (lambda: lj.rnn(4).step(lj.rnn(4).init(jax.random.PRNGKey(0), 3), jnp.zeros(5), jnp.ones(3)),
     r"state must have shape .*\(4,\).*got shape \(5,\)"),
    (lambda: lj.lstm(0), r"hidden_size must be a positive integer, got 0"),
    (lambda: lj.lstm(2.5), r"hidden_size must be a positive integer, got 2.5"),
    (lambda: CELL.init(jax.random.PRNGKey(0), 0), r"input_size must be a positive integer, got 0"),
    (lambda: lj.lstm(4, init="torch"), r"init must be one of \('default', 'pytorch', 'flax', 'keras'\).*got 'torch'"),
    (lambda: lj.rnn(4, activation="sigmoid"), r"activation must be one of \('tanh', 'relu', 'linear'\), got 'sigmoid'"),
    (lambda: lj.unroll_layers([CELL] * 2, lj.init_layers([CELL] * 2, jax.random.PRNGKey(0), 3), XS, dropout_rate=0.3),
     r"dropout_key is required when dropout_rate > 0"),
    (lambda: lj.unroll_layers([CELL], (PARAMS,), XS, dropout_rate=1.0, dropout_key=jax.random.PRNGKey(0)),
     r"dropout_rate must lie in \[0, 1\), got 1.0"),
    (lambda: lj.unroll_layers(CELL, (PARAMS,), XS), r"cells must be a sequence of lj.Cell"),
    (lambda: lj.unroll_layers([CELL, CELL], (PARAMS,), XS), r"params must have one entry per layer \(2 cells\), got 1"),
    (lambda: lj.unroll_bidirectional(CELL, PARAMS, XS), r"params must be an lj.Bidirectional"),
], ids=lambda value: "" if callable(value) else value[:40])
def test_bad_input_raises_a_clear_error(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def test_traced_lengths_are_checked_for_shape():
    with pytest.raises(ValueError, match=r"lengths must have the batch shape"):
        jax.jit(lambda lengths: lj.unroll(CELL, PARAMS, XS, lengths=lengths))(jnp.array([1, 2, 3]))


def test_unbatched_state_is_broadcast_on_purpose():
    state = lj.LSTMState(h=jnp.full(4, 0.3), c=jnp.full(4, -0.1))
    batched = lj.LSTMState(h=jnp.full((2, 4), 0.3), c=jnp.full((2, 4), -0.1))
    np.testing.assert_array_equal(lj.unroll(CELL, PARAMS, XS, state)[1], lj.unroll(CELL, PARAMS, XS, batched)[1])
