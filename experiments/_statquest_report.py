"""What `experiments.statquest` prints, summarises and draws: text tables, summary.json, PNG plots.

The plots are drawn from `metrics.json` alone (`plot(run_dir)`), with Matplotlib's
object-oriented API (a bare `Figure`, rendered by the Agg backend), so importing this module
never touches pyplot's global state and a run can be re-plotted without recomputing it.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from experiments._results import read_json, save_figure_atomic

Table = Mapping[str, Sequence[float]]
"""gate -> (weight on h, weight on x, bias), in the video's gate order."""

_PARTS = ("weight on h", "weight on x", "bias")
_DAY_COLUMNS = (  # header, key in metrics.json, format
    ("day", None, "{:>3d}"),
    ("input", "x", "{:>5.2f}"),
    ("forget gate %", "forget_gate", "{:>13.2f}"),
    ("input gate %", "input_gate", "{:>12.2f}"),
    ("candidate", "candidate", "{:>10.6f}"),
    ("output gate %", "output_gate", "{:>13.2f}"),
    ("long-term c", "long_term_memory", "{:>11.6f}"),
    ("short-term h", "short_term_memory", "{:>12.6f}"),
)
_PERCENT = {"forget_gate", "input_gate", "output_gate"}


def day_table(title: str, days: Mapping[str, Sequence[float]], target: float) -> str:
    """One company's internals day by day, ending with its day-5 prediction against the target.

    Args:
        title: the first line.
        days: one company's entry of `statquest.day_by_day`.
        target: the day-5 value the unit should predict.
    """
    widths = [max(len(header), len(fmt.format(0) if key is None else fmt.format(0.0)))
              for header, key, fmt in _DAY_COLUMNS]
    lines = [title, "  ".join(header.rjust(width) for (header, _, _), width in zip(_DAY_COLUMNS, widths))]
    for day in range(len(days["x"])):
        cells = []
        for (_, key, fmt), width in zip(_DAY_COLUMNS, widths):
            value = day + 1 if key is None else days[key][day] * (100 if key in _PERCENT else 1)
            cells.append(fmt.format(value).rjust(width))
        lines.append("  ".join(cells))
    prediction = days["short_term_memory"][-1]
    lines.append(f"prediction for day 5 (short-term memory after day 4): {prediction:.6f}, "
                 f"target {target:g}, error {prediction - target:+.6f}")
    return "\n".join(lines)


def weights_table(learned: Table, video: Table, epochs: int) -> str:
    """The learned weights beside the video's, gate by gate."""
    lines = [f"Learned after {epochs} epochs from the seed-42 weights, beside the video's table:",
             f"{'':<10}" + "".join(f"{part:^20}" for part in _PARTS),
             f"{'gate':<10}" + f"{'learned':>10}{'video':>8}  " * 3]
    for gate in video:
        lines.append(f"{gate:<10}" + "".join(f"{learned[gate][n]:>10.4f}{video[gate][n]:>8.2f}  " for n in range(3)))
    lines = [line.rstrip() for line in lines]
    return "\n".join(lines)


def summary(learned: Table, video: Table, initial: Table, learned_days: Mapping, video_days: Mapping,
            targets: Mapping[str, float]) -> dict:
    """The run's summary.json: predictions, weights, and how close the learned ones come."""
    differences = {(gate, n): abs(learned[gate][n] - video[gate][n]) for gate in video for n in range(3)}
    (gate, n), largest = max(differences.items(), key=lambda item: item[1])
    matches = sum(abs(round(learned[g][k], 2) - video[g][k]) < 1e-9 for g, k in differences)
    as_dict = lambda table: {g: dict(zip(("weight_on_h", "weight_on_x", "bias"), table[g])) for g in table}
    final = lambda days: {company: days[company]["short_term_memory"][-1] for company in days}
    return {
        "targets": dict(targets),
        "predictions": {"learned": final(learned_days), "video": final(video_days)},
        "learned_weights": as_dict(learned),
        "video_weights": as_dict(video),
        "initial_weights": as_dict(initial),
        "max_abs_difference_from_video": largest,
        "max_abs_difference_at": f"{gate} gate, {_PARTS[n]}",
        "weights_rounding_to_video_table": matches,
        "weights_compared": len(differences),
    }


def closeness(summary_json: Mapping) -> str:
    """One line on how close the learned weights come to the video's."""
    s = summary_json
    return (f"max |learned - video| = {s['max_abs_difference_from_video']:.4f} "
            f"({s['max_abs_difference_at']}); rounded to 2 decimals, "
            f"{s['weights_rounding_to_video_table']} of {s['weights_compared']} learned weights "
            "equal the video's table")


def predictions(summary_json: Mapping) -> str:
    """The day-5 predictions after training, beside those of the video's weights."""
    video_header = "video's weights"
    lines = [f"{'Day-5 predictions':<18}{'learned':>10}{video_header:>18}{'target':>8}"]
    for company, target in summary_json["targets"].items():
        learned = summary_json["predictions"]["learned"][company]
        video = summary_json["predictions"]["video"][company]
        lines.append(f"{'  Company ' + company:<18}{learned:>10.6f}{video:>18.6f}{target:>8g}")
    return "\n".join(lines)


def plot(run_dir: str | pathlib.Path) -> list[pathlib.Path]:
    """Draws the run's plots from its `metrics.json` alone, into the same folder.

    Returns:
        The paths written: `internals_video.png`, `internals_learned.png`, `loss.png`.
    """
    run_dir = pathlib.Path(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    paths = []
    for weights, label in (("video", "the video's weights"), ("learned", "the learned weights")):
        fig = _internals_figure(metrics["days"], metrics["internals"][weights], metrics["targets"], label)
        paths.append(save_figure_atomic(fig, run_dir / f"internals_{weights}.png", dpi=120))
    paths.append(save_figure_atomic(_loss_figure(metrics["training"]), run_dir / "loss.png", dpi=120))
    return paths


def _internals_figure(days: list[int], internals: Mapping, targets: Mapping, label: str) -> Figure:
    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, len(internals), sharex="col", squeeze=False)  # per-company x labels
    for column, (company, values) in enumerate(internals.items()):
        gates, memories = axes[0, column], axes[1, column]
        for key, name, color in (("forget_gate", "forget f: % long-term to remember", "tab:blue"),
                                 ("input_gate", "input i: % potential memory to remember", "tab:green"),
                                 ("output_gate", "output o: % potential short-term to output", "tab:red")):
            gates.plot(days, [100 * v for v in values[key]], "o-", color=color, label=name)
        gates.set_ylim(-5, 105)
        gates.set_ylabel("gate (%)")
        gates.set_title(f"Company {company} (day-5 target {targets[company]:g})")
        for key, name, style in (("candidate", "candidate g: potential long-term memory", "s--"),
                                 ("long_term_memory", "long-term memory c", "o-"),
                                 ("short_term_memory", "short-term memory h (output)", "^-")):
            memories.plot(days, values[key], style, label=name)
        memories.axhline(0, color="grey", linewidth=0.8)
        memories.set_ylabel("value")
        memories.set_xlabel("day (input x)")
        memories.set_xticks(days, [f"{d}\nx={x:g}" for d, x in zip(days, values["x"])])
        last = values["short_term_memory"][-1]
        memories.annotate(f"prediction for day 5: {last:.3f}", (days[-1], last), textcoords="offset points",
                          xytext=(-10, 12), ha="right")
        for ax in (gates, memories):
            ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="lower left", fontsize=8)
    axes[1, 0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"The StatQuest LSTM unit day by day, with {label}")
    return fig


def _loss_figure(training: Mapping) -> Figure:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.semilogy(training["epoch"], training["loss"], label="A + B", color="black")
    ax.semilogy(training["epoch"], training["loss_A"], label="Company A", alpha=0.7)
    ax.semilogy(training["epoch"], training["loss_B"], label="Company B", alpha=0.7)
    ax.set_xlabel("epoch (one Adam step on A, then one on B)")
    ax.set_ylabel("squared error of the day-5 prediction")
    ax.set_title("Training from the seed-42 weights")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig
