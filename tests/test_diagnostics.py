"""Gradient-flow diagnostics: known answers, and equality with brute-force `jax.jacrev`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cells import CELL_FACTORIES, random_state
from helpers import assert_trees_all_close, equations

import lstmjax as lj


def _scalar_linear_rnn(weight):
    params = lj.RNNParams(w_x=jnp.array([[0.7]]), w_h=jnp.array([[weight]]), b=jnp.zeros(1))
    return lj.rnn(1, activation="linear"), params


@pytest.mark.parametrize("weight, want", [(2.0, 1_125_899_906_842_624.0), (0.5, 0.5 ** 50)])
def test_linear_scalar_rnn_gives_the_exact_power(weight, want):
    with jax.enable_x64(True):
        cell, params = _scalar_linear_rnn(weight)
        xs = jax.random.normal(jax.random.PRNGKey(0), (50, 1), jnp.float64)
        sensitivity = lj.state_sensitivity(cell, params, xs)
        assert float(sensitivity.spectral[0]) == want  # ∂h_50/∂h_0 = w^50, exactly
        np.testing.assert_array_equal(sensitivity.spectral, weight ** np.arange(50, -1, -1.0))
        np.testing.assert_array_equal(sensitivity.step_singular_values[:, 0], abs(weight))
        norms = lj.gradient_norms_over_time(cell, params, xs, lambda ys: ys[-1, 0])
        np.testing.assert_allclose(norms.state, weight ** np.arange(49, -1, -1.0), rtol=1e-15)
        np.testing.assert_allclose(norms.x, 0.7 * weight ** np.arange(49, -1, -1.0), rtol=1e-15)
        fit = lj.fit_log_decay(norms.state)
        assert float(fit.rate) == pytest.approx(np.log(weight), rel=1e-12)


def test_tanh_rnn_sensitivity_is_bounded_by_the_largest_singular_value():
    with jax.enable_x64(True):
        hidden, lam = 6, 0.8
        q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(hidden, hidden)))
        w_h = lam * q @ np.diag(np.linspace(1.0, 0.2, hidden)) @ q.T  # largest singular value λ
        params = lj.RNNParams(w_x=jnp.ones((2, hidden)) * 0.3, w_h=jnp.asarray(w_h), b=jnp.zeros(hidden))
        xs = jax.random.normal(jax.random.PRNGKey(1), (40, 2), jnp.float64)
        sensitivity = lj.state_sensitivity(lj.rnn(hidden), params, xs)
        distance = np.arange(40, -1, -1.0)
        assert np.all(np.asarray(sensitivity.spectral) <= lam ** distance * (1 + 1e-12))
        assert np.all(np.asarray(sensitivity.step_singular_values) <= lam * (1 + 1e-12))
        assert float(sensitivity.spectral[0]) < 1e-4  # it really vanishes


def test_lstm_with_saturated_gates_keeps_the_long_term_gradient_at_one():
    with jax.enable_x64(True):
        hidden = 3
        cell = lj.lstm(hidden)
        params = cell.init(jax.random.PRNGKey(0), 2, dtype=jnp.float64)
        b = np.zeros(4 * hidden)
        b[:hidden], b[hidden:2 * hidden] = -60.0, 60.0  # input gate shut (0), forget gate open (1)
        params = params._replace(b=jnp.asarray(b))
        xs = jax.random.normal(jax.random.PRNGKey(1), (60, 2), jnp.float64)
        sensitivity = lj.state_sensitivity(cell, params, xs, lj.LSTMState(h=jnp.full(3, 0.2), c=jnp.full(3, 0.5)))
        np.testing.assert_allclose(sensitivity.block_spectral.c, 1.0, rtol=1e-12)  # ∂c_T/∂c_t = I for every t
        _, _, internals = lj.unroll_with_internals(cell, params, xs)
        np.testing.assert_allclose(lj.forget_gate_gain(internals.f), 1.0, rtol=1e-12)


@pytest.fixture(params=sorted(CELL_FACTORIES))
def cell(request):
    return CELL_FACTORIES[request.param](3)


def _run_from(cell, params, state, xs):
    for x in xs:
        state, _ = cell.step(params, state, x)
    return state


def test_state_sensitivity_equals_brute_force_jacobians(cell):
    with jax.enable_x64(True):
        params = cell.init(jax.random.PRNGKey(0), 2, dtype=jnp.float64)
        xs = jax.random.normal(jax.random.PRNGKey(1), (6, 2), jnp.float64)
        state0 = random_state(cell, params, 2, ())
        sensitivity = lj.state_sensitivity(cell, params, xs, state0)
        states = [state0]
        for x in xs:
            states.append(cell.step(params, states[-1], x)[0])
        flat = lambda s: jax.flatten_util.ravel_pytree(s)[0]  # noqa: E731
        for t in range(7):
            unflatten = jax.flatten_util.ravel_pytree(states[t])[1]
            jacobian = jax.jacrev(lambda s: flat(_run_from(cell, params, unflatten(s), xs[t:])))(flat(states[t]))
            assert float(sensitivity.spectral[t]) == pytest.approx(np.linalg.norm(jacobian, 2), rel=1e-10)
            assert float(sensitivity.frobenius[t]) == pytest.approx(np.linalg.norm(jacobian), rel=1e-10)
            h = slice(0, 3)
            assert float(jax.tree_util.tree_leaves(sensitivity.block_spectral)[0][t]) == pytest.approx(
                np.linalg.norm(jacobian[h, h], 2), rel=1e-10)
        unflatten_2 = jax.flatten_util.ravel_pytree(states[2])[1]
        one_step = jax.jacrev(lambda s: flat(cell.step(params, unflatten_2(s), xs[2])[0]))
        np.testing.assert_allclose(sensitivity.step_singular_values[2],
                                   np.linalg.svd(one_step(flat(states[2])), compute_uv=False), rtol=1e-10)


def test_gradient_norms_equal_brute_force(cell):
    with jax.enable_x64(True):
        params = cell.init(jax.random.PRNGKey(0), 2, dtype=jnp.float64)
        xs = jax.random.normal(jax.random.PRNGKey(1), (5, 4, 2), jnp.float64)
        targets = jax.random.normal(jax.random.PRNGKey(2), (5, 4, 3), jnp.float64)
        loss_fn = lambda ys: jnp.sum((ys - targets) ** 2)  # noqa: E731
        norms = lj.gradient_norms_over_time(cell, params, xs, loss_fn)
        grad_xs = jax.grad(lambda xs: loss_fn(lj.unroll(cell, params, xs)[1]))(xs)
        np.testing.assert_allclose(norms.x, np.linalg.norm(grad_xs, axis=-1), rtol=1e-10)
        states = [cell.initial_state(params, (4,))]
        ys = []
        for x in xs:
            state, y = cell.step(params, states[-1], x)
            states.append(state)
            ys.append(y)
        for t in range(5):
            def loss_from_state(state, t=t):  # outputs before t are fixed, the rest follow from s_{t+1}
                later = [cell.output(state)]
                for x in xs[t + 1:]:
                    state, y = cell.step(params, state, x)
                    later.append(y)
                return loss_fn(jnp.stack(ys[:t] + later))
            brute = jax.grad(loss_from_state)(states[t + 1])
            want = jax.tree_util.tree_map(lambda g: np.linalg.norm(g, axis=-1), brute)
            got = jax.tree_util.tree_map(lambda n: n[t], norms.state)
            assert_trees_all_close(got, want, rtol=1e-10, atol=1e-12)


def test_forget_gate_gain_equals_the_long_term_jacobian_without_recurrent_weights():
    with jax.enable_x64(True):
        cell = lj.lstm(3)
        params = cell.init(jax.random.PRNGKey(0), 2, dtype=jnp.float64)._replace(w_h=jnp.zeros((3, 12)))
        xs = jax.random.normal(jax.random.PRNGKey(1), (8, 2), jnp.float64)
        _, _, internals = lj.unroll_with_internals(cell, params, xs)
        gain = lj.forget_gate_gain(internals.f)
        jacobians = lj.step_jacobians(cell, params, xs)
        product = np.eye(6)
        for t in range(7, -1, -1):
            product = product @ np.asarray(jacobians[t])
            np.testing.assert_allclose(np.diag(product[3:, 3:]), gain[t], rtol=1e-12)
            np.testing.assert_allclose(product[3:, 3:] - np.diag(np.diag(product[3:, 3:])), 0.0, atol=1e-15)


def test_diagnostics_jit_and_vmap():
    cell = lj.gru(4)
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = jax.random.normal(jax.random.PRNGKey(1), (10, 5, 3))
    batched = jax.jit(jax.vmap(lambda x: lj.state_sensitivity(cell, params, x), in_axes=1))(xs)
    for b in range(5):
        assert_trees_all_close(jax.tree_util.tree_map(lambda a: a[b], batched),
                               lj.state_sensitivity(cell, params, xs[:, b]), rtol=1e-4, atol=1e-6)
    loss_fn = lambda ys: jnp.mean(ys[-1] ** 2)  # noqa: E731
    assert_trees_all_close(jax.jit(lambda p: lj.gradient_norms_over_time(cell, p, xs, loss_fn))(params),
                           lj.gradient_norms_over_time(cell, params, xs, loss_fn), rtol=1e-5, atol=1e-9)


def test_fit_log_decay_and_distance_to_fraction():
    distance = np.arange(29, -1, -1.0)
    norms = 3.0 * 0.9 ** distance
    fit = lj.fit_log_decay(np.where(distance == 26, 0.0, norms))  # a zero norm is left out of the fit
    assert float(fit.rate) == pytest.approx(np.log(0.9), rel=1e-5)
    assert float(fit.intercept) == pytest.approx(np.log(3.0), rel=1e-5)
    assert float(lj.distance_to_fraction(0.5 ** distance, 0.01)) == 7.0  # 0.5^7 = 0.0078 < 0.01 < 0.5^6
    assert float(lj.distance_to_fraction(np.ones(30), 0.01)) == np.inf
    assert np.isnan(float(lj.fit_log_decay(np.array([0.0, 0.0, 1.0])).rate))


def test_gate_saturation_counts():
    f = jnp.array([[[0.99, 0.5]], [[0.01, 0.97]]])  # (T=2, batch=1, H=2)
    half = jnp.full_like(f, 0.5)
    saturation = lj.gate_saturation(lj.LSTMInternals(i=half, f=f, g=half, o=half, c=half, h=half))
    assert set(saturation) == {"i", "f", "o"}
    np.testing.assert_allclose(saturation["f"].near_one, [0.5, 0.5])
    np.testing.assert_allclose(saturation["f"].near_zero, [0.0, 0.5])
    np.testing.assert_allclose(saturation["i"].near_zero, [0.0, 0.0])


@pytest.mark.parametrize("call, pattern", [
    (lambda: lj.state_sensitivity(lj.lstm(2), lj.lstm(2).init(jax.random.PRNGKey(0), 1), jnp.ones((4, 3, 1))),
     r"xs must be one sequence of shape \(T, input_size\) \(vmap over a batch\), got shape \(4, 3, 1\)"),
    (lambda: lj.gradient_norms_over_time(lj.rnn(2), lj.rnn(2).init(jax.random.PRNGKey(0), 1), jnp.ones((4, 1)),
                                         lambda ys: ys), r"loss_fn must return a scalar, got shape \(4, 2\)"),
    (lambda: lj.gate_saturation(lj.RNNInternals(a=jnp.ones(2), h=jnp.ones(2))), r"internals must be lj.LSTMInternals"),
    (lambda: lj.distance_to_fraction(jnp.ones(3), 1.5), r"fraction must lie in \(0, 1\), got 1.5"),
    (lambda: lj.fit_log_decay(jnp.ones((3, 2))), r"norms must have shape \(T,\), got shape \(3, 2\)"),
])
def test_bad_input(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


def _dot_precisions(jaxpr) -> list:
    """The `precision` of every `dot_general` in a jaxpr, its sub-jaxprs (scan, jit, custom rules) included."""
    return [eqn.params["precision"] for eqn, _ in equations(jaxpr) if eqn.primitive.name == "dot_general"]


@pytest.mark.parametrize("cell", sorted(CELL_FACTORIES))
def test_gradient_studies_use_full_float32_matmuls_whatever_the_default(cell):
    """On a GPU, JAX's default lets float32 matmuls run in TF32 (relative error ~1e-3 per product);
    a gradient norm that is a product of hundreds of them must not. Even with the process default
    set to the lowest precision, every matmul the diagnostics trace (forward, backward, Jacobians,
    under an outer jit too) is `HIGHEST`; the plain unroll keeps the process default."""
    cell = CELL_FACTORIES[cell](4)
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = jax.random.normal(jax.random.PRNGKey(1), (6, 3))
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    studies = {
        "gradient_norms_over_time": lambda p: lj.gradient_norms_over_time(cell, p, xs, lambda ys: jnp.sum(ys ** 2)),
        "step_jacobians": lambda p: lj.step_jacobians(cell, p, xs),
        "state_sensitivity": lambda p: lj.state_sensitivity(cell, p, xs),
    }
    with jax.default_matmul_precision("bfloat16"):
        for name, study in studies.items():
            precisions = _dot_precisions(jax.make_jaxpr(jax.jit(study))(params).jaxpr)
            assert precisions and all(p == highest for p in precisions), (name, precisions)
        plain = _dot_precisions(jax.make_jaxpr(lambda p: lj.unroll(cell, p, xs)[1])(params).jaxpr)
    assert plain and highest not in plain
