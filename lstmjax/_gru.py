"""The gated recurrent unit, in PyTorch's `nn.GRU` formulation (Cho et al. 2014).

Equations, for input `x` and hidden state `h`, gate blocks in the order (r, z, n):

    r  = σ(x w_xr + h w_hr + b_r)               reset gate
    z  = σ(x w_xz + h w_hz + b_z)               update gate: % of the old state to keep
    n  = tanh(x w_xn + b_n + r · (h w_hn + b_hn))  candidate; the reset gate scales the
                                                 recurrent term *including* its bias b_hn
    h' = (1 − z) · n + z · h                     new hidden state, also the output y

PyTorch's two biases map as `b = b_ih + [b_hh_r, b_hh_z, 0]` and `b_hn = b_hh_n`, so weights
port without surprises.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from lstmjax._cell import Cell, check_input, check_param_shapes, check_positive_int, check_state_leaf, make_cell
from lstmjax._fused import FusedRecurrence
from lstmjax._initializers import InitScheme, draw_kernels, resolve
from lstmjax._native_gru import MIN_HIDDEN_SIZE as NATIVE_MIN_HIDDEN_SIZE
from lstmjax._native_gru import native_unroll
from lstmjax._products import recurrent_product


class GRUParams(NamedTuple):
    """GRU weights, gate blocks (r, z, n) along the last axis, in→out (`x @ w_x`).

    Attributes:
        w_x: input weights, shape `(input_size, 3H)`.
        w_h: recurrent weights, shape `(H, 3H)`.
        b: bias, shape `(3H,)`: `b_r`, `b_z` and the candidate's input-side bias `b_n`.
        b_hn: the candidate's recurrent-side bias, shape `(H,)`, applied inside the reset gate.
    """

    w_x: jax.Array
    w_h: jax.Array
    b: jax.Array
    b_hn: jax.Array


class GRUInternals(NamedTuple):
    """One GRU step's gates `r`, `z`, candidate `n` and new hidden state `h`, each `(..., H)`."""

    r: jax.Array
    z: jax.Array
    n: jax.Array
    h: jax.Array


def gru_step_with_internals(
    params: GRUParams, h: jax.Array, x: ArrayLike, hidden_size: int
) -> tuple[jax.Array, jax.Array, GRUInternals]:
    """One GRU step (see the module docstring).

    Args:
        params: `GRUParams` with `w_x: (I, 3H)`, `w_h: (H, 3H)`, `b: (3H,)`, `b_hn: (H,)`.
        h: hidden state, shape `(..., H)`.
        x: input, shape `(..., I)` with the same leading shape as `h`.
        hidden_size: `H`, checked against the shapes of `params` and `h`.

    Returns:
        `(h', y, internals)` with `y = h'` of shape `(..., H)`.
    """
    x = jnp.asarray(x)
    if not isinstance(params, GRUParams):
        raise ValueError(f"params must be an lj.GRUParams, got {type(params).__name__}")
    check_param_shapes("GRU", params, {
        "w_x": (params.w_x.shape[0], 3 * hidden_size), "w_h": (hidden_size, 3 * hidden_size),
        "b": (3 * hidden_size,), "b_hn": (hidden_size,)})
    check_input(params.w_x, x)
    check_state_leaf("state", jnp.asarray(h), x.shape[:-1], hidden_size)
    zx = x @ params.w_x + params.b
    zh = recurrent_product(h, params.w_h)
    xr, xz, xn = jnp.split(zx, 3, axis=-1)
    hr, hz, hn = jnp.split(zh, 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * (hn + params.b_hn))
    h = (1.0 - z) * n + z * h
    return h, h, GRUInternals(r=r, z=z, n=n, h=h)


GRU_FUSED = FusedRecurrence(native=native_unroll, native_min_hidden_size=NATIVE_MIN_HIDDEN_SIZE)
"""The GRU's native CPU path for `lj.unroll` (`lstmjax._native_gru`); it has no XLA fast path
(`lstmjax._fused` measured slower than the step-by-step scan for the GRU)."""


def gru(hidden_size: int, init: str | InitScheme = "default") -> Cell:
    """The GRU cell in PyTorch's formulation.

    Equations (gate blocks in the order r, z, n):

        r = σ(x w_xr + h w_hr + b_r),  z = σ(x w_xz + h w_hz + b_z),
        n = tanh(x w_xn + b_n + r · (h w_hn + b_hn)),  h' = (1 − z) · n + z · h,  y = h'.

    Args:
        hidden_size: `H`, the number of hidden units.
        init: a preset name (`"default"`, `"pytorch"`, `"flax"`, `"keras"`) or an `lj.InitScheme`.
            The scheme's `recurrent_bias` draws `b_hn` and the recurrent part of `b_r`, `b_z`.

    Returns:
        An `lj.Cell` whose params are `GRUParams` and whose state is the array `h`, `(..., H)`.

    In float32 on a single CPU device with the native kernel (see `lj.native_kernel_status()`),
    `lj.unroll` runs this cell's time loops, forward and backward, in a native kernel from
    `H = 16` up (`lstmjax._native_gru`), with the same results to rounding as the step-by-step scan.
    """
    hidden_size = check_positive_int("hidden_size", hidden_size)
    scheme = resolve(init, hidden_size)

    def init_params(key: jax.Array, input_size: int, dtype=jnp.float32) -> GRUParams:
        input_size = check_positive_int("input_size", input_size)
        w_x, w_h, b, recurrent_b = draw_kernels(scheme, key, input_size, hidden_size, 3, dtype)
        rz = 2 * hidden_size
        b = b.at[:rz].add(recurrent_b[:rz])
        return GRUParams(w_x=w_x, w_h=w_h, b=b, b_hn=recurrent_b[rz:])

    def initial_state(params: GRUParams, batch_shape: tuple[int, ...] = ()) -> jax.Array:
        return jnp.zeros((*batch_shape, hidden_size), params.w_h.dtype)

    return make_cell("gru", hidden_size, init_params, initial_state, gru_step_with_internals, fused=GRU_FUSED)
