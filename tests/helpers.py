"""Test helpers: tree comparison, and a walk over a jaxpr's equations."""

from __future__ import annotations

import jax
import numpy as np


def assert_trees_all_close(actual, desired, rtol: float = 1e-6, atol: float = 1e-6) -> None:
    """Asserts two pytrees have the same structure and numerically close leaves."""
    actual_leaves, actual_tree = jax.tree_util.tree_flatten(actual)
    desired_leaves, desired_tree = jax.tree_util.tree_flatten(desired)
    assert actual_tree == desired_tree, f"tree structures differ: {actual_tree} != {desired_tree}"
    for index, (a, d) in enumerate(zip(actual_leaves, desired_leaves)):
        a, d = np.asarray(a), np.asarray(d)
        assert a.shape == d.shape, f"leaf {index}: shape {a.shape} != {d.shape}"
        np.testing.assert_allclose(a, d, rtol=rtol, atol=atol, err_msg=f"leaf {index}")


def equations(jaxpr, in_loop: bool = False):
    """`(equation, in_loop)` for every equation of a jaxpr and of its sub-jaxprs (scan, while,
    jit, custom rules), `in_loop` telling whether it runs inside a `scan` or `while` body."""
    for eqn in jaxpr.eqns:
        yield eqn, in_loop
        inner_in_loop = in_loop or eqn.primitive.name in ("scan", "while")
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from equations(inner, inner_in_loop)
