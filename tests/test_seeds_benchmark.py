"""experiments.seeds_benchmark: a tiny run writes its files (strict JSON), and K models trained in one vmapped
program equal K sequential runs of the single-model step, seed by seed, to float tolerance; so do the two
whole-program strategies of `lj.map_seeds`."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lstmjax as lj
from experiments import seeds_benchmark as sb
from experiments._config_cli import parse_config

TINY = "--seeds 3 --hidden-size 4 --length 6 --batch-size 4 --steps 4 --repeats 2 --run tiny --no-progress".split()


def test_a_tiny_run_writes_everything_and_the_ways_agree(tmp_path, capsys):
    run_dir = sb.main(TINY + ["--results-dir", str(tmp_path / "results")])
    printed = capsys.readouterr().out
    assert run_dir.parent.name == "seeds_benchmark" and run_dir.name == "tiny"
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "metrics.json", "summary.json"]
    assert "ratio (b)/(a)" in printed and "equal within" in printed
    metrics = json.loads((run_dir / "metrics.json").read_text(), parse_constant=_refuse)
    assert len(metrics["seconds"]["vmapped"]) == len(metrics["seconds"]["sequential"]) == 2
    assert metrics["median_seconds"]["vmapped"] == pytest.approx(np.median(metrics["seconds"]["vmapped"]))
    ratio = metrics["median_seconds"]["sequential"] / metrics["median_seconds"]["vmapped"]
    assert metrics["speedup_sequential_over_vmapped"] == pytest.approx(ratio)
    assert metrics["comparison"]["equal"] is True
    assert metrics["comparison"]["max_abs_diff"] < 1e-5
    # The seeds really are different models (different losses), and each agrees across the two ways.
    assert len(set(np.round(metrics["comparison"]["final_loss_vmapped"], 6))) == 3
    np.testing.assert_allclose(metrics["comparison"]["final_loss_vmapped"],
                               metrics["comparison"]["final_loss_sequential"], rtol=1e-4, atol=1e-5)
    whole = metrics["whole_program"]
    assert len(whole["seconds"]["vmap"]) == len(whole["seconds"]["loop"]) == 2
    assert whole["speedup_loop_over_vmap"] == pytest.approx(whole["median_seconds"]["vmap"]
                                                            / whole["median_seconds"]["loop"])
    assert whole["comparison"]["equal"] is True and whole["comparison"]["max_abs_diff"] < 1e-5
    # the whole program trains each seed as the per-step loop does
    np.testing.assert_allclose(whole["comparison"]["final_loss_sequential"],
                               metrics["comparison"]["final_loss_sequential"], rtol=1e-4, atol=1e-5)
    assert "ratio (c)/(d)" in printed
    summary = json.loads((run_dir / "summary.json").read_text(), parse_constant=_refuse)
    assert summary["equal"] is True and summary["seeds"] == 3 and summary["whole_program"]["equal"] is True


def _refuse(constant):
    raise ValueError(f"not strict JSON: {constant}")


def test_the_comparison_detects_a_difference():
    """`compare` on hand-made results (no training): equal to themselves, not after a perturbation."""
    params = {"w": np.arange(6.0, dtype=np.float32).reshape(3, 2), "b": np.ones(3, np.float32)}
    states = lj.TrainState(params=params, opt_state=(), step=np.zeros(3, np.int32), key=np.zeros((3, 2), np.uint32))
    losses = np.linspace(0.1, 1.0, 12, dtype=np.float32).reshape(3, 4)
    same = sb.compare((states, losses), (states, losses), rtol=1e-4, atol=1e-5)
    assert same["equal"] and same["bitwise_equal"] and same["max_abs_diff"] == 0
    assert same["final_loss_vmapped"] == pytest.approx(losses[:, -1].tolist())
    perturbed = states._replace(params={**params, "b": params["b"] + 1e-3})
    different = sb.compare((perturbed, losses), (states, losses), rtol=1e-4, atol=1e-5)
    assert not different["equal"] and not different["bitwise_equal"]
    assert different["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)


def test_bad_configs_are_refused():
    for argv in (["--seeds", "0"], ["--length", "1"], ["--rtol", "0"]):
        with pytest.raises(SystemExit) as error:
            parse_config(sb.SeedsBenchmarkConfig, argv)
        assert error.value.code == 2
