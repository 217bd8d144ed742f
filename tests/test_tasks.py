"""Task generators have the statistics their definitions state."""

import jax
import numpy as np
import pytest

import lstmjax as lj


def test_arjovsky_adding_problem_definition_and_baseline():
    xs, targets = lj.adding_problem(jax.random.PRNGKey(0), 20000, 40)
    xs, targets = np.asarray(xs), np.asarray(targets)
    values, markers = xs[..., 0], xs[..., 1]
    assert xs.shape == (40, 20000, 2) and targets.shape == (20000,)
    assert values.min() >= 0 and values.max() <= 1
    np.testing.assert_array_equal(markers[:20].sum(0), 1)  # one marker in each half
    np.testing.assert_array_equal(markers[20:].sum(0), 1)
    np.testing.assert_allclose(targets, (values * markers).sum(0), rtol=1e-6)
    baseline = np.mean((targets - targets.mean()) ** 2)
    assert baseline == pytest.approx(lj.ADDING_BASELINE_MSE, rel=0.03)
    positions = np.argmax(markers[:20], axis=0)
    assert abs(positions.mean() - 9.5) < 0.2  # uniform over the first half


def test_hochreiter_adding_problem_definition():
    length = 30
    xs, targets = lj.adding_problem(jax.random.PRNGKey(1), 20000, length, form="hochreiter")
    xs, targets = np.asarray(xs), np.asarray(targets)
    values, markers = xs[..., 0], xs[..., 1]
    assert values.min() >= -1 and values.max() <= 1
    marked = markers == 1.0
    np.testing.assert_array_equal(marked.sum(0), 2)
    first, second = np.argmax(marked, axis=0), length - 1 - np.argmax(marked[::-1], axis=0)
    assert first.max() <= 9  # X1 is among the first ten steps
    assert second.max() <= length // 2 - 2  # X2 among the first T/2 - 1
    assert np.all(marked[:length // 2 - 1].sum(0) == 2)  # both among the first T/2 - 1
    ends = ~marked[0]
    np.testing.assert_array_equal(markers[0][ends], -1.0)
    np.testing.assert_array_equal(markers[-1], -1.0)
    np.testing.assert_array_equal(values[0][marked[0]], 0.0)
    np.testing.assert_allclose(targets, 0.5 + (values * marked).sum(0) / 4, rtol=1e-6)
    assert 0.0 <= targets.min() and targets.max() <= 1.0


def test_adding_problem_is_keyed_and_jittable():
    make = jax.jit(lj.adding_problem, static_argnums=(1, 2, 3))
    a = make(jax.random.PRNGKey(3), 8, 16, "arjovsky")
    np.testing.assert_array_equal(a.xs, lj.adding_problem(jax.random.PRNGKey(3), 8, 16).xs)
    assert not np.array_equal(a.xs, make(jax.random.PRNGKey(4), 8, 16, "arjovsky").xs)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"form": "copy"}, r"form must be one of \('arjovsky', 'hochreiter'\), got 'copy'"),
    ({"length": 1}, r"length must be at least 2 for the arjovsky form, got 1"),
    ({"length": 11, "form": "hochreiter"}, r"length must be at least 12 for the hochreiter form, got 11"),
    ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
])
def test_bad_arguments(kwargs, pattern):
    arguments = {"key": jax.random.PRNGKey(0), "batch_size": 4, "length": 20, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        lj.adding_problem(**arguments)
