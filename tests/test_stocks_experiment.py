"""experiments.stocks: a tiny run writes every file; the splits, the training-only normaliser, the
last-value baseline and the dollar errors are what the docstring says; the plot needs only
metrics.json; bad configs are refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import lstmjax as lj
from experiments import _stocks_report as report
from experiments import stocks
from experiments._config_cli import parse_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = "--symbols MSFT GOOG --models lstm --hidden-size 4 --seeds 2 --steps 5 --run tiny --no-progress".split()


def test_a_tiny_run_writes_everything_and_measures_what_it_says(tmp_path, capsys):
    """One tiny run (one model: each series length compiles its own program), checked from every side.
    GOOG (68 months) and MSFT (123) are split, normalised and windowed each on its own."""
    run_dir = stocks.main(TINY + ["--results-dir", str(tmp_path / "results")])
    printed = capsys.readouterr().out
    assert run_dir.parent.name == "stocks" and run_dir.name == "tiny"
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "metrics.json", "predictions.png",
                                                         "summary.json"]
    assert (run_dir / "predictions.png").read_bytes().startswith(PNG_MAGIC)
    config = json.loads((run_dir / "config.json").read_text())
    assert stocks.StocksConfig(**config).symbols == ("MSFT", "GOOG")
    for text in ("MSFT", "GOOG", "last_value", "lstm", "RMSE $", "seeds beating last value"):
        assert text in printed

    metrics = json.loads((run_dir / "metrics.json").read_text())
    prices = lj.load_stock_prices(["MSFT", "GOOG"])
    assert metrics["symbols"] == ["MSFT", "GOOG"] and metrics["seeds"] == [0, 1]
    for symbol, months in (("MSFT", 123), ("GOOG", 68)):
        s = metrics["series"][symbol]
        values = prices[symbol].values[:, 0]
        n_train, n_val, n_test = s["train_months"], s["validation_months"], s["test_months"]
        assert len(s["prices"]) == months and n_train + n_val + n_test == months
        assert (n_train, n_val) == (round(0.7 * months), round(0.85 * months) - round(0.7 * months))
        # The normaliser saw the training months only.
        assert s["normalizer"]["shift"] == pytest.approx(values[:n_train].mean(), rel=1e-5)
        assert s["normalizer"]["scale"] == pytest.approx(values[:n_train].std(), rel=1e-5)
        # Every test month is predicted once; the baseline is last month's price, its errors in dollars.
        np.testing.assert_allclose(s["test_actual"], values[-n_test:])
        np.testing.assert_allclose(s["baseline"]["test_predictions"], values[-n_test - 1:-1])
        error = values[-n_test - 1:-1] - values[-n_test:]
        assert s["baseline"]["test_rmse"] == pytest.approx(np.sqrt(np.mean(error ** 2)))
        assert s["baseline"]["test_mae"] == pytest.approx(np.mean(np.abs(error)))
        for model in ("lstm",):
            m = s["models"][model]
            predictions = np.asarray(m["test_predictions"])
            assert predictions.shape == (2, n_test) and np.all(np.isfinite(predictions))
            np.testing.assert_allclose(m["test_rmse"], np.sqrt(np.mean((predictions - values[-n_test:]) ** 2, 1)),
                                       rtol=1e-6)
            assert np.shape(m["train_loss"]) == (2, 5) and np.shape(m["validation_loss"]) == (2, 6)
            best = np.asarray(m["best_step"])
            val = np.asarray(m["validation_loss"])
            assert np.all((best >= 0) & (best <= 5))
            np.testing.assert_allclose(val[[0, 1], best], val.min(axis=1))  # the validation-best step was kept

    summary = json.loads((run_dir / "summary.json").read_text())
    seconds = summary["seconds_including_compilation"]
    assert summary == {**report.summary(metrics), "seconds_including_compilation": seconds}
    assert len(summary["rows"]) == 2 * 2 and summary["pairs"] == 2

    replot = tmp_path / "replot"
    replot.mkdir()
    shutil.copy(run_dir / "metrics.json", replot / "metrics.json")
    assert [p.name for p in report.plot(replot)] == ["predictions.png"]


def test_windows_belong_to_the_part_of_their_target_month():
    series = lj.TimeSeries(dates=np.arange(40).astype("datetime64[M]"), values=np.arange(40.0)[:, None], names=("x",))
    task = stocks.make_task(series, window=5, fractions=(0.5, 0.25, 0.25), method="standard")
    assert task.months == (20, 10, 10)
    raw = lambda batch: np.asarray(task.normalizer.inverse(batch.targets))[:, 0]  # noqa: E731
    np.testing.assert_allclose(raw(task.train), np.arange(5, 20), atol=1e-4)
    np.testing.assert_allclose(raw(task.validation), np.arange(20, 30), atol=1e-4)
    np.testing.assert_allclose(raw(task.test), np.arange(30, 40), atol=1e-4)
    first_test_window = np.asarray(task.normalizer.inverse(task.test.xs[:, 0]))[:, 0]
    np.testing.assert_allclose(first_test_window, np.arange(25, 30), atol=1e-4)  # its past: validation months
    assert float(task.normalizer.shift[0]) == pytest.approx(9.5)  # mean of months 0..19 only
    with pytest.raises(ValueError, match="training months"):
        stocks.make_task(series, window=20, fractions=(0.5, 0.25, 0.25), method="standard")


def test_looping_and_vmapping_over_seeds_give_the_same_numbers():
    """`--seed-strategy loop` (the CPU default) and `vmap` train every seed alike, up to float rounding."""
    series = lj.load_stock_prices(["GOOG"])["GOOG"]
    task = stocks.make_task(series, window=12, fractions=(0.7, 0.15, 0.15), method="standard")
    results = {}
    for strategy in ("loop", "vmap"):
        config = stocks.StocksConfig(symbols=("GOOG",), hidden_size=3, seeds=3, steps=20, seed_strategy=strategy)
        train = stocks.training_program(stocks.make_cell("lstm", 3), config)
        results[strategy] = train(np.arange(3), task.train, task.validation, task.test.xs)
    predictions, train_loss, val_loss, best_step = results["loop"]
    assert predictions.shape == (3, task.months[2]) and train_loss.shape == (3, 20) and val_loss.shape == (3, 21)
    assert not np.allclose(train_loss[0], train_loss[1])  # the seeds differ
    np.testing.assert_array_equal(best_step, results["vmap"][3])
    for a, b in zip(results["loop"][:3], results["vmap"][:3], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("argv", [["--symbols", "TSLA"], ["--models", "lstm", "lstm"], ["--window", "0"],
                                  ["--fractions", "0.5", "0.5"], ["--learning-rate", "-1"],
                                  ["--seed-strategy", "pmap"]])
def test_bad_configs_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as error:
        parse_config(stocks.StocksConfig, argv)
    assert error.value.code == 2
