"""`python -m experiments.native_ceiling`: the hand-fused C++ kernel computes lstmjax's loss and
gradient, refuses sizes it does not handle, and the study records what it timed."""

import json

import jax
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


@pytest.mark.parametrize("point, threads", [("8x5x3x32", 2), ("8x5x3x32", 1), ("4x9x1x64", 1), ("16x6x5x96", 2)])
def test_kernel_equals_lstmjax(kernel, point, threads):
    """Loss `mean(ys ** 2)` and its gradient with respect to every weight, against `jax.value_and_grad`
    of `lj.unroll` on the same weights (every bias nonzero) and inputs; the forward-only call gives the
    same loss."""
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
    (8, 48, 2, r"hidden_size must be a multiple of 32 for the native kernel, got 48"),
    (6, 32, 2, r"batch_size must split into 2 equal parts that are multiples of 4 for the native kernel, got 6"),
    (8, 32, 65, r"threads must be in \[1, 64\] for the native kernel, got 65"),
])
def test_sizes_the_kernel_does_not_handle_are_refused(batch_size, hidden_size, threads, pattern):
    with pytest.raises(ValueError, match=pattern):
        native.check_shape(batch_size, hidden_size, threads)


def test_config_names_the_point_it_refuses():
    with pytest.raises(ValueError, match=r"points: 32x10x4x100: hidden_size must be a multiple of 32"):
        native_ceiling.NativeCeilingConfig(points=("32x10x4x100",), threads=2)


@needs_kernel
def test_study_checks_times_and_records(tmp_path, capsys):
    run_dir = native_ceiling.main(["--points", "8x6x3x32", "--threads", "2", "--repeats", "2", "--warmup", "1",
                                   "--pause-ms", "0", "--no-torch", "--results-dir", str(tmp_path), "--run", "r"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    point = metrics["points"][0]
    assert set(point["seconds"]["train"]) == {"lstmjax", "native"}
    assert all(len(times) == 2 for times in point["seconds"]["train"].values())
    assert max(point["check_relative_differences"]["train"]["native"].values()) < 2e-6
    row = next(r for r in summary["rows"] if r["workload"] == "train")
    medians = point["median_seconds"]["train"]
    assert row["ratio_to_lstmjax"]["native"] == pytest.approx(medians["native"] / medians["lstmjax"], abs=1e-3)
    assert row["native_to_torch"] is None and summary["torch"].startswith("not requested")
    assert "native/lstmjax" in capsys.readouterr().out
