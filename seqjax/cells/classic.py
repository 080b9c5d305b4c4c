"""The classic gated cells: Elman, LSTM, GRU (both forms) and MGU."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax.cells._common import (_affine, _as_input, _b_hn, _gated_init, _hoist,
                                  _input_size_from, _lstm_hidden, _no_extras,
                                  _state_is_hidden, _weight_h, _zeros_state, lecun_normal,
                                  orthogonal, zeros)
from seqjax.cells.contract import Array, Cell, Hoist, Initializer, Recurrent, constructor


class RNNParams(NamedTuple):
    """Elman cell parameters: ``w_i [I, H]``, ``w_h [H, H]``, ``b [H]``."""

    w_i: Array
    w_h: Array
    b: Array


class LSTMParams(NamedTuple):
    """LSTM parameters, gates fused in the order ``i, f, g, o``.

    ``w_i [I, 4H]``, ``w_h [H, 4H]``, ``b [4H]`` (one bias; PyTorch's two biases sum
    to it).
    """

    w_i: Array
    w_h: Array
    b: Array


class LSTMState(NamedTuple):
    """LSTM state: hidden ``h [H]`` and memory cell ``c [H]``."""

    h: Array
    c: Array


class GRUParams(NamedTuple):
    """GRU / MGU parameters.

    GRU gates are fused ``r, z, n`` (``w_i [I, 3H]``, ``w_h [H, 3H]``, ``b [3H]``);
    MGU gates ``f, n`` (``[.., 2H]``). ``b_hn [H]`` is the recurrent candidate bias
    that sits inside the reset product in the reset-after form; it is ``None`` in
    the reset-before form, where it would be redundant with ``b``.
    """

    w_i: Array
    w_h: Array
    b: Array
    b_hn: Optional[Array]



@constructor
def rnn(
    hidden_size: int,
    *,
    activation: Callable[[Array], Array] = jnp.tanh,
    kernel_init: Initializer = lecun_normal(),
    recurrent_init: Initializer = orthogonal(),
    bias_init: Initializer = zeros,
    param_dtype=jnp.float32,
) -> Cell:
    """Elman recurrent cell.

    .. math:: h_t = \\phi(x_t W_{xh} + h_{t-1} W_{hh} + b), \\qquad y_t = h_t

    Args:
      hidden_size: ``H``.
      activation: ``phi``, any elementwise callable (the seeds name ``jnp.tanh``,
        ``jax.nn.sigmoid``, ``jax.nn.relu``).
      kernel_init: initialiser of ``W_xh`` (default LeCun normal, as Flax).
      recurrent_init: initialiser of ``W_hh`` (default orthogonal, as Flax/Keras).
      bias_init: initialiser of ``b`` (default zeros).
      param_dtype: dtype of the parameters; inputs are cast to it.

    Returns:
      A :class:`Cell` with params :class:`RNNParams`, state ``h [H]``, output ``h``.

    References:
      Elman, "Finding structure in time", Cognitive Science 1990.
    """
    hidden_size = _checks.positive_int(hidden_size, "hidden_size")
    base = _gated_init(hidden_size, 1, kernel_init, recurrent_init, bias_init, param_dtype)
    input_size = _input_size_from("w_i")

    def init(key, input_size_):
        return RNNParams(*base(key, input_size_))

    def input_map(params, x):
        return _affine(x, params.w_i, params.b)

    def combine(extras, h, u, r):
        h = activation(u + r)
        return h, h

    hoist = _hoist(input_map, Recurrent(_weight_h, _no_extras, _state_is_hidden, combine))

    def apply(params, h, x):
        return hoist.step(params, h, input_map(params, _as_input(params, x, input_size, "rnn")))

    return Cell(init, _zeros_state(hidden_size), apply, input_size, hidden_size, hoist=hoist)


@constructor
def lstm(
    hidden_size: int,
    *,
    forget_bias: float = 1.0,
    kernel_init: Initializer = lecun_normal(),
    recurrent_init: Initializer = orthogonal(),
    bias_init: Initializer = zeros,
    param_dtype=jnp.float32,
) -> Cell:
    """Long short-term memory cell, exactly the seed equations.

    .. math::
        f_t &= \\sigma(W_f [h_{t-1}, x_t] + b_f) \\\\
        i_t &= \\sigma(W_i [h_{t-1}, x_t] + b_i) \\\\
        \\tilde C_t &= \\tanh(W_c [h_{t-1}, x_t] + b_c) \\\\
        C_t &= f_t \\odot C_{t-1} + i_t \\odot \\tilde C_t \\\\
        o_t &= \\sigma(W_o [h_{t-1}, x_t] + b_o) \\\\
        h_t &= o_t \\odot \\tanh(C_t)

    The four gates share one fused matmul, laid out ``i, f, g(=C~), o`` as in
    PyTorch/cuDNN.

    Args:
      hidden_size: ``H``.
      forget_bias: initial value of ``b_f``. Default ``1.0`` (Gers et al. 2000;
        Jozefowicz et al. 2015): an open forget gate at initialisation lets memory
        and gradients flow across many steps. It is an ordinary trainable parameter,
        never added in the forward pass (unlike Haiku's hidden ``+1``); pass ``0.0``
        for PyTorch/Flax's initialisation.
      kernel_init: initialiser of each gate's input kernel (default LeCun normal).
      recurrent_init: initialiser of each gate's recurrent kernel (default
        orthogonal, per gate).
      bias_init: initialiser of the biases before ``forget_bias`` is set.
      param_dtype: dtype of the parameters; inputs are cast to it.

    Returns:
      A :class:`Cell` with params :class:`LSTMParams`, state :class:`LSTMState`,
      output ``h [H]``.

    References:
      Hochreiter & Schmidhuber, "Long short-term memory", Neural Computation 1997;
      Gers, Schmidhuber & Cummins, "Learning to forget", Neural Computation 2000.
    """
    hidden_size = _checks.positive_int(hidden_size, "hidden_size")
    H = hidden_size

    def set_forget(b):
        return b.at[H:2 * H].set(forget_bias)

    base = _gated_init(H, 4, kernel_init, recurrent_init, bias_init, param_dtype, set_forget)
    input_size = _input_size_from("w_i")

    def init(key, input_size_):
        return LSTMParams(*base(key, input_size_))

    def initial_state(params):
        z = jnp.zeros((H,), params.w_i.dtype)
        return LSTMState(z, z)

    def input_map(params, x):
        return _affine(x, params.w_i, params.b)

    def combine(extras, state, u, r):
        i, f, g, o = jnp.split(u + r, 4, axis=-1)
        c = jax.nn.sigmoid(f) * state.c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return LSTMState(h, c), h

    hoist = _hoist(input_map, Recurrent(_weight_h, _no_extras, _lstm_hidden, combine))

    def apply(params, state, x):
        u = input_map(params, _as_input(params, x, input_size, "lstm"))
        return hoist.step(params, state, u)

    return Cell(init, initial_state, apply, input_size, H, hoist=hoist)


def _reset_gated(name, hidden_size, gates, reset_after, kernel_init, recurrent_init,
                 bias_init, param_dtype, gate_fn):
    """Shared body of GRU and MGU: ``gates - 1`` sigmoid gates plus a candidate ``n``.

    ``gate_fn(gate_preacts) -> (reset, update)`` maps the sigmoid gate blocks to the
    factor applied to the recurrent candidate term and the interpolation weight
    ``u`` in ``h_t = u * h_{t-1} + (1 - u) * n``.
    """
    hidden_size = _checks.positive_int(hidden_size, "hidden_size")
    H = hidden_size
    ng = (gates - 1) * H
    base = _gated_init(H, gates, kernel_init, recurrent_init, bias_init, param_dtype)
    input_size = _input_size_from("w_i")

    def init(key, input_size_):
        w_i, w_h, b = base(key, input_size_)
        b_hn = jnp.zeros((H,), param_dtype) if reset_after else None
        return GRUParams(w_i, w_h, b, b_hn)

    def input_map(params, x):
        return _affine(x, params.w_i, params.b)

    if reset_after:

        def combine(b_hn, h, u, r):
            reset, update = gate_fn(jax.nn.sigmoid(u[..., :ng] + r[..., :ng]))
            n = jnp.tanh(u[..., ng:] + reset * (r[..., ng:] + b_hn))
            h = update * h + (1 - update) * n
            return h, h

        hoist = _hoist(input_map, Recurrent(_weight_h, _b_hn, _state_is_hidden, combine))

    else:  # the candidate's matmul waits on the reset gate: no single recurrent product

        def step(params, h, u):
            reset, update = gate_fn(jax.nn.sigmoid(u[..., :ng] + h @ params.w_h[:, :ng]))
            n = jnp.tanh(u[..., ng:] + (reset * h) @ params.w_h[:, ng:])
            h = update * h + (1 - update) * n
            return h, h

        hoist = Hoist(input_map, step)

    def apply(params, h, x):
        return hoist.step(params, h, input_map(params, _as_input(params, x, input_size, name)))

    return Cell(init, _zeros_state(H), apply, input_size, H, hoist=hoist)


@constructor
def gru(
    hidden_size: int,
    *,
    reset_after: bool = True,
    kernel_init: Initializer = lecun_normal(),
    recurrent_init: Initializer = orthogonal(),
    bias_init: Initializer = zeros,
    param_dtype=jnp.float32,
) -> Cell:
    """Gated recurrent unit, in either of its two published forms.

    .. math::
        r_t &= \\sigma(x_t W_{xr} + h_{t-1} W_{hr} + b_r) \\\\
        z_t &= \\sigma(x_t W_{xz} + h_{t-1} W_{hz} + b_z) \\\\
        \\tilde h_t &= \\tanh(x_t W_{xh} + (r_t \\odot h_{t-1}) W_{hh} + b_h)
            && \\text{reset before (seed, Cho et al. 2014)} \\\\
        \\tilde h_t &= \\tanh(x_t W_{xh} + b_h + r_t \\odot (h_{t-1} W_{hh} + b_{hn}))
            && \\text{reset after (cuDNN, PyTorch, Flax, Keras)} \\\\
        h_t &= z_t \\odot h_{t-1} + (1 - z_t) \\odot \\tilde h_t

    Gates are fused ``r, z, n`` as in PyTorch.

    Args:
      hidden_size: ``H``.
      reset_after: default ``True``, the cuDNN/PyTorch/Flax/Keras form: the whole
        recurrent product ``h W_h`` is one matmul per step (the reset-before form
        needs two, the second waiting on ``r``), and PyTorch/cuDNN weights port
        exactly. ``False`` gives the seed's form (Cho et al. 2014), which has no
        ``b_hn``.
      kernel_init: initialiser of each gate's input kernel (default LeCun normal).
      recurrent_init: initialiser of each gate's recurrent kernel (default
        orthogonal, per gate).
      bias_init: initialiser of ``b`` (``b_hn`` starts at zero).
      param_dtype: dtype of the parameters; inputs are cast to it.

    Returns:
      A :class:`Cell` with params :class:`GRUParams`, state ``h [H]``, output ``h``.

    References:
      Cho et al., "Learning phrase representations using RNN encoder-decoder for
      statistical machine translation", EMNLP 2014.
    """
    return _reset_gated("gru", hidden_size, 3, reset_after, kernel_init, recurrent_init,
                        bias_init, param_dtype, lambda g: jnp.split(g, 2, axis=-1))


@constructor
def mgu(
    hidden_size: int,
    *,
    reset_after: bool = False,
    kernel_init: Initializer = lecun_normal(),
    recurrent_init: Initializer = orthogonal(),
    bias_init: Initializer = zeros,
    param_dtype=jnp.float32,
) -> Cell:
    """Minimal gated unit: a GRU whose one forget gate also resets.

    .. math::
        f_t &= \\sigma(x_t W_{xf} + h_{t-1} W_{hf} + b_f) \\\\
        \\tilde h_t &= \\tanh(x_t W_{xh} + (f_t \\odot h_{t-1}) W_{hh} + b_h) \\\\
        h_t &= (1 - f_t) \\odot h_{t-1} + f_t \\odot \\tilde h_t

    Gates are fused ``f, n``.

    Args:
      hidden_size: ``H``.
      reset_after: ``False`` (default) is the paper's form above. ``True`` is Flax
        linen's ``MGUCell``: a GRU (reset after) whose reset and update gates are
        tied, ``h~ = tanh(x W_xh + b_h + f * (h W_hh + b_hn))`` and
        ``h_t = f * h_{t-1} + (1 - f) * h~`` (there ``f`` keeps the old state,
        where in the paper it writes the new one).
      kernel_init, recurrent_init, bias_init, param_dtype: as for :func:`gru`.

    Returns:
      A :class:`Cell` with params :class:`GRUParams`, state ``h [H]``, output ``h``.

    References:
      Zhou, Wu, Zhang & Zhou, "Minimal gated unit for recurrent neural networks",
      IJAC 2016.
    """
    # paper: the forget gate writes (update weight 1 - f); Flax: it keeps (update f)
    gates = (lambda f: (f, f)) if reset_after else (lambda f: (f, 1 - f))
    return _reset_gated("mgu", hidden_size, 2, reset_after, kernel_init, recurrent_init,
                        bias_init, param_dtype, gates)
