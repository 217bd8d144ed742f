"""What `experiments.long_range` summarises, prints and draws: summary.json, the text table, PNGs.

The plots are drawn from `metrics.json` alone (`plot(run_dir)`), with Matplotlib's
object-oriented API (bare `Figure`s, rendered by the Agg backend), so a run can be re-plotted
without recomputing it and importing this module never touches pyplot's global state.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from experiments._results import read_json, save_figure_atomic

BEATS_BASELINE = 0.9
"""A seed "beats the baseline" when its test metric is below this fraction of the memoryless value."""

COLORS = {"rnn": "tab:red", "lstm": "tab:blue", "gru": "tab:green"}

TASK_TITLES = {"adding": "adding problem", "copy": "copy memory", "temporal_order": "temporal order"}

SMOOTHING = 10
"""Training curves are drawn as running means over this many steps."""

DEFINITIONS = {
    "adding": "lj.adding_problem (Arjovsky et al. form), input (value, marker), T steps; model: cell, then "
              "w·h_{T-1} + b; loss and test metric: MSE; baseline lj.ADDING_BASELINE_MSE = 1/6 (predict the mean)",
    "copy": "lj.copy_memory(T): 10 symbols from 8, T-1 blanks, delimiter, 10 blanks (T + 20 steps); model: cell, "
            "then a 10-class softmax readout at every step; loss and test metric: cross-entropy averaged over "
            "all T + 20 steps; baseline lj.copy_memory_baseline(T) = 10 ln 8 / (T + 20); test_accuracy: "
            "fraction of the 10 recall steps predicted right (chance 1/8)",
    "temporal_order": "lj.temporal_order(min_length=T, max_length=T + T//10); model: cell unrolled with the "
                      "sequence lengths, then a 4-class softmax readout of the last real output; loss and test "
                      "metric: cross-entropy; baseline ln 4; test_accuracy: fraction classified right (chance 1/4)",
    "loss": "per seed and step: the training loss on that step's fresh batch, before the update",
    "grad_norm": "per seed and step: global gradient norm before clipping",
    "test_metric": "per seed: the task's metric on the fixed test batch (test_size sequences, "
                   "fold_in(PRNGKey(TEST_KEY), T)) after training; test_metric_init: the same at initialisation",
    "beats_baseline": f"a seed beats the baseline when its test_metric < {BEATS_BASELINE} x baseline",
}


def summary(metrics: Mapping) -> dict:
    """The run's summary.json, computed from metrics.json: one row per (task, T, cell)."""
    rows = []
    for task in metrics["tasks"]:
        for length in metrics["lengths"]:
            base = metrics["baselines"][task][str(length)]
            for cell in metrics["cells"]:
                run = metrics["runs"][task][str(length)][cell]
                values = np.asarray(run["test_metric"], float)
                row = {"task": task, "length": length, "cell": cell, "metric": metrics["metric_names"][task],
                       "test_metric_per_seed": run["test_metric"],
                       "test_metric_mean": float(np.mean(values)), "test_metric_std": float(np.std(values)),
                       "test_metric_min": float(np.min(values)), "test_metric_max": float(np.max(values)),
                       "baseline": base, "relative_to_baseline": float(np.mean(values)) / base,
                       "seeds_beating_baseline": int(np.sum(values < BEATS_BASELINE * base)),
                       "seeds": len(values)}
                if "learning_rates" in metrics:
                    row["learning_rate"] = metrics["learning_rates"][task]
                if "test_accuracy" in run:
                    accuracy = np.asarray(run["test_accuracy"], float)
                    row.update(test_accuracy_mean=float(np.mean(accuracy)), test_accuracy_min=float(np.min(accuracy)),
                               test_accuracy_max=float(np.max(accuracy)))
                rows.append(row)
    return {"rows": rows, "beats_baseline_fraction": BEATS_BASELINE, "train_steps": metrics["train_steps"],
            "hidden_size": metrics["hidden_size"], "batch_size": metrics["batch_size"],
            "learning_rates": metrics.get("learning_rates", {}), "seeds": metrics["seeds"], "init": metrics["init"]}


def table(summary_json: Mapping) -> str:
    """The printed table: task, T, cell, final test metric mean [min, max], baseline, seeds beating it."""
    rates = ", ".join(f"{task} {rate:g}" for task, rate in summary_json.get("learning_rates", {}).items())
    lines = [f"Final test metric after {summary_json['train_steps']} Adam steps (H = {summary_json['hidden_size']}, "
             f"batch {summary_json.get('batch_size', '?')}, learning rate {rates or '?'}, "
             f"{len(summary_json['seeds'])} seeds, init preset {summary_json['init']!r});",
             f"mean [min, max] over seeds; a seed beats the baseline below {BEATS_BASELINE} x baseline",
             f"{'task':<15} {'T':>4}  {'cell':<5} {'metric':<30} {'mean [min, max]':<27} {'baseline':>8}  "
             f"{'beats baseline?':<16} accuracy"]
    for row in summary_json["rows"]:
        value = f"{row['test_metric_mean']:.4f} [{row['test_metric_min']:.4f}, {row['test_metric_max']:.4f}]"
        beats = row["seeds_beating_baseline"]
        verdict = f"{'yes' if beats == row['seeds'] else 'no' if beats == 0 else 'some'} ({beats}/{row['seeds']})"
        accuracy = (f"{row['test_accuracy_mean']:.3f} [{row['test_accuracy_min']:.3f}, {row['test_accuracy_max']:.3f}]"
                    if "test_accuracy_mean" in row else "-")
        lines.append(f"{row['task']:<15} {row['length']:>4}  {row['cell']:<5} {row['metric']:<30} {value:<27} "
                     f"{row['baseline']:>8.4f}  {verdict:<16} {accuracy}")
    return "\n".join(lines)


def plot(run_dir: str | pathlib.Path) -> list[pathlib.Path]:
    """Draws `long_range.png` and `training_curves.png` from `<run_dir>/metrics.json`; returns their paths."""
    run_dir = pathlib.Path(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    figures = [("long_range.png", metric_vs_length_figure(metrics)), ("training_curves.png", training_figure(metrics))]
    return [save_figure_atomic(fig, run_dir / name, dpi=120) for name, fig in figures]


def _label(metrics: Mapping, cell: str) -> str:
    return metrics["cell_descriptions"].get(cell, cell)


def metric_vs_length_figure(metrics: Mapping) -> Figure:
    """One panel per task: final test metric / memoryless baseline vs T per cell (mean, min-max band over
    seeds); 1 is the baseline (the copy task's baseline falls like 1/(T + 20), so ratios compare across T)."""
    tasks = metrics["tasks"]
    fig = Figure(figsize=(5.2 * len(tasks), 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(tasks)))
    lengths = np.asarray(metrics["lengths"])
    for ax, task in zip(axes, tasks):
        base = np.asarray([metrics["baselines"][task][str(t)] for t in lengths], float)
        for cell in metrics["cells"]:
            values = np.asarray([metrics["runs"][task][str(t)][cell]["test_metric"] for t in lengths], float)
            values = values / base[:, None]
            color = COLORS.get(cell)
            ax.plot(lengths, values.mean(axis=1), "o-", color=color, label=_label(metrics, cell))
            ax.fill_between(lengths, values.min(axis=1), values.max(axis=1), color=color, alpha=0.2, linewidth=0)
        ax.axhline(1.0, color="k", ls="--", lw=1.2, label="memoryless baseline")
        ax.axhline(BEATS_BASELINE, color="k", ls=":", lw=0.8, label=f"{BEATS_BASELINE} x baseline")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(lengths, [str(t) for t in lengths])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(f"{metrics['metric_names'][task]} / baseline")
        values = ", ".join(dict.fromkeys(f"{b:.3g}" for b in base))  # each distinct value once
        ax.set_title(f"{TASK_TITLES.get(task, task)} (baseline {values})", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Long-range memory after {metrics['train_steps']} Adam steps, H = {metrics['hidden_size']}\n"
                 f"({len(metrics['seeds'])} seeds: mean, band = min-max)", fontsize=11)
    return fig


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, values.shape[-1]))
    kernel = np.ones(window) / window
    return np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), -1, values)


def training_figure(metrics: Mapping) -> Figure:
    """Rows: tasks; columns: T. Training loss (running mean, per seed) per cell, and the baseline."""
    tasks, lengths = metrics["tasks"], metrics["lengths"]
    fig = Figure(figsize=(4.2 * len(lengths), 3.3 * len(tasks)), layout="constrained")
    axes = np.asarray(fig.subplots(len(tasks), len(lengths), squeeze=False))
    for i, task in enumerate(tasks):
        for j, length in enumerate(lengths):
            ax = axes[i, j]
            for cell in metrics["cells"]:
                loss = _smooth(np.asarray(metrics["runs"][task][str(length)][cell]["loss"], float), SMOOTHING)
                steps = np.arange(loss.shape[-1]) + (min(SMOOTHING, len(loss[0])) - 1)
                for k, curve in enumerate(loss):
                    ax.plot(steps, curve, color=COLORS.get(cell), lw=1,
                            label=_label(metrics, cell) if k == 0 else None)
            ax.axhline(metrics["baselines"][task][str(length)], color="k", ls="--", lw=1, label="baseline")
            ax.set_yscale("log")
            ax.set_title(f"{TASK_TITLES.get(task, task)}, T = {length}", fontsize=10)
            ax.grid(alpha=0.3)
            if i == len(tasks) - 1:
                ax.set_xlabel("Adam step")
            if j == 0:
                ax.set_ylabel(f"training loss (mean of {SMOOTHING} steps)", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    return fig

