"""The LSTM's native CPU path of `lj.unroll` (`lstmjax._native`, kernel `lstmjax/native/lstm_cpu.cc`).

It must be invisible: for every shape (padded rows and units included), direction and kind of
derivative it equals the XLA step-by-step scan of the same cell, in float32 to rounding; `vmap`
works over data (folded into the kernel's batch) and over weights (the reference); `lj.unroll`
takes it exactly where it should, and a machine without the kernel gets the XLA path, not an error.
The tests that need the kernel skip where it cannot be built (no g++, no AVX-512).
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_all_close, equations

import lstmjax as lj
from lstmjax import _native
from lstmjax._native_build import native_kernel_status


@pytest.fixture(scope="module", autouse=True)
def kernel():
    status = native_kernel_status()
    if not status.available:
        pytest.skip(f"native kernel unavailable: {status.reason}")


def _problem(steps, batch_shape, inputs, hidden, seed=0):
    cell = lj.lstm(hidden)
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = jax.tree_util.tree_map(lambda w: 2.0 * w, cell.init(keys[0], inputs))  # gates away from 0.5
    xs = jax.random.normal(keys[1], (steps, *batch_shape, inputs))
    state = lj.LSTMState(h=0.5 * jax.random.normal(keys[2], (*batch_shape, hidden)),
                         c=jax.random.normal(keys[3], (*batch_shape, hidden)))
    return cell, params, xs, state


def _xla(cell):
    """The same cell on the XLA step-by-step scan."""
    return cell._replace(fused=None)


def _loss(cell, reverse=False, **options):
    """Depends nonlinearly on every output and on every part of the final state (any cell family)."""
    def loss(params, xs, state):
        final, ys = lj.unroll(cell, params, xs, state, reverse=reverse, **options)
        final_terms = (jnp.sum(jnp.cos(2.0 * leaf)) for leaf in jax.tree_util.tree_leaves(final))
        return jnp.sum(jnp.sin(3.0 * ys)) + sum(final_terms)
    return loss


def _ops(function, *args):
    return {eqn.primitive.name for eqn, _ in equations(jax.make_jaxpr(function)(*args).jaxpr)}


SHAPES = {
    "B20_H128": (20, (20,), 16, 128),  # 5 row blocks: an uneven split over the workers
    "B3_H40_padded": (9, (3,), 5, 40),
    "unbatched_H64": (6, (), 3, 64),
    "batch2x3_H32": (5, (2, 3), 4, 32),
    "T1_B8_H96": (1, (8,), 7, 96),
}


def _in_float64(function, *args):
    """`function(*args)` on the XLA path with every argument in float64: the exact answer to compare against."""
    with jax.enable_x64(True):
        return jax.tree_util.tree_map(np.asarray, function(*jax.tree_util.tree_map(
            lambda a: jnp.asarray(a, jnp.float64), args)))


def assert_as_accurate_as_xla(native, xla, exact, floor=1e-6):
    """Each leaf of `native` is as close to `exact` (float64) as the XLA float32 path's: its largest
    error, relative to the leaf's largest value, at most twice XLA's (or `floor`)."""
    for index, (n, x, e) in enumerate(zip(*(jax.tree_util.tree_leaves(t) for t in (native, xla, exact)))):
        scale = max(float(np.max(np.abs(e))), 1e-30)
        error_native, error_xla = (float(np.max(np.abs(np.asarray(a, np.float64) - e))) / scale for a in (n, x))
        assert error_native <= max(2 * error_xla, floor), f"leaf {index}: native {error_native}, XLA {error_xla}"


def _options(kind, steps, batch_shape, seed=5):
    """`lj.unroll` options of one kind: `lengths` from 0 to T (so some sequences are empty and some
    full), or a random `mask` with gaps (so a real step follows held ones)."""
    rng = np.random.default_rng(seed)
    if kind == "lengths":
        lengths = np.asarray(rng.integers(0, steps + 1, batch_shape))
        lengths.flat[0], lengths.flat[-1] = steps, 0 if lengths.size > 1 else steps
        return {"lengths": lengths}
    if kind == "mask":
        return {"mask": rng.random((steps, *batch_shape)) < 0.6}
    return {}


CASES = {"B20_H128": (False, ""), "B3_H40_padded-reverse": (True, ""), "unbatched_H64": (False, ""),
         "batch2x3_H32-reverse": (True, ""), "T1_B8_H96": (False, ""),
         "B20_H128-lengths": (False, "lengths"), "B3_H40_padded-mask-reverse": (True, "mask"),
         "batch2x3_H32-lengths-reverse": (True, "lengths")}


@pytest.mark.parametrize("case", CASES)
def test_native_path_is_as_accurate_as_the_xla_scan_with_gradients(case):
    """Also with `lengths`, `mask` (held steps, zero outputs) and `remat` (one kernel call per chunk)."""
    reverse, kinds = CASES[case]
    shape = SHAPES[case.split("-")[0]]
    cell, params, xs, state = _problem(*shape)
    check_native_accuracy(cell, params, xs, state, reverse, _options(kinds, shape[0], shape[1]), "lstm_forward")


def check_native_accuracy(cell, params, xs, state, reverse, options, primitive):
    """`lj.unroll` of `cell` and its gradient with respect to params, inputs and initial state take
    the kernel (`primitive` is in the program) and are as accurate as the XLA scan (against float64)."""
    unroll = lambda c: (lambda *a: lj.unroll(c, *a, reverse=reverse, **options))  # noqa: E731
    gradient = lambda c: jax.grad(_loss(c, reverse, **options), argnums=(0, 1, 2))  # noqa: E731
    assert primitive in _ops(unroll(cell), params, xs, state)
    for function in (unroll, gradient):
        assert_as_accurate_as_xla(jax.jit(function(cell))(params, xs, state), function(_xla(cell))(params, xs, state),
                                  _in_float64(function(_xla(cell)), params, xs, state))


def test_the_gradient_runs_the_backward_kernel_and_no_loop():
    check_gradient_runs_both_kernels(*_problem(*SHAPES["B20_H128"]), "lstm")


def check_gradient_runs_both_kernels(cell, params, xs, state, family):
    """Under `jax.grad` both time loops are the kernel's (the compiled program has no while loop), the
    recurrent weights' gradient is one pass of the weight-gradient kernel, and the backward writes its
    result over a saved buffer of the same shape (no new `(T, B, ·)` buffer)."""
    ops = _ops(jax.grad(_loss(cell)), params, xs, state)
    assert {f"{family}_forward", f"{family}_backward"} <= ops and "scan" not in ops, ops
    hlo = jax.jit(jax.grad(_loss(cell))).lower(params, xs, state).as_text()
    assert f"lstmjax_{family}_backward" in hlo and "while" not in hlo
    assert hlo.count("@lstmjax_weight_gradient") == 1
    backward = next(line for line in hlo.splitlines() if f"@lstmjax_{family}_backward" in line)
    assert "output_operand_aliases" in backward, "the backward must write over an input, not a new buffer"


def test_forward_mode_and_second_derivatives_equal_the_xla_scan():
    check_forward_mode_and_second_derivatives(*_problem(*SHAPES["B3_H40_padded"]))


def check_forward_mode_and_second_derivatives(cell, params, xs, state, reverse_over_forward=True):
    """`jax.jvp`, forward-over-reverse, reverse-over-reverse (and reverse-over-forward) equal the XLA
    scan's, with a mask (held steps hold their tangents too; without one the kernels run the same code)."""
    options = _options("mask", xs.shape[0], xs.shape[1:-1])
    tangents = jax.tree_util.tree_map(lambda a: jax.random.normal(jax.random.PRNGKey(7), a.shape), (params, xs, state))
    unroll = lambda c: (lambda p, x, s: lj.unroll(c, p, x, s, **options))  # noqa: E731
    assert_trees_all_close(jax.jvp(unroll(cell), (params, xs, state), tangents),
                           jax.jvp(unroll(_xla(cell)), (params, xs, state), tangents), rtol=1e-4, atol=2e-5)

    def hvp(c):  # forward over reverse
        return jax.jvp(lambda p: jax.grad(_loss(c, **options))(p, xs, state), (params,), (tangents[0],))[1]

    def forward_then_reverse(c):
        return jax.grad(lambda p: jax.jvp(lambda q: _loss(c, **options)(q, xs, state), (p,), (tangents[0],))[1])(
            params)

    def reverse_over_reverse(c):
        return jax.grad(lambda p: jnp.sum(jax.grad(_loss(c, **options))(p, xs, state).w_h ** 2))(params)

    for second in (hvp, reverse_over_reverse) + ((forward_then_reverse,) if reverse_over_forward else ()):
        assert_trees_all_close(second(cell), second(_xla(cell)), rtol=1e-3, atol=1e-4)


def test_vmap_over_data_folds_into_the_kernel_and_over_weights_maps_it():
    cell, params, xs, state = _problem(*SHAPES["B3_H40_padded"])
    many_xs = jnp.stack([xs, 0.5 * xs, -xs])
    per_example = jax.vmap(jax.grad(_loss(cell)), in_axes=(None, 0, None))
    assert "lstm_backward" in _ops(per_example, params, many_xs, state)
    assert_trees_all_close(per_example(params, many_xs, state),
                           jax.vmap(jax.grad(_loss(_xla(cell))), in_axes=(None, 0, None))(params, many_xs, state),
                           rtol=1e-4, atol=2e-5)
    lengths = jnp.array([[9, 0, 4], [1, 9, 9], [3, 3, 0]])  # mapped with the data: folded into the batch too
    with_lengths = lambda c: jax.vmap(lambda x, n: jax.grad(  # noqa: E731
        lambda p: _loss(c, lengths=n)(p, x, state))(params))
    assert "lstm_backward" in _ops(with_lengths(cell), many_xs, lengths)
    assert_trees_all_close(with_lengths(cell)(many_xs, lengths), with_lengths(_xla(cell))(many_xs, lengths),
                           rtol=1e-4, atol=2e-5)
    seeds = jax.tree_util.tree_map(lambda w: jnp.stack([w, 0.7 * w]), params)
    assert "lstm_backward" in _ops(jax.vmap(jax.grad(_loss(cell)), in_axes=(0, None, None)), seeds, xs, state)
    over_seeds = (0, None, None)
    for transform in (lambda c: jax.vmap(jax.grad(_loss(c)), in_axes=over_seeds),
                      lambda c: jax.grad(lambda p, x, s: jnp.sum(jax.vmap(_loss(c), in_axes=over_seeds)(p, x, s)))):
        assert_trees_all_close(transform(cell)(seeds, xs, state), transform(_xla(cell))(seeds, xs, state),
                               rtol=1e-4, atol=2e-5)


def test_an_empty_vmap_axis_disable_jit_and_export_work_as_on_xla():
    check_empty_vmap_disable_jit_and_export(*_problem(*SHAPES["B3_H40_padded"]), "lstm")


def check_empty_vmap_disable_jit_and_export(cell, params, xs, state, family):
    """An empty `vmap` axis, `jax.disable_jit()` and `jax.export` (which must not carry this machine's
    custom call) all work, with the XLA scan's results."""
    final, ys = jax.vmap(lambda x: lj.unroll(cell, params, x, state))(jnp.zeros((0, *xs.shape)))
    shape = (0, *xs.shape[1:-1], cell.hidden_size)
    assert ys.shape == (0, xs.shape[0], *shape[1:])
    assert all(leaf.shape == shape for leaf in jax.tree_util.tree_leaves(final))
    with jax.disable_jit():
        assert_trees_all_close(lj.unroll(cell, params, xs, state), lj.unroll(_xla(cell), params, xs, state),
                               rtol=1e-5, atol=1e-6)
    function = jax.jit(lambda p, x: lj.unroll(cell, p, x, state))
    exported = jax.export.export(function)(params, xs)
    assert f"lstmjax_{family}" not in exported.mlir_module(), "a machine-specific custom call must not be exported"
    assert_trees_all_close(exported.call(params, xs), function(params, xs), rtol=1e-5, atol=1e-6)


def test_nan_inputs_give_nan_outputs():
    cell, params, xs, state = _problem(*SHAPES["B20_H128"])
    _, ys = lj.unroll(cell, params, xs.at[3, 5, 0].set(jnp.nan), state)
    assert not np.isnan(np.asarray(ys[:3])).any()
    assert np.isnan(np.asarray(ys[3:, 5])).all(), "the sequence with the NaN input must be NaN from there on"
    assert not np.isnan(np.asarray(ys[:, 4])).any(), "other sequences are independent of it"


def test_remat_runs_one_kernel_pair_per_chunk_with_the_plain_gradient():
    check_remat_per_chunk(*_problem(*SHAPES["B20_H128"]), "lstm", chunk=3)


def check_remat_per_chunk(cell, params, xs, state, family, chunk):
    """With `remat=chunk` and `lengths`: the forward scan (no saving), its recomputation under the
    checkpoint (saving) and the backward are each one custom call inside a loop over the chunks, and
    the gradient equals the plain mode's."""
    lengths = _options("lengths", xs.shape[0], xs.shape[1:-1])["lengths"]
    plain = jax.jit(jax.grad(_loss(cell, lengths=lengths)))(params, xs, state)
    chunked = jax.jit(jax.grad(_loss(cell, lengths=lengths, remat=chunk)))
    hlo = chunked.lower(params, xs, state).as_text()
    assert hlo.count(f"lstmjax_{family}_forward") == 2 and hlo.count(f"lstmjax_{family}_backward") == 1
    assert "while" in hlo
    assert_trees_all_close(chunked(params, xs, state), plain, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("case", ["float64", "resets", "below_threshold", "gru", "with_internals"])
def test_lj_unroll_uses_the_xla_path_where_the_kernel_does_not_apply(case):
    hidden = _native.MIN_HIDDEN_SIZE - 1 if case == "below_threshold" else 64
    cell, params, xs, state = _problem(6, (4,), 3, hidden)
    if case == "below_threshold":  # and the threshold itself takes the kernel
        threshold, params_at, xs_at, state_at = _problem(6, (4,), 3, _native.MIN_HIDDEN_SIZE)
        assert "lstm_forward" in _ops(lambda p: lj.unroll(threshold, p, xs_at, state_at), params_at)
    options = {"resets": {"resets": np.zeros((6, 4), bool)}}.get(case, {})
    if case == "gru":
        cell = lj.gru(hidden)
        params, state = cell.init(jax.random.PRNGKey(0), 3), None
    if case == "float64":
        with jax.enable_x64(True):
            params, xs = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), (params, xs))
            state = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), state)
            assert "lstm_forward" not in _ops(lambda p: lj.unroll(cell, p, xs, state), params)
        return
    if case == "with_internals":
        assert "lstm_forward" not in _ops(lambda p: lj.unroll_with_internals(cell, p, xs, state), params)
        return
    assert "lstm_forward" not in _ops(lambda p: lj.unroll(cell, p, xs, state, **options), params)


def check_xla_path_where_the_kernel_does_not_apply(case, problem, family, min_hidden_size, other_cell):
    """A GRU's or RNN's `lj.unroll` takes its kernel (`{family}_forward`) and leaves it in each `case`:
    float64, `resets`, below `min_hidden_size` (the threshold itself takes it), `unroll_with_internals`,
    and `other_cell` (another family, which must not reach this kernel). `problem(hidden)` gives
    `(cell, params, xs, state)` with xs `(6, 4, 3)`."""
    hidden = min_hidden_size - 1 if case == "below_threshold" else 32
    cell, params, xs, state = problem(hidden)
    uses_kernel = lambda f, *a: f"{family}_forward" in _ops(f, *a)  # noqa: E731
    assert case == "below_threshold" or uses_kernel(lambda p: lj.unroll(cell, p, xs, state), params)
    if case == "float64":
        with jax.enable_x64(True):
            params, xs, state = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), (params, xs, state))
            assert not uses_kernel(lambda p: lj.unroll(cell, p, xs, state), params)
    elif case == "resets":
        assert not uses_kernel(lambda p: lj.unroll(cell, p, xs, state, resets=np.zeros((6, 4), bool)), params)
    elif case == "with_internals":
        assert not uses_kernel(lambda p: lj.unroll_with_internals(cell, p, xs, state), params)
    elif case == "below_threshold":
        assert not uses_kernel(lambda p: lj.unroll(cell, p, xs, state), params)
        at, params, xs, state = problem(min_hidden_size)
        assert uses_kernel(lambda p: lj.unroll(at, p, xs, state), params), "the threshold itself takes the kernel"
    else:
        assert not uses_kernel(lambda p: lj.unroll(other_cell, p, xs), other_cell.init(jax.random.PRNGKey(0), 3))


def _run_python(code, **environment):
    env = {**os.environ, **environment}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


_XLA_AGREES = """
    import warnings, jax, jax.numpy as jnp, numpy as np
    import lstmjax as lj
    from lstmjax._native_build import native_kernel_status
    cell = lj.lstm(64)
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = jax.random.normal(jax.random.PRNGKey(1), (5, 8, 3))
    loss = lambda c: jax.grad(lambda p: jnp.sum(lj.unroll(c, p, xs)[1] ** 2))(params)
    np.testing.assert_allclose(loss(cell).w_h, loss(cell._replace(fused=None)).w_h, rtol=1e-4, atol=1e-6)
    print(native_kernel_status())
"""


def test_without_the_kernel_lj_unroll_falls_back_with_a_reason(tmp_path):
    off = _run_python(_XLA_AGREES, LSTMJAX_NATIVE="0")
    assert "available=False" in off.stdout and "disabled by LSTMJAX_NATIVE" in off.stdout
    broken = _run_python(_XLA_AGREES, CXX="false", LSTMJAX_CACHE_DIR=str(tmp_path / "empty"))
    assert "available=False" in broken.stdout and "could not be built" in broken.stdout
    assert "RuntimeWarning: lstmjax: the native kernels could not be built" in broken.stderr


def test_a_build_lands_in_the_cache_whole_is_reused_and_rebuilt_if_damaged(tmp_path):
    first = _run_python(_XLA_AGREES, LSTMJAX_CACHE_DIR=str(tmp_path))
    libraries = sorted(tmp_path.iterdir())
    assert "available=True" in first.stdout and len(libraries) == 1 and libraries[0].suffix == ".so", libraries
    assert libraries[0].stat().st_mode & 0o044, "others sharing the cache must be able to load it"
    assert b"libgomp" not in libraries[0].read_bytes(), "no OpenMP runtime beside PyTorch's: it slowed nn.LSTM 2x"
    stamp = libraries[0].stat().st_mtime_ns
    _run_python(_XLA_AGREES, LSTMJAX_CACHE_DIR=str(tmp_path))
    assert libraries[0].stat().st_mtime_ns == stamp and sorted(tmp_path.iterdir()) == libraries
    libraries[0].write_bytes(libraries[0].read_bytes()[:1000])  # as a crash before the disk had it all
    again = _run_python(_XLA_AGREES, LSTMJAX_CACHE_DIR=str(tmp_path))
    rebuilt = sorted(tmp_path.iterdir())
    assert "available=True" in again.stdout and len(rebuilt) == 1 and rebuilt[0].stat().st_size > 1000


def test_two_kernel_calls_at_once_bidirectional():
    """XLA may run the two directions' custom calls at the same time on its thread pool."""
    cell, _, xs, _ = _problem(*SHAPES["B20_H128"])
    params = lj.init_bidirectional(cell, jax.random.PRNGKey(3), xs.shape[-1])
    loss = lambda c: (lambda p: jnp.sum(jnp.sin(lj.unroll_bidirectional(c, p, xs)[1])))  # noqa: E731
    expected = jax.value_and_grad(loss(_xla(cell)))(params)
    assert_trees_all_close(jax.jit(jax.value_and_grad(loss(cell)))(params), expected, rtol=1e-4, atol=1e-4)


def test_several_devices_keep_the_xla_path_that_xla_can_split():
    """An opaque custom call would run on every device's copy of the whole batch."""
    code = _XLA_AGREES + """
    from lstmjax._native import can_run_natively
    assert jax.device_count() == 2 and not can_run_natively(params, xs, cell.initial_state(params, (8,)))
    """
    _run_python(code, XLA_FLAGS="--xla_force_host_platform_device_count=2")


def test_kernel_refuses_inconsistent_shapes_by_name():
    """The custom call checks its buffers itself (the wrappers never send such shapes)."""
    shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in [(2, 4, 32), (4, 32), (2, 4, 128), (2, 4, 32)]]
    call = jax.jit(lambda *a: jax.ffi.ffi_call(_native.TARGETS["forward"], shapes)(
        *a, threads=np.int32(1), save=np.int32(1)))
    xs, valid, w_x = jnp.zeros((2, 4, 3)), jnp.ones((2, 4), jnp.uint8), jnp.zeros((3, 128))
    rest = (jnp.zeros((32, 128)), jnp.zeros(128), jnp.zeros((4, 32)), jnp.zeros((4, 32)))
    with pytest.raises(Exception, match=r"w_x has shape \(5, 128\) but must be \(D, 4H\) = \(3, 128\)"):
        jax.block_until_ready(call(xs, valid, jnp.zeros((5, 128)), *rest))
    with pytest.raises(Exception, match=r"valid has shape \(4, 2\) but must be \(T, B\) = \(2, 4\)"):
        jax.block_until_ready(call(xs, valid.T, w_x, *rest))
