"""Vanishing and exploding gradients, measured: how gradients flow back through time in any cell.

Notation: `s_0` is the initial state and `s_{t+1} = step(s_t, x_t)` the state after reading
`xs[t]`, so `ys[t] = output(s_{t+1})`; for the LSTM `s = (h, c)`. Every function here works
for every cell family, is jittable, and is vmappable over a batch of sequences.

* `gradient_norms_over_time`: ‖∂L/∂x_t‖ and ‖∂L/∂s_t‖ (per state part: the LSTM's short-term
  memory `h` and long-term memory `c`) for a loss `L` on the outputs. ∂L/∂s_t is the total
  derivative: everything `L` receives from `s_t`, through `ys[t]` and through all later steps.
* `state_sensitivity`: ‖∂s_T/∂s_t‖ (spectral and Frobenius) for all t, i.e. the norms of the
  products of one-step Jacobians `∂s_{t+1}/∂s_t`, and the singular values of each one-step
  Jacobian. For a vanilla RNN `∂h_{t+1}/∂h_t = diag(φ'(a_t)) w_hᵀ`, so the norms shrink or grow
  geometrically; the LSTM's long-term path contributes `diag(f_t)` instead.
* `forget_gate_gain`: the product of forget gates along the long-term path (the "constant
  error carousel"), `∏_{k=t}^{T-1} f_k`, and `gate_saturation`: how often gates sit near 0 or 1.
* `fit_log_decay` and `distance_to_fraction`: a per-step decay rate fitted to log‖g‖ against the
  distance back in time, and the distance at which ‖g‖ falls below a fraction of its end value.

Precision: the gradient norms span many orders of magnitude and are products of hundreds of
matrix multiplies, so `gradient_norms_over_time`, `step_jacobians` and `state_sensitivity` trace
their matrix multiplies at full float32 precision (`jax.default_matmul_precision("highest")`),
whatever the process's default. On a GPU JAX's default would let float32 matrix multiplies run
in TF32 (a 10-bit mantissa, relative error about 1e-3 per product); on a TPU it would use
bfloat16 passes (so there these studies run noticeably slower than a default matmul); on a CPU
nothing changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

from lstmjax._cell import Cell, Params, State
from lstmjax._gru import GRUInternals
from lstmjax._lstm import LSTMInternals
from lstmjax._unroll import prepare_unroll


def _full_float32_matmuls(function: Callable) -> Callable:
    """`function` with every matrix multiply it traces at `"highest"` precision (no TF32)."""

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return function(*args, **kwargs)

    return wrapped


class GradientNorms(NamedTuple):
    """Per-time-step gradient norms, Euclidean over the feature axis.

    Attributes:
        x: ‖∂L/∂x_t‖, shape `(T, *batch)`; `x[t]` belongs to `xs[t]`.
        state: a pytree shaped like the cell's state (`LSTMState(h, c)` for the LSTM, an array
            for the GRU and RNN), each leaf of shape `(T, *batch)`: leaf `[t]` is ‖∂L/∂s_{t+1}‖,
            the state after reading `xs[t]`, aligned with `ys[t]`.
    """

    x: jax.Array
    state: Any


@_full_float32_matmuls
def gradient_norms_over_time(
    cell: Cell,
    params: Params,
    xs: ArrayLike,
    loss_fn: Callable[[jax.Array], jax.Array],
    state: State | None = None,
) -> GradientNorms:
    """‖∂L/∂x_t‖ and ‖∂L/∂s_t‖ for every step, for a loss on the outputs.

    The state gradient is taken by adding a zero perturbation to the state after every step
    and differentiating with respect to it, so it is the total derivative of `L`.

    Args:
        cell: an `lj.Cell`.
        params: the cell's parameters.
        xs: inputs, shape `(T, *batch, input_size)`.
        loss_fn: `loss_fn(ys) -> scalar`, with `ys` of shape `(T, *batch, H)`.
        state: initial state (leaves `(*batch, H)` or `(H,)`), or `None` for zeros.

    Returns:
        `GradientNorms(x, state)`, each leaf of shape `(T, *batch)`.
    """
    xs, init_state = prepare_unroll(cell, params, xs, state)
    steps = xs.shape[0]
    perturbations = jax.tree_util.tree_map(lambda leaf: jnp.zeros((steps, *leaf.shape), leaf.dtype), init_state)

    def loss_of(xs, perturbations):
        def body(carry, inputs):
            x, delta = inputs
            new, _ = cell.step(params, carry, x)
            new = jax.tree_util.tree_map(jnp.add, new, delta)
            return new, cell.output(new)

        _, ys = lax.scan(body, init_state, (xs, perturbations))
        loss = jnp.asarray(loss_fn(ys))
        if loss.shape != ():
            raise ValueError(f"loss_fn must return a scalar, got shape {loss.shape}")
        return loss

    grad_xs, grad_states = jax.grad(loss_of, argnums=(0, 1))(xs, perturbations)
    feature_norm = lambda g: jnp.linalg.norm(g, axis=-1)  # noqa: E731
    return GradientNorms(x=feature_norm(grad_xs), state=jax.tree_util.tree_map(feature_norm, grad_states))


class StateSensitivity(NamedTuple):
    """How the last state depends on earlier states, for one sequence of length T.

    Attributes:
        spectral: ‖∂s_T/∂s_t‖₂ of the whole (flattened) state, shape `(T + 1,)`, `t = 0..T`
            (`t = 0` is the initial state, `t = T` the identity, norm 1).
        frobenius: the same in the Frobenius norm, shape `(T + 1,)`.
        block_spectral: a pytree shaped like the state, each leaf `(T + 1,)`: the spectral norm
            of that part's own block, e.g. ‖∂h_T/∂h_t‖ and ‖∂c_T/∂c_t‖ for the LSTM.
        block_frobenius: the same blocks in the Frobenius norm.
        step_singular_values: singular values of each one-step Jacobian ∂s_{t+1}/∂s_t,
            shape `(T, S)` with `S` the flattened state size, in descending order.
    """

    spectral: jax.Array
    frobenius: jax.Array
    block_spectral: Any
    block_frobenius: Any
    step_singular_values: jax.Array


@_full_float32_matmuls
def step_jacobians(cell: Cell, params: Params, xs: ArrayLike, state: State | None = None) -> jax.Array:
    """The one-step Jacobians ∂s_{t+1}/∂s_t along the trajectory of one sequence.

    Args:
        cell: an `lj.Cell`.
        params: the cell's parameters.
        xs: one sequence, shape `(T, input_size)` (`jax.vmap` this function for a batch).
        state: initial state (leaves `(H,)`), or `None` for zeros.

    Returns:
        Shape `(T, S, S)`, with the state flattened leaf by leaf in pytree order (for the LSTM,
        `S = 2H`: `h` first, then `c`). Entry `[t]` is the Jacobian of the step reading `xs[t]`.
    """
    xs = jnp.asarray(xs)
    if xs.ndim != 2:
        raise ValueError(f"xs must be one sequence of shape (T, input_size) (vmap over a batch), "
                         f"got shape {tuple(xs.shape)}")
    xs, init_state = prepare_unroll(cell, params, xs, state)
    flat_init, unflatten = ravel_pytree(init_state)

    def flat_step(flat_state, x):
        return ravel_pytree(cell.step(params, unflatten(flat_state), x)[0])[0]

    def body(flat_state, x):
        return flat_step(flat_state, x), flat_state

    _, states_before = lax.scan(body, flat_init, xs)
    return jax.vmap(jax.jacfwd(flat_step))(states_before, xs)


@_full_float32_matmuls
def state_sensitivity(cell: Cell, params: Params, xs: ArrayLike, state: State | None = None) -> StateSensitivity:
    """Norms of ∂s_T/∂s_t for `t = 0..T` and singular values of every one-step Jacobian.

    Args:
        cell: an `lj.Cell`.
        params: the cell's parameters.
        xs: one sequence, shape `(T, input_size)` (`jax.vmap` this function for a batch).
        state: initial state (leaves `(H,)`), or `None` for zeros.

    Returns:
        A `StateSensitivity`; see its attributes for the shapes.
    """
    jacobians = step_jacobians(cell, params, xs, state)
    size = jacobians.shape[-1]

    def backward(product, jacobian):
        product = product @ jacobian
        return product, product

    identity = jnp.eye(size, dtype=jacobians.dtype)
    _, products = lax.scan(backward, identity, jacobians, reverse=True)
    products = jnp.concatenate([products, identity[None]], axis=0)  # (T + 1, S, S): ∂s_T/∂s_t

    template = cell.initial_state(params) if state is None else state
    leaves, tree = jax.tree_util.tree_flatten(template)
    offsets, start = [], 0
    for leaf in leaves:
        offsets.append((start, start + leaf.size))
        start += leaf.size
    blocks = [products[:, a:b, a:b] for a, b in offsets]
    return StateSensitivity(
        spectral=_spectral_norm(products),
        frobenius=_frobenius_norm(products),
        block_spectral=jax.tree_util.tree_unflatten(tree, [_spectral_norm(block) for block in blocks]),
        block_frobenius=jax.tree_util.tree_unflatten(tree, [_frobenius_norm(block) for block in blocks]),
        step_singular_values=jnp.linalg.svd(jacobians, compute_uv=False),
    )


def _spectral_norm(matrices: jax.Array) -> jax.Array:
    return jnp.linalg.svd(matrices, compute_uv=False)[..., 0]


def _frobenius_norm(matrices: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(matrices ** 2, axis=(-2, -1)))


def forget_gate_gain(f: ArrayLike) -> jax.Array:
    """The LSTM's long-term-memory gain `∏_{k=t}^{T-1} f_k`, per unit, for `t = 0..T`.

    Along the long-term path alone (`c_{k+1} = f_k · c_k + ...`) this is ∂c_T/∂c_t: it stays
    near 1 while the forget gates stay open, however long the sequence.

    Args:
        f: forget-gate activations, shape `(T, ..., H)`, e.g. `internals.f` from
            `lj.unroll_with_internals`.

    Returns:
        Shape `(T + 1, ..., H)`; entry `T` is 1.
    """
    f = jnp.asarray(f)
    if f.ndim < 1:
        raise ValueError(f"f must have shape (T, ..., H), got shape {tuple(f.shape)}")
    tail_products = jnp.cumprod(f[::-1], axis=0)[::-1]
    return jnp.concatenate([tail_products, jnp.ones_like(f[:1])], axis=0)


SIGMOID_GATES = {LSTMInternals: ("i", "f", "o"), GRUInternals: ("r", "z")}


class GateSaturation(NamedTuple):
    """Fractions of one gate's activations near its limits, per time step, shape `(T,)`.

    Attributes:
        near_zero: fraction below `threshold` (the gate is shut).
        near_one: fraction above `1 - threshold` (the gate is wide open).
    """

    near_zero: jax.Array
    near_one: jax.Array


def gate_saturation(internals: LSTMInternals | GRUInternals, threshold: float = 0.05) -> dict[str, GateSaturation]:
    """How often each sigmoid gate is saturated, over batch and units, at every time step.

    Args:
        internals: `LSTMInternals` (gates `i, f, o`) or `GRUInternals` (gates `r, z`) from
            `lj.unroll_with_internals`, each field of shape `(T, ..., H)`.
        threshold: distance from 0 or 1 that counts as saturated, in `(0, 0.5)`.

    Returns:
        `{gate name: GateSaturation(near_zero, near_one)}`.
    """
    if type(internals) not in SIGMOID_GATES:
        raise ValueError(f"internals must be lj.LSTMInternals or lj.GRUInternals, got {type(internals).__name__}")
    if not 0.0 < threshold < 0.5:
        raise ValueError(f"threshold must lie in (0, 0.5), got {threshold}")

    def fraction(condition):
        return jnp.mean(condition.reshape(condition.shape[0], -1), axis=1)

    return {name: GateSaturation(near_zero=fraction(getattr(internals, name) < threshold),
                                 near_one=fraction(getattr(internals, name) > 1.0 - threshold))
            for name in SIGMOID_GATES[type(internals)]}


class LogDecayFit(NamedTuple):
    """A least-squares line through `log ‖g‖` against the distance back from the end.

    Attributes:
        rate: slope per step; negative when gradients vanish, positive when they explode.
            `exp(rate)` is the average factor per step back in time.
        intercept: the fitted `log ‖g‖` at distance 0.
    """

    rate: jax.Array
    intercept: jax.Array


def fit_log_decay(norms: ArrayLike) -> LogDecayFit:
    """Fits `log norms[T-1-d] ≈ intercept + rate · d` over the distances `d` with finite, positive norms.

    Args:
        norms: gradient norms indexed by time, shape `(T,)` (the end of the sequence last).

    Returns:
        A `LogDecayFit`; `nan` when fewer than two points are usable.
    """
    norms = jnp.asarray(norms)
    if norms.ndim != 1:
        raise ValueError(f"norms must have shape (T,), got shape {tuple(norms.shape)}")
    distance = jnp.arange(norms.shape[0] - 1, -1, -1, dtype=jnp.result_type(float))
    usable = jnp.isfinite(norms) & (norms > 0)
    log_norms = jnp.where(usable, jnp.log(jnp.where(usable, norms, 1.0)), 0.0)
    weight = usable.astype(distance.dtype)
    count = weight.sum()
    mean_d = (weight * distance).sum() / count
    mean_log = (weight * log_norms).sum() / count
    covariance = (weight * (distance - mean_d) * (log_norms - mean_log)).sum()
    variance = (weight * (distance - mean_d) ** 2).sum()
    rate = jnp.where(count >= 2, covariance / variance, jnp.nan)
    return LogDecayFit(rate=rate, intercept=jnp.where(count >= 2, mean_log - rate * mean_d, jnp.nan))


def distance_to_fraction(norms: ArrayLike, fraction: float = 0.01) -> jax.Array:
    """The smallest distance back from the end at which the norm falls below `fraction` of its end value.

    Args:
        norms: gradient norms indexed by time, shape `(T,)` (the end of the sequence last).
        fraction: in `(0, 1)`.

    Returns:
        A float scalar: the distance `d` (`norms[T-1-d] < fraction · norms[T-1]`), or `inf`
        when the norm never falls that far within the sequence.
    """
    norms = jnp.asarray(norms)
    if norms.ndim != 1 or norms.shape[0] < 1:
        raise ValueError(f"norms must have shape (T,) with T >= 1, got shape {tuple(norms.shape)}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    backwards = norms[::-1]
    below = backwards < fraction * backwards[0]
    first = jnp.argmax(below)
    return jnp.where(jnp.any(below), first.astype(jnp.result_type(float)), jnp.inf)
