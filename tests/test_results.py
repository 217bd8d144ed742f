"""experiments._results writes strict JSON (non-finite floats as null), and every experiment's files are
strict JSON that its own summary and plots still read, nulls included."""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import _stocks_report, _vanishing_gradients_report, long_range, seeds_benchmark, statquest, stocks
from experiments import vanishing_gradients as vg
from experiments._results import to_strict_json, write_json_atomic


def strict_loads(text: str):
    """`json.loads` that refuses NaN, Infinity and -Infinity, as strict parsers (browsers, jq) do."""
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_floats_are_written_as_null(tmp_path):
    obj = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "ok": 1.5, "int": 3, "bool": True, "none": None,
           "np": np.array([1.0, np.nan, np.inf, -np.inf], np.float32), "jax": jnp.array([jnp.inf, 2.0]),
           "scalar": np.float64(np.inf), "scalar32": np.float32(-np.inf), "nested": [(math.nan, {"x": math.inf})]}
    written = strict_loads(write_json_atomic(tmp_path / "a.json", obj).read_text())
    assert written == {"nan": None, "inf": None, "-inf": None, "ok": 1.5, "int": 3, "bool": True, "none": None,
                       "np": [1.0, None, None, None], "jax": [None, 2.0], "scalar": None, "scalar32": None,
                       "nested": [[None, {"x": None}]]}
    assert to_strict_json({"a": (np.int64(2), np.bool_(False))}) == {"a": [2, False]}
    # readers turn nulls back into NaN
    assert np.isnan(np.asarray(written["np"], float)[1:]).all()


def test_to_strict_json_refuses_other_objects():
    with pytest.raises(TypeError, match="cannot write an object of type object as JSON"):
        to_strict_json({"a": [object()]})


EXPERIMENTS = {
    "statquest": (statquest.main, "--epochs 4 --loss-curve-points 4 --epochs-per-chunk 4"),
    "long_range": (long_range.main, "--tasks adding copy --cells lstm --lengths 3 --hidden-size 2 --seeds 2 "
                                    "--train-steps 2 --batch-size 4 --test-size 4"),
    "stocks": (stocks.main, "--symbols GOOG --models lstm --hidden-size 2 --seeds 2 --steps 2"),
    "vanishing_gradients": (vg.main, "--cells rnn_tanh lstm_forget1 --hidden-size 2 --seeds 2 --lengths 3 "
                                     "--batch-size 4 --train-steps 2 --train-length 3 --train-batch-size 4 "
                                     "--test-size 4"),
    "seeds_benchmark": (seeds_benchmark.main, "--seeds 2 --hidden-size 2 --length 3 --batch-size 2 --steps 2 "
                                              "--repeats 1"),
}


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_every_experiment_writes_strict_json(name, tmp_path, capsys):
    main, argv = EXPERIMENTS[name]
    run_dir = main(argv.split() + ["--run", "strict", "--no-progress", "--results-dir", str(tmp_path)])
    capsys.readouterr()
    files = sorted(run_dir.glob("*.json"))
    assert [f.name for f in files] == ["config.json", "metrics.json", "summary.json"]
    for file in files:
        strict_loads(file.read_text())


def _write_and_read(path, metrics):
    write_json_atomic(path / "metrics.json", metrics)
    return strict_loads((path / "metrics.json").read_text())


def test_vanishing_gradients_reads_nulls_where_numbers_were_not_finite(tmp_path):
    """A run where the distance to 1% is never reached and a training run diverged (Infinity and NaN, null in
    the JSON): the summary, the printed tables and every plot still work from metrics.json."""
    run_dir = vg.main(EXPERIMENTS["vanishing_gradients"][1].split() + ["--run", "nulls", "--no-progress",
                                                                       "--results-dir", str(tmp_path)])
    metrics = strict_loads((run_dir / "metrics.json").read_text())
    gradients = metrics["gradients"]["rnn_tanh"]["3"]["init"]
    gradients["distance_to_1pct"] = [math.inf, 1.0]
    metrics["gradients"]["lstm_forget1"]["3"]["trained"]["distance_to_1pct"] = [math.inf, math.inf]
    metrics["training"]["rnn_tanh"]["loss"][0][1] = math.nan
    metrics["training"]["rnn_tanh"]["test_mse"][0] = math.nan
    no_clip = metrics["exploding"]["runs"]["no_clip"]
    no_clip["loss"][1][1], no_clip["grad_norm"][1][1], no_clip["test_mse"][1] = math.inf, math.nan, math.nan
    metrics = _write_and_read(run_dir, metrics)
    assert metrics["gradients"]["rnn_tanh"]["3"]["init"]["distance_to_1pct"] == [None, 1.0]
    summary = _vanishing_gradients_report.summary(metrics)
    rows = {(r["cell"], r["phase"]): r for r in summary["gradient_table"]}
    assert rows["rnn_tanh", "init"]["distance_to_1pct_never"] == 1
    assert rows["lstm_forget1", "trained"]["distance_to_1pct_never"] == 2
    assert summary["training"]["rnn_tanh"]["seeds_beating_baseline"] <= 1
    text = "\n".join([_vanishing_gradients_report.gradient_table(summary),
                      _vanishing_gradients_report.training_table(summary),
                      _vanishing_gradients_report.exploding_lines(summary)])
    assert "min 1; 1 seed never" in text and "never" in text and "nan" in text
    strict_loads(json.dumps(to_strict_json(summary), allow_nan=False))
    assert len(vg.plot(run_dir)) == 5


def test_stocks_reads_nulls_where_a_seed_diverged(tmp_path):
    run_dir = stocks.main(EXPERIMENTS["stocks"][1].split() + ["--run", "nulls", "--no-progress",
                                                              "--results-dir", str(tmp_path)])
    metrics = strict_loads((run_dir / "metrics.json").read_text())
    model = metrics["series"]["GOOG"]["models"]["lstm"]
    model["test_predictions"][0] = [math.nan] * len(model["test_predictions"][0])
    model["test_rmse"][0] = model["test_mae"][0] = math.nan
    metrics = _write_and_read(run_dir, metrics)
    summary = _stocks_report.summary(metrics)
    summary = strict_loads(json.dumps(to_strict_json(summary), allow_nan=False))
    assert "nan" in _stocks_report.table(summary)
    assert [p.name for p in _stocks_report.plot(run_dir)] == ["predictions.png"]
