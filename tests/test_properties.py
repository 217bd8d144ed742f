"""Property-based tests (hypothesis) over sizes, batch shapes and lengths, for every cell family."""

import jax
import jax.numpy as jnp
import numpy as np
from cells import CELL_FACTORIES, python_loop
from helpers import assert_trees_all_close
from hypothesis import given, settings
from hypothesis import strategies as st

import lstmjax as lj

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)


@st.composite
def problems(draw):
    family = draw(st.sampled_from(sorted(CELL_FACTORIES)))
    hidden, inputs = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    steps = draw(st.integers(1, 8))
    batch_shape = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    lengths = np.asarray(draw(st.lists(st.integers(0, steps), min_size=int(np.prod(batch_shape)),
                                       max_size=int(np.prod(batch_shape)))), dtype=np.int32).reshape(batch_shape)
    seed = draw(st.integers(0, 2 ** 16))
    cell = CELL_FACTORIES[family](hidden)
    key_params, _ = jax.random.split(jax.random.PRNGKey(seed))
    params = cell.init(key_params, inputs)
    # standard normal inputs from NumPy: jax.random.normal would compile a program for every new shape
    xs = jnp.asarray(np.random.default_rng(seed).standard_normal((steps, *batch_shape, inputs), np.float32))
    return cell, params, xs, lengths, draw(st.booleans())


@SETTINGS
@given(problems())
def test_lengths_equal_truncation_for_any_shape(problem):
    cell, params, xs, lengths, reverse = problem
    final, ys = lj.unroll(cell, params, xs, lengths=lengths, reverse=reverse)
    batch_shape = lengths.shape
    assert ys.shape == (xs.shape[0], *batch_shape, cell.hidden_size)
    for index in np.ndindex(*batch_shape):
        length = int(lengths[index])
        sequence = xs[(slice(0, length), *index)]
        zero = cell.initial_state(params)
        if reverse:
            want_final, want_ys = python_loop(cell, params, sequence[::-1], zero)
            want_ys = want_ys[::-1]
        else:
            want_final, want_ys = python_loop(cell, params, sequence, zero)
        assert_trees_all_close(jax.tree_util.tree_map(lambda a: a[index], final), want_final, atol=1e-5)
        assert_trees_all_close(ys[(slice(0, length), *index)], want_ys, atol=1e-5)
        assert not bool(jnp.any(ys[(slice(length, None), *index)]))


@SETTINGS
@given(problems())
def test_vmap_over_the_first_batch_axis_equals_the_batched_call(problem):
    cell, params, xs, lengths, reverse = problem
    if lengths.ndim == 0:
        return
    batched = lj.unroll(cell, params, xs, lengths=lengths, reverse=reverse)
    vmapped = jax.vmap(lambda x, n: lj.unroll(cell, params, x, lengths=n, reverse=reverse),
                       in_axes=(1, 0), out_axes=(0, 1))(xs, lengths)
    assert_trees_all_close(vmapped, batched, atol=1e-5)
