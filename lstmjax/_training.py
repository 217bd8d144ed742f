"""Training with any Optax optimizer: a `TrainState` pytree and a pure, jittable train step.

The step is a pure function of `(state, batch)`, so `jax.jit` compiles it once; several
independent models (seeds, hyperparameters) train by `lj.map_seeds` over a function that runs
one whole training (a loop over one compiled program on a CPU, where that measured faster than
`jax.vmap`; one vmapped program on an accelerator):

    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    state = lj.init_train_state(params, optimizer, jax.random.PRNGKey(0))
    train_step = jax.jit(lj.make_train_step(loss_fn, optimizer))
    state, metrics = train_step(state, batch)      # metrics.loss, metrics.grad_norm, metrics.finite
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class TrainState(NamedTuple):
    """Everything a training run carries from step to step.

    Attributes:
        params: the model's parameters (any pytree).
        opt_state: the Optax optimizer's state.
        step: number of steps taken so far, an int32 scalar.
        key: PRNG key for the next step (split at every step).
    """

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array


class StepMetrics(NamedTuple):
    """What one train step reports.

    Attributes:
        loss: the loss at the parameters before the update.
        grad_norm: global norm of the gradient (before any clipping in the optimizer).
        finite: whether loss and gradient were finite; if not, the update was skipped and
            `params` and `opt_state` are the last good ones.
    """

    loss: jax.Array
    grad_norm: jax.Array
    finite: jax.Array


def init_train_state(params: Any, optimizer: optax.GradientTransformation, key: jax.Array) -> TrainState:
    """A `TrainState` at step 0."""
    return TrainState(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32), key=key)


def make_train_step(
    loss_fn: Callable[[Any, Any, jax.Array], jax.Array], optimizer: optax.GradientTransformation
) -> Callable[[TrainState, Any], tuple[TrainState, StepMetrics]]:
    """Builds `train_step(state, batch) -> (state, metrics)` from a loss and an optimizer.

    Args:
        loss_fn: `loss_fn(params, batch, key) -> scalar`; `key` is a fresh PRNG key each step
            (for dropout or sampling), ignore it if the loss is deterministic.
        optimizer: any `optax.GradientTransformation` (chains with clipping and schedules too).

    Returns:
        A pure function; wrap it in `jax.jit` (it compiles once per batch shape); it also
        vmaps over stacked states, which `lj.map_seeds(..., strategy="vmap")` uses. A
        non-finite loss or gradient skips the update and reports `metrics.finite = False`.
    """

    def train_step(state: TrainState, batch: Any) -> tuple[TrainState, StepMetrics]:
        key, step_key = jax.random.split(state.key)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, step_key)
        if jnp.shape(loss) != ():
            raise ValueError(f"loss_fn must return a scalar, got shape {jnp.shape(loss)}")
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep_new = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        params = jax.tree_util.tree_map(keep_new, params, state.params)
        opt_state = jax.tree_util.tree_map(keep_new, opt_state, state.opt_state)
        new_state = TrainState(params=params, opt_state=opt_state, step=state.step + 1, key=key)
        return new_state, StepMetrics(loss=loss, grad_norm=grad_norm, finite=finite)

    return train_step
