"""The GRU's native CPU path of `lj.unroll`: its time loops in a hand-written kernel, as XLA custom calls.

The same construction as the LSTM's (`lstmjax._native`, whose primitive machinery, padding, `vmap`
rules and dispatch test this module reuses), for `lj.gru` (PyTorch's formulation, `lstmjax._gru`)
with the kernel `native/gru_cpu.cc`. The input projection `xz = xs·w_x + b` (`(T, B, 3H)`, one large
matrix multiply) is computed in XLA, outside the custom derivative, so JAX differentiates it itself;
the recurrence over `xz` is a `jax.custom_jvp` with three primitives:

* `gru_forward`: `(hs, gates, hn) = forward(xz, valid, w_h, b_hn, h0)`, with `hs` (`(T, B, H)`) the
  state after each step (held where `valid` (`(T, B)`, bool) is `False`), and `gates` (`(T, B, 3H)`:
  `r, z, n`) and `hn` (`(T, B, H)`: `h_{t-1}·w_hn + b_hn`) of each step saved only for a derivative;
* `gru_tangent`: `dhs = L(dxz, dhz, dh0)`, the sequence's derivative given the tangents of every
  step's input pre-activations `dxz` and of its recurrent ones from the weights, `dhz` (both
  `(T, B, 3H)`; `dhz = h_{t-1}·dw_h + [0, 0, db_hn]`, formed outside the loop); linear in
  `(dxz, dhz, dh0)`, with `w_h, gates, hn, hs, h0, valid` as coefficients;
* `gru_backward`: its transpose `(dxz, dhz, dh0) = Lᵀ(ct_hs)`, backpropagation through time carrying
  only `dh`, native; `dxz` is written over `gates` (one `(T, B, 3H)` buffer less per step). The
  weight gradients are then the transposes of the products outside the loop: `dw_h = Σ_t
  h_{t-1}ᵀ·dhz_t` and `db_hn` from one pass of the native weight-gradient kernel over `dhz`
  (`lstmjax._native.project_weight_tangents`), `dw_x = xsᵀ·dxz` and `b`'s from XLA.

As for the LSTM, each primitive has a pure-JAX reference (a `lax.scan`) that defines it and gives
its lowering off the CPU, under `jax.export` and its higher derivatives; `vmap` over data folds
into the kernel's batch and `vmap` over weights maps the kernel. Inside the lowering the batch is
padded to a multiple of 4 rows and `H` to a multiple of 32 units with zeros: a padded unit has
`r = z = 1/2`, `hn = 0`, `n = tanh(0) = 0` and so keeps `h = 0`, with zero derivatives.

`lj.unroll` takes this path for an as-built `lj.gru` cell in float32 without `resets`, from
`MIN_HIDDEN_SIZE` up, where `lstmjax._native.can_run_natively` holds (with `remat`, once per chunk).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.interpreters import ad, batching

from lstmjax._native import (
    _aval,
    _batching_rule,
    _h_before,
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

MIN_HIDDEN_SIZE = 16
"""The GRU's native path is used from this hidden size up (measured: see `lstmjax._gru`)."""


# ---------------------------------------------------------------- references (the primitives' meaning)

def forward_reference(xz, valid, w_h, b_hn, h0, *, save: bool):
    """`gru_forward` in JAX. xz `(T, B, 3H)`, valid `(T, B)` bool, w_h `(H, 3H)`, b_hn `(H,)`, h0 `(B, H)`;
    returns hs `(T, B, H)`, gates `(T, B, 3H)` = `[r, z, n]` and hn `(T, B, H)` (both `(0,)` unless `save`)."""
    def step(h_before, inputs):
        xz_t, real = inputs
        xr, xz_z, xn = jnp.split(xz_t, 3, axis=-1)
        hr, hz, hn = jnp.split(h_before @ w_h, 3, axis=-1)
        hn = hn + b_hn
        r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz_z + hz)
        n = jnp.tanh(xn + r * hn)
        h = jnp.where(real[:, None], (1.0 - z) * n + z * h_before, h_before)
        return h, ((h, jnp.concatenate([r, z, n], axis=-1), hn) if save else (h,))

    _, stacked = lax.scan(step, h0, (xz, valid))
    empty = jnp.zeros((0,), xz.dtype)
    return stacked if save else (stacked[0], empty, empty)


def tangent_reference(w_h, gates, hn, hs, h0, valid, dxz, dhz, dh0):
    """`gru_tangent` in JAX: the forward-mode scan, `dhz_t + dh_{t-1}·w_h` -> the step's linearisation
    (held steps hold the tangent too). Returns `(dhs,)`, `(T, B, H)`."""
    h_before = _h_before(h0, hs)

    def step(dh_before, inputs):
        gates_t, hn, h_before_t, real, dxz_t, dhz_t = inputs
        r, z, n = jnp.split(gates_t, 3, axis=-1)
        dxr, dxz_z, dxn = jnp.split(dxz_t, 3, axis=-1)
        dhr, dhz_z, dhn = jnp.split(dhz_t + dh_before @ w_h, 3, axis=-1)
        dr = r * (1 - r) * (dxr + dhr)
        dz = z * (1 - z) * (dxz_z + dhz_z)
        dn = (1 - n * n) * (dxn + r * dhn + hn * dr)
        dh = (1 - z) * dn + (h_before_t - n) * dz + z * dh_before
        dh = jnp.where(real[:, None], dh, dh_before)
        return dh, dh

    _, dhs = lax.scan(step, dh0, (gates, hn, h_before, valid, dxz, dhz))
    return (dhs,)


def backward_reference(w_h, gates, hn, hs, h0, valid, ct_hs):
    """`gru_backward` in JAX: the transpose of `tangent_reference` in `(dxz, dhz, dh0)`."""
    steps, batch, hidden = hs.shape
    linear = functools.partial(tangent_reference, w_h, gates, hn, hs, h0, valid)
    gates = jax.ShapeDtypeStruct((steps, batch, 3 * hidden), hs.dtype)
    return jax.linear_transpose(linear, gates, gates, jax.ShapeDtypeStruct((batch, hidden), h0.dtype))((ct_hs,))


# ---------------------------------------------------------------- the kernel's calls (padded)

def _forward_native(xz, valid, w_h, b_hn, h0, *, save):
    """`gru_forward` on the kernel: batch padded to whole row blocks, units to whole unit blocks."""
    steps, batch, _ = xz.shape
    hidden = w_h.shape[0]
    rows, units = _padding(batch, hidden)
    padded = (steps, batch + rows, hidden + units)
    xz = _pad_rows(_pad_units(xz, units, gates=True, blocks=3), rows, 1)
    valid = _pad_rows(valid.astype(jnp.uint8), rows, 1)
    w_h, b_hn = _pad_recurrent(w_h, units, blocks=3), _pad_units(b_hn, units, gates=False)
    h0 = jnp.pad(h0, ((0, rows), (0, units)))
    empty = jax.ShapeDtypeStruct((0,), xz.dtype)
    shapes = [jax.ShapeDtypeStruct(padded, xz.dtype),
              jax.ShapeDtypeStruct((*padded[:2], 3 * padded[2]), xz.dtype) if save else empty,
              jax.ShapeDtypeStruct(padded, xz.dtype) if save else empty]
    hs, gates, hn = jax.ffi.ffi_call(TARGETS["gru_forward"], shapes)(
        xz, valid, w_h, b_hn, h0, threads=np.int32(_threads(padded[1])), save=np.int32(save))
    hs = _unpad(hs, batch, hidden, False, 1)
    if save:
        gates, hn = _unpad(gates, batch, hidden, True, 1, blocks=3), _unpad(hn, batch, hidden, False, 1)
    return hs, gates, hn


def _backward_native(w_h, gates, hn, hs, h0, valid, ct_hs):
    """`gru_backward` on the kernel, padded like `_forward_native` (padded units and rows stay zero)."""
    steps, batch, hidden = hs.shape
    rows, units = _padding(batch, hidden)
    w_h = _pad_recurrent(w_h, units, blocks=3)
    gates = _pad_rows(_pad_units(gates, units, gates=True, blocks=3), rows, 1)
    hn, hs, ct_hs = (_pad_rows(_pad_units(a, units, gates=False), rows, 1) for a in (hn, hs, ct_hs))
    h0 = _pad_rows(_pad_units(h0, units, gates=False), rows, 0)
    valid = _pad_rows(valid.astype(jnp.uint8), rows, 1)
    # dxz is written over gates (the kernel reads each unit's gates at step t just before writing
    # its dxz there): one (T, B, 3H) buffer less to allocate per training step.
    shape = jax.ShapeDtypeStruct(gates.shape, gates.dtype)
    dxz, dhz, dh0 = jax.ffi.ffi_call(TARGETS["gru_backward"], [shape, shape, jax.ShapeDtypeStruct(h0.shape, h0.dtype)],
                                     input_output_aliases={1: 0})(
        w_h, gates, hn, hs, h0, valid, ct_hs, threads=np.int32(_threads(batch + rows)))
    return (_unpad(dxz, batch, hidden, True, 1, blocks=3), _unpad(dhz, batch, hidden, True, 1, blocks=3),
            _unpad(dh0, batch, hidden, False, 0))


# ---------------------------------------------------------------- primitives

def _forward_avals(xz, valid, w_h, b_hn, h0, *, save):
    steps, batch, _ = xz.shape
    hidden = w_h.shape[0]
    return (_aval((steps, batch, hidden), xz.dtype), _aval((steps, batch, 3 * hidden) if save else (0,), xz.dtype),
            _aval((steps, batch, hidden) if save else (0,), xz.dtype))


def _tangent_avals(w_h, gates, hn, hs, h0, valid, dxz, dhz, dh0):
    return (_aval(hs.shape, hs.dtype),)


def _backward_avals(w_h, gates, hn, hs, h0, valid, ct_hs):
    gates = _aval((*hs.shape[:2], 3 * hs.shape[2]), hs.dtype)
    return gates, gates, _aval(h0.shape, h0.dtype)


forward_p = _primitive("gru_forward", forward_reference, _forward_avals, _forward_native)
tangent_p = _primitive("gru_tangent", tangent_reference, _tangent_avals)
backward_p = _primitive("gru_backward", backward_reference, _backward_avals, _backward_native)
COEFFICIENTS = 6  # tangent_p and backward_p: (w_h, gates, hn, hs, h0, valid) first, then the linear arguments

ad.primitive_jvps[forward_p] = _reference_jvp(forward_reference)
ad.primitive_jvps[tangent_p] = _linear_jvp(tangent_p, tangent_reference, COEFFICIENTS)
ad.primitive_jvps[backward_p] = _linear_jvp(backward_p, backward_reference, COEFFICIENTS)
ad.primitive_transposes[tangent_p] = _linear_transpose(backward_p, COEFFICIENTS)
ad.primitive_transposes[backward_p] = _linear_transpose(tangent_p, COEFFICIENTS)

# Batch axis of each argument and result in the kernel's layout (None for the weights).
batching.primitive_batchers[forward_p] = _batching_rule(
    forward_p, (1, 1, None, None, 0), lambda save: (1, 1, 1) if save else (1, None, None), forward_reference)
batching.primitive_batchers[tangent_p] = _batching_rule(
    tangent_p, (None, 1, 1, 1, 0, 1, 1, 1, 0), lambda: (1,), tangent_reference)
batching.primitive_batchers[backward_p] = _batching_rule(
    backward_p, (None, 1, 1, 1, 0, 1, 1), lambda: (1, 1, 0), backward_reference)


# ---------------------------------------------------------------- the sequence, and lj.unroll's entry

@jax.custom_jvp
def _sequence(w_h, b_hn, xz, valid, h0):
    hs, _, _ = forward_p.bind(xz, valid, w_h, b_hn, h0, save=False)
    return hs


def _sequence_jvp(primals, tangents):
    w_h, b_hn, xz, valid, h0 = primals
    dw_h, db_hn, dxz, _, dh0 = tangents
    hs, gates, hn = forward_p.bind(xz, valid, w_h, b_hn, h0, save=True)
    hidden = w_h.shape[0]
    # dhz = h_{t-1}·dw_h + [0, 0, db_hn]: its transpose is the native weight-gradient kernel's pass
    db = None if isinstance(db_hn, SymbolicZero) else jnp.pad(db_hn, (2 * hidden, 0))
    dhz = project_weight_tangents(None, h0, hs, None, dw_h, db, 3 * hidden)
    dhz = jnp.zeros(xz.shape, xz.dtype) if dhz is None else dhz
    dxz, dh0 = (jnp.zeros(p.shape, p.dtype) if isinstance(t, SymbolicZero) else t for t, p in ((dxz, xz), (dh0, h0)))
    (dhs,) = tangent_p.bind(w_h, gates, hn, hs, h0, valid, dxz, dhz, dh0)
    return hs, dhs


_sequence.defjvp(_sequence_jvp, symbolic_zeros=True)


def native_unroll(params, xs: jax.Array, state: jax.Array, reverse: bool, valid: jax.Array | None = None):
    """`(final_state, ys)` of a GRU (`lj.GRUParams`, state the array `h`) over `xs` `(T, *batch, D)`;
    `valid` (`(T, *batch)` bool, or `None` for all steps real) as in `lj.unroll`: a step that is not
    real holds the state and outputs zeros."""
    return unroll_over_projection(params, xs, state, reverse, valid,
                                  lambda xz, real, h0: _sequence(params.w_h, params.b_hn, xz, real, h0))
