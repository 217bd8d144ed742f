"""experiments.native_speedup: a tiny run writes strict JSON with both ways timed and checked, says
where the kernel ran, reports a family without a kernel instead of timing it, and stops when the two
ways disagree."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lstmjax as lj
from experiments import native_speedup as ns

TINY = ("--families lstm rnn --hidden-sizes 8 32 --length 4 --batch-size 4 --input-size 3 --repeats 2 --calls 1 "
        "--run tiny").split()


def _strict(text):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_a_tiny_run_times_both_ways_where_they_agree(tmp_path, capsys, monkeypatch):
    # the run's rnn stands for a family without a native kernel (reported, not timed)
    monkeypatch.setitem(ns.FAMILIES, "rnn", lambda hidden_size: lj.rnn(hidden_size)._replace(fused=None))
    run_dir = ns.main(TINY + ["--results-dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "metrics.json", "summary.json"]
    metrics = _strict((run_dir / "metrics.json").read_text())
    summary = _strict((run_dir / "summary.json").read_text())
    assert "rnn" in metrics["skipped"] and "no native kernel" in printed
    assert [(p["family"], p["hidden_size"]) for p in metrics["points"]] == [("lstm", 8), ("lstm", 32)]
    available = lj.native_kernel_status().available
    threshold = metrics["thresholds"]["lstm"]
    assert threshold == lj.lstm(1).fused.native_min_hidden_size
    for point in metrics["points"]:
        for name in ns.WORKLOADS:
            w = point[name]
            assert w["largest_difference"] <= 1e-4
            assert len(w["seconds"]["native"]) == len(w["seconds"]["xla"]) == 2
            medians = {way: np.median(w["seconds"][way]) for way in ns.WAYS}
            assert w["native_over_xla"] == pytest.approx(medians["native"] / medians["xla"])
            assert w["uses_kernel"] == {"native": available and point["hidden_size"] >= threshold, "xla": False}
    row = summary["table"]["lstm"]["train"]["32"]
    assert row[3] is available and row[2] == metrics["points"][1]["train"]["native_over_xla"]
    assert "lstm train" in printed and "native/xla" in printed


def test_two_ways_that_differ_stop_the_run(monkeypatch):
    def perturbed(cell):  # not the same computation: inputs scaled by 1.01 on the XLA side
        return cell._replace(fused=None, step_with_internals=lambda p, s, x: cell.step_with_internals(p, s, 1.01 * x))

    monkeypatch.setattr(ns, "without_native_kernel", perturbed)
    config = ns.NativeSpeedupConfig(families=("lstm",), hidden_sizes=(4,), length=3, batch_size=2, input_size=2,
                                    repeats=1, calls=1)
    with pytest.raises(AssertionError, match=r"lstm H=4 train: the native and XLA ways differ"):
        ns.measure_point("lstm", 4, config)


@pytest.mark.parametrize("field, value, message", [
    ("families", ("lstm", "transformer"), "families must be among lstm, gru, rnn"),
    ("hidden_sizes", (), "hidden_sizes must name at least one"),
    ("hidden_sizes", (32, 0), "hidden_sizes must be an integer >= 1, got 0"),
    ("calls", 0, "calls must be an integer >= 1, got 0"),
    ("rtol", -1.0, "rtol must be a positive number, got -1.0"),
])
def test_bad_configuration_is_refused_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        ns.NativeSpeedupConfig(**{field: value})
