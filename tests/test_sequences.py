"""Variable lengths, gaps, episode resets and reverse: each equals running the pieces by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cells import CELL_FACTORIES, python_loop, random_inputs, random_state
from helpers import assert_trees_all_close

import lstmjax as lj

LENGTHS = np.array([0, 3, 7, 5])  # includes 0 and T
STEPS = 7


@pytest.fixture(params=sorted(CELL_FACTORIES))
def cell(request):
    return CELL_FACTORIES[request.param](5)


def _example(cell, batch=4):
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = random_inputs(1, (STEPS, batch, 3))
    state = random_state(cell, params, 2, (batch,))
    return params, xs, state


def _take(tree, b):
    return jax.tree_util.tree_map(lambda a: a[b], tree)


def _reverse_loop(cell, params, xs, state):
    final, ys = python_loop(cell, params, xs[::-1], state)
    return final, ys[::-1]


@pytest.mark.parametrize("reverse", [False, True])
def test_lengths_equal_truncated_sequences(cell, reverse):
    params, xs, state = _example(cell)
    final, ys = lj.unroll(cell, params, xs, state, lengths=LENGTHS, reverse=reverse)
    reference = _reverse_loop if reverse else python_loop
    for b, length in enumerate(LENGTHS):
        want_final, want_ys = reference(cell, params, xs[:length, b], _take(state, b))
        assert_trees_all_close(_take(final, b), want_final, atol=1e-6)
        assert_trees_all_close(ys[:length, b], want_ys, atol=1e-6)
        assert not bool(jnp.any(ys[length:, b])), "outputs past the end must be zero"


def test_lengths_under_jit_equal_concrete(cell):
    params, xs, state = _example(cell)
    jitted = jax.jit(lambda lengths: lj.unroll(cell, params, xs, state, lengths=lengths, reverse=True))
    assert_trees_all_close(jitted(jnp.asarray(LENGTHS)),
                           lj.unroll(cell, params, xs, state, lengths=LENGTHS, reverse=True))


def test_full_lengths_equal_no_lengths(cell):
    params, xs, state = _example(cell)
    full = np.full(4, STEPS)
    assert_trees_all_close(lj.unroll(cell, params, xs, state, lengths=full), lj.unroll(cell, params, xs, state))


MASK = np.array([[1, 1, 0, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 1, 1, 0]],
                dtype=bool).T  # (T, batch)


@pytest.mark.parametrize("reverse", [False, True])
def test_mask_equals_dropping_the_masked_steps(cell, reverse):
    params, xs, state = _example(cell)
    final, ys = lj.unroll(cell, params, xs, state, reverse=reverse, mask=MASK)
    reference = _reverse_loop if reverse else python_loop
    for b in range(4):
        kept = np.flatnonzero(MASK[:, b])
        want_final, want_ys = reference(cell, params, xs[kept, b], _take(state, b))
        assert_trees_all_close(_take(final, b), want_final, atol=1e-6)
        assert_trees_all_close(ys[kept, b], want_ys, atol=1e-6)
        assert not bool(jnp.any(ys[~MASK[:, b], b])), "outputs of masked steps must be zero"


RESETS = np.array([[0, 0, 1, 0, 0, 1, 0], [1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 1]],
                  dtype=bool).T  # (T, batch)


def _episodes(resets_b):
    starts = [0] + [t for t in np.flatnonzero(resets_b) if t > 0] + [len(resets_b)]
    return [(a, b) for a, b in zip(starts[:-1], starts[1:])]


@pytest.mark.parametrize("reverse", [False, True])
def test_resets_equal_separate_episodes(cell, reverse):
    params, xs, state = _example(cell)
    final, ys = lj.unroll(cell, params, xs, state, reverse=reverse, resets=RESETS)
    reference = _reverse_loop if reverse else python_loop
    for b in range(4):
        episodes = _episodes(RESETS[:, b])
        for start, stop in episodes:
            want_final, want_ys = reference(cell, params, xs[start:stop, b], _take(state, b))
            assert_trees_all_close(ys[start:stop, b], want_ys, atol=1e-6)
        last_episode = episodes[0] if reverse else episodes[-1]
        want_final, _ = reference(cell, params, xs[slice(*last_episode), b], _take(state, b))
        assert_trees_all_close(_take(final, b), want_final, atol=1e-6)


def test_resets_with_lengths(cell):
    params, xs, state = _example(cell)
    final, ys = lj.unroll(cell, params, xs, state, lengths=LENGTHS, resets=RESETS)
    for b, length in enumerate(LENGTHS):
        pieces = [(start, min(stop, length)) for start, stop in _episodes(RESETS[:, b]) if start < length]
        for start, stop in pieces:
            _, want_ys = python_loop(cell, params, xs[start:stop, b], _take(state, b))
            assert_trees_all_close(ys[start:stop, b], want_ys, atol=1e-6)
        if pieces:
            want_final, _ = python_loop(cell, params, xs[slice(*pieces[-1]), b], _take(state, b))
            assert_trees_all_close(_take(final, b), want_final, atol=1e-6)


def test_bidirectional_respects_lengths(cell):
    params = lj.init_bidirectional(cell, jax.random.PRNGKey(0), 3)
    xs = random_inputs(1, (STEPS, 4, 3))
    final, ys = lj.unroll_bidirectional(cell, params, xs, lengths=LENGTHS)
    assert ys.shape == (STEPS, 4, 10)
    for b, length in enumerate(LENGTHS):
        zero = cell.initial_state(params.forward)
        forward_final, forward_ys = python_loop(cell, params.forward, xs[:length, b], zero)
        backward_final, backward_ys = _reverse_loop(cell, params.backward, xs[:length, b], zero)
        assert_trees_all_close(_take(final.forward, b), forward_final, atol=1e-6)
        assert_trees_all_close(_take(final.backward, b), backward_final, atol=1e-6)
        assert_trees_all_close(ys[:length, b], jnp.concatenate([forward_ys, backward_ys], -1),
                               atol=1e-6)
        assert not bool(jnp.any(ys[length:, b]))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_layers_equal_composed_unrolls(bidirectional):
    cells = [lj.lstm(5), lj.gru(4), lj.rnn(6)]
    params = lj.init_layers(cells, jax.random.PRNGKey(0), 3, bidirectional=bidirectional)
    xs = random_inputs(1, (STEPS, 4, 3))
    finals, ys = lj.unroll_layers(cells, params, xs, lengths=LENGTHS, bidirectional=bidirectional)
    layer_input = xs
    for cell, layer_params, final in zip(cells, params, finals):
        if bidirectional:
            want_final, layer_input = lj.unroll_bidirectional(cell, layer_params, layer_input, lengths=LENGTHS)
        else:
            want_final, layer_input = lj.unroll(cell, layer_params, layer_input, lengths=LENGTHS)
        assert_trees_all_close(final, want_final)
    assert_trees_all_close(ys, layer_input)
    assert ys.shape == (STEPS, 4, 12 if bidirectional else 6)


def test_dropout_between_layers_only():
    cells = [lj.lstm(8)] * 2
    params = lj.init_layers(cells, jax.random.PRNGKey(0), 3)
    xs = random_inputs(1, (STEPS, 4, 3))
    plain = lj.unroll_layers(cells, params, xs)
    key = jax.random.PRNGKey(5)
    dropped = lj.unroll_layers(cells, params, xs, dropout_rate=0.5, dropout_key=key)
    assert_trees_all_close(lj.unroll_layers(cells, params, xs, dropout_rate=0.5, dropout_key=key), dropped)
    assert not np.allclose(dropped[1], plain[1], atol=1e-3), "dropout must change the second layer's input"
    assert_trees_all_close(dropped[0][0], plain[0][0]), "the first layer itself sees no dropout"
    other = lj.unroll_layers(cells, params, xs, dropout_rate=0.5, dropout_key=jax.random.PRNGKey(6))
    assert not np.allclose(other[1], dropped[1], atol=1e-3)
    single = lj.unroll_layers(cells[:1], params[:1], xs, dropout_rate=0.5, dropout_key=key)
    assert_trees_all_close(single, lj.unroll_layers(cells[:1], params[:1], xs)), "no dropout after the last layer"


def test_dropout_keeps_the_mean():
    """Dropped elements are zero and kept ones are scaled by 1/(1-rate), as in nn.LSTM(dropout)."""
    cells = [lj.rnn(64, activation="relu"), lj.rnn(64)]
    params = lj.init_layers(cells, jax.random.PRNGKey(0), 3)
    identity = lj.RNNParams(w_x=jnp.eye(64), w_h=jnp.zeros((64, 64)), b=jnp.zeros(64))
    params = (params[0]._replace(b=jnp.ones(64), w_x=jnp.zeros((3, 64)), w_h=jnp.zeros((64, 64))), identity)
    xs = jnp.zeros((50, 4, 3))
    cells = [cells[0], lj.rnn(64, activation="relu")]
    _, ys = lj.unroll_layers(cells, params, xs, dropout_rate=0.25, dropout_key=jax.random.PRNGKey(1))
    values = np.unique(np.round(np.asarray(ys), 5))
    np.testing.assert_allclose(values, [0.0, 1 / 0.75], rtol=1e-5)
    assert abs(float(jnp.mean(ys == 0)) - 0.25) < 0.02
