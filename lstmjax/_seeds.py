"""Many seeds (or hyperparameters) of one program: `jax.vmap` over them, or one compiled step in a loop.

A training run that is a pure function of its seed, `fn(seed) -> results`, can run for K seeds
in two ways that give the same numbers (up to float rounding):

    results = lj.map_seeds(train_one, jnp.arange(16))                   # leaves (16, ...)
    results = lj.map_seeds(train_one, jax.random.split(key, 16))        # one PRNG key per row
    results = lj.map_seeds(train_one, {"lr": lrs, "seed": seeds})       # a hyperparameter sweep

* `"vmap"`: `jax.jit(jax.vmap(fn))`, one compiled program for all K rows. It fills a GPU or
  TPU that one small model would leave idle.
* `"loop"`: `jax.jit(fn)`, compiled once and called K times, the results stacked. On a CPU it
  is the faster one: XLA's CPU backend runs K small matrix products better one after another
  than as one batched product (measured below).
* `"auto"` (the default): `"loop"` on the CPU backend, `"vmap"` on any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

STRATEGIES = ("auto", "vmap", "loop")
"""The values `map_seeds` accepts for `strategy`."""


def map_seeds(fn: Callable[[Any], Any], seeds: Any, strategy: Literal["auto", "vmap", "loop"] = "auto") -> Any:
    """Runs `fn` on every row of `seeds` and stacks the results along a new leading axis.

    `map_seeds(fn, seeds)[k] == fn(seeds[k])` for every `k` (leaf by leaf), computed either as
    one vmapped program or as K calls of one jitted `fn`; both compile `fn` once.

    Why `"auto"` picks `"loop"` on a CPU: on this project's 2-core CPU, training K = 16 LSTMs
    (H = 64, adding problem T = 50, batch 32, 100 Adam steps; `python -m
    experiments.seeds_benchmark`, medians of 5) took 13.0 s as `jit(vmap(train_step))` over the
    stacked states and 6.2 s as 16 sequential runs of `jit(train_step)`: the loop is 2.1x
    faster. As whole programs (the steps in one `lax.scan`), `map_seeds(..., "vmap")` took
    15.8 s and `map_seeds(..., "loop")` 7.8 s (2.0x, on a loaded machine). The experiments
    agree: `experiments.stocks` 14.8 s looped vs 16.6 s vmapped, `experiments.vanishing_gradients`
    56 s vs 66 s of CPU time (experiments/README.md). On an accelerator a single small model
    leaves most of the device idle, and vmapping the seeds is the standard way to fill it, so
    `"auto"` vmaps there (not measured here: this project's machine has no accelerator).

    Args:
        fn: a pure, jittable function of one row of `seeds` (an int seed, a PRNG key, a row of
            hyperparameters: whatever `seeds[k]` is), returning a pytree of arrays.
        seeds: an array or pytree of arrays, every leaf with the same leading axis K >= 1:
            shape `(K, ...)` (for example `(K,)` int seeds, `(K, 2)` raw PRNG keys or `(K,)`
            typed keys). A list, tuple or range of Python ints is taken as an int array `(K,)`,
            and a list of arrays of one shape (such as PRNG keys) as their stack: a list is a
            list of rows, while a tuple or dict is a pytree of columns, each `(K, ...)`.
        strategy: `"vmap"`, `"loop"` or `"auto"` (`"loop"` when `jax.default_backend()` is
            `"cpu"`, else `"vmap"`). Inside a transformation (seeds that are tracers, e.g. under
            an outer `jax.jit`), `"loop"` runs as `lax.map`: one compiled body, run K times.

    Returns:
        `fn`'s output pytree, every leaf stacked along a new leading axis: shape `(K, ...)`.

    Raises:
        ValueError: if `strategy` is unknown, `seeds` has no leaves, a leaf has no leading axis,
            the leaves' leading axes differ, or K is 0.
        TypeError: if `fn` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    strategy = resolve_strategy(strategy)
    seeds = _as_rows(seeds)
    count = seed_count(seeds)
    if strategy == "vmap":
        return jax.jit(jax.vmap(fn))(seeds)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(seeds)):
        return jax.lax.map(fn, seeds)
    jitted = jax.jit(fn)
    results = [jitted(jax.tree_util.tree_map(lambda leaf, k=k: leaf[k], seeds)) for k in range(count)]
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *results)


def resolve_strategy(strategy: str) -> str:
    """`"vmap"` or `"loop"`: what `map_seeds` does for `strategy` on the current default backend.

    Raises:
        ValueError: if `strategy` is not one of `STRATEGIES`.
    """
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "auto":
        return "loop" if jax.default_backend() == "cpu" else "vmap"
    return strategy


def seed_count(seeds: Any) -> int:
    """K, the common leading axis of every leaf of `seeds`.

    Raises:
        ValueError: if `seeds` has no leaves, a leaf is a scalar, the leading axes differ or K is 0.
    """
    leaves, tree = jax.tree_util.tree_flatten(seeds)
    if not leaves:
        raise ValueError(f"seeds must hold at least one array with a leading axis K, got {seeds!r}")
    shapes = [jnp.shape(leaf) for leaf in leaves]
    if any(len(shape) == 0 for shape in shapes):
        raise ValueError(f"every leaf of seeds must have a leading axis K, got leaf shapes {shapes} "
                         f"(tree {tree}); expected (K, ...)")
    counts = {shape[0] for shape in shapes}
    if len(counts) > 1:
        raise ValueError(f"every leaf of seeds must have the same leading axis K, got leaf shapes {shapes} "
                         f"(tree {tree})")
    (count,) = counts
    if count == 0:
        raise ValueError(f"seeds must hold at least one row (K >= 1), got leaf shapes {shapes}")
    return count


def _as_rows(seeds: Any) -> Any:
    """A range, list or tuple of Python ints as an int array `(K,)`; a list of arrays of one shape
    (such as PRNG keys) as their stack `(K, ...)`: a list is a list of rows. Anything else (a
    tuple or dict of columns, an array) is unchanged."""
    if isinstance(seeds, range) or (
        isinstance(seeds, (list, tuple)) and seeds
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds)
    ):
        return jnp.asarray(list(seeds), dtype=jnp.int32)
    if isinstance(seeds, list) and seeds and all(isinstance(s, (jax.Array, np.ndarray)) for s in seeds):
        shapes = sorted({tuple(jnp.shape(s)) for s in seeds})
        if len(shapes) > 1:
            raise ValueError(f"seeds given as a list must be rows of one shape, got shapes {shapes}; "
                             "expected e.g. a list of PRNG keys, or one array (K, ...)")
        return jnp.stack(seeds)
    return seeds
