"""The fast path of `lj.unroll`: a whole-sequence recurrence whose derivative is laid out by hand.

Plain autodiff of a `lax.scan` over a cell's step works, but its reverse pass adds each step's
weight gradient (`h_{t-1}ᵀ · dz_t`, a small matrix multiply) inside the backward loop. Here the
derivative of the whole sequence is written as a `jax.custom_jvp` whose tangent is built so that
JAX's own transposition gives the fast backward pass:

1. the forward scan (the same equations as the cell's step) also stacks, for every step, the
   `h` before it and the coefficients of the step's linearisation (such as `σ'` of each gate);
2. the tangent contributed by the weights is computed for all steps at once, outside any loop:
   `dxz = dxs · w_x + xs · dw_x + db_x` and `dhz_w = h_prev · dw_h + db_h`, shapes `(T, *batch, G)`;
3. one linear scan carries only the state's tangent: `dhz_t = dh_{t-1} · w_h + dhz_w_t`, then the
   family's linearised step (elementwise, from the stacked coefficients). Its product is written
   against `w_hᵀ`, transposed once before the loop (`lstmjax._products`), so that the backward
   loop's `ct · w_hᵀ` reads a row-major matrix (forward mode, which runs this loop as written,
   reads `w_hᵀ` transposed instead: training is what the layout favours).

Under `jax.grad`, JAX transposes step 3 into one reverse scan carrying only the state's
cotangent, and step 2 into single large matrix multiplies (`dw_h = Σ_t h_{t-1}ᵀ dz_t` as one
`(H, T·B) × (T·B, G)` product). Because the rule is a JVP, not a VJP, forward mode (`jax.jvp`,
`jax.jacfwd`), Hessian-vector products, `vmap` and float64 keep working; the forward pass alone
(no derivative) is the same scan as the plain path.

A family opts in by giving its `lj.Cell` a `FusedRecurrence` (see `make_cell`); `lj.unroll` takes
this path for the cells that have one, from the family's `min_hidden_size` up, with or without
`lengths`/`mask`, in either direction and under `remat`, and falls back to the step-by-step scan
for `resets`, for `lj.unroll_with_internals`, for a cell whose `step` or `step_with_internals`
was replaced (`lstmjax._cell.is_as_built`) and for every other cell. Thresholds come
from measurements, not from the theory: on a 2-core AMD EPYC CPU (XLA:CPU, jax 0.10.2, one
jitted loss-and-gradient, B = 32, D = 32, T = 100 unless noted, median CPU time of 15
interleaved rounds, fast ÷ step-by-step; LSTM and RNN measured 2026-11-30 with the row-major
recurrent products of `lstmjax._products` on both paths, GRU 2026-11-25):

    LSTM  H = 64: 1.20   H = 128: 0.75   H = 256: 0.96   H = 512 (T = 50): 0.80   -> from H = 128
    RNN   H = 128: 1.06  H = 256: 0.74   H = 512 (T = 50): 0.97                   -> from H = 256
    GRU   H = 128: 1.01  H = 256: 1.15   H = 512 (T = 50): 1.06                   -> no fast path

Below those sizes, and for the GRU (whose reset gate keeps two `(T, ..., 3H)` tangent arrays
alive), the passes over `(T, ..., G)` arrays outside the loop cost more than the lighter backward
loop saves. On accelerators these numbers have not been measured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from lstmjax._cell import select_state, zero_where_invalid
from lstmjax._products import matmul_given_transpose


class FusedRecurrence(NamedTuple):
    """How one cell family plugs into the fast path.

    The family's pre-activations are `xz = x · w_x + b_x` and `hz = h · w_h + b_h`, each of shape
    `(..., G)` (`G = 4H` for the LSTM, `H` for the RNN); everything after them is elementwise per unit.

    Attributes:
        weights: `weights(params) -> (w_x, w_h, b_x, b_h)`, with `b_h` possibly `None`; linear and
            structural, so it also maps a tangent of `params` to the tangents of the four, where a
            field that is `None` (a zero tangent) gives `None`.
        forward: `forward(xz, hz, state) -> (new_state, coefficients)`: one step from the
            pre-activations, and the coefficients of its linearisation (elementwise arrays, such
            as `σ'` of each gate). Computing them here, while the step's values are in cache, and
            stacking them is cheaper on a CPU than any later pass over `(T, ..., G)` arrays.
        tangent: `tangent(coefficients_t, dxz, dhz, dstate) -> dnew_state`, the step's derivative,
            linear in `(dxz, dhz, dstate)`.
        hidden: `hidden(state) -> h`, the part of the state that feeds `hz`; also the output `y`.
        additive: `tangent` depends on `dxz + dhz` only (LSTM, RNN; not a GRU, whose reset gate
            scales the recurrent term): the weights' share of both is then summed before the loop.
        min_hidden_size: the fast path is used from this `H` up. Below it the step-by-step scan
            was faster in our measurements (the extra passes over `(T, ..., G)` arrays outside the
            loop cost more than the smaller backward loop saves when each step's work is small).
        native: the family's native CPU path, if it has one (`lstmjax._native`):
            `native(params, xs, state, reverse, valid) -> (final_state, ys)` (`valid`: `(T, *batch)`
            bool or `None`, as `fused_unroll`'s), used instead of this one from
            `native_min_hidden_size` up, without `resets`, where `lstmjax._native.can_run_natively`
            says it can be (with `remat`, once per checkpointed chunk).
        native_min_hidden_size: see `native`.
        gpu: the family's GPU path, if it has one (`lstmjax._cudnn`, opt-in):
            `gpu(params, xs, state, reverse) -> (final_state, ys)`, every step real, used where
            `lstmjax._cudnn.can_run_on_gpu` says it can be, when asked for (`LSTMJAX_CUDNN=1`),
            without `lengths`, `mask` or `resets` (with `remat`, once per checkpointed chunk, where
            the chunk length divides T).

    A family with a native path only (no XLA fast path: `fused_unroll` was not faster for it)
    leaves `weights`, `forward`, `tangent` and `hidden` at `None`.
    """

    weights: Callable[[Any], tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]] | None = None
    forward: Callable[[jax.Array, jax.Array, Any], tuple[Any, Any]] | None = None
    tangent: Callable[[Any, jax.Array, jax.Array, Any], Any] | None = None
    hidden: Callable[[Any], jax.Array] | None = None
    additive: bool = False
    min_hidden_size: int = 1
    native: Callable[[Any, jax.Array, Any, bool, jax.Array | None], tuple[Any, jax.Array]] | None = None
    native_min_hidden_size: int = 1
    gpu: Callable[[Any, jax.Array, Any, bool], tuple[Any, jax.Array]] | None = None


def fused_unroll(recurrence: FusedRecurrence, params: Any, xs: jax.Array, state: Any,
                 valid: jax.Array | None, reverse: bool) -> tuple[Any, jax.Array]:
    """`(final_state, ys)` of the recurrence over `xs`, with the hand-laid-out derivative.

    Args:
        recurrence: the family's `FusedRecurrence`.
        params: the cell's parameters.
        xs: inputs, shape `(T, *batch, input_size)`.
        state: initial state, leaves of shape `(*batch, H)` (already broadcast).
        valid: bool `(T, *batch)` (`False` holds the state and zeroes the output) or `None`.
        reverse: scan from step `T - 1` down to 0.
    """
    sequence = jax.custom_jvp(lambda params, xs, state, valid: _forward(recurrence, params, xs, state, valid,
                                                                         reverse, with_residuals=False)[:2])
    sequence.defjvp(lambda primals, tangents: _jvp(recurrence, reverse, primals, tangents), symbolic_zeros=True)
    return sequence(params, xs, state, valid)


def _forward(recurrence, params, xs, state, valid, reverse, with_residuals):
    """The forward scan; with residuals it also stacks `h` before each step and each step's coefficients."""
    w_x, w_h, b_x, b_h = recurrence.weights(params)

    def body(carry, inputs):
        x, is_valid = inputs
        hz = recurrence.hidden(carry) @ w_h
        if b_h is not None:
            hz = hz + b_h
        new, coefficients = recurrence.forward(x @ w_x + b_x, hz, carry)
        y = recurrence.hidden(new)
        if is_valid is not None:
            new = select_state(is_valid, new, carry)
            y = zero_where_invalid(is_valid, y)
        return new, ((y, recurrence.hidden(carry), coefficients) if with_residuals else (y,))

    final, stacked = lax.scan(body, state, (xs, valid), reverse=reverse)
    return (final, *stacked)


def _jvp(recurrence, reverse, primals, tangents):
    params, xs, state, valid = primals
    d_params, d_xs, d_state, _ = tangents
    final, ys, h_before, coefficients = _forward(recurrence, params, xs, state, valid, reverse, with_residuals=True)
    w_x, w_h, _, _ = recurrence.weights(params)
    dw_x, dw_h, db_x, db_h = recurrence.weights(_zeros_to_none(d_params))

    # The weights' (and inputs') share of every step's tangent, for all steps at once.
    dxz = _sum_terms([(d_xs, lambda d: d @ w_x), (dw_x, lambda d: xs @ d), (db_x, lambda d: d)])
    dhz_weights = _sum_terms([(dw_h, lambda d: h_before @ d), (db_h, lambda d: d)])
    shape = ys.shape[:-1] + (w_h.shape[-1],)
    if recurrence.additive:
        dxz, dhz_weights = _sum_terms([(dxz, lambda d: d), (dhz_weights, lambda d: d)]), None
    dxz = jnp.zeros(shape, ys.dtype) if dxz is None else jnp.broadcast_to(dxz, shape)
    if dhz_weights is not None:
        dhz_weights = jnp.broadcast_to(dhz_weights, shape)
    d_state = jax.tree_util.tree_map(lambda t, s: jnp.zeros_like(s) if isinstance(t, SymbolicZero) else t,
                                     d_state, state, is_leaf=lambda t: isinstance(t, SymbolicZero))

    w_h_transposed = jnp.swapaxes(w_h, -1, -2)

    def body(d_carry, inputs):
        dxz_t, dhz_weights_t, coefficients_t, is_valid = inputs
        dhz = matmul_given_transpose(recurrence.hidden(d_carry), w_h_transposed)
        if dhz_weights_t is not None:
            dhz = dhz + dhz_weights_t
        d_new = recurrence.tangent(coefficients_t, dxz_t, dhz, d_carry)
        dy = recurrence.hidden(d_new)
        if is_valid is not None:
            d_new = select_state(is_valid, d_new, d_carry)
            dy = zero_where_invalid(is_valid, dy)
        return d_new, dy

    d_final, d_ys = lax.scan(body, d_state, (dxz, dhz_weights, coefficients, valid), reverse=reverse)
    return (final, ys), (d_final, d_ys)


def _zeros_to_none(tree: Any) -> Any:
    """`tree` with its symbolic-zero leaves replaced by `None` (which `weights` passes through)."""
    is_zero = lambda t: isinstance(t, SymbolicZero)  # noqa: E731
    return jax.tree_util.tree_map(lambda t: None if is_zero(t) else t, tree, is_leaf=is_zero)


def _sum_terms(terms):
    """Sum of `f(t)` over the `(t, f)` whose tangent `t` is not a symbolic zero; `None` if all are."""
    total = None
    for tangent, term in terms:
        if tangent is None or isinstance(tangent, SymbolicZero):
            continue
        value = term(tangent)
        total = value if total is None else total + value
    return total
