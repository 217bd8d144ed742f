"""What `experiments.stocks` summarises, prints and draws: summary.json, the error table, predictions.png.

The plot is drawn from `metrics.json` alone (`plot(run_dir)`), with bare Matplotlib `Figure`s
(Agg backend), so a run can be re-plotted without retraining.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping

import matplotlib.dates as mdates
import numpy as np
from matplotlib.figure import Figure

from experiments._results import read_json, save_figure_atomic

COLORS = {"lstm": "tab:blue", "rnn_tanh": "tab:red", "baseline": "tab:gray"}

DEFINITIONS = {
    "prices": "monthly closing price in US dollars (vega_datasets stocks), one per month of `dates`",
    "splits": "the first train_months months are training, the next validation_months validation, the last "
              "test_months test (lj.chronological_split); the normaliser is fitted on the training months only",
    "windows": "input: the `window` normalised months before the target month; a window belongs to the part of "
               "its target month, so every validation and test month is predicted exactly once",
    "test_predictions": "per seed and test month, in dollars (normalizer.inverse of the model's output), from the "
                        "parameters with the lowest validation MSE over steps 0..steps",
    "baseline": "last-value forecast: next month's price = this month's price",
    "test_rmse": "root mean squared error over the test months, in dollars",
    "test_mae": "mean absolute error over the test months, in dollars",
    "validation_rmse": "RMSE over the validation months, in dollars, of the kept (validation-best) parameters",
    "best_step": "the Adam step whose parameters were kept (0: the initial ones)",
    "train_loss": "full-batch training MSE (normalised units) before each step",
    "validation_loss": "validation MSE (normalised units) at steps 0..steps",
    "null": "a number that was not finite (NaN or Infinity: a diverged seed); strict JSON has neither",
}


def _spread(values, prefix: str) -> dict[str, float]:
    values = np.asarray(values, float)
    return {f"{prefix}_mean": float(np.mean(values)), f"{prefix}_min": float(np.min(values)),
            f"{prefix}_max": float(np.max(values))}


def summary(metrics: Mapping) -> dict:
    """The run's summary.json, from metrics.json: one row per (symbol, model) with the baseline first."""
    rows = []
    beating_pairs = 0
    for symbol in metrics["symbols"]:
        s = metrics["series"][symbol]
        base = s["baseline"]
        test_span = f"{s['test_dates'][0]}..{s['test_dates'][-1]}"
        rows.append({"symbol": symbol, "model": "last_value", "test_span": test_span, "test_months": s["test_months"],
                     "test_rmse_mean": base["test_rmse"], "test_rmse_min": base["test_rmse"],
                     "test_rmse_max": base["test_rmse"], "test_mae_mean": base["test_mae"],
                     "test_mae_min": base["test_mae"], "test_mae_max": base["test_mae"], "rmse_vs_baseline": 1.0})
        for model in metrics["models"]:
            m = s["models"][model]
            rmse = np.asarray(m["test_rmse"], float)
            beating = int(np.sum(rmse < base["test_rmse"]))
            beating_pairs += int(np.mean(rmse) < base["test_rmse"])
            rows.append({"symbol": symbol, "model": model, "test_span": test_span, "test_months": s["test_months"],
                         **_spread(m["test_rmse"], "test_rmse"), **_spread(m["test_mae"], "test_mae"),
                         "rmse_vs_baseline": float(np.mean(rmse) / base["test_rmse"]),
                         "seeds_beating_baseline": beating,
                         "best_step_mean": float(np.mean(np.asarray(m["best_step"], float)))})
    pairs = len(metrics["symbols"]) * len(metrics["models"])
    return {"seeds": len(metrics["seeds"]), "window": metrics["window"], "hidden_size": metrics["hidden_size"],
            "steps": metrics["steps"], "learning_rate": metrics["learning_rate"],
            "normalization": metrics["normalization"], "residual": metrics["residual"], "rows": rows,
            "pairs_beating_baseline": beating_pairs, "pairs": pairs}


def _number(value: float | None, fmt: str) -> str:
    """`value` formatted with `fmt`; None (a non-finite number, null in the JSON) as nan."""
    return f"{math.nan if value is None else value:{fmt}}"


def _range(center: float | None, low: float | None, high: float | None) -> str:
    return f"{_number(center, '.2f')} [{_number(low, '.2f')}, {_number(high, '.2f')}]"


def table(summary_json: Mapping) -> str:
    """The test error table, one line per (symbol, model), and how often the models beat the baseline."""
    s = summary_json
    target = "change from the last price" if s["residual"] else "price"
    lines = [f"Next month's price from the last {s['window']} months: LSTM and tanh RNN (H = {s['hidden_size']}, "
             f"{s['steps']} full-batch Adam steps, lr {s['learning_rate']:g}, validation-best kept; predicting the "
             f"{target}) vs the last value.",
             f"Test errors in dollars, mean [min, max] over {s['seeds']} seeds; ratio = mean RMSE / last-value RMSE.",
             f"{'symbol':<7}{'test months':<22}{'model':<11}{'RMSE $':<26}{'MAE $':<26}{'ratio':>6}"
             f"{'seeds beating last value':>26}"]
    for row in s["rows"]:
        span = f"{row['test_span']} ({row['test_months']})"
        rmse = _range(row["test_rmse_mean"], row["test_rmse_min"], row["test_rmse_max"])
        mae = _range(row["test_mae_mean"], row["test_mae_min"], row["test_mae_max"])
        if row["model"] == "last_value":
            rmse, mae, beats = f"{row['test_rmse_mean']:.2f}", f"{row['test_mae_mean']:.2f}", "-"
        else:
            beats = f"{row['seeds_beating_baseline']}/{s['seeds']}"
        lines.append(f"{row['symbol']:<7}{span:<22}{row['model']:<11}{rmse:<26}{mae:<26}"
                     f"{_number(row['rmse_vs_baseline'], '>6.2f')}{beats:>26}")
    lines.append(f"Mean test RMSE below the last value's in {s['pairs_beating_baseline']} of {s['pairs']} "
                 "(symbol, model) pairs.")
    return "\n".join(line.rstrip() for line in lines)


def plot(run_dir: str | pathlib.Path) -> list[pathlib.Path]:
    """Draws `predictions.png` from the run's `metrics.json` alone, into the same folder; returns its path."""
    run_dir = pathlib.Path(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    return [save_figure_atomic(predictions_figure(metrics), run_dir / "predictions.png", dpi=110)]


def _months(dates) -> np.ndarray:
    return np.asarray(dates, dtype="datetime64[M]")


def predictions_figure(metrics: Mapping) -> Figure:
    """Per symbol: the real price series, the split boundaries, and each model's test predictions (mean over
    seeds, band min..max) with the last-value baseline; the second column zooms on the test months."""
    symbols = metrics["symbols"]
    fig = Figure(figsize=(12, 2.6 * len(symbols)), layout="constrained")
    axes = fig.subplots(len(symbols), 2, squeeze=False, width_ratios=(2, 1))
    for row, symbol in enumerate(symbols):
        s = metrics["series"][symbol]
        dates, prices, test_dates = _months(s["dates"]), np.asarray(s["prices"]), _months(s["test_dates"])
        for col, ax in enumerate(axes[row]):
            if col == 0:
                ax.plot(dates, prices, color="black", lw=1.2, label="real price")
                for boundary in (s["train_months"], s["train_months"] + s["validation_months"]):
                    ax.axvline(dates[boundary], color="0.6", ls=":", lw=1)
                ax.axvspan(test_dates[0], dates[-1], color="0.92", zorder=0)
                ax.set_title(f"{symbol}: train | validation | test (shaded)", fontsize=10)
            else:
                context = s["train_months"] + s["validation_months"] - 3
                ax.plot(dates[context:], prices[context:], color="black", lw=1.5, marker=".", label="real price")
                ax.set_title(f"{symbol}: test months", fontsize=10)
            ax.plot(test_dates, s["baseline"]["test_predictions"], color=COLORS["baseline"], ls="--", lw=1.2,
                    label=f"last value (RMSE ${s['baseline']['test_rmse']:.2f})")
            for model in metrics["models"]:
                m = s["models"][model]
                predictions = np.asarray(m["test_predictions"], float)  # null (a diverged seed) -> nan
                rmse = np.asarray(m["test_rmse"], float)
                color = COLORS.get(model)
                ax.plot(test_dates, predictions.mean(axis=0), color=color, lw=1.4,
                        label=f"{metrics['model_descriptions'][model]} (RMSE ${np.mean(rmse):.2f})")
                ax.fill_between(test_dates, predictions.min(axis=0), predictions.max(axis=0), color=color, alpha=0.2,
                                lw=0)
            ax.set_ylabel("price ($)")
            locator = mdates.AutoDateLocator(maxticks=6)
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
            ax.tick_params(labelsize=8)
        axes[row][1].legend(fontsize=7, loc="best")
    fig.suptitle(f"Next month's price on the test months: mean over {len(metrics['seeds'])} seeds (band: min..max), "
                 f"window {metrics['window']}", fontsize=11)
    return fig
