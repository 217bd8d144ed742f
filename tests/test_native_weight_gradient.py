"""The LSTM's weight gradients on the native kernel (`lstmjax/native/weight_gradient_cpu.cc`).

`dw_x = Σ_t x_tᵀ·dz_t`, `dw_h = Σ_t h_{t-1}ᵀ·dz_t` (with `h_{-1} = h0`) and `db = Σ dz`: the kernel
must be as accurate as XLA's float32 products for every layout it splits work by (row chunks, the
`h0` rows, partial column panels, panels split by rows across workers), be the exact transpose of
the projection it stands for, and be what a training step through `lj.unroll` runs. Skipped where
the native kernels cannot be built.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_native import SHAPES, _loss, _problem, _xla, assert_as_accurate_as_xla

from lstmjax import _native
from lstmjax._native_build import native_kernel_status


@pytest.fixture(scope="module", autouse=True)
def kernel():
    status = native_kernel_status()
    if not status.available:
        pytest.skip(f"native kernel unavailable: {status.reason}")


def _arrays(steps, batch, inputs, hidden, gates, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(steps, batch, inputs), (batch, hidden), (steps, batch, hidden), (steps, batch, gates)]
    return [rng.standard_normal(shape).astype(np.float32) for shape in shapes]


def _exact(xs, h0, hs, dz):
    """The three sums in float64, written out with NumPy (independent of lstmjax's references)."""
    steps, batch, gates = dz.shape
    rows = dz.reshape(steps * batch, gates).astype(np.float64)
    h_before = np.concatenate([h0[None], hs[:-1]]).reshape(steps * batch, -1).astype(np.float64)
    return [xs.reshape(steps * batch, -1).astype(np.float64).T @ rows, h_before.T @ rows, rows.sum(0)]


# (T, B, D, H, G): what each shape exercises in the kernel's split of the work (chunks of 128 rows of
# T·B, column panels of 64, two workers on the CI's two cores)
LAYOUTS = {
    "chunk_and_tail_partial_panel": (7, 20, 5, 40, 160),  # 140 rows; 2 whole panels and one of 32 columns
    "h0_rows_span_two_chunks": (3, 150, 3, 8, 32),  # h0's 150 rows cross a chunk boundary; G < 64
    "one_panel_rows_split": (200, 4, 2, 16, 16),  # one panel of 16 columns: its rows split across workers
    "three_panels_rows_split": (100, 8, 4, 48, 192),  # 3 panels on 2 workers: each split in two by rows
    "panel_of_40_columns": (9, 6, 3, 10, 104),  # the last panel ends inside its third vector
    "panel_of_8_columns": (4, 3, 2, 5, 8),
    "no_inputs": (6, 4, 0, 32, 128),  # D = 0: only dw_h and db
    "one_of_everything": (1, 1, 1, 1, 1),
    "lstm_H256": (100, 32, 32, 256, 1024),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_kernel_is_as_accurate_as_xlas_products(layout, threads):
    """With one worker every panel is one item; with two (where the machine has them) panels are
    shared out and, where there are few, split by rows."""
    arrays = _arrays(*LAYOUTS[layout])
    native = jax.jit(lambda *a: _native._weight_gradient_native(*a, threads=threads))(*arrays)
    xla = jax.jit(_native.weight_gradient_reference)(*arrays)
    exact = _exact(*arrays)
    assert [a.shape for a in native] == [e.shape for e in exact]
    nonempty = [i for i, e in enumerate(exact) if e.size]  # dw_x (0, G) where D = 0
    assert_as_accurate_as_xla(*([leaves[i] for i in nonempty] for leaves in (native, xla, exact)), floor=2e-7)


def test_weight_gradient_is_the_transpose_of_the_projection():
    """`<P(w), dz> = <w, Pᵀ(dz)>` for the projection `P(w) = xs·dw_x + h_{t-1}·dw_h + db`, through JAX's
    own transposition (`jax.linear_transpose`, which calls the kernel), and `jax.vjp` agrees."""
    xs, h0, hs, dz = _arrays(*LAYOUTS["three_panels_rows_split"], seed=1)
    rng = np.random.default_rng(2)
    weights = [rng.standard_normal(s).astype(np.float32) for s in ((xs.shape[-1], 192), (hs.shape[-1], 192), (192,))]
    project = lambda *w: _native.projection_p.bind(xs, h0, hs, *w)[0]  # noqa: E731
    transposed = jax.jit(jax.linear_transpose(project, *weights))(dz)
    inner = lambda a, b: sum(float(np.vdot(np.asarray(x, np.float64), np.asarray(y, np.float64)))  # noqa: E731
                             for x, y in zip(a, b))
    lhs, rhs = inner([project(*weights)], [dz]), inner(weights, transposed)
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs), (lhs, rhs)
    _, pullback = jax.vjp(project, *weights)
    for got, want in zip(pullback(dz), _exact(xs, h0, hs, dz)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-3)


def test_forward_mode_through_the_coefficients_uses_the_reference_derivative():
    """A tangent of `hs` (as in a Hessian-vector product) gives the product rule's terms."""
    xs, h0, hs, dz = _arrays(5, 4, 3, 32, 128, seed=3)
    d_hs = np.random.default_rng(4).standard_normal(hs.shape).astype(np.float32)
    native = lambda hs: _native.weight_gradient_p.bind(xs, h0, hs, dz)  # noqa: E731
    reference = lambda hs: _native.weight_gradient_reference(xs, h0, hs, dz)  # noqa: E731
    got = jax.jit(lambda: jax.jvp(native, (hs,), (d_hs,)))()
    want = jax.jvp(reference, (hs,), (d_hs,))
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_a_training_step_through_lj_unroll_runs_the_kernel_once_per_chunk():
    """`jax.grad` with respect to the weights calls it (once, or once inside the loop over `remat`'s
    chunks) and agrees with the XLA scan; a gradient with respect to the inputs only does not call it."""
    cell, params, xs, state = _problem(*SHAPES["B20_H128"])

    def hlo(function, *args):
        return jax.jit(function).lower(*args).as_text()

    assert hlo(jax.grad(_loss(cell)), params, xs, state).count("@lstmjax_weight_gradient") == 1
    assert hlo(jax.grad(_loss(cell, remat=3)), params, xs, state).count("@lstmjax_weight_gradient") == 1
    assert "lstmjax_weight_gradient" not in hlo(jax.grad(_loss(cell), argnums=1), params, xs, state)
    native, xla = jax.jit(jax.grad(_loss(cell)))(params, xs, state), jax.grad(_loss(_xla(cell)))(params, xs, state)
    for got, want in zip(jax.tree_util.tree_leaves(native), jax.tree_util.tree_leaves(xla)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-4)


def test_vmap_over_examples_gives_each_its_own_weight_gradient():
    """Per-example gradients: the kernel runs once per example (it sums over the batch, so the mapped
    axis cannot join it) and the results equal a loop over examples."""
    cell, params, xs, state = _problem(6, (4,), 3, 32)
    per_example = jax.vmap(lambda x, s: jax.grad(_loss(cell))(params, x[:, None], jax.tree_util.tree_map(
        lambda a: a[None], s)), in_axes=(1, 0))
    assert "lstmjax_weight_gradient" in jax.jit(per_example).lower(xs, state).as_text()
    batched = jax.jit(per_example)(xs, state)
    for index in range(4):
        one = jax.grad(_loss(cell))(params, xs[:, index:index + 1],
                                    jax.tree_util.tree_map(lambda a: a[index:index + 1], state))
        for got, want in zip(jax.tree_util.tree_leaves(batched), jax.tree_util.tree_leaves(one)):
            np.testing.assert_allclose(np.asarray(got[index]), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_grad_of_vmap_folds_the_data_into_one_kernel_call():
    """`grad(vmap(loss))` over examples: the mapped axis joins the rows, so the weight gradient (summed
    over examples) is one kernel call, equal to the gradient of the batched loss."""
    cell, params, xs, state = _problem(6, (4,), 3, 32)

    def per_example(p, x, s):
        return _loss(cell)(p, x[:, None], jax.tree_util.tree_map(lambda a: a[None], s))

    summed = jax.grad(lambda p: jnp.sum(jax.vmap(per_example, in_axes=(None, 1, 0))(p, xs, state)))
    assert jax.jit(summed).lower(params).as_text().count("@lstmjax_weight_gradient") == 1
    expected = jax.grad(lambda p: sum(per_example(p, xs[:, i], jax.tree_util.tree_map(lambda a: a[i], state))
                                      for i in range(4)))(params)
    for got, want in zip(jax.tree_util.tree_leaves(jax.jit(summed)(params)), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_vmap_over_seeds_sums_as_each_seed_alone():
    """Seeds trained together (`vmap` over stacked weights) get the weight gradients each would get
    alone, to float32 rounding of XLA's own batched ops: every kernel runs once per seed on the
    same shapes, so that training runs that differ only in how they are batched stay together."""
    cell, params, xs, state = _problem(60, (8,), 3, 32)  # 480 rows: XLA's products sum them in another order
    seeds = jax.tree_util.tree_map(lambda w: jnp.stack([w, 0.5 * w, -w]), params)
    gradient = jax.jit(jax.grad(_loss(cell)))
    together = jax.jit(jax.vmap(jax.grad(_loss(cell)), in_axes=(0, None, None)))(seeds, xs, state)
    # and the other order, grad of the sum over seeds of a vmapped loss
    summed = jax.jit(jax.grad(lambda w: jnp.sum(jax.vmap(_loss(cell), in_axes=(0, None, None))(w, xs, state))))(seeds)
    for index in range(3):
        alone = gradient(jax.tree_util.tree_map(lambda w: w[index], seeds), xs, state)
        for both in (together, summed):
            for got, want in zip(jax.tree_util.tree_leaves(both), jax.tree_util.tree_leaves(alone)):
                np.testing.assert_allclose(np.asarray(got[index]), np.asarray(want), rtol=1e-6, atol=1e-6)


def test_kernel_refuses_inconsistent_shapes_by_name():
    """The custom call checks its buffers itself (the wrappers never send such shapes)."""
    xs, h0, hs, dz = (jnp.asarray(a) for a in _arrays(2, 4, 3, 8, 32))
    call = jax.jit(_native._weight_gradient_native)
    with pytest.raises(Exception, match=r"hs has shape \(2, 4, 7\) but must be \(T, B, H\) = \(2, 4, 8\)"):
        jax.block_until_ready(call(xs, h0, hs[..., :7], dz))
    with pytest.raises(Exception, match=r"dz has shape \(2, 3, 32\) but must be \(T, B, G\) = \(2, 4, 32\)"):
        jax.block_until_ready(call(xs, h0, hs, dz[:, :3]))
    bad_threads = jax.jit(lambda *a: _native._weight_gradient_native(*a, threads=0))
    with pytest.raises(Exception, match=r"attribute threads = 0 must be in \[1, 256\]"):
        jax.block_until_ready(bad_threads(xs, h0, hs, dz))
