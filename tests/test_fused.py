"""The fast path of `lj.unroll` (`lstmjax._fused`) and rematerialisation (`remat`).

The fast path must be invisible: for every built-in cell, every option it serves and every kind
of derivative, it equals the step-by-step scan of `cell.step` (the same cell with `fused=None`),
in float64 to rounding. `remat` must give the same values and gradients with less memory.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cells import CELL_FACTORIES, random_state
from helpers import assert_trees_all_close, equations
from jax.test_util import check_grads

import lstmjax as lj
from lstmjax import _fused
from lstmjax._cell import is_as_built

T, BATCH, INPUT, HIDDEN = 7, 3, 2, 4
LENGTHS = np.array([7, 3, 0])
MASK = np.array([[1, 0, 1, 1, 0, 1, 1], [0, 1, 1, 0, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]], bool).T
OPTIONS = {
    "plain": {},
    "lengths_reverse": {"lengths": LENGTHS, "reverse": True},
    "mask_reverse": {"mask": MASK, "reverse": True},
    "remat_chunk3": {"remat": 3},
    "remat_chunk3_lengths_reverse": {"remat": 3, "lengths": LENGTHS, "reverse": True},
}


FUSED_FAMILIES = ("lstm", "rnn_relu", "rnn_tanh")
"""The families with a fast path; the GRU's was slower than its step-by-step scan at every size we
measured on a CPU (see `lstmjax._fused`), so it has none (only a native kernel, `lstmjax._native_gru`)."""


@pytest.fixture(params=FUSED_FAMILIES)
def cell(request):
    return _always_fused(CELL_FACTORIES[request.param](HIDDEN))


def _always_fused(cell):
    """The cell with its fast path on at any size (it is off below `min_hidden_size` by default), on XLA."""
    return _on_xla(cell._replace(fused=cell.fused._replace(min_hidden_size=1)))


def _on_xla(cell):
    """The cell without its native kernel (the LSTM's `lstmjax._native`, the RNN's `lstmjax._native_rnn`,
    tested in test_native.py and test_native_rnn.py)."""
    return cell._replace(fused=cell.fused._replace(native=None))


def _step_by_step(cell):
    return cell._replace(fused=None)


def _problem(cell, dtype=jnp.float64):
    params = cell.init(jax.random.PRNGKey(0), INPUT, dtype=dtype)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, BATCH, INPUT), dtype)
    return params, xs, random_state(cell, params, 2, (BATCH,))


def _loss(cell, options):
    """A scalar that depends on every output and on the final state, nonlinearly."""
    def loss(params, xs, state):
        final, ys = lj.unroll(cell, params, xs, state, **options)
        return jnp.sum(jnp.cos(ys)) + sum(jnp.sum(jnp.sin(leaf) ** 2) for leaf in jax.tree_util.tree_leaves(final))
    return loss


def _without_remat(options):
    return {key: value for key, value in options.items() if key != "remat"}


@pytest.mark.parametrize("name", sorted(CELL_FACTORIES))
def test_built_in_cells_have_a_fast_path_where_it_won(name):
    cell = CELL_FACTORIES[name](HIDDEN)
    if name == "gru":  # the native kernel only (tested in test_native_gru.py), no XLA fast path
        assert cell.fused.forward is None and cell.fused.native is not None
        return
    if name not in FUSED_FAMILIES:
        assert cell.fused is None
        return
    assert isinstance(cell.fused, _fused.FusedRecurrence)
    assert is_as_built(cell)


@pytest.mark.parametrize("factory, threshold", [(lambda h: _on_xla(lj.lstm(h)), 128),
                                                (lambda h: _on_xla(lj.rnn(h, activation="relu")), 256)])
def test_fast_path_switches_on_at_the_measured_size(factory, threshold, monkeypatch):
    calls = []
    original = _fused.fused_unroll
    monkeypatch.setattr("lstmjax._unroll.fused_unroll", lambda *args: calls.append(1) or original(*args))
    for hidden, expected in ((threshold - 1, 0), (threshold, 1)):
        cell = factory(hidden)
        params = cell.init(jax.random.PRNGKey(0), 2)
        jax.jit(lambda p, xs, c=cell: lj.unroll(c, p, xs))(params, jnp.ones((3, 1, 2)))
        assert len(calls) == expected, hidden


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_values_equal_step_by_step(cell, name):
    with jax.enable_x64(True):
        params, xs, state = _problem(cell)
        options = OPTIONS[name]
        fast = lj.unroll(cell, params, xs, state, **options)
        reference = lj.unroll(_step_by_step(cell), params, xs, state, **_without_remat(options))
        assert_trees_all_close(fast, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_reverse_mode_equals_step_by_step(cell, name):
    with jax.enable_x64(True):
        params, xs, state = _problem(cell)
        options = OPTIONS[name]
        fast = jax.grad(_loss(cell, options), argnums=(0, 1, 2))(params, xs, state)
        reference = jax.grad(_loss(_step_by_step(cell), _without_remat(options)), argnums=(0, 1, 2))(params, xs, state)
        assert_trees_all_close(fast, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["plain", "lengths_reverse", "remat_chunk3_lengths_reverse"])
def test_forward_mode_and_jacfwd_equal_step_by_step(cell, name):
    with jax.enable_x64(True):
        params, xs, state = _problem(cell)
        options = OPTIONS[name]
        tangents = jax.tree_util.tree_map(lambda a: jnp.cos(3.0 * a) + 0.5, (params, xs, state))
        fast = jax.jvp(_loss(cell, options), (params, xs, state), tangents)
        reference = jax.jvp(_loss(_step_by_step(cell), _without_remat(options)), (params, xs, state), tangents)
        assert_trees_all_close(fast, reference, rtol=1e-10, atol=1e-12)
        outputs = lambda c, o: lambda xs: lj.unroll(c, params, xs, state, **o)[1]  # noqa: E731
        assert_trees_all_close(jax.jacfwd(outputs(cell, options))(xs),
                               jax.jacfwd(outputs(_step_by_step(cell), _without_remat(options)))(xs),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["lengths_reverse", "remat_chunk3_lengths_reverse"])
def test_second_order_equals_step_by_step(cell, name):
    """Hessian-vector products (forward over reverse) and reverse over reverse."""
    with jax.enable_x64(True):
        params, xs, state = _problem(cell)
        options = OPTIONS[name]
        direction = jax.tree_util.tree_map(lambda a: jnp.sin(2.0 * a) + 0.25, params)

        def hvp(c, o):
            grad = jax.grad(lambda p: _loss(c, o)(p, xs, state))
            return jax.jvp(grad, (params,), (direction,))[1]

        def grad_of_grad_norm(c, o):
            grad_norm = lambda p: sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(  # noqa: E731
                jax.grad(lambda q: _loss(c, o)(q, xs, state))(p)))
            return jax.grad(grad_norm)(params)

        reference_options = _without_remat(options)
        assert_trees_all_close(hvp(cell, options), hvp(_step_by_step(cell), reference_options),
                               rtol=1e-9, atol=1e-11)
        assert_trees_all_close(grad_of_grad_norm(cell, options),
                               grad_of_grad_norm(_step_by_step(cell), reference_options), rtol=1e-9, atol=1e-11)


def test_gradients_equal_finite_differences(cell):
    with jax.enable_x64(True):
        params, xs, state = _problem(cell)
        check_grads(_loss(cell, {"lengths": LENGTHS}), (params, xs, state), order=1,
                                  modes=("fwd", "rev"), eps=1e-6, atol=1e-5, rtol=1e-5)


def test_vmap_over_models_equals_a_loop(cell):
    """Per-model gradients under `vmap` (e.g. seeds) equal one model at a time."""
    params = jax.vmap(lambda k: cell.init(k, INPUT))(jax.random.split(jax.random.PRNGKey(3), 3))
    xs = jax.random.normal(jax.random.PRNGKey(4), (T, BATCH, INPUT))
    state = cell.initial_state(jax.tree_util.tree_map(lambda a: a[0], params), (BATCH,))
    grad = jax.grad(_loss(cell, {"lengths": LENGTHS}))
    batched = jax.vmap(grad, in_axes=(0, None, None))(params, xs, state)
    for k in range(3):
        one = grad(jax.tree_util.tree_map(lambda a, k=k: a[k], params), xs, state)
        assert_trees_all_close(jax.tree_util.tree_map(lambda a, k=k: a[k], batched), one, rtol=1e-5, atol=1e-6)


def test_float32_gradients_close_to_step_by_step(cell):
    params, xs, state = _problem(cell, jnp.float32)
    fast = jax.jit(jax.grad(_loss(cell, {})))(params, xs, state)
    reference = jax.jit(jax.grad(_loss(_step_by_step(cell), {})))(params, xs, state)
    assert_trees_all_close(fast, reference, rtol=1e-4, atol=1e-5)


def test_fast_path_is_taken_only_where_it_applies(cell, monkeypatch):
    calls = []
    original = _fused.fused_unroll
    monkeypatch.setattr("lstmjax._unroll.fused_unroll", lambda *args: calls.append(1) or original(*args))
    params, xs, state = _problem(cell, jnp.float32)
    lj.unroll(cell, params, xs, state, lengths=LENGTHS)
    assert len(calls) == 1
    lj.unroll(cell, params, xs, state, resets=MASK)
    lj.unroll_with_internals(cell, params, xs, state)
    lj.unroll(_step_by_step(cell), params, xs, state)
    lj.unroll(cell._replace(fused=cell.fused._replace(min_hidden_size=HIDDEN + 1)), params, xs, state)
    assert len(calls) == 1


def test_a_cell_whose_functions_were_replaced_falls_back_to_them():
    """Replacing `step_with_internals` (which the step-by-step scan calls) or `step` must not leave
    the family's equations running behind the user's back."""
    cell = _always_fused(lj.lstm(HIDDEN))
    params, xs, _ = _problem(cell, jnp.float32)
    doubled = cell._replace(
        step_with_internals=lambda params, state, x: cell.step_with_internals(params, state, 2.0 * x))
    assert not is_as_built(doubled)
    assert_trees_all_close(lj.unroll(doubled, params, xs), lj.unroll(cell, params, 2.0 * xs), rtol=1e-6, atol=1e-6)
    assert not is_as_built(cell._replace(step=lambda params, state, x: cell.step(params, state, 2.0 * x)))


@pytest.mark.parametrize("path", ["fast", "step_by_step"])
@pytest.mark.parametrize("name", sorted(CELL_FACTORIES))
def test_training_loops_read_their_matrices_row_major(name, path):
    """Under `jax.grad` the backward loop multiplies the state's cotangent by `w_hᵀ` at every step.
    Both paths write the recurrent product's derivative against a `w_hᵀ` transposed once before
    the loop (`lstmjax._products`), so that product contracts the first axis of a row-major
    matrix, like the forward loop's `h · w_h` (on XLA:CPU the product with `w_h` read transposed
    took 1.5× as long at H = 256). In the training step's loops: the product with `w_hᵀ` (a
    matrix of shape `(G, H)`) is there, every matrix product contracts its matrix's first axis,
    and none multiplies by a matrix transposed inside the loop (XLA would fold that transpose
    into the product, as it does when a user checkpoints each step)."""
    cell = CELL_FACTORIES[name](HIDDEN)
    if path == "fast":
        if cell.fused is None:
            pytest.skip(f"{name} has no fast path")
        cell = _always_fused(cell)
    else:
        cell = _step_by_step(cell)
    params, xs, state = _problem(cell, jnp.float32)
    jaxpr = jax.make_jaxpr(jax.grad(_loss(cell, {})))(params, xs, state).jaxpr
    in_loops = [eqn for eqn, in_loop in equations(jaxpr) if in_loop]
    products = [(eqn.invars[1].aval.shape, eqn.params["dimension_numbers"][0][1])
                for eqn in in_loops if eqn.primitive.name == "dot_general"]
    assert (params.w_h.shape[::-1], (0,)) in products, products
    assert all(dims == (0,) for shape, dims in products if len(shape) == 2), products
    transposed = {id(eqn.outvars[0]) for eqn in in_loops if eqn.primitive.name == "transpose"}
    assert not [eqn for eqn in in_loops if eqn.primitive.name == "dot_general" and id(eqn.invars[1]) in transposed]


@pytest.mark.parametrize("path", ["step_by_step", "fast_path"])
def test_remat_gives_the_same_gradients_with_less_memory(path):
    """T = 2000: the compiled training step's temporary memory shrinks several-fold (XLA's own
    memory analysis of the compiled program, deterministic; no timing), on both XLA paths."""
    cell = _step_by_step(lj.lstm(32)) if path == "step_by_step" else _on_xla(lj.lstm(128))
    params = cell.init(jax.random.PRNGKey(0), 8)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2000, 4, 8))

    def grad_fn(remat):
        return jax.jit(jax.grad(lambda p: jnp.mean(lj.unroll(cell, p, xs, remat=remat)[0].h ** 2)))

    assert_trees_all_close(grad_fn(True)(params), grad_fn(False)(params), rtol=1e-4, atol=1e-7)
    temp = {remat: grad_fn(remat).lower(params).compile().memory_analysis().temp_size_in_bytes
            for remat in (False, True)}
    assert temp[True] * 4 < temp[False], temp


@pytest.mark.parametrize("remat", [0, -3, 1.5, "yes", None])
def test_bad_remat_is_named(remat):
    cell = lj.lstm(HIDDEN)
    params, xs, _ = _problem(cell, jnp.float32)
    with pytest.raises(ValueError, match=r"remat must be True, False or a positive integer chunk length, got"):
        lj.unroll(cell, params, xs, remat=remat)


@pytest.mark.parametrize("chunk", [1, 2, 7, 50])
def test_remat_chunk_lengths_that_do_not_divide_t(chunk):
    cell = _always_fused(lj.lstm(HIDDEN))
    params, xs, state = _problem(cell, jnp.float32)
    assert_trees_all_close(lj.unroll(cell, params, xs, state, lengths=LENGTHS, remat=chunk),
                           lj.unroll(cell, params, xs, state, lengths=LENGTHS), rtol=1e-6, atol=1e-6)
