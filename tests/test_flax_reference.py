"""Outputs equal Flax Linen's own cells (`nn.OptimizedLSTMCell`, `nn.GRUCell`, `nn.SimpleCell`)
run by `nn.RNN` with the same weights, including `seq_lengths` and reverse."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_all_close

import lstmjax as lj

INPUT, HIDDEN, STEPS, BATCH = 3, 4, 9, 5
LENGTHS = np.array([9, 4, 1, 7, 9])


def _split(w, parts):
    return np.split(np.asarray(w), parts, axis=-1)


def lstm_to_flax(params: lj.LSTMParams) -> dict:
    names = ("i", "f", "g", "o")  # lstmjax's gate order
    w_x, w_h, b = _split(params.w_x, 4), _split(params.w_h, 4), _split(params.b, 4)
    flax_params = {f"i{n}": {"kernel": w_x[k]} for k, n in enumerate(names)}
    flax_params.update({f"h{n}": {"kernel": w_h[k], "bias": b[k]} for k, n in enumerate(names)})
    return {"params": flax_params}


def gru_to_flax(params: lj.GRUParams) -> dict:
    (wxr, wxz, wxn), (whr, whz, whn), (br, bz, bn) = _split(params.w_x, 3), _split(params.w_h, 3), _split(params.b, 3)
    return {"params": {"ir": {"kernel": wxr, "bias": br}, "iz": {"kernel": wxz, "bias": bz},
                       "in": {"kernel": wxn, "bias": bn}, "hr": {"kernel": whr}, "hz": {"kernel": whz},
                       "hn": {"kernel": whn, "bias": np.asarray(params.b_hn)}}}


def rnn_to_flax(params: lj.RNNParams) -> dict:
    return {"params": {"i": {"kernel": params.w_x, "bias": params.b}, "h": {"kernel": params.w_h}}}


CASES = {
    "lstm": (lambda: lj.lstm(HIDDEN), lambda: nn.OptimizedLSTMCell(HIDDEN), lstm_to_flax,
             lambda carry: lj.LSTMState(h=carry[1], c=carry[0])),
    "gru": (lambda: lj.gru(HIDDEN), lambda: nn.GRUCell(HIDDEN), gru_to_flax, lambda carry: carry),
    "rnn": (lambda: lj.rnn(HIDDEN), lambda: nn.SimpleCell(HIDDEN), rnn_to_flax, lambda carry: carry),
}


def _random_params(cell, seed):
    """Nonzero everywhere (biases too), so every weight matters."""
    params = cell.init(jax.random.PRNGKey(seed), INPUT)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(params))
    return type(params)(*[p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(params, keys)])


@pytest.mark.parametrize("family", sorted(CASES))
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_equals_flax_nn_rnn(family, reverse, with_lengths):
    make_cell, make_flax_cell, to_flax, carry_to_state = CASES[family]
    cell = make_cell()
    params = _random_params(cell, 0)
    xs = jax.random.normal(jax.random.PRNGKey(7), (STEPS, BATCH, INPUT))
    lengths = LENGTHS if with_lengths else None
    final, ys = lj.unroll(cell, params, xs, lengths=lengths, reverse=reverse)

    flax_rnn = nn.RNN(make_flax_cell(), time_major=True, reverse=reverse, keep_order=True, return_carry=True)
    seq_lengths = None if lengths is None else jnp.asarray(lengths)
    carry, flax_ys = flax_rnn.apply({"params": {"cell": to_flax(params)["params"]}}, xs, seq_lengths=seq_lengths)
    valid = (np.arange(STEPS)[:, None] < (LENGTHS if with_lengths else STEPS))[..., None]
    assert_trees_all_close(ys * valid, flax_ys * valid, atol=1e-5)
    assert_trees_all_close(final, carry_to_state(carry), atol=1e-5)
