"""experiments.long_range: a tiny run writes every file with valid JSON, the reported baselines are
the library's, the reported test metric equals one recomputed from the trained parameters on the
unpadded test batch, the plots need only metrics.json, and bad configs are refused."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

import lstmjax as lj
from experiments import long_range as lr
from experiments._config_cli import parse_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNGS = ["long_range.png", "training_curves.png"]
TINY = ("--tasks adding copy --cells lstm --lengths 3 6 --hidden-size 4 --seeds 2 --train-steps 3 "
        "--batch-size 4 --test-size 8 --run tiny --no-progress").split()


def test_a_tiny_run_writes_everything_and_reports_what_it_measured(tmp_path, capsys):
    """One tiny run (mostly compilation), checked from every side (one test, not a shared fixture,
    so that `pytest -n auto` does not repeat it on each worker)."""
    run_dir = lr.main(TINY + ["--results-dir", str(tmp_path / "results")])
    printed = capsys.readouterr().out
    assert run_dir.parent.name == "long_range" and run_dir.name == "tiny"
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(["config.json", "metrics.json", "summary.json", *PNGS])
    for png in PNGS:
        assert (run_dir / png).read_bytes().startswith(PNG_MAGIC)
    config, metrics, summary = (json.loads((run_dir / n).read_text()) for n in ("config.json", "metrics.json",
                                                                                  "summary.json"))
    assert lr.LongRangeConfig(**config).lengths == (3, 6) and config["run"] == "tiny"
    assert metrics["tasks"] == ["adding", "copy"] and metrics["cells"] == ["lstm"] and metrics["seeds"] == [0, 1]
    for task in ("adding", "copy"):
        for length in (3, 6):
            for cell in ("lstm",):
                run = metrics["runs"][task][str(length)][cell]
                assert np.shape(run["loss"]) == np.shape(run["grad_norm"]) == (2, 3)
                assert np.shape(run["test_metric"]) == np.shape(run["test_metric_init"]) == (2,)
                assert np.all(np.isfinite(run["test_metric"]))
                assert ("test_accuracy" in run) == (task == "copy")
    # the baselines are the library's
    for length in (3, 6):
        assert metrics["baselines"]["adding"][str(length)] == lj.ADDING_BASELINE_MSE
        assert metrics["baselines"]["copy"][str(length)] == lj.copy_memory_baseline(length)
    assert [(r["task"], r["length"], r["cell"]) for r in summary["rows"]] == [
        (task, length, cell) for task in ("adding", "copy") for length in (3, 6) for cell in ("lstm",)]
    for row in summary["rows"]:
        run = metrics["runs"][row["task"]][str(row["length"])][row["cell"]]
        assert row["baseline"] == metrics["baselines"][row["task"]][str(row["length"])]
        assert row["test_metric_per_seed"] == run["test_metric"]
        assert row["test_metric_mean"] == pytest.approx(np.mean(run["test_metric"]))
        assert row["seeds_beating_baseline"] == sum(v < 0.9 * row["baseline"] for v in run["test_metric"])
    for text in ("adding", "copy", "lstm", "beats baseline?", f"{lj.copy_memory_baseline(6):.4f}", "0.1667"):
        assert text in printed

    folder = tmp_path / "replot"
    folder.mkdir()
    shutil.copy(run_dir / "metrics.json", folder / "metrics.json")
    paths = lr.report.plot(folder)
    assert sorted(p.name for p in paths) == PNGS
    assert all(p.parent == folder and p.read_bytes().startswith(PNG_MAGIC) for p in paths)


def test_the_reported_test_metric_is_the_trained_models_metric_on_the_unpadded_test_batch():
    """Train two lengths side by side (the shorter one padded), then score each returned model on the
    plain, unpadded task batch with a direct computation: the numbers must agree."""
    config = lr.LongRangeConfig(tasks=("copy", "temporal_order"), cells=("rnn",), lengths=(61, 66), hidden_size=4,
                                seeds=2, train_steps=3, batch_size=4, test_size=8)
    metrics = lr.run_experiment(config, keep_params=True)
    for task in config.tasks:
        for length in config.lengths:
            test = lr.test_batch(task, length, config.test_size)
            for name in config.cells:
                cell = lr.make_cell(name, config.hidden_size, config.init)
                run = metrics["runs"][task][str(length)][name]
                for seed in (0, 1):
                    model = jax.tree_util.tree_map(lambda a: a[seed], metrics["params"][task][str(length)][name])
                    metric, accuracy = _direct(cell, task, model, test)
                    assert run["test_metric"][seed] == pytest.approx(metric, rel=1e-5, abs=1e-6), (task, length, name)
                    assert run["test_accuracy"][seed] == pytest.approx(accuracy, abs=1e-6)
                    initial = lr.init_model(cell, task, seed)
                    assert run["test_metric_init"][seed] == pytest.approx(_direct(cell, task, initial, test)[0],
                                                                          rel=1e-5, abs=1e-6)


def _direct(cell, task, model, batch):
    """Cross-entropy and accuracy of the model on one unpadded batch, in NumPy after a plain `lj.unroll`."""
    _, ys = lj.unroll(cell, model["cell"], batch.xs)  # no lengths: outputs before a step never see it
    ys = np.asarray(ys)
    if task == "temporal_order":
        lengths = np.asarray(batch.lengths)
        ys = ys[lengths - 1, np.arange(len(lengths))]  # each sequence's last real output
    logits = ys @ np.asarray(model["readout"]) + np.asarray(model["bias"])
    targets = np.asarray(batch.targets)
    logits = logits.astype(np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    cross_entropy = -np.mean(np.take_along_axis(log_p, targets[..., None], -1))
    correct = logits.argmax(-1) == targets
    return cross_entropy, float(np.mean(correct[-10:] if task == "copy" else correct))


def test_the_adding_metric_is_the_mse_of_the_last_output_and_the_baselines_are_the_librarys():
    cell = lr.make_cell("gru", 4, "default")
    model = lr.init_model(cell, "adding", 3)
    batch = lr.test_batch("adding", 7, 16)
    _, ys = lj.unroll(cell, model["cell"], batch.xs)
    expected = np.mean((np.asarray(ys[-1]) @ np.asarray(model["readout"][:, 0]) - np.asarray(batch.targets)) ** 2)
    assert float(lr.evaluate(cell, "adding", model, batch)[0]) == pytest.approx(expected, rel=1e-5)
    padded = lr.padded_batch("adding", jax.random.fold_in(jax.random.PRNGKey(lr.TEST_KEY), 7), 16, 7, 12)
    assert float(lr.padded_evaluate(cell, "adding", model, padded)[0]) == pytest.approx(expected, rel=1e-5)
    assert lr.baseline("adding", 50) == lj.ADDING_BASELINE_MSE == pytest.approx(1 / 6)
    assert lr.baseline("copy", 100) == lj.copy_memory_baseline(100) == pytest.approx(10 * np.log(8) / 120)
    assert lr.baseline("temporal_order", 100) == lj.TEMPORAL_ORDER_BASELINE_CROSS_ENTROPY == pytest.approx(np.log(4))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tasks", "parity"], "tasks must be among"),
        (["--cells", "lstm", "lstm"], "must not repeat"),
        (["--lengths", "100", "50"], "strictly increasing"),
        (["--lengths", "1"], "every length"),
        (["--tasks", "temporal_order"], "temporal_order needs every length >= 61"),
        (["--seeds", "0"], "seeds must be an integer >= 1"),
        (["--learning-rate", "-1"], "learning_rate must be a positive"),
        (["--clip-norm", "nan"], "clip_norm must be a positive"),
    ],
)
def test_bad_configs_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(lr.LongRangeConfig, argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_tasks_without_a_cli_choice_list_are_checked_by_the_dataclass():
    with pytest.raises(ValueError, match="tasks must be among"):
        lr.LongRangeConfig(tasks=("parity",))
    assert lr.LongRangeConfig(tasks=["adding"], lengths=[5]).tasks == ("adding",)
