"""Flax NNX modules on lstmjax's pure functions: any `lj.Cell` as an `nnx.Module`.

The modules hold the weights as `nnx.Param` leaves in the cell's own `*Params` NamedTuples
and call `cell.step`, `lj.unroll` and `lj.unroll_layers`; no equation is written here.
`module.lj_params()` returns the plain arrays, which the pure functions take as they are.

    import jax, optax, lstmjax as lj
    from flax import nnx
    from lstmjax import nnx as ljnnx

    model = ljnnx.RNN(lj.lstm(32), input_size=3, num_layers=2, dropout_rate=0.1, rngs=nnx.Rngs(0))
    final_states, ys = model(xs, lengths=lengths)          # xs: (T, batch, 3) -> ys: (T, batch, 32)
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

Importing this module imports Flax; `import lstmjax` does not.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import reprlib
from jax.typing import ArrayLike

from lstmjax._cell import Cell as PureCell
from lstmjax._cell import Params, State
from lstmjax._layers import Bidirectional, init_layers
from lstmjax._wrapping import (
    broadcast_states,
    check_cell,
    check_dropout_rate,
    layer_cells,
    run_layers,
    zero_initial_states,
)

__all__ = ["Cell", "RNN"]


def _as_params(tree: Any) -> Any:
    return nnx.data(jax.tree_util.tree_map(nnx.Param, tree))


def _as_arrays(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda v: v.get_value(), tree, is_leaf=lambda v: isinstance(v, nnx.Variable))


def _describe(cell: PureCell) -> str:
    return f"lj.Cell({cell.name!r}, hidden_size={cell.hidden_size})"


def _readable_repr(items: Any) -> Any:
    """`nnx`'s repr items with the static cells shown by name instead of as tuples of functions."""
    for item in items:
        if isinstance(item, reprlib.Attr) and item.key == "cell":
            item = reprlib.Attr(item.key, _describe(item.value), use_raw_value=True)
        elif isinstance(item, reprlib.Attr) and item.key == "cells":
            item = reprlib.Attr(item.key, "(" + ", ".join(map(_describe, item.value)) + ")", use_raw_value=True)
        yield item


def _check_construction(input_size: int | None, rngs: nnx.Rngs | None, params: Any) -> None:
    if params is None and (input_size is None or rngs is None):
        raise ValueError("give input_size and rngs to initialise the weights, or params= to wrap existing ones")
    if params is not None and input_size is not None:
        raise ValueError("give either input_size (with rngs) or params=, not both: params fix the input size")


class Cell(nnx.RNNCellBase):
    """One recurrent cell as an `nnx.Module`: `state, y = module(state, x)` is `cell.step`.

    It is an `nnx.RNNCellBase`, so Flax's own `nnx.RNN(ljnnx.Cell(...))` can run it too.

    Attributes:
        cell: the `lj.Cell` (static).
        params: the cell's `*Params` NamedTuple (e.g. `lj.LSTMParams`) with `nnx.Param` leaves.
        initial: the learnable initial state (leaves `nnx.Param` of shape `(H,)`), or `None`.
    """

    def __init__(
        self,
        cell: PureCell,
        input_size: int | None = None,
        *,
        rngs: nnx.Rngs | None = None,
        params: Params | None = None,
        learn_initial_state: bool = False,
        dtype: Any = jnp.float32,
    ):
        """Makes the weights with `cell.init(rngs.params(), input_size, dtype)`, or wraps `params`.

        Args:
            cell: an `lj.Cell` (`lj.lstm(H)`, `lj.gru(H)`, `lj.rnn(H)`, ...).
            input_size: size `I` of the inputs `x: (..., I)`; with `rngs`.
            rngs: `nnx.Rngs`; the `params` stream draws the weights.
            params: existing weights of `cell` (for example converted from PyTorch), instead of
                `input_size` and `rngs`.
            learn_initial_state: make the initial state (zeros at first) a parameter too.
            dtype: dtype of newly drawn weights.
        """
        self.cell = check_cell(cell)
        _check_construction(input_size, rngs, params)
        if params is None:
            params = cell.init(rngs.params(), input_size, dtype)
        self.params = _as_params(params)
        self.initial = _as_params(cell.initial_state(params)) if learn_initial_state else nnx.data(None)

    def lj_params(self) -> Params:
        """The weights as arrays, in the cell's `*Params` NamedTuple: what `cell.step` takes."""
        return _as_arrays(self.params)

    def initial_state(self, batch_shape: tuple[int, ...] = ()) -> State:
        """The initial state, leaves of shape `(*batch_shape, H)`: zeros, or the learned one."""
        if self.initial is None:
            return self.cell.initial_state(self.lj_params(), tuple(batch_shape))
        return broadcast_states(_as_arrays(self.initial), tuple(batch_shape))

    def __call__(self, state: State, x: ArrayLike) -> tuple[State, jax.Array]:
        """One step: `cell.step(params, state, x)`, `x` of shape `(..., input_size)`.

        Returns:
            `(new_state, y)`, `y` of shape `(..., H)`.
        """
        return self.cell.step(self.lj_params(), state, x)

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: Any = None, carry_init: Any = None) -> State:
        """`nnx.RNNCellBase`'s hook: the initial state for inputs of shape `(*batch, input_size)`."""
        if carry_init is not None:
            raise ValueError("carry_init is not supported: the initial state is zeros, or learned "
                             "(learn_initial_state=True)")
        return self.initial_state(tuple(input_shape[:-1]))

    @property
    def num_feature_axes(self) -> int:
        return 1

    def __nnx_repr__(self):
        return _readable_repr(super().__nnx_repr__())


class RNN(nnx.Module):
    """A recurrent sequence layer (a stack, optionally bidirectional) as an `nnx.Module`.

    `final_states, ys = module(xs, ...)` is `lj.unroll_layers(cells, module.lj_params(), xs, ...)`
    (`lj.unroll` for `reverse=True`). Dropout between layers is active in training mode (the
    default, `module.train()`) and off after `module.eval()`, as for `nnx.Dropout`.

    Attributes:
        cells: one `lj.Cell` per layer (static).
        layers: per layer, the cell's `*Params` (a `lj.Bidirectional` pair of them when
            bidirectional) with `nnx.Param` leaves: the structure `lj.init_layers` returns.
        initial: per layer, the learnable initial state (leaves of shape `(H,)`), or `None`.
        bidirectional, dropout_rate, time_major: as given.
        deterministic: `True` turns dropout off; set by `module.train()` / `module.eval()`.
    """

    def __init__(
        self,
        cell: PureCell | Sequence[PureCell],
        input_size: int | None = None,
        *,
        num_layers: int | None = None,
        bidirectional: bool = False,
        dropout_rate: float = 0.0,
        time_major: bool = True,
        learn_initial_state: bool = False,
        deterministic: bool = False,
        rngs: nnx.Rngs | None = None,
        params: Sequence[Params] | None = None,
        dtype: Any = jnp.float32,
    ):
        """Makes the weights with `lj.init_layers(cells, rngs.params(), input_size, bidirectional)`.

        Args:
            cell: an `lj.Cell` used by every layer, or a sequence of them, one per layer.
            input_size: size `I` of the inputs; with `rngs`.
            num_layers: number of layers (default 1, or the number of cells given).
            bidirectional: every layer runs both directions; outputs have `2H` features.
            dropout_rate: dropout on the outputs of every layer but the last, in training mode
                (as PyTorch's `nn.LSTM(dropout=...)`); the key comes from the `dropout` stream
                of `rngs` (or its default stream).
            time_major: `xs` of shape `(T, *batch, I)` (lstmjax's layout); `False` takes and
                returns batch-first `(*batch, T, I)`, with `mask`/`resets` of shape `(*batch, T)`.
            learn_initial_state: every layer's initial state (zeros at first) is a parameter.
            deterministic: start in evaluation mode (no dropout).
            rngs: `nnx.Rngs`; its `params` stream draws the weights.
            params: existing per-layer weights (as `lj.init_layers` makes them), instead of
                `input_size` and `rngs`.
            dtype: dtype of newly drawn weights.
        """
        if num_layers is None and params is not None and isinstance(cell, PureCell):
            num_layers = len(params)
        cells = layer_cells(cell, num_layers)
        _check_construction(input_size, rngs, params)
        self.cells = cells
        self.bidirectional = bool(bidirectional)
        self.dropout_rate = check_dropout_rate(dropout_rate)
        self.time_major = bool(time_major)
        self.deterministic = bool(deterministic)
        if params is None:
            params = init_layers(cells, rngs.params(), input_size, self.bidirectional, dtype)
        else:
            params = tuple(params)
            pair = (lambda p: isinstance(p, Bidirectional)) if self.bidirectional else (lambda p: True)
            if len(params) != len(cells) or not all(map(pair, params)):
                raise ValueError(f"params must have one entry per layer ({len(cells)})"
                                 + (", each an lj.Bidirectional pair" if self.bidirectional else "")
                                 + f"; got {len(params)} entries")
        self.layers = _as_params(params)
        self.initial = (_as_params(zero_initial_states(cells, params, self.bidirectional))
                        if learn_initial_state else nnx.data(None))
        if self.dropout_rate > 0.0 and len(cells) == 1:
            warnings.warn("dropout_rate applies between layers (as in PyTorch's nn.LSTM), so with one layer "
                          "it does nothing", stacklevel=2)
        # As nnx.Dropout: a stream forked from `rngs` draws the masks (or pass rngs= at call time).
        self.rngs = rngs["dropout"].fork() if self.dropout_rate > 0.0 and rngs is not None else nnx.data(None)

    def lj_params(self) -> tuple[Params, ...]:
        """The weights as arrays, structured as `lj.init_layers` returns them."""
        return _as_arrays(self.layers)

    def initial_state(self, batch_shape: tuple[int, ...] = ()) -> tuple[State, ...]:
        """Per layer, the initial state with leaves `(*batch_shape, H)`: zeros, or the learned one."""
        if self.initial is None:
            states = zero_initial_states(self.cells, self.lj_params(), self.bidirectional)
        else:
            states = _as_arrays(self.initial)
        return broadcast_states(states, tuple(batch_shape))

    def __call__(
        self,
        xs: ArrayLike,
        state: Sequence[State] | None = None,
        *,
        lengths: ArrayLike | None = None,
        mask: ArrayLike | None = None,
        resets: ArrayLike | None = None,
        reverse: bool = False,
        deterministic: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None,
    ) -> tuple[tuple[State, ...], jax.Array]:
        """Runs the layers over `xs`.

        Args:
            xs: inputs, shape `(T, *batch, input_size)`, or `(*batch, T, input_size)` when
                `time_major=False`.
            state: per layer, an initial state (leaves `(*batch, H)` or `(H,)`), as in
                `final_states`; `None` gives the learned initial state, or zeros.
            lengths: integer lengths, shape `batch`; outputs past each end are zero.
            mask, resets: bool, shape `(T, *batch)` (`(*batch, T)` batch-first), as in `lj.unroll`.
            reverse: read each sequence backwards (one layer, not bidirectional).
            deterministic: overrides the `deterministic` attribute for this call.
            rngs: overrides where the dropout key comes from (an `nnx.Rngs`, stream or key).

        Returns:
            `(final_states, ys)`: a tuple of per-layer final states (a `lj.Bidirectional` pair
            each when bidirectional), and `ys` of shape `(T, *batch, H)` (`2H` when
            bidirectional; batch-first when `time_major=False`).
        """
        if deterministic is None:
            deterministic = self.deterministic
        dropout_key = None
        if self.dropout_rate > 0.0 and not deterministic and len(self.cells) > 1:
            dropout_key = _dropout_key(self.rngs if rngs is None else rngs)
        if state is None and self.initial is not None:
            state = _as_arrays(self.initial)
        return run_layers(self.cells, self.lj_params(), xs, state, lengths, mask, resets, reverse,
                          self.bidirectional, self.dropout_rate, dropout_key, self.time_major)

    def __nnx_repr__(self):
        return _readable_repr(super().__nnx_repr__())

    def set_view(self, deterministic: bool | None = None):
        """`nnx.view` hook.

        Args:
            deterministic: if True, disables dropout.
        """
        if deterministic is not None:
            self.deterministic = deterministic


def _dropout_key(rngs: Any) -> jax.Array:
    if isinstance(rngs, nnx.Rngs):
        return rngs["dropout"]()
    if isinstance(rngs, nnx.RngStream):
        return rngs()
    if isinstance(rngs, jax.Array):
        return rngs
    raise ValueError("dropout in training mode needs a key: build the module with rngs=nnx.Rngs(...), or pass "
                     f"rngs= (an nnx.Rngs, nnx.RngStream or PRNG key) to the call; got {type(rngs).__name__}")

