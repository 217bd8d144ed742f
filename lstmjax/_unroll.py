"""Unrolling a cell over time with `lax.scan`: the same (shared) weights at every step.

Variable-length batches, gaps and episode boundaries are handled here once, for every cell:

* `lengths` (shape `batch`): sequence `b` has `lengths[b]` real steps; outputs past its end are
  zero and its final state is the state after its last real step.
* `mask` (shape `(T, *batch)`, bool): `False` marks a gap; the state is held through it and
  its output is zero. `lengths` is the special case `mask[t] = t < lengths`.
* `resets` (shape `(T, *batch)`, bool): `True` at `t` starts a new episode at step `t`: the
  state is reset to the initial state just before step `t` is computed (a reset that falls on
  a masked step takes effect at the next real step, so a final state is always the state
  after the sequence's last real step).
* `reverse=True` reads each sequence backwards from its own last real step. `ys` stays
  aligned with `xs` (`ys[t]` is the output for input `t`), and `resets` keep meaning "an
  episode starts at t", so the backward pass restarts after it has processed step `t`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from lstmjax._cell import Cell, Params, State, is_as_built, select_state, zero_where_invalid
from lstmjax._cudnn import can_run_on_gpu
from lstmjax._cudnn import enabled as cudnn_enabled
from lstmjax._fused import fused_unroll
from lstmjax._native import can_run_natively


def unroll(
    cell: Cell,
    params: Params,
    xs: ArrayLike,
    state: State | None = None,
    lengths: ArrayLike | None = None,
    reverse: bool = False,
    mask: ArrayLike | None = None,
    resets: ArrayLike | None = None,
    remat: bool | int = False,
) -> tuple[State, jax.Array]:
    """Runs `cell` over the time axis of `xs` with `lax.scan`.

    Args:
        cell: an `lj.Cell`.
        params: the cell's parameters, shared by every step.
        xs: inputs, shape `(T, *batch, input_size)`; any batch shape, including none.
        state: initial state; each leaf of shape `(*batch, H)`, or `(H,)` to share one initial
            state (for example a learnable one) across the batch. `None` gives zeros.
        lengths: integer sequence lengths, shape `batch`, each in `[0, T]`.
        reverse: run each sequence from its last real step back to step 0.
        mask: bool, shape `(T, *batch)`; `False` holds the state and zeroes the output.
        resets: bool, shape `(T, *batch)`; `True` at `t` resets the state before step `t`.
        remat: gradient checkpointing for long sequences. `False` (default) keeps every step's
            intermediates for the backward pass (memory grows with `T`); `True` splits the steps
            into chunks of `ceil(sqrt(T))` and keeps only the state at each chunk's start,
            recomputing a chunk's steps when its gradient is needed (memory grows with `sqrt(T)`,
            about one extra forward pass of compute); an integer sets the chunk length. Same
            results and gradients either way.

    Returns:
        `(final_state, ys)` in `lax.scan`'s order, `ys` of shape `(T, *batch, H)`.

    On a single CPU device (Linux, x86-64 with AVX-512F, a C++ compiler), an `lj.lstm` cell in
    float32 and an `lj.gru` cell from H = 16 and an `lj.rnn` cell from H = 4, with at least
    one step and one sequence and without `resets` (and not in `unroll_with_internals`), run both
    time loops (forward, and backward under `jax.grad`) in a native kernel called by XLA, `lengths`,
    `mask` and `remat` included (`lstmjax._native`, `lstmjax._native_gru`, `lstmjax._native_rnn`;
    `lj.native_kernel_status()` says whether this machine has them; `LSTMJAX_NATIVE=0` in the
    environment before the first such cell runs turns them off). Otherwise `lj.lstm` cells from H =
    128 and `lj.rnn` cells from H = 256 (where it measured faster on a CPU) run on a fast path when
    no `resets` are given: the same forward scan, with a derivative laid out so that the backward
    pass carries only the state's cotangent and forms the weight gradients as single large matrix
    multiplies (`lstmjax._fused`). On every path, forward mode, higher derivatives, `vmap` and
    float64 work as on the step-by-step scan of `cell.step`, which every other cell and option uses,
    and give the same results to rounding. When JAX sees exactly one NVIDIA GPU, `LSTMJAX_CUDNN=1`
    in the environment when `lj.unroll` is called (under `jit`: traced) runs a float32 `lj.lstm`
    cell without `lengths`, `mask` or `resets` (with `remat`, only where the chunk length divides
    T; T·B·H up to 2**25; not under bfloat16 matmul precision) on cuDNN's fused RNN for the
    forward and backward passes; forward mode and higher derivatives still work (their tangents
    on XLA's scan), and `vmap` runs XLA's scan (`lstmjax._cudnn`; opt-in: not yet run on a GPU).
    Called outside `jit` on a built-in cell, the scan is compiled once per cell, options and shapes
    and reused.
    """
    final_state, ys, _ = _scan(cell, params, xs, state, lengths, reverse, mask, resets, remat, with_internals=False)
    return final_state, ys


def unroll_with_internals(
    cell: Cell,
    params: Params,
    xs: ArrayLike,
    state: State | None = None,
    lengths: ArrayLike | None = None,
    reverse: bool = False,
    mask: ArrayLike | None = None,
    resets: ArrayLike | None = None,
    remat: bool | int = False,
) -> tuple[State, jax.Array, Any]:
    """`unroll` that also returns every step's internals, stacked over time.

    For the LSTM the internals are an `lj.LSTMInternals(i, f, g, o, c, h)`, each of shape
    `(T, *batch, H)`: the gate percentages, the candidate and both memories after each step,
    what the StatQuest video draws. Internals of masked steps are zero, like their outputs.

    Returns:
        `(final_state, ys, internals)`; arguments as in `unroll`.
    """
    return _scan(cell, params, xs, state, lengths, reverse, mask, resets, remat, with_internals=True)


def prepare_unroll(cell: Cell, params: Params, xs: ArrayLike, state: State | None) -> tuple[jax.Array, State]:
    """Checks `cell`, `xs` and `state` against each other; returns `xs` as an array and the
    initial state, with unbatched `(H,)` leaves broadcast to the batch shape of `xs`."""
    if not isinstance(cell, Cell):
        raise ValueError(f"cell must be an lj.Cell (from lj.lstm, lj.gru, lj.rnn, ...), got {type(cell).__name__}")
    xs = jnp.asarray(xs)
    if xs.ndim < 2:
        raise ValueError(f"xs must have shape (T, *batch, input_size), got shape {tuple(xs.shape)}")
    init_state = _initial_state(cell, params, state, tuple(xs.shape[1:-1]))
    _check_step_fits(cell, params, init_state, xs)
    return xs, init_state


def _scan(cell, params, xs, state, lengths, reverse, mask, resets, remat, with_internals):
    """Checks every argument (eagerly where values are concrete), then runs `_run`. Called outside
    any transformation on a built-in cell (`is_as_built`: its pure functions cannot change) with
    array arguments, `_run` is compiled once per (cell, options, shapes) and reused, so that an
    eager `lj.unroll` in a notebook does not trace its scan anew on every call; any other cell
    (whose functions might read state that changes) is traced afresh, as under `jit`."""
    xs, init_state = prepare_unroll(cell, params, xs, state)
    chunk = _chunk_length(remat, xs.shape[0])
    steps, batch_shape = xs.shape[0], tuple(xs.shape[1:-1])
    valid = _valid_steps(steps, batch_shape, lengths, mask)
    reset = _reset_before(steps, batch_shape, resets, reverse)
    arrays = (params, xs, init_state, valid, reset)
    concrete = all(isinstance(leaf, (jax.Array, np.ndarray)) and not isinstance(leaf, jax.core.Tracer)
                   for leaf in jax.tree_util.tree_leaves(arrays))
    run = _run_compiled if concrete and is_as_built(cell) else _run
    return run(cell, *arrays, reverse=reverse, chunk=chunk, with_internals=with_internals,
               cudnn=cudnn_enabled())


def _run(cell, params, xs, init_state, valid, reset, reverse, chunk, with_internals, cudnn=False):
    """The unroll itself; `cudnn`: whether the opt-in cuDNN path was asked for when `lj.unroll` was called
    (a static argument, so that the compiled cache tells the two apart)."""
    steps, batch_shape = xs.shape[0], tuple(xs.shape[1:-1])
    fused = cell.fused
    if with_internals or reset is not None or fused is None or not is_as_built(cell):
        fused = None
    native = (fused.native if fused is not None and fused.native is not None
              and cell.hidden_size >= fused.native_min_hidden_size and can_run_natively(params, xs, init_state)
              else None)
    # cuDNN runs every step: not with lengths or a mask, nor with remat chunks that pad the last one
    gpu = (fused.gpu if cudnn and native is None and fused is not None and fused.gpu is not None and valid is None
           and (chunk is None or steps % chunk == 0) and can_run_on_gpu(params, xs, init_state) else None)
    if fused is not None and (fused.forward is None or cell.hidden_size < fused.min_hidden_size):
        fused = None

    def run(carry, inputs):
        """Runs a stretch of steps: `carry` = (state, reset pending), `inputs` = (xs, valid, reset)."""
        if native is not None:
            final, ys = native(params, inputs[0], carry[0], reverse, inputs[1])
            return (final, carry[1]), (ys, None)
        if gpu is not None:
            final, ys = gpu(params, inputs[0], carry[0], reverse)
            return (final, carry[1]), (ys, None)
        if fused is not None:
            final, ys = fused_unroll(fused, params, inputs[0], carry[0], inputs[1], reverse)
            return (final, carry[1]), (ys, None)
        return lax.scan(functools.partial(_step, cell, params, init_state, with_internals), carry, inputs,
                        reverse=reverse)

    carry = (init_state, None if reset is None else jnp.zeros(batch_shape, bool))
    if chunk is None:
        (final_state, _), (ys, internals) = run(carry, (xs, valid, reset))
        return final_state, ys, internals
    if valid is None and steps % chunk:
        valid = jnp.ones((steps, *batch_shape), bool)
    chunks = jax.tree_util.tree_map(lambda a: _to_chunks(a, chunk), (xs, valid, reset))
    (final_state, _), outputs = lax.scan(jax.checkpoint(run), carry, chunks, reverse=reverse)
    ys, internals = jax.tree_util.tree_map(lambda a: a.reshape(-1, *a.shape[2:])[:steps], outputs)
    return final_state, ys, internals


_run_compiled = jax.jit(_run, static_argnums=0, static_argnames=("reverse", "chunk", "with_internals", "cudnn"))


def _step(cell, params, init_state, with_internals, carry, inputs):
    """One step of the step-by-step scan, with masks and resets; `carry` = (state, reset pending)."""
    state, pending = carry
    x, is_valid, is_reset = inputs
    start = state
    if is_reset is not None:
        pending = pending | is_reset
        start = select_state(pending, init_state, state)
    new, y, internals = cell.step_with_internals(params, start, x)
    if is_valid is not None:
        new = select_state(is_valid, new, state)
        y, internals = zero_where_invalid(is_valid, (y, internals))
    if pending is not None:
        pending = pending & ~is_valid if is_valid is not None else jnp.zeros_like(pending)
    return (new, pending), ((y, internals) if with_internals else (y, None))


def _chunk_length(remat, steps: int) -> int | None:
    """The checkpointed chunk length that `remat` asks for, or `None` for no checkpointing."""
    if isinstance(remat, (bool, np.bool_)):
        return max(1, math.ceil(math.sqrt(steps))) if remat else None
    if isinstance(remat, (int, np.integer)) and remat >= 1:
        return min(int(remat), steps) if steps else 1
    raise ValueError(f"remat must be True, False or a positive integer chunk length, got {remat!r}")


def _to_chunks(a: jax.Array, chunk: int) -> jax.Array:
    """`(T, ...)` -> `(ceil(T / chunk), chunk, ...)`, padded at the end with zeros (`False`: masked steps)."""
    padding = -a.shape[0] % chunk
    a = jnp.pad(a, [(0, padding)] + [(0, 0)] * (a.ndim - 1))
    return a.reshape(-1, chunk, *a.shape[1:])


def _initial_state(cell: Cell, params: Params, state: State | None, batch_shape: tuple[int, ...]) -> State:
    if state is None:
        return cell.initial_state(params, batch_shape)
    expected = jax.eval_shape(lambda p: cell.initial_state(p, batch_shape), params)
    expected_leaves, expected_tree = jax.tree_util.tree_flatten(expected)
    leaves, tree = jax.tree_util.tree_flatten(state)
    if tree != expected_tree:
        raise ValueError(f"state must have the structure of cell.initial_state(params): "
                         f"expected {expected_tree}, got {tree}")
    fitted = []
    for path_leaf, want in zip(jax.tree_util.tree_flatten_with_path(state)[0], expected_leaves):
        path, leaf = path_leaf
        leaf = jnp.asarray(leaf)
        unbatched = want.shape[len(batch_shape):]
        if leaf.shape == want.shape:
            fitted.append(leaf)
        elif leaf.shape == unbatched:
            fitted.append(jnp.broadcast_to(leaf, want.shape))
        else:
            raise ValueError(
                f"state{jax.tree_util.keystr(path)} must have shape {want.shape} (batch shape "
                f"{batch_shape} of xs) or {unbatched} (shared across the batch), got shape {leaf.shape}")
    return jax.tree_util.tree_unflatten(tree, fitted)


def _check_step_fits(cell: Cell, params: Params, state: State, xs: jax.Array) -> None:
    """Traces one step abstractly so that a wrong input size is reported against `xs`."""
    try:
        jax.eval_shape(cell.step, params, state, jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype))
    except ValueError as error:
        raise ValueError(f"xs of shape {tuple(xs.shape)} (T, *batch, input_size) does not fit the "
                         f"{cell.name} cell: {error}") from error


def _valid_steps(steps: int, batch_shape: tuple[int, ...], lengths, mask) -> jax.Array | None:
    """The bool array `(T, *batch)` of real steps, or None when every step is real."""
    valid = None
    if lengths is not None:
        lengths = _check_lengths(lengths, steps, batch_shape)
        time = jnp.arange(steps).reshape((steps,) + (1,) * len(batch_shape))
        valid = time < lengths
    if mask is not None:
        mask = _check_time_flags("mask", mask, steps, batch_shape)
        valid = mask if valid is None else valid & mask
    return valid


def _reset_before(steps: int, batch_shape: tuple[int, ...], resets, reverse: bool) -> jax.Array | None:
    """Where to reset the carry before computing each step, in the scan's own direction."""
    if resets is None:
        return None
    resets = _check_time_flags("resets", resets, steps, batch_shape)
    if not reverse:
        return resets
    # Backwards, an episode starting at t+1 ends once step t+1 is done: reset before step t.
    return jnp.concatenate([resets[1:], jnp.zeros_like(resets[:1])], axis=0)


def _check_lengths(lengths, steps: int, batch_shape: tuple[int, ...]) -> jax.Array:
    lengths_array = jnp.asarray(lengths)
    if tuple(lengths_array.shape) != batch_shape:
        raise ValueError(f"lengths must have the batch shape of xs, {batch_shape}, "
                         f"got shape {tuple(lengths_array.shape)}")
    if not jnp.issubdtype(lengths_array.dtype, jnp.integer):
        raise ValueError(f"lengths must have an integer dtype, got {lengths_array.dtype}")
    if not isinstance(lengths, jax.core.Tracer):
        concrete = np.asarray(lengths)
        if concrete.size and (concrete.min() < 0 or concrete.max() > steps):
            raise ValueError(f"lengths must lie in [0, T={steps}], got values from "
                             f"{concrete.min()} to {concrete.max()}")
    return lengths_array


def _check_time_flags(name: str, flags, steps: int, batch_shape: tuple[int, ...]) -> jax.Array:
    flags = jnp.asarray(flags)
    expected = (steps, *batch_shape)
    if tuple(flags.shape) != expected:
        raise ValueError(f"{name} must have shape (T, *batch) = {expected}, got shape {tuple(flags.shape)}")
    if flags.dtype != jnp.bool_:
        raise ValueError(f"{name} must have dtype bool, got {flags.dtype}")
    return flags

