"""The LSTM's native CPU path of `lj.unroll`: the time loops in a hand-written kernel, as XLA custom calls.

On a CPU, XLA runs a `lax.scan` as a loop of small kernels, one per operation and step, and most
of a training step's time goes to that loop rather than to arithmetic. Here the two loops of an
LSTM's training step, forward through time and backward through time, are each one call of a C++
kernel (`native/lstm_cpu.cc`, AVX-512, on XLA's thread pool: register-blocked matrix products with the gate
nonlinearities fused in, the batch rows split across threads). Everything else stays in XLA.

The derivative is laid out as in `lstmjax._fused` (a `jax.custom_jvp` whose tangent JAX transposes
into the backward pass), with three primitives for the time loops:

* `lstm_forward`: `(hs, c_last, gates, cs) = forward(xs, valid, w_x, w_h, b, h0, c0)`, with `hs`
  (`(T, B, H)`) the short-term memory after each step, `gates` (`(T, B, 4H)`, the values of
  `i, f, g, o` after their nonlinearities) and `cs` (`(T, B, H)`, the long-term memory after each
  step) saved only for a derivative. `valid` (`(T, B)`, bool) marks real steps: where it is
  `False` the step is skipped and both memories are held (`lj.unroll`'s `lengths` and `mask`;
  the caller zeroes those outputs, and `hs` keeps the held state so that `h_{t-1}` of the next
  real step is at hand);
* `lstm_tangent`: `(dhs, dh_T, dc_T) = L(dz, dh0, dc0)`, the sequence's derivative given the
  tangent `dz` (`(T, B, 4H)`) of every step's pre-activations from the weights and inputs
  (`dxs·w_x + xs·dw_x + db + h_{t-1}·dw_h`, formed outside the loop); linear in `(dz, dh0, dc0)`,
  with `w_h, gates, cs, c0, valid` as coefficients;
* `lstm_backward`: the transpose of `lstm_tangent`, `(dz, dh0, dc0) = Lᵀ(ct_ys, ct_h, ct_c)`:
  backpropagation through time carrying only `dh, dc`, native.

The weights' part of `dz`, `xs·dw_x + h_{t-1}·dw_h + db`, is a fourth primitive,
`lstm_weight_projection` (linear in the weights' tangents, XLA products), so that its transpose,
the weight gradients `(Σ_t x_tᵀ·dz_t, Σ_t h_{t-1}ᵀ·dz_t, Σ dz)`, is a fifth, `lstm_weight_gradient`:
one pass of a native kernel (`native/weight_gradient_cpu.cc`) over `dz`, reading `h_{t-1}` from
`h0` and `hs` in place, faster than XLA's own products (README, Performance). `dxs·w_x` stays an
XLA product. The GRU and the RNN use the same two primitives for their recurrent weights
(`project_weight_tangents`).

Each primitive has a pure-JAX reference (a `lax.scan`, or plain products) that defines it: the
references give the primitives' lowering off the CPU and under `jax.export`, and their derivatives
where a coefficient has a tangent (Hessians and other higher derivatives). Under `vmap`, a mapped
axis of the data alone is folded into the kernel's batch, and a mapped weight (`vmap` over models
or seeds) gives one kernel call per item in a `lax.map`, as does any mapped axis of the weight
gradient itself (which sums over the batch; under `grad(vmap(...))` the data axis is folded before
the transpose, so it is one call). The tests check values and derivatives of every kind
(`jax.jvp`, `jax.grad`, forward-over-reverse, reverse-over-forward, reverse-over-reverse) and
`vmap` both ways against the XLA scan and float64.

`lj.unroll` takes this path for an as-built `lj.lstm` cell in float32 without `resets`, from
`MIN_HIDDEN_SIZE` up (with `remat`, each checkpointed chunk of steps is one set of calls), when
`can_run_natively` holds: concrete shapes, a single CPU device as the default backend and the
kernel available (`lstmjax._native_build`:
Linux on x86-64 with AVX-512F and a C++ compiler). With several devices it is not used: XLA
cannot split an opaque custom call across a sharded batch. Inside the custom calls' lowering the
batch is padded to a multiple of 4 rows and `H` to a multiple of 32 units with zeros (padded
units keep `c = h = 0` and zero derivatives, so they change nothing) and the results are sliced
back.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from lstmjax._native_build import TARGETS, native_kernel_status

MIN_HIDDEN_SIZE = 16
"""The native path is used from this hidden size up (see `lstmjax._unroll.unroll`)."""

ROW_BLOCK = 4  # the kernel's batch rows come in blocks of this many
UNIT_BLOCK = 32  # ... and its hidden units in blocks of this many


# ---------------------------------------------------------------- references (the primitives' meaning)

def _split_gates(a: jax.Array) -> list[jax.Array]:
    return jnp.split(a, 4, axis=-1)


def forward_reference(xs, valid, w_x, w_h, b, h0, c0, *, save: bool):
    """`lstm_forward` in JAX. xs `(T, B, D)`, valid `(T, B)` bool, w_x `(D, 4H)`, w_h `(H, 4H)`, b `(4H,)`,
    h0, c0 `(B, H)`; returns hs `(T, B, H)`, c_last `(B, H)`, gates `(T, B, 4H)` and cs `(T, B, H)` (both
    `(0,)` unless `save`)."""
    def step(carry, inputs):
        h_before, c_before = carry
        x, real = inputs
        zi, zf, zg, zo = _split_gates(x @ w_x + h_before @ w_h + b)
        i, f, g, o = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg), jax.nn.sigmoid(zo)
        c = jnp.where(real[:, None], f * c_before + i * g, c_before)
        h = jnp.where(real[:, None], o * jnp.tanh(c), h_before)
        return (h, c), ((h, jnp.concatenate([i, f, g, o], axis=-1), c) if save else (h,))

    (_, c_last), stacked = lax.scan(step, (h0, c0), (xs, valid))
    empty = jnp.zeros((0,), xs.dtype)
    return (stacked[0], c_last, stacked[1], stacked[2]) if save else (stacked[0], c_last, empty, empty)


def tangent_reference(w_h, gates, cs, c0, valid, dz, dh0, dc0):
    """`lstm_tangent` in JAX: the forward-mode scan `dz_t + dh_{t-1}·w_h` -> the step's linearisation
    (held steps hold the tangents too). Returns dhs `(T, B, H)`, dh_T, dc_T `(B, H)`."""
    c_before = jnp.concatenate([c0[None], cs[:-1]])

    def step(carry, inputs):
        dh_before, dc_before = carry
        gates_t, c_t, c_before_t, real, dz_t = inputs
        i, f, g, o = _split_gates(gates_t)
        dzi, dzf, dzg, dzo = _split_gates(dz_t + dh_before @ w_h)
        tanh_c = jnp.tanh(c_t)
        dc = f * dc_before + c_before_t * f * (1 - f) * dzf + i * (1 - g * g) * dzg + g * i * (1 - i) * dzi
        dh = o * (1 - tanh_c * tanh_c) * dc + tanh_c * o * (1 - o) * dzo
        dh, dc = jnp.where(real[:, None], dh, dh_before), jnp.where(real[:, None], dc, dc_before)
        return (dh, dc), dh

    (dh_last, dc_last), dhs = lax.scan(step, (dh0, dc0), (gates, cs, c_before, valid, dz))
    return dhs, dh_last, dc_last


def backward_reference(w_h, gates, cs, c0, valid, ct_ys, ct_h, ct_c):
    """`lstm_backward` in JAX: the transpose of `tangent_reference` in `(dz, dh0, dc0)`."""
    steps, batch, hidden = cs.shape
    linear = functools.partial(tangent_reference, w_h, gates, cs, c0, valid)
    avals = (jax.ShapeDtypeStruct((steps, batch, 4 * hidden), gates.dtype),
             jax.ShapeDtypeStruct((batch, hidden), c0.dtype), jax.ShapeDtypeStruct((batch, hidden), c0.dtype))
    return jax.linear_transpose(linear, *avals)((ct_ys, ct_h, ct_c))


# ---------------------------------------------------------------- primitives

def _cores() -> int:
    """The cores this process may use, at most 256 (a kernel also takes no more than XLA's thread pool has)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 256))


def _threads(batch: int) -> int:
    """Most workers for a batch of `batch` rows: every core this process may use, at most one per row block."""
    return max(1, min(_cores(), batch // ROW_BLOCK))


def _aval(shape, dtype):
    return jax.core.ShapedArray(tuple(shape), dtype)


def _primitive(name: str, reference, abstract_eval, native=None, platform: str = "cpu",
               available=lambda: native_kernel_status().available) -> Primitive:
    """A multiple-result primitive that runs `native` (custom calls of a kernel) on `platform` and
    `reference` everywhere else, and on `platform` too where `available()` says the kernel is not
    there or the program is being exported (`jax.export`: a custom call of this machine's build
    cannot be serialised). Eager calls compile it with `jax.jit` (also under `jax.disable_jit()`)."""
    primitive = Primitive(name)
    primitive.multiple_results = True
    primitive.def_abstract_eval(abstract_eval)

    def eager(*args, **params):
        with jax.disable_jit(False):
            return jax.jit(functools.partial(primitive.bind, **params))(*args)

    primitive.def_impl(eager)
    mlir.register_lowering(primitive, mlir.lower_fun(reference, multiple_results=True))
    if native is not None:
        def on_platform(ctx, *args, **params):
            exporting = ctx.module_context.lowering_parameters.for_export
            use = native if available() and not exporting else reference
            return mlir.lower_fun(use, multiple_results=True)(ctx, *args, **params)
        mlir.register_lowering(primitive, on_platform, platform=platform)
    return primitive


def _padding(batch: int, hidden: int) -> tuple[int, int]:
    """`(rows, units)` to add to a batch of `batch` rows and `hidden` units so that the kernel's row and
    unit blocks are whole (zeros there change nothing: see the module's docstring)."""
    return -batch % ROW_BLOCK, -hidden % UNIT_BLOCK


def _pad_units(a: jax.Array, units: int, gates: bool, blocks: int = 4) -> jax.Array:
    """`a` with `units` zero units appended to its last axis: to each of its `blocks` gate blocks if `gates`."""
    if not units:
        return a
    if not gates:
        return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, units)])
    split = a.reshape(*a.shape[:-1], blocks, a.shape[-1] // blocks)
    return jnp.pad(split, [(0, 0)] * (split.ndim - 1) + [(0, units)]).reshape(*a.shape[:-1], -1)


def _pad_rows(a: jax.Array, rows: int, axis: int) -> jax.Array:
    """`a` with `rows` zero rows appended along its batch axis `axis`."""
    return jnp.pad(a, [(0, rows) if i == axis else (0, 0) for i in range(a.ndim)])


def _pad_recurrent(w_h: jax.Array, units: int, blocks: int = 4) -> jax.Array:
    """`w_h` `(H, blocks·H)` with `units` zero units: zero rows, and zero columns in each gate block."""
    return jnp.pad(_pad_units(w_h, units, gates=True, blocks=blocks), ((0, units), (0, 0)))


def _unpad(a: jax.Array, batch: int, hidden: int, gates: bool, batch_axis: int, blocks: int = 4) -> jax.Array:
    """Inverse of the kernel's padding: the first `batch` rows and `hidden` units (per gate block if `gates`)."""
    a = lax.slice_in_dim(a, 0, batch, axis=batch_axis)
    if gates:
        split = a.reshape(*a.shape[:-1], blocks, a.shape[-1] // blocks)[..., :hidden]
        return split.reshape(*a.shape[:-1], blocks * hidden)
    return a[..., :hidden]


def _forward_native(xs, valid, w_x, w_h, b, h0, c0, *, save):
    """`lstm_forward` on the kernel: batch padded to whole row blocks, units to whole unit blocks."""
    steps, batch, _ = xs.shape
    hidden = w_h.shape[0]
    rows, units = _padding(batch, hidden)
    padded = (steps, batch + rows, hidden + units)
    xs = jnp.pad(xs, ((0, 0), (0, rows), (0, 0)))
    valid = jnp.pad(valid.astype(jnp.uint8), ((0, 0), (0, rows)))
    w_x, b, w_h = _pad_units(w_x, units, gates=True), _pad_units(b, units, gates=True), _pad_recurrent(w_h, units)
    h0, c0 = (jnp.pad(s, ((0, rows), (0, units))) for s in (h0, c0))
    shapes = [jax.ShapeDtypeStruct(padded, xs.dtype), jax.ShapeDtypeStruct(padded[1:], xs.dtype),
              jax.ShapeDtypeStruct((*padded[:2], 4 * padded[2]) if save else (0,), xs.dtype),
              jax.ShapeDtypeStruct(padded if save else (0,), xs.dtype)]
    ys, c_last, gates, cs = jax.ffi.ffi_call(TARGETS["forward"], shapes)(
        xs, valid, w_x, w_h, b, h0, c0, threads=np.int32(_threads(padded[1])), save=np.int32(save))
    ys, c_last = _unpad(ys, batch, hidden, False, 1), _unpad(c_last, batch, hidden, False, 0)
    if save:
        gates, cs = _unpad(gates, batch, hidden, True, 1), _unpad(cs, batch, hidden, False, 1)
    return ys, c_last, gates, cs


def _backward_native(w_h, gates, cs, c0, valid, ct_ys, ct_h, ct_c):
    """`lstm_backward` on the kernel, padded like `_forward_native` (padded units and rows stay zero)."""
    steps, batch, hidden = cs.shape
    rows, units = _padding(batch, hidden)
    w_h = _pad_recurrent(w_h, units)
    gates = _pad_rows(_pad_units(gates, units, gates=True), rows, 1)
    cs, ct_ys = (_pad_rows(_pad_units(a, units, gates=False), rows, 1) for a in (cs, ct_ys))
    c0, ct_h, ct_c = (_pad_rows(_pad_units(a, units, gates=False), rows, 0) for a in (c0, ct_h, ct_c))
    valid = _pad_rows(valid.astype(jnp.uint8), rows, 1)
    shapes = [jax.ShapeDtypeStruct(gates.shape, gates.dtype), jax.ShapeDtypeStruct(c0.shape, c0.dtype),
              jax.ShapeDtypeStruct(c0.shape, c0.dtype)]
    # dz is written over gates (the kernel reads each unit's gates at step t just before writing its
    # dz there): one (T, B, 4H) buffer less to allocate in a training step, which with glibc's
    # default malloc is a fresh mmap faulted in page by page every step (measured, B = 32, T = 100:
    # 35.2 against 44.3 ms a training step at H = 256, 61.4 against 68.2 at H = 512 (T = 50), equal
    # at H = 128). XLA copies gates first where it is still needed after the call.
    dz, dh0, dc0 = jax.ffi.ffi_call(TARGETS["backward"], shapes, input_output_aliases={1: 0})(
        w_h, gates, cs, c0, valid, ct_ys, ct_h, ct_c, threads=np.int32(_threads(batch + rows)))
    return (_unpad(dz, batch, hidden, True, 1), _unpad(dh0, batch, hidden, False, 0),
            _unpad(dc0, batch, hidden, False, 0))


def _forward_avals(xs, valid, w_x, w_h, b, h0, c0, *, save):
    steps, batch, _ = xs.shape
    hidden = w_h.shape[0]
    saved = ((steps, batch, 4 * hidden), (steps, batch, hidden)) if save else ((0,), (0,))
    return (_aval((steps, batch, hidden), xs.dtype), _aval((batch, hidden), xs.dtype),
            _aval(saved[0], xs.dtype), _aval(saved[1], xs.dtype))


def _tangent_avals(w_h, gates, cs, c0, valid, dz, dh0, dc0):
    return _aval(cs.shape, cs.dtype), _aval(c0.shape, c0.dtype), _aval(c0.shape, c0.dtype)


def _backward_avals(w_h, gates, cs, c0, valid, ct_ys, ct_h, ct_c):
    return _aval(gates.shape, gates.dtype), _aval(c0.shape, c0.dtype), _aval(c0.shape, c0.dtype)


forward_p = _primitive("lstm_forward", forward_reference, _forward_avals, _forward_native)
tangent_p = _primitive("lstm_tangent", tangent_reference, _tangent_avals)
backward_p = _primitive("lstm_backward", backward_reference, _backward_avals, _backward_native)

COEFFICIENTS = 5  # tangent_p and backward_p: (w_h, gates, cs, c0, valid) first, then the three linear arguments


# ---- derivatives

def _reference_jvp(reference):
    """JVP of a forward primitive: that of its reference (used only for higher derivatives)."""
    def jvp(primals, tangents, **params):
        outputs, output_tangents = jax.jvp(functools.partial(reference, **params), tuple(primals),
                                           tuple(map(ad.instantiate_zeros, tangents)))
        return list(outputs), list(output_tangents)
    return jvp


def _linear_jvp(primitive, reference, coefficients: int = COEFFICIENTS):
    """JVP of `tangent_p`/`backward_p` (whose first `coefficients` arguments are coefficients, the
    rest linear): the primitive itself where only its linear arguments have tangents (first-order
    use), the reference's JVP where a coefficient has one too. The primitive's parameters, if it
    has any, are passed on."""
    def jvp(primals, tangents, **params):
        outputs = primitive.bind(*primals, **params)
        if all(type(t) is ad.Zero for t in tangents[:coefficients]):
            return outputs, primitive.bind(*primals[:coefficients],
                                           *map(ad.instantiate_zeros, tangents[coefficients:]), **params)
        _, output_tangents = jax.jvp(functools.partial(reference, **params), tuple(primals),
                                     tuple(map(ad.instantiate_zeros, tangents)))
        return outputs, list(output_tangents)
    return jvp


def _linear_transpose(transposed, coefficients: int = COEFFICIENTS):
    """Transpose rule of `tangent_p`/`backward_p` in its linear arguments (those after the first
    `coefficients`): the other one, with the same parameters."""
    def transpose(cotangents, *args, **params):
        fixed, linear = args[:coefficients], args[coefficients:]
        if any(ad.is_undefined_primal(a) for a in fixed):
            raise NotImplementedError("the kernel's derivative is linear only in its arguments after the coefficients")
        results = transposed.bind(*fixed, *map(ad.instantiate_zeros, cotangents), **params)
        return [None] * coefficients + [r if ad.is_undefined_primal(a) else None for r, a in zip(results, linear)]
    return transpose


ad.primitive_jvps[forward_p] = _reference_jvp(forward_reference)
ad.primitive_jvps[tangent_p] = _linear_jvp(tangent_p, tangent_reference)
ad.primitive_jvps[backward_p] = _linear_jvp(backward_p, backward_reference)
ad.primitive_transposes[tangent_p] = _linear_transpose(backward_p)
ad.primitive_transposes[backward_p] = _linear_transpose(tangent_p)


# ---- vmap

# Batch axis of each argument in the kernel's layout (xs and the stacked arrays are (T, B, ...)),
# None for the weights, which cannot be folded into the batch.
_BATCH_AXES = {
    forward_p: ((1, 1, None, None, None, 0, 0), lambda save: (1, 0, 1, 1) if save else (1, 0, None, None)),
    tangent_p: ((None, 1, 1, 0, 1, 1, 0, 0), lambda: (1, 0, 0)),
    backward_p: ((None, 1, 1, 0, 1, 1, 0, 0), lambda: (1, 0, 0)),
}
_REFERENCES = {forward_p: forward_reference, tangent_p: tangent_reference, backward_p: backward_reference}


def _batching_rule(primitive, axes, output_axes, reference):
    """`vmap` of a primitive: the mapped axis folded into the kernel's batch when no weight is
    mapped (`vmap` over examples or sequences); one kernel call per mapped item (`lax.map`) when
    a weight is (`vmap` over models or seeds); the reference under `vmap` for an empty axis.
    `axes`: each argument's batch axis in the kernel's layout (`None` for a weight); `output_axes(**params)`:
    each result's."""
    def rule(args, dims, **params):
        size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
        if size == 0:
            return _vmapped_reference(reference)(args, dims, **params)
        if any(d is not None for a, d in zip(axes, dims) if a is None):
            return _per_item(primitive, args, dims, params)
        folded = [a if axis is None else _fold(a, d, axis, size) for a, d, axis in zip(args, dims, axes)]
        outputs = primitive.bind(*folded, **params)
        out_axes = output_axes(**params)
        return ([o if axis is None else _unfold(o, axis, size) for o, axis in zip(outputs, out_axes)],
                list(out_axes))
    return rule


def _vmapped_reference(reference):
    """`vmap` of a primitive as its reference under `vmap`, every result mapped along axis 0."""
    def rule(args, dims, **params):
        outputs = jax.vmap(functools.partial(reference, **params), in_axes=tuple(dims))(*args)
        return list(outputs), [0] * len(outputs)
    return rule


def _per_item(primitive, args, dims, params):
    """`vmap` of `primitive` as one call per mapped item (`lax.map`); every result mapped along axis 0."""
    mapped = [jnp.moveaxis(a, d, 0) if d is not None else None for a, d in zip(args, dims)]

    def one(items):
        return primitive.bind(*[a if item is None else item for a, item in zip(args, items)], **params)

    outputs = lax.map(one, mapped)
    return list(outputs), [0] * len(outputs)


def _fold(a, dim, axis, size):
    """Moves the mapped axis `dim` (or a broadcast one, if `None`) in front of the batch axis `axis`
    and merges the two."""
    a = jnp.broadcast_to(a[None], (size, *a.shape)) if dim is None else jnp.moveaxis(a, dim, 0)
    a = jnp.moveaxis(a, 0, axis)
    return a.reshape(*a.shape[:axis], size * a.shape[axis + 1], *a.shape[axis + 2:])


def _unfold(a, axis, size):
    return a.reshape(*a.shape[:axis], size, a.shape[axis] // size, *a.shape[axis + 1:])


for _p in (forward_p, tangent_p, backward_p):
    batching.primitive_batchers[_p] = _batching_rule(_p, *_BATCH_AXES[_p], _REFERENCES[_p])


# ---------------------------------------------------------------- the weight gradients

def _rows(a: jax.Array) -> jax.Array:
    """`(T, B, n)` -> `(T·B, n)`."""
    return a.reshape(a.shape[0] * a.shape[1], a.shape[-1])


def _h_before(h0: jax.Array, hs: jax.Array) -> jax.Array:
    """`h_{t-1}` of every step, `(T, B, H)`: `h0` then `hs` without its last step."""
    return jnp.concatenate([h0[None], hs[:-1]])


def projection_reference(xs, h0, hs, dw_x, dw_h, db):
    """`[dz]`, `dz = xs·dw_x + h_{t-1}·dw_h + db` `(T, B, G)`: the weights' part of the tangent of every
    step's pre-activations; linear in `(dw_x, dw_h, db)`."""
    products = _rows(xs) @ dw_x + _rows(_h_before(h0, hs)) @ dw_h + db
    return [products.reshape(*hs.shape[:2], -1)]


def weight_gradient_reference(xs, h0, hs, dz):
    """`[dw_x, dw_h, db]`, the transpose of `projection_reference`: `Σ_t x_tᵀ·dz_t`, `Σ_t h_{t-1}ᵀ·dz_t`
    and `dz` summed over steps and rows."""
    rows = _rows(dz)
    return [_rows(xs).T @ rows, _rows(_h_before(h0, hs)).T @ rows, rows.sum(0)]


def _weight_gradient_native(xs, h0, hs, dz, threads: int | None = None):
    """`weight_gradient` on the kernel (`native/weight_gradient_cpu.cc`): one pass over `dz`, reading
    `h_{t-1}` from `h0` and `hs` in place, with at most `threads` workers (default: every core)."""
    inputs, hidden, gates = xs.shape[-1], hs.shape[-1], dz.shape[-1]
    shapes = [jax.ShapeDtypeStruct(s, dz.dtype) for s in ((inputs, gates), (hidden, gates), (gates,))]
    threads = _cores() if threads is None else threads
    return jax.ffi.ffi_call(TARGETS["weight_gradient"], shapes)(xs, h0, hs, dz, threads=np.int32(threads))


def _projection_avals(xs, h0, hs, dw_x, dw_h, db):
    return (_aval((*hs.shape[:2], db.shape[0]), hs.dtype),)


def _weight_gradient_avals(xs, h0, hs, dz):
    return (_aval((xs.shape[-1], dz.shape[-1]), dz.dtype), _aval((hs.shape[-1], dz.shape[-1]), dz.dtype),
            _aval(dz.shape[-1:], dz.dtype))


def project_weight_tangents(xs, h0, hs, dw_x, dw_h, db, gates: int):
    """`xs·dw_x + h_{t-1}·dw_h + db` `(T, B, gates)` from the weights' tangents (`None` or a symbolic
    zero for none; `xs` `None` for no inputs, as for the GRU's and the RNN's recurrent part), as
    `projection_p`, so that under `jax.grad` the weight gradients are one pass of the native kernel
    over the backward's result; `None` if every tangent is zero."""
    tangents = (dw_x, dw_h, db)
    if all(t is None or isinstance(t, SymbolicZero) for t in tangents):
        return None
    xs = jnp.zeros((*hs.shape[:2], 0), hs.dtype) if xs is None else xs
    shapes = ((xs.shape[-1], gates), (hs.shape[-1], gates), (gates,))
    dw_x, dw_h, db = (jnp.zeros(shape, hs.dtype) if t is None or isinstance(t, SymbolicZero) else t
                      for t, shape in zip(tangents, shapes))
    return projection_p.bind(xs, h0, hs, dw_x, dw_h, db)[0]


projection_p = _primitive("lstm_weight_projection", projection_reference, _projection_avals)
weight_gradient_p = _primitive("lstm_weight_gradient", weight_gradient_reference, _weight_gradient_avals,
                               _weight_gradient_native)
PRODUCT_COEFFICIENTS = 3  # projection_p and weight_gradient_p: (xs, h0, hs) first, then the linear arguments

ad.primitive_jvps[projection_p] = _linear_jvp(projection_p, projection_reference, PRODUCT_COEFFICIENTS)
ad.primitive_jvps[weight_gradient_p] = _linear_jvp(weight_gradient_p, weight_gradient_reference,
                                                   PRODUCT_COEFFICIENTS)
ad.primitive_transposes[projection_p] = _linear_transpose(weight_gradient_p, PRODUCT_COEFFICIENTS)
ad.primitive_transposes[weight_gradient_p] = _linear_transpose(projection_p, PRODUCT_COEFFICIENTS)
# vmap of the projection: a mapped data axis (xs, h0, hs) joins its rows, so that under grad(vmap(...))
# its transpose is one kernel call over the whole folded batch; mapped weight tangents map it per item.
batching.primitive_batchers[projection_p] = _batching_rule(projection_p, (1, 0, 1, None, None, None), lambda: (1,),
                                                           projection_reference)
# vmap of the weight gradient: no axis folds into it (it sums over the batch), so one kernel call per item,
# and vmapped seeds or examples get the same sums, in the same order, as each run alone.
batching.primitive_batchers[weight_gradient_p] = _batching_rule(weight_gradient_p, (None,) * 4, lambda: (None,) * 3,
                                                                weight_gradient_reference)


# ---------------------------------------------------------------- the sequence, and lj.unroll's entry

@jax.custom_jvp
def _sequence(w_x, w_h, b, xs, valid, h0, c0):
    hs, c_last, _, _ = forward_p.bind(xs, valid, w_x, w_h, b, h0, c0, save=False)
    return hs, c_last


def _sequence_jvp(primals, tangents):
    w_x, w_h, b, xs, valid, h0, c0 = primals
    dw_x, dw_h, db, dxs, _, dh0, dc0 = tangents
    hs, c_last, gates, cs = forward_p.bind(xs, valid, w_x, w_h, b, h0, c0, save=True)
    # dz = dxs·w_x + (xs·dw_x + h_{t-1}·dw_h + db): the weights' part is projection_p, whose transpose
    # (the weight gradients under jax.grad) is the native weight_gradient_p.
    dz = None if isinstance(dxs, SymbolicZero) else (_rows(dxs) @ w_x).reshape(gates.shape)
    from_weights = project_weight_tangents(xs, h0, hs, dw_x, dw_h, db, gates.shape[-1])
    if from_weights is not None:
        dz = from_weights if dz is None else dz + from_weights
    dz = jnp.zeros(gates.shape, gates.dtype) if dz is None else dz
    dh0, dc0 = (jnp.zeros(h0.shape, h0.dtype) if isinstance(t, SymbolicZero) else t for t in (dh0, dc0))
    dhs, _, dc_last = tangent_p.bind(w_h, gates, cs, c0, valid, dz, dh0, dc0)
    return (hs, c_last), (dhs, dc_last)


_sequence.defjvp(_sequence_jvp, symbolic_zeros=True)


def can_run_natively(params, xs: jax.Array, state) -> bool:
    """Whether `native_unroll` can take this call: float32 everywhere, concrete shapes (not
    `jax.export`'s symbolic ones) with at least one step and one sequence, one CPU device as the
    default backend (with several, XLA would run an opaque custom call on every device's copy of
    the whole batch instead of splitting it), and the kernel built (built here on first use)."""
    leaves = [xs, *jax.tree_util.tree_leaves(params), *jax.tree_util.tree_leaves(state)]
    return (all(leaf.dtype == jnp.float32 for leaf in leaves)
            and all(isinstance(d, int) for leaf in leaves for d in leaf.shape) and xs.shape[0] >= 1 and xs.size > 0
            and jax.default_backend() == "cpu" and jax.device_count() == 1 and native_kernel_status().available)


def native_unroll(params, xs: jax.Array, state, reverse: bool, valid: jax.Array | None = None):
    """`(final_state, ys)` of an LSTM (`lj.LSTMParams`, `lj.LSTMState`) over `xs` `(T, *batch, D)`; `valid`
    (`(T, *batch)` bool, or `None` for all steps real) as in `lj.unroll`: a step that is not real holds
    the state and outputs zeros."""
    steps, batch_shape, inputs = xs.shape[0], xs.shape[1:-1], xs.shape[-1]
    hidden = params.w_h.shape[0]
    batch = int(np.prod(batch_shape, dtype=np.int64))
    xs = xs.reshape(steps, batch, inputs)
    real = jnp.ones((steps, batch), bool) if valid is None else valid.reshape(steps, batch)
    h0, c0 = (s.reshape(batch, hidden) for s in (state.h, state.c))
    if reverse:
        xs, real = xs[::-1], real[::-1]
    hs, c_last = _sequence(params.w_x, params.w_h, params.b, xs, real, h0, c0)
    h_last = hs[-1]
    ys = hs if valid is None else jnp.where(real[..., None], hs, 0)
    if reverse:
        ys = ys[::-1]
    final = type(state)(h=h_last.reshape(*batch_shape, hidden), c=c_last.reshape(*batch_shape, hidden))
    return final, ys.reshape(steps, *batch_shape, hidden)


def unroll_over_projection(params, xs: jax.Array, state: jax.Array, reverse: bool, valid: jax.Array | None,
                           recurrence):
    """`(final_state, ys)` of a cell whose state is the array `h` and whose input projection
    `xz = xs·w_x + b` is one XLA matrix multiply before its native loop (the GRU, the RNN):
    `recurrence(xz (T, B, G), real (T, B), h0 (B, H)) -> hs (T, B, H)` runs the loop; here the batch
    is flattened, the direction and `valid` (`(T, *batch)` bool or `None`) applied, and the outputs
    of steps that are not real zeroed."""
    steps, batch_shape, inputs = xs.shape[0], xs.shape[1:-1], xs.shape[-1]
    hidden = params.w_h.shape[0]
    batch = int(np.prod(batch_shape, dtype=np.int64))
    xs = xs.reshape(steps, batch, inputs)
    real = jnp.ones((steps, batch), bool) if valid is None else valid.reshape(steps, batch)
    if reverse:
        xs, real = xs[::-1], real[::-1]
    xz = (xs.reshape(steps * batch, inputs) @ params.w_x + params.b).reshape(steps, batch, -1)
    hs = recurrence(xz, real, state.reshape(batch, hidden))
    h_last = hs[-1]
    ys = hs if valid is None else jnp.where(real[..., None], hs, 0)
    if reverse:
        ys = ys[::-1]
    return h_last.reshape(*batch_shape, hidden), ys.reshape(steps, *batch_shape, hidden)
