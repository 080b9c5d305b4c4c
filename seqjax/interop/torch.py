"""PyTorch interop: ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` weights in and out of seqjax.

PyTorch is an optional dependency, imported only when one of these functions runs
(the ``torch`` extra: ``pip install "seqjax[torch]"``).

Weight layout. For layer ``k`` and direction ``d`` PyTorch stores
``weight_ih_l{k}[_reverse]`` as ``[G*H, I_k]`` and ``weight_hh_l{k}[_reverse]`` as
``[G*H, H]`` (``G = 1`` for RNN, ``4`` for LSTM, ``3`` for GRU; ``I_0 = I``,
``I_k = D*H`` above the first layer), with two biases ``bias_ih`` and ``bias_hh`` of
``[G*H]``. seqjax stores kernels ``[in, out]``, so ``w_i = weight_ih.T`` and
``w_h = weight_hh.T``. The gate blocks are in the same order on both sides: LSTM
``i, f, g, o``, GRU ``r, z, n``.

Bias convention. seqjax keeps one bias where PyTorch keeps two:

* RNN, LSTM: ``b = bias_ih + bias_hh``.
* GRU (reset after, as PyTorch): the ``n`` block of ``bias_hh`` sits inside the reset
  product, so it stays apart as ``b_hn``: ``b = bias_ih + [bias_hh_r, bias_hh_z, 0]``
  and ``b_hn = bias_hh_n``.

:func:`to_torch` writes the summed bias into ``bias_ih`` and zeros into ``bias_hh``
(GRU: ``bias_hh = [0, 0, b_hn]``), so seqjax -> PyTorch -> seqjax is bit-exact, and so
is PyTorch -> seqjax -> PyTorch for modules whose ``bias_hh`` (GRU: its ``r, z``
blocks) is zero.

Model structure. One layer, one direction: a seqjax cell. ``num_layers > 1``:
``seqjax.stack`` of them, with PyTorch's inter-layer ``dropout``.
``bidirectional=True``: ``seqjax.bidirectional(cell, cell)`` per layer (merge by
concatenation, which is what PyTorch feeds the next layer). Final states map to
PyTorch's ``h_n`` / ``c_n`` with :func:`final_state_to_torch`, initial states from
``h_0`` / ``c_0`` with :func:`state_from_torch`.

Example::

    model, params = from_torch(torch_lstm)          # nn.LSTM(I, H, batch_first=True)
    state = state_from_torch(model, params, h_0, c_0)
    final, ys = seqjax.unroll_batch(model, params, xs, state, lengths=lengths)
    h_n, c_n = final_state_to_torch(final)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax._extras import require
from seqjax.cells import GRUParams, LSTMParams, LSTMState, RNNParams, gru, lstm, rnn
from seqjax.compose import BidirectionalParams, bidirectional, stack


# PyTorch's nn.RNNBase.mode -> number of fused gate blocks; -> seqjax params type
_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
_PARAMS = {"RNN_TANH": RNNParams, "RNN_RELU": RNNParams, "LSTM": LSTMParams, "GRU": GRUParams}


def _torch():
    return require("torch", "seqjax.interop.torch")


class _Spec(NamedTuple):
    """What a PyTorch recurrent module is, read off its attributes."""

    mode: str  # "RNN_TANH", "RNN_RELU", "LSTM" or "GRU"
    hidden_size: int
    num_layers: int
    num_directions: int
    bias: bool
    dropout: float
    suffixes: tuple  # parameter-name suffix of each (layer, direction), PyTorch's order
    is_cell: bool  # nn.RNNCell / nn.LSTMCell / nn.GRUCell


def _spec(module) -> _Spec:
    nn = _torch().nn
    if isinstance(module, nn.RNNBase):
        if module.mode not in _GATES:
            raise TypeError(f"from_torch: unsupported recurrent mode {module.mode!r} "
                            f"(supported: {sorted(_GATES)})")
        if getattr(module, "proj_size", 0):
            raise NotImplementedError(
                f"nn.LSTM(proj_size={module.proj_size}) has a projection weight_hr that "
                "seqjax's lstm does not have; use proj_size=0")
        layers, dirs = module.num_layers, 2 if module.bidirectional else 1
        suffixes = tuple(f"_l{k}" + ("_reverse" if d else "")
                         for k in range(layers) for d in range(dirs))
        return _Spec(module.mode, module.hidden_size, layers, dirs, bool(module.bias),
                     float(module.dropout), suffixes, False)
    if isinstance(module, nn.RNNCell):
        mode = "RNN_" + module.nonlinearity.upper()
    elif isinstance(module, nn.LSTMCell):
        mode = "LSTM"
    elif isinstance(module, nn.GRUCell):
        mode = "GRU"
    else:
        raise TypeError("expected a torch.nn.RNN, LSTM or GRU (or RNNCell, LSTMCell, "
                        f"GRUCell), got {type(module).__name__}")
    if mode not in _GATES:
        raise TypeError(f"unsupported nn.RNNCell nonlinearity {module.nonlinearity!r}")
    return _Spec(mode, module.hidden_size, 1, 1, bool(module.bias), 0.0, ("",), True)


def _jax_dtype(torch_dtype):
    torch = _torch()
    table = {torch.float16: jnp.float16, torch.bfloat16: jnp.bfloat16,
             torch.float32: jnp.float32, torch.float64: jnp.float64}
    if torch_dtype not in table:
        raise TypeError(f"from_torch: parameters must be floating, got {torch_dtype}")
    dtype = jnp.dtype(table[torch_dtype])
    if dtype == jnp.float64 and jax.dtypes.canonicalize_dtype(jnp.float64) != dtype:
        raise TypeError("from_torch: the module is float64 but JAX runs without 64-bit "
                        "types; enable them (jax.config.update('jax_enable_x64', True)) or "
                        "convert module.float() first")
    return dtype


def _numpy(tensor):
    """A tensor as a float32 numpy array (float64 stays float64); exact for f16/bf16."""
    torch = _torch()
    wide = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return tensor.detach().to(device="cpu", dtype=wide).numpy()


def _uniform(bound):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _cell(spec: _Spec, dtype):
    H = spec.hidden_size
    kernels = _uniform(1.0 / math.sqrt(H))
    options = dict(kernel_init=kernels, recurrent_init=kernels, param_dtype=dtype)
    if spec.mode == "LSTM":
        return lstm(H, forget_bias=0.0, **options)
    if spec.mode == "GRU":
        return gru(H, reset_after=True, **options)
    return rnn(H, activation=jnp.tanh if spec.mode == "RNN_TANH" else jax.nn.relu, **options)


def _direction_from_torch(module, spec: _Spec, suffix: str, dtype):
    w_ih = _numpy(getattr(module, "weight_ih" + suffix))
    w_hh = _numpy(getattr(module, "weight_hh" + suffix))
    width = w_ih.shape[0]
    if spec.bias:
        b_ih = _numpy(getattr(module, "bias_ih" + suffix))
        b_hh = _numpy(getattr(module, "bias_hh" + suffix))
    else:
        b_ih = b_hh = np.zeros((width,), w_ih.dtype)
    as_jax = lambda a: jnp.asarray(a, dtype)
    if spec.mode == "GRU":
        H = spec.hidden_size
        b = b_ih + np.concatenate([b_hh[:2 * H], np.zeros((H,), b_hh.dtype)])
        return GRUParams(as_jax(w_ih.T), as_jax(w_hh.T), as_jax(b), as_jax(b_hh[2 * H:]))
    return _PARAMS[spec.mode](as_jax(w_ih.T), as_jax(w_hh.T), as_jax(b_ih + b_hh))


def from_torch(module):
    """Converts a PyTorch recurrent module to a seqjax model and its params.

    .. math::
        w_i = W_{ih}^\\top, \\quad w_h = W_{hh}^\\top, \\quad
        b = b_{ih} + b_{hh} \\ \\text{(RNN, LSTM)}, \\quad
        b = b_{ih} + [b_{hr}, b_{hz}, 0], \\ b_{hn} = b_{hn} \\ \\text{(GRU)}

    Args:
      module: a ``torch.nn.RNN`` (``nonlinearity`` tanh or relu), ``nn.LSTM`` or
        ``nn.GRU`` with any ``num_layers``, ``bidirectional``, ``bias``,
        ``batch_first`` and ``dropout``; or an ``nn.RNNCell``, ``nn.LSTMCell``,
        ``nn.GRUCell``. Parameters may live on any device; float16, bfloat16,
        float32 and float64 (with JAX's x64 enabled) keep their dtype.
        ``batch_first`` changes no weight: seqjax's :func:`~seqjax.unroll_batch`
        takes ``[batch, time, features]`` (PyTorch's ``batch_first=True``); give it
        ``x.transpose(1, 0, 2)`` for a ``batch_first=False`` input.

    Returns:
      ``(model, params)``. ``model`` is :func:`~seqjax.rnn` / :func:`~seqjax.lstm` /
      :func:`~seqjax.gru` (``reset_after=True``) for one layer in one direction;
      :func:`~seqjax.bidirectional` ``(cell, cell)`` for one bidirectional layer;
      :func:`~seqjax.stack` of those for ``num_layers > 1`` (``dropout`` as
      PyTorch's, applied only when an ``rng`` is passed to the unroll). ``params``
      has the matching structure: :class:`~seqjax.RNNParams` /
      :class:`~seqjax.LSTMParams` / :class:`~seqjax.GRUParams` per direction,
      :class:`~seqjax.BidirectionalParams` per bidirectional layer, a tuple over
      layers. ``model.init`` draws kernels from ``U(-1/sqrt(H), 1/sqrt(H))`` as
      PyTorch does; its biases start at zero.

    Raises:
      TypeError: not a supported module, or float64 weights without JAX's x64.
      NotImplementedError: ``nn.LSTM(proj_size > 0)``.
    """
    spec = _spec(module)
    dtype = _jax_dtype(getattr(module, "weight_ih" + spec.suffixes[0]).dtype)
    directions = [_direction_from_torch(module, spec, s, dtype) for s in spec.suffixes]
    cell = _cell(spec, dtype)
    if spec.num_directions == 1:
        layer, layer_params = cell, directions
    else:
        layer = bidirectional(cell, cell)
        layer_params = [BidirectionalParams(f, b)
                        for f, b in zip(directions[0::2], directions[1::2])]
    if spec.num_layers == 1:
        return layer, layer_params[0]
    return (stack(*[layer] * spec.num_layers, dropout=spec.dropout), tuple(layer_params))


# ----------------------------------------------------------------------------- to torch


def _directions(params, spec: _Spec) -> list:
    """seqjax params of a converted model, one entry per (layer, direction)."""
    kind = _PARAMS[spec.mode]
    layers = (params,) if spec.num_layers == 1 else params
    if spec.num_layers > 1 and (type(params) is not tuple or len(params) != spec.num_layers):
        raise ValueError(f"to_torch: a {spec.num_layers}-layer module needs a tuple of "
                         f"{spec.num_layers} layer params (seqjax.stack), got "
                         f"{type(params).__name__}")
    out = []
    for k, layer in enumerate(layers):
        if spec.num_directions == 2:
            if not isinstance(layer, BidirectionalParams):
                raise ValueError(f"to_torch: layer {k} of a bidirectional module needs "
                                 f"BidirectionalParams, got {type(layer).__name__}")
            parts = [layer.forward, layer.backward]
        else:
            parts = [layer]
        for p in parts:
            if type(p) is not kind:
                raise ValueError(f"to_torch: layer {k} of a {spec.mode} module needs "
                                 f"{kind.__name__}, got {type(p).__name__}")
            if kind is GRUParams and p.b_hn is None:
                raise ValueError("to_torch: PyTorch's GRU is the reset-after form; params "
                                 "of seqjax.gru(reset_after=False) (b_hn=None) do not port")
        out.extend(parts)
    return out


def _check_shape(array, want, name):
    if tuple(array.shape) != tuple(want):
        raise ValueError(f"to_torch: {name} must have shape {list(want)} to fit the module, "
                         f"got {list(array.shape)}")


def _to_numpy(array):
    dtype = np.float64 if jnp.dtype(array.dtype) == jnp.float64 else np.float32
    return np.array(array, dtype=dtype, copy=True)


def to_torch(params, module):
    """Writes seqjax params into a PyTorch recurrent module, in place.

    .. math::
        W_{ih} = w_i^\\top, \\quad W_{hh} = w_h^\\top, \\quad b_{ih} = b, \\quad
        b_{hh} = 0 \\ \\text{(RNN, LSTM)}, \\quad b_{hh} = [0, 0, b_{hn}] \\ \\text{(GRU)}

    Putting the whole bias in ``bias_ih`` makes ``from_torch(to_torch(p, m))[1]``
    equal ``p`` bit for bit.

    Args:
      params: params with the structure :func:`from_torch` returns for ``module``
        (per direction :class:`~seqjax.RNNParams` / :class:`~seqjax.LSTMParams` /
        :class:`~seqjax.GRUParams` with ``b_hn``; :class:`~seqjax.BidirectionalParams`
        per bidirectional layer; a tuple over layers when ``num_layers > 1``).
      module: the ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` (or ``*Cell``) to overwrite;
        its sizes must match. Values are cast to its dtype and device.

    Returns:
      ``module``, with its parameters overwritten.

    Raises:
      ValueError: params of the wrong structure or shapes, or a non-zero bias for a
        ``bias=False`` module. Nothing is written unless every check passes.
    """
    torch = _torch()
    spec = _spec(module)
    directions = _directions(params, spec)
    H, G = spec.hidden_size, _GATES[spec.mode]
    writes = []
    for suffix, p in zip(spec.suffixes, directions):
        w_ih = getattr(module, "weight_ih" + suffix)
        _check_shape(p.w_i, (w_ih.shape[1], G * H), f"w_i of weight_ih{suffix}")
        _check_shape(p.w_h, (H, G * H), f"w_h of weight_hh{suffix}")
        _check_shape(p.b, (G * H,), f"b of bias_ih{suffix}")
        writes += [(w_ih, _to_numpy(p.w_i).T),
                   (getattr(module, "weight_hh" + suffix), _to_numpy(p.w_h).T)]
        b = _to_numpy(p.b)
        if spec.mode == "GRU":
            _check_shape(p.b_hn, (H,), f"b_hn of bias_hh{suffix}")
            b_hn = _to_numpy(p.b_hn)
            b_hh = np.concatenate([np.zeros((2 * H,), b_hn.dtype), b_hn])
        else:
            b_hh = np.zeros_like(b)
        if spec.bias:
            writes += [(getattr(module, "bias_ih" + suffix), b),
                       (getattr(module, "bias_hh" + suffix), b_hh)]
        elif np.any(b != 0) or np.any(b_hh != 0):
            raise ValueError(f"to_torch: the module has bias=False but the seqjax bias for "
                             f"'{suffix or 'the cell'}' is non-zero; build it with bias=True")
    with torch.no_grad():
        for target, value in writes:
            target.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return module


# ------------------------------------------------------------------------------ states


def final_state_to_torch(state):
    """Arranges a seqjax final state as PyTorch's ``h_n`` (and ``c_n``).

    PyTorch stacks one state per (layer, direction) in the order layer 0 forward,
    layer 0 backward, layer 1 forward, ...; this is the order of the leaves of the
    state a model from :func:`from_torch` returns.

    Args:
      state: a final state from :func:`~seqjax.unroll` (leaves ``[H]``) or
        :func:`~seqjax.unroll_batch` (leaves ``[batch, H]``) of a model built by
        :func:`from_torch`.

    Returns:
      ``h_n [num_layers * num_directions, batch, H]`` (no ``batch`` axis for an
      unbatched state) for RNN and GRU; the pair ``(h_n, c_n)`` for an LSTM, as
      PyTorch returns them.
    """
    leaves = jax.tree_util.tree_leaves(state, is_leaf=lambda s: isinstance(s, LSTMState))
    lstm_states = [isinstance(s, LSTMState) for s in leaves]
    if all(lstm_states):
        return (jnp.stack([s.h for s in leaves]), jnp.stack([s.c for s in leaves]))
    if any(lstm_states):
        raise ValueError("final_state_to_torch: the state mixes LSTM and other cells, which "
                         "no single PyTorch module produces")
    return jnp.stack(leaves)


def _array(value, dtype, name):
    """A torch tensor or (possibly traced) array as a JAX array of ``dtype``."""
    if type(value).__module__.startswith("torch"):
        value = _numpy(value)
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(f"state_from_torch: {name} must be floating, got {value.dtype}")
    return value.astype(dtype)


def state_from_torch(model, params, h_0, c_0=None) -> Any:
    """Turns PyTorch's initial ``h_0`` (and ``c_0``) into a seqjax state.

    Args:
      model: a model from :func:`from_torch`.
      params: its params.
      h_0: ``[num_layers * num_directions, batch, H]`` (or without ``batch``), a
        torch tensor or an array; cast to the params' dtype.
      c_0: the LSTM's initial cell, same shape; ``None`` for RNN and GRU.

    Returns:
      A state for :func:`~seqjax.unroll_batch` (leaves ``[batch, H]``) or, without
      a batch axis, for :func:`~seqjax.unroll`. Built with ``jnp`` operations, so it
      may be called inside ``jax.grad`` / ``jax.jit`` with traced ``h_0``, ``c_0``.
    """
    template = model.initial_state(params)
    leaves, treedef = jax.tree_util.tree_flatten(
        template, is_leaf=lambda s: isinstance(s, LSTMState))
    is_lstm = isinstance(leaves[0], LSTMState)
    first = leaves[0].h if is_lstm else leaves[0]
    dtype, H = first.dtype, first.shape[-1]
    if is_lstm != (c_0 is not None):
        raise ValueError("state_from_torch: pass c_0 for an LSTM and only for an LSTM")
    arrays = [_array(h_0, dtype, "h_0")] + ([_array(c_0, dtype, "c_0")] if is_lstm else [])
    for name, a in zip(("h_0", "c_0"), arrays):
        if a.ndim not in (2, 3) or a.shape[0] != len(leaves) or a.shape[-1] != H:
            raise ValueError(f"state_from_torch: {name} must have shape [{len(leaves)}, batch, "
                             f"{H}] or [{len(leaves)}, {H}] (num_layers * num_directions, "
                             f"batch, hidden), got {list(a.shape)}")
    if is_lstm:
        if arrays[0].shape != arrays[1].shape:
            raise ValueError(f"state_from_torch: h_0 {list(arrays[0].shape)} and c_0 "
                             f"{list(arrays[1].shape)} differ in shape")
        states = [LSTMState(h, c) for h, c in zip(arrays[0], arrays[1])]
    else:
        states = list(arrays[0])
    return jax.tree_util.tree_unflatten(treedef, states)
