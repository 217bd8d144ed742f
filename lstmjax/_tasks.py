"""Long-range tasks: pure, keyed generators whose memoryless baselines are known.

Each generator takes a PRNG key and static sizes and returns time-major arrays, so it runs
under `jit` (with the sizes static) and a fresh batch per training step costs no host work.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lstmjax._cell import check_positive_int

ADDING_FORMS = ("arjovsky", "hochreiter")

ADDING_BASELINE_MSE = 1.0 / 6.0
"""MSE of always predicting the mean (1) in the Arjovsky et al. form: Var(X1 + X2) = 2/12."""

ADDING_SOLVED_ERROR = 0.04
"""Hochreiter & Schmidhuber's criterion in their form: every absolute error below 0.04."""


class Batch(NamedTuple):
    """A batch of a sequence task.

    Attributes:
        xs: inputs, shape `(T, batch, features)`.
        targets: targets, shape `(batch,)` for one answer per sequence (the adding problem,
            the StatQuest companies), `(T, batch)` for one answer per step (copy memory).
    """

    xs: jax.Array
    targets: jax.Array


class SequenceBatch(NamedTuple):
    """A batch of sequences of different lengths, padded with zero inputs to a common `T`.

    Attributes:
        xs: inputs, shape `(T, batch, features)`; steps at or after a sequence's length are 0.
        targets: integer classes, shape `(batch,)`.
        lengths: int32 lengths, shape `(batch,)`, each in `[1, T]`: pass them to
            `lj.unroll(..., lengths=batch.lengths)`, whose final state is then each
            sequence's state after its own last step.
    """

    xs: jax.Array
    targets: jax.Array
    lengths: jax.Array


def adding_problem(key: jax.Array, batch_size: int, length: int, form: str = "arjovsky") -> Batch:
    """The adding problem: remember two marked values over `length` steps and add them.

    Each step's input is `(value, marker)`.

    * `form="arjovsky"` (Arjovsky et al. 2016): values U[0, 1]; one marker (1.0) at a uniform
      position in the first half, one in the second half; target `X1 + X2`. Predicting the
      mean gives MSE 1/6 (`ADDING_BASELINE_MSE`).
    * `form="hochreiter"` (Hochreiter & Schmidhuber 1997, experiment 4, at a fixed length):
      values U[-1, 1]; the first and last steps carry marker -1; `X1` is marked at a uniform
      position among the first 10 steps, `X2` at a different one among the first
      `length / 2 - 1`; if step 0 is marked its value is set to 0; target
      `0.5 + (X1 + X2) / 4`. Solved when every absolute error is below 0.04.

    Args:
        key: PRNG key.
        batch_size: number of sequences.
        length: `T`; at least 2 (`"arjovsky"`) or 12 (`"hochreiter"`).
        form: `"arjovsky"` or `"hochreiter"`.

    Returns:
        `Batch(xs: (T, batch_size, 2), targets: (batch_size,))`.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    length = check_positive_int("length", length)
    if form not in ADDING_FORMS:
        raise ValueError(f"form must be one of {ADDING_FORMS}, got {form!r}")
    minimum = 2 if form == "arjovsky" else 12
    if length < minimum:
        raise ValueError(f"length must be at least {minimum} for the {form} form, got {length}")
    key_values, key_first, key_second = jax.random.split(key, 3)
    steps = jnp.arange(length)[:, None]
    if form == "arjovsky":
        values = jax.random.uniform(key_values, (length, batch_size))
        half = length // 2
        first = jax.random.randint(key_first, (batch_size,), 0, half)
        second = jax.random.randint(key_second, (batch_size,), half, length)
        marked = (steps == first) | (steps == second)
        markers = marked.astype(values.dtype)
        targets = jnp.sum(jnp.where(marked, values, 0.0), axis=0)
    else:
        values = jax.random.uniform(key_values, (length, batch_size), minval=-1.0, maxval=1.0)
        first = jax.random.randint(key_first, (batch_size,), 0, 10)
        span = length // 2 - 1
        # A uniform position among the first `span` steps other than `first`.
        first_in_span = first < span
        choices = span - first_in_span.astype(jnp.int32)
        offset = jnp.floor(jax.random.uniform(key_second, (batch_size,)) * choices).astype(jnp.int32)
        second = jnp.where(first_in_span & (offset >= first), offset + 1, offset)
        marked = (steps == first) | (steps == second)
        values = jnp.where(marked & (steps == 0), 0.0, values)
        ends = (steps == 0) | (steps == length - 1)
        markers = jnp.where(marked, 1.0, jnp.where(ends, -1.0, 0.0)).astype(values.dtype)
        targets = 0.5 + jnp.sum(jnp.where(marked, values, 0.0), axis=0) / 4.0
    return Batch(xs=jnp.stack([values, markers], axis=-1), targets=targets)


def copy_memory_baseline(length: int, copy_length: int = 10, num_symbols: int = 8) -> float:
    """The copy task's memoryless cross-entropy per step, `copy_length·ln(num_symbols) / (T + 2·copy_length)`.

    The strategy that remembers nothing predicts the blank for the first `T + copy_length`
    steps (exactly right) and a uniform guess over the `num_symbols` symbols for the last
    `copy_length`. With the defaults: `10·ln 8 / (T + 20)`, 0.1733 at `T = 100`.
    """
    length = check_positive_int("length", length)
    copy_length = check_positive_int("copy_length", copy_length)
    num_symbols = check_positive_int("num_symbols", num_symbols)
    return copy_length * math.log(num_symbols) / (length + 2 * copy_length)


def copy_memory(
    key: jax.Array, batch_size: int, length: int, copy_length: int = 10, num_symbols: int = 8
) -> Batch:
    """The copy-memory task (Arjovsky et al. 2016): recall a short sequence after `length` blanks.

    Tokens are integers in `[0, num_symbols + 1]`: 0 is the blank, `1..num_symbols` the symbols
    and `num_symbols + 1` the delimiter (9 with the defaults). Each sequence has
    `T + 2·copy_length` steps (`T = length`):

    * input: `copy_length` symbols drawn uniformly from `1..num_symbols`, then `T - 1` blanks,
      the delimiter (at step `copy_length + T - 1`), then `copy_length` blanks;
    * target: `T + copy_length` blanks, then the same `copy_length` symbols in order.

    The memoryless cross-entropy is `copy_memory_baseline(length, copy_length, num_symbols)`.

    Args:
        key: PRNG key.
        batch_size: number of sequences.
        length: `T`, the number of steps between the last symbol and the first recall step
            (`T - 1` blanks and the delimiter); at least 1.
        copy_length: how many symbols to copy (10 in the paper).
        num_symbols: the number of symbol categories (8 in the paper).

    Returns:
        `Batch(xs, targets)`: `xs` the one-hot inputs, float32 of shape
        `(T + 2·copy_length, batch_size, num_symbols + 2)` (`jnp.argmax(xs, -1)` gives back the
        tokens); `targets` the int32 target tokens, shape `(T + 2·copy_length, batch_size)`,
        for a cross-entropy over `num_symbols + 2` classes at every step.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    length = check_positive_int("length", length)
    copy_length = check_positive_int("copy_length", copy_length)
    num_symbols = check_positive_int("num_symbols", num_symbols)
    return _copy_memory(key, batch_size, length, copy_length, num_symbols)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _copy_memory(key: jax.Array, batch_size: int, length: int, copy_length: int, num_symbols: int) -> Batch:
    symbols = _uniform_between(jax.random.bits(key, (copy_length, batch_size)), 1, num_symbols)
    blanks = jnp.zeros((length + copy_length, batch_size), jnp.int32)
    delimiter = jnp.full((1, batch_size), num_symbols + 1, jnp.int32)
    tokens = jnp.concatenate([symbols, blanks[:length - 1], delimiter, blanks[:copy_length]])
    targets = jnp.concatenate([blanks, symbols])
    return Batch(xs=jax.nn.one_hot(tokens, num_symbols + 2, dtype=jnp.float32), targets=targets)


TEMPORAL_ORDER_SYMBOLS = ("a", "b", "c", "d", "B", "E", "X", "Y")
"""The temporal-order alphabet, in the order of the one-hot input features."""

TEMPORAL_ORDER_CLASSES = ("XX", "XY", "YX", "YY")
"""The temporal-order classes (the paper's Q, R, S, U), in the order of the integer targets."""

TEMPORAL_ORDER_BASELINE_ACCURACY = 0.25
"""Accuracy without memory of the two relevant symbols: the 4 classes are equally likely."""

TEMPORAL_ORDER_BASELINE_CROSS_ENTROPY = math.log(4.0)
"""Cross-entropy of predicting the uniform class distribution: ln 4 ≈ 1.386."""

_FIRST_RELEVANT = (10, 20)  # 1-based positions, inclusive, as in the paper.
_SECOND_RELEVANT = (50, 60)


def temporal_order(
    key: jax.Array, batch_size: int, min_length: int = 100, max_length: int = 110
) -> SequenceBatch:
    """The temporal-order task (Hochreiter & Schmidhuber 1997, task 6a): classify the order of X and Y.

    As in the paper, the sequence starts with an E, ends with a B (the "trigger symbol")
    and otherwise consists of symbols drawn uniformly from {a, b, c, d}, except at two
    positions `t1`, uniform in 10..20, and `t2`, uniform in 50..60, which hold X or Y (each
    with probability 1/2). The length is uniform in `min_length..max_length` (100..110 in the
    paper). The class is the order: XX, XY, YX, YY (`TEMPORAL_ORDER_CLASSES`; the paper's
    Q, R, S, U), so a model without memory scores accuracy 1/4 and cross-entropy ln 4.

    The paper does not say where it counts positions from; we count from 1, as its prose
    does (the E is the first element), so at 0-based step indices the E is at 0, `t1 - 1`
    lies in 9..19, `t2 - 1` in 49..59 and the B at `length - 1`. Inputs are one-hot over
    `TEMPORAL_ORDER_SYMBOLS` = (a, b, c, d, B, E, X, Y); steps after a sequence's end are
    all-zero padding. Targets are integer classes (the paper's are one-hot).

    Args:
        key: PRNG key.
        batch_size: number of sequences.
        min_length: shortest sequence; at least 61, so that the B follows position 60.
        max_length: longest sequence, `T` of the padded batch; at least `min_length`.

    Returns:
        `SequenceBatch(xs: (max_length, batch_size, 8) float32, targets: (batch_size,) int32
        in 0..3, lengths: (batch_size,) int32)`.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    min_length = check_positive_int("min_length", min_length)
    max_length = check_positive_int("max_length", max_length)
    if min_length <= _SECOND_RELEVANT[1]:
        raise ValueError(f"min_length must be at least {_SECOND_RELEVANT[1] + 1} so that the trigger B "
                         f"follows the last relevant position {_SECOND_RELEVANT[1]}, got {min_length}")
    if max_length < min_length:
        raise ValueError(f"max_length must be at least min_length={min_length}, got {max_length}")
    return _temporal_order(key, batch_size, min_length, max_length)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _temporal_order(key: jax.Array, batch_size: int, min_length: int, max_length: int) -> SequenceBatch:
    a, b_trigger, e_start, x = (TEMPORAL_ORDER_SYMBOLS.index(symbol) for symbol in ("a", "B", "E", "X"))
    # One draw of random bits (a single threefry call compiles faster than five `randint`s).
    bits = jax.random.bits(key, (max_length + 5, batch_size))
    tokens = _uniform_between(bits[:max_length], a, a + 3)  # a, b, c, d
    lengths = _uniform_between(bits[max_length], min_length, max_length)
    # 0-based step indices of the 1-based positions.
    first = _uniform_between(bits[max_length + 1], _FIRST_RELEVANT[0] - 1, _FIRST_RELEVANT[1] - 1)
    second = _uniform_between(bits[max_length + 2], _SECOND_RELEVANT[0] - 1, _SECOND_RELEVANT[1] - 1)
    is_y = _uniform_between(bits[max_length + 3:], 0, 1)  # 0: X, 1: Y
    steps = jnp.arange(max_length)[:, None]
    tokens = jnp.where(steps == first, x + is_y[0], tokens)
    tokens = jnp.where(steps == second, x + is_y[1], tokens)
    tokens = jnp.where(steps == 0, e_start, tokens)
    tokens = jnp.where(steps == lengths - 1, b_trigger, tokens)
    real = (steps < lengths)[..., None]
    xs = jnp.where(real, jax.nn.one_hot(tokens, len(TEMPORAL_ORDER_SYMBOLS), dtype=jnp.float32), 0.0)
    return SequenceBatch(xs=xs, targets=2 * is_y[0] + is_y[1], lengths=lengths)


def statquest_companies() -> Batch:
    """The StatQuest LSTM video's two stock sequences, scaled to [0, 1], with their day-5 targets.

    Company A = [0, 0.5, 0.25, 1] (day 5: 0) and Company B = [1, 0.5, 0.25, 1] (day 5: 1):
    the same last three days, so only a memory of day 1 tells them apart.

    Returns:
        `Batch(xs: (4, 2, 1), targets: (2,))`, float32, batch index 0 = A, 1 = B.
    """
    days = jnp.array([[0.0, 0.5, 0.25, 1.0], [1.0, 0.5, 0.25, 1.0]], jnp.float32)
    return Batch(xs=days.T[:, :, None], targets=jnp.array([0.0, 1.0], jnp.float32))


def _uniform_between(bits: jax.Array, low: int, high: int) -> jax.Array:
    """int32 uniform in `low..high` (inclusive) from uniform uint32 `bits`; bias below `(high - low + 1) / 2**32`."""
    return low + (bits % jnp.uint32(high - low + 1)).astype(jnp.int32)
