"""The StatQuest video's LSTM unit (DESIGN.md §6): hand-checkable numbers."""

import math

import jax
import jax.numpy as jnp
import pytest

import lstmjax as lj

# gate: (weight on short-term memory h, weight on input x, bias)
VIDEO = {"f": (2.70, 1.63, 1.62), "i": (2.00, 1.65, 0.62), "g": (1.41, 0.94, -0.32), "o": (4.38, -0.19, 0.59)}
ORDER = ("i", "f", "g", "o")
PARAMS = lj.LSTMParams(w_x=jnp.array([[VIDEO[k][1] for k in ORDER]]), w_h=jnp.array([[VIDEO[k][0] for k in ORDER]]),
                       b=jnp.array([VIDEO[k][2] for k in ORDER]))
UNIT = lj.lstm(hidden_size=1)


def _by_hand(c, h, x):
    """The video's arithmetic with Python floats, independent of lstmjax and JAX."""
    def gate(k):
        return VIDEO[k][0] * h + VIDEO[k][1] * x + VIDEO[k][2]
    def sigmoid(z):
        return 1 / (1 + math.exp(-z))
    c = sigmoid(gate("f")) * c + sigmoid(gate("i")) * math.tanh(gate("g"))
    return c, sigmoid(gate("o")) * math.tanh(c)


def test_single_step_from_the_video():
    state, h = UNIT.step(PARAMS, lj.LSTMState(h=jnp.array([1.0]), c=jnp.array([2.0])), jnp.array([1.0]))
    assert float(state.c[0]) == pytest.approx(2.947567, abs=2e-6)
    assert float(h[0]) == pytest.approx(0.986229, abs=2e-6)
    want_c, want_h = _by_hand(2.0, 1.0, 1.0)
    assert float(state.c[0]) == pytest.approx(want_c, abs=1e-6)
    assert float(h[0]) == pytest.approx(want_h, abs=1e-6)


@pytest.mark.parametrize("days, want_c, want_h", [([0.0, 0.5, 0.25, 1.0], 0.015270, 0.006393),
                                                  ([1.0, 0.5, 0.25, 1.0], 2.409093, 0.969393)], ids=["A", "B"])
def test_companies_after_day_four(days, want_c, want_h):
    final, hs = lj.unroll(UNIT, PARAMS, jnp.array(days)[:, None])
    assert float(final.c[0]) == pytest.approx(want_c, abs=2e-6)
    assert float(hs[-1, 0]) == pytest.approx(want_h, abs=2e-6)
    c = h = 0.0
    for t, x in enumerate(days):
        c, h = _by_hand(c, h, x)
        assert float(hs[t, 0]) == pytest.approx(h, abs=1e-6)


def test_both_companies_in_one_batch():
    xs = jnp.array([[0.0, 0.5, 0.25, 1.0], [1.0, 0.5, 0.25, 1.0]]).T[:, :, None]  # (T=4, B=2, 1)
    final, _ = lj.unroll(UNIT, PARAMS, xs)
    assert [round(float(v), 6) for v in final.h[:, 0]] == pytest.approx([0.006393, 0.969393], abs=2e-6)


def test_vanilla_rnn_feedback_weight_powers():
    """A linear scalar RNN's feedback weight multiplies 50 times: 2^50 and 0.5^50 (float64)."""
    with jax.enable_x64(True):
        for weight, want in ((2.0, 1_125_899_906_842_624.0), (0.5, 0.5 ** 50)):
            params = lj.RNNParams(w_x=jnp.zeros((1, 1)), w_h=jnp.array([[weight]]), b=jnp.zeros(1))
            cell = lj.rnn(1, activation="relu")  # linear for h >= 0, so h_50 = weight^50 · h_0
            grad = jax.grad(lambda h0: lj.unroll(cell, params, jnp.zeros((50, 1)), h0)[0][0])(jnp.array([1.0]))
            assert float(grad[0]) == want
