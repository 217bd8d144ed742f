"""The fit loop: compiles once, records what a hand-written loop computes, resumes bit for bit,
stops early at the right step, handles non-finite steps by policy, and is quiet off a terminal."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lstmjax as lj
from lstmjax._checkpoint import Checkpoints
from lstmjax._fit import EarlyStopping, batches_from_key, fit

CELL = lj.lstm(4)
OPTIMIZER = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
TRACES = []


def _loss(params, batch, key):
    TRACES.append(1)  # counts traces of the train step (the eval below has its own counter)
    _, ys = lj.unroll(CELL, params["cell"], batch.xs)
    return jnp.mean((ys[-1] @ params["readout"] - batch.targets) ** 2)


TRAIN_STEP = jax.jit(lj.make_train_step(_loss, OPTIMIZER))
MAKE_BATCH = batches_from_key(lambda key: lj.adding_problem(key, 8, 6), jax.random.PRNGKey(2))


def _batch_fn(step):
    return MAKE_BATCH(step)


def _poisoned(bad_steps):
    """A data source whose batches at `bad_steps` have a NaN target (so loss and gradient are NaN)."""

    def batch_fn(step):
        batch = MAKE_BATCH(step)
        return batch._replace(targets=batch.targets.at[0].set(jnp.nan)) if step in bad_steps else batch

    return batch_fn


@jax.jit  # one compile instead of one per eager operation of the initialisers
def _initial_state():
    key_cell, key_readout = jax.random.split(jax.random.PRNGKey(0))
    params = {"cell": CELL.init(key_cell, 2), "readout": jax.random.normal(key_readout, (4,)) * 0.1}
    return lj.init_train_state(params, OPTIMIZER, jax.random.PRNGKey(1))


def _manual_run(num_steps, batch_fn=_batch_fn):
    state, losses = _initial_state(), []
    for step in range(num_steps):
        state, metrics = TRAIN_STEP(state, batch_fn(step))
        losses.append(float(metrics.loss))
    return state, np.asarray(losses)


def _assert_trees_equal(actual, desired):
    actual_leaves, actual_tree = jax.tree_util.tree_flatten(actual)
    desired_leaves, desired_tree = jax.tree_util.tree_flatten(desired)
    assert actual_tree == desired_tree
    for index, (a, d) in enumerate(zip(actual_leaves, desired_leaves, strict=True)):
        assert a.dtype == d.dtype, f"leaf {index}: dtype {a.dtype} != {d.dtype}"
        np.testing.assert_array_equal(np.asarray(a), np.asarray(d), err_msg=f"leaf {index}")


TEST_BATCH = lj.adding_problem(jax.random.PRNGKey(9), 32, 6)
EVAL_TRACES = []


@jax.jit
def _test_mse(params):
    EVAL_TRACES.append(1)
    _, ys = lj.unroll(CELL, params["cell"], TEST_BATCH.xs)
    return jnp.mean((ys[-1] @ params["readout"] - TEST_BATCH.targets) ** 2)


def _eval_fn(state):
    return {"mse": _test_mse(state.params)}


def test_fit_compiles_once_and_records_what_a_plain_loop_computes():
    TRACES.clear()
    EVAL_TRACES.clear()
    history, state = fit(TRAIN_STEP, _initial_state(), _batch_fn, 12, eval_fn=_eval_fn, eval_every=4)
    expected_state, expected_losses = _manual_run(12)
    assert len(TRACES) == 1 and len(EVAL_TRACES) == 1
    _assert_trees_equal(state, expected_state)
    np.testing.assert_array_equal(history["step"], np.arange(12))
    np.testing.assert_array_equal(history["loss"], expected_losses)
    assert history["finite"].all() and np.isfinite(history["grad_norm"]).all()
    np.testing.assert_array_equal(history["eval_step"], [4, 8, 12])
    assert history["eval_mse"][-1] == float(_test_mse(state.params))
    assert str(history["stopped_reason"]) == "completed"
    assert int(state.step) == 12


def test_fit_continues_from_the_state_it_is_given():
    _, middle = fit(TRAIN_STEP, _initial_state(), _batch_fn, 5)
    history, state = fit(TRAIN_STEP, middle, _batch_fn, 9)
    np.testing.assert_array_equal(history["step"], np.arange(5, 9))
    _assert_trees_equal(state, _manual_run(9)[0])


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run_bit_for_bit(tmp_path):
    kwargs = dict(eval_fn=_eval_fn, eval_every=3, early_stopping=EarlyStopping("mse", patience=100))
    full_history, full_state = fit(TRAIN_STEP, _initial_state(), _batch_fn, 14, **kwargs)
    TRACES.clear()
    directory = tmp_path / "run"
    first_history, first_state = fit(
        TRAIN_STEP, _initial_state(), _batch_fn, 7, checkpoint_dir=directory, checkpoint_every=4, **kwargs
    )
    assert int(first_state.step) == 7
    assert Checkpoints(directory).steps() == [4, 7]
    # A fresh initial state is the restore target: the run goes on from step 7 of the checkpoint.
    history, state = fit(
        TRAIN_STEP, _initial_state(), _batch_fn, 14, checkpoint_dir=directory, checkpoint_every=4, **kwargs
    )
    _assert_trees_equal(state, full_state)
    assert set(history) == set(full_history)
    for name in full_history:
        np.testing.assert_array_equal(history[name], full_history[name], err_msg=name)
    assert len(TRACES) == 0, "the restored state must not make the train step recompile"
    assert Checkpoints(directory).steps() == [8, 12, 14]


def test_resume_false_refuses_to_overwrite_checkpoints(tmp_path):
    fit(TRAIN_STEP, _initial_state(), _batch_fn, 2, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"already holds checkpoints \(steps \[2\]\).*resume=True"):
        fit(TRAIN_STEP, _initial_state(), _batch_fn, 4, checkpoint_dir=tmp_path, resume=False)


# Evaluation at step 2k returns VALUES[k - 1]: best 0.5 at step 4; 0.6, 0.55 (not better by
# more than min_delta=0.1 at step 10's 0.45), 0.45 -> three evaluations without improvement.
VALUES = {2: 1.0, 4: 0.5, 6: 0.6, 8: 0.55, 10: 0.45, 12: 0.1, 14: 0.1}


@pytest.mark.parametrize(("min_delta", "stop_step"), [(0.0, None), (0.1, 10)])
def test_early_stopping_stops_at_the_right_step(min_delta, stop_step, tmp_path):
    def eval_fn(state):
        return {"crafted": VALUES[int(state.step)], "other": 0.0}

    stopper = EarlyStopping("crafted", patience=3, min_delta=min_delta)
    history, state = fit(
        TRAIN_STEP,
        _initial_state(),
        _batch_fn,
        14,
        eval_fn=eval_fn,
        eval_every=2,
        early_stopping=stopper,
        checkpoint_dir=tmp_path,
    )
    if stop_step is None:  # 0.45 < 0.5 is an improvement at step 10: the run completes
        assert str(history["stopped_reason"]) == "completed" and int(state.step) == 14
        return
    assert str(history["stopped_reason"]) == "early_stopping"
    assert int(state.step) == stop_step
    np.testing.assert_array_equal(history["eval_step"], [2, 4, 6, 8, 10])
    np.testing.assert_array_equal(history["eval_crafted"], [1.0, 0.5, 0.6, 0.55, 0.45])
    np.testing.assert_array_equal(history["step"], np.arange(stop_step))
    _assert_trees_equal(state, _manual_run(stop_step)[0])
    # Resumed with the same settings, a run that stopped early stays stopped.
    again, again_state = fit(
        TRAIN_STEP,
        _initial_state(),
        _batch_fn,
        14,
        eval_fn=eval_fn,
        eval_every=2,
        early_stopping=stopper,
        checkpoint_dir=tmp_path,
    )
    assert str(again["stopped_reason"]) == "early_stopping" and int(again_state.step) == stop_step


def test_early_stopping_modes():
    assert EarlyStopping("m", mode="max").improved(2.0, 1.0)
    assert not EarlyStopping("m", mode="max").improved(1.0, 1.0)
    assert not EarlyStopping("m").improved(float("nan"), None)
    assert EarlyStopping("m").improved(5.0, None)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping("m", mode="lowest")
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping("m", patience=0)


@pytest.mark.parametrize("eval_every", [None, 6])  # the bad step in the middle, or just before an evaluation
def test_nonfinite_stop_keeps_the_last_good_state_and_names_the_step(eval_every):
    batch_fn = _poisoned({5})
    with pytest.warns(RuntimeWarning, match=r"step 5: non-finite loss \(nan\).*last good one.*state.step == 5"):
        history, state = fit(
            TRAIN_STEP,
            _initial_state(),
            batch_fn,
            10,
            on_nonfinite="stop",
            eval_fn=_eval_fn if eval_every else None,
            eval_every=eval_every,
        )
    assert str(history["stopped_reason"]) == "nonfinite"
    assert int(state.step) == 5
    _assert_trees_equal(state, _manual_run(5)[0])
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(state.params))
    np.testing.assert_array_equal(history["step"], np.arange(6))
    np.testing.assert_array_equal(history["finite"], [True] * 5 + [False])
    assert np.isnan(history["loss"][-1])
    assert history["eval_step"].size == 0


def test_a_nonfinite_stop_checkpoints_the_last_good_state_and_a_resume_can_skip_the_step(tmp_path):
    batch_fn = _poisoned({5})
    with pytest.warns(RuntimeWarning, match="step 5"):
        fit(TRAIN_STEP, _initial_state(), batch_fn, 10, checkpoint_dir=tmp_path, checkpoint_every=4)
    assert Checkpoints(tmp_path).steps() == [4, 5]  # the periodic one, and the last good state
    with pytest.warns(RuntimeWarning, match="step 5: .*skipped"):
        history, state = fit(TRAIN_STEP, _initial_state(), batch_fn, 10, checkpoint_dir=tmp_path, on_nonfinite="skip")
    _assert_trees_equal(state, _manual_run(10, batch_fn)[0])
    np.testing.assert_array_equal(history["step"], np.arange(10))  # step 5 once: the stop's record was not saved
    np.testing.assert_array_equal(~history["finite"], np.arange(10) == 5)


def test_nonfinite_skip_goes_on_and_warns_for_each_skipped_step():
    batch_fn = _poisoned({3, 5})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history, state = fit(TRAIN_STEP, _initial_state(), batch_fn, 8, on_nonfinite="skip")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 2 and "step 3:" in messages[0] and "step 5:" in messages[1]
    assert all("skipped" in m for m in messages)
    assert str(history["stopped_reason"]) == "completed" and int(state.step) == 8
    np.testing.assert_array_equal(~history["finite"], np.isin(np.arange(8), [3, 5]))
    _assert_trees_equal(state, _manual_run(8, batch_fn)[0])  # the train step skipped the two updates
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(state.params))


def test_progress_bar_is_silent_off_a_terminal_and_shows_step_loss_and_speed_when_asked(capsys):
    fit(TRAIN_STEP, _initial_state(), _batch_fn, 6, eval_fn=_eval_fn, eval_every=3)  # progress=None: auto
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    fit(TRAIN_STEP, _initial_state(), _batch_fn, 6, eval_fn=_eval_fn, eval_every=3, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "6/6" in captured.err and "loss=" in captured.err and "mse=" in captured.err and "step/s" in captured.err


def test_batches_from_key_is_a_pure_function_of_the_step():
    a, b = _batch_fn(3), _batch_fn(3)
    np.testing.assert_array_equal(a.xs, b.xs)
    assert not np.array_equal(_batch_fn(3).xs, _batch_fn(4).xs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(eval_fn=_eval_fn), "eval_every must be a positive int"),
        (dict(eval_every=2), "eval_every is set but eval_fn is None"),
        (dict(early_stopping=EarlyStopping("mse")), "early_stopping needs eval_fn"),
        (dict(on_nonfinite="ignore"), "on_nonfinite must be one of"),
        (dict(checkpoint_every=2), "checkpoint_dir is None"),
        (dict(eval_fn=_eval_fn, eval_every=1, early_stopping=EarlyStopping("accuracy")), "not among eval_fn's metrics"),
    ],
)
def test_invalid_arguments_raise_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(TRAIN_STEP, _initial_state(), _batch_fn, 2, **kwargs)
