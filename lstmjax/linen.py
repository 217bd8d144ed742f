"""Flax Linen modules on lstmjax's pure functions, for code built on `flax.linen`.

The modules create their weights with `self.param` from `cell.init` / `lj.init_layers` (the
input size is read from the input at `init`) and call `cell.step`, `lj.unroll` and
`lj.unroll_layers`; no equation is written here. The params are the cell's own `*Params`
NamedTuples, so `variables["params"]["layers"]` is exactly what `lj.unroll_layers` takes.

    import jax, lstmjax as lj
    from lstmjax import linen as ljlinen

    model = ljlinen.RNN(lj.lstm(32), num_layers=2, dropout_rate=0.1)
    variables = model.init(jax.random.key(0), xs)                  # xs: (T, batch, 3)
    final_states, ys = model.apply(variables, xs, lengths=lengths)  # ys: (T, batch, 32)

Importing this module imports Flax; `import lstmjax` does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from lstmjax._cell import Cell as PureCell
from lstmjax._cell import State
from lstmjax._layers import init_layers
from lstmjax._wrapping import (
    check_cell,
    check_dropout_rate,
    check_input_size,
    layer_cells,
    layout_of,
    run_layers,
    zero_initial_states,
)

__all__ = ["Cell", "RNN"]


class Cell(nn.RNNCellBase):
    """One recurrent cell as a Linen module: `state, y = module.apply(variables, state, x)` is
    `cell.step(variables["params"]["cell"], state, x)`.

    It is an `nn.RNNCellBase`, so Flax's own `nn.RNN(ljlinen.Cell(cell))` runs it (batch-first,
    with `seq_lengths`, `reverse`, ...).

    Attributes:
        cell: an `lj.Cell` (`lj.lstm(H)`, `lj.gru(H)`, `lj.rnn(H)`, ...).
        param_dtype: dtype of the weights drawn by `cell.init`.
    """

    cell: PureCell
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, carry: State, x: ArrayLike) -> tuple[State, jax.Array]:
        """One step; the weights (param `"cell"`, the cell's `*Params`) are made at `init`.

        Args:
            carry: the state, leaves of shape `(..., H)`.
            x: input, shape `(..., input_size)`.

        Returns:
            `(new_state, y)`, `y` of shape `(..., H)`.
        """
        cell = check_cell(self.cell)
        x = jnp.asarray(x)
        if self.has_variable("params", "cell"):     # our message, before Flax's shape check
            check_input_size(cell, self.get_variable("params", "cell"), x, name="x")
        params = self.param("cell", lambda key: cell.init(key, x.shape[-1], self.param_dtype))
        return cell.step(params, carry, x)

    @nn.nowrap
    def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> State:
        """The zero initial state for inputs of shape `(*batch, input_size)` (`rng` is unused)."""
        cell = check_cell(self.cell)
        *batch_shape, input_size = input_shape
        shapes = jax.eval_shape(
            lambda key: cell.initial_state(cell.init(key, input_size, self.param_dtype), tuple(batch_shape)),
            jax.ShapeDtypeStruct((2,), jnp.uint32))
        return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    @property
    def num_feature_axes(self) -> int:
        return 1


class RNN(nn.Module):
    """A recurrent sequence layer (a stack, optionally bidirectional) as a Linen module.

    `final_states, ys = module.apply(variables, xs, ...)` is
    `lj.unroll_layers(cells, variables["params"]["layers"], xs, ...)` (`lj.unroll` for
    `reverse=True`).

    Attributes:
        cell: an `lj.Cell` used by every layer, or a sequence of them, one per layer.
        num_layers: number of layers (default 1, or the number of cells given).
        bidirectional: every layer runs both directions; outputs have `2H` features.
        dropout_rate: dropout on the outputs of every layer but the last when not
            `deterministic` (as PyTorch's `nn.LSTM(dropout=...)`), keyed by the `"dropout"` rng.
        time_major: `xs` of shape `(T, *batch, I)` (lstmjax's layout); `False` takes and returns
            batch-first `(*batch, T, I)`, with `mask`/`resets` of shape `(*batch, T)`.
        learn_initial_state: every layer's initial state (zeros at first) is a parameter,
            `"initial_states"`, with leaves of shape `(H,)`.
        deterministic: default for the call argument of the same name (Linen's convention: one
            of the two must be given when dropout can apply).
        param_dtype: dtype of the weights drawn at `init`.
    """

    cell: PureCell | Sequence[PureCell]
    num_layers: int | None = None
    bidirectional: bool = False
    dropout_rate: float = 0.0
    time_major: bool = True
    learn_initial_state: bool = False
    deterministic: bool | None = None
    param_dtype: Any = jnp.float32

    @nn.compact
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
    ) -> tuple[tuple[State, ...], jax.Array]:
        """Runs the layers over `xs`; at `init`, draws the weights for `xs.shape[-1]` inputs.

        Args:
            xs: inputs, shape `(T, *batch, input_size)`, or `(*batch, T, input_size)` when
                `time_major=False`.
            state: per layer, an initial state (leaves `(*batch, H)` or `(H,)`), as in
                `final_states`; `None` gives the learned initial state, or zeros.
            lengths: integer lengths, shape `batch`; outputs past each end are zero.
            mask, resets: bool, shape `(T, *batch)` (`(*batch, T)` batch-first), as in `lj.unroll`.
            reverse: read each sequence backwards (one layer, not bidirectional).
            deterministic: `True` turns dropout off; overrides the attribute.

        Returns:
            `(final_states, ys)`: a tuple of per-layer final states (a `lj.Bidirectional` pair
            each when bidirectional), and `ys` of shape `(T, *batch, H)` (`2H` when
            bidirectional; batch-first when `time_major=False`).
        """
        cells = layer_cells(self.cell, self.num_layers)
        dropout_rate = check_dropout_rate(self.dropout_rate)
        xs = jnp.asarray(xs)
        if self.has_variable("params", "layers"):   # our message, before Flax's shape check
            layers = self.get_variable("params", "layers")
            check_input_size(cells[0], layers[0].forward if self.bidirectional else layers[0], xs,
                             layout=layout_of(self.time_major))
        layers = self.param("layers", lambda key: init_layers(cells, key, xs.shape[-1], self.bidirectional,
                                                              self.param_dtype))
        if self.learn_initial_state:
            initial = self.param("initial_states", lambda _: zero_initial_states(cells, layers, self.bidirectional))
            if state is None:
                state = initial
        dropout_key = None
        if dropout_rate > 0.0 and len(cells) > 1:
            deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
            if not deterministic:
                dropout_key = self.make_rng("dropout")
        return run_layers(cells, tuple(layers), xs, state, lengths, mask, resets, reverse, self.bidirectional,
                          dropout_rate, dropout_key, self.time_major)
