"""What `experiments.benchmark` summarises, prints and draws: summary.json, the tables, times.png, memory.png.

Everything here reads the run's `metrics.json` alone (`plot(run_dir)`), with bare Matplotlib
`Figure`s (Agg backend), so a run can be re-plotted without re-running it.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from experiments._results import read_json, save_figure_atomic

COLORS = {"lstmjax": "tab:blue", "flax": "tab:orange", "equinox": "tab:green", "haiku": "tab:red",
          "torch": "tab:purple", "torch_no_onednn": "tab:pink", "jax_cudnn": "tab:brown"}
VARIANT_HATCHES = ("//", "..", "xx", "\\\\", "++", "oo")
"""Hatches of lstmjax's extra rows (`lstmjax[...]`) in times.png, in the order of metrics.json's libraries."""
VARIANT_LINESTYLES = ("--", "-.", (0, (5, 2, 1, 2, 1, 2)), (0, (8, 3)))
"""Line styles of lstmjax's extra rows in memory.png."""
WORKLOAD_TITLES = {"forward": "forward: jitted loss of the outputs",
                   "train": "training step: loss and gradient w.r.t. the weights"}

DEFINITIONS = {
    "points": "grid points; xs: (T, B, D) standard normal, weights lj.lstm(H, init='pytorch').init(PRNGKey(seed), D) "
              "converted into each library's layout, zero initial memories, loss = mean(ys ** 2)",
    "forward": "jax.jit(loss) / nn.LSTM under torch.no_grad()",
    "train": "jax.jit(jax.value_and_grad(loss)) w.r.t. the LSTM's weights / nn.LSTM forward + loss.backward()",
    "seconds": "wall-clock seconds of each timed call (block_until_ready; PyTorch on CUDA: torch.cuda.synchronize), "
               "repeats rounds, libraries round-robin",
    "median_seconds": "median of seconds",
    "first_call_seconds": "the first call (compilation included for JAX), whose result is checked against lstmjax's",
    "ratio_to_lstmjax": "median_seconds / lstmjax's median_seconds at the same point (> 1: lstmjax is faster)",
    "geomean_ratio_to_lstmjax": "geometric mean of ratio_to_lstmjax over the grid points",
    "flops": "matrix-multiply operations of the LSTM: forward 2·B·T·(D+H)·4H, train 3× that",
    "gflops_per_second": "flops / median_seconds / 1e9",
    "peak": "fastest jitted float32 matmul of the run (squares and each point's (B·T, D+H) @ (D+H, 4H)), GFLOP/s",
    "check_relative_differences": "per library: |loss - lstmjax's| / |lstmjax's| and, per gradient leaf "
                                  "(w_x, w_h, b, in lstmjax's layout), max|g - lstmjax's| / max|lstmjax's|",
    "lstmjax_variants": "lstmjax's extra rows, checked against plain lstmjax like every library: "
                        "lstmjax[remat=V] lj.unroll(..., remat=V) (train only); lstmjax[xla] the native CPU kernel "
                        "switched off (cell.fused.native = None), its ratio is the kernel's speed-up; lstmjax[lengths] "
                        "lj.unroll(..., lengths=jnp.full(B, T)), its ratio is the cost of the lengths path",
    "memory": "XLA compiled memory analysis of jax.jit(jax.value_and_grad(loss)) (never run): "
              "peak_bytes = temp + argument + output - alias bytes",
}


def summary(metrics: Mapping) -> dict:
    """The run's summary.json, from metrics.json: the machine, a row per (point, workload, library),
    the geometric means, the memory rows and what was skipped."""
    peak = metrics["peak"]["gflops_per_second"]
    rows, errors = [], {}
    for point in metrics["points"]:
        if point["errors"]:
            errors[point["label"]] = point["errors"]
        for workload in metrics["workloads"]:
            for name, median in point["median_seconds"][workload].items():
                check = point["check_relative_differences"][workload].get(name)
                rows.append({"point": point["label"], "workload": workload, "library": name,
                             "median_ms": 1e3 * median, "ratio_to_lstmjax": point["ratio_to_lstmjax"][workload][name],
                             "gflops_per_second": point["gflops_per_second"][workload][name],
                             "fraction_of_peak": point["gflops_per_second"][workload][name] / peak,
                             "max_check_difference": None if check is None else max(check.values())})
    memory = metrics["memory"]
    memory_rows = [{"library": name, "length": length, "peak_mib": peak_bytes / 2**20}
                   for name, row in memory["rows"].items()
                   for length, peak_bytes in zip(row["lengths"], row["peak_bytes"])]
    m = metrics["machine"]
    return {
        "machine": f"{m['cpu']}, {m['usable_cores']} usable cores ({m['cpu_count']} in all), {m['jax_device']}"
                   + (f" ({m['jax_device_kind']}, float32 products at {m['gpu_matmul_precision']['precision']})"
                      if m.get("gpu_matmul_precision") else ""),
        "load_average_start": m["load_average_start"], "load_average_end": m["load_average_end"],
        "allocator": allocator_label(m),
        "versions": {k: v for k, v in m["versions"].items() if v},
        "torch_threads": metrics["torch_threads"], "repeats": metrics["repeats"],
        "peak_gflops_per_second": peak,
        "libraries": {name: lib["label"] for name, lib in metrics["libraries"].items() if lib["status"] == "ok"},
        "skipped": {name: lib["reason"] for name, lib in metrics["libraries"].items() if lib["status"] != "ok"},
        "errors": errors, "remat": metrics["remat"],
        "variant_notes": {k: v for k, v in metrics.get("lstmjax_variants", {}).items() if k != "remat"},
        "rows": rows, "geomean_ratio_to_lstmjax": metrics["geomean_ratio_to_lstmjax"],
        "memory_shape": f"B={memory['batch_size']} D={memory['input_size']} H={memory['hidden_size']}",
        "memory_rows": memory_rows, "memory_errors": memory["errors"],
    }


def point_line(point: Mapping) -> str:
    """One grid point's result on one line per workload: each library's median ms [ratio to lstmjax],
    and its errors (printed as each point ends, so that a run cut short still leaves its numbers)."""
    lines = []
    for workload, medians in point["median_seconds"].items():
        ratios = point["ratio_to_lstmjax"][workload]
        cells = "; ".join(f"{name} {1e3 * median:.3f} ms [{ratios[name]:.2f}]" for name, median in medians.items())
        lines.append(f"{point['label']} {workload}: {cells}")
    lines += [f"{point['label']} error, {name}: {error}" for name, error in point["errors"].items()]
    return "\n".join(lines)


def allocator_label(machine: Mapping) -> str:
    """How `malloc` was set up for the run: `lj.tune_cpu_allocator()` (applied, or asked for where it
    does nothing), then any `MALLOC_*` / `LD_PRELOAD` environment."""
    tune = machine.get("tune_cpu_allocator") or {}
    if tune.get("applied"):
        label = "lj.tune_cpu_allocator() applied"
    elif tune.get("requested"):
        label = "lj.tune_cpu_allocator() asked for, not applied (not glibc)"
    else:
        label = "lj.tune_cpu_allocator() not called"
    return label + "".join(f", {k}={v}" for k, v in machine.get("allocator_environment", {}).items())


def table(s: Mapping) -> str:
    """The report printed at the end: per workload a point × library table of
    `median ms [ratio to lstmjax, GFLOP/s]`, the geometric means, the memory table, the notes."""
    names = list(s["libraries"])
    lines = [f"Machine: {s['machine']}; load average {s['load_average_start']} at the start, "
             f"{s['load_average_end']} at the end; {s['allocator']}; "
             f"matmul peak {s['peak_gflops_per_second']:.1f} GFLOP/s"
             + (f"; PyTorch threads {s['torch_threads']}" if s["torch_threads"] else "")]
    points = list(dict.fromkeys(row["point"] for row in s["rows"]))
    first = max(26, *(len(p) + 2 for p in points))
    for workload in ("forward", "train"):
        cells = {(r["point"], r["library"]): r for r in s["rows"] if r["workload"] == workload}
        shown = [n for n in names if any((p, n) in cells for p in points)]
        if not shown:
            continue
        texts = {key: f"{r['median_ms']:.2f} [{r['ratio_to_lstmjax']:.2f}, {r['gflops_per_second']:.1f}]"
                 for key, r in cells.items()}
        geomean = s["geomean_ratio_to_lstmjax"].get(workload, {})
        width = max(len(n) for n in shown) + 2
        width = max(width, *(len(t) + 2 for t in texts.values()))
        lines += ["", f"{WORKLOAD_TITLES[workload]}: median ms of {s['repeats']} [ratio to lstmjax, GFLOP/s]",
                  "point".ljust(first) + "".join(n.rjust(width) for n in shown)]
        for p in points:
            lines.append(p.ljust(first) + "".join(texts.get((p, n), "-").rjust(width) for n in shown))
        lines.append("geometric mean of ratios".ljust(first)
                     + "".join((f"{geomean[n]:.2f}" if n in geomean else "-").rjust(width) for n in shown))
    checks = [r["max_check_difference"] for r in s["rows"] if r["max_check_difference"] is not None]
    if checks:
        lines += ["", f"Every library's loss and gradient equal lstmjax's on the timed shapes and data: largest "
                      f"relative difference {max(checks):.1e}."]
    if s["memory_rows"]:
        lengths = sorted({r["length"] for r in s["memory_rows"]})
        by = {(r["library"], r["length"]): r["peak_mib"] for r in s["memory_rows"]}
        lines += ["", f"Training-step memory, MiB (XLA compiled memory analysis, {s['memory_shape']}):",
                  "library".ljust(28) + "".join(f"T={t}".rjust(14) for t in lengths)]
        for name in dict.fromkeys(r["library"] for r in s["memory_rows"]):
            lines.append(name.ljust(28) + "".join(
                (f"{by[(name, t)]:.1f}" if (name, t) in by else "-").rjust(14) for t in lengths))
    lines += ["", f"remat: {s['remat']}"]
    lines += list(s.get("variant_notes", {}).values())
    for name, reason in s["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    for point, errors in s["errors"].items():
        for name, error in errors.items():
            lines.append(f"failed {name} at {point}: {error}")
    for name, error in s["memory_errors"].items():
        lines.append(f"memory not measured for {name}: {error}")
    return "\n".join(lines)


def times_figure(metrics: Mapping) -> Figure:
    """Median time per library at each grid point, one panel per workload (log scale), with each bar's
    ratio to lstmjax written above it."""
    workloads = metrics["workloads"]
    points = metrics["points"]
    names = [n for n, lib in metrics["libraries"].items() if lib["status"] == "ok"]
    fig = Figure(figsize=(max(7.0, 2.6 * len(points)), 3.6 * len(workloads)), layout="constrained")
    axes = fig.subplots(len(workloads), 1, squeeze=False)[:, 0]
    width = 0.8 / max(1, len(names))
    hatches = dict(zip([n for n in names if "[" in n], VARIANT_HATCHES * len(names)))
    for ax, workload in zip(axes, workloads):
        for j, name in enumerate(names):
            xs, ms, ratios = [], [], []
            for i, point in enumerate(points):
                if name in point["median_seconds"][workload]:
                    xs.append(i + (j - (len(names) - 1) / 2) * width)
                    ms.append(1e3 * point["median_seconds"][workload][name])
                    ratios.append(point["ratio_to_lstmjax"][workload][name])
            if not xs:
                continue
            base = name.split("[")[0]
            bars = ax.bar(xs, ms, width, label=metrics["libraries"][name]["label"],
                          color=COLORS.get(base, "tab:gray"), hatch=hatches.get(name),
                          edgecolor="white" if "[" in name else None)
            for bar, ratio in zip(bars, ratios):
                ax.annotate(f"{ratio:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=6, xytext=(0, 1), textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xticks(range(len(points)), [p["label"] for p in points], fontsize=8)
        ax.set_ylabel("median time per call (ms)")
        ax.set_title(f"{WORKLOAD_TITLES[workload]} (numbers: time / lstmjax's)", fontsize=10)
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.margins(y=0.08)
    legend = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", fontsize=7, ncol=min(3, len(legend)))
    m = metrics["machine"]
    device = f"{m['jax_device_kind']}, " if m.get("gpu_matmul_precision") else ""
    fig.suptitle(f"{device}{m['cpu']}, {m['usable_cores']} cores; load average {m['load_average_start']} at the "
                 f"start, {m['load_average_end']} at the end", fontsize=9)
    return fig


def memory_figure(metrics: Mapping) -> Figure:
    """Training-step memory (XLA's compiled memory analysis) against the sequence length, log–log."""
    memory = metrics["memory"]
    fig = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = fig.subplots()
    markers = iter("osD^vP*X" * 4)
    styles = dict(zip([n for n in memory["rows"] if "[" in n], VARIANT_LINESTYLES * len(memory["rows"])))
    for name, row in memory["rows"].items():
        base = name.split("[")[0]
        ax.plot(row["lengths"], np.asarray(row["peak_bytes"]) / 2**20, marker=next(markers), alpha=0.8,
                label=memory["labels"][name], color=COLORS.get(base, "tab:gray"),
                linestyle=styles.get(name, "-"))
    ax.plot(memory["lengths"], np.asarray(memory["input_bytes"]) / 2**20, color="black", linestyle=":",
            label="the inputs xs alone")
    ys_mib = np.asarray(memory["lengths"], float) * memory["output_bytes_per_step"] / 2**20
    ax.plot(memory["lengths"], ys_mib, color="gray", linestyle=":", label="the outputs ys alone")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("temp + argument + output bytes (MiB)")
    ax.set_title(f"Training-step memory, B={memory['batch_size']} D={memory['input_size']} "
                 f"H={memory['hidden_size']} (compiled, not run)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return fig


def plot(run_dir: str | pathlib.Path) -> list[pathlib.Path]:
    """Draws `times.png` and `memory.png` from the run's `metrics.json` alone, into the same folder."""
    run_dir = pathlib.Path(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    paths = [save_figure_atomic(times_figure(metrics), run_dir / "times.png", dpi=110)]
    if metrics["memory"]["rows"]:
        paths.append(save_figure_atomic(memory_figure(metrics), run_dir / "memory.png", dpi=110))
    return paths
