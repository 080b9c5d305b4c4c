"""The classic gated cells: Elman, LSTM, GRU (both forms) and MGU."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax.cells._common import (_as_input, _b_hn, _draw, _gated_init, _hoist,
                                  _input_size_from, _lstm_hidden, _no_extras,
                                  _state_is_hidden, _weight_h, _zeros_state, lecun_normal,
                                  orthogonal, zeros)
from seqjax.cells._constructor import constructor
from seqjax.cells.contract import Array, Cell, Hoist, Initializer, Recurrent, _matmul


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


@dataclasses.dataclass(frozen=True)
class ChronoInit:
    """The chrono initialiser of a gate bias: ``b ~ log U(t_min, t_max - 1)``.

    Build it with :func:`chrono_init`. Calling it as ``init(key, shape, dtype)`` draws
    the biases, like any ``jax.nn.initializers`` function.
    """

    t_max: float
    t_min: float = 1.0

    @property
    def __name__(self) -> str:  # what a cell's repr shows for this argument
        low = "" if self.t_min == 1.0 else f", t_min={self.t_min!r}"
        return f"chrono_init(t_max={self.t_max!r}{low})"

    def __call__(self, key, shape, dtype=jnp.float32) -> Array:
        work = jnp.float32 if jnp.dtype(dtype).itemsize < 4 else dtype
        u = jax.random.uniform(key, shape, work, self.t_min, self.t_max - 1.0)
        return jnp.log(u).astype(dtype)


def chrono_init(t_max: float, *, t_min: float = 1.0) -> ChronoInit:
    """Chrono initialisation of a gate bias (Tallec & Ollivier 2018).

    .. math:: b \\sim \\log\\, \\mathcal U([t_{min},\\ T_{max} - 1])

    A gate that keeps the old state with probability ``sigma(b) = u / (1 + u)``
    (``u = e^b``) forgets at rate ``1 / (1 + u)``: its memory lasts about ``1 + u``
    steps. Chrono initialisation spreads those characteristic times over
    ``[t_min + 1, T_max]``, the range of dependencies the data are expected to have,
    instead of starting every unit at the same short memory. Pass it as
    ``lstm(..., forget_bias=chrono_init(T_max))`` (which also sets the input-gate
    bias to ``b_i = -b_f``, as the paper does) or ``gru(..., update_bias=...)``.

    Args:
      t_max: ``T_max > t_min + 1``, the longest expected dependency, in steps.
      t_min: the lower end of the uniform draw (the paper's 1). Zucchet & Orvieto
        2024 draw ``log U(t, 2t)`` for a characteristic time ``t``:
        ``chrono_init(2 * t + 1, t_min=t)``.

    Returns:
      A :class:`ChronoInit`, an initialiser ``(key, shape, dtype) -> b``.

    References:
      Tallec & Ollivier, "Can recurrent neural networks warp time?", ICLR 2018,
      section 4 (chrono initialisation).
    """
    t_max, t_min = float(t_max), float(t_min)
    if not 0 < t_min < t_max - 1.0 < float("inf"):  # also refuses NaN
        raise ValueError(f"chrono_init needs 0 < t_min < t_max - 1 < inf (a non-empty, finite "
                         f"draw U(t_min, t_max - 1)), got t_min={t_min}, t_max={t_max}")
    return ChronoInit(t_max, t_min)


def _gate_bias(value, key, H, dtype):
    """``[H]`` biases of one gate: a float fills them, an initialiser draws them."""
    if callable(value):
        return _draw(value, key, (H,), dtype)
    return jnp.full((H,), value, dtype)


_COMPUTE_DTYPES = ("bfloat16", "float16", "float32", "float64")


def _compute_dtype(dtype, param_dtype, name):
    """A classic cell's checked compute dtype; ``None`` when it is ``param_dtype``'s own
    (then the cell computes exactly as without one)."""
    if dtype is None:
        return None
    try:
        compute = jnp.dtype(dtype)
    except (TypeError, ValueError):
        compute = None
    if compute is None or compute.name not in _COMPUTE_DTYPES:
        raise ValueError(f"{name}: dtype (the compute dtype of the matmuls) must be None or "
                         f"one of {', '.join(_COMPUTE_DTYPES)}, got {dtype!r}")
    stored = jnp.dtype(param_dtype)
    if compute.itemsize > stored.itemsize:
        raise ValueError(
            f"{name}: dtype={compute.name} is wider than param_dtype={stored.name}; the "
            f"products accumulate and the state lives in param_dtype, so store the params "
            f"in {compute.name} instead (param_dtype={compute.name})")
    return None if compute == stored else compute


def _input_map(dtype):
    """``x @ w_i + b`` for ``x`` with any leading axes, the matmul in the compute
    ``dtype`` (``None``: plain ``x @ w_i``)."""

    def input_map(params, x):
        y = _matmul(x, params.w_i, dtype)
        return y + jnp.broadcast_to(params.b, y.shape)

    return input_map



@constructor
def rnn(
    hidden_size: int,
    *,
    activation: Callable[[Array], Array] = jnp.tanh,
    kernel_init: Initializer = lecun_normal(),
    recurrent_init: Initializer = orthogonal(),
    bias_init: Initializer = zeros,
    param_dtype=jnp.float32,
    dtype: Optional[Any] = None,
) -> Cell:
    """Elman recurrent cell.

    .. math:: h_t = \\phi(x_t W_{xh} + h_{t-1} W_{hh} + b), \\qquad y_t = h_t

    Args:
      hidden_size: ``H``.
      activation: ``phi``, any elementwise callable (``jnp.tanh``,
        ``jax.nn.sigmoid``, ``jax.nn.relu``, ...).
      kernel_init: initialiser of ``W_xh`` (default LeCun normal, as Flax).
      recurrent_init: initialiser of ``W_hh`` (default orthogonal, as Flax/Keras).
      bias_init: initialiser of ``b`` (default zeros).
      param_dtype: dtype of the parameters; inputs are cast to it.
      dtype: compute dtype of the two matmuls (mixed precision), e.g.
        ``jnp.bfloat16`` with float32 params: ``x_t``, ``W_xh``, ``h_{t-1}`` and
        ``W_hh`` are cast to it and the products accumulate in ``param_dtype``
        (``preferred_element_type``); ``b``, ``phi`` and the state stay in
        ``param_dtype``. ``None`` (default): ``param_dtype``, no casts. Else
        bfloat16, float16, float32 or float64, no wider than ``param_dtype``.

    Returns:
      A :class:`Cell` with params :class:`RNNParams`, state ``h [H]``, output ``h``.

    References:
      Elman, "Finding structure in time", Cognitive Science 1990.
    """
    hidden_size = _checks.positive_int(hidden_size, "hidden_size")
    compute = _compute_dtype(dtype, param_dtype, "rnn")
    base = _gated_init(hidden_size, 1, kernel_init, recurrent_init, bias_init, param_dtype)
    input_size = _input_size_from("w_i")

    def init(key, input_size_):
        return RNNParams(*base(key, input_size_))

    input_map = _input_map(compute)

    def combine(extras, h, u, r):
        h = activation(u + r)
        return h, h

    hoist = _hoist(input_map, Recurrent(_weight_h, _no_extras, _state_is_hidden, combine,
                                        compute))

    def apply(params, h, x):
        return hoist.step(params, h, input_map(params, _as_input(params, x, input_size, "rnn")))

    return Cell(init, _zeros_state(hidden_size), apply, input_size, hidden_size, hoist=hoist)


@constructor
def lstm(
    hidden_size: int,
    *,
    forget_bias: Union[float, Initializer] = 1.0,
    kernel_init: Initializer = lecun_normal(),
    recurrent_init: Initializer = orthogonal(),
    bias_init: Initializer = zeros,
    param_dtype=jnp.float32,
    dtype: Optional[Any] = None,
) -> Cell:
    """Long short-term memory (Hochreiter & Schmidhuber 1997; forget gate: Gers et al. 2000).

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
        for PyTorch/Flax's initialisation. An initialiser ``(key, [H], dtype)``
        draws one value per unit instead; with :func:`chrono_init` (``T_max``),
        ``b_f ~ log U(1, T_max - 1)`` and the input-gate bias is set to
        ``b_i = -b_f`` (Tallec & Ollivier 2018's chrono initialisation).
      kernel_init: initialiser of each gate's input kernel (default LeCun normal).
      recurrent_init: initialiser of each gate's recurrent kernel (default
        orthogonal, per gate).
      bias_init: initialiser of the biases before ``forget_bias`` is set.
      param_dtype: dtype of the parameters; inputs are cast to it.
      dtype: compute dtype of the two fused matmuls (mixed precision), e.g.
        ``jnp.bfloat16`` with float32 params: ``x_t``, the input kernels,
        ``h_{t-1}`` and the recurrent kernels are cast to it and the products
        accumulate in ``param_dtype`` (``preferred_element_type``); the biases, the
        gates and ``h, C`` stay in ``param_dtype``. ``None`` (default):
        ``param_dtype``, no casts. bfloat16, float16, float32 or float64, no wider
        than ``param_dtype``.

    Returns:
      A :class:`Cell` with params :class:`LSTMParams`, state :class:`LSTMState`,
      output ``h [H]``.

    References:
      Hochreiter & Schmidhuber, "Long short-term memory", Neural Computation 1997;
      Gers, Schmidhuber & Cummins, "Learning to forget", Neural Computation 2000;
      Tallec & Ollivier, "Can recurrent neural networks warp time?", ICLR 2018.
    """
    hidden_size = _checks.positive_int(hidden_size, "hidden_size")
    H = hidden_size
    if not callable(forget_bias):
        _checks.real(forget_bias, "forget_bias", "lstm",
                     why="an infinite bias is a forget gate fixed at 1 (never forgets) or 0")
    compute = _compute_dtype(dtype, param_dtype, "lstm")
    base = _gated_init(H, 4, kernel_init, recurrent_init, bias_init, param_dtype)
    input_size = _input_size_from("w_i")

    def init(key, input_size_):
        w_i, w_h, b = base(key, input_size_)
        b_f = _gate_bias(forget_bias, jax.random.fold_in(key, 1), H, b.dtype)
        b = b.at[H:2 * H].set(b_f)
        if isinstance(forget_bias, ChronoInit):
            b = b.at[:H].set(-b_f)
        return LSTMParams(w_i, w_h, b)

    def initial_state(params):
        z = jnp.zeros((H,), params.w_i.dtype)
        return LSTMState(z, z)

    input_map = _input_map(compute)

    def combine(extras, state, u, r):
        i, f, g, o = jnp.split(u + r, 4, axis=-1)
        c = jax.nn.sigmoid(f) * state.c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return LSTMState(h, c), h

    hoist = _hoist(input_map, Recurrent(_weight_h, _no_extras, _lstm_hidden, combine,
                                        compute))

    def apply(params, state, x):
        u = input_map(params, _as_input(params, x, input_size, "lstm"))
        return hoist.step(params, state, u)

    return Cell(init, initial_state, apply, input_size, H, hoist=hoist)


def _reset_gated(name, hidden_size, gates, reset_after, kernel_init, recurrent_init,
                 bias_init, param_dtype, gate_fn, update_bias=None, dtype=None):
    """Shared body of GRU and MGU: ``gates - 1`` sigmoid gates plus a candidate ``n``.

    ``gate_fn(gate_preacts) -> (reset, update)`` maps the sigmoid gate blocks to the
    factor applied to the recurrent candidate term and the interpolation weight
    ``u`` in ``h_t = u * h_{t-1} + (1 - u) * n``. ``update_bias`` (GRU only), when
    given, sets the second gate block (``z``). ``dtype``: the compute dtype of the
    matmuls (see :func:`gru`).
    """
    hidden_size = _checks.positive_int(hidden_size, "hidden_size")
    if update_bias is not None and not callable(update_bias):
        _checks.real(update_bias, "update_bias", name,
                     why="an infinite bias is an update gate fixed at 1 (never updates) or 0")
    compute = _compute_dtype(dtype, param_dtype, name)
    H = hidden_size
    ng = (gates - 1) * H
    base = _gated_init(H, gates, kernel_init, recurrent_init, bias_init, param_dtype)
    input_size = _input_size_from("w_i")

    def init(key, input_size_):
        w_i, w_h, b = base(key, input_size_)
        if update_bias is not None:
            b = b.at[H:2 * H].set(_gate_bias(update_bias, jax.random.fold_in(key, 1), H, b.dtype))
        b_hn = jnp.zeros((H,), param_dtype) if reset_after else None
        return GRUParams(w_i, w_h, b, b_hn)

    input_map = _input_map(compute)

    if reset_after:

        def combine(b_hn, h, u, r):
            reset, update = gate_fn(jax.nn.sigmoid(u[..., :ng] + r[..., :ng]))
            n = jnp.tanh(u[..., ng:] + reset * (r[..., ng:] + b_hn))
            h = update * h + (1 - update) * n
            return h, h

        hoist = _hoist(input_map, Recurrent(_weight_h, _b_hn, _state_is_hidden, combine,
                                            compute))

    else:  # the candidate's matmul waits on the reset gate: no single recurrent product

        def step(params, h, u):
            reset, update = gate_fn(jax.nn.sigmoid(
                u[..., :ng] + _matmul(h, params.w_h[:, :ng], compute)))
            n = jnp.tanh(u[..., ng:] + _matmul(reset * h, params.w_h[:, ng:], compute))
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
    update_bias: Union[float, Initializer] = zeros,
    kernel_init: Initializer = lecun_normal(),
    recurrent_init: Initializer = orthogonal(),
    bias_init: Initializer = zeros,
    param_dtype=jnp.float32,
    dtype: Optional[Any] = None,
) -> Cell:
    """Gated recurrent unit, in either of its two published forms.

    .. math::
        r_t &= \\sigma(x_t W_{xr} + h_{t-1} W_{hr} + b_r) \\\\
        z_t &= \\sigma(x_t W_{xz} + h_{t-1} W_{hz} + b_z) \\\\
        \\tilde h_t &= \\tanh(x_t W_{xh} + (r_t \\odot h_{t-1}) W_{hh} + b_h)
            && \\text{reset before (Cho et al. 2014, eqs. 5-8)} \\\\
        \\tilde h_t &= \\tanh(x_t W_{xh} + b_h + r_t \\odot (h_{t-1} W_{hh} + b_{hn}))
            && \\text{reset after (cuDNN, PyTorch, Flax, Keras)} \\\\
        h_t &= z_t \\odot h_{t-1} + (1 - z_t) \\odot \\tilde h_t

    Gates are fused ``r, z, n`` as in PyTorch.

    Args:
      hidden_size: ``H``.
      reset_after: default ``True``, the cuDNN/PyTorch/Flax/Keras form: the whole
        recurrent product ``h W_h`` is one matmul per step (the reset-before form
        needs two, the second waiting on ``r``), and PyTorch/cuDNN weights port
        exactly. ``False`` gives the form of Cho et al. 2014 (eqs. 5-8), which has no
        ``b_hn``.
      update_bias: initial ``b_z``, the bias of the update gate ``z_t`` that keeps
        ``h_{t-1}``: a float, or an initialiser ``(key, [H], dtype)`` drawing one
        value per unit (default zeros, as PyTorch and Flax). With
        :func:`chrono_init` (``T_max``), ``b_z ~ log U(1, T_max - 1)``: unit ``k``
        starts with a memory of about ``1 + exp(b_z[k])`` steps (Tallec & Ollivier
        2018's chrono initialisation). It replaces ``bias_init``'s draw for ``b_z``.
      kernel_init: initialiser of each gate's input kernel (default LeCun normal).
      recurrent_init: initialiser of each gate's recurrent kernel (default
        orthogonal, per gate).
      bias_init: initialiser of ``b`` (``b_hn`` starts at zero).
      param_dtype: dtype of the parameters; inputs are cast to it.
      dtype: compute dtype of the matmuls (mixed precision), e.g. ``jnp.bfloat16``
        with float32 params: ``x_t``, the input kernels, ``h_{t-1}`` (``r_t * h_{t-1}``
        reset before) and the recurrent kernels are cast to it and the products
        accumulate in ``param_dtype`` (``preferred_element_type``); the biases
        (``b_hn`` too), the gates and the state stay in ``param_dtype``. ``None``
        (default): ``param_dtype``, no casts. Else bfloat16, float16, float32 or
        float64, no wider than ``param_dtype``.

    Returns:
      A :class:`Cell` with params :class:`GRUParams`, state ``h [H]``, output ``h``.

    References:
      Cho et al., "Learning phrase representations using RNN encoder-decoder for
      statistical machine translation", EMNLP 2014;
      Tallec & Ollivier, "Can recurrent neural networks warp time?", ICLR 2018.
    """
    return _reset_gated("gru", hidden_size, 3, reset_after, kernel_init, recurrent_init,
                        bias_init, param_dtype, lambda g: jnp.split(g, 2, axis=-1),
                        update_bias, dtype=dtype)


@constructor
def mgu(
    hidden_size: int,
    *,
    reset_after: bool = False,
    kernel_init: Initializer = lecun_normal(),
    recurrent_init: Initializer = orthogonal(),
    bias_init: Initializer = zeros,
    param_dtype=jnp.float32,
    dtype: Optional[Any] = None,
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
      dtype: compute dtype of the matmuls (mixed precision), as for :func:`gru`:
        their operands (``x_t``, ``h_{t-1}`` or ``f_t * h_{t-1}``, the kernels) are
        cast to it, the products accumulate in ``param_dtype``, and the gates and the
        state stay in ``param_dtype``. ``None`` (default): no casts.

    Returns:
      A :class:`Cell` with params :class:`GRUParams`, state ``h [H]``, output ``h``.

    References:
      Zhou, Wu, Zhang & Zhou, "Minimal gated unit for recurrent neural networks",
      IJAC 2016.
    """
    # paper: the forget gate writes (update weight 1 - f); Flax: it keeps (update f)
    gates = (lambda f: (f, f)) if reset_after else (lambda f: (f, 1 - f))
    return _reset_gated("mgu", hidden_size, 2, reset_after, kernel_init, recurrent_init,
                        bias_init, param_dtype, gates, dtype=dtype)
