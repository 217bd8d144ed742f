"""What `experiments.vanishing_gradients` summarises, prints and draws: summary.json, text tables, PNGs.

The plots are drawn from `metrics.json` alone (`plot(run_dir)`), with Matplotlib's
object-oriented API (bare `Figure`s, rendered by the Agg backend), so a run can be re-plotted
without recomputing it and importing this module never touches pyplot's global state.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from experiments._results import read_json, save_figure_atomic

PHASES = ("init", "trained")

BEATS_BASELINE = 0.9
"""A seed "beats the baseline" when its test MSE is below this fraction of the memoryless MSE 1/6."""

RELATIVE_LABEL = r"$\|\partial L/\partial h_t\|\ /\ \|\partial L/\partial h_{T-1}\|$"

COLORS = {"rnn_tanh": "tab:red", "lstm_forget0": "tab:orange", "lstm_forget1": "tab:blue", "gru": "tab:green"}

DEFINITIONS = {
    "loss": "L = mean over the batch of (w·h_{T-1} + b - target)^2: a linear readout of the cell's last "
            "output, against the adding-problem target (Arjovsky et al. form)",
    "grad_h_norm": "per seed, shape (T,): ||dL/dh_t|| (Euclidean over units, total derivative), h_t being "
                   "the state after reading x_t (the output ys[t]; the LSTM's short-term memory), for each "
                   "sequence of the measuring batch, averaged over the batch; entry T-1 is the last state and "
                   "the distance back in time is d = T-1-t. Measured in float64 with lj.gradient_norms_over_time",
    "grad_c_norm": "LSTM only, like grad_h_norm for the long-term memory c",
    "ratio_first_last": "grad_h_norm[0] / grad_h_norm[T-1]: the gradient reaching the first state (d = T-1) "
                        "relative to the last state",
    "decay_rate": "lj.fit_log_decay(grad_h_norm).rate: slope of log||dL/dh|| per step back in time "
                  "(negative: vanishing; exp(rate) is the average factor per step)",
    "distance_to_1pct": "lj.distance_to_fraction(grad_h_norm, 0.01): the first distance d at which the norm "
                        "is below 1% of its value at the last state; null if it never is within T steps "
                        "(computed as Infinity; strict JSON has no Infinity)",
    "forget_gate_gain": "LSTM only, shape (T+1,): lj.forget_gate_gain(f) averaged over batch and units; "
                        "entry t is prod_{k=t}^{T-1} f_k",
    "forget_gain_step0_to_T": "LSTM only: forget_gate_gain[0], the long-term path's gain over the whole sequence",
    "phases": "init: the freshly drawn weights; trained: after train_steps Adam steps on the adding problem "
              "at T = train_length (every seed on its own batches), measured at every T",
    "training": "per seed and step: loss (before the update) and grad_norm (global norm, before clipping); "
                "test_mse on a fixed test batch at T = train_length, before and after training",
    "exploding": "a vanilla RNN with w_h = scale * orthogonal, measured at T = length and trained with Adam "
                 "with and without optax.clip_by_global_norm(clip_norm), from the same weights and batches",
}


def _geomean(values: Sequence[float]) -> float:
    values = np.asarray(values, float)
    if np.any(values <= 0):
        return 0.0
    return float(np.exp(np.mean(np.log(values))))


def _spread(values: Sequence[float], prefix: str) -> dict[str, float]:
    values = np.asarray(values, float)
    return {f"{prefix}_mean": float(np.mean(values)), f"{prefix}_std": float(np.std(values)),
            f"{prefix}_min": float(np.min(values)), f"{prefix}_max": float(np.max(values))}


def _distance_spread(distances: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean, min and max of the distances to 1% over the seeds whose gradient falls below 1% (None if none
    does), and `never`, the number of seeds whose gradient never does (Infinity, or null in the JSON)."""
    distances = np.asarray(distances, float)  # null -> nan
    reached = distances[np.isfinite(distances)]
    spread = ({"distance_to_1pct_mean": float(np.mean(reached)), "distance_to_1pct_min": float(np.min(reached)),
               "distance_to_1pct_max": float(np.max(reached))} if reached.size else
              dict.fromkeys(("distance_to_1pct_mean", "distance_to_1pct_min", "distance_to_1pct_max")))
    return {**spread, "distance_to_1pct_never": int(distances.size - reached.size)}


def summary(metrics: Mapping) -> dict:
    """The run's summary.json, computed from metrics.json: one row per (cell, T, phase), then training."""
    rows = []
    for cell in metrics["cells"]:
        for length in metrics["lengths"]:
            for phase in PHASES:
                m = metrics["gradients"][cell][str(length)][phase]
                ratio = np.asarray(m["ratio_first_last"], float)
                row = {"cell": cell, "length": length, "phase": phase, **_spread(m["decay_rate"], "decay_rate"),
                       "ratio_first_last_geomean": _geomean(ratio),
                       "ratio_first_last_min": float(np.min(ratio)), "ratio_first_last_max": float(np.max(ratio)),
                       **_distance_spread(m["distance_to_1pct"])}
                if "forget_gain_step0_to_T" in m:
                    row["forget_gain_step0_to_T_mean"] = float(np.mean(m["forget_gain_step0_to_T"]))
                rows.append(row)
    baseline = metrics["baseline_mse"]
    training = {}
    for cell in metrics["cells"]:
        t = metrics["training"][cell]
        training[cell] = {**_spread(t["test_mse"], "test_mse"), "test_mse_per_seed": t["test_mse"],
                          "test_mse_init_mean": float(np.mean(np.asarray(t["test_mse_init"], float))),
                          "seeds_beating_baseline": _beating(t["test_mse"], BEATS_BASELINE * baseline)}
    e = metrics["exploding"]
    exploding = {key: e[key] for key in ("activation", "scale", "clip_norm", "length")}
    exploding.update(ratio_first_last_per_seed=e["gradients"]["ratio_first_last"],
                     decay_rate_per_seed=e["gradients"]["decay_rate"])
    for run, r in e["runs"].items():
        exploding[run] = {"max_grad_norm_per_seed": [float(np.nanmax(np.asarray(g, float))) for g in r["grad_norm"]],
                          "non_finite_steps_per_seed": [int(np.sum(~np.asarray(f, bool))) for f in r["finite"]],
                          "test_mse_per_seed": r["test_mse"],
                          "seeds_beating_baseline": _beating(r["test_mse"], BEATS_BASELINE * baseline)}
    return {"init": metrics["init"], "hidden_size": metrics["hidden_size"], "seeds": len(metrics["seeds"]),
            "batch_size": metrics["batch_size"], "baseline_mse": baseline,
            "beats_baseline_below": BEATS_BASELINE * baseline,
            "train_length": metrics["train_length"], "train_steps": metrics["train_steps"],
            "learning_rate": metrics["learning_rate"], "gradient_table": rows, "training": training,
            "exploding": exploding}


def _beating(test_mse: Sequence[float | None], threshold: float) -> int:
    """Seeds whose test MSE is below `threshold` (a null, non-finite MSE is not)."""
    return int(np.sum(np.asarray(test_mse, float) < threshold))


def _number(value: float | None, fmt: str) -> str:
    """`value` formatted with `fmt`; None (a non-finite number, null in the JSON) as nan."""
    return f"{math.nan if value is None else value:{fmt}}"


def _range(center: float | None, low: float | None, high: float | None, fmt: str) -> str:
    return f"{_number(center, fmt)} [{_number(low, fmt)}, {_number(high, fmt)}]"


def _distance(row: Mapping) -> str:
    never = row["distance_to_1pct_never"]
    if never == 0:
        return _range(row["distance_to_1pct_mean"], row["distance_to_1pct_min"], row["distance_to_1pct_max"], ".1f")
    if row["distance_to_1pct_min"] is None:
        return "never"
    return f"min {row['distance_to_1pct_min']:.0f}; {never} seed{'s' if never > 1 else ''} never"


def gradient_table(summary_json: Mapping) -> str:
    """The (cell, T, phase) table: decay rate per step, ratio first/last, distance to 1%, forget-gate gain."""
    s = summary_json
    lines = [f"Gradient flow back through time: ||dL/dh_t|| (batch mean) relative to the last step; init preset "
             f"{s['init']!r}, hidden size {s['hidden_size']}, {s['seeds']} seeds, {s['batch_size']} sequences per T;",
             f"'trained' = after {s['train_steps']} Adam steps on the adding problem at T = {s['train_length']}. "
             "Spreads over seeds: decay rate mean ± std; ratio geometric mean [min, max]; distance mean [min, max].",
             f"{'cell':<13}{'T':>4}  {'phase':<8}{'decay rate/step':>17}  {'ratio first/last':<30}"
             f"{'distance to 1%':<24}{'LSTM gain prod f':>16}"]
    for row in s["gradient_table"]:
        rate = f"{_number(row['decay_rate_mean'], '+.3f')} ± {_number(row['decay_rate_std'], '.3f')}"
        ratio = _range(row["ratio_first_last_geomean"], row["ratio_first_last_min"], row["ratio_first_last_max"], ".1e")
        gain = _number(row["forget_gain_step0_to_T_mean"], ".1e") if "forget_gain_step0_to_T_mean" in row else "-"
        lines.append(f"{row['cell']:<13}{row['length']:>4}  {row['phase']:<8}{rate:>17}  {ratio:<30}"
                     f"{_distance(row):<24}{gain:>16}")
    return "\n".join(line.rstrip() for line in lines)


def training_table(summary_json: Mapping) -> str:
    """Per cell: test MSE at init and after training against the memoryless baseline."""
    s = summary_json
    lines = [f"Adding problem, T = {s['train_length']}: {s['train_steps']} Adam steps (lr {s['learning_rate']:g}); "
             f"test MSE (memoryless baseline {s['baseline_mse']:.3f}; 'beats' = below {s['beats_baseline_below']:.3f})",
             f"{'cell':<13}{'at init':>9}  {'trained: mean [min, max]':<28}{'seeds beating baseline':>22}"]
    for cell, t in s["training"].items():
        trained = _range(t["test_mse_mean"], t["test_mse_min"], t["test_mse_max"], ".3f")
        lines.append(f"{cell:<13}{_number(t['test_mse_init_mean'], '>9.3f')}  {trained:<28}"
                     f"{t['seeds_beating_baseline']:>18d}/{s['seeds']}")
    return "\n".join(lines)


def exploding_lines(summary_json: Mapping) -> str:
    """What the exploding RNN did, with and without clipping."""
    e, s = summary_json["exploding"], summary_json
    ratios = ", ".join(_number(r, ".1e") for r in e["ratio_first_last_per_seed"])
    rates = ", ".join(_number(r, "+.3f") for r in e["decay_rate_per_seed"])
    lines = [f"Exploding case: {e['activation']} RNN, w_h = {e['scale']:g} × orthogonal, T = {e['length']}: "
             f"ratio first/last per seed {ratios} (rate per step {rates})"]
    clipped = f"Adam after clip_by_global_norm({e['clip_norm']:g})"
    for run, label in (("no_clip", "Adam, no clipping"), ("clip", clipped)):
        r = e[run]
        norms = ", ".join(_number(g, ".1e") for g in r["max_grad_norm_per_seed"])
        mses = ", ".join(_number(m, ".3f") for m in r["test_mse_per_seed"])
        lines.append(f"  {label:<38} max grad norm per seed {norms}; non-finite steps "
                     f"{sum(r['non_finite_steps_per_seed'])}; test MSE {mses} "
                     f"({r['seeds_beating_baseline']}/{s['seeds']} beat the baseline)")
    return "\n".join(lines)


# Plots, from metrics.json alone ---------------------------------------------------------------

def plot(run_dir: str | pathlib.Path) -> list[pathlib.Path]:
    """Draws the run's plots from its `metrics.json` alone, into the same folder.

    Returns:
        The paths written: `gradient_vs_distance.png`, `gradient_at_step0_vs_length.png`,
        `exploding.png`, `training_loss.png` and `readme_figure.png` (a small copy of the first).
    """
    run_dir = pathlib.Path(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    figures = [("gradient_vs_distance.png", gradient_vs_distance_figure(metrics), 110),
               ("gradient_at_step0_vs_length.png", step0_vs_length_figure(metrics), 110),
               ("exploding.png", exploding_figure(metrics), 110),
               ("training_loss.png", training_loss_figure(metrics), 110),
               ("readme_figure.png", gradient_vs_distance_figure(metrics, figsize=(8.5, 3.6), compact=True), 85)]
    return [save_figure_atomic(fig, run_dir / name, dpi=dpi) for name, fig, dpi in figures]


def _relative_by_distance(curves: Sequence[Sequence[float]]) -> np.ndarray:
    """Per seed, norms relative to the last step, reordered by distance d = 0..T-1; non-positive -> nan."""
    curves = np.asarray(curves, float)
    relative = curves[:, ::-1] / curves[:, -1:]
    return np.where(relative > 0, relative, np.nan)


def _label(metrics: Mapping, cell: str) -> str:
    return metrics.get("cell_descriptions", {}).get(cell, cell)


def gradient_vs_distance_figure(metrics: Mapping, length: int | None = None, figsize=(12, 4.8),
                                compact: bool = False) -> Figure:
    """Relative ‖∂L/∂h_t‖ against distance back in time, at init and after training, at one T (default the largest)."""
    length = max(metrics["lengths"]) if length is None else length
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, phase in zip(axes, PHASES, strict=True):
        for cell in metrics["cells"]:
            relative = _relative_by_distance(metrics["gradients"][cell][str(length)][phase]["grad_h_norm"])
            distance = np.arange(relative.shape[1])
            center = np.exp(np.nanmean(np.log(relative), axis=0))
            color = COLORS.get(cell)
            ax.semilogy(distance, center, color=color, label=_label(metrics, cell))
            ax.fill_between(distance, np.nanmin(relative, axis=0), np.nanmax(relative, axis=0), color=color,
                            alpha=0.2, linewidth=0)
        ax.grid(alpha=0.3, which="major")
        ax.set_xlabel("distance back in time d = T-1-t (steps)")
        ax.set_title("at initialisation" if phase == "init" else
                     f"after {metrics['train_steps']} Adam steps (adding problem, T = {metrics['train_length']})",
                     fontsize=10)
    axes[0].set_ylabel(RELATIVE_LABEL)
    axes[0].legend(fontsize=8, loc="lower left")
    title = (f"Gradient reaching back d steps, T = {length} (H = {metrics['hidden_size']}, init {metrics['init']!r}, "
             f"{len(metrics['seeds'])} seeds")
    title += ")" if compact else ": line geometric mean, band min–max)"
    fig.suptitle(title, fontsize=11)
    return fig


def step0_vs_length_figure(metrics: Mapping) -> Figure:
    """Ratio first/last against T, per cell, at init and after training (log scale)."""
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    lengths = metrics["lengths"]
    for ax, phase in zip(axes, PHASES, strict=True):
        for cell in metrics["cells"]:
            ratios = np.array([metrics["gradients"][cell][str(t)][phase]["ratio_first_last"] for t in lengths], float)
            ratios = np.where(ratios > 0, ratios, np.nan)
            center = np.exp(np.nanmean(np.log(ratios), axis=1))
            low, high = np.nanmin(ratios, axis=1), np.nanmax(ratios, axis=1)
            ax.errorbar(lengths, center, yerr=[center - low, high - center], fmt="o-", capsize=3,
                        color=COLORS.get(cell), label=_label(metrics, cell))
        ax.set_yscale("log")
        ax.set_xticks(lengths)
        ax.grid(alpha=0.3)
        ax.set_xlabel("sequence length T")
        ax.set_title("at initialisation" if phase == "init" else f"after {metrics['train_steps']} Adam steps",
                     fontsize=10)
    axes[0].set_ylabel(r"$\|\partial L/\partial h_0\|\ /\ \|\partial L/\partial h_{T-1}\|$")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(f"The gradient reaching the first step shrinks as T grows (geometric mean over "
                 f"{len(metrics['seeds'])} seeds, bars min–max)", fontsize=11)
    return fig


def exploding_figure(metrics: Mapping) -> Figure:
    """The exploding RNN: its gradient growing back in time, and training with and without clipping."""
    e = metrics["exploding"]
    fig = Figure(figsize=(14, 4.3), layout="constrained")
    grads, norms, losses = fig.subplots(1, 3)
    relative = _relative_by_distance(e["gradients"]["grad_h_norm"])
    for seed, curve in zip(metrics["seeds"], relative, strict=True):
        grads.semilogy(np.arange(curve.size), curve, label=f"seed {seed}")
    grads.axhline(1.0, color="grey", linewidth=0.8)
    if e["activation"] == "linear":  # ∂h_T/∂h_t = (w_hᵀ)^d, and scale × orthogonal scales every vector by scale^d
        distance = np.arange(relative.shape[1])
        grads.semilogy(distance, e["scale"] ** distance, "k:", linewidth=1.5, label=f"{e['scale']:g}^d")
    grads.set_xlabel("distance back in time d = T-1-t (steps)")
    grads.set_ylabel(RELATIVE_LABEL)
    coincide = np.allclose(relative, relative[:1], rtol=1e-3)
    grads.set_title(f"at initialisation, T = {e['length']}" + (" (the seeds coincide)" if coincide else ""),
                    fontsize=10)
    grads.legend(fontsize=8)
    runs = (("no_clip", "Adam", "tab:red"), ("clip", f"clip_by_global_norm({e['clip_norm']:g}) + Adam", "tab:blue"))
    for run, label, color in runs:
        r = e["runs"][run]
        for index, (g, loss) in enumerate(zip(r["grad_norm"], r["loss"], strict=True)):
            steps = np.arange(1, len(g) + 1)
            g, loss = np.asarray(g, float), np.asarray(loss, float)  # null (diverged) -> nan, a gap
            norms.semilogy(steps, g, color=color, alpha=0.5, linewidth=0.8, label=label if index == 0 else None)
            losses.semilogy(steps, loss, color=color, alpha=0.5, linewidth=0.8, label=label if index == 0 else None)
    norms.axhline(e["clip_norm"], color="black", linestyle=":", linewidth=1, label=f"clip norm {e['clip_norm']:g}")
    losses.axhline(metrics["baseline_mse"], color="black", linestyle="--", linewidth=1,
                   label=f"memoryless baseline {metrics['baseline_mse']:.3f}")
    norms.set_ylabel("global gradient norm (before clipping)")
    losses.set_ylabel("training loss (MSE)")
    for ax in (norms, losses):
        ax.set_xlabel("Adam step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    norms.set_title(f"gradient norm per step, {len(metrics['seeds'])} seeds", fontsize=10)
    losses.set_title(f"loss per step, adding problem T = {e['length']}", fontsize=10)
    rate = float(np.mean(np.asarray(e["gradients"]["decay_rate"], float)))
    fig.suptitle(f"Exploding gradients: {e['activation']} RNN with w_h = {e['scale']:g} × orthogonal, "
                 f"H = {metrics['hidden_size']}: the gradient grows ×{math.exp(rate):.3g} per step back in time "
                 f"(mean fitted rate); training with and without clipping", fontsize=11)
    return fig


def training_loss_figure(metrics: Mapping) -> Figure:
    """Training loss per step, per cell (every seed), against the memoryless baseline."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    for cell in metrics["cells"]:
        for index, loss in enumerate(metrics["training"][cell]["loss"]):
            ax.semilogy(np.arange(1, len(loss) + 1), np.asarray(loss, float), color=COLORS.get(cell), alpha=0.6,
                        linewidth=0.8, label=_label(metrics, cell) if index == 0 else None)
    ax.axhline(metrics["baseline_mse"], color="black", linestyle="--", linewidth=1,
               label=f"memoryless baseline {metrics['baseline_mse']:.3f}")
    ax.set_xlabel("Adam step")
    ax.set_ylabel("training loss (MSE, fresh batch each step)")
    ax.set_title(f"Adding problem, T = {metrics['train_length']}, lr {metrics['learning_rate']:g}, "
                 f"{len(metrics['seeds'])} seeds per cell", fontsize=11)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig
