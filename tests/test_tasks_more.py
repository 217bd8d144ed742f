"""Copy memory, temporal order and the StatQuest companies: markers where the definitions put them,
and the stated memoryless baselines on large samples."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstmjax as lj
from lstmjax._tasks import (
    TEMPORAL_ORDER_BASELINE_ACCURACY,
    TEMPORAL_ORDER_BASELINE_CROSS_ENTROPY,
    TEMPORAL_ORDER_CLASSES,
    TEMPORAL_ORDER_SYMBOLS,
    SequenceBatch,
    copy_memory,
    copy_memory_baseline,
    statquest_companies,
    temporal_order,
)

# ---------------------------------------------------------------------------------------- copy memory


def test_copy_memory_baseline_value():
    assert copy_memory_baseline(100) == pytest.approx(10 * math.log(8) / 120)
    assert round(copy_memory_baseline(100), 4) == 0.1733
    assert copy_memory_baseline(50, copy_length=5, num_symbols=4) == pytest.approx(5 * math.log(4) / 60)


def test_copy_memory_markers_and_targets():
    length, batch = 30, 4000
    xs, targets = copy_memory(jax.random.PRNGKey(0), batch, length)
    xs, targets = np.asarray(xs), np.asarray(targets)
    assert xs.shape == (length + 20, batch, 10) and xs.dtype == np.float32
    assert targets.shape == (length + 20, batch) and targets.dtype == np.int32
    np.testing.assert_array_equal(xs.sum(-1), 1.0)  # one-hot at every step
    tokens = xs.argmax(-1)
    symbols = tokens[:10]
    assert symbols.min() == 1 and symbols.max() == 8
    np.testing.assert_array_equal(tokens[10:length + 9], 0)  # T - 1 blanks
    np.testing.assert_array_equal(tokens[length + 9], 9)  # the delimiter, at step 10 + T - 1
    np.testing.assert_array_equal(tokens[length + 10:], 0)  # 10 blanks while recalling
    np.testing.assert_array_equal(targets[:length + 10], 0)  # T + 10 blanks
    np.testing.assert_array_equal(targets[length + 10:], symbols)  # then the symbols, in order
    counts = np.bincount(symbols.ravel(), minlength=9)[1:]
    np.testing.assert_allclose(counts / symbols.size, 1 / 8, atol=0.006)  # uniform over 1..8


@pytest.mark.parametrize("length", [1, 100])
def test_copy_memory_memoryless_strategy_scores_the_baseline(length):
    """Blank until the delimiter, then uniform over the 8 symbols: cross-entropy 10·ln 8 / (T + 20)."""
    _, targets = copy_memory(jax.random.PRNGKey(1), 2000, length)
    targets = np.asarray(targets)
    log_probs = np.full((length + 20, 10), -np.inf)
    log_probs[:length + 10, 0] = 0.0
    log_probs[length + 10:, 1:9] = -math.log(8)
    cross_entropy = -np.take_along_axis(log_probs, targets, axis=1).mean()
    assert cross_entropy == pytest.approx(copy_memory_baseline(length), rel=1e-12)


def test_copy_memory_options():
    xs, targets = copy_memory(jax.random.PRNGKey(2), 500, 6, copy_length=3, num_symbols=4)
    tokens = np.asarray(xs).argmax(-1)
    assert xs.shape == (12, 500, 6)
    assert set(np.unique(tokens[:3])) == {1, 2, 3, 4}
    np.testing.assert_array_equal(tokens[3 + 6 - 1], 5)
    np.testing.assert_array_equal(np.asarray(targets)[9:], tokens[:3])


def test_copy_memory_is_keyed_and_jittable():
    make = jax.jit(copy_memory, static_argnums=(1, 2, 3, 4))
    eager = copy_memory(jax.random.PRNGKey(3), 8, 12)
    np.testing.assert_array_equal(make(jax.random.PRNGKey(3), 8, 12, 10, 8).xs, eager.xs)
    np.testing.assert_array_equal(make(jax.random.PRNGKey(3), 8, 12, 10, 8).targets, eager.targets)
    np.testing.assert_array_equal(copy_memory(jax.random.PRNGKey(3), 8, 12).xs, eager.xs)
    assert not np.array_equal(copy_memory(jax.random.PRNGKey(4), 8, 12).xs, eager.xs)


# ------------------------------------------------------------------------------------- temporal order


@pytest.fixture(scope="module")
def temporal_sample():
    return jax.tree_util.tree_map(np.asarray, temporal_order(jax.random.PRNGKey(0), 10000))


def test_temporal_order_layout(temporal_sample):
    xs, targets, lengths = temporal_sample
    assert isinstance(temporal_sample, SequenceBatch)
    assert xs.shape == (110, 10000, 8) and targets.shape == (10000,) and lengths.shape == (10000,)
    assert xs.dtype == np.float32 and targets.dtype == np.int32 and lengths.dtype == np.int32
    assert TEMPORAL_ORDER_SYMBOLS == ("a", "b", "c", "d", "B", "E", "X", "Y")
    real = np.arange(110)[:, None] < lengths
    np.testing.assert_array_equal(xs.sum(-1), real.astype(np.float32))  # one-hot, zero padding


def test_temporal_order_markers_where_the_paper_puts_them(temporal_sample):
    xs, targets, lengths = temporal_sample
    symbol = {name: index for index, name in enumerate(TEMPORAL_ORDER_SYMBOLS)}
    batch = np.arange(xs.shape[1])
    tokens = np.where(xs.sum(-1) > 0, xs.argmax(-1), -1)
    np.testing.assert_array_equal(tokens[0], symbol["E"])  # starts with E (position 1)
    np.testing.assert_array_equal(tokens[lengths - 1, batch], symbol["B"])  # ends with the trigger B
    relevant = (tokens == symbol["X"]) | (tokens == symbol["Y"])
    np.testing.assert_array_equal(relevant.sum(0), 2)
    first = relevant.argmax(0)
    second = len(tokens) - 1 - relevant[::-1].argmax(0)
    # 1-based positions 10..20 and 50..60: each of the 11 positions occurs, uniformly.
    for positions, low in ((first, 9), (second, 49)):
        counts = np.bincount(positions - low, minlength=11)
        assert len(counts) == 11
        np.testing.assert_allclose(counts / len(positions), 1 / 11, atol=0.012)
    other = (np.arange(len(tokens))[:, None] < lengths - 1) & ~relevant  # neither relevant nor the trigger
    other[0] = False  # nor the E
    assert np.all(np.isin(tokens[other], [symbol[s] for s in "abcd"]))
    np.testing.assert_allclose(np.bincount(tokens[other], minlength=4)[:4] / other.sum(), 0.25, atol=0.003)
    # The class is the order of X and Y.
    names = np.array(TEMPORAL_ORDER_SYMBOLS)
    order = np.char.add(names[tokens[first, batch]], names[tokens[second, batch]])
    np.testing.assert_array_equal(np.array(TEMPORAL_ORDER_CLASSES)[targets], order)


def test_temporal_order_statistics_and_baseline(temporal_sample):
    _, targets, lengths = temporal_sample
    assert lengths.min() == 100 and lengths.max() == 110
    np.testing.assert_allclose(np.bincount(lengths - 100) / len(lengths), 1 / 11, atol=0.012)
    frequencies = np.bincount(targets, minlength=4) / len(targets)
    np.testing.assert_allclose(frequencies, TEMPORAL_ORDER_BASELINE_ACCURACY, atol=0.015)
    # The best prediction without memory, the class frequencies, scores ln 4.
    cross_entropy = -np.mean(np.log(frequencies[targets]))
    assert cross_entropy == pytest.approx(TEMPORAL_ORDER_BASELINE_CROSS_ENTROPY, abs=2e-3)
    assert TEMPORAL_ORDER_BASELINE_CROSS_ENTROPY == pytest.approx(math.log(4))


def test_temporal_order_lengths_drive_unroll():
    """The final state of `unroll(..., lengths=...)` is the state after each sequence's trigger."""
    batch = temporal_order(jax.random.PRNGKey(5), 6, min_length=61, max_length=70)
    cell = lj.rnn(hidden_size=4)
    params = cell.init(jax.random.PRNGKey(6), input_size=8)
    final, _ = lj.unroll(cell, params, batch.xs, lengths=batch.lengths)
    _, every_h = lj.unroll(cell, params, batch.xs)  # a tanh RNN's output is its state h
    np.testing.assert_allclose(final, every_h[batch.lengths - 1, jnp.arange(6)], rtol=1e-6, atol=1e-6)


def test_temporal_order_is_keyed_and_jittable():
    make = jax.jit(temporal_order, static_argnums=(1, 2, 3))
    eager = temporal_order(jax.random.PRNGKey(7), 16, 80, 90)
    jitted = make(jax.random.PRNGKey(7), 16, 80, 90)
    for got, want in zip(jitted, eager, strict=True):
        np.testing.assert_array_equal(got, want)
    assert eager.xs.shape[0] == 90 and 80 <= int(eager.lengths.min()) <= int(eager.lengths.max()) <= 90
    assert not np.array_equal(temporal_order(jax.random.PRNGKey(8), 16, 80, 90).xs, eager.xs)


def test_temporal_order_fixed_length():
    _, _, lengths = temporal_order(jax.random.PRNGKey(9), 50, 61, 61)
    np.testing.assert_array_equal(lengths, 61)


# ---------------------------------------------------------------------------------------- StatQuest


def test_statquest_companies():
    xs, targets = statquest_companies()
    assert xs.shape == (4, 2, 1) and targets.shape == (2,)
    np.testing.assert_array_equal(xs[:, 0, 0], [0.0, 0.5, 0.25, 1.0])  # Company A
    np.testing.assert_array_equal(xs[:, 1, 0], [1.0, 0.5, 0.25, 1.0])  # Company B
    np.testing.assert_array_equal(targets, [0.0, 1.0])
    assert xs.dtype == jnp.float32


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("call, pattern", [
    (lambda: copy_memory(jax.random.PRNGKey(0), 0, 10), r"batch_size must be a positive integer, got 0"),
    (lambda: copy_memory(jax.random.PRNGKey(0), 4, 0), r"length must be a positive integer, got 0"),
    (lambda: copy_memory(jax.random.PRNGKey(0), 4, 10, copy_length=2.0), r"copy_length must be a positive integer"),
    (lambda: copy_memory(jax.random.PRNGKey(0), 4, 10, num_symbols=0), r"num_symbols must be a positive integer"),
    (lambda: copy_memory_baseline(-1), r"length must be a positive integer, got -1"),
    (lambda: temporal_order(jax.random.PRNGKey(0), 4, 60, 70), r"min_length must be at least 61 .* got 60"),
    (lambda: temporal_order(jax.random.PRNGKey(0), 4, 100, 99), r"max_length must be at least min_length=100, got 99"),
    (lambda: temporal_order(jax.random.PRNGKey(0), -2), r"batch_size must be a positive integer, got -2"),
])
def test_bad_arguments(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()
