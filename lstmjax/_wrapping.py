"""What the Flax wrappers (`lstmjax.nnx`, `lstmjax.linen`) share, written once and free of Flax.

The wrappers hold arrays and call `lj.unroll` / `lj.unroll_layers`; everything here is the
plumbing around those calls: checking the cells and the input size, the batch-first layout,
zero initial states of shape `(H,)` (the shape a learnable initial state has), and choosing
the pure function that runs a stack.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from lstmjax._cell import Cell, Params, State, check_positive_int
from lstmjax._layers import Bidirectional, unroll_layers
from lstmjax._unroll import unroll


def layer_cells(cell: Cell | Sequence[Cell], num_layers: int | None) -> tuple[Cell, ...]:
    """One `lj.Cell` per layer: `cell` repeated `num_layers` times, or a sequence of cells.

    Raises:
        ValueError: `cell` is neither an `lj.Cell` nor a non-empty sequence of them, or
            `num_layers` disagrees with the number of cells given.
    """
    if isinstance(cell, Cell):
        num_layers = 1 if num_layers is None else check_positive_int("num_layers", num_layers)
        return (cell,) * num_layers
    if isinstance(cell, Sequence) and not isinstance(cell, str) and cell and all(isinstance(c, Cell) for c in cell):
        cells = tuple(cell)
        if num_layers is not None and check_positive_int("num_layers", num_layers) != len(cells):
            raise ValueError(f"num_layers={num_layers} disagrees with the {len(cells)} cells given (one per layer)")
        return cells
    raise ValueError("cell must be an lj.Cell (from lj.lstm, lj.gru, lj.rnn, ...) or a non-empty sequence of them, "
                     f"one per layer; got {type(cell).__name__}")


def check_cell(cell: Any) -> Cell:
    if not isinstance(cell, Cell):
        raise ValueError(f"cell must be an lj.Cell (from lj.lstm, lj.gru, lj.rnn, ...), got {type(cell).__name__}")
    return cell


def check_dropout_rate(dropout_rate: float) -> float:
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must lie in [0, 1), got {dropout_rate}")
    return float(dropout_rate)


@functools.lru_cache(maxsize=256)
def _param_shapes(cell: Cell, input_size: int) -> tuple[Any, tuple[tuple[int, ...], ...]]:
    shapes = jax.eval_shape(lambda key: cell.init(key, input_size), jax.ShapeDtypeStruct((2,), jnp.uint32))
    leaves, tree = jax.tree_util.tree_flatten(shapes)
    return tree, tuple(tuple(leaf.shape) for leaf in leaves)


def check_input_size(cell: Cell, params: Params, xs: jax.Array, name: str = "xs", layout: str = "") -> None:
    """Checks that `params` (of `cell`) are the params `cell.init` makes for `xs.shape[-1]` inputs.

    Works for any cell: the expected shapes come from tracing `cell.init` abstractly.
    """
    if xs.ndim < 1 or not jnp.issubdtype(xs.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating array of shape {layout or '(..., input_size)'}, "
                         f"got shape {tuple(xs.shape)} and dtype {xs.dtype}")
    input_size = xs.shape[-1]
    leaves, tree = jax.tree_util.tree_flatten(params)
    got = tuple(tuple(jnp.shape(leaf)) for leaf in leaves)
    if input_size < 1 or _param_shapes(cell, input_size) != (tree, got):
        shapes = jax.tree_util.tree_map(lambda leaf: tuple(jnp.shape(leaf)), params)
        raise ValueError(
            f"{name} of shape {tuple(xs.shape)} {layout} has input_size={input_size} (its last axis), but the "
            f"{cell.name} weights were made for another input size: {shapes}")


def to_time_major(xs: ArrayLike, mask: ArrayLike | None, resets: ArrayLike | None, time_major: bool):
    """Moves the time axis of batch-first `xs: (*batch, T, I)`, `mask`/`resets: (*batch, T)` to the front."""
    xs = jnp.asarray(xs)
    if time_major:
        return xs, mask, resets
    if xs.ndim < 2:
        raise ValueError(f"xs must have shape (*batch, T, input_size) (time_major=False), got shape {tuple(xs.shape)}")
    flags = [None if f is None else jnp.moveaxis(jnp.asarray(f), -1, 0) for f in (mask, resets)]
    for name, original, moved in zip(("mask", "resets"), (mask, resets), flags, strict=True):
        if moved is not None and moved.ndim != xs.ndim - 1:
            raise ValueError(f"{name} must have shape (*batch, T) = {tuple(xs.shape[:-1])} (time_major=False), "
                             f"got shape {tuple(jnp.shape(original))}")
    return jnp.moveaxis(xs, -2, 0), *flags


def from_time_major(ys: jax.Array, time_major: bool) -> jax.Array:
    return ys if time_major else jnp.moveaxis(ys, 0, -2)


def layout_of(time_major: bool) -> str:
    return "(T, *batch, input_size)" if time_major else "(*batch, T, input_size)"


def zero_initial_states(cells: Sequence[Cell], layers: Sequence[Params], bidirectional: bool) -> tuple[State, ...]:
    """Per layer, the cell's zero initial state with leaves of shape `(H,)` (shared by the batch)."""
    if bidirectional:
        return tuple(Bidirectional(cell.initial_state(p.forward), cell.initial_state(p.backward))
                     for cell, p in zip(cells, layers, strict=True))
    return tuple(cell.initial_state(p) for cell, p in zip(cells, layers, strict=True))


def broadcast_states(states: Any, batch_shape: tuple[int, ...]) -> Any:
    """Broadcasts every `(H,)` leaf to `(*batch_shape, H)`."""
    return jax.tree_util.tree_map(lambda leaf: jnp.broadcast_to(leaf, (*batch_shape, *jnp.shape(leaf))), states)


def run_layers(
    cells: tuple[Cell, ...],
    layers: tuple[Params, ...],
    xs: ArrayLike,
    states: Sequence[State] | None,
    lengths: ArrayLike | None,
    mask: ArrayLike | None,
    resets: ArrayLike | None,
    reverse: bool,
    bidirectional: bool,
    dropout_rate: float,
    dropout_key: jax.Array | None,
    time_major: bool,
) -> tuple[tuple[State, ...], jax.Array]:
    """Runs the stack with `lj.unroll_layers` (or `lj.unroll` for one reversed layer)."""
    xs = jnp.asarray(xs)
    check_input_size(cells[0], layers[0].forward if bidirectional else layers[0], xs, layout=layout_of(time_major))
    xs, mask, resets = to_time_major(xs, mask, resets, time_major)
    if states is not None and (isinstance(states, Bidirectional) or not isinstance(states, Sequence)
                               or len(states) != len(cells)):
        raise ValueError(f"state must be a tuple with one initial state per layer ({len(cells)}), as returned in "
                         f"final_states; got {type(states).__name__}")
    if reverse:
        if bidirectional:
            raise ValueError("reverse=True has no meaning for a bidirectional layer (it runs both directions)")
        if len(cells) > 1:
            raise ValueError("reverse=True is supported for one layer only (lj.unroll_layers has no reverse flag)")
        final, ys = unroll(cells[0], layers[0], xs, None if states is None else states[0], lengths, True, mask, resets)
        return (final,), from_time_major(ys, time_major)
    finals, ys = unroll_layers(cells, layers, xs, states, lengths, mask, resets, bidirectional,
                               dropout_rate if dropout_key is not None else 0.0, dropout_key)
    return finals, from_time_major(ys, time_major)
