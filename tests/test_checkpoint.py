"""Orbax checkpoints: types and values round-trip exactly, keep-last-N, atomic saves, and clear
errors for a missing, damaged or mismatched checkpoint."""

import gc
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lstmjax as lj
from lstmjax._checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    Checkpoints,
    restore_checkpoint,
    save_checkpoint,
)
from lstmjax._fit import fit

OPTIMIZER = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))


def _state(hidden_size=4, key=None, seed=0):
    """A TrainState with LSTMParams and Optax's NamedTuple states, as after one update (no compiles)."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
    h = hidden_size
    params = {
        "cell": lj.LSTMParams(w_x=normal(2, 4 * h), w_h=normal(h, 4 * h), b=normal(4 * h)),
        "readout": normal(h),
        "bias": jnp.zeros((), jnp.float32),
    }
    params, opt_state = _one_update(params)
    return lj.TrainState(params, opt_state, jnp.int32(7), jax.random.PRNGKey(1) if key is None else key)


@jax.jit
def _one_update(params):
    grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.5), params)
    updates, opt_state = OPTIMIZER.update(grads, OPTIMIZER.init(params), params)
    return optax.apply_updates(params, updates), opt_state


def _key_data(x):
    return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def _assert_same_types_and_values(restored, original):
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(original)
    for (path, r), o in zip(
        jax.tree_util.tree_flatten_with_path(restored)[0], jax.tree_util.tree_leaves(original), strict=True
    ):
        name = jax.tree_util.keystr(path)
        assert isinstance(r, jax.Array), name
        assert r.dtype == o.dtype and r.shape == o.shape and r.sharding == o.sharding, name
        np.testing.assert_array_equal(np.asarray(_key_data(r)), np.asarray(_key_data(o)), err_msg=name)


@pytest.mark.parametrize("key", [jax.random.PRNGKey(3), jax.random.key(3)], ids=["raw_key", "typed_key"])
def test_restore_round_trips_pytree_types_and_values_exactly(tmp_path, key):
    state = _state(key=key)
    extra = {"loss": [0.5, float("nan"), float("inf")], "note": "x", "nested": {"n": 3}}
    path = save_checkpoint(tmp_path, state, extra)
    assert path == os.path.join(str(tmp_path), "7")
    target = _state(key=key, seed=1)  # same structure, other values
    restored, restored_extra = restore_checkpoint(tmp_path, target)
    _assert_same_types_and_values(restored, state)
    assert type(restored) is lj.TrainState
    assert type(restored.params["cell"]) is lj.LSTMParams
    assert type(restored.opt_state[0]) is optax.EmptyState
    assert type(restored.opt_state[1][0]) is optax.ScaleByAdamState
    assert type(restored.opt_state[1][0].mu["cell"]) is lj.LSTMParams
    assert (
        restored_extra["loss"][0] == 0.5 and np.isnan(restored_extra["loss"][1]) and restored_extra["loss"][2] == np.inf
    )
    assert restored_extra["note"] == "x" and restored_extra["nested"] == {"n": 3}
    # An abstract target (jax.ShapeDtypeStruct leaves) works too.
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    _assert_same_types_and_values(restore_checkpoint(tmp_path, abstract)[0], state)


def test_keep_last_leaves_exactly_n_checkpoints_and_no_temporary_directories(tmp_path):
    state = _state()
    with Checkpoints(tmp_path, keep_last=3) as checkpoints:
        for step in range(6):
            checkpoints.save(step, state._replace(step=jnp.int32(step)))
        checkpoints.wait_until_finished()
        assert checkpoints.steps() == [3, 4, 5]
    assert sorted(os.listdir(tmp_path)) == ["3", "4", "5"]
    restored, _ = restore_checkpoint(tmp_path, state, step=4)
    assert int(restored.step) == 4
    with pytest.raises(ValueError, match="step 5 already exists"):
        with Checkpoints(tmp_path) as checkpoints:
            checkpoints.save(5, state)


def test_fit_keeps_the_last_n_checkpoints(tmp_path):
    def train_step(state, batch):  # stands in for a compiled step: only the schedule matters here
        metrics = lj.StepMetrics(loss=jnp.float32(batch), grad_norm=jnp.float32(1.0), finite=jnp.bool_(True))
        return state._replace(step=state.step + 1), metrics

    state = _state()._replace(step=jnp.int32(0))
    fit(train_step, state, lambda step: step, 10, checkpoint_dir=tmp_path, checkpoint_every=2, keep_last=3)
    assert sorted(os.listdir(tmp_path), key=int) == ["6", "8", "10"]
    _, extra = restore_checkpoint(tmp_path, state)
    assert extra["step"] == list(range(10)) and extra["loss"] == list(range(10))


def test_an_interrupted_save_is_never_restored(tmp_path):
    state = _state()
    save_checkpoint(tmp_path, state)
    # What a crash in the middle of writing step 9 leaves behind: Orbax's temporary directory.
    partial = tmp_path / "9.orbax-checkpoint-tmp-1700000000"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "manifest.ocdbt").write_bytes(b"\x00" * 10)
    with Checkpoints(tmp_path) as checkpoints:
        assert checkpoints.steps() == [7]
        restored, _ = checkpoints.restore(state)
    _assert_same_types_and_values(restored, state)


def test_a_missing_directory_or_step_gives_a_clear_error(tmp_path):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(CheckpointNotFoundError, match=f"checkpoint directory {missing} does not exist"):
        restore_checkpoint(missing, _state())
    assert not missing.exists(), "restoring must not create the directory"
    with pytest.raises(FileNotFoundError):  # CheckpointNotFoundError is a FileNotFoundError too
        restore_checkpoint(missing, _state())
    with pytest.raises(CheckpointNotFoundError, match="no checkpoints in"):
        restore_checkpoint(tmp_path, _state())
    save_checkpoint(tmp_path, _state())
    with pytest.raises(CheckpointNotFoundError, match=r"no checkpoint for step 3 .*saved steps: \[7\]"):
        restore_checkpoint(tmp_path, _state(), step=3)


def _settle():
    """Lets TensorStore's abandoned reads of a damaged file finish and be collected inside this test,
    where the warning filter below applies, rather than be reported during a later one."""
    time.sleep(0.5)
    gc.collect()


def _truncate_array_files(step_directory):
    files = [os.path.join(root, name) for root, _, names in os.walk(step_directory / "state" / "d") for name in names]
    assert files
    for path in files:
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)


def _garble_json(step_directory):
    (step_directory / "extra" / "metadata").write_text('{"format": 1, "step": 7, "ext')


# TensorStore's reads of a damaged file fail in coroutines that Python reports as unraisable.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", [_truncate_array_files, _garble_json], ids=["truncated_arrays", "garbled_json"])
def test_a_damaged_checkpoint_gives_a_clear_error(tmp_path, damage):
    state = _state()
    save_checkpoint(tmp_path, state, {"a": 1}, step=3)
    save_checkpoint(tmp_path, state, {"a": 2})
    damage(tmp_path / "7")
    pattern = rf"checkpoint {tmp_path / '7'} \(step 7\) could not be read; it is damaged.*other saved steps: \[3\]"
    with pytest.raises(CheckpointError, match=pattern):
        restore_checkpoint(tmp_path, state)
    restored, extra = restore_checkpoint(tmp_path, state, step=3)  # the earlier one is intact
    _assert_same_types_and_values(restored, state)
    assert extra == {"a": 1}
    _settle()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_resuming_fit_from_a_damaged_checkpoint_raises(tmp_path):
    state = _state()
    save_checkpoint(tmp_path, state)
    _truncate_array_files(tmp_path / "7")
    with pytest.raises(CheckpointError, match="damaged"):
        fit(lambda s, b: (s, None), state, lambda step: None, 10, checkpoint_dir=tmp_path)
    _settle()


def test_a_checkpoint_of_another_model_names_the_leaves_that_differ(tmp_path):
    save_checkpoint(tmp_path, _state(hidden_size=4))
    with pytest.raises(CheckpointError, match=r"does not match the restore target") as info:
        restore_checkpoint(tmp_path, _state(hidden_size=8))
    message = str(info.value)
    assert "params.cell.w_h: checkpoint shape (4, 16), target shape (8, 32)" in message
    assert "params.readout: checkpoint shape (4,), target shape (8,)" in message
    other_dtype = _state()
    other_dtype.params["bias"] = jnp.zeros((), jnp.int32)
    with pytest.raises(CheckpointError, match="params.bias: checkpoint dtype float32, target dtype int32"):
        restore_checkpoint(tmp_path, other_dtype)
