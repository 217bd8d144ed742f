"""The `Cell` type shared by every recurrent cell family, and the checks every cell runs.

A cell is a tuple of pure functions, in the spirit of an Optax `GradientTransformation`:
nothing holds state, so `jit`, `vmap`, `grad` and `lax.scan` compose with every cell.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Params = Any
State = Any
Internals = Any


class Cell(NamedTuple):
    """A recurrent cell: pure functions over pytrees of arrays.

    Attributes:
        init: `init(key, input_size, dtype=jnp.float32) -> params`.
        initial_state: `initial_state(params, batch_shape=()) -> state`, zeros of shape
            `(*batch_shape, hidden_size)` in every leaf.
        step: `step(params, state, x) -> (state, y)` for `x` of shape `(..., input_size)`;
            carry first, so `functools.partial(cell.step, params)` is what `lax.scan` wants.
        step_with_internals: `step_with_internals(params, state, x) -> (state, y, internals)`,
            the same step that also returns the per-step internals (gate activations, memories).
        output: `output(state) -> y`, the output as a function of the state (the LSTM's `h`;
            the whole state for the GRU and the RNN); `step` returns `y = output(new_state)`.
        hidden_size: number of hidden units `H`.
        name: the family's name, for messages and reports (`"lstm"`, `"gru"`, `"rnn"`, ...).
        fused: the family's whole-sequence fast path (an `lstmjax._fused.FusedRecurrence`) that
            `lj.unroll` uses instead of scanning `step`, or `None`; same results, faster gradients.
    """

    init: Callable[..., Params]
    initial_state: Callable[..., State]
    step: Callable[[Params, State, jax.Array], tuple[State, jax.Array]]
    step_with_internals: Callable[[Params, State, jax.Array], tuple[State, jax.Array, Internals]]
    output: Callable[[State], jax.Array]
    hidden_size: int
    name: str
    fused: Any = None


def check_positive_int(name: str, value: Any) -> int:
    """Returns `value` as an int, or raises `ValueError` naming `name` if it is not >= 1."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_input(params_w_x: jax.Array, x: jax.Array, name: str = "x") -> None:
    """Checks that `x` has shape `(..., input_size)` and a floating dtype."""
    input_size = params_w_x.shape[0]
    if x.ndim < 1 or x.shape[-1] != input_size:
        raise ValueError(
            f"{name} must have shape (..., input_size={input_size}) to match params.w_x of "
            f"shape {tuple(params_w_x.shape)}, got shape {tuple(x.shape)}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must have a floating dtype, got {x.dtype}")


def check_state_leaf(name: str, leaf: jax.Array, batch_shape: tuple[int, ...], hidden_size: int) -> None:
    """Checks that one state array has shape `(*batch_shape, hidden_size)`."""
    expected = (*batch_shape, hidden_size)
    if tuple(leaf.shape) != expected:
        raise ValueError(
            f"{name} must have shape (*batch_shape, hidden_size) = {expected} to match the "
            f"input's batch shape {tuple(batch_shape)}, got shape {tuple(leaf.shape)}"
        )


def check_param_shapes(family: str, params: NamedTuple, expected: dict[str, tuple[int, ...]]) -> None:
    """Checks every field of a `*Params` NamedTuple against its expected shape."""
    for field, shape in expected.items():
        got = tuple(jnp.shape(getattr(params, field)))
        if got != shape:
            raise ValueError(
                f"params.{field} of the {family} cell must have shape {shape}, got shape {got}"
            )


def make_cell(
    name: str,
    hidden_size: int,
    init: Callable[..., Params],
    initial_state: Callable[..., State],
    step_with_internals: Callable[[Params, State, jax.Array, int], tuple[State, jax.Array, Internals]],
    output: Callable[[State], jax.Array] = lambda state: state,
    fused: Any = None,
) -> Cell:
    """Builds a `Cell` from a family's `step_with_internals(params, state, x, hidden_size)`.

    `step` is the same function with the internals dropped; under `jit` XLA removes the work
    that only the internals needed, so the equations are written once per family. `fused` is a
    `FusedRecurrence` of the same equations (see `lstmjax._fused`), used while `is_as_built(cell)`.
    """

    def step_with_internals_of_cell(params, state, x):
        return step_with_internals(params, state, x, hidden_size)

    def step(params, state, x):
        state, y, _ = step_with_internals(params, state, x, hidden_size)
        return state, y

    step.built_with = step_with_internals_of_cell
    return Cell(init=init, initial_state=initial_state, step=step, step_with_internals=step_with_internals_of_cell,
                output=output, hidden_size=hidden_size, name=name, fused=fused)


def select_state(condition: jax.Array, on_true: State, on_false: State) -> State:
    """Per batch element, picks a whole state: `condition` has the batch shape `(*batch,)`, every
    leaf of `on_true` and `on_false` the shape `(*batch, H)`."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(condition[..., None], a, b), on_true, on_false)


def zero_where_invalid(condition: jax.Array, tree: Any) -> Any:
    """Every leaf of `tree` (shape `(*batch, H)`) with the batch elements where `condition`
    (shape `(*batch,)`) is `False` set to zero: the output of a masked step."""
    return jax.tree_util.tree_map(lambda a: jnp.where(condition[..., None], a, jnp.zeros_like(a)), tree)


def is_as_built(cell: Cell) -> bool:
    """Whether `cell` still has the `step` and `step_with_internals` that `make_cell` gave it together:
    only then may `lj.unroll` run its `fused` equations or cache its compilation (a replaced
    function may differ from the family's equations, or read state that changes)."""
    return getattr(cell.step, "built_with", None) is cell.step_with_internals
