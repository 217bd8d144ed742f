"""PyTorch interop: `nn.LSTM`, `nn.GRU` and `nn.RNN` state dicts to lstmjax parameters and back.

PyTorch stores, for layer `k` (and `_reverse` for the backward direction), out→in matrices
`weight_ih_l{k}: (G·H, input)`, `weight_hh_l{k}: (G·H, H)` and two biases `bias_ih_l{k}`,
`bias_hh_l{k}: (G·H,)`, with G = 4 for the LSTM (gates i, f, g, o), 3 for the GRU (r, z, n) and
1 for the RNN; gate orders are the same in lstmjax. lstmjax stores in→out matrices and one bias:

    w_x = weight_ih.T,  w_h = weight_hh.T,  b = bias_ih + bias_hh          (LSTM, RNN)
    b = bias_ih + [bias_hh_r, bias_hh_z, 0],  b_hn = bias_hh_n              (GRU)

PyTorch is never imported: tensors are read through `.detach().cpu().numpy()`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from lstmjax._cell import Cell, Params, State
from lstmjax._gru import GRUParams, gru
from lstmjax._layers import Bidirectional
from lstmjax._lstm import LSTMParams, LSTMState, lstm
from lstmjax._rnn import RNNParams, rnn

_KEY = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(0|[1-9]\d*)(_reverse)?")
_FAMILIES = {4: ("lstm", LSTMParams), 3: ("gru", GRUParams), 1: ("rnn", RNNParams)}


class TorchModel(NamedTuple):
    """A PyTorch recurrent module's weights as lstmjax cells and per-layer params.

    Run it with `lj.unroll_layers(model.cells, model.params, xs, bidirectional=model.bidirectional)`.
    Pass `model.params` (not the whole model: `cells` holds functions) through `jit` and `grad`.

    Attributes:
        cells: one `lj.Cell` per layer (`num_layers` of them).
        params: one entry per layer: the cell's params, or `lj.Bidirectional(forward, backward)`.
        bidirectional: whether the module was `bidirectional=True`.
        family: `"lstm"`, `"gru"` or `"rnn"`.
    """

    cells: tuple[Cell, ...]
    params: tuple[Params, ...]
    bidirectional: bool
    family: str


def _as_array(name: str, value: Any) -> np.ndarray | jax.Array:
    """A torch tensor (duck-typed) as numpy, a jax array as it is (jit-safe), anything else as numpy."""
    if hasattr(value, "detach"):
        try:
            value = value.detach().cpu().numpy()
        except TypeError as error:  # e.g. bfloat16, which numpy cannot hold
            raise ValueError(f"{name!r}: cannot read the tensor as numpy ({error}); convert it with .float()") from None
    array = value if isinstance(value, jax.Array) else np.asarray(value)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise ValueError(f"{name!r} must hold floating-point values, got dtype {array.dtype}")
    return array


def from_torch(state_dict: Mapping[str, Any], nonlinearity: str = "tanh", prefix: str = "") -> TorchModel:
    """Converts the state dict of an `nn.LSTM`, `nn.GRU` or `nn.RNN` to lstmjax cells and params.

    The family, `hidden_size`, `num_layers`, `bidirectional` and `bias` come from the keys and
    shapes (`weight_hh_l0: (G·H, H)`, G = 4 LSTM, 3 GRU, 1 RNN; no bias keys: zero biases). Not in
    a state dict: `nn.RNN`'s nonlinearity (pass it here), `dropout`, and `batch_first` (feed such a
    module's `x: (B, T, I)` as `xs = jnp.swapaxes(x, 0, 1)`). States convert with `from_torch_state`
    and `to_torch_state`. `nn.LSTM(proj_size=...)` is not supported.

    Args:
        state_dict: `module.state_dict()` (torch tensors or numpy/jax arrays, layout as above).
        nonlinearity: `nn.RNN`'s `"tanh"` (its default) or `"relu"`; ignored for LSTM and GRU.
        prefix: read only the keys starting with it (e.g. `"encoder."` in a parent module's state
            dict) and strip it; other keys are ignored.

    Returns:
        A `TorchModel(cells, params, bidirectional, family)`, arrays in the state dict's dtype
        (float64 becomes float32 unless `jax_enable_x64` is on).

    Raises:
        ValueError: naming the key: unknown, missing or `proj_size` keys, a shape that does not fit
            the module inferred from `weight_ih_l0` and `weight_hh_l0`, or an empty dict.
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu' (nn.RNN's), got {nonlinearity!r}")
    entries: dict[str, np.ndarray | jax.Array] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        match = _KEY.fullmatch(key[len(prefix):])
        if match is None:
            raise ValueError(f"unknown key {key!r}: expected weight_ih_l<k>, weight_hh_l<k>, bias_ih_l<k>, bias_hh_l<k>"
                             " (+ _reverse) of nn.LSTM/GRU/RNN; pass prefix= for a submodule's keys")
        if match[1] == "weight_hr":
            raise ValueError(f"{key!r}: nn.LSTM(proj_size=...) (a projected hidden state) is not supported")
        entries[key[len(prefix):]] = _as_array(key, value)
    if not entries:
        raise ValueError("state_dict is empty" + (f" (no key starts with prefix {prefix!r})" if prefix else ""))

    def require(name: str) -> np.ndarray | jax.Array:
        if name not in entries:
            raise ValueError(f"missing key {prefix + name!r} in the state dict")
        if entries[name].ndim != 2:
            raise ValueError(f"{prefix + name!r} must be 2-D, got shape {entries[name].shape}")
        return entries[name]

    rows, hidden = require("weight_hh_l0").shape
    if hidden == 0 or rows % hidden or rows // hidden not in _FAMILIES:
        raise ValueError(f"{prefix}weight_hh_l0 must have shape (G·H, H) with G = 4 (LSTM), 3 (GRU) or 1 (RNN), "
                         f"got shape {(rows, hidden)}")
    family, params_type = _FAMILIES[rows // hidden]
    input_size = require("weight_ih_l0").shape[1]
    matches = [_KEY.fullmatch(name) for name in entries]
    num_layers = 1 + max(int(m[2]) for m in matches)
    bidirectional = any(m[3] for m in matches)
    bias = any(m[1].startswith("bias") for m in matches)
    what = (f"{num_layers}-layer {'bidirectional ' if bidirectional else ''}{family.upper()} "
            f"{'with' if bias else 'without'} biases, hidden size {hidden} (from weight_hh_l0)")

    def layer_params(layer: int, suffix: str) -> Params:
        layer_input = input_size if layer == 0 else hidden * (2 if bidirectional else 1)
        shapes = {"weight_ih": (rows, layer_input), "weight_hh": (rows, hidden)}
        shapes.update({"bias_ih": (rows,), "bias_hh": (rows,)} if bias else {})
        arrays = {}
        for name, shape in shapes.items():
            key = f"{name}_l{layer}{suffix}"
            if key not in entries:
                raise ValueError(f"missing key {prefix + key!r} (expected shape {shape}) for a {what}")
            if entries[key].shape != shape:
                raise ValueError(f"{prefix + key!r} has shape {entries[key].shape}, expected {shape} for a {what}")
            arrays[name] = entries[key]
        zeros = np.zeros(rows, arrays["weight_hh"].dtype)
        b_ih, b_hh = arrays.get("bias_ih", zeros), arrays.get("bias_hh", zeros)
        w_x, w_h = jnp.asarray(arrays["weight_ih"].T), jnp.asarray(arrays["weight_hh"].T)
        if family == "gru":  # b_hn stays apart: the reset gate scales it
            b = b_ih + np.concatenate([b_hh[:2 * hidden], zeros[:hidden]])
            return GRUParams(w_x=w_x, w_h=w_h, b=jnp.asarray(b), b_hn=jnp.asarray(b_hh[2 * hidden:]))
        return params_type(w_x=w_x, w_h=w_h, b=jnp.asarray(b_ih + b_hh))

    params = tuple(Bidirectional(layer_params(k, ""), layer_params(k, "_reverse")) if bidirectional
                   else layer_params(k, "") for k in range(num_layers))
    cell = lstm(hidden) if family == "lstm" else gru(hidden) if family == "gru" else rnn(hidden, nonlinearity)
    return TorchModel(cells=(cell,) * num_layers, params=params, bidirectional=bidirectional, family=family)


def to_torch(
    params: Params | Sequence[Params] | TorchModel, bias: bool = True, prefix: str = ""
) -> dict[str, np.ndarray]:
    """Converts lstmjax params to the state dict of the matching `nn.LSTM`, `nn.GRU` or `nn.RNN`.

    Load it with `module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})`
    into `nn.LSTM(input_size, H, num_layers=len(params), bidirectional=..., bias=bias)` (or
    `nn.GRU`, `nn.RNN(nonlinearity=...)`; the RNN's activation is not part of a state dict).
    lstmjax's one bias `b` goes to `bias_ih` and `bias_hh` is zero (for the GRU `bias_hh =
    [0, 0, b_hn]`), so torch → lstmjax → torch preserves outputs but not the split of the biases.

    Args:
        params: one entry per layer as `lj.init_layers` makes them (an `lj.Bidirectional` per layer
            if bidirectional; one family and `H` throughout), a single layer's, or a `TorchModel`.
        bias: write `bias_*` keys; `False` (for `bias=False` modules) requires zero biases.
        prefix: prepended to every key (e.g. `"encoder."`).

    Returns:
        `{key: numpy array}` in PyTorch's layout and key order (see `from_torch`).

    Raises:
        ValueError: naming the `params[k]` field: mixed families or directions, shapes that do not
            chain layer to layer, nonzero biases with `bias=False`.
    """
    params = params.params if isinstance(params, TorchModel) else params
    params = (params,) if isinstance(params, (LSTMParams, GRUParams, RNNParams, Bidirectional)) else tuple(params)
    if not params:
        raise ValueError("params must hold at least one layer, got an empty sequence")
    bidirectional = isinstance(params[0], Bidirectional)
    first = params[0].forward if bidirectional else params[0]
    gates = {params_type: g for g, (_, params_type) in _FAMILIES.items()}.get(type(first))
    if gates is None:
        raise ValueError(f"params[0] must be an lj.LSTMParams, GRUParams, RNNParams or a Bidirectional of one, got "
                         f"{type(first).__name__}")
    hidden, layer_input = np.shape(first.w_h)[0], np.shape(first.w_x)[0]
    state: dict[str, np.ndarray] = {}
    for layer, entry in enumerate(params):
        if isinstance(entry, Bidirectional) != bidirectional:
            raise ValueError(f"params[{layer}] must {'' if bidirectional else 'not '}be an lj.Bidirectional, as "
                             f"params[0] is{'' if bidirectional else ' not'}, got {type(entry).__name__}")
        pairs = (("", entry.forward), ("_reverse", entry.backward)) if bidirectional else (("", entry),)
        for suffix, p in pairs:
            where = f"params[{layer}]" + ((".backward" if suffix else ".forward") if bidirectional else "")
            if type(p) is not type(first):
                raise ValueError(f"{where} must be an lj.{type(first).__name__} like params[0] (PyTorch modules have "
                                 f"one family for all layers), got {type(p).__name__}")
            expected = {"w_x": (layer_input, gates * hidden), "w_h": (hidden, gates * hidden),
                        "b": (gates * hidden,), "b_hn": (hidden,)}
            arrays = {field: np.array(getattr(p, field)) for field in p._fields}
            for field, array in arrays.items():
                if array.shape != expected[field]:
                    raise ValueError(f"{where}.{field} has shape {array.shape}, expected {expected[field]} "
                                     f"(hidden size {hidden} of params[0], input size {layer_input} of this layer)")
            b_hh = np.zeros_like(arrays["b"])  # the GRU's b_hn stays recurrent-side: bias_hh = [0, 0, b_hn]
            b_hh[(gates - 1) * hidden:] = arrays.get("b_hn", 0.0)
            if not bias and (np.any(arrays["b"]) or np.any(b_hh)):
                raise ValueError(f"{where} has nonzero biases (b or b_hn), which a bias=False module cannot hold")
            for name, array in (("weight_ih", arrays["w_x"].T), ("weight_hh", arrays["w_h"].T),
                                ("bias_ih", arrays["b"]), ("bias_hh", b_hh))[:4 if bias else 2]:
                state[f"{prefix}{name}_l{layer}{suffix}"] = np.ascontiguousarray(array)
        layer_input = hidden * (2 if bidirectional else 1)
    return state


def from_torch_state(h: ArrayLike, c: ArrayLike | None = None, bidirectional: bool = False) -> tuple[State, ...]:
    """PyTorch's stacked initial state `h_0` (and `c_0`) as one state per layer, for `lj.unroll_layers`.

    Args:
        h: `h_0`, shape `(num_layers·D, *batch, H)`, row `D·layer + direction` (D = 2 if bidirectional).
        c: the LSTM's `c_0`, shape as `h`; `None` for the GRU and the RNN.
        bidirectional: whether the module is bidirectional.

    Returns:
        A tuple of `num_layers` states (`lj.LSTMState(h, c)` or arrays `(*batch, H)`), each an
        `lj.Bidirectional(forward, backward)` pair when `bidirectional`.
    """
    directions = 2 if bidirectional else 1
    h = jnp.asarray(_as_array("h", h))
    c = None if c is None else jnp.asarray(_as_array("c", c))
    if h.ndim < 2 or h.shape[0] % directions:
        raise ValueError(f"h must have shape (num_layers·{directions}, *batch, H), got shape {h.shape}")
    if c is not None and c.shape != h.shape:
        raise ValueError(f"c must have the shape of h, {h.shape}, got shape {c.shape}")
    rows = [h[k] if c is None else LSTMState(h=h[k], c=c[k]) for k in range(h.shape[0])]
    if bidirectional:
        return tuple(Bidirectional(rows[k], rows[k + 1]) for k in range(0, len(rows), 2))
    return tuple(rows)


def to_torch_state(states: Sequence[State]) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Per-layer final states (from `lj.unroll_layers`) in PyTorch's layout: `h_n` or `(h_n, c_n)`.

    Args:
        states: one state per layer (`lj.Bidirectional` pairs for a bidirectional stack).

    Returns:
        `h_n` of shape `(num_layers·D, *batch, H)`, row `D·layer + direction`; for the LSTM the
        pair `(h_n, c_n)`, as `nn.LSTM` returns it.
    """
    rows = [row for s in states for row in ((s.forward, s.backward) if isinstance(s, Bidirectional) else (s,))]
    if isinstance(rows[0], LSTMState):
        return jnp.stack([row.h for row in rows]), jnp.stack([row.c for row in rows])
    return jnp.stack(rows)
