"""`from_torch` / `to_torch` against real PyTorch modules: outputs and final states, not shapes.

* torch → lstmjax: seeded `nn.LSTM`, `nn.GRU`, `nn.RNN` (tanh, relu) with 1–3 layers,
  bidirectional or not, `batch_first` or not, `bias=False`, nonzero initial states and packed
  variable lengths; outputs and `(h_n, c_n)` agree to 1e-5 in float32 (1e-10 in float64).
* lstmjax → torch: params from `lj.init_layers`, `to_torch`, `load_state_dict(strict=True)`
  into a fresh module, same outputs; torch → lstmjax → torch keeps weights and bias sums.
* every malformed state dict raises a `ValueError` naming the key.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lstmjax as lj
from lstmjax._torch_interop import TorchModel, from_torch, from_torch_state, to_torch, to_torch_state

torch = pytest.importorskip("torch", reason="PyTorch interop tests need torch (pip install torch==2.13.0)")
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

INPUT, HIDDEN, BATCH, STEPS = 3, 5, 4, 7
TOL32, TOL64 = 1e-5, 1e-10
LENGTHS = np.array([STEPS, 2, 1, 5])


@dataclass(frozen=True)
class Family:
    name: str  # what from_torch reports
    torch_class: type
    nonlinearity: str = "tanh"

    def module(self, seed: int, **kwargs) -> nn.Module:
        torch.manual_seed(seed)
        extra = {"nonlinearity": self.nonlinearity} if self.torch_class is nn.RNN else {}
        return self.torch_class(INPUT, HIDDEN, **extra, **kwargs)

    def cell(self) -> lj.Cell:
        return {"lstm": lj.lstm, "gru": lj.gru}.get(self.name, lambda h: lj.rnn(h, self.nonlinearity))(HIDDEN)

    def __str__(self) -> str:
        return self.name if self.torch_class is not nn.RNN else f"rnn_{self.nonlinearity}"


LSTM, GRU = Family("lstm", nn.LSTM), Family("gru", nn.GRU)
RNN_TANH, RNN_RELU = Family("rnn", nn.RNN, "tanh"), Family("rnn", nn.RNN, "relu")
FAMILIES = [LSTM, GRU, RNN_TANH, RNN_RELU]
# (num_layers, bidirectional, batch_first, bias, packed lengths): every option on and off in each family.
CONFIGS = [(1, False, False, True, False), (2, True, True, True, True), (3, False, True, False, True),
           (2, True, False, False, False)]


def run_torch(module: nn.Module, x: np.ndarray, initial, lengths=None):
    """Runs `module` on `x` (its own layout) and returns numpy `(ys, h_n)` or `(ys, (h_n, c_n))`."""
    batch_first = module.batch_first
    hx = tuple(torch.from_numpy(a) for a in initial) if isinstance(initial, tuple) else torch.from_numpy(initial)
    inputs = torch.from_numpy(x)
    if lengths is not None:
        inputs = pack_padded_sequence(inputs, torch.as_tensor(lengths), batch_first=batch_first, enforce_sorted=False)
    with torch.no_grad():
        out, final = module(inputs, hx)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=STEPS)
    final = tuple(a.numpy() for a in final) if isinstance(final, tuple) else final.numpy()
    return out.numpy(), final


def random_initial(module: nn.Module, seed: int, dtype=np.float32):
    """`h_0` (and `c_0` for the LSTM) in PyTorch's layout `(num_layers·D, B, H)`."""
    rng = np.random.default_rng(seed)
    shape = (module.num_layers * (2 if module.bidirectional else 1), BATCH, HIDDEN)
    h0 = rng.uniform(-0.9, 0.9, shape).astype(dtype)
    return (h0, rng.normal(size=shape).astype(dtype)) if isinstance(module, nn.LSTM) else h0


def run_lstmjax(model: TorchModel, x: np.ndarray, initial, batch_first: bool, lengths=None):
    """`lj.unroll_layers` on the converted model, returning `(ys, final)` in PyTorch's layouts."""
    states = from_torch_state(*initial, model.bidirectional) if isinstance(initial, tuple) else (
        from_torch_state(initial, bidirectional=model.bidirectional))
    xs = jnp.swapaxes(x, 0, 1) if batch_first else jnp.asarray(x)

    @jax.jit  # one compilation instead of one per scan: keeps the file fast
    def run(params, xs, states, lengths):
        return lj.unroll_layers(model.cells, params, xs, states, lengths, bidirectional=model.bidirectional)

    finals, ys = run(model.params, xs, states, None if lengths is None else jnp.asarray(lengths))
    return (jnp.swapaxes(ys, 0, 1) if batch_first else ys), to_torch_state(finals)


def random_layers(cells, bidirectional: bool = False, bias: bool = True, input_size: int = INPUT):
    """`lj.init_layers`' params (structure from `eval_shape`, which compiles nothing) with U(±0.5)
    values: every bias (the GRU's `b_hn` too) nonzero so a misplaced one shows; zero if not `bias`."""
    shapes = jax.eval_shape(lambda key: lj.init_layers(cells, key, input_size, bidirectional=bidirectional),
                            jax.random.PRNGKey(0))
    rng = np.random.default_rng(len(cells))
    return jax.tree_util.tree_map(
        lambda s: rng.uniform(-0.5, 0.5, s.shape).astype(s.dtype) * (bias or len(s.shape) > 1), shapes)


def assert_same(actual, desired, tol=TOL32, dtype=np.float32):
    for index, (a, d) in enumerate(zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(desired),
                                       strict=True)):
        assert a.dtype == dtype and a.shape == d.shape, f"leaf {index}: {a.dtype}{a.shape} vs {d.shape}"
        np.testing.assert_allclose(np.asarray(a), d, rtol=tol, atol=tol, err_msg=f"leaf {index}")


# --------------------------------------------------------------------------- torch -> lstmjax


@pytest.mark.parametrize("num_layers, bidirectional, batch_first, bias, packed", CONFIGS,
                         ids=[f"{n}layers-{'bi' if b else 'uni'}-{'bf' if f else 'tf'}-{'bias' if s else 'nobias'}"
                              f"{'-packed' if p else ''}" for n, b, f, s, p in CONFIGS])
@pytest.mark.parametrize("family", FAMILIES, ids=str)
def test_from_torch_reproduces_module(family, num_layers, bidirectional, batch_first, bias, packed):
    module = family.module(seed=num_layers, num_layers=num_layers, bidirectional=bidirectional,
                           batch_first=batch_first, bias=bias)
    shape = (BATCH, STEPS, INPUT) if batch_first else (STEPS, BATCH, INPUT)
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    initial = random_initial(module, seed=2)
    lengths = LENGTHS if packed else None

    model = from_torch(module.state_dict(), nonlinearity=family.nonlinearity)

    assert (model.family, model.bidirectional, len(model.cells)) == (family.name, bidirectional, num_layers)
    assert model.cells[0].name == str(family)
    if not bias:  # no bias keys: zero biases
        assert not any(np.any(p.b) for p in jax.tree_util.tree_leaves(model.params, is_leaf=lambda p: hasattr(p, "b")))
    assert_same(run_lstmjax(model, x, initial, batch_first, lengths), run_torch(module, x, initial, lengths))


def test_from_torch_in_float64_matches_to_1e_10():
    module = LSTM.module(seed=3, num_layers=2, bidirectional=True).double()
    x = np.random.default_rng(4).normal(size=(STEPS, BATCH, INPUT))
    initial = random_initial(module, seed=5, dtype=np.float64)
    with jax.enable_x64(True):
        actual = run_lstmjax(from_torch(module.state_dict()), x, initial, batch_first=False, lengths=LENGTHS)
        assert_same(actual, run_torch(module, x, initial, LENGTHS), tol=TOL64, dtype=np.float64)


def test_numpy_values_and_prefix_of_a_parent_module():
    """A parent's state dict with `prefix=`, and plain numpy values, give the same params."""
    parent = nn.Sequential()
    parent.add_module("encoder", GRU.module(seed=6, num_layers=2))
    parent.add_module("head", nn.Linear(HIDDEN, 1))
    from_parent = from_torch(parent.state_dict(), prefix="encoder.")
    from_numpy = from_torch({k: v.numpy() for k, v in parent.encoder.state_dict().items()})
    assert len(from_parent.params) == 2
    for a, b in zip(jax.tree_util.tree_leaves(from_parent.params), jax.tree_util.tree_leaves(from_numpy.params),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_torch_is_not_imported():
    code = "import sys, lstmjax._torch_interop; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- lstmjax -> torch


@pytest.mark.parametrize("num_layers, bidirectional, bias", [(1, False, True), (2, True, True), (3, False, False)])
@pytest.mark.parametrize("family", FAMILIES, ids=str)
def test_to_torch_loads_into_module_with_same_outputs(family, num_layers, bidirectional, bias):
    cells = [family.cell()] * num_layers
    params = random_layers(cells, bidirectional, bias)
    module = family.module(seed=0, num_layers=num_layers, bidirectional=bidirectional, bias=bias)

    module.load_state_dict({k: torch.from_numpy(v) for k, v in to_torch(params, bias=bias).items()}, strict=True)

    model = TorchModel(tuple(cells), params, bidirectional, family.name)
    x = np.random.default_rng(9).normal(size=(STEPS, BATCH, INPUT)).astype(np.float32)
    initial = random_initial(module, seed=10)
    assert_same(run_lstmjax(model, x, initial, batch_first=False), run_torch(module, x, initial))


@pytest.mark.parametrize("family", [LSTM, GRU, RNN_TANH], ids=str)
def test_torch_round_trip_keeps_weights_and_bias_sums(family):
    module = family.module(seed=11, num_layers=2, bidirectional=True)
    original = {k: v.numpy() for k, v in module.state_dict().items()}
    state = to_torch(from_torch(module.state_dict()))
    assert list(state) == list(original)  # PyTorch's key order too
    for key, value in original.items():
        if key.startswith("weight"):
            np.testing.assert_array_equal(state[key], value, err_msg=key)
        elif key.startswith("bias_ih"):
            other = key.replace("bias_ih", "bias_hh")
            np.testing.assert_allclose(state[key] + state[other], value + original[other], rtol=1e-6, atol=1e-6)
    if family is GRU:  # b_hn stays on the recurrent side: it sits inside the reset gate
        np.testing.assert_array_equal(state["bias_hh_l0"][2 * HIDDEN:], original["bias_hh_l0"][2 * HIDDEN:])


def test_to_torch_single_layer_params_and_prefix():
    (params,) = random_layers([lj.gru(HIDDEN)])
    state = to_torch(params, prefix="encoder.")
    assert sorted(state) == ["encoder.bias_hh_l0", "encoder.bias_ih_l0", "encoder.weight_hh_l0", "encoder.weight_ih_l0"]
    assert state["encoder.weight_ih_l0"].shape == (3 * HIDDEN, INPUT)
    assert from_torch(state, prefix="encoder.").params[0]._fields == lj.GRUParams._fields


# --------------------------------------------------------------------------- errors


def lstm_state(**kwargs) -> dict:
    return dict(LSTM.module(seed=0, **kwargs).state_dict())


def without(state: dict, *keys: str) -> dict:
    return {k: v for k, v in state.items() if k not in keys}


FROM_TORCH_ERRORS = {
    "proj_size": (lambda: lstm_state(proj_size=2), r"'weight_hr_l0'.*proj_size.*not supported"),
    "missing weight_hh_l1": (lambda: without(lstm_state(num_layers=2), "weight_hh_l1"),
                             r"missing key 'weight_hh_l1' \(expected shape \(20, 5\)\) for a 2-layer LSTM"),
    "layer gap": (lambda: without(lstm_state(num_layers=3), "weight_ih_l1", "weight_hh_l1", "bias_ih_l1",
                                  "bias_hh_l1"), r"missing key 'weight_ih_l1'"),
    "missing reverse": (lambda: without(lstm_state(bidirectional=True), "weight_hh_l0_reverse"),
                        r"missing key 'weight_hh_l0_reverse'.*bidirectional"),
    "missing one bias": (lambda: without(lstm_state(), "bias_hh_l0"), r"missing key 'bias_hh_l0'.*with biases"),
    "missing weight_ih_l0": (lambda: without(lstm_state(), "weight_ih_l0"), r"missing key 'weight_ih_l0'"),
    "mismatched shape": (lambda: {**lstm_state(num_layers=2), "weight_ih_l1": np.zeros((20, 4), np.float32)},
                         r"'weight_ih_l1' has shape \(20, 4\), expected \(20, 5\)"),
    "mismatched bias": (lambda: {**lstm_state(), "bias_ih_l0": np.zeros(5, np.float32)},
                        r"'bias_ih_l0' has shape \(5,\), expected \(20,\)"),
    "GRU layer in an LSTM": (lambda: {**lstm_state(num_layers=2), **{k: v for k, v in GRU.module(
        seed=0, num_layers=2).state_dict().items() if k.endswith("_l1")}},
        r"'weight_ih_l1' has shape \(15, 5\), expected \(20, 5\) for a 2-layer LSTM"),
    "not (G·H, H)": (lambda: {**lstm_state(), "weight_hh_l0": np.zeros((10, 5), np.float32)},
                     r"weight_hh_l0 must have shape \(G·H, H\).*got shape \(10, 5\)"),
    "1-D weight": (lambda: {**lstm_state(), "weight_hh_l0": np.zeros(20, np.float32)},
                   r"'weight_hh_l0' must be 2-D, got shape \(20,\)"),
    "unknown key": (lambda: {**lstm_state(), "weight_ih_l0_forward": np.zeros(1)},
                    r"unknown key 'weight_ih_l0_forward'"),
    "integer values": (lambda: {**lstm_state(), "bias_ih_l0": np.zeros(20, np.int32)},
                       r"'bias_ih_l0' must hold floating-point values, got dtype int32"),
    "empty": (dict, r"state_dict is empty"),
}


@pytest.mark.parametrize("name", FROM_TORCH_ERRORS)
def test_from_torch_errors_name_the_key(name):
    make_state, message = FROM_TORCH_ERRORS[name]
    with pytest.raises(ValueError, match=message):
        from_torch(make_state())


def test_from_torch_argument_errors():
    with pytest.raises(ValueError, match=r"no key starts with prefix 'decoder\.'"):
        from_torch(lstm_state(), prefix="decoder.")
    with pytest.raises(ValueError, match=r"nonlinearity must be 'tanh' or 'relu'.*'sigmoid'"):
        from_torch(lstm_state(), nonlinearity="sigmoid")


def test_to_torch_errors_name_the_field():
    lstm_params = random_layers([lj.lstm(HIDDEN)] * 2)
    bi_params = random_layers([lj.lstm(HIDDEN)] * 2, bidirectional=True)
    (gru_params,) = random_layers([lj.gru(HIDDEN)], input_size=HIDDEN)
    with pytest.raises(ValueError, match=r"params\[1\] must be an lj.LSTMParams like params\[0\].*got GRUParams"):
        to_torch((lstm_params[0], gru_params))
    with pytest.raises(ValueError, match=r"params\[1\] must be an lj.Bidirectional.*got LSTMParams"):
        to_torch((bi_params[0], lstm_params[1]))
    with pytest.raises(ValueError, match=r"params\[1\]\.forward\.w_x has shape \(5, 20\), expected \(10, 20\)"):
        to_torch((bi_params[0], lj.Bidirectional(lstm_params[1], lstm_params[1])))
    with pytest.raises(ValueError, match=r"params\[1\]\.w_x has shape \(5, 24\), expected \(5, 20\)"):
        to_torch((lstm_params[0], random_layers([lj.lstm(6)], input_size=HIDDEN)[0]))
    with pytest.raises(ValueError, match=r"params\[0\] has nonzero biases.*bias=False"):
        to_torch(lstm_params, bias=False)
    with pytest.raises(ValueError, match=r"params\[0\] must be an lj.LSTMParams, .*got dict"):
        to_torch([{"w_x": 1}])
    with pytest.raises(ValueError, match=r"at least one layer"):
        to_torch(())


def test_torch_state_errors():
    with pytest.raises(ValueError, match=r"h must have shape \(num_layers·2, \*batch, H\), got shape \(3, 4, 5\)"):
        from_torch_state(np.zeros((3, BATCH, HIDDEN), np.float32), bidirectional=True)
    with pytest.raises(ValueError, match=r"c must have the shape of h"):
        from_torch_state(np.zeros((2, BATCH, HIDDEN), np.float32), np.zeros((2, HIDDEN), np.float32))
