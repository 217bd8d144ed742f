"""Long-range tasks: pure, keyed generators whose memoryless baselines are known.

Each generator takes a PRNG key and static sizes and returns time-major arrays, so it runs
under `jit` (with the sizes static) and a fresh batch per training step costs no host work.
"""

from __future__ import annotations

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
        targets: targets, shape `(batch,)` for regression tasks.
    """

    xs: jax.Array
    targets: jax.Array


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
