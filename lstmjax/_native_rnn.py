"""The vanilla RNN's native CPU path of `lj.unroll`: its time loops in a hand-written kernel, as XLA custom calls.

The same construction as the GRU's (`lstmjax._native_gru`) and the LSTM's (`lstmjax._native`, whose
primitive machinery, padding, `vmap` rules and dispatch test this module reuses), for `lj.rnn`
(`h' = φ(x w_x + h w_h + b)`, φ = tanh, relu or linear, `lstmjax._rnn`) with the kernel
`native/rnn_cpu.cc`. The input projection `xz = xs·w_x + b` (`(T, B, H)`, one large matrix multiply)
is computed in XLA, outside the custom derivative, so JAX differentiates it itself; the recurrence
over `xz` is a `jax.custom_jvp` with three primitives, each with the activation as a static
parameter (`activation`: `"tanh"`, `"relu"` or `"linear"`; an int attribute of the kernel):

* `rnn_forward`: `(hs,) = forward(xz, valid, w_h, h0)`, with `hs` (`(T, B, H)`) the state after
  each step (held where `valid` (`(T, B)`, bool) is `False`). Nothing else is saved for a
  derivative: `φ'(a_t)` is a function of `h_t = φ(a_t)` (tanh: `1 − h²`; relu: `h > 0`, so 0 at
  `a = 0` as `jax.nn.relu`'s; linear: 1);
* `rnn_tangent`: `dhs = L(dz, dh0)`, the sequence's derivative given the tangent `dz` (`(T, B, H)`)
  of every step's pre-activation from the inputs and weights (`dxz + h_{t-1}·dw_h`, formed outside
  the loop: the RNN is additive, so the two shares are summed before it); linear in `(dz, dh0)`,
  with `w_h, hs, valid` as coefficients;
* `rnn_backward`: its transpose `(da, dh0) = Lᵀ(ct_hs)`, backpropagation through time carrying only
  `dh`, native; `da` is written over `ct_hs` (one `(T, B, H)` buffer less per step). The weight
  gradients are then the transposes of the products outside the loop (`dw_h = Σ_t h_{t-1}ᵀ·da_t`
  from one pass of the native weight-gradient kernel, `lstmjax._native.project_weight_tangents`;
  `dw_x`, `db` and `dxs` from XLA's transpose of `xz`).

As for the others, each primitive has a pure-JAX reference (a `lax.scan`) that defines it and gives
its lowering off the CPU, under `jax.export` and its higher derivatives; `vmap` over data folds
into the kernel's batch and `vmap` over weights maps the kernel. Inside the lowering the batch is
padded to a multiple of 4 rows and `H` to a multiple of 32 units with zeros: a padded unit has
`a = 0` and `h = φ(0) = 0` for every activation, and keeps it, with zero derivatives.

`lj.unroll` takes this path for an as-built `lj.rnn` cell in float32 without `resets`, from
`MIN_HIDDEN_SIZE` up, where `lstmjax._native.can_run_natively` holds (with `remat`, once per chunk);
below it, the XLA fast path (`lstmjax._fused`, from `H = 256`) or the step-by-step scan.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.interpreters import ad, batching

from lstmjax._fused import _sum_terms
from lstmjax._native import (
    _aval,
    _batching_rule,
    _linear_jvp,
    _linear_transpose,
    _pad_recurrent,
    _pad_rows,
    _pad_units,
    _padding,
    _primitive,
    _reference_jvp,
    _threads,
    _unpad,
    project_weight_tangents,
    unroll_over_projection,
)
from lstmjax._native_build import TARGETS

MIN_HIDDEN_SIZE = 4
"""The RNN's native path is used from this hidden size up (measured: see `lstmjax._rnn`)."""

ACTIVATIONS = {"tanh": 0, "relu": 1, "linear": 2}
"""The activations the kernel knows, and its `activation` attribute for each."""

def _times_slope(activation: str, h, d):
    """`φ'(a)·d` with `φ'(a)` from `h = φ(a)` (relu: a select, as `jax.nn.relu`'s derivative, 0 at `a = 0`)."""
    if activation == "tanh":
        return d * (1.0 - h * h)
    if activation == "relu":
        return jnp.where(h > 0, d, jnp.zeros_like(d))
    return d


# ---------------------------------------------------------------- references (the primitives' meaning)

def forward_reference(xz, valid, w_h, h0, *, activation):
    """`rnn_forward` in JAX. xz `(T, B, H)`, valid `(T, B)` bool, w_h `(H, H)`, h0 `(B, H)`; returns `(hs,)`."""
    from lstmjax._rnn import ACTIVATIONS as PHI  # here, not at the top: lstmjax._rnn imports this module
    phi = PHI[activation]

    def step(h_before, inputs):
        xz_t, real = inputs
        h = jnp.where(real[:, None], phi(xz_t + h_before @ w_h), h_before)
        return h, h

    _, hs = lax.scan(step, h0, (xz, valid))
    return (hs,)


def tangent_reference(w_h, hs, valid, dz, dh0, *, activation):
    """`rnn_tangent` in JAX: the forward-mode scan, `dh_t = φ'(a_t)·(dz_t + dh_{t-1}·w_h)` (held steps
    hold the tangent too). Returns `(dhs,)`, `(T, B, H)`."""
    def step(dh_before, inputs):
        h, real, dz_t = inputs
        dh = jnp.where(real[:, None], _times_slope(activation, h, dz_t + dh_before @ w_h), dh_before)
        return dh, dh

    _, dhs = lax.scan(step, dh0, (hs, valid, dz))
    return (dhs,)


def backward_reference(w_h, hs, valid, ct_hs, *, activation):
    """`rnn_backward` in JAX: the transpose of `tangent_reference` in `(dz, dh0)`."""
    linear = functools.partial(tangent_reference, w_h, hs, valid, activation=activation)
    return jax.linear_transpose(linear, jax.ShapeDtypeStruct(hs.shape, hs.dtype),
                                jax.ShapeDtypeStruct(hs.shape[1:], hs.dtype))((ct_hs,))


# ---------------------------------------------------------------- the kernel's calls (padded)

def _forward_native(xz, valid, w_h, h0, *, activation):
    """`rnn_forward` on the kernel: batch padded to whole row blocks, units to whole unit blocks."""
    steps, batch, hidden = xz.shape
    rows, units = _padding(batch, hidden)
    padded = (steps, batch + rows, hidden + units)
    xz = _pad_rows(_pad_units(xz, units, gates=False), rows, 1)
    valid = _pad_rows(valid.astype(jnp.uint8), rows, 1)
    w_h = _pad_recurrent(w_h, units, blocks=1)
    h0 = jnp.pad(h0, ((0, rows), (0, units)))
    (hs,) = jax.ffi.ffi_call(TARGETS["rnn_forward"], [jax.ShapeDtypeStruct(padded, xz.dtype)])(
        xz, valid, w_h, h0, threads=np.int32(_threads(padded[1])), activation=np.int32(ACTIVATIONS[activation]))
    return (_unpad(hs, batch, hidden, False, 1),)


def _backward_native(w_h, hs, valid, ct_hs, *, activation):
    """`rnn_backward` on the kernel, padded like `_forward_native` (padded units and rows stay zero)."""
    steps, batch, hidden = hs.shape
    rows, units = _padding(batch, hidden)
    w_h = _pad_recurrent(w_h, units, blocks=1)
    hs, ct_hs = (_pad_rows(_pad_units(a, units, gates=False), rows, 1) for a in (hs, ct_hs))
    valid = _pad_rows(valid.astype(jnp.uint8), rows, 1)
    # da is written over ct_hs (the kernel reads each unit's ct_hs at step t just before writing its
    # da there), which is dead after the call in a training step: one (T, B, H) buffer less to
    # allocate (XLA copies ct_hs first where it is still needed).
    da, dh0 = jax.ffi.ffi_call(TARGETS["rnn_backward"], [jax.ShapeDtypeStruct(hs.shape, hs.dtype),
                                                         jax.ShapeDtypeStruct(hs.shape[1:], hs.dtype)],
                               input_output_aliases={3: 0})(
        w_h, hs, valid, ct_hs, threads=np.int32(_threads(batch + rows)), activation=np.int32(ACTIVATIONS[activation]))
    return _unpad(da, batch, hidden, False, 1), _unpad(dh0, batch, hidden, False, 0)


# ---------------------------------------------------------------- primitives

def _forward_avals(xz, valid, w_h, h0, *, activation):
    return (_aval(xz.shape, xz.dtype),)


def _tangent_avals(w_h, hs, valid, dz, dh0, *, activation):
    return (_aval(hs.shape, hs.dtype),)


def _backward_avals(w_h, hs, valid, ct_hs, *, activation):
    return _aval(hs.shape, hs.dtype), _aval(hs.shape[1:], hs.dtype)


forward_p = _primitive("rnn_forward", forward_reference, _forward_avals, _forward_native)
tangent_p = _primitive("rnn_tangent", tangent_reference, _tangent_avals)
backward_p = _primitive("rnn_backward", backward_reference, _backward_avals, _backward_native)
COEFFICIENTS = 3  # tangent_p and backward_p: (w_h, hs, valid) first, then the linear arguments


ad.primitive_jvps[forward_p] = _reference_jvp(forward_reference)
ad.primitive_jvps[tangent_p] = _linear_jvp(tangent_p, tangent_reference, COEFFICIENTS)
ad.primitive_jvps[backward_p] = _linear_jvp(backward_p, backward_reference, COEFFICIENTS)
ad.primitive_transposes[tangent_p] = _linear_transpose(backward_p, COEFFICIENTS)
ad.primitive_transposes[backward_p] = _linear_transpose(tangent_p, COEFFICIENTS)

# Batch axis of each argument and result in the kernel's layout (None for the weights).
batching.primitive_batchers[forward_p] = _batching_rule(
    forward_p, (1, 1, None, 0), lambda activation: (1,), forward_reference)
batching.primitive_batchers[tangent_p] = _batching_rule(
    tangent_p, (None, 1, 1, 1, 0), lambda activation: (1,), tangent_reference)
batching.primitive_batchers[backward_p] = _batching_rule(
    backward_p, (None, 1, 1, 1), lambda activation: (1, 0), backward_reference)


# ---------------------------------------------------------------- the sequence, and lj.unroll's entry

@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _sequence(activation, w_h, xz, valid, h0):
    (hs,) = forward_p.bind(xz, valid, w_h, h0, activation=activation)
    return hs


def _sequence_jvp(activation, primals, tangents):
    w_h, xz, valid, h0 = primals
    dw_h, dxz, _, dh0 = tangents
    (hs,) = forward_p.bind(xz, valid, w_h, h0, activation=activation)
    # dz = dxz + h_{t-1}·dw_h: the second term's transpose is the native weight-gradient kernel's pass
    recurrent = project_weight_tangents(None, h0, hs, None, dw_h, None, w_h.shape[-1])
    dz = _sum_terms([(dxz, lambda d: d), (recurrent, lambda d: d)])
    dz = jnp.zeros(xz.shape, xz.dtype) if dz is None else dz
    dh0 = jnp.zeros(h0.shape, h0.dtype) if isinstance(dh0, SymbolicZero) else dh0
    (dhs,) = tangent_p.bind(w_h, hs, valid, dz, dh0, activation=activation)
    return hs, dhs


_sequence.defjvp(_sequence_jvp, symbolic_zeros=True)


def native_unroll(params, xs: jax.Array, state: jax.Array, reverse: bool, valid: jax.Array | None = None, *,
                  activation: str = "tanh"):
    """`(final_state, ys)` of a vanilla RNN (`lj.RNNParams`, state the array `h`, φ named by
    `activation`) over `xs` `(T, *batch, D)`; `valid` (`(T, *batch)` bool, or `None` for all steps
    real) as in `lj.unroll`: a step that is not real holds the state and outputs zeros."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    return unroll_over_projection(params, xs, state, reverse, valid,
                                  lambda xz, real, h0: _sequence(activation, params.w_h, xz, real, h0))
