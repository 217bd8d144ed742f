"""experiments.long_range: a tiny run writes every file with valid JSON, the reported baselines are
the library's, each length is trained on its own unpadded batches exactly as documented (a plain
Python loop over the jitted step gives the same losses and weights), the reported test metric
equals one recomputed from the trained parameters, the LSTM beats the baseline on a small adding
problem, the plots need only metrics.json, and bad configs are refused. Marked slow: the default
run's picture at T = 100 and the temporal-order learning-rate finding."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import numpy as np
import optax
import pytest
from helpers import assert_trees_all_close

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


def test_each_length_trains_on_its_own_unpadded_batches_as_documented():
    """`train` == a plain Python loop over the jitted train step, on the batches the docstring names
    (seed s: weights from init_model, keys split from PRNGKey(s), batch k from split(data_key, steps)[k]
    at exactly T steps); and a length's results do not depend on which other lengths run with it."""
    config = lr.LongRangeConfig(tasks=("copy",), cells=("lstm",), lengths=(3, 5), hidden_size=4, seeds=2,
                                train_steps=4, batch_size=3, test_size=8, learning_rate=0.05)
    cell = lr.make_cell("lstm", config.hidden_size, config.init)
    result = lr.train("copy", 5, cell, [0, 1], config)
    optimizer = optax.chain(optax.clip_by_global_norm(config.clip_norm), optax.adam(0.05))
    step = jax.jit(lj.make_train_step(lambda m, b, k: lr.evaluate(cell, "copy", m, b)[0], optimizer))
    for seed in (0, 1):
        _, state_key, data_key = jax.random.split(jax.random.PRNGKey(seed), 3)
        state = lj.init_train_state(lr.init_model(cell, "copy", seed), optimizer, state_key)
        losses = []
        for key in jax.random.split(data_key, config.train_steps):
            batch = lj.copy_memory(key, config.batch_size, 5)
            assert batch.xs.shape == (5 + 20, config.batch_size, 10)  # unpadded: T + 20 steps
            state, metrics = step(state, batch)
            losses.append(float(metrics.loss))
        np.testing.assert_allclose(result["loss"][seed], losses, rtol=1e-5)
        assert_trees_all_close(jax.tree_util.tree_map(lambda a, s=seed: a[s], result["params"]), state.params,
                               rtol=1e-4, atol=1e-6)
    with_a_shorter_length = lr.run_experiment(config)["runs"]["copy"]["5"]["lstm"]
    np.testing.assert_array_equal(with_a_shorter_length["loss"], result["loss"])
    np.testing.assert_array_equal(with_a_shorter_length["test_metric"], result["test_metric"])


def test_the_learning_rate_is_the_tasks_own_unless_one_is_given():
    config = lr.LongRangeConfig(tasks=("adding", "temporal_order"), lengths=(100,))
    assert config.learning_rate is None
    assert [lr.learning_rate(config, t) for t in config.tasks] == [0.01, 0.001] == [
        lr.TASK_LEARNING_RATES[t] for t in config.tasks]
    assert lr.learning_rate(dataclasses.replace(config, learning_rate=0.003), "temporal_order") == 0.003


def test_the_lstm_beats_the_adding_baseline_on_a_small_problem():
    """T = 20, H = 16, 300 steps: the LSTM's test MSE falls far below the memoryless 1/6 for every seed."""
    config = lr.LongRangeConfig(cells=("lstm",), lengths=(20,), hidden_size=16, seeds=2, train_steps=300,
                                test_size=256)
    run = lr.run_experiment(config)["runs"]["adding"]["20"]["lstm"]
    assert max(run["test_metric"]) < 0.3 * lj.ADDING_BASELINE_MSE, run["test_metric"]
    assert min(run["test_metric_init"]) > 0.9 * lj.ADDING_BASELINE_MSE


def test_the_reported_test_metric_is_the_trained_models_metric_on_the_test_batch():
    """Score each returned model on the task's test batch with a direct NumPy computation: the numbers
    must agree (temporal order: the readout of each sequence's last real output)."""
    config = lr.LongRangeConfig(tasks=("copy", "temporal_order"), cells=("rnn",), lengths=(61,), hidden_size=4,
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
        (["--learning-rate", "inf"], "learning_rate must be a positive"),
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


@pytest.mark.slow
def test_at_t_100_the_tanh_rnn_stays_at_the_adding_baseline_and_the_lstm_solves_it():
    """The default run's picture at one length (about a minute): 2000 steps, 2 seeds."""
    config = lr.LongRangeConfig(cells=("rnn", "lstm"), lengths=(100,), seeds=2)
    runs = lr.run_experiment(config)["runs"]["adding"]["100"]
    assert min(runs["rnn"]["test_metric"]) > 0.9 * lj.ADDING_BASELINE_MSE, runs["rnn"]["test_metric"]
    assert max(runs["lstm"]["test_metric"]) < 0.05 * lj.ADDING_BASELINE_MSE, runs["lstm"]["test_metric"]


@pytest.mark.slow
def test_the_lstm_learns_temporal_order_at_learning_rate_1e_3_but_not_at_1e_2():
    """At 0.01 Adam drives the LSTM into the memoryless solution (cross-entropy ln 4); at 0.001 it
    classifies the order of X and Y almost perfectly within 1500 steps."""
    config = lr.LongRangeConfig(tasks=("temporal_order",), cells=("lstm",), lengths=(100,), seeds=2,
                                train_steps=1500, test_size=256)
    slow = lr.run_experiment(config)["runs"]["temporal_order"]["100"]["lstm"]
    assert min(slow["test_accuracy"]) > 0.95, slow
    fast = lr.run_experiment(dataclasses.replace(config, learning_rate=0.01))["runs"]["temporal_order"]["100"]["lstm"]
    assert min(fast["test_metric"]) > 0.9 * lj.TEMPORAL_ORDER_BASELINE_CROSS_ENTROPY, fast


def test_seed_strategy_is_checked_and_recorded():
    with pytest.raises(ValueError, match="seed_strategy must be auto, vmap or loop, got 'pmap'"):
        lr.LongRangeConfig(seed_strategy="pmap")
    config = lr.LongRangeConfig(cells=("lstm",), lengths=(5,), seeds=2, hidden_size=3, train_steps=3, test_size=8,
                                seed_strategy="vmap")
    metrics = lr.run_experiment(config)  # its one training is lr.train(..., seed_strategy="vmap")
    assert metrics["seed_strategy"] == "vmap" and metrics["backend"] == jax.default_backend()
    vmapped = metrics["runs"]["adding"]["5"]["lstm"]
    looped = lr.train("adding", 5, lr.make_cell("lstm", 3, "default"), [0, 1],
                      dataclasses.replace(config, seed_strategy="loop"))
    assert_trees_all_close(np.asarray(vmapped["loss"], np.float32), looped["loss"], rtol=1e-5, atol=1e-6)
