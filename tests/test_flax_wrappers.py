"""The Flax wrappers (`lstmjax.nnx`, `lstmjax.linen`) are thin: with the same weights their
outputs and final states are *identical* (bit for bit) to the pure functions', they train with
`nnx.Optimizer` / Optax, dropout follows each API's train/eval convention, and Flax's own
`nnx.RNN` / `nn.RNN` can run the wrapped cells."""

from __future__ import annotations

import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lstmjax as lj
from lstmjax import linen as ljlinen
from lstmjax import nnx as ljnnx

INPUT, HIDDEN, STEPS, BATCH = 3, 4, 7, 5
LENGTHS = jnp.array([7, 3, 0, 5, 1])
STEPS_TO_HALVE = 50  # Adam(1e-2) steps after which the training loss must be below half its start
FAMILIES = {"lstm": lambda: lj.lstm(HIDDEN), "gru": lambda: lj.gru(HIDDEN), "rnn": lambda: lj.rnn(HIDDEN)}

# name -> (num_layers, bidirectional, reverse, unroll keyword arguments)
CONFIGS = {
    "reverse_lengths": (1, False, True, {"lengths": LENGTHS}),
    "bidirectional_lengths": (1, True, False, {"lengths": LENGTHS}),
    "two_layers_lengths": (2, False, False, {"lengths": LENGTHS}),
    "two_layers_bidirectional_mask_resets": (
        2,
        True,
        False,
        {
            "lengths": LENGTHS,
            "mask": jnp.ones((STEPS, BATCH), bool).at[2:4, 1].set(False),
            "resets": jnp.zeros((STEPS, BATCH), bool).at[3, 0].set(True),
        },
    ),
}
# The wrappers' code is the same for every cell, so every family runs the richest configurations
# and the LSTM runs them all (each eager scan compiles anew: the matrix is what costs time).
CASES = [
    (family, config)
    for family in sorted(FAMILIES)
    for config in sorted(CONFIGS)
    if family == "lstm" or config in ("reverse_lengths", "two_layers_bidirectional_mask_resets")
]


def _xs(seed=1, shape=(STEPS, BATCH, INPUT)):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


def assert_trees_equal(actual, desired):
    """Same structure (NamedTuple types included) and bit-identical leaves."""
    actual_leaves, actual_tree = jax.tree_util.tree_flatten(actual)
    desired_leaves, desired_tree = jax.tree_util.tree_flatten(desired)
    assert actual_tree == desired_tree, f"{actual_tree} != {desired_tree}"
    for index, (a, d) in enumerate(zip(actual_leaves, desired_leaves, strict=True)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(d), err_msg=f"leaf {index}")


def pure_reference(cells, params, xs, bidirectional, reverse, kwargs):
    """What the wrappers must equal, computed with the pure functions directly."""
    if reverse:
        final, ys = lj.unroll(cells[0], params[0], xs, reverse=True, **kwargs)
        return (final,), ys
    if len(cells) == 1 and bidirectional:
        final, ys = lj.unroll_bidirectional(cells[0], params[0], xs, **kwargs)
        return (final,), ys
    if len(cells) == 1:
        final, ys = lj.unroll(cells[0], params[0], xs, **kwargs)
        return (final,), ys
    return lj.unroll_layers(cells, params, xs, bidirectional=bidirectional, **kwargs)


def run_both(wrapper, pure, model, *args):
    """`(wrapper(model, *args), pure(model.lj_params(), *args))`, compiled as one program
    (compiling is what these tests spend their time on)."""
    return nnx.jit(lambda model, *args: (wrapper(model, *args), pure(model.lj_params(), *args)))(model, *args)


def _regression(xs):
    """Target: the first input feature seen at step 0, read out at the last step."""
    return xs[0, :, 0]


def _leaves_changed(before, after):
    return [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)]


# ---------------------------------------------------------------------------------------------
# NNX


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_nnx_cell_is_the_pure_step(family):
    cell = FAMILIES[family]()
    module = ljnnx.Cell(cell, INPUT, rngs=nnx.Rngs(0))
    assert_trees_equal(module.lj_params(), cell.init(nnx.Rngs(0).params(), INPUT))
    assert type(module.lj_params()) is type(cell.init(jax.random.PRNGKey(0), INPUT))
    x = _xs(2, (BATCH, INPUT))
    state = jax.tree.map(lambda a: a + 0.3, module.initial_state((BATCH,)))
    assert_trees_equal(module(state, x), cell.step(module.lj_params(), state, x))
    assert_trees_equal(module.initial_state((BATCH,)), cell.initial_state(module.lj_params(), (BATCH,)))


@pytest.mark.parametrize("family, config", CASES)
def test_nnx_rnn_equals_pure_functions(family, config):
    num_layers, bidirectional, reverse, kwargs = CONFIGS[config]
    cell = FAMILIES[family]()
    model = ljnnx.RNN(cell, INPUT, num_layers=num_layers, bidirectional=bidirectional, rngs=nnx.Rngs(3))
    cells = (cell,) * num_layers
    assert_trees_equal(model.lj_params(), lj.init_layers(cells, nnx.Rngs(3).params(), INPUT, bidirectional))
    actual, expected = run_both(
        lambda model, xs, kwargs: model(xs, reverse=reverse, **kwargs),
        lambda params, xs, kwargs: pure_reference(cells, params, xs, bidirectional, reverse, kwargs),
        model,
        _xs(),
        kwargs,
    )
    assert_trees_equal(actual, expected)


def test_nnx_rnn_batch_first_state_and_wrapped_params():
    cells = (lj.lstm(HIDDEN), lj.gru(HIDDEN + 1))  # a different cell per layer
    params = lj.init_layers(cells, jax.random.PRNGKey(4), INPUT)
    model = ljnnx.RNN(cells, params=params, time_major=False)
    xs, mask = _xs(), jnp.ones((STEPS, BATCH), bool).at[4:, 2].set(False)
    state = (lj.LSTMState(h=jnp.full(HIDDEN, 0.5), c=jnp.full(HIDDEN, -0.5)), jnp.full((BATCH, HIDDEN + 1), 0.2))
    (finals, ys), (expected_finals, expected_ys) = run_both(
        lambda model, xs, state, mask: model(jnp.swapaxes(xs, 0, 1), state, lengths=LENGTHS, mask=mask.T),
        lambda params, xs, state, mask: lj.unroll_layers(cells, params, xs, state, lengths=LENGTHS, mask=mask),
        model,
        xs,
        state,
        mask,
    )
    assert ys.shape == (BATCH, STEPS, HIDDEN + 1)
    assert_trees_equal((finals, ys), (expected_finals, jnp.swapaxes(expected_ys, 0, 1)))


def test_nnx_learned_initial_state_is_used_and_trained():
    cell = lj.lstm(HIDDEN)
    model = ljnnx.RNN(cell, INPUT, num_layers=2, learn_initial_state=True, rngs=nnx.Rngs(0))
    nnx.update(model, jax.tree.map(lambda a: a + 0.25, nnx.state(model, nnx.Param)))  # make it nonzero
    initial = model.initial_state()
    assert initial[0].h.shape == (HIDDEN,)
    xs = _xs()
    actual, expected = run_both(
        lambda model, xs, initial: model(xs),
        lambda params, xs, initial: lj.unroll_layers([cell] * 2, params, xs, initial),
        model,
        xs,
        initial,
    )
    assert_trees_equal(actual, expected)
    assert_trees_equal(model.initial_state((BATCH,))[1].c, jnp.broadcast_to(initial[1].c, (BATCH, HIDDEN)))
    grads = nnx.jit(nnx.grad(lambda m, xs: jnp.sum(m(xs)[1] ** 2)))(model, xs)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads["initial"]))


def _nnx_loss(model, xs, targets):
    _, ys = model(xs)
    return jnp.mean((ys[-1, :, 0] - targets) ** 2)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_nnx_optimizer_step_changes_params_and_lowers_loss(family):
    model = ljnnx.RNN(FAMILIES[family](), INPUT, num_layers=2 if family == "lstm" else 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    traces = []

    @nnx.jit
    def train_step(model, optimizer, xs, targets):
        traces.append(None)
        loss, grads = nnx.value_and_grad(_nnx_loss)(model, xs, targets)
        optimizer.update(model, grads)
        return loss

    xs = _xs(5, (STEPS, 16, INPUT))
    targets = _regression(xs)
    before = model.lj_params()
    loss0 = float(train_step(model, optimizer, xs, targets))  # the loss before the update
    assert all(_leaves_changed(before, model.lj_params()))
    assert float(train_step(model, optimizer, xs, targets)) < loss0  # the loss after one step
    for _ in range(STEPS_TO_HALVE):
        loss = train_step(model, optimizer, xs, targets)
    assert float(loss) < 0.5 * loss0
    assert len(traces) == 1, "the jitted train step recompiled"


def test_nnx_dropout_train_eval_and_seed():
    cell = lj.lstm(HIDDEN)
    xs = _xs()
    forward = nnx.jit(lambda model, xs: model(xs))
    pure_without_dropout = jax.jit(lambda params, xs: lj.unroll_layers([cell] * 2, params, xs))

    def make():
        return ljnnx.RNN(cell, INPUT, num_layers=2, dropout_rate=0.5, rngs=nnx.Rngs(0))

    model = make()
    assert not model.deterministic  # training mode by default, as nnx.Dropout
    _, ys_a = forward(model, xs)
    _, ys_b = forward(model, xs)
    assert not np.array_equal(ys_a, ys_b)  # the stream advances: a new mask per call
    assert_trees_equal(forward(make(), xs), forward(make(), xs))  # same seed, same masks
    key = jax.random.PRNGKey(9)
    assert_trees_equal(
        *run_both(
            lambda model, xs, key: model(xs, rngs=key),
            lambda params, xs, key: lj.unroll_layers([cell] * 2, params, xs, dropout_rate=0.5, dropout_key=key),
            model,
            xs,
            key,
        )
    )
    no_dropout = pure_without_dropout(model.lj_params(), xs)
    assert not np.array_equal(ys_a, no_dropout[1])
    assert_trees_equal(forward(nnx.view(model, deterministic=True), xs), no_dropout)
    model.eval()
    assert_trees_equal(forward(model, xs), no_dropout)
    model.train()
    assert not np.array_equal(forward(model, xs)[1], no_dropout[1])
    unkeyed = ljnnx.RNN(cell, num_layers=2, dropout_rate=0.5, params=model.lj_params())
    with pytest.raises(ValueError, match="needs a key"):
        unkeyed(xs)


def test_nnx_cell_runs_in_flax_nnx_rnn():
    cell = lj.gru(HIDDEN)
    module = ljnnx.Cell(cell, INPUT, rngs=nnx.Rngs(1))
    xs = _xs()
    lengths = jnp.maximum(LENGTHS, 1)  # Flax reads length 0 as T
    carry, ys = nnx.RNN(module, return_carry=True, time_major=True)(xs, seq_lengths=lengths)
    final, expected = lj.unroll(cell, module.lj_params(), xs, lengths=lengths)
    valid = (jnp.arange(STEPS)[:, None] < lengths)[..., None]
    np.testing.assert_allclose(ys * valid, expected, atol=1e-6)
    np.testing.assert_allclose(carry, final, atol=1e-6)


def test_nnx_errors_are_clear():
    cell = lj.lstm(HIDDEN)
    model = ljnnx.RNN(cell, INPUT, num_layers=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"input_size=5 .*made for another input size"):
        model(_xs(shape=(STEPS, BATCH, 5)))
    with pytest.raises(ValueError, match=r"reverse=True is supported for one layer"):
        model(_xs(), reverse=True)
    with pytest.raises(ValueError, match=r"one initial state per layer"):
        model(_xs(), (cell.initial_state(model.lj_params()[0]),))
    with pytest.raises(ValueError, match=r"input_size=3"):
        ljnnx.Cell(cell, INPUT, rngs=nnx.Rngs(0))(cell.initial_state(model.lj_params()[0]), jnp.ones(5))
    with pytest.raises(ValueError, match=r"lj.Cell"):
        ljnnx.RNN(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), INPUT, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"num_layers=3 disagrees"):
        ljnnx.RNN([cell, cell], INPUT, num_layers=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"input_size and rngs"):
        ljnnx.RNN(cell, INPUT)
    with pytest.raises(ValueError, match=r"dropout_rate must lie in \[0, 1\)"):
        ljnnx.RNN(cell, INPUT, num_layers=2, dropout_rate=1.0, rngs=nnx.Rngs(0))
    with pytest.warns(UserWarning, match="with one layer"):
        ljnnx.RNN(cell, INPUT, dropout_rate=0.1, rngs=nnx.Rngs(0))
    assert "lj.Cell('lstm', hidden_size=4)" in repr(model)


# ---------------------------------------------------------------------------------------------
# Linen


@pytest.mark.parametrize(
    "family, config",
    [(family, "two_layers_bidirectional_mask_resets") for family in sorted(FAMILIES)] + [("lstm", "reverse_lengths")],
)
def test_linen_rnn_equals_pure_functions(family, config):
    num_layers, bidirectional, reverse, kwargs = CONFIGS[config]
    cell = FAMILIES[family]()
    model = ljlinen.RNN(cell, num_layers=num_layers, bidirectional=bidirectional)
    xs = _xs()
    variables = model.init(jax.random.PRNGKey(0), xs)
    layers = variables["params"]["layers"]
    assert jax.tree.structure(layers) == jax.tree.structure(
        lj.init_layers([cell] * num_layers, jax.random.PRNGKey(0), INPUT, bidirectional)
    )
    actual, expected = jax.jit(
        lambda variables, xs, kwargs: (
            model.apply(variables, xs, reverse=reverse, **kwargs),
            pure_reference((cell,) * num_layers, variables["params"]["layers"], xs, bidirectional, reverse, kwargs),
        )
    )(variables, xs, kwargs)
    assert_trees_equal(actual, expected)


def test_linen_batch_first_and_learned_initial_state():
    cell = lj.lstm(HIDDEN)
    model = ljlinen.RNN(cell, num_layers=2, time_major=False, learn_initial_state=True)
    xs = jnp.swapaxes(_xs(), 0, 1)
    variables = model.init(jax.random.PRNGKey(0), xs)
    variables = jax.tree.map(lambda a: a + 0.25, variables)
    initial = variables["params"]["initial_states"]
    (finals, ys), expected = jax.jit(
        lambda variables, xs: (
            model.apply(variables, xs, lengths=LENGTHS),
            lj.unroll_layers(
                [cell] * 2, variables["params"]["layers"], jnp.swapaxes(xs, 0, 1), initial, lengths=LENGTHS
            ),
        )
    )(variables, xs)
    assert_trees_equal((finals, ys), (expected[0], jnp.swapaxes(expected[1], 0, 1)))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_linen_optax_step_changes_params_and_lowers_loss(family):
    model = ljlinen.RNN(FAMILIES[family](), num_layers=2 if family == "lstm" else 1)
    xs = _xs(5, (STEPS, 16, INPUT))
    targets = _regression(xs)
    params = model.init(jax.random.PRNGKey(0), xs)["params"]
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    def loss_fn(params):
        _, ys = model.apply({"params": params}, xs)
        return jnp.mean((ys[-1, :, 0] - targets) ** 2)

    @jax.jit
    def train_step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    new_params, opt_state, loss0 = train_step(params, opt_state)  # loss0: before the update
    assert all(_leaves_changed(params, new_params))
    new_params, opt_state, loss1 = train_step(new_params, opt_state)
    assert float(loss1) < float(loss0)
    for _ in range(STEPS_TO_HALVE):
        new_params, opt_state, loss = train_step(new_params, opt_state)
    assert float(loss) < 0.5 * float(loss0)


def test_linen_dropout_needs_deterministic_and_is_seeded():
    cell = lj.lstm(HIDDEN)
    model = ljlinen.RNN(cell, num_layers=2, dropout_rate=0.5)
    xs = _xs()
    variables = model.init(jax.random.PRNGKey(0), xs, deterministic=True)
    with pytest.raises(Exception, match="deterministic"):
        model.apply(variables, xs)

    apply = jax.jit(model.apply, static_argnames="deterministic")

    def train(seed):
        return apply(variables, xs, deterministic=False, rngs={"dropout": jax.random.PRNGKey(seed)})

    no_dropout = jax.jit(lambda params, xs: lj.unroll_layers([cell] * 2, params, xs))(variables["params"]["layers"], xs)
    assert_trees_equal(apply(variables, xs, deterministic=True), no_dropout)
    assert_trees_equal(train(1), train(1))
    assert not np.array_equal(train(1)[1], train(2)[1])
    assert not np.array_equal(train(1)[1], no_dropout[1])


def test_linen_cell_is_the_pure_step_and_runs_in_flax_nn_rnn():
    cell = lj.lstm(HIDDEN)
    x = _xs(2, (BATCH, INPUT))
    module = ljlinen.Cell(cell)
    carry = module.initialize_carry(jax.random.PRNGKey(0), x.shape)
    assert_trees_equal(carry, cell.initial_state(cell.init(jax.random.PRNGKey(0), INPUT), (BATCH,)))
    variables = module.init(jax.random.PRNGKey(0), carry, x)
    params = variables["params"]["cell"]
    assert isinstance(params, lj.LSTMParams)
    assert_trees_equal(module.apply(variables, carry, x), cell.step(params, carry, x))

    xs = _xs()
    rnn = nn.RNN(ljlinen.Cell(cell), return_carry=True)  # batch-first, Flax's own scan
    lengths = jnp.maximum(LENGTHS, 1)  # Flax reads length 0 as T
    carry, ys = rnn.apply({"params": {"cell": variables["params"]}}, jnp.swapaxes(xs, 0, 1), seq_lengths=lengths)
    final, expected = lj.unroll(cell, params, xs, lengths=lengths)
    valid = (jnp.arange(STEPS)[:, None] < lengths)[..., None]
    np.testing.assert_allclose(jnp.swapaxes(ys, 0, 1) * valid, expected, atol=1e-6)
    np.testing.assert_allclose(jnp.stack(carry), jnp.stack(final), atol=1e-6)


def test_linen_errors_are_clear():
    model = ljlinen.RNN(lj.gru(HIDDEN))
    variables = model.init(jax.random.PRNGKey(0), _xs())
    with pytest.raises(ValueError, match=r"input_size=5 .*made for another input size"):
        model.apply(variables, _xs(shape=(STEPS, BATCH, 5)))
    with pytest.raises(ValueError, match=r"lj.Cell"):
        ljlinen.RNN(nn.GRUCell(HIDDEN)).init(jax.random.PRNGKey(0), _xs())


# ---------------------------------------------------------------------------------------------


def test_core_import_does_not_import_flax():
    code = (
        "import sys, lstmjax; assert 'flax' not in sys.modules, 'import lstmjax imported flax'; "
        "import lstmjax.nnx, lstmjax.linen; assert 'flax' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
