"""The StatQuest experiment, its generated CLI and its atomic result files."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Literal

import numpy as np
import pytest

from experiments import statquest
from experiments._config_cli import build_parser, parse_config
from experiments._results import make_run_dir, save_figure_atomic, write_json_atomic

# DESIGN.md §6, typed in again here so that a typo in the experiment's constants is caught.
VIDEO_TABLE = {  # gate: (weight on h, weight on x, bias)
    "forget": (2.70, 1.63, 1.62),
    "input": (2.00, 1.65, 0.62),
    "candidate": (1.41, 0.94, -0.32),
    "output": (4.38, -0.19, 0.59),
}
COMPANY_A, COMPANY_B = [0.0, 0.5, 0.25, 1.0], [1.0, 0.5, 0.25, 1.0]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def reference_days(table, inputs):
    """The LSTM equations in plain Python floats (float64), one day at a time."""

    def sigmoid(z):
        return 1.0 / (1.0 + math.exp(-z))

    def pre_activation(gate, x, h):
        weight_on_h, weight_on_x, bias = table[gate]
        return weight_on_h * h + weight_on_x * x + bias

    h = c = 0.0
    days = {key: [] for key in ("x", "forget_gate", "input_gate", "candidate", "output_gate",
                                "long_term_memory", "short_term_memory")}
    for x in inputs:
        f = sigmoid(pre_activation("forget", x, h))
        i = sigmoid(pre_activation("input", x, h))
        g = math.tanh(pre_activation("candidate", x, h))
        o = sigmoid(pre_activation("output", x, h))
        c = f * c + i * g
        h = o * math.tanh(c)
        for key, value in zip(days, (x, f, i, g, o, c, h)):
            days[key].append(value)
    return days


# (a) the video's weights, day by day -------------------------------------------------------

def test_reference_implementation_gives_the_design_numbers():
    a, b = reference_days(VIDEO_TABLE, COMPANY_A), reference_days(VIDEO_TABLE, COMPANY_B)
    assert a["long_term_memory"][-1] == pytest.approx(0.015270, abs=1e-6)
    assert a["short_term_memory"][-1] == pytest.approx(0.006393, abs=1e-6)
    assert b["long_term_memory"][-1] == pytest.approx(2.409093, abs=1e-6)
    assert b["short_term_memory"][-1] == pytest.approx(0.969393, abs=1e-6)


@pytest.mark.parametrize("company, inputs", [("A", COMPANY_A), ("B", COMPANY_B)])
def test_day_by_day_internals_match_the_plain_python_equations(company, inputs):
    got = statquest.day_by_day(statquest.params_from_table(VIDEO_TABLE))[company]
    want = reference_days(VIDEO_TABLE, inputs)
    assert set(got) == set(want)
    for key in want:
        assert len(got[key]) == 4, key
        for day, (g, w) in enumerate(zip(got[key], want[key]), start=1):
            assert g == pytest.approx(w, abs=2e-6), f"company {company}, day {day}, {key}"


def test_experiment_constants_are_the_design_numbers():
    assert statquest.VIDEO_WEIGHTS == VIDEO_TABLE
    assert statquest.COMPANIES == {"A": (tuple(COMPANY_A), 0.0), "B": (tuple(COMPANY_B), 1.0)}
    round_trip = statquest.table_from_params(statquest.params_from_table(VIDEO_TABLE))
    assert round_trip.keys() == VIDEO_TABLE.keys()
    for gate, weights in VIDEO_TABLE.items():
        assert round_trip[gate] == pytest.approx(weights, rel=1e-6), gate


def test_params_layout_is_gate_order_i_f_g_o():
    params = statquest.params_from_table(VIDEO_TABLE)
    assert params.w_x.shape == (1, 4) and params.w_h.shape == (1, 4) and params.b.shape == (4,)
    np.testing.assert_allclose(params.w_h[0], [2.00, 2.70, 1.41, 4.38], rtol=1e-6)
    np.testing.assert_allclose(params.w_x[0], [1.65, 1.63, 0.94, -0.19], rtol=1e-6)
    np.testing.assert_allclose(params.b, [0.62, 1.62, -0.32, 0.59], rtol=1e-6)


def test_initial_table_pairs_the_seed_42_draws_by_gate():
    table = statquest.initial_table(statquest.SEED_42_WEIGHTS)
    assert table["forget"] == pytest.approx((0.3367, 0.1288, 0.0), abs=1e-4)
    assert table["input"] == pytest.approx((0.2345, 0.2303, 0.0), abs=1e-4)
    assert table["candidate"] == pytest.approx((-1.1229, -0.1863, 0.0), abs=1e-4)
    assert table["output"] == pytest.approx((2.2082, -0.6380, 0.0), abs=1e-4)


# (b) the whole experiment, briefly ------------------------------------------------------------

def test_main_writes_config_metrics_summary_and_plots(tmp_path, capsys):
    run_dir = statquest.main(["--epochs", "50", "--results-dir", tmp_path, "--run", "short",
                              "--no-progress", "--loss-curve-points", "10", "--epochs-per-chunk", "20"])
    assert run_dir == tmp_path / "statquest" / "short"
    assert sorted(os.listdir(run_dir)) == ["config.json", "internals_learned.png", "internals_video.png",
                                           "loss.png", "metrics.json", "summary.json"]
    for png in ("internals_learned.png", "internals_video.png", "loss.png"):
        assert (run_dir / png).read_bytes().startswith(PNG_MAGIC)

    config = json.loads((run_dir / "config.json").read_text())
    assert config["epochs"] == 50 and config["run"] == "short" and config["progress"] is False
    assert statquest.StatQuestConfig(**{**config, "initial_weights": tuple(config["initial_weights"])})

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["days"] == [1, 2, 3, 4] and metrics["targets"] == {"A": 0.0, "B": 1.0}
    for company, inputs in (("A", COMPANY_A), ("B", COMPANY_B)):
        want = reference_days(VIDEO_TABLE, inputs)
        got = metrics["internals"]["video"][company]
        for key in want:
            np.testing.assert_allclose(got[key], want[key], atol=2e-6, err_msg=f"{company} {key}")
        assert set(metrics["internals"]["learned"][company]) == set(want)
    training = metrics["training"]
    assert training["epoch"][0] == 1 and training["epoch"][-1] == 50 and len(training["epoch"]) == 10
    assert np.all(np.diff(training["epoch"]) > 0)
    np.testing.assert_allclose(training["loss"], np.add(training["loss_A"], training["loss_B"]), rtol=1e-6)
    assert all(math.isfinite(loss) and loss >= 0 for loss in training["loss"])

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs"] == 50 and summary["adam_steps"] == 100
    for company in ("A", "B"):
        assert summary["predictions"]["learned"][company] == metrics["internals"]["learned"][company][
            "short_term_memory"][-1]
    assert summary["predictions"]["video"]["A"] == pytest.approx(0.006393, abs=1e-6)
    assert summary["video_weights"]["output"] == {"weight_on_h": 4.38, "weight_on_x": -0.19, "bias": 0.59}
    assert summary["initial_weights"]["output"]["weight_on_h"] == pytest.approx(2.2082, abs=1e-4)
    differences = [abs(summary["learned_weights"][g][k] - summary["video_weights"][g][k])
                   for g in VIDEO_TABLE for k in ("weight_on_h", "weight_on_x", "bias")]
    assert summary["max_abs_difference_from_video"] == pytest.approx(max(differences))
    assert summary["weights_compared"] == 12

    printed = capsys.readouterr().out
    for number in ("0.015270", "0.006393", "2.409093"):
        assert number in printed
    assert "forget gate %" in printed and "learned" in printed


def test_main_refuses_an_existing_run_unless_overwrite(tmp_path):
    args = ["--epochs", "1", "--results-dir", str(tmp_path), "--run", "again", "--no-progress"]
    statquest.main(args)
    (tmp_path / "statquest" / "again" / "stale.txt").write_text("left over")
    with pytest.raises(FileExistsError, match="--overwrite"):
        statquest.main(args)
    statquest.main(args + ["--overwrite"])
    assert not (tmp_path / "statquest" / "again" / "stale.txt").exists()


def test_plot_reads_only_metrics_json(tmp_path):
    days = {key: [0.1, 0.2, 0.3, 0.4] for key in ("x", "forget_gate", "input_gate", "candidate", "output_gate",
                                                   "long_term_memory", "short_term_memory")}
    metrics = {"days": [1, 2, 3, 4], "targets": {"A": 0.0, "B": 1.0},
               "internals": {"video": {"A": days, "B": days}, "learned": {"A": days, "B": days}},
               "training": {"epoch": [1, 2, 3], "loss": [1.0, 0.5, 0.1], "loss_A": [0.5, 0.2, 0.05],
                            "loss_B": [0.5, 0.3, 0.05]}}
    write_json_atomic(tmp_path / "metrics.json", metrics)
    paths = statquest.plot(tmp_path)
    assert [p.name for p in paths] == ["internals_video.png", "internals_learned.png", "loss.png"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in paths)


# (c) the generated CLI ------------------------------------------------------------------------

def test_cli_parses_flags_into_the_config():
    weights = ["1", "2", "3", "4", "5", "6", "7", "-8.5"]
    config = parse_config(statquest.StatQuestConfig, ["--epochs", "7", "--learning-rate", "0.01",
                                                      "--initial-weights", *weights, "--no-progress",
                                                      "--run", "x", "--overwrite"])
    assert config == statquest.StatQuestConfig(epochs=7, learning_rate=0.01, run="x", overwrite=True,
                                               progress=False, initial_weights=(1, 2, 3, 4, 5, 6, 7, -8.5))
    assert isinstance(config.initial_weights, tuple)
    assert parse_config(statquest.StatQuestConfig, []) == statquest.StatQuestConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
    (["--epochs", "0"], "epochs must be a positive integer, got 0"),
    (["--learning-rate", "-1"], "learning_rate must be a positive finite number"),
    (["--learning-rate", "nan"], "learning_rate must be a positive finite number"),
    (["--initial-weights", "1", "2"], "initial_weights must be 8 finite numbers"),
    (["--initial-weights"], "argument --initial-weights: expected at least one argument"),
    (["--epochs", "3", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--epoch", "3"], "unrecognized arguments: --epoch 3"),  # no silent abbreviations
])
def test_cli_rejects_bad_values_with_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(statquest.StatQuestConfig, argv, prog="statquest")
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("usage: statquest") and message in error


def test_cli_help_lists_every_field_with_its_docstring(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(statquest.StatQuestConfig, ["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(statquest.StatQuestConfig):
        assert "--" + field.name.replace("_", "-") in text
    assert "Adam's learning rate" in text and "(default: 5000)" in text and "--no-progress" in text


@dataclasses.dataclass(frozen=True)
class _Example:
    """An example config.

    Attributes:
        size: how big, a description that goes on
            over two lines.
        mode: which mode.
        names: some names.
    """

    count: int
    size: int = 3
    ratio: float = dataclasses.field(default=0.5, metadata={"help": "a 50% ratio from metadata"})
    mode: Literal["fast", "slow"] = "fast"
    names: tuple[str, ...] = ("a",)
    sizes: tuple[int, ...] = (1, 2)
    label: str | None = None
    verbose: bool = False


def test_cli_supports_literals_tuples_optionals_bools_and_required_fields():
    config = parse_config(_Example, ["--count", "2", "--mode", "slow", "--names", "x", "y", "--sizes", "4",
                                     "--label", "run1", "--verbose"])
    assert config == _Example(count=2, mode="slow", names=("x", "y"), sizes=(4,), label="run1", verbose=True)
    assert parse_config(_Example, ["--count", "1"]) == _Example(count=1)
    help_text = " ".join(build_parser(_Example).format_help().split())
    assert "An example config." in help_text
    assert "how big, a description that goes on over two lines." in help_text
    assert "a 50% ratio from metadata" in help_text
    assert "--verbose, --no-verbose" in help_text


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: --count"),
    (["--count", "1", "--mode", "medium"], "invalid choice: 'medium'"),
    (["--count", "1", "--sizes", "1", "x"], "invalid int value: 'x'"),
])
def test_cli_rejects_missing_and_invalid_values(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_config(_Example, argv)
    assert message in capsys.readouterr().err


def test_cli_refuses_unsupported_field_types():
    @dataclasses.dataclass(frozen=True)
    class Unsupported:
        mapping: dict = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match="'mapping'"):
        build_parser(Unsupported)
    with pytest.raises(TypeError, match="dataclass"):
        build_parser(int)


# (d) atomic writes and run folders ------------------------------------------------------------

def test_write_json_atomic_keeps_the_old_file_when_serialisation_fails_midway(tmp_path):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"loss": [1.0, 0.5]})
    before = path.read_bytes()
    with pytest.raises(TypeError, match="object"):
        write_json_atomic(path, {"loss": list(range(100_000)), "then": object()})  # fails after many chunks
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_write_json_atomic_cleans_up_after_an_interrupt(tmp_path):
    class Interrupting:
        shape = ()

        def __array__(self, *args, **kwargs):
            raise KeyboardInterrupt

    path = tmp_path / "summary.json"
    write_json_atomic(path, {"ok": True})
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(path, {"values": list(range(10_000)), "interrupt": Interrupting()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert os.listdir(tmp_path) == ["summary.json"]


def test_write_json_atomic_converts_arrays_and_paths(tmp_path):
    import jax.numpy as jnp

    obj = {"np": np.arange(3), "jax": jnp.ones(2), "scalar": np.float32(0.5), "tuple": (1, 2),
           "path": tmp_path / "x", "nan": float("nan")}
    written = json.loads(write_json_atomic(tmp_path / "a.json", obj).read_text())
    assert written["np"] == [0, 1, 2] and written["jax"] == [1.0, 1.0] and written["scalar"] == 0.5
    assert written["tuple"] == [1, 2] and written["path"] == str(tmp_path / "x")
    assert written["nan"] is None  # strict JSON has no NaN: non-finite floats are written as null


def test_save_figure_atomic_writes_png_and_keeps_the_old_file_on_failure(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    path = save_figure_atomic(fig, tmp_path / "plot.png")
    before = path.read_bytes()
    assert before.startswith(PNG_MAGIC)

    class Failing:
        def savefig(self, file, **kwargs):
            file.write(b"half a picture")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_figure_atomic(Failing(), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["plot.png"]


def test_make_run_dir(tmp_path):
    first, second = make_run_dir(tmp_path, "exp"), make_run_dir(tmp_path, "exp")
    assert first.parent == second.parent == tmp_path / "exp" and first != second
    assert first.name.endswith("Z") and second.name.startswith(first.name[:8])
    named = make_run_dir(tmp_path, "exp", "mine")
    assert named == tmp_path / "exp" / "mine" and named.is_dir() and not any(named.iterdir())
    with pytest.raises(FileExistsError, match="already exists"):
        make_run_dir(tmp_path, "exp", "mine")
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError, match="plain folder name"):
            make_run_dir(tmp_path, "exp", bad)


# (e) training -----------------------------------------------------------------------------------

def test_training_in_chunks_equals_training_in_one_scan():
    initial = statquest.params_from_table(statquest.initial_table(statquest.SEED_42_WEIGHTS))
    chunked, chunked_losses = statquest.train(initial, statquest.StatQuestConfig(epochs=30, epochs_per_chunk=7,
                                                                                 progress=False))
    whole, whole_losses = statquest.train(initial, statquest.StatQuestConfig(epochs=30, epochs_per_chunk=30,
                                                                             progress=False))
    assert chunked_losses.shape == whole_losses.shape == (30, 2)
    np.testing.assert_allclose(chunked_losses, whole_losses, rtol=1e-6)
    for a, b in zip(chunked, whole):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_full_training_reproduces_the_video_weights():
    """5000 epochs take about a second on a CPU. Observed: every learned weight rounds to the
    video's table at 2 decimals; the largest difference is 0.0048 (output gate, weight on h)."""
    initial = statquest.params_from_table(statquest.initial_table(statquest.SEED_42_WEIGHTS))
    learned, losses = statquest.train(initial, statquest.StatQuestConfig(progress=False))
    table = statquest.table_from_params(learned)
    for gate, video in VIDEO_TABLE.items():
        for part, got, want in zip(("weight on h", "weight on x", "bias"), table[gate], video):
            assert abs(got - want) < 0.005, f"{gate} gate, {part}: learned {got:.4f}, video {want}"
            assert round(got, 2) == pytest.approx(want), f"{gate} gate, {part}: learned {got:.4f}"
    assert losses.shape == (5000, 2) and losses[-1].sum() < 1e-3 < losses[0].sum()
    days = statquest.day_by_day(learned)
    assert days["A"]["short_term_memory"][-1] == pytest.approx(0.0, abs=0.01)
    assert days["B"]["short_term_memory"][-1] == pytest.approx(1.0, abs=0.035)
