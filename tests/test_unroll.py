"""`lj.unroll` equals a Python loop, vmap equals the batched call, for every cell family."""

import jax
import jax.numpy as jnp
import pytest
from cells import CELL_FACTORIES, python_loop, random_inputs, random_state
from helpers import assert_trees_all_close

import lstmjax as lj


@pytest.fixture(params=sorted(CELL_FACTORIES))
def cell(request):
    return CELL_FACTORIES[request.param](5)


def test_scan_equals_python_loop(cell):
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = random_inputs(1, (9, 4, 3))
    state = random_state(cell, params, 2, (4,))
    assert_trees_all_close(lj.unroll(cell, params, xs, state), python_loop(cell, params, xs, state), atol=1e-6)


def test_default_state_is_zeros(cell):
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = random_inputs(1, (6, 2, 3))
    assert_trees_all_close(lj.unroll(cell, params, xs),
                           lj.unroll(cell, params, xs, cell.initial_state(params, (2,))))


def test_any_leading_batch_shape(cell):
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = random_inputs(1, (5, 2, 3, 3))
    final, ys = lj.unroll(cell, params, xs)
    flat_final, flat_ys = lj.unroll(cell, params, xs.reshape(5, 6, 3))
    assert_trees_all_close((final, ys), jax.tree_util.tree_map(
        lambda a: a.reshape(*a.shape[:-2], 2, 3, a.shape[-1]), (flat_final, flat_ys)))


def test_vmap_equals_batched_equals_loop_over_examples(cell):
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = random_inputs(1, (7, 4, 3))
    state = random_state(cell, params, 2, (4,))
    batched = lj.unroll(cell, params, xs, state)
    vmapped = jax.vmap(lambda x, s: lj.unroll(cell, params, x, s), in_axes=(1, 0), out_axes=(0, 1))(xs, state)
    assert_trees_all_close(vmapped, batched, atol=1e-6)
    for b in range(4):
        single_state = jax.tree_util.tree_map(lambda a: a[b], state)
        final_b, ys_b = lj.unroll(cell, params, xs[:, b], single_state)
        expected = (jax.tree_util.tree_map(lambda a: a[b], batched[0]), batched[1][:, b])
        assert_trees_all_close((final_b, ys_b), expected, atol=1e-6)


def test_jit_equals_eager(cell):
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = random_inputs(1, (8, 2, 3))
    jitted = jax.jit(lambda p, x: lj.unroll(cell, p, x))
    assert_trees_all_close(jitted(params, xs), lj.unroll(cell, params, xs), atol=1e-6)


def test_shared_weights_serve_any_length(cell):
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = random_inputs(1, (20, 3))
    for steps in (1, 7, 20):
        final, ys = lj.unroll(cell, params, xs[:steps])
        assert_trees_all_close((final, ys), python_loop(cell, params, xs[:steps], cell.initial_state(params)))


def test_zero_length_sequence_returns_initial_state(cell):
    params = cell.init(jax.random.PRNGKey(0), 3)
    state = random_state(cell, params, 2, (2,))
    final, ys = lj.unroll(cell, params, jnp.zeros((0, 2, 3)), state)
    assert ys.shape == (0, 2, 5)
    assert_trees_all_close(final, state)


def test_internals_match_outputs_and_states(cell):
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = random_inputs(1, (6, 2, 3))
    final, ys, internals = lj.unroll_with_internals(cell, params, xs)
    assert_trees_all_close((final, ys), lj.unroll(cell, params, xs))
    assert_trees_all_close(internals.h, ys)


def test_lstm_internals_are_the_equations():
    cell = lj.lstm(4)
    params = cell.init(jax.random.PRNGKey(3), 2)
    xs = random_inputs(4, (5, 3, 2))
    _, _, internals = lj.unroll_with_internals(cell, params, xs)
    c_previous = jnp.concatenate([jnp.zeros((1, 3, 4)), internals.c[:-1]])
    assert_trees_all_close(internals.c, internals.f * c_previous + internals.i * internals.g, atol=1e-6)
    assert_trees_all_close(internals.h, internals.o * jnp.tanh(internals.c), atol=1e-6)
    for gate in (internals.i, internals.f, internals.o):
        assert bool(jnp.all((gate > 0) & (gate < 1)))


def test_output_is_a_function_of_the_state(cell):
    params = cell.init(jax.random.PRNGKey(0), 3)
    state = random_state(cell, params, 2, (4,))
    new_state, y = cell.step(params, state, random_inputs(1, (4, 3)))
    assert_trees_all_close(cell.output(new_state), y, rtol=0, atol=0)


def test_eager_calls_on_a_built_in_cell_compile_once_and_still_check_values():
    """Outside `jit`, repeated calls with the same shapes reuse one compiled scan (and give the
    answers of the new inputs); the concrete value checks (lengths in [0, T]) still run."""
    from lstmjax._unroll import _run_compiled

    cell = lj.lstm(4)
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = jax.random.normal(jax.random.PRNGKey(1), (5, 2, 3))
    lj.unroll(cell, params, xs, lengths=jnp.array([5, 2]))
    compiled = _run_compiled._cache_size()
    again = lj.unroll(cell, params, 2.0 * xs, lengths=jnp.array([1, 3]))
    assert _run_compiled._cache_size() == compiled
    assert_trees_all_close(again, jax.jit(lambda p, xs, n: lj.unroll(cell, p, xs, lengths=n))(
        params, 2.0 * xs, jnp.array([1, 3])))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=5\], got values from 2 to 6"):
        lj.unroll(cell, params, xs, lengths=jnp.array([2, 6]))


def test_eager_calls_on_a_hand_made_cell_see_what_its_functions_read_now():
    """A cell with replaced functions is traced afresh on every eager call (never cached), so a
    step that reads changing state, or params holding a Python number, behaves as before."""
    rnn = lj.rnn(3)
    scale = [1.0]

    def as_rnn_params(params):
        return lj.RNNParams(params["w_x"], params["w_h"], params["b"])

    def step_with_internals(params, h, x):
        return rnn.step_with_internals(as_rnn_params(params), h, scale[0] * params["gain"] * x)

    cell = rnn._replace(
        initial_state=lambda params, batch_shape=(): rnn.initial_state(as_rnn_params(params), batch_shape),
        step=lambda params, h, x: step_with_internals(params, h, x)[:2], step_with_internals=step_with_internals)
    weights = rnn.init(jax.random.PRNGKey(0), 2)
    params = {"w_x": weights.w_x, "w_h": weights.w_h, "b": weights.b, "gain": 1}  # a Python int leaf
    xs = jax.random.normal(jax.random.PRNGKey(1), (4, 1, 2))
    first = lj.unroll(cell, params, xs)
    scale[0] = 2.0
    second = lj.unroll(cell, params, xs)
    assert_trees_all_close(first, lj.unroll(rnn, weights, xs), rtol=1e-6, atol=1e-6)
    assert_trees_all_close(second, lj.unroll(rnn, weights, 2.0 * xs), rtol=1e-6, atol=1e-6)
