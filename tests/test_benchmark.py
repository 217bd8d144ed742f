"""experiments.benchmark: every other library computes exactly lstmjax's LSTM (loss and gradient, same
weights), the benchmark refuses to time a library that does not, and a tiny run writes its files.

Libraries that are not installed are skipped with the reason (`pip install -e '.[benchmark]'`;
PyTorch: `pip install torch==2.13.0`). No timing is asserted here: timings go in the report.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_all_close

import lstmjax as lj
from experiments import _benchmark_anchors as anchors
from experiments import benchmark as bm
from experiments._config_cli import parse_config
from experiments._results import write_json_atomic

POINT = bm.Point(batch_size=3, length=7, input_size=4, hidden_size=5)
ON_CPU = jax.default_backend() == "cpu"  # lstmjax[xla] (the native CPU kernel off) is a row on a CPU only


@pytest.fixture(autouse=True)
def _restore_precision():
    """On a GPU the benchmark sets every library's matmul precision for the whole process: put it back."""
    before = jax.config.jax_default_matmul_precision
    torch = __import__("sys").modules.get("torch")
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) if torch else None
    yield
    jax.config.update("jax_default_matmul_precision", before)
    if flags is not None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _skip_unless_available(name: str) -> None:
    reason = anchors.unavailable(name)
    if reason is not None:
        pytest.skip(f"{name}: {reason}")


def _reference(params, xs):
    """lstmjax's loss and gradient, written here from the public API."""
    cell = lj.lstm(POINT.hidden_size)
    loss = lambda p: jnp.mean(lj.unroll(cell, p, xs)[1] ** 2)
    return jax.value_and_grad(loss)(params)


def _runner(name, params, xs):
    if anchors.on_gpu():  # as the benchmark does on a GPU: no TF32 in any library, else they differ by ~1e-3
        anchors.use_gpu_matmul_precision("float32")
    if name in anchors.TORCH_ANCHORS:
        return bm.torch_runner(params, xs, threads=1, workloads=bm.WORKLOADS, onednn=anchors.TORCH_ANCHORS[name])
    return bm.jax_runner(anchors.JAX_ANCHORS[name](), params, xs, bm.WORKLOADS)


@pytest.mark.parametrize("name", anchors.ANCHORS)
def test_each_library_computes_lstmjaxs_loss_and_gradient(name):
    """The core of the benchmark: the same weights give the same loss and the same gradient (converted
    back to lstmjax's layout), through the very calls the benchmark times. Every bias is nonzero
    (`init="pytorch"`), so a misplaced gate block or bias (Haiku's i, g, f, o order and its +1 on
    the forget gate) would show."""
    _skip_unless_available(name)
    params, xs = bm.make_inputs(POINT, seed=3)
    assert np.all(np.abs(np.asarray(params.b)) > 0)
    want_loss, want_grads = _reference(params, xs)
    runner = _runner(name, params, xs)
    loss, grads = runner.check("train", runner.calls["train"]())
    np.testing.assert_allclose(loss, float(want_loss), rtol=1e-6)
    assert_trees_all_close(grads, lj.LSTMParams(*(np.asarray(g) for g in want_grads)), rtol=1e-5, atol=1e-7)
    forward_loss, _ = runner.check("forward", runner.calls["forward"]())
    np.testing.assert_allclose(forward_loss, float(want_loss), rtol=1e-6)


@pytest.mark.parametrize("name", list(anchors.JAX_ANCHORS))
def test_each_jax_library_agrees_at_every_step(name):
    """Beyond one scalar: the gradient with respect to every input `xs[t]` agrees, so every step's
    computation is the same, not only their total."""
    _skip_unless_available(name)
    params, xs = bm.make_inputs(POINT, seed=4)
    anchor = anchors.JAX_ANCHORS[name]()
    reference = anchors.lstmjax_anchor()
    grad_xs = jax.grad(anchor.loss, argnums=1)(anchor.convert(params), xs)
    want = jax.grad(lambda x: jnp.mean(lj.unroll(lj.lstm(POINT.hidden_size), params, x)[1] ** 2))(xs)
    assert np.all(np.abs(np.asarray(want)) > 0)
    np.testing.assert_allclose(grad_xs, want, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(anchor.loss(anchor.convert(params), xs), reference.loss(params, xs), rtol=1e-6)


def test_torch_outputs_equal_lstmjaxs():
    torch = pytest.importorskip("torch", reason="PyTorch: pip install torch==2.13.0")
    params, xs = bm.make_inputs(POINT, seed=5)
    module = torch.nn.LSTM(POINT.input_size, POINT.hidden_size)
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in lj.to_torch(params).items()})
    with torch.no_grad():
        ys, _ = module(torch.from_numpy(np.array(xs)))
    _, want = lj.unroll(lj.lstm(POINT.hidden_size), params, xs)
    np.testing.assert_allclose(ys.numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(anchors.TORCH_ANCHORS))
def test_torch_anchors_take_the_path_they_name(name):
    """`torch` is PyTorch as users run it, through oneDNN's fused RNN kernels on a CPU that has them;
    `torch_no_onednn` never reaches them (both train the same LSTM, checked above)."""
    _skip_unless_available(name)
    import torch

    params, xs = bm.make_inputs(POINT, seed=5)
    run = anchors.TorchAnchor.prepare(params, np.asarray(xs), 1, onednn=anchors.TORCH_ANCHORS[name])
    with torch.profiler.profile() as profile:
        run.train()
    used_onednn = any(event.name.startswith("aten::mkldnn_rnn") for event in profile.events())
    if name == "torch" and not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch build has no oneDNN")
    assert used_onednn == anchors.TORCH_ANCHORS[name]


def test_a_library_computing_something_else_is_refused(monkeypatch):
    """Swap two gate blocks in Equinox's conversion: the benchmark must stop before timing it."""
    _skip_unless_available("equinox")
    honest = anchors.equinox_anchor

    def swapped_gates():
        anchor = honest()

        def convert(params):
            h = params.w_h.shape[0]
            swap = lambda a: jnp.concatenate([a[..., h:2 * h], a[..., :h], a[..., 2 * h:]], axis=-1)
            return anchor.convert(lj.LSTMParams(swap(params.w_x), swap(params.w_h), swap(params.b)))

        return dataclasses.replace(anchor, convert=convert)

    monkeypatch.setitem(anchors.JAX_ANCHORS, "equinox", swapped_gates)
    config = bm.BenchmarkConfig(points=("3x7x4x5",), anchors=("equinox",), warmup=1, repeats=1,
                                peak_sizes=(8,), memory_lengths=(5,), memory_anchors=("none",), progress=False,
                                lstmjax_variants=("none",))
    with pytest.raises(bm.AnchorMismatchError, match="equinox at B=3 T=7 D=4 H=5"):
        bm.run_benchmark(config)
    # --on-mismatch drop: reported at the point, not timed, and the run goes on
    (point,) = bm.run_benchmark(dataclasses.replace(config, on_mismatch="drop"))["points"]
    assert point["errors"]["equinox"].startswith("AnchorMismatchError: equinox at B=3 T=7 D=4 H=5")
    assert "equinox" not in point["median_seconds"]["train"] and "lstmjax" in point["median_seconds"]["train"]


def test_relative_differences():
    grads = lj.LSTMParams(np.ones((2, 4)), np.ones((1, 4)), np.arange(4.0))
    same = bm.relative_differences(2.0, grads, 2.0, grads)
    assert same == {"loss": 0.0, "grad_w_x": 0.0, "grad_w_h": 0.0, "grad_b": 0.0}
    off = bm.relative_differences(2.2, grads._replace(b=grads.b + 0.3), 2.0, grads)
    assert off["loss"] == pytest.approx(0.1) and off["grad_b"] == pytest.approx(0.1)
    with pytest.raises(bm.AnchorMismatchError, match="gradient of w_h"):
        bm.relative_differences(2.0, grads._replace(w_h=np.ones((4, 1))), 2.0, grads)


@pytest.mark.parametrize("tune", [False, True])
def test_a_tiny_run_writes_everything(tmp_path, capsys, monkeypatch, tune):
    argv = ["--points", "2x5x3x4", "--warmup", "2", "--repeats", "2", "--peak-sizes", "16",
            "--memory-lengths", "10", "100", "--memory-anchors", "none", "--torch-threads", "1",
            "--results-dir", str(tmp_path), "--run", "tiny", "--no-progress"] + (["--tune-allocator"] if tune else [])
    tuned = []  # the test process's own malloc is left alone: the call is recorded instead
    monkeypatch.setattr(bm.lj, "tune_cpu_allocator", lambda: tuned.append(True) or True)
    for name in [n for n in os.environ if n.startswith("MALLOC_") or n == "LD_PRELOAD"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    run_dir = bm.main(argv)
    captured = capsys.readouterr()
    printed = captured.out
    assert "B=2 T=5 D=3 H=4 train: lstmjax " in captured.err  # each point's line as it ends (no progress bar)
    assert run_dir == tmp_path / "benchmark" / "tiny"
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "memory.png", "metrics.json", "summary.json",
                                                         "times.png"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    available = ["lstmjax"] + [n for n in anchors.ANCHORS if anchors.unavailable(n) is None]
    skipped = [n for n in anchors.ANCHORS if anchors.unavailable(n) is not None]
    assert [n for n, lib in metrics["libraries"].items() if lib["status"] == "ok"][:len(available)] == available
    assert all(metrics["libraries"][n]["reason"] for n in skipped)
    (point,) = metrics["points"]
    assert point["errors"] == {}
    for workload in ("forward", "train"):
        assert set(available) <= set(point["median_seconds"][workload])
        assert all(len(t) == 2 for t in point["seconds"][workload].values())
        assert point["ratio_to_lstmjax"][workload]["lstmjax"] == 1.0
        for name, differences in point["check_relative_differences"][workload].items():
            assert max(differences.values()) <= 1e-4, name
        assert point["flops"][workload] == bm.lstm_flops(bm.Point(2, 5, 3, 4), workload)
    checked = {n for n in point["check_relative_differences"]["train"] if "[" not in n}  # "[": lstmjax's own rows
    assert checked == set(available) - {"lstmjax"}
    extra = {"lstmjax[xla]", "lstmjax[lengths]"} if ON_CPU else {"lstmjax[lengths]"}
    for workload in ("forward", "train"):  # the extra lstmjax rows are timed and checked on both workloads
        assert extra <= set(point["check_relative_differences"][workload])
        assert extra <= set(point["median_seconds"][workload])
    memory_rows = {"lstmjax", "lstmjax[remat=True]"} | ({"lstmjax[xla]"} if ON_CPU else set())
    assert set(metrics["memory"]["rows"]) == memory_rows
    assert ("PyTorch threads 1" in printed) == (ON_CPU and anchors.unavailable("torch") is None)
    assert set(metrics["lstmjax_variants"]) == {"remat", "xla", "lengths", "cudnn"}
    assert metrics["peak"]["gflops_per_second"] > 0
    lstmjax_memory = metrics["memory"]["rows"]["lstmjax"]
    assert lstmjax_memory["lengths"] == [10, 100]
    assert lstmjax_memory["peak_bytes"][1] > lstmjax_memory["peak_bytes"][0] > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {r["library"] for r in summary["rows"]} >= set(available) | {"lstmjax[xla]", "lstmjax[lengths]"}
    assert "\nlstmjax[xla]: lj.lstm(H) with cell.fused.native = None" in printed
    assert "\nlstmjax[lengths]: lj.unroll(..., lengths=jnp.full(B, T))" in printed
    assert "geometric mean of ratios" in printed and "Training-step memory" in printed
    for name in skipped:
        assert f"skipped {name}" in printed
    assert tuned == [True] * tune
    assert metrics["machine"]["tune_cpu_allocator"] == {"requested": tune, "applied": tune}
    assert metrics["machine"]["allocator_environment"] == {"MALLOC_ARENA_MAX": "2"}
    allocator = "applied" if tune else "not called"
    assert f"; lj.tune_cpu_allocator() {allocator}, MALLOC_ARENA_MAX=2;" in printed


def test_remat_is_measured_when_lj_unroll_offers_it(monkeypatch):
    """The harness reads `lj.unroll`'s signature at run time: a `remat` parameter adds a training row and
    a memory row `lstmjax[remat=True]`, checked against plain lstmjax like any other library."""
    original = lj.unroll
    seen = []

    def unroll_with_remat(cell, params, xs, remat=False, **kwargs):
        seen.append(remat)
        return original(cell, params, xs, **kwargs)

    monkeypatch.setattr(lj, "unroll", unroll_with_remat)
    assert "remat" in inspect.signature(lj.unroll).parameters
    config = bm.BenchmarkConfig(points=("2x5x3x4",), anchors=(), warmup=1, repeats=1, peak_sizes=(8,),
                                memory_lengths=(10,), memory_anchors=("none",), lstmjax_variants=("none",),
                                progress=False)
    metrics = bm.run_benchmark(config)
    assert True in seen
    (point,) = metrics["points"]
    assert "lstmjax[remat=True]" in point["median_seconds"]["train"]
    assert "lstmjax[remat=True]" not in point["median_seconds"]["forward"]
    assert point["check_relative_differences"]["train"]["lstmjax[remat=True]"]["loss"] <= 1e-6
    assert set(metrics["memory"]["rows"]) == {"lstmjax", "lstmjax[remat=True]"}
    monkeypatch.setattr(lj, "unroll", lambda cell, params, xs: original(cell, params, xs))
    variants, notes = bm.lstmjax_variants(dataclasses.replace(config, lstmjax_variants=("xla", "lengths")))
    assert set(variants) == ({"lstmjax[xla]"} if ON_CPU else set())  # no lengths parameter: no lstmjax[lengths]
    assert "no remat parameter" in notes["remat"] and "no lengths parameter" in notes["lengths"]
    monkeypatch.setattr(lj, "unroll", unroll_with_remat)
    variants, _ = bm.lstmjax_variants(dataclasses.replace(config, remat_values=("False", "16", "True"),
                                                          lstmjax_variants=("none",)))
    assert variants == {"lstmjax[remat=16]": bm.Variant("lstmjax, lj.unroll(..., remat=16)", ("train",), {"remat": 16}),
                        "lstmjax[remat=True]": bm.Variant("lstmjax, lj.unroll(..., remat=True)", ("train",),
                                                          {"remat": True})}


@pytest.mark.skipif(not ON_CPU, reason="lstmjax[xla] is a CPU row (the native kernels are CPU-only)")
def test_the_lstmjax_variants_and_what_they_run(monkeypatch):
    """`lstmjax_variants` builds every extra lstmjax row, `--lstmjax-variants` choosing the xla and lengths
    ones; the xla row's cell has no native kernel, the lengths row passes full lengths, and nothing else
    changes (spied on through `lj.unroll`, the only way the benchmark reaches lstmjax)."""
    config = bm.BenchmarkConfig(points=("2x5x3x4",), anchors=(), progress=False)
    variants, notes = bm.lstmjax_variants(config)
    assert list(variants) == ["lstmjax[remat=True]", "lstmjax[xla]", "lstmjax[lengths]"]
    assert variants["lstmjax[xla]"] == bm.Variant("lstmjax, lj.unroll without its native kernel (XLA)",
                                                  bm.WORKLOADS, native=False)
    assert variants["lstmjax[lengths]"] == bm.Variant("lstmjax, lj.unroll(..., lengths=full(B, T))", bm.WORKLOADS,
                                                      full_lengths=True, memory=False)
    assert f"no grid point has H >= {lj.lstm(1).fused.native_min_hidden_size}," in notes["xla"]
    assert "cost of the lengths path" in notes["lengths"]
    for chosen, names in [(("xla",), {"lstmjax[xla]"}), (("lengths",), {"lstmjax[lengths]"}), (("none",), set())]:
        chosen_variants, chosen_notes = bm.lstmjax_variants(dataclasses.replace(config, lstmjax_variants=chosen))
        assert set(chosen_variants) - {"lstmjax[remat=True]"} == names
        assert set(chosen_notes) == {"remat"} | {n[len("lstmjax["):-1] for n in names}

    calls = []
    original = lj.unroll

    def spy(cell, params, xs, **kwargs):
        calls.append((cell.fused.native, kwargs))
        return original(cell, params, xs, **kwargs)

    monkeypatch.setattr(lj, "unroll", spy)
    params, xs = bm.make_inputs(POINT, seed=6)
    for name in ("lstmjax[xla]", "lstmjax[lengths]"):
        np.testing.assert_allclose(variants[name].anchor().loss(params, xs), anchors.lstmjax_anchor().loss(params, xs),
                                   rtol=1e-6)
    (xla_native, xla_kwargs), plain, (lengths_native, lengths_kwargs), _ = calls
    assert xla_native is None and xla_kwargs == {}
    assert plain[0] is not None and plain[1] == {} and lengths_native is not None
    assert list(lengths_kwargs) == ["lengths"] and lengths_kwargs["lengths"].dtype == jnp.int32
    np.testing.assert_array_equal(lengths_kwargs["lengths"], np.full(POINT.batch_size, POINT.length))
    with pytest.raises(ValueError, match="no native kernel"):
        anchors.without_native_kernel(lj.rnn(4)._replace(fused=None))


def test_the_cudnn_row_is_gpu_only_and_asks_lj_unroll_for_its_cudnn_path(monkeypatch):
    """`lstmjax[cudnn]` is left out, with the reason, off a GPU; on one (faked here) it is a row whose
    `lj.unroll` is traced with the opt-in cuDNN path asked for, and only that row's."""
    from lstmjax import _cudnn
    config = bm.BenchmarkConfig(points=("2x5x3x4",), anchors=(), lstmjax_variants=("cudnn",), progress=False)
    if not anchors.on_gpu():
        variants, notes = bm.lstmjax_variants(config)
        assert "lstmjax[cudnn]" not in variants and "needs a GPU" in notes["cudnn"]
    monkeypatch.setattr(anchors, "on_gpu", lambda: True)
    monkeypatch.setattr(_cudnn, "bindings_available", lambda: True)
    variants, notes = bm.lstmjax_variants(config)
    assert variants["lstmjax[cudnn]"].workloads == bm.WORKLOADS and "LSTMJAX_CUDNN=1" in notes["cudnn"]
    asked = []
    original = lj.unroll
    monkeypatch.setattr(lj, "unroll",
                        lambda *args, **kwargs: asked.append(_cudnn.enabled()) or original(*args, **kwargs))
    monkeypatch.delenv("LSTMJAX_CUDNN", raising=False)
    params, xs = bm.make_inputs(POINT, seed=7)
    np.testing.assert_allclose(variants["lstmjax[cudnn]"].anchor().loss(params, xs),
                               anchors.lstmjax_anchor().loss(params, xs), rtol=1e-6)
    assert asked == [True, False]


def test_the_xla_row_runs_without_the_kernel():
    """Where the native kernel runs (H >= 16, this machine has it), plain lstmjax's training step calls it
    and lstmjax[xla]'s does not: the row's ratio is the kernel's speed-up."""
    if not ON_CPU:
        pytest.skip("the native kernels are CPU-only")
    if not lj.native_kernel_status().available:
        pytest.skip(f"no native kernel here: {lj.native_kernel_status().reason}")
    params, xs = bm.make_inputs(bm.Point(2, 3, 4, 32), seed=7)

    def lowered(anchor):
        return jax.jit(jax.value_and_grad(anchor.loss)).lower(params, xs).as_text()

    assert "custom_call" in lowered(anchors.lstmjax_anchor())
    assert "custom_call" not in lowered(anchors.lstmjax_anchor(native=False))


def test_the_variant_rows_are_checked_like_every_library(monkeypatch):
    """A lengths row one step short (not lstmjax's computation) stops the run before anything is timed."""
    honest = anchors.lstmjax_anchor

    def one_step_short(unroll_kwargs=None, *, native=True, full_lengths=False, cudnn=False):
        anchor = honest(unroll_kwargs, native=native)
        if not full_lengths:
            return anchor

        def loss(params, xs):
            lengths = jnp.full(xs.shape[1:-1], xs.shape[0] - 1)
            return anchors.loss_of_outputs(lj.unroll(lj.lstm(params.w_h.shape[0]), params, xs, lengths=lengths)[1])

        return dataclasses.replace(anchor, loss=loss)

    monkeypatch.setattr(anchors, "lstmjax_anchor", one_step_short)
    config = bm.BenchmarkConfig(points=("3x7x4x5",), anchors=(), warmup=1, repeats=1, peak_sizes=(8,),
                                memory_lengths=(5,), memory_anchors=("none",), lstmjax_variants=("lengths",),
                                progress=False)
    with pytest.raises(bm.AnchorMismatchError, match=r"lstmjax\[lengths\] at B=3 T=7 D=4 H=5 \(forward\)"):
        bm.run_benchmark(config)


def test_a_bad_lstmjax_variant_is_named_with_the_choices(capsys):
    for argv, bad in ((["--lstmjax-variants", "xla", "jit"], "'jit'"),
                      (["--lstmjax-variants", "none", "xla"], "'none'")):
        with pytest.raises(SystemExit) as error:
            parse_config(bm.BenchmarkConfig, argv)
        assert error.value.code == 2
        message = capsys.readouterr().err
        assert ("lstmjax_variants (--lstmjax-variants) must be among xla, lengths, cudnn, or just none; got "
                + bad) in message
    assert parse_config(bm.BenchmarkConfig, ["--lstmjax-variants", "none"]).lstmjax_variants == ("none",)
    assert parse_config(bm.BenchmarkConfig, []).lstmjax_variants == ("xla", "lengths", "cudnn")


def test_flops_points_and_bad_configs():
    point = bm.parse_point("32x100x32x128")
    assert point == bm.Point(32, 100, 32, 128) and point.label == "B=32 T=100 D=32 H=128"
    assert bm.lstm_flops(point, "forward") == 2 * 32 * 100 * 160 * 512
    assert bm.lstm_flops(point, "train") == 3 * bm.lstm_flops(point, "forward")
    for argv in (["--points", "32x100x32"], ["--points", "0x1x1x1"], ["--anchors", "jax"], ["--repeats", "0"],
                 ["--rtol", "0"], ["--memory-anchors", "torch"], ["--memory-anchors", "none", "flax"],
                 ["--remat-values", "not a literal"], ["--pause-ms", "-1"], ["--lstmjax-variants", "remat"]):
        with pytest.raises(SystemExit) as error:
            parse_config(bm.BenchmarkConfig, argv)
        assert error.value.code == 2, argv


def test_missing_and_broken_libraries_are_reported_not_fatal(monkeypatch, tmp_path):
    """A library that does not import is skipped with its reason; one that fails to build the model is
    recorded as an error at that point; the others (here lstmjax alone) are still timed, tabled and drawn."""
    real_unavailable = anchors.unavailable
    monkeypatch.setattr(anchors, "unavailable",
                        lambda name: "import failed: ImportError: test" if name == "haiku" else real_unavailable(name))

    def broken():
        raise RuntimeError("cannot build")

    monkeypatch.setitem(anchors.JAX_ANCHORS, "flax", broken)
    config = bm.BenchmarkConfig(points=("2x5x3x4",), anchors=("haiku", "flax"), warmup=1, repeats=1,
                                peak_sizes=(8,), memory_lengths=(10,), memory_anchors=("haiku",),
                                lstmjax_variants=("none",), progress=False)
    metrics = bm.run_benchmark(config)
    assert metrics["libraries"]["haiku"] == {"label": anchors.LABELS["haiku"], "status": "skipped",
                                             "reason": "import failed: ImportError: test"}
    (point,) = metrics["points"]
    assert point["errors"] == {"flax": "RuntimeError: cannot build"}
    assert set(point["median_seconds"]["train"]) == {"lstmjax"} | {n for n in point["median_seconds"]["train"]
                                                                     if n.startswith("lstmjax[")}
    assert set(metrics["memory"]["rows"]) <= {"lstmjax", "lstmjax[remat=True]"}
    printed = bm.report.table(bm.report.summary(metrics))
    assert "skipped haiku: import failed: ImportError: test" in printed
    assert "failed flax at B=2 T=5 D=3 H=4: RuntimeError: cannot build" in printed
    write_json_atomic(tmp_path / "metrics.json", metrics)
    assert [p.name for p in bm.report.plot(tmp_path)] == ["times.png", "memory.png"]


def test_the_allocator_label_says_what_was_asked_and_what_happened():
    label = bm.report.allocator_label
    assert label({}) == "lj.tune_cpu_allocator() not called"
    assert label({"tune_cpu_allocator": {"requested": True, "applied": False},
                  "allocator_environment": {"LD_PRELOAD": "libjemalloc.so"}}) == (
        "lj.tune_cpu_allocator() asked for, not applied (not glibc), LD_PRELOAD=libjemalloc.so")
    assert label({"tune_cpu_allocator": {"requested": True, "applied": True}}) == "lj.tune_cpu_allocator() applied"


def test_the_cudnn_anchors_weight_layout_is_lstmjaxs():
    """`jax_cudnn` runs only on a GPU; off one, its reference (`jax.experimental.rnn.lstm_ref` on the same
    flat cuDNN weight vector) checks the conversion both ways: loss, gradient and every step's input gradient."""
    pytest.importorskip("jax.experimental.rnn")
    anchor = anchors.cudnn_anchor(reference=True)
    params, xs = bm.make_inputs(POINT, seed=5)
    weights = anchor.convert(params)
    assert weights.shape == (4 * POINT.hidden_size * (POINT.input_size + POINT.hidden_size + 2),)
    want_loss, want_grads = _reference(params, xs)
    runner = bm.jax_runner(anchor, params, xs, bm.WORKLOADS)
    loss, grads = runner.check("train", runner.calls["train"]())
    np.testing.assert_allclose(loss, float(want_loss), rtol=1e-6)
    assert_trees_all_close(grads, lj.LSTMParams(*(np.asarray(g) for g in want_grads)), rtol=1e-5, atol=1e-7)
    grad_xs = jax.grad(anchor.loss, argnums=1)(weights, xs)
    want = jax.grad(lambda x: jnp.mean(lj.unroll(lj.lstm(POINT.hidden_size), params, x)[1] ** 2))(xs)
    np.testing.assert_allclose(grad_xs, want, rtol=1e-5, atol=1e-8)
    assert anchors._cudnn_hidden_size(weights.shape[0], POINT.input_size) == POINT.hidden_size
    with pytest.raises(ValueError, match="no one-layer LSTM over 4 inputs"):
        anchors._cudnn_hidden_size(weights.shape[0] + 1, POINT.input_size)


def test_which_libraries_run_on_which_backend(monkeypatch):
    """On a CPU `jax_cudnn` is skipped with the backend named; on a GPU `torch_no_onednn` is (oneDNN is
    PyTorch's CPU path), PyTorch must see a CUDA device, and the labels say PyTorch runs on CUDA."""
    if not anchors.on_gpu():
        assert "JAX's backend here is cpu" in anchors.unavailable("jax_cudnn")
        assert anchors.label("torch") == anchors.LABELS["torch"]
    monkeypatch.setattr(anchors, "on_gpu", lambda: True)
    assert "oneDNN is PyTorch's CPU path" in anchors.unavailable("torch_no_onednn")
    assert anchors.label("torch") == "PyTorch nn.LSTM (CUDA, cuDNN)"
    assert anchors.label("flax") == anchors.LABELS["flax"]
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        assert "no CUDA device" in anchors.unavailable("torch")


def test_gpu_precision_sets_every_library_and_is_checked(monkeypatch):
    """`--gpu-precision float32` turns TF32 off in JAX and in both of PyTorch's switches, `tf32` on;
    anything else is refused by name (the process's settings are restored after the test)."""
    before = jax.config.jax_default_matmul_precision
    torch = pytest.importorskip("torch")
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        applied = anchors.use_gpu_matmul_precision("float32")
        assert jax.config.jax_default_matmul_precision == "highest"
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert applied == {"precision": "float32", "jax_default_matmul_precision": "highest",
                           "torch_cuda_matmul_allow_tf32": False, "torch_cudnn_allow_tf32": False}
        anchors.use_gpu_matmul_precision("tf32")
        assert jax.config.jax_default_matmul_precision == "tensorfloat32"
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with pytest.raises(ValueError, match="gpu_precision must be one of .*got 'bf16'"):
            anchors.use_gpu_matmul_precision("bf16")
    finally:
        jax.config.update("jax_default_matmul_precision", before)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    with pytest.raises(SystemExit):
        parse_config(bm.BenchmarkConfig, ["--gpu-precision", "bf16"])
    with pytest.raises(ValueError, match="gpu_precision must be one of float32, tf32, got 'bf16'"):
        bm.BenchmarkConfig(gpu_precision="bf16")
