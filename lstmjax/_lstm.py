"""The long short-term memory cell (Hochreiter & Schmidhuber 1997, with a forget gate).

Equations, for input `x`, short-term memory `h` and long-term memory `c`, gates in the order
(i, f, g, o) along the last axis of the fused weights:

    i  = σ(x w_xi + h w_hi + b_i)      input gate: % of the potential memory to remember
    f  = σ(x w_xf + h w_hf + b_f)      forget gate: % of the long-term memory to remember
    g  = tanh(x w_xg + h w_hg + b_g)   candidate: the potential long-term memory
    o  = σ(x w_xo + h w_ho + b_o)      output gate: % of the potential short-term memory to output
    c' = f · c + i · g                 new long-term memory
    h' = o · tanh(c')                  new short-term memory, also the output y
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from lstmjax._cell import Cell, check_input, check_param_shapes, check_positive_int, check_state_leaf, make_cell
from lstmjax._cudnn import cudnn_unroll
from lstmjax._fused import FusedRecurrence
from lstmjax._initializers import InitScheme, draw_kernels, resolve
from lstmjax._native import MIN_HIDDEN_SIZE as NATIVE_MIN_HIDDEN_SIZE
from lstmjax._native import native_unroll
from lstmjax._products import recurrent_product


class LSTMParams(NamedTuple):
    """LSTM weights, gate blocks (i, f, g, o) along the last axis, in→out (`x @ w_x`).

    Attributes:
        w_x: input weights, shape `(input_size, 4H)`.
        w_h: recurrent weights, shape `(H, 4H)`.
        b: bias, shape `(4H,)`; the forget-gate bias is `b[H:2H]`.
    """

    w_x: jax.Array
    w_h: jax.Array
    b: jax.Array


class LSTMState(NamedTuple):
    """LSTM memories, each of shape `(..., H)`.

    Attributes:
        h: short-term memory (hidden state, the output).
        c: long-term memory (cell state).
    """

    h: jax.Array
    c: jax.Array


class LSTMInternals(NamedTuple):
    """Everything one LSTM step computes, each of shape `(..., H)`: the gates `i, f, o`
    (percentages in (0, 1)), the candidate `g` (in (-1, 1)) and the new memories `c, h`."""

    i: jax.Array
    f: jax.Array
    g: jax.Array
    o: jax.Array
    c: jax.Array
    h: jax.Array


def lstm_step_with_internals(
    params: LSTMParams, state: LSTMState, x: ArrayLike, hidden_size: int
) -> tuple[LSTMState, jax.Array, LSTMInternals]:
    """One LSTM step (see the module docstring), returning the internals too.

    Args:
        params: `LSTMParams` with `w_x: (I, 4H)`, `w_h: (H, 4H)`, `b: (4H,)`.
        state: `LSTMState` with `h`, `c` of shape `(..., H)`.
        x: input, shape `(..., I)` with the same leading shape as the state.
        hidden_size: `H`, checked against the shapes of `params` and `state`.

    Returns:
        `(new_state, y, internals)` with `y = new_state.h` of shape `(..., H)`.
    """
    x = jnp.asarray(x)
    _check_lstm(params, state, x, hidden_size)
    i, f, g, o = _gates(x @ params.w_x + recurrent_product(state.h, params.w_h) + params.b)
    c = f * state.c + i * g
    h = o * jnp.tanh(c)
    return LSTMState(h=h, c=c), h, LSTMInternals(i=i, f=f, g=g, o=o, c=c, h=h)


def _check_lstm(params: LSTMParams, state: LSTMState, x: jax.Array, hidden_size: int) -> None:
    if not isinstance(params, LSTMParams):
        raise ValueError(f"params must be an lj.LSTMParams, got {type(params).__name__}")
    if not isinstance(state, LSTMState):
        raise ValueError(f"state must be an lj.LSTMState(h, c), got {type(state).__name__}")
    input_size = params.w_x.shape[0]
    check_param_shapes("LSTM", params, {
        "w_x": (input_size, 4 * hidden_size), "w_h": (hidden_size, 4 * hidden_size), "b": (4 * hidden_size,)})
    check_input(params.w_x, x)
    batch_shape = x.shape[:-1]
    check_state_leaf("state.h", state.h, batch_shape, hidden_size)
    check_state_leaf("state.c", state.c, batch_shape, hidden_size)


def _fused_forward(xz: jax.Array, hz: jax.Array, state: LSTMState):
    """One step, and the coefficients of its linearisation (`_fused_tangent`)."""
    i, f, g, o = _gates(xz + hz)
    c = f * state.c + i * g
    tanh_c = jnp.tanh(c)
    coefficients = (g * i * (1 - i), state.c * f * (1 - f), i * (1 - g * g), tanh_c * o * (1 - o), f,
                    o * (1 - tanh_c * tanh_c))
    return LSTMState(h=o * tanh_c, c=c), coefficients


def _fused_tangent(coefficients, dxz: jax.Array, dhz: jax.Array, d_state: LSTMState) -> LSTMState:
    """`dc' = f·dc + g·di + c·df + i·dg` and `dh' = o·(1 − tanh²c')·dc' + tanh(c')·do`."""
    a_i, a_f, a_g, a_o, f, a_c = coefficients
    dzi, dzf, dzg, dzo = jnp.split(dxz + dhz, 4, axis=-1)
    dc = f * d_state.c + a_i * dzi + a_f * dzf + a_g * dzg
    return LSTMState(h=a_c * dc + a_o * dzo, c=dc)


LSTM_FUSED = FusedRecurrence(
    weights=lambda params: (params.w_x, params.w_h, params.b, None),
    forward=_fused_forward, tangent=_fused_tangent,
    hidden=lambda state: state.h, additive=True, min_hidden_size=128,
    native=native_unroll, native_min_hidden_size=NATIVE_MIN_HIDDEN_SIZE, gpu=cudnn_unroll)
"""The LSTM's whole-sequence fast path for `lj.unroll` (see `lstmjax._fused`)."""


def _gates(z: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
    return jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg), jax.nn.sigmoid(zo)


def lstm(hidden_size: int, forget_bias: float | None = None, init: str | InitScheme = "default") -> Cell:
    """The LSTM cell of the StatQuest video: three sigmoid gates, a tanh candidate, two memories.

    Equations (gate blocks in the order i, f, g, o):

        i = σ(x w_xi + h w_hi + b_i),  f = σ(x w_xf + h w_hf + b_f),
        g = tanh(x w_xg + h w_hg + b_g),  o = σ(x w_xo + h w_ho + b_o),
        c' = f · c + i · g,  h' = o · tanh(c'),  y = h'.

    Args:
        hidden_size: `H`, the number of units in each memory.
        forget_bias: value written into the forget-gate bias `b[H:2H]` at initialisation
            (it is not added inside the step). `None` keeps the preset's choice: 1.0 for
            `"default"` and `"keras"`, the drawn bias for `"pytorch"` and `"flax"`.
        init: a preset name (`"default"`, `"pytorch"`, `"flax"`, `"keras"`) or an `lj.InitScheme`.

    Returns:
        An `lj.Cell` whose params are `LSTMParams` and whose state is `LSTMState(h, c)`.
    """
    hidden_size = check_positive_int("hidden_size", hidden_size)
    scheme = resolve(init, hidden_size)
    if forget_bias is not None:
        scheme = scheme._replace(forget_bias=float(forget_bias))

    def init_params(key: jax.Array, input_size: int, dtype=jnp.float32) -> LSTMParams:
        input_size = check_positive_int("input_size", input_size)
        w_x, w_h, b, recurrent_b = draw_kernels(scheme, key, input_size, hidden_size, 4, dtype)
        b = b + recurrent_b
        if scheme.forget_bias is not None:
            b = b.at[hidden_size:2 * hidden_size].set(scheme.forget_bias)
        return LSTMParams(w_x=w_x, w_h=w_h, b=b)

    def initial_state(params: LSTMParams, batch_shape: tuple[int, ...] = ()) -> LSTMState:
        zeros = jnp.zeros((*batch_shape, hidden_size), params.w_h.dtype)
        return LSTMState(h=zeros, c=zeros)

    return make_cell("lstm", hidden_size, init_params, initial_state, lstm_step_with_internals,
                     output=lambda state: state.h, fused=LSTM_FUSED)
