"""Recurrent cells as bundles of pure functions.

Every constructor here returns a :class:`Cell`: a NamedTuple of pure functions in the
style of optax's ``GradientTransformation``. A cell sees one example and one time step;
batch it with ``jax.vmap`` and unroll it with :func:`seqjax.unroll`.

Conventions shared by all cells:

* Kernels are stored ``[in, out]`` so a step is ``x @ w_i + h @ w_h + b``.
* Fused gate blocks are laid out along the last axis in the order given by each
  cell's docstring (LSTM ``i, f, g, o`` and GRU ``r, z, n``, as in PyTorch/cuDNN).
* The state is a bare ``[hidden]`` array, except for the LSTM (:class:`LSTMState`).
* Static configuration (sizes, activations, initialisers) lives in the closure;
  the params pytree holds arrays only.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from seqjax import _checks

Array = jax.Array
Params = Any
State = Any
Initializer = Callable[..., Array]

InitFn = Callable[[Array, int], Params]
StateFn = Callable[[Params], State]
ApplyFn = Callable[[Params, State, Array], tuple]


class Recurrent(NamedTuple):
    """The sequential part of a gated cell as one matmul followed by elementwise maths.

    ``step(p, s, u) == combine(extras(p), s, u, hidden(s) @ weight(p))``: the
    recurrent weight enters only through the product ``r = hidden(s) @ weight(p)``.
    That lets the unroll's backward pass keep only ``dr @ weight(p).T`` inside the
    loop and form ``d weight = sum_t hidden(s_t).T dr_t`` as one matmul over all
    steps afterwards (what cuDNN does), instead of accumulating it step by step.

    Attributes:
      weight: ``(params) -> W [H_in, G]``.
      extras: ``(params) -> pytree`` of the other (small) params ``combine`` reads,
        e.g. the GRU's ``b_hn``; ``()`` when there are none.
      hidden: ``(state) -> h [H_in]``, the part of the state ``W`` multiplies.
      combine: ``(extras, state, u [G], r [G]) -> (state, y)``, elementwise in the
        gates; one example.
    """

    weight: Callable[[Params], Array]
    extras: Callable[[Params], Any]
    hidden: Callable[[State], Array]
    combine: Callable[..., tuple]


class Hoist(NamedTuple):
    """A gated cell split into its time-parallel and its sequential part.

    ``apply(p, s, x) == step(p, s, input_map(p, x))``. ``input_map`` is affine in
    ``x`` and works on any leading axes, so the unroll may evaluate it for all time
    steps at once (one large matmul) before the sequential loop. ``recurrent``, when
    set, says how ``step`` uses the recurrent weight (see :class:`Recurrent`).
    """

    input_map: Callable[[Params, Array], Array]
    step: Callable[[Params, State, Array], tuple]
    recurrent: Optional[Recurrent] = None


class LinearRecurrence(NamedTuple):
    """A cell whose state obeys ``h_t = a_t * h_{t-1} + b_t`` (elementwise).

    ``coefficients(p, xs) -> (a, b)`` and ``readout(p, hs, xs) -> ys`` work on any
    leading axes, so the whole sequence can be evaluated with
    ``jax.lax.associative_scan`` in ``O(log T)`` depth.
    """

    coefficients: Callable[[Params, Array], tuple]
    readout: Callable[[Params, Array, Array], Array]


class Cell(NamedTuple):
    """A recurrent cell: pure functions over one example and one time step.

    Attributes:
      init: ``(key, input_size) -> params``.
      initial_state: ``(params) -> state`` (zeros; no batch axis).
      apply: ``(params, state, x[input_size]) -> (state, y[output_size])``, scan's
        argument order.
      input_size: ``(params) -> int``, the feature size ``params`` expect.
      output_size: size of ``y``.
      hoist: set for gated cells whose input projection can leave the loop.
      linear: set for linear-recurrence cells (associative scan).
      layers: set by :func:`seqjax.stack`; the parts and how they are joined.
    """

    init: InitFn
    initial_state: StateFn
    apply: ApplyFn
    input_size: Callable[[Params], int]
    output_size: int
    hoist: Optional[Hoist] = None
    linear: Optional[LinearRecurrence] = None
    layers: Optional["Layers"] = None


class Layers(NamedTuple):
    """How :func:`seqjax.stack` joins its parts (static configuration)."""

    parts: tuple
    residual: bool
    dropout: float


class SequenceModel(NamedTuple):
    """A model over whole sequences (what :func:`seqjax.bidirectional` returns).

    Attributes:
      init: ``(key, input_size) -> params``.
      initial_state: ``(params) -> state``.
      apply: ``(params, xs[time, input_size], state=None, *, length=None, rng=None,
        **unroll_options) -> (final_state, ys[time, output_size])``, one example.
      input_size: ``(params) -> int``.
      output_size: size of each ``y``.
      batched: the same over a time-major batch, what :func:`seqjax.unroll_batch`
        and :func:`seqjax.stack` call: ``(params, xs[time, batch, input_size],
        state[batch, ...], *, lengths[batch] or None, keys[batch] or None,
        **unroll_options) -> (final_state[batch, ...], ys[time, batch, output_size])``
        with one dropout key per example.
    """

    init: InitFn
    initial_state: StateFn
    apply: Callable[..., tuple]
    input_size: Callable[[Params], int]
    output_size: int
    batched: Callable[..., tuple]


# ----------------------------------------------------------------------------- params


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


class MinParams(NamedTuple):
    """minGRU / minLSTM parameters: ``w [I, kH]``, ``b [kH]`` (k = 2 or 3)."""

    w: Array
    b: Array


class LRUParams(NamedTuple):
    """LRU parameters (Orvieto et al. 2023), state size N, input I, output H.

    ``nu_log, theta_log, gamma_log [N]``; ``b_re, b_im [N, I]``;
    ``c_re, c_im [H, N]``; ``d [H]``.
    """

    nu_log: Array
    theta_log: Array
    gamma_log: Array
    b_re: Array
    b_im: Array
    c_re: Array
    c_im: Array
    d: Array


# ------------------------------------------------------------------------ initialisers

lecun_normal = jax.nn.initializers.lecun_normal
orthogonal = jax.nn.initializers.orthogonal
zeros = jax.nn.initializers.zeros


def _blocks(init: Initializer, key: Array, rows: int, hidden: int, gates: int, dtype) -> Array:
    """Initialise ``gates`` blocks of ``[rows, hidden]`` independently and fuse them.

    Matches Flax/Keras, which initialise each gate's kernel on its own (an orthogonal
    ``[H, 4H]`` matrix is not four orthogonal ``[H, H]`` blocks).
    """
    keys = jax.random.split(key, gates)
    return jnp.concatenate([_draw(init, k, (rows, hidden), dtype) for k in keys], axis=-1)


def _draw(init: Initializer, key, shape, dtype) -> Array:
    """``init(key, shape, dtype)``, drawn in float32 for 16-bit dtypes and then cast:
    the QR behind ``orthogonal`` has no bfloat16/float16 kernel on CPU."""
    work = jnp.float32 if jnp.dtype(dtype).itemsize < 4 else dtype
    return init(key, shape, work).astype(dtype)


def _gated_init(hidden_size, gates, kernel_init, recurrent_init, bias_init, dtype, bias_fix=None):
    def init(key, input_size):
        input_size = _checks.positive_int(input_size, "input_size")
        k_i, k_h, k_b = jax.random.split(key, 3)
        w_i = _blocks(kernel_init, k_i, input_size, hidden_size, gates, dtype)
        w_h = _blocks(recurrent_init, k_h, hidden_size, hidden_size, gates, dtype)
        b = _draw(bias_init, k_b, (gates * hidden_size,), dtype)
        if bias_fix is not None:
            b = bias_fix(b)
        return w_i, w_h, b

    return init


def _affine(x, w, b):
    """``x @ w + b`` for ``x`` with any leading axes (explicit broadcast of ``b``)."""
    y = x @ w
    return y + jnp.broadcast_to(b, y.shape)


def _input_size_from(w_name):
    return lambda params: getattr(params, w_name).shape[0]


def _zeros_state(hidden_size):
    def initial_state(params):
        return jnp.zeros((hidden_size,), params[0].dtype)

    return initial_state


def _no_extras(params):
    return ()


def _state_is_hidden(state):
    return state


def _lstm_hidden(state):
    return state.h


def _weight_h(params):
    return params.w_h


def _b_hn(params):
    return params.b_hn


def _hoist(input_map, recurrent: Recurrent) -> Hoist:
    """``Hoist`` whose ``step`` is ``recurrent``'s matmul followed by its ``combine``."""

    def step(params, state, u):
        r = recurrent.hidden(state) @ recurrent.weight(params)
        return recurrent.combine(recurrent.extras(params), state, u, r)

    return Hoist(input_map, step, recurrent)


def _as_input(params, x, input_size, name):
    """Checks one step's input and casts it to the parameter dtype."""
    _checks.step_input(x, input_size(params), name)
    return x.astype(jax.tree_util.tree_leaves(params)[0].dtype)


# ------------------------------------------------------------------------------- cells


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


# ----------------------------------------------------------------- linear recurrences


def _linear_cell(name, hidden_size, state_shape_dtype, init, coefficients, readout, input_size):
    def initial_state(params):
        shape, dtype = state_shape_dtype(params)
        return jnp.zeros(shape, dtype)

    def apply(params, h, x):
        x = _as_input(params, x, input_size, name)
        a, b = coefficients(params, x)
        h = a * h + b
        return h, readout(params, h, x)

    return Cell(init, initial_state, apply, input_size, hidden_size,
                linear=LinearRecurrence(coefficients, readout))


def min_gru(
    hidden_size: int,
    *,
    candidate_activation: Callable[[Array], Array] = lambda v: v,
    kernel_init: Initializer = lecun_normal(),
    bias_init: Initializer = zeros,
    param_dtype=jnp.float32,
) -> Cell:
    """minGRU: a GRU whose gates see only the input, so the recurrence is linear.

    .. math::
        z_t = \\sigma(x_t W_z + b_z), \\quad \\tilde h_t = g(x_t W_h + b_h), \\quad
        h_t = (1 - z_t) \\odot h_{t-1} + z_t \\odot \\tilde h_t

    Evaluated with an associative scan over ``(a, b) = (1 - z, z * h~)``. The scan
    combines pairs ``(a1 a2, a2 b1 + b2)`` and never divides by a cumulative product,
    so it needs none of the log-space tricks of the paper's Heinsen scan.

    Args:
      hidden_size: ``H``.
      candidate_activation: ``g``; identity by default (the paper's minGRU). The
        paper's log-space code uses ``g(v) = v + 0.5 if v >= 0 else sigmoid(v)``.
      kernel_init: initialiser of ``W`` (default LeCun normal).
      bias_init: initialiser of ``b``.
      param_dtype: dtype of the parameters.

    Returns:
      A :class:`Cell` with params :class:`MinParams` (``w [I, 2H]``, order ``z, h~``),
      state ``h [H]``, output ``h``.

    References:
      Feng et al., "Were RNNs all we needed?", arXiv:2410.01201, 2024.
    """
    hidden_size = _checks.positive_int(hidden_size, "hidden_size")
    return _min_cell("min_gru", hidden_size, 2, kernel_init, bias_init, param_dtype,
                     lambda pre: _min_gru_coeffs(pre, candidate_activation))


def _min_gru_coeffs(pre, g):
    z_pre, h_pre = jnp.split(pre, 2, axis=-1)
    z = jax.nn.sigmoid(z_pre)
    return 1 - z, z * g(h_pre)


def min_lstm(
    hidden_size: int,
    *,
    candidate_activation: Callable[[Array], Array] = lambda v: v,
    kernel_init: Initializer = lecun_normal(),
    bias_init: Initializer = zeros,
    param_dtype=jnp.float32,
) -> Cell:
    """minLSTM: input-only forget and input gates, normalised to sum to one.

    .. math::
        f_t = \\sigma(x_t W_f + b_f), \\quad i_t = \\sigma(x_t W_i + b_i), \\quad
        \\tilde h_t = g(x_t W_h + b_h) \\\\
        f'_t = f_t / (f_t + i_t), \\quad i'_t = i_t / (f_t + i_t), \\quad
        h_t = f'_t \\odot h_{t-1} + i'_t \\odot \\tilde h_t

    Args:
      hidden_size: ``H``.
      candidate_activation: ``g``; identity by default.
      kernel_init, bias_init, param_dtype: as for :func:`min_gru`.

    Returns:
      A :class:`Cell` with params :class:`MinParams` (``w [I, 3H]``, order
      ``f, i, h~``), state ``h [H]``, output ``h``.

    References:
      Feng et al., "Were RNNs all we needed?", arXiv:2410.01201, 2024.
    """
    hidden_size = _checks.positive_int(hidden_size, "hidden_size")
    return _min_cell("min_lstm", hidden_size, 3, kernel_init, bias_init, param_dtype,
                     lambda pre: _min_lstm_coeffs(pre, candidate_activation))


def _min_lstm_coeffs(pre, g):
    f_pre, i_pre, h_pre = jnp.split(pre, 3, axis=-1)
    f, i = jax.nn.sigmoid(f_pre), jax.nn.sigmoid(i_pre)
    total = f + i
    return f / total, (i / total) * g(h_pre)


def _min_cell(name, H, gates, kernel_init, bias_init, param_dtype, coeffs_from_pre):
    def init(key, input_size_):
        input_size_ = _checks.positive_int(input_size_, "input_size")
        k_w, k_b = jax.random.split(key)
        w = _blocks(kernel_init, k_w, input_size_, H, gates, param_dtype)
        return MinParams(w, _draw(bias_init, k_b, (gates * H,), param_dtype))

    def coefficients(params, xs):
        return coeffs_from_pre(_affine(xs, params.w, params.b))

    def readout(params, hs, xs):
        return hs

    return _linear_cell(name, H, lambda p: ((H,), p.w.dtype), init, coefficients, readout,
                        _input_size_from("w"))


def lru(
    hidden_size: int,
    state_size: int,
    *,
    r_min: float = 0.9,
    r_max: float = 0.999,
    max_phase: float = 2 * math.pi,
    param_dtype=jnp.float32,
) -> Cell:
    """Linear recurrent unit: a diagonal complex linear recurrence with a readout.

    .. math::
        \\lambda &= \\exp(-\\exp(\\nu) + i \\exp(\\theta)), \\qquad
        \\gamma = \\sqrt{1 - |\\lambda|^2} \\\\
        h_t &= \\lambda \\odot h_{t-1} + \\gamma \\odot (B x_t) \\\\
        y_t &= \\mathrm{Re}(C h_t) + D \\odot x_t

    Args:
      hidden_size: ``H``, the size of ``y``. The skip term ``D * x`` is diagonal, so
        ``input_size`` must equal ``H`` (as in the paper); project first otherwise.
      state_size: ``N``, the number of complex eigenvalues.
      r_min, r_max: eigenvalue moduli are drawn uniformly on the ring
        ``r_min <= |lambda| <= r_max`` (paper default ``0.9 .. 0.999``).
      max_phase: phases are drawn uniformly in ``[0, max_phase]``.
      param_dtype: real dtype of the parameters; the state is the matching complex
        dtype.

    Returns:
      A :class:`Cell` with params :class:`LRUParams`, complex state ``h [N]``,
      output ``y [H]``. ``2NI + 2HN + H + 3N`` parameters.

    References:
      Orvieto et al., "Resurrecting recurrent neural networks for long sequences",
      ICML 2023, arXiv:2303.06349.
    """
    H = _checks.positive_int(hidden_size, "hidden_size")
    N = _checks.positive_int(state_size, "state_size")
    if not 0.0 <= r_min < r_max <= 1.0:
        raise ValueError(f"lru needs 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
    if jnp.dtype(param_dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise TypeError(f"lru: param_dtype must be float32 or float64 (the state is complex), "
                        f"got {jnp.dtype(param_dtype)}")

    def state_shape_dtype(params):
        real = params.nu_log.dtype
        return (N,), jnp.complex128 if real == jnp.float64 else jnp.complex64

    def init(key, input_size_):
        I = _checks.positive_int(input_size_, "input_size")
        if I != H:
            raise ValueError(
                f"lru: the skip term D*x needs input_size == hidden_size ({H}), got "
                f"input_size={I}; project the inputs to {H} features first")
        k1, k2, kb1, kb2, kc1, kc2, kd = jax.random.split(key, 7)
        u1 = jax.random.uniform(k1, (N,), param_dtype)
        u2 = jax.random.uniform(k2, (N,), param_dtype)
        nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        theta_log = jnp.log(max_phase * u2)
        modulus = jnp.exp(-jnp.exp(nu_log))
        gamma_log = jnp.log(jnp.sqrt(1 - modulus**2))
        normal = lambda k, shape, scale: jax.random.normal(k, shape, param_dtype) * scale
        return LRUParams(
            nu_log, theta_log, gamma_log,
            normal(kb1, (N, I), 1 / math.sqrt(2 * I)), normal(kb2, (N, I), 1 / math.sqrt(2 * I)),
            normal(kc1, (H, N), 1 / math.sqrt(N)), normal(kc2, (H, N), 1 / math.sqrt(N)),
            normal(kd, (H,), 1.0),
        )

    def coefficients(params, xs):
        lam = jnp.exp(lax.complex(-jnp.exp(params.nu_log), jnp.exp(params.theta_log)))
        gamma = jnp.exp(params.gamma_log)
        re, im = xs @ params.b_re.T, xs @ params.b_im.T
        gamma = jnp.broadcast_to(gamma, re.shape)
        bx = lax.complex(re * gamma, im * gamma)
        return jnp.broadcast_to(lam, bx.shape), bx

    def readout(params, hs, xs):
        y = hs.real @ params.c_re.T - hs.imag @ params.c_im.T
        return y + jnp.broadcast_to(params.d, xs.shape) * xs

    return _linear_cell("lru", H, state_shape_dtype, init, coefficients,
                        readout, lambda p: p.b_re.shape[1])
