"""lstmjax against PyTorch's `nn.LSTM`, `nn.GRU` and `nn.RNN` holding the same weights.

Every comparison builds a PyTorch module, copies its weights into lstmjax params with
`tests/torch_weights.py`, runs both on the same inputs and compares numbers, not shapes:

* outputs at every time step and the final states, in float64 to 1e-10 (and float32 to 1e-5);
* one layer of each family (LSTM, GRU, tanh and relu RNN), batched and unbatched inputs,
  zero and nonzero initial states, and gradients of a loss through the whole sequence;
* stacks of layers (`nn.LSTM(num_layers=3)`), bidirectional stacks, and variable lengths
  (`pack_padded_sequence(..., enforce_sorted=False)` against `lengths=`);
* the initialisation presets: `init="pytorch"` draws what PyTorch's modules draw, `"keras"`
  and `"flax"`/`"default"` give their documented biases and orthogonal recurrent kernels.

float64 runs inside `jax.enable_x64(True)` (the `x64` fixture) so the rest of the session
keeps JAX's float32 default.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_all_close

import lstmjax as lj

torch = pytest.importorskip("torch", reason="PyTorch reference tests need torch (pip install torch==2.13.0)")
import torch_weights  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

INPUT_SIZE = 4
HIDDEN = 5
BATCH = 4
STEPS = 10
TOL64 = 1e-10
TOL32 = 1e-5


@dataclass(frozen=True)
class Family:
    """One cell family and its PyTorch counterpart."""

    name: str
    torch_class: type
    torch_kwargs: tuple[tuple[str, str], ...]
    make_cell: Callable[[], lj.Cell]
    convert: Callable  # torch module, layer, reverse -> lstmjax params
    has_cell_state: bool  # the LSTM's state is (h, c); the others' is h

    def torch_module(self, input_size: int = INPUT_SIZE, **kwargs) -> nn.Module:
        return self.torch_class(input_size, HIDDEN, **dict(self.torch_kwargs), **kwargs)

    def __str__(self) -> str:
        return self.name


LSTM = Family("lstm", nn.LSTM, (), lambda: lj.lstm(HIDDEN), torch_weights.lstm_params, True)
GRU = Family("gru", nn.GRU, (), lambda: lj.gru(HIDDEN), torch_weights.gru_params, False)
RNN_TANH = Family("rnn_tanh", nn.RNN, (("nonlinearity", "tanh"),), lambda: lj.rnn(HIDDEN, "tanh"),
                  torch_weights.rnn_params, False)
RNN_RELU = Family("rnn_relu", nn.RNN, (("nonlinearity", "relu"),), lambda: lj.rnn(HIDDEN, "relu"),
                  torch_weights.rnn_params, False)
FAMILIES = [LSTM, GRU, RNN_TANH, RNN_RELU]


@pytest.fixture
def x64():
    """Runs the test with JAX's float64 enabled, for this test only."""
    with jax.enable_x64(True):
        yield


# --------------------------------------------------------------------------- helpers


def make_torch_module(family: Family, seed: int, dtype=torch.float64, **kwargs) -> nn.Module:
    """A PyTorch module with seeded default (U(±1/sqrt(H))) weights, in `dtype`."""
    torch.manual_seed(seed)
    return family.torch_module(**kwargs).to(dtype)


def random_inputs(seed: int, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    return (1.5 * np.random.default_rng(seed).normal(size=shape)).astype(dtype)


def random_initial_state(seed: int, rows: int, batch_shape: tuple[int, ...], dtype=np.float64):
    """Initial `(h0, c0)` in PyTorch's layout `(num_layers·num_directions, *batch, H)`."""
    rng = np.random.default_rng(seed)
    h0 = rng.uniform(-0.9, 0.9, size=(rows, *batch_shape, HIDDEN)).astype(dtype)
    c0 = rng.normal(scale=1.5, size=(rows, *batch_shape, HIDDEN)).astype(dtype)
    return h0, c0


def run_torch(family: Family, module: nn.Module, xs: np.ndarray, initial=None, lengths=None):
    """Runs `module` (time-major) and returns numpy `(ys, h_n, c_n)`; `c_n` is None without a cell state.

    With `lengths` the input is packed with `enforce_sorted=False` and the output padded back
    to `T` steps with zeros.
    """
    x = torch.from_numpy(xs)
    hx = None
    if initial is not None:
        h0, c0 = (torch.from_numpy(a) for a in initial)
        hx = (h0, c0) if family.has_cell_state else h0
    if lengths is not None:
        x = pack_padded_sequence(x, torch.as_tensor(lengths, dtype=torch.int64), enforce_sorted=False)
    with torch.no_grad():
        out, final = module(x, hx)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, total_length=xs.shape[0])
    h_n, c_n = final if family.has_cell_state else (final, None)
    return out.numpy(), h_n.numpy(), None if c_n is None else c_n.numpy()


def layer_states(family: Family, h: np.ndarray, c: np.ndarray | None, num_layers: int, bidirectional: bool):
    """PyTorch's stacked `(num_layers·num_directions, ...)` states as lstmjax per-layer states.

    Row `2·layer + direction` of PyTorch's `h_n` is layer `layer`, direction 0 forward, 1 backward.
    """

    def one(row: int):
        if family.has_cell_state:
            return lj.LSTMState(h=jnp.asarray(h[row]), c=jnp.asarray(c[row]))
        return jnp.asarray(h[row])

    if bidirectional:
        return tuple(lj.Bidirectional(forward=one(2 * layer), backward=one(2 * layer + 1))
                     for layer in range(num_layers))
    return tuple(one(layer) for layer in range(num_layers))


def assert_matches_torch(actual_finals, actual_ys, expected_finals, expected_ys, dtype=jnp.float64) -> None:
    """Compares outputs and final states to 1e-10 in float64 (1e-5 in float32), after checking
    that lstmjax really ran in `dtype`."""
    assert actual_ys.dtype == dtype, f"expected a {jnp.dtype(dtype).name} run, got {actual_ys.dtype}"
    tol = TOL64 if dtype == jnp.float64 else TOL32
    np.testing.assert_allclose(np.asarray(actual_ys), expected_ys, rtol=tol, atol=tol, err_msg="outputs ys")
    assert_trees_all_close(actual_finals, expected_finals, rtol=tol, atol=tol)


def assert_zero_past_lengths(ys, lengths) -> None:
    ys = np.asarray(ys)
    for b, length in enumerate(lengths):
        assert np.all(ys[length:, b] == 0.0), f"sequence {b}: outputs past its length {length} are not zero"


# --------------------------------------------------------------------------- one layer


@pytest.mark.parametrize("family", FAMILIES, ids=str)
def test_one_layer_matches_torch(x64, family):
    module = make_torch_module(family, seed=0)
    xs = random_inputs(1, (STEPS, BATCH, INPUT_SIZE))
    ys_torch, h_n, c_n = run_torch(family, module, xs)

    final, ys = lj.unroll(family.make_cell(), family.convert(module), jnp.asarray(xs))

    assert_matches_torch(final, ys, layer_states(family, h_n, c_n, 1, False)[0], ys_torch)


@pytest.mark.parametrize("family", FAMILIES, ids=str)
def test_one_layer_matches_torch_in_float32(family):
    module = make_torch_module(family, seed=0, dtype=torch.float32)
    xs = random_inputs(1, (STEPS, BATCH, INPUT_SIZE), np.float32)
    ys_torch, h_n, c_n = run_torch(family, module, xs)

    final, ys = lj.unroll(family.make_cell(), family.convert(module), jnp.asarray(xs))

    assert_matches_torch(final, ys, layer_states(family, h_n, c_n, 1, False)[0], ys_torch, dtype=jnp.float32)


@pytest.mark.parametrize("family", FAMILIES, ids=str)
def test_nonzero_initial_state_matches_torch(x64, family):
    module = make_torch_module(family, seed=2)
    xs = random_inputs(3, (STEPS, BATCH, INPUT_SIZE))
    h0, c0 = random_initial_state(4, 1, (BATCH,))
    ys_torch, h_n, c_n = run_torch(family, module, xs, initial=(h0, c0))

    initial = layer_states(family, h0, c0, 1, False)[0]
    final, ys = lj.unroll(family.make_cell(), family.convert(module), jnp.asarray(xs), state=initial)

    assert_matches_torch(final, ys, layer_states(family, h_n, c_n, 1, False)[0], ys_torch)


@pytest.mark.parametrize("family", FAMILIES, ids=str)
def test_unbatched_input_matches_torch(x64, family):
    """xs of shape `(T, input_size)` against PyTorch's unbatched input, with an initial state."""
    module = make_torch_module(family, seed=5)
    xs = random_inputs(6, (STEPS, INPUT_SIZE))
    h0, c0 = random_initial_state(7, 1, ())
    ys_torch, h_n, c_n = run_torch(family, module, xs, initial=(h0, c0))

    initial = layer_states(family, h0, c0, 1, False)[0]
    final, ys = lj.unroll(family.make_cell(), family.convert(module), jnp.asarray(xs), state=initial)

    assert ys.shape == (STEPS, HIDDEN)
    assert_matches_torch(final, ys, layer_states(family, h_n, c_n, 1, False)[0], ys_torch)


@pytest.mark.parametrize("family", FAMILIES, ids=str)
def test_packed_variable_lengths_match_torch(x64, family):
    """`lengths=` against a packed batch: outputs zero past each length, final state at its last step."""
    module = make_torch_module(family, seed=8)
    lengths = np.array([STEPS, 3, 1, 7])
    xs = random_inputs(9, (STEPS, BATCH, INPUT_SIZE))
    h0, c0 = random_initial_state(10, 1, (BATCH,))
    ys_torch, h_n, c_n = run_torch(family, module, xs, initial=(h0, c0), lengths=lengths)

    initial = layer_states(family, h0, c0, 1, False)[0]
    final, ys = lj.unroll(family.make_cell(), family.convert(module), jnp.asarray(xs), state=initial,
                          lengths=jnp.asarray(lengths))

    assert_zero_past_lengths(ys, lengths)
    assert_matches_torch(final, ys, layer_states(family, h_n, c_n, 1, False)[0], ys_torch)


def torch_gradients_as_params(family: Family, module: nn.Module):
    """The gradient of PyTorch's parameters in lstmjax's layout.

    `b` is `b_ih` plus (part of) `b_hh`, so `dL/db = dL/db_ih`; the GRU's `b_hn` is `b_hh[2H:]`.
    """
    grads = {name: p.grad.numpy() for name, p in module.named_parameters()}
    w_x, w_h, b = grads["weight_ih_l0"].T, grads["weight_hh_l0"].T, grads["bias_ih_l0"]
    if family is GRU:
        return lj.GRUParams(w_x=w_x, w_h=w_h, b=b, b_hn=grads["bias_hh_l0"][2 * HIDDEN:])
    params_type = lj.LSTMParams if family is LSTM else lj.RNNParams
    return params_type(w_x=w_x, w_h=w_h, b=b)


@pytest.mark.parametrize("family", FAMILIES, ids=str)
def test_gradients_match_torch_autograd(x64, family):
    """Gradients of `Σ ys·u + Σ h_T·v` with respect to every weight and every input."""
    module = make_torch_module(family, seed=11)
    xs = random_inputs(12, (STEPS, BATCH, INPUT_SIZE))
    rng = np.random.default_rng(13)
    u, v = rng.normal(size=(STEPS, BATCH, HIDDEN)), rng.normal(size=(BATCH, HIDDEN))

    x_torch = torch.from_numpy(xs).requires_grad_(True)
    out, final = module(x_torch)
    h_n = final[0] if family.has_cell_state else final
    ((out * torch.from_numpy(u)).sum() + (h_n[0] * torch.from_numpy(v)).sum()).backward()

    cell = family.make_cell()

    def loss(params, xs):
        final, ys = lj.unroll(cell, params, xs)
        h = final.h if family.has_cell_state else final
        return jnp.sum(ys * u) + jnp.sum(h * v)

    grad_params, grad_xs = jax.grad(loss, argnums=(0, 1))(family.convert(module), jnp.asarray(xs))

    assert_trees_all_close(grad_params, torch_gradients_as_params(family, module), rtol=TOL64, atol=TOL64)
    np.testing.assert_allclose(np.asarray(grad_xs), x_torch.grad.numpy(), rtol=TOL64, atol=TOL64)


# --------------------------------------------------------------------------- stacks of layers


def test_three_layer_lstm_matches_torch(x64):
    module = make_torch_module(LSTM, seed=14, num_layers=3)
    xs = random_inputs(15, (STEPS, BATCH, INPUT_SIZE))
    ys_torch, h_n, c_n = run_torch(LSTM, module, xs)

    cells = [LSTM.make_cell()] * 3
    params = torch_weights.stacked_params(module, torch_weights.lstm_params)
    finals, ys = lj.unroll_layers(cells, params, jnp.asarray(xs))

    assert_matches_torch(finals, ys, layer_states(LSTM, h_n, c_n, 3, False), ys_torch)


def test_two_layer_bidirectional_lstm_matches_torch(x64):
    module = make_torch_module(LSTM, seed=16, num_layers=2, bidirectional=True)
    xs = random_inputs(17, (STEPS, BATCH, INPUT_SIZE))
    ys_torch, h_n, c_n = run_torch(LSTM, module, xs)

    cells = [LSTM.make_cell()] * 2
    params = torch_weights.stacked_params(module, torch_weights.lstm_params)
    finals, ys = lj.unroll_layers(cells, params, jnp.asarray(xs), bidirectional=True)

    assert ys.shape == (STEPS, BATCH, 2 * HIDDEN)
    assert_matches_torch(finals, ys, layer_states(LSTM, h_n, c_n, 2, True), ys_torch)


STACKS = [(LSTM, 3, False), (LSTM, 2, True), (GRU, 2, True), (RNN_TANH, 2, True)]


@pytest.mark.parametrize("family, num_layers, bidirectional", STACKS,
                         ids=[f"{f}-{n}layers-{'bi' if b else 'uni'}" for f, n, b in STACKS])
def test_stack_with_lengths_and_initial_state_matches_torch(x64, family, num_layers, bidirectional):
    """Packed variable lengths through a stack: the backward direction starts at each sequence's
    own last step and its final state is the one after reading back to step 0."""
    module = make_torch_module(family, seed=18, num_layers=num_layers, bidirectional=bidirectional)
    directions = 2 if bidirectional else 1
    lengths = np.array([6, STEPS, 1, 4])
    xs = random_inputs(19, (STEPS, BATCH, INPUT_SIZE))
    h0, c0 = random_initial_state(20, num_layers * directions, (BATCH,))
    ys_torch, h_n, c_n = run_torch(family, module, xs, initial=(h0, c0), lengths=lengths)

    cells = [family.make_cell()] * num_layers
    params = torch_weights.stacked_params(module, family.convert)
    initial = layer_states(family, h0, c0, num_layers, bidirectional)
    finals, ys = lj.unroll_layers(cells, params, jnp.asarray(xs), states=initial,
                                  lengths=jnp.asarray(lengths), bidirectional=bidirectional)

    assert_zero_past_lengths(ys, lengths)
    assert_matches_torch(finals, ys, layer_states(family, h_n, c_n, num_layers, bidirectional), ys_torch)


def test_unbatched_bidirectional_stack_matches_torch(x64):
    module = make_torch_module(LSTM, seed=21, num_layers=2, bidirectional=True)
    xs = random_inputs(22, (STEPS, INPUT_SIZE))
    h0, c0 = random_initial_state(23, 4, ())
    ys_torch, h_n, c_n = run_torch(LSTM, module, xs, initial=(h0, c0))

    params = torch_weights.stacked_params(module, torch_weights.lstm_params)
    finals, ys = lj.unroll_layers([LSTM.make_cell()] * 2, params, jnp.asarray(xs),
                                  states=layer_states(LSTM, h0, c0, 2, True), bidirectional=True)

    assert_matches_torch(finals, ys, layer_states(LSTM, h_n, c_n, 2, True), ys_torch)


# --------------------------------------------------------------------------- initialisation presets

INIT_HIDDEN = 16
INIT_INPUT = 8
BOUND = 1.0 / math.sqrt(INIT_HIDDEN)  # PyTorch's U(±1/sqrt(H))
UNIFORM_VARIANCE = BOUND**2 / 3  # variance of one U(±bound)
INIT_CELLS = {"lstm": lambda init: lj.lstm(INIT_HIDDEN, init=init),
                   "gru": lambda init: lj.gru(INIT_HIDDEN, init=init),
                   "rnn": lambda init: lj.rnn(INIT_HIDDEN, init=init)}
TORCH_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
CONVERTERS = {"lstm": torch_weights.lstm_params, "gru": torch_weights.gru_params, "rnn": torch_weights.rnn_params}


@functools.cache
def pytorch_preset_draws(name: str, count: int = 1000):
    """`count` independent draws of `init="pytorch"` params of cell `name`, stacked along a
    leading axis (cached: two tests read them)."""
    cell = INIT_CELLS[name]("pytorch")
    keys = jax.random.split(jax.random.PRNGKey(0), count)
    return jax.vmap(lambda key: cell.init(key, INIT_INPUT))(keys)


def torch_draws(name: str, count: int):
    """The params of `count` freshly initialised PyTorch modules, in lstmjax's layout, stacked."""
    torch.manual_seed(0)
    draws = [CONVERTERS[name](TORCH_CLASSES[name](INIT_INPUT, INIT_HIDDEN)) for _ in range(count)]
    return jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *draws)


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov–Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(np.ravel(a)), np.sort(np.ravel(b))
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def ks_critical(a: np.ndarray, b: np.ndarray, alpha: float = 1e-4) -> float:
    """The KS distance that two samples of one distribution exceed with probability `alpha`."""
    n, m = np.size(a), np.size(b)
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n + m) / (n * m))


def assert_single_uniform(sample: np.ndarray, what: str) -> None:
    """`sample` looks like U(±bound): inside the bound, reaching it, variance bound²/3."""
    sample = np.ravel(np.asarray(sample, np.float64))
    assert np.max(np.abs(sample)) <= BOUND, f"{what}: |value| exceeds 1/sqrt(H)"
    assert np.min(sample) < -0.98 * BOUND and np.max(sample) > 0.98 * BOUND, f"{what}: does not reach ±1/sqrt(H)"
    assert abs(np.mean(sample)) < 0.02 * BOUND, f"{what}: mean {np.mean(sample)} is not 0"
    np.testing.assert_allclose(np.var(sample), UNIFORM_VARIANCE, rtol=0.03, err_msg=f"{what}: variance")


def assert_sum_of_two_uniforms(sample: np.ndarray, what: str) -> None:
    """`sample` looks like b_ih + b_hh: |value| <= 2·bound, variance 2·bound²/3."""
    sample = np.ravel(np.asarray(sample, np.float64))
    assert np.max(np.abs(sample)) <= 2 * BOUND, f"{what}: |value| exceeds 2/sqrt(H)"
    assert np.max(np.abs(sample)) > 1.5 * BOUND, f"{what}: never leaves ±1.5/sqrt(H), not a sum of two draws"
    assert abs(np.mean(sample)) < 0.03 * BOUND, f"{what}: mean {np.mean(sample)} is not 0"
    np.testing.assert_allclose(np.var(sample), 2 * UNIFORM_VARIANCE, rtol=0.04, err_msg=f"{what}: variance")


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_pytorch_preset_draws_pytorch_distributions(name):
    params = pytorch_preset_draws(name)
    assert_single_uniform(params.w_x, f"{name} w_x")
    assert_single_uniform(params.w_h, f"{name} w_h")
    if name == "gru":  # b = b_ih + [b_hh_r, b_hh_z, 0], b_hn = b_hh_n
        assert_sum_of_two_uniforms(params.b[:, :2 * INIT_HIDDEN], "gru b_r, b_z")
        assert_single_uniform(params.b[:, 2 * INIT_HIDDEN:], "gru b_n")
        assert_single_uniform(params.b_hn, "gru b_hn")
    else:  # the LSTM's forget bias too: the preset leaves the drawn value there
        assert_sum_of_two_uniforms(params.b, f"{name} b")


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_pytorch_preset_matches_torch_module_initialisation(name):
    """Leaf by leaf, lstmjax's draws and converted PyTorch modules' weights have one distribution."""
    ours = pytorch_preset_draws(name)
    theirs = torch_draws(name, count=300)
    for field, our_leaf, their_leaf in zip(ours._fields, ours, theirs):
        our_leaf, their_leaf = np.asarray(our_leaf, np.float64), np.asarray(their_leaf, np.float64)
        np.testing.assert_allclose(np.var(our_leaf), np.var(their_leaf), rtol=0.05,
                                   err_msg=f"{name} {field}: variance differs from PyTorch's")
        assert ks_distance(our_leaf, their_leaf) < ks_critical(our_leaf, their_leaf), (
            f"{name} {field}: distribution differs from PyTorch's (KS distance "
            f"{ks_distance(our_leaf, their_leaf):.4f})")


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_keras_preset_biases_and_orthonormal_recurrent_rows(name):
    """Keras: zero biases except the LSTM forget bias 1; the whole `(H, k·H)` `w_h` has orthonormal rows."""
    params = INIT_CELLS[name]("keras").init(jax.random.PRNGKey(1), INIT_INPUT)
    expected_b = np.zeros_like(params.b)
    if name == "lstm":
        expected_b[INIT_HIDDEN:2 * INIT_HIDDEN] = 1.0
    np.testing.assert_array_equal(params.b, expected_b)
    if name == "gru":
        np.testing.assert_array_equal(params.b_hn, np.zeros(INIT_HIDDEN))
    w_h = np.asarray(params.w_h, np.float64)
    np.testing.assert_allclose(w_h @ w_h.T, np.eye(INIT_HIDDEN), atol=1e-5)


@pytest.mark.parametrize("preset, forget_bias", [("flax", 0.0), ("default", 1.0)])
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_flax_and_default_presets_have_orthogonal_gate_blocks(name, preset, forget_bias):
    """Flax (and the default): zero bias (default: LSTM forget bias 1), each `(H, H)` gate block
    of `w_h` orthogonal, `Wᵀ W = I`."""
    params = INIT_CELLS[name](preset).init(jax.random.PRNGKey(2), INIT_INPUT)
    expected_b = np.zeros_like(params.b)
    if name == "lstm":
        expected_b[INIT_HIDDEN:2 * INIT_HIDDEN] = forget_bias
    np.testing.assert_array_equal(params.b, expected_b)
    w_h = np.asarray(params.w_h, np.float64)
    for gate, block in enumerate(np.split(w_h, w_h.shape[1] // INIT_HIDDEN, axis=1)):
        np.testing.assert_allclose(block.T @ block, np.eye(INIT_HIDDEN), atol=1e-5, err_msg=f"gate block {gate}")
