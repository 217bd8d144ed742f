"""The LSTM's cuDNN path of `lj.unroll` on an NVIDIA GPU (opt-in: `LSTMJAX_CUDNN=1`; not yet measured).

On a GPU, XLA runs a `lax.scan` as one small kernel launch (or a few) per operation and step;
cuDNN's RNN runs a whole LSTM sequence, forward and backward through time, in its own fused
kernels. `jax.experimental.rnn` binds them (`lstm_fwd`, `lstm_bwd`), but as a `jax.custom_vjp`,
which has no forward mode. Here the same calls sit behind the design of `lstmjax._native` (a
`jax.custom_jvp` whose tangent JAX transposes into the backward pass), so `jax.jvp`, `jax.jacfwd`
and higher derivatives keep working. Three primitives, in cuDNN's layout: `x (B, T, D)`
batch-major, `h0, c0 (1, B, H)`, and one flat weight vector `w = [W_ih (4H, D), W_hh (4H, H),
b_ih (4H,), b_hh (4H,)]` raveled (gates i, f, g, o, out→in; `flat_weights` makes it from
`lj.LSTMParams`, with `b_hh = 0`), `lengths (B,)` int32 (always `T` here):

* `cudnn_lstm_forward`: `(y (B, T, H), h_n, c_n (1, B, H), reserve)`, `reserve` cuDNN's opaque
  record of the forward pass (`(reserve_size,)` float32) for its backward pass;
* `cudnn_lstm_tangent`: `(dy, dh_n, dc_n) = L(dx, dh0, dc0, dw)`, the sequence's derivative, linear
  in `(dx, dh0, dc0, dw)`, with `(x, h0, c0, w, lengths, y, reserve)` as coefficients;
* `cudnn_lstm_backward`: its transpose, `(dx, dh0, dc0, dw) = Lᵀ(dy, dh_n, dc_n)`: cuDNN's backward
  pass (data and weights), as `jax.experimental.rnn.lstm_bwd` calls it.

Each primitive has a pure-JAX reference (`lstmjax._native.forward_reference`'s scan, its JVP and
its VJP), which never reads `reserve`: it gives the primitives off the GPU (where the tests check
the derivative's plumbing against `lj.unroll`'s XLA path), under `jax.export`, in forward mode
(the tangent's own evaluation), for higher derivatives and under `vmap` (which therefore runs
XLA's scan, batched, rather than one cuDNN call per item). The precision of cuDNN's products
follows `jax_default_matmul_precision` when `lj.unroll` is traced (TF32 allowed unless it is
`"highest"` or `"float32"`), as XLA's own products do.

`lj.unroll` takes this path for an as-built `lj.lstm` cell in float32 without `lengths`, `mask` or
`resets` (with `remat`, once per checkpointed chunk, only where the chunk length divides T) when
opted in by `LSTMJAX_CUDNN=1` in the environment (read when `lj.unroll` is called) and
`can_run_on_gpu` holds: JAX's default backend a single CUDA GPU, jaxlib's cuDNN RNN bindings
present, `T·B·H` at most `MAX_STEP_UNITS`, a matmul precision cuDNN offers. It is opt-in because it
has not been run on a GPU yet: the calls into cuDNN are `jax.experimental.rnn`'s own, and everything
around them is tested on the CPU through the references (`tests/test_cudnn.py`, which on a GPU runs
it on cuDNN). Known costs, to weigh when it is measured: the forward pass alone also runs cuDNN's
training mode (it keeps the reserve); `jax.experimental.rnn` declares the reserve as float32
elements of one byte each (4× its size); jaxlib copies `lengths` to the host and waits for it in
every call; under `vmap` the references run instead, and in forward mode the tangent runs the
reference on top of cuDNN's forward pass (XLA's plain scan and its autodiff, not `lstmjax._fused`'s
faster derivative).
"""

from __future__ import annotations

import contextlib
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad, batching

from lstmjax._native import _aval, _linear_jvp, _linear_transpose, _primitive, _vmapped_reference, forward_reference

try:
    from jax.experimental import rnn
except ImportError:  # a JAX without it: the path is never taken
    rnn = None

COEFFICIENTS = 7  # tangent_p and backward_p: (x, h0, c0, w, lengths, y, reserve) first, then the linear arguments

_forced: list[bool] = []  # innermost `forced(...)` last


@contextlib.contextmanager
def forced(enabled: bool):
    """Within this block a call of `lj.unroll` (and its tracing, under `jit`) takes the cuDNN path or not as
    `enabled` says, whatever `LSTMJAX_CUDNN` is (for benchmarks and tests; the path's other conditions
    still apply)."""
    _forced.append(bool(enabled))
    try:
        yield
    finally:
        _forced.pop()


def enabled() -> bool:
    """Whether the cuDNN path is asked for: `forced(...)`, else `LSTMJAX_CUDNN` in the environment."""
    if _forced:
        return _forced[-1]
    return os.environ.get("LSTMJAX_CUDNN", "0").strip().lower() in ("1", "true", "yes", "on")


def bindings_available() -> bool:
    """jaxlib's cuDNN RNN bindings are there: JAX's CUDA plugin is installed (`jaxlib.gpu_rnn` then has the
    workspace-size query that `jax.experimental.rnn` needs; a CPU-only jaxlib has the module without it)."""
    gpu_rnn = getattr(rnn, "gpu_rnn", None) if rnn is not None else None
    return hasattr(gpu_rnn, "compute_rnn_workspace_reserve_space_sizes")


CUDNN_PRECISIONS = (None, "highest", "float32", "high", "tensorfloat32", "bfloat16_3x")
"""Values of `jax_default_matmul_precision` that cuDNN's RNN can follow (full float32, or TF32); under
`"default"`/`"bfloat16"`/`"fastest"` (bfloat16 products, which it does not offer) the path is not taken."""


MAX_STEP_UNITS = 2 ** 25
"""Largest `T·B·H` the path takes: a conservative limit, not measured on a GPU. Some jaxlib versions
have reported cuDNN's reserve and workspace sizes as 32-bit integers of bytes (roughly a few dozen
bytes per step, sequence and unit for one LSTM layer, an estimate), and `jax.experimental.rnn`
declares them as float32 arrays of one element per byte (4× the memory): past about `2**31 / 64`
the sizes could wrap around, so larger problems keep to XLA's scan."""


def on_cuda() -> bool:
    """JAX's default backend is one NVIDIA GPU (not ROCm, whose MIOpen RNN this path does not call)."""
    if jax.default_backend() != "gpu" or jax.device_count() != 1:
        return False
    device = jax.devices()[0]
    version = str(getattr(getattr(device, "client", None), "platform_version", "")).lower()
    return "cuda" in version or device.device_kind.lower().startswith("nvidia")


def can_run_on_gpu(params, xs: jax.Array, state) -> bool:
    """Whether `cudnn_unroll` can take this call, once asked for (`enabled`): float32 everywhere, concrete
    shapes with at least one step and one sequence and at most `MAX_STEP_UNITS` of `T·B·H`, a matmul
    precision cuDNN can follow (`CUDNN_PRECISIONS`), JAX's default backend one CUDA GPU (with several,
    XLA would run an opaque custom call on every device's copy of the whole batch), and the cuDNN
    bindings present."""
    leaves = [xs, *jax.tree_util.tree_leaves(params), *jax.tree_util.tree_leaves(state)]
    if not (all(leaf.dtype == jnp.float32 for leaf in leaves)
            and all(isinstance(d, int) for leaf in leaves for d in leaf.shape) and xs.shape[0] >= 1 and xs.size > 0):
        return False
    step_units = xs.size // xs.shape[-1] * params.w_h.shape[0]
    return (step_units <= MAX_STEP_UNITS and jax.config.jax_default_matmul_precision in CUDNN_PRECISIONS
            and on_cuda() and bindings_available())


# ---------------------------------------------------------------- the layout

def flat_weights(w_x: jax.Array, w_h: jax.Array, b: jax.Array) -> jax.Array:
    """cuDNN's flat weight vector of one LSTM layer from lstmjax's `w_x (D, 4H)`, `w_h (H, 4H)`, `b (4H,)`:
    `[w_x.T, w_h.T, b, 0]` raveled. Linear, so it also maps tangents."""
    return jnp.concatenate([w_x.T.ravel(), w_h.T.ravel(), b, jnp.zeros_like(b)])


def unflat_weights(w: jax.Array, input_size: int, hidden_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(w_x, w_h, b)` of a flat vector, `b = b_ih + b_hh` (the inverse of `flat_weights`, up to how the
    bias is split)."""
    gates = 4 * hidden_size
    w_ih, rest = w[:gates * input_size], w[gates * input_size:]
    w_hh, b_ih, b_hh = rest[:gates * hidden_size], rest[-2 * gates:-gates], rest[-gates:]
    return w_ih.reshape(gates, input_size).T, w_hh.reshape(gates, hidden_size).T, b_ih + b_hh


# ---------------------------------------------------------------- references (the primitives' meaning)

def _outputs_reference(x, h0, c0, w, *, input_size, hidden_size):
    """`(y, h_n, c_n)` in cuDNN's layout, by lstmjax's own scan."""
    w_x, w_h, b = unflat_weights(w, input_size, hidden_size)
    xs = jnp.swapaxes(x, 0, 1)
    valid = jnp.ones(xs.shape[:2], bool)
    hs, c_last, _, _ = forward_reference(xs, valid, w_x, w_h, b, h0[0], c0[0], save=False)
    return jnp.swapaxes(hs, 0, 1), hs[-1][None], c_last[None]


def forward_reference_cudnn(x, h0, c0, w, lengths, *, input_size, hidden_size, precision, reserve_size):
    """`cudnn_lstm_forward` in JAX; its `reserve` is zeros (nothing reads it)."""
    y, h_n, c_n = _outputs_reference(x, h0, c0, w, input_size=input_size, hidden_size=hidden_size)
    return y, h_n, c_n, jnp.zeros((reserve_size,), x.dtype)


def tangent_reference(x, h0, c0, w, lengths, y, reserve, dx, dh0, dc0, dw, *, input_size, hidden_size, precision):
    """`cudnn_lstm_tangent` in JAX: the JVP of the reference forward pass."""
    outputs = functools.partial(_outputs_reference, input_size=input_size, hidden_size=hidden_size)
    return jax.jvp(outputs, (x, h0, c0, w), (dx, dh0, dc0, dw))[1]


def backward_reference(x, h0, c0, w, lengths, y, reserve, dy, dh_n, dc_n, *, input_size, hidden_size, precision):
    """`cudnn_lstm_backward` in JAX: the VJP of the reference forward pass."""
    outputs = functools.partial(_outputs_reference, input_size=input_size, hidden_size=hidden_size)
    return jax.vjp(outputs, x, h0, c0, w)[1]((dy, dh_n, dc_n))


# ---------------------------------------------------------------- cuDNN, through jax.experimental.rnn

_LAYER = dict(num_layers=1, dropout=0.0, bidirectional=False)


def _forward_cudnn(x, h0, c0, w, lengths, *, input_size, hidden_size, precision, reserve_size):
    (y, h_n, c_n), residuals = rnn.lstm_fwd(x, h0, c0, w, lengths, input_size=input_size, hidden_size=hidden_size,
                                            precision=precision, **_LAYER)
    return y, h_n, c_n, residuals[-1]


def _backward_cudnn(x, h0, c0, w, lengths, y, reserve, dy, dh_n, dc_n, *, input_size, hidden_size, precision):
    dx, dh0, dc0, dw, _ = rnn.lstm_bwd(input_size, hidden_size, _LAYER["num_layers"], _LAYER["dropout"],
                                       _LAYER["bidirectional"], precision, (x, h0, c0, w, lengths, y, reserve),
                                       (dy, dh_n, dc_n))
    return dx, dh0, dc0, dw


def reserve_size(batch: int, steps: int, input_size: int, hidden_size: int, precision) -> int:
    """Elements of cuDNN's reserve for this problem (0 where the bindings are absent or JAX is not on a
    GPU: the references need none), from `jax.experimental.rnn`'s own shape rule."""
    if not bindings_available() or jax.default_backend() != "gpu":
        return 0
    shapes = (jax.ShapeDtypeStruct((batch, steps, input_size), jnp.float32),
              jax.ShapeDtypeStruct((1, batch, hidden_size), jnp.float32),
              jax.ShapeDtypeStruct((1, batch, hidden_size), jnp.float32),
              jax.ShapeDtypeStruct((4 * hidden_size * (input_size + hidden_size + 2),), jnp.float32),
              jax.ShapeDtypeStruct((batch,), jnp.int32))
    reserve = jax.eval_shape(functools.partial(_forward_cudnn, input_size=input_size, hidden_size=hidden_size,
                                               precision=precision, reserve_size=0), *shapes)[-1]
    return int(np.prod(reserve.shape))


# ---------------------------------------------------------------- primitives

def _forward_avals(x, h0, c0, w, lengths, *, input_size, hidden_size, precision, reserve_size):
    batch, steps, _ = x.shape
    return (_aval((batch, steps, hidden_size), x.dtype), _aval(h0.shape, h0.dtype), _aval(c0.shape, c0.dtype),
            _aval((reserve_size,), x.dtype))


def _tangent_avals(x, h0, c0, w, lengths, y, reserve, dx, dh0, dc0, dw, **params):
    return _aval(y.shape, y.dtype), _aval(h0.shape, h0.dtype), _aval(c0.shape, c0.dtype)


def _backward_avals(x, h0, c0, w, lengths, y, reserve, dy, dh_n, dc_n, **params):
    return _aval(x.shape, x.dtype), _aval(h0.shape, h0.dtype), _aval(c0.shape, c0.dtype), _aval(w.shape, w.dtype)


forward_p = _primitive("cudnn_lstm_forward", forward_reference_cudnn, _forward_avals, _forward_cudnn,
                       platform="cuda", available=bindings_available)
tangent_p = _primitive("cudnn_lstm_tangent", tangent_reference, _tangent_avals)
backward_p = _primitive("cudnn_lstm_backward", backward_reference, _backward_avals, _backward_cudnn,
                        platform="cuda", available=bindings_available)


def _forward_jvp(primals, tangents, **params):
    """JVP of the forward primitive (only for higher derivatives): the reference's, `reserve`'s tangent a
    symbolic zero."""
    outputs = forward_p.bind(*primals, **params)
    reference = functools.partial(_outputs_reference, input_size=params["input_size"],
                                  hidden_size=params["hidden_size"])
    _, output_tangents = jax.jvp(reference, tuple(primals[:4]), tuple(map(ad.instantiate_zeros, tangents[:4])))
    return outputs, [*output_tangents, ad.Zero(jax.typeof(outputs[3]).to_tangent_aval())]


def _backward_jvp(primals, tangents, **params):
    """JVP of the backward primitive: cuDNN for its value, the reference for its tangent. cuDNN's backward
    pass declares its reserve an input/output, so this never runs it twice on one reserve (as binding
    `backward_p` again for the tangent, the linear part, would); a user who calls one `jax.vjp` function
    twice does, which `tests/test_cudnn.py` checks on a GPU."""
    outputs = backward_p.bind(*primals, **params)
    _, output_tangents = jax.jvp(functools.partial(backward_reference, **params), tuple(primals),
                                 tuple(map(ad.instantiate_zeros, tangents)))
    return outputs, list(output_tangents)


ad.primitive_jvps[forward_p] = _forward_jvp
ad.primitive_jvps[tangent_p] = _linear_jvp(tangent_p, tangent_reference, COEFFICIENTS)
ad.primitive_jvps[backward_p] = _backward_jvp
ad.primitive_transposes[tangent_p] = _linear_transpose(backward_p, COEFFICIENTS)
ad.primitive_transposes[backward_p] = _linear_transpose(tangent_p, COEFFICIENTS)
for _p, _reference in ((forward_p, forward_reference_cudnn), (tangent_p, tangent_reference),
                       (backward_p, backward_reference)):
    # vmap: the reference, vmapped (XLA's batched scan; one cuDNN call per item would serialise the
    # items, and a folded batch would give a reserve that no item's backward pass could use)
    batching.primitive_batchers[_p] = _vmapped_reference(_reference)


# ---------------------------------------------------------------- the sequence, and lj.unroll's entry

def _static(x, w_h) -> dict:
    """The primitives' parameters: sizes, and the matmul precision in force now (cuDNN's TF32 switch)."""
    batch, steps, input_size = x.shape
    hidden_size = w_h.shape[0]
    precision = jax.config.jax_default_matmul_precision
    return dict(input_size=input_size, hidden_size=hidden_size, precision=precision)


def _full_lengths(x) -> jax.Array:
    return jnp.full((x.shape[0],), x.shape[1], jnp.int32)


def _forward(w_x, w_h, b, x, h0, c0):
    static = _static(x, w_h)
    size = reserve_size(x.shape[0], x.shape[1], static["input_size"], static["hidden_size"], static["precision"])
    w = flat_weights(w_x, w_h, b)
    lengths = _full_lengths(x)
    return (x, h0, c0, w, lengths), forward_p.bind(x, h0, c0, w, lengths, reserve_size=size, **static), static


@jax.custom_jvp
def _sequence(w_x, w_h, b, x, h0, c0):
    _, (y, h_n, c_n, _), _ = _forward(w_x, w_h, b, x, h0, c0)
    return y, h_n, c_n


@_sequence.defjvp
def _sequence_jvp(primals, tangents):
    w_x, w_h, b, x, h0, c0 = primals
    dw_x, dw_h, db, dx, dh0, dc0 = tangents
    coefficients, (y, h_n, c_n, reserve), static = _forward(w_x, w_h, b, x, h0, c0)
    dw = flat_weights(dw_x, dw_h, db)
    dy, dh_n, dc_n = tangent_p.bind(*coefficients, y, reserve, dx, dh0, dc0, dw, **static)
    return (y, h_n, c_n), (dy, dh_n, dc_n)


def cudnn_unroll(params, xs: jax.Array, state, reverse: bool) -> tuple:
    """`(final_state, ys)` of an LSTM (`lj.LSTMParams`, `lj.LSTMState`) over `xs` `(T, *batch, D)`, every
    step real, on cuDNN (through the references off a GPU)."""
    steps, batch_shape, inputs = xs.shape[0], xs.shape[1:-1], xs.shape[-1]
    hidden = params.w_h.shape[0]
    batch = int(np.prod(batch_shape, dtype=np.int64))
    xs = xs.reshape(steps, batch, inputs)
    if reverse:
        xs = xs[::-1]
    h0, c0 = (s.reshape(1, batch, hidden) for s in (state.h, state.c))
    y, h_n, c_n = _sequence(params.w_x, params.w_h, params.b, jnp.swapaxes(xs, 0, 1), h0, c0)
    ys = jnp.swapaxes(y, 0, 1)
    if reverse:
        ys = ys[::-1]
    final = type(state)(h=h_n.reshape(*batch_shape, hidden), c=c_n.reshape(*batch_shape, hidden))
    return final, ys.reshape(steps, *batch_shape, hidden)
