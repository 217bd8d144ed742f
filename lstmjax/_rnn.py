"""The vanilla (Elman) recurrent cell: the baseline whose gradients vanish or explode.

Equations, for input `x` and hidden state `h`:

    a  = x w_x + h w_h + b      pre-activation
    h' = φ(a)                    φ = tanh (default), relu or linear; h' is also the output y

Back-propagating through T steps multiplies by `w_hᵀ · diag(φ'(a_t))` once per step, so the
gradient reaching step 0 scales roughly like the T-th power of the recurrent weight: a scalar
weight of 2 over 50 steps gives 2^50, a weight of 0.5 gives 0.5^50.

`lj.unroll` runs this cell's time loops in a native CPU kernel (`lstmjax._native_rnn`) from
`H = 4` up where it can, else on the XLA fast path (`lstmjax._fused`) from `H = 256` up, else
step by step. The kernel's threshold was measured with `python -m experiments.native_speedup
--families rnn` (tanh; B = 32, T = 100, D = 32; 2-core AMD EPYC, 2026-11-30; median of 7 to 15
rounds, kernel ÷ XLA path, training step (forward only)):

    H = 1: 1.85 (2.48)   H = 2: 0.93 (1.41)   H = 4: 0.81 (1.10)   H = 8: 0.72 (0.93)
    H = 16: 0.74 (0.66)  H = 32: 0.51 (0.71)  H = 64: 0.57 (0.68)  H = 128: 0.54 (0.67)
    H = 256: 0.57 (0.54) H = 512: 0.77 (0.73)                              -> from H = 4
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from lstmjax._cell import Cell, check_input, check_param_shapes, check_positive_int, check_state_leaf, make_cell
from lstmjax._fused import FusedRecurrence
from lstmjax._initializers import InitScheme, draw_kernels, resolve
from lstmjax._native_rnn import MIN_HIDDEN_SIZE as NATIVE_MIN_HIDDEN_SIZE
from lstmjax._native_rnn import native_unroll
from lstmjax._products import recurrent_product

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh, "relu": jax.nn.relu, "linear": lambda a: a}


class RNNParams(NamedTuple):
    """Vanilla RNN weights, in→out (`x @ w_x`).

    Attributes:
        w_x: input weights, shape `(input_size, H)`.
        w_h: recurrent weights, shape `(H, H)`.
        b: bias, shape `(H,)`.
    """

    w_x: jax.Array
    w_h: jax.Array
    b: jax.Array


class RNNInternals(NamedTuple):
    """One vanilla RNN step's pre-activation `a` and new hidden state `h`, each `(..., H)`."""

    a: jax.Array
    h: jax.Array


def rnn_step_with_internals(
    params: RNNParams, h: jax.Array, x: ArrayLike, hidden_size: int, activation: Callable[[jax.Array], jax.Array]
) -> tuple[jax.Array, jax.Array, RNNInternals]:
    """One vanilla RNN step `h' = φ(x w_x + h w_h + b)`.

    Args:
        params: `RNNParams` with `w_x: (I, H)`, `w_h: (H, H)`, `b: (H,)`.
        h: hidden state, shape `(..., H)`.
        x: input, shape `(..., I)` with the same leading shape as `h`.
        hidden_size: `H`, checked against the shapes of `params` and `h`.
        activation: the nonlinearity φ.

    Returns:
        `(h', y, internals)` with `y = h'` of shape `(..., H)`.
    """
    x = jnp.asarray(x)
    if not isinstance(params, RNNParams):
        raise ValueError(f"params must be an lj.RNNParams, got {type(params).__name__}")
    check_param_shapes("RNN", params, {
        "w_x": (params.w_x.shape[0], hidden_size), "w_h": (hidden_size, hidden_size), "b": (hidden_size,)})
    check_input(params.w_x, x)
    check_state_leaf("state", jnp.asarray(h), x.shape[:-1], hidden_size)
    a = x @ params.w_x + recurrent_product(h, params.w_h) + params.b
    h = activation(a)
    return h, h, RNNInternals(a=a, h=h)


def rnn_fused(activation: Callable[[jax.Array], jax.Array], native: str | None = None) -> FusedRecurrence:
    """The vanilla RNN's whole-sequence fast path for `lj.unroll` (see `lstmjax._fused`):
    `h' = φ(a)`, `dh' = φ'(a)·da`, with `φ'` from `jax.jvp` of the activation; and, where `native`
    names the activation (`"tanh"`, `"relu"`, `"linear"`), its native CPU path (`lstmjax._native_rnn`),
    which takes over from `NATIVE_MIN_HIDDEN_SIZE` up where it can run."""

    def forward(xz, hz, h):
        h, slope = jax.jvp(activation, (xz + hz,), (jnp.ones_like(xz),))
        return h, slope

    return FusedRecurrence(
        weights=lambda params: (params.w_x, params.w_h, params.b, None),
        forward=forward,
        tangent=lambda slope, dxz, dhz, dh: slope * (dxz + dhz),
        hidden=lambda h: h, additive=True, min_hidden_size=256,
        native=None if native is None else functools.partial(native_unroll, activation=native),
        native_min_hidden_size=NATIVE_MIN_HIDDEN_SIZE)


def rnn(hidden_size: int, activation: str = "tanh", init: str | InitScheme = "default") -> Cell:
    """The vanilla (Elman) RNN cell: `h' = φ(x w_x + h w_h + b)`, `y = h'`.

    Args:
        hidden_size: `H`, the number of hidden units.
        activation: `"tanh"` (default) or `"relu"`, as PyTorch's `nn.RNN(nonlinearity=...)`, or
            `"linear"` (no nonlinearity: `∂h_T/∂h_0 = w_hᵀ^T` exactly, the textbook case).
        init: a preset name (`"default"`, `"pytorch"`, `"flax"`, `"keras"`) or an `lj.InitScheme`;
            the PyTorch preset's bias is the sum of two U(±1/sqrt(H)) draws (`b_ih + b_hh`).

    Returns:
        An `lj.Cell` whose params are `RNNParams` and whose state is the array `h`, `(..., H)`.

    In float32 on a single CPU device with the native kernel (see `lj.native_kernel_status()`),
    `lj.unroll` runs this cell's time loops, forward and backward, in a native kernel from
    `H = 4` up (`lstmjax._native_rnn`), with the same results to rounding as the step-by-step scan.
    """
    hidden_size = check_positive_int("hidden_size", hidden_size)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    phi = ACTIVATIONS[activation]
    scheme = resolve(init, hidden_size)

    def init_params(key: jax.Array, input_size: int, dtype=jnp.float32) -> RNNParams:
        input_size = check_positive_int("input_size", input_size)
        w_x, w_h, b, recurrent_b = draw_kernels(scheme, key, input_size, hidden_size, 1, dtype)
        return RNNParams(w_x=w_x, w_h=w_h, b=b + recurrent_b)

    def initial_state(params: RNNParams, batch_shape: tuple[int, ...] = ()) -> jax.Array:
        return jnp.zeros((*batch_shape, hidden_size), params.w_h.dtype)

    def step_with_internals(params, h, x, hidden_size):
        return rnn_step_with_internals(params, h, x, hidden_size, phi)

    return make_cell(f"rnn_{activation}", hidden_size, init_params, initial_state, step_with_internals,
                     fused=rnn_fused(phi, native=activation))
