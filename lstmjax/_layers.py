"""Sequence layers built from cells: bidirectional layers and multi-layer stacks.

Layers work on whole sequences (the output of one layer is the input of the next), like
PyTorch's `nn.LSTM(num_layers=..., bidirectional=..., dropout=...)`, and accept the same
`lengths`, `mask` and `resets` as `lj.unroll`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from lstmjax._cell import Cell, Params, State
from lstmjax._unroll import unroll


class Bidirectional(NamedTuple):
    """A pair of anything, one for each direction (params, states).

    Attributes:
        forward: for the direction that reads `xs[0], xs[1], ...`.
        backward: for the direction that reads each sequence from its last real step back.
    """

    forward: Any
    backward: Any


def init_bidirectional(cell: Cell, key: jax.Array, input_size: int, dtype=jnp.float32) -> Bidirectional:
    """Independent parameters for the forward and backward direction of one layer."""
    key_forward, key_backward = jax.random.split(key)
    return Bidirectional(forward=cell.init(key_forward, input_size, dtype),
                         backward=cell.init(key_backward, input_size, dtype))


def unroll_bidirectional(
    cell: Cell,
    params: Bidirectional,
    xs: ArrayLike,
    state: Bidirectional | None = None,
    lengths: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    resets: ArrayLike | None = None,
) -> tuple[Bidirectional, jax.Array]:
    """Runs `cell` forward and backward over `xs` and concatenates the outputs.

    The backward direction starts at each sequence's own last real step (`lengths`), so
    padding never leaks into it. Output `t` of both directions belongs to input `t`.

    Args:
        cell: an `lj.Cell`.
        params: `Bidirectional(forward, backward)` of the cell's parameters.
        xs: inputs, shape `(T, *batch, input_size)`.
        state: `Bidirectional` of initial states (leaves `(*batch, H)` or `(H,)`), or `None`.
        lengths, mask, resets: as in `lj.unroll`.

    Returns:
        `(Bidirectional(forward_final, backward_final), ys)` with `ys` of shape
        `(T, *batch, 2H)`: the forward outputs in `ys[..., :H]`, the backward in `ys[..., H:]`.
    """
    if not isinstance(params, Bidirectional):
        raise ValueError(f"params must be an lj.Bidirectional(forward, backward), got {type(params).__name__}")
    if state is None:
        state = Bidirectional(None, None)
    elif not isinstance(state, Bidirectional):
        raise ValueError(f"state must be an lj.Bidirectional(forward, backward) or None, got {type(state).__name__}")
    final_forward, ys_forward = unroll(cell, params.forward, xs, state.forward, lengths, False, mask, resets)
    final_backward, ys_backward = unroll(cell, params.backward, xs, state.backward, lengths, True, mask, resets)
    return Bidirectional(final_forward, final_backward), jnp.concatenate([ys_forward, ys_backward], axis=-1)


def init_layers(
    cells: Sequence[Cell], key: jax.Array, input_size: int, bidirectional: bool = False, dtype=jnp.float32
) -> tuple[Params, ...]:
    """Parameters of a stack of layers; layer `k + 1` reads the outputs of layer `k`.

    Args:
        cells: one `lj.Cell` per layer, e.g. `[lj.lstm(64)] * 3`.
        key: PRNG key.
        input_size: size of the inputs of the first layer.
        bidirectional: give every layer a `Bidirectional` pair of parameters; the next layer
            then reads `2H` features.

    Returns:
        A tuple with one entry per layer (a `Bidirectional` pair when `bidirectional`).
    """
    cells = _check_cells(cells)
    params = []
    for cell, layer_key in zip(cells, jax.random.split(key, len(cells))):
        if bidirectional:
            params.append(init_bidirectional(cell, layer_key, input_size, dtype))
            input_size = 2 * cell.hidden_size
        else:
            params.append(cell.init(layer_key, input_size, dtype))
            input_size = cell.hidden_size
    return tuple(params)


def unroll_layers(
    cells: Sequence[Cell],
    params: Sequence[Params],
    xs: ArrayLike,
    states: Sequence[State] | None = None,
    lengths: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    resets: ArrayLike | None = None,
    bidirectional: bool = False,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
) -> tuple[tuple[State, ...], jax.Array]:
    """Runs a stack of layers over `xs`, with optional dropout between layers.

    Args:
        cells: one `lj.Cell` per layer.
        params: one entry per layer, as made by `init_layers` (with the same `bidirectional`).
        xs: inputs, shape `(T, *batch, input_size)`.
        states: one initial state per layer (a `Bidirectional` pair when `bidirectional`), or
            `None` for zeros everywhere.
        lengths, mask, resets: as in `lj.unroll`, applied in every layer.
        bidirectional: every layer is bidirectional (see `unroll_bidirectional`).
        dropout_rate: probability of zeroing each output element of every layer but the last
            (independently per time step, kept values scaled by `1 / (1 - rate)`), as
            PyTorch's `nn.LSTM(dropout=...)`. Use 0 at evaluation time.
        dropout_key: PRNG key, required when `dropout_rate > 0`.

    Returns:
        `(final_states, ys)`: a tuple of per-layer final states, and the last layer's outputs
        of shape `(T, *batch, H)` (`2H` when bidirectional).
    """
    cells = _check_cells(cells)
    params = tuple(params)
    if len(params) != len(cells):
        raise ValueError(f"params must have one entry per layer ({len(cells)} cells), got {len(params)}")
    states = (None,) * len(cells) if states is None else tuple(states)
    if len(states) != len(cells):
        raise ValueError(f"states must have one entry per layer ({len(cells)} cells), got {len(states)}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must lie in [0, 1), got {dropout_rate}")
    if dropout_rate > 0.0 and dropout_key is None:
        raise ValueError(f"dropout_key is required when dropout_rate > 0 (got dropout_rate={dropout_rate})")
    layer_keys = jax.random.split(dropout_key, len(cells)) if dropout_rate > 0.0 else [None] * len(cells)
    finals, ys = [], xs
    for layer, (cell, layer_params, state, key) in enumerate(zip(cells, params, states, layer_keys)):
        if bidirectional:
            final, ys = unroll_bidirectional(cell, layer_params, ys, state, lengths, mask, resets)
        else:
            final, ys = unroll(cell, layer_params, ys, state, lengths, False, mask, resets)
        finals.append(final)
        if key is not None and layer < len(cells) - 1:
            keep = jax.random.bernoulli(key, 1.0 - dropout_rate, ys.shape)
            ys = jnp.where(keep, ys / (1.0 - dropout_rate), jnp.zeros_like(ys))
    return tuple(finals), ys


def _check_cells(cells: Sequence[Cell]) -> tuple[Cell, ...]:
    if isinstance(cells, Cell):
        raise ValueError("cells must be a sequence of lj.Cell, one per layer (e.g. [cell] * 2), got a single lj.Cell")
    cells = tuple(cells)
    if not cells or not all(isinstance(cell, Cell) for cell in cells):
        raise ValueError(f"cells must be a non-empty sequence of lj.Cell, got {cells!r}")
    return cells
