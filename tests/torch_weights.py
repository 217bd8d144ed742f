"""Test helper: converts the weights of PyTorch's `nn.LSTM`, `nn.GRU` and `nn.RNN` to lstmjax params.

PyTorch stores out→in matrices (`weight_ih_l{k}`: `(gates·H, input_size)`) and two biases;
lstmjax stores in→out matrices and one merged bias (plus the GRU's `b_hn`). Gate order is the
same in both: (i, f, g, o) for the LSTM and (r, z, n) for the GRU. Keys ending in `_reverse`
belong to the backward direction of a bidirectional layer.

Arrays are made with `jnp.asarray`, so call these inside `jax.enable_x64(True)` to keep
float64 weights float64.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import lstmjax as lj


def _weights(module, layer: int, reverse: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`(w_ih, w_hh, b_ih, b_hh)` of one layer and direction, as numpy arrays in PyTorch's layout."""
    suffix = f"l{layer}" + ("_reverse" if reverse else "")
    state = {name: tensor.detach().cpu().numpy() for name, tensor in module.state_dict().items()}
    return (state[f"weight_ih_{suffix}"], state[f"weight_hh_{suffix}"],
            state[f"bias_ih_{suffix}"], state[f"bias_hh_{suffix}"])


def lstm_params(module, layer: int = 0, reverse: bool = False) -> lj.LSTMParams:
    """`LSTMParams(w_x=weight_ih.T, w_h=weight_hh.T, b=bias_ih + bias_hh)` of one layer of an `nn.LSTM`."""
    w_ih, w_hh, b_ih, b_hh = _weights(module, layer, reverse)
    return lj.LSTMParams(w_x=jnp.asarray(w_ih.T), w_h=jnp.asarray(w_hh.T), b=jnp.asarray(b_ih + b_hh))


def gru_params(module, layer: int = 0, reverse: bool = False) -> lj.GRUParams:
    """`GRUParams` of one layer of an `nn.GRU`: `b = b_ih + [b_hh_r, b_hh_z, 0]`, `b_hn = b_hh_n`."""
    w_ih, w_hh, b_ih, b_hh = _weights(module, layer, reverse)
    hidden = w_hh.shape[1]
    recurrent_rz = np.concatenate([b_hh[:2 * hidden], np.zeros(hidden, b_hh.dtype)])
    return lj.GRUParams(w_x=jnp.asarray(w_ih.T), w_h=jnp.asarray(w_hh.T),
                        b=jnp.asarray(b_ih + recurrent_rz), b_hn=jnp.asarray(b_hh[2 * hidden:]))


def rnn_params(module, layer: int = 0, reverse: bool = False) -> lj.RNNParams:
    """`RNNParams(w_x=weight_ih.T, w_h=weight_hh.T, b=bias_ih + bias_hh)` of one layer of an `nn.RNN`."""
    w_ih, w_hh, b_ih, b_hh = _weights(module, layer, reverse)
    return lj.RNNParams(w_x=jnp.asarray(w_ih.T), w_h=jnp.asarray(w_hh.T), b=jnp.asarray(b_ih + b_hh))


def stacked_params(module, convert) -> tuple:
    """Per-layer params of a (possibly multi-layer, bidirectional) PyTorch module, as
    `lj.unroll_layers` wants them: `Bidirectional(forward, backward)` per layer when bidirectional.

    Args:
        module: an `nn.LSTM`, `nn.GRU` or `nn.RNN`.
        convert: the matching converter, `lstm_params`, `gru_params` or `rnn_params`.
    """
    layers = []
    for layer in range(module.num_layers):
        if module.bidirectional:
            layers.append(lj.Bidirectional(forward=convert(module, layer), backward=convert(module, layer, True)))
        else:
            layers.append(convert(module, layer))
    return tuple(layers)
