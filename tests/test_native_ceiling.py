"""`python -m experiments.native_ceiling`: the hand-fused C++ kernel computes lstmjax's loss and
gradient, refuses sizes it does not handle, and the study records what it timed."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstmjax as lj
from experiments import _benchmark_anchors as anchors
from experiments import _native_kernel as native
from experiments import native_ceiling
from experiments._benchmark_config import parse_point
from experiments.benchmark import make_inputs, relative_differences

needs_kernel = pytest.mark.skipif(native.unavailable() is not None, reason=str(native.unavailable()))


@pytest.fixture(scope="module")
def kernel():
    if native.unavailable() is not None:
        pytest.skip(str(native.unavailable()))
    with native.NativeLSTM() as built:
        yield built


@pytest.mark.parametrize("point, threads", [
    ("8x5x3x32", 2), ("8x5x3x32", 1), ("4x9x1x64", 1), ("16x6x5x96", 2),
    ("4x1x1x32", 1),     # one step, one input
    ("24x3x17x32", 2),   # 12 rows a thread: an 8-row and a 4-row block
    ("16x4x2x96", 4),    # 6 panels of 16 units over 4 threads: uneven weight-gradient shares
    ("12x3x2x64", 3),    # 4 panels over 3 threads
    ("16x3x2x32", 4),    # 2 panels over 4 threads: two threads have no weight-gradient share
])
def test_kernel_equals_lstmjax(kernel, point, threads):
    """Loss `mean(ys ** 2)` and its gradient with respect to every weight, against `jax.value_and_grad`
    of `lj.unroll` on the same weights (every bias nonzero) and inputs, at sizes that exercise every
    block and thread split; the forward-only call gives the same loss."""
    params, xs = make_inputs(parse_point(point), seed=3)
    loss, grads = jax.value_and_grad(anchors.lstmjax_anchor().loss)(params, xs)
    step = kernel.step(params, np.asarray(xs), threads)
    native_loss, native_grads = step.train()
    differences = relative_differences(native_loss, native_grads, float(loss),
                                       lj.LSTMParams(*(np.asarray(g) for g in grads)))
    assert max(differences.values()) < 2e-6, differences
    assert step.forward() == pytest.approx(native_loss, rel=1e-6)
    assert set(step.phase_seconds()) == {"pack", "forward", "backward", "barrier", "weight_gradients"}


@pytest.mark.parametrize("batch_size, hidden_size, threads, pattern", [
    (8, 48, 2, r"hidden_size must be a positive multiple of 32 for the native kernel, got 48"),
    (8, 0, 2, r"hidden_size must be a positive multiple of 32 for the native kernel, got 0"),
    (0, 32, 1, r"batch_size must split into 1 equal parts that are multiples of 4 for the native kernel, got 0"),
    (6, 32, 2, r"batch_size must split into 2 equal parts that are multiples of 4 for the native kernel, got 6"),
    (8, 32, 65, r"threads must be in \[1, 64\] for the native kernel, got 65"),
])
def test_sizes_the_kernel_does_not_handle_are_refused(batch_size, hidden_size, threads, pattern):
    with pytest.raises(ValueError, match=pattern):
        native.check_shape(batch_size, hidden_size, threads)


def test_config_names_the_point_it_refuses():
    with pytest.raises(ValueError, match=r"points: 32x10x4x100: hidden_size must be a positive multiple of 32"):
        native_ceiling.NativeCeilingConfig(points=("32x10x4x100",), threads=2)
    with pytest.raises(ValueError, match=r"threads must be at most 64 for the native kernel, got 65"):
        native_ceiling.NativeCeilingConfig(threads=65)


@pytest.mark.parametrize("point, threads", [("8x5x3x32", 2), ("4x3x2x64", 1)])
def test_kernel_inside_jit_equals_lstmjax(kernel, point, threads):
    """The same kernel as an XLA FFI custom call inside `jax.jit`: lstmjax's loss and gradient, and
    without gradients the same loss and zero gradients."""
    params, xs = make_inputs(parse_point(point), seed=5)
    loss, grads = jax.value_and_grad(anchors.lstmjax_anchor().loss)(params, xs)
    call = jax.jit(kernel.jax_loss_and_grads(threads), static_argnames="with_grads")
    native_loss, native_grads = call(params, xs)
    differences = relative_differences(float(native_loss), lj.LSTMParams(*(np.asarray(g) for g in native_grads)),
                                       float(loss), lj.LSTMParams(*(np.asarray(g) for g in grads)))
    assert max(differences.values()) < 2e-6, differences
    forward_loss, zeros = call(params, xs, with_grads=False)
    assert float(forward_loss) == pytest.approx(float(native_loss), rel=1e-6)
    assert all(not np.any(np.asarray(g)) for g in zeros)


def test_weights_of_the_wrong_shape_are_refused(kernel):
    params, xs = make_inputs(parse_point("8x3x2x32"), seed=0)
    with pytest.raises(ValueError, match=r"params.w_h must have shape \(32, 128\), got \(32, 64\)"):
        kernel.step(params._replace(w_h=params.w_h[:, :64]), np.asarray(xs), 2)
    with pytest.raises(ValueError, match=r"params.b must have shape \(128,\), got \(4,\)"):
        kernel.step(params._replace(b=params.b[:4]), np.asarray(xs), 2)
    with pytest.raises(ValueError, match=r"params.w_x must have shape \(2, 128\), got \(3, 128\)"):
        jax.jit(kernel.jax_loss_and_grads(2))(params._replace(w_x=jnp.ones((3, 128))), xs)
    with pytest.raises(ValueError, match=r"xs must have shape \(T, B, D\) with T, B, D >= 1, got shape \(3, 8\)"):
        kernel.step(params, np.asarray(xs)[:, :, 0], 2)


@needs_kernel
def test_fewer_openmp_threads_than_asked_is_an_error_not_a_wrong_answer():
    """The kernel splits the batch over exactly `threads` threads; if OpenMP starts fewer (here
    `OMP_THREAD_LIMIT=1`), rows would go uncomputed, so the call must fail."""
    script = ("from experiments import _native_kernel as native\n"
              "from experiments.benchmark import make_inputs\n"
              "from experiments._benchmark_config import parse_point\n"
              "import numpy as np\n"
              "params, xs = make_inputs(parse_point('8x3x2x32'), 0)\n"
              "with native.NativeLSTM() as kernel:\n"
              "    step = kernel.step(params, np.asarray(xs), 2)\n"
              "    try:\n"
              "        step.train()\n"
              "    except RuntimeError as error:\n"
              "        print('refused:', error)\n")
    env = {**os.environ, "OMP_THREAD_LIMIT": "1", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=pathlib.Path(__file__).parents[1], timeout=300)
    assert "refused: OpenMP started fewer than the 2 threads asked for" in done.stdout, done.stdout + done.stderr


@needs_kernel
def test_study_checks_times_and_records(tmp_path, capsys):
    run_dir = native_ceiling.main(["--points", "8x6x3x32", "--threads", "2", "--repeats", "2", "--warmup", "1",
                                   "--pause-ms", "0", "--no-torch", "--results-dir", str(tmp_path), "--run", "r"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    point = metrics["points"][0]
    assert set(point["seconds"]["train"]) == {"lstmjax", "native", "native_jit"}
    assert max(point["check_relative_differences"]["train"]["native_jit"].values()) < 2e-6
    assert all(len(times) == 2 for times in point["seconds"]["train"].values())
    assert max(point["check_relative_differences"]["train"]["native"].values()) < 2e-6
    row = next(r for r in summary["rows"] if r["workload"] == "train")
    medians = point["median_seconds"]["train"]
    assert row["ratio_to_lstmjax"]["native"] == pytest.approx(medians["native"] / medians["lstmjax"], abs=1e-3)
    assert row["native_to_torch"] is None and summary["torch"].startswith("not requested")
    assert "native/lstmjax" in capsys.readouterr().out
