"""xLSTM's cells (Beck et al. 2024, arXiv:2405.04517): the sLSTM, with scalar memory,
exponential gating and per-head recurrent mixing, and the mLSTM, with a matrix memory
and a chunkwise-parallel form."""

from __future__ import annotations

# -- sLSTM (modern cells I): imports, params, state and constructor
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax.cells._common import (_affine, _as_input, _blocks, _draw, _input_size_from,
                                  _no_extras, lecun_normal, zeros)
from seqjax.cells._constructor import constructor
from seqjax.cells.contract import Array, Cell, Hoist, Initializer, Recurrent


class SLSTMParams(NamedTuple):
    """sLSTM parameters (Beck et al. 2024), gates fused in the order ``i, f, z, o``.

    ``w [I, 4H]``: the input weights ``W_i, W_f, W_z, W_o`` side by side.
    ``r [heads, H/heads, 4, H/heads]``: the block-diagonal recurrent weights, head
    ``k`` mapping its slice of ``h`` (``[in]``) to its slice of each gate (``[gate,
    out]``). ``b [4H]``: the biases ``b_i, b_f, b_z, b_o``. Each gate's ``H`` columns
    are head 0's ``H/heads`` units, then head 1's, ...

    From ``xlstm``'s ``sLSTMCell``: ``r`` is its ``recurrent_kernel`` (the same
    ``[heads, d, 4, d]`` layout) and ``b`` its bias in the vanilla backend's internal
    layout (``_bias_``, the same order); that cell has no ``W``: it takes ``x W``.
    """

    w: Array
    r: Array
    b: Array


class SLSTMState(NamedTuple):
    """sLSTM state: hidden ``h``, cell ``c``, normaliser ``n`` and stabiliser ``m``,
    each ``[H]``."""

    h: Array
    c: Array
    n: Array
    m: Array


def powerlaw_forget_bias(key, shape, dtype=jnp.float32):
    """xLSTM's forget-gate bias initialiser (``bias_init="powerlaw_blockdependent"``).

    Within each head of ``d`` units, ``b_f[j] = 5 - 12 (j / (d - 1))^0.3`` for
    ``j = 0 .. d - 1``: from ``sigmoid(5)`` (long memory) down to ``sigmoid(-7)``
    (short). ``shape`` is ``[heads, d]``; ``key`` is unused. (For one block; the
    xlstm code raises the exponent by ``1.3 * block / (blocks - 1)`` in deeper
    blocks of a stack. With ``d = 1`` every unit gets ``5``.)
    """
    del key
    d = shape[-1]
    j = jnp.arange(d, dtype=jnp.float32) / max(d - 1, 1)
    return jnp.broadcast_to(5.0 - 12.0 * j**0.3, shape).astype(dtype)


def _slstm_dense(r):
    """``[heads, d, 4, d]`` blocks -> the dense block-diagonal ``[H, 4H]`` matrix
    (rows ``k*d + a``; columns ``g*H + k*d + b``)."""
    heads, d, gates, _ = r.shape
    eye = jnp.eye(heads, dtype=r.dtype)
    return jnp.einsum("kagb,kl->kaglb", r, eye).reshape(heads * d, gates * heads * d)


def _slstm_heads(h, r):
    """``h @ _slstm_dense(r)`` one head at a time: ``heads`` matmuls of ``[d, 4d]``."""
    heads, d, gates, _ = r.shape
    out = jnp.einsum("...ka,kagb->...gkb", h.reshape(h.shape[:-1] + (heads, d)), r)
    return out.reshape(h.shape[:-1] + (gates * heads * d,))


def _slstm_weight(params):
    return _slstm_dense(params.r)


def _slstm_hidden(state):
    return state.h


@constructor
def slstm(
    hidden_size: int,
    *,
    num_heads: int = 4,
    log_forget: Callable[[Array], Array] = jax.nn.log_sigmoid,
    kernel_init: Initializer = lecun_normal(),
    recurrent_init: Initializer = zeros,
    bias_init: Initializer = zeros,
    forget_bias_init: Initializer = powerlaw_forget_bias,
    param_dtype=jnp.float32,
) -> Cell:
    """sLSTM: an LSTM with exponential gating, a normaliser and per-head memory mixing.

    .. math::
        \\tilde i_t, \\tilde f_t, \\tilde z_t, \\tilde o_t
            &= W x_t + R h_{t-1} + b \\quad (R \\text{ block-diagonal over heads}) \\\\
        m_t &= \\max(\\log f_t + m_{t-1}, \\log i_t), \\quad
            \\log i_t = \\tilde i_t, \\quad \\log f_t = \\text{log\\_forget}(\\tilde f_t) \\\\
        i'_t &= \\exp(\\log i_t - m_t), \\quad f'_t = \\exp(\\log f_t + m_{t-1} - m_t) \\\\
        c_t &= f'_t \\odot c_{t-1} + i'_t \\odot \\tanh(\\tilde z_t), \\qquad
        n_t = f'_t \\odot n_{t-1} + i'_t \\\\
        h_t &= \\sigma(\\tilde o_t) \\odot c_t / n_t

    The sLSTM of Beck et al. (section 2.2) with its stabiliser: ``m`` rescales
    ``c`` and ``n`` together, so ``h`` is the unstabilised ``o * c / n`` while
    ``exp`` never overflows (``i', f' <= 1`` and ``n_t >= 1`` after the first
    step). Where ``n_{t-1} = 0`` (a fresh state) ``m_t = log i_t``, as in the
    authors' code (equivalently ``m_0 = -inf``); ``h`` does not depend on this
    choice, the final ``(c, n, m)`` do.

    The recurrent weight enters only through ``h_{t-1} @ R`` (``R`` the dense
    block-diagonal ``[H, 4H]`` matrix), so :func:`seqjax.unroll` gives this cell
    the fused backward pass (which multiplies by that dense matrix); ``apply`` and
    the plain scan multiply head by head.

    Conventions of the authors' ``xlstm`` package (``sLSTMCell``): gate order
    ``i, f, z, o``; a gate's ``H`` units are head-major; ``log_forget`` is
    ``log sigmoid`` (the paper allows ``exp`` too: ``log_forget=lambda v: v``);
    recurrent weights start at zero and the forget bias follows a power law over
    each head's units (:func:`powerlaw_forget_bias`). Unlike ``xlstm``, whose cell
    takes ready gate pre-activations ``[.., 4H]`` from the layer around it, this
    cell owns its input projection ``W``, dense (LeCun normal); the xLSTM block's
    causal convolution, head-wise input projections and group norm are not part
    of the cell.

    Args:
      hidden_size: ``H``; divisible by ``num_heads``.
      num_heads: number of diagonal blocks of ``R`` (xlstm's default ``4``).
      log_forget: ``log f_t`` from ``f~_t``; ``jax.nn.log_sigmoid`` (default, the
        sigmoid forget gate of the authors' code) or ``lambda v: v`` (exponential
        forget gate).
      kernel_init: initialiser of each gate's input kernel ``[I, H]``.
      recurrent_init: initialiser of each head's ``[d, d]`` block of each gate
        (default zeros, as xlstm).
      bias_init: initialiser of ``b_i, b_z, b_o`` (default zeros).
      forget_bias_init: initialiser of ``b_f``, called with shape ``[heads, d]``
        (default :func:`powerlaw_forget_bias`).
      param_dtype: dtype of the parameters; inputs are cast to it.

    Returns:
      A :class:`Cell` with params :class:`SLSTMParams`, state :class:`SLSTMState`,
      output ``h [H]``. ``4HI + 4H^2/heads + 4H`` parameters.

    References:
      Beck et al., "xLSTM: Extended long short-term memory", NeurIPS 2024,
      arXiv:2405.04517, section 2.2 and appendix A.
    """
    H = _checks.positive_int(hidden_size, "hidden_size")
    K = _checks.positive_int(num_heads, "num_heads")
    if H % K:
        raise ValueError(f"slstm: hidden_size ({H}) must be divisible by num_heads ({K})")
    d = H // K
    input_size = _input_size_from("w")

    def init(key, input_size_):
        I = _checks.positive_int(input_size_, "input_size")
        k_w, k_r, k_b, k_f = jax.random.split(key, 4)
        w = _blocks(kernel_init, k_w, I, H, 4, param_dtype)
        r = jnp.stack([_blocks(recurrent_init, k, d, d, 4, param_dtype).reshape(d, 4, d)
                       for k in jax.random.split(k_r, K)])
        b = _draw(bias_init, k_b, (4 * H,), param_dtype)
        b = b.at[H:2 * H].set(_draw(forget_bias_init, k_f, (K, d), param_dtype).reshape(H))
        return SLSTMParams(w, r, b)

    def initial_state(params):
        z = jnp.zeros((H,), params.w.dtype)
        return SLSTMState(z, z, z, z)

    def input_map(params, x):
        return _affine(x, params.w, params.b)

    def combine(extras, state, u, r):
        i_, f_, z_, o_ = jnp.split(u + r, 4, axis=-1)
        log_f = log_forget(f_)
        m = jnp.where(state.n == 0, i_, jnp.maximum(i_, log_f + state.m))
        i = jnp.exp(i_ - m)
        f = jnp.exp(log_f + state.m - m)
        c = f * state.c + i * jnp.tanh(z_)
        n = f * state.n + i
        h = jax.nn.sigmoid(o_) * c / n
        return SLSTMState(h, c, n, m), h

    recurrent = Recurrent(_slstm_weight, _no_extras, _slstm_hidden, combine)

    def step(params, state, u):
        return combine((), state, u, _slstm_heads(state.h, params.r))

    hoist = Hoist(input_map, step, recurrent)

    def apply(params, state, x):
        u = input_map(params, _as_input(params, x, input_size, "slstm"))
        return step(params, state, u)

    return Cell(init, initial_state, apply, input_size, H, hoist=hoist)


# -- mLSTM (matrix-state cells): imports, params, state and constructor
from typing import Callable, NamedTuple, Optional  # noqa: E402,F811 (this section's own)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from seqjax import _checks  # noqa: E402
from seqjax import chunkwise as _chunkwise  # noqa: E402
from seqjax.cells._common import _affine, _draw  # noqa: E402,F811
from seqjax.cells._constructor import constructor  # noqa: E402,F811
from seqjax.cells.contract import Array, Cell, Initializer  # noqa: E402,F811


class MLSTMParams(NamedTuple):
    """mLSTM parameters (Beck et al. 2024), ``heads`` heads, key size ``d_k``, value
    size ``d_v = H / heads``.

    ``w_q, w_k [I, heads * d_k]``, ``w_v [I, H]``: queries, keys, values (no bias,
    as the ``xlstm`` layer). ``w_i, w_f [I, heads]``, ``b_i, b_f [heads]``: the input
    and forget gates, one scalar per head. ``w_o [I, H]``, ``b_o [H]``: the output
    gate. ``norm_scale [H]``: the head-wise layer norm's scale.
    """

    w_q: Array
    w_k: Array
    w_v: Array
    w_i: Array
    b_i: Array
    w_f: Array
    b_f: Array
    w_o: Array
    b_o: Array
    norm_scale: Array


class MLSTMState(NamedTuple):
    """mLSTM state, stored stabilised: ``C [heads, d_k, d_v]`` and ``n [heads, d_k]``
    are the matrix memory and the normaliser times ``exp(-m)``; ``m [heads]`` is the
    stabiliser."""

    C: Array
    n: Array
    m: Array


def linspace_forget_bias(start: float = 3.0, end: float = 6.0) -> Initializer:
    """xLSTM's forget-gate bias initialiser for the mLSTM: ``linspace(start, end)``
    over the heads (``bias_linspace_init_`` in the ``xlstm`` package, 3 to 6)."""

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.linspace(start, end, shape[-1], dtype=jnp.float32).astype(dtype)

    return init


@constructor
def mlstm(
    hidden_size: int,
    *,
    num_heads: Optional[int] = None,
    key_size: Optional[int] = None,
    log_forget: Callable[[Array], Array] = jax.nn.log_sigmoid,
    eps: float = 1e-6,
    norm_eps: float = 1e-5,
    kernel_init: Initializer = jax.nn.initializers.variance_scaling(0.4, "fan_in", "normal"),
    gate_init: Initializer = jax.nn.initializers.zeros,
    input_bias_init: Initializer = jax.nn.initializers.normal(0.1),
    forget_bias_init: Initializer = linspace_forget_bias(3.0, 6.0),
    param_dtype=jnp.float32,
) -> Cell:
    """mLSTM: an LSTM with a matrix memory, exponential input gate and normaliser.

    Per head, with ``x_t`` the input:

    .. math::
        q_t &= W_q x_t / \\sqrt{d_k}, \\quad k_t = W_k x_t, \\quad v_t = W_v x_t \\\\
        \\log i_t &= \\tilde i_t = w_i^T x_t + b_i, \\qquad
            \\log f_t = \\text{log\\_forget}(w_f^T x_t + b_f) \\\\
        m_t &= \\max(\\log f_t + m_{t-1}, \\log i_t), \\quad
            i'_t = e^{\\log i_t - m_t}, \\quad f'_t = e^{\\log f_t + m_{t-1} - m_t} \\\\
        C_t &= f'_t C_{t-1} + i'_t k_t v_t^T, \\qquad n_t = f'_t n_{t-1} + i'_t k_t \\\\
        \\tilde h_t &= C_t^T q_t / (\\max(|n_t^T q_t|, e^{-m_t}) + \\epsilon) \\\\
        h_t &= \\sigma(W_o x_t + b_o) \\odot \\mathrm{LN}_{head}(\\tilde h_t)

    Equations (19)-(27) of Beck et al. in their stabilised form: ``C, n`` are stored
    times ``exp(-m)`` so no exponential exceeds 1, and ``\\tilde h`` equals the
    paper's ``C q / max(|n^T q|, 1)``. The memory is stored ``[d_k, d_v]`` (``k v^T``,
    the paper's ``v k^T`` transposed) and the query is scaled by ``1/sqrt(d_k)``, as in
    the authors' ``mlstm_kernels`` (the older ``xlstm`` recurrent step scales the key
    instead: same outputs, its ``C, n`` are ours over ``sqrt(d_k)``).

    The cell is what ``xlstm``'s ``mLSTMCell`` computes (the recurrence, then a
    head-wise layer norm with a learnable scale and no bias) plus the paper's sigmoid
    output gate, with its own projections of the input: input ``[I]``, output
    ``[H]``. The xLSTM block around it (up-projection, causal convolution, learnable
    skip, ``silu`` gate, down-projection) is not part of it.

    :func:`seqjax.unroll` runs it in the chunkwise-parallel form of
    :func:`seqjax.chunkwise.gated_outer_product`, stabilised by the same ``m_t``
    (same numbers as the step); ``apply`` is one step.

    Initialisation (the ``xlstm`` package's): ``W_q, W_k, W_v, W_o`` small-init
    normal with variance ``2 / (5 I)``; gate weights zero; ``b_i ~ N(0, 0.1^2)``;
    ``b_f`` linearly spaced from 3 to 6 over the heads; ``b_o = 0``; norm scale 1.

    Args:
      hidden_size: ``H = heads * d_v``, the size of ``h``.
      num_heads: number of heads (must divide ``H``); ``None``: one per 64
        channels (:func:`seqjax.chunkwise.head_split`; ``xlstm`` uses 4 heads of a
        twice up-projected width).
      key_size: ``d_k`` per head; ``None`` means ``d_v``.
      log_forget: ``log f`` from the forget pre-activation: ``log sigmoid`` (the
        ``xlstm`` code) or the identity for the paper's exponential forget gate
        (then keep ``w_f x + b_f <= 0``).
      eps: added to the denominator of ``\\tilde h`` (the ``xlstm`` code's ``1e-6``).
      norm_eps: the head-wise layer norm's epsilon.
      kernel_init: initialiser of ``W_q, W_k, W_v, W_o``.
      gate_init: initialiser of the gate weights ``w_i, w_f`` (xLSTM: zeros).
      input_bias_init, forget_bias_init: initialisers of ``b_i`` and ``b_f``
        (shape ``[heads]``).
      param_dtype: dtype of the parameters; inputs are cast to it. 16-bit params
        compute the recurrence in float32 and store the state in ``param_dtype``.

    Returns:
      A :class:`Cell` with params :class:`MLSTMParams`, state :class:`MLSTMState`,
      output ``h [H]``; ``cell.chunkwise`` is set. ``2 I heads d_k + 2 I H + 2 heads
      (I + 1) + 2 H`` parameters.

    References:
      Beck et al., "xLSTM: Extended long short-term memory", NeurIPS 2024,
      arXiv:2405.04517, section 2.3.
    """
    H, heads, d_k, d_v = _chunkwise.head_split("mlstm", hidden_size, num_heads, key_size)
    _checks.real(eps, "eps", "mlstm", above=0.0,
                 why="it keeps the denominator max(|n^T q|, exp(-m)) + eps of h~ positive "
                     "where exp(-m) underflows")
    _checks.real(norm_eps, "norm_eps", "mlstm", above=0.0,
                 why="it keeps the head-wise layer norm's rsqrt(var + norm_eps) finite for a "
                     "constant head (every head, with one channel)")
    recurrence = _chunkwise.gated_outer_product(normalised=True, eps=eps)

    def init(key, input_size_):
        I = _checks.positive_int(input_size_, "input_size")
        kq, kk, kv, ko, ki, kf, kwi, kwf = jax.random.split(key, 8)
        zero = lambda *shape: jnp.zeros(shape, param_dtype)
        return MLSTMParams(
            _draw(kernel_init, kq, (I, heads * d_k), param_dtype),
            _draw(kernel_init, kk, (I, heads * d_k), param_dtype),
            _draw(kernel_init, kv, (I, H), param_dtype),
            _draw(gate_init, kwi, (I, heads), param_dtype),
            _draw(input_bias_init, ki, (heads,), param_dtype),
            _draw(gate_init, kwf, (I, heads), param_dtype),
            _draw(forget_bias_init, kf, (heads,), param_dtype),
            _draw(kernel_init, ko, (I, H), param_dtype), zero(H),
            jnp.ones((H,), param_dtype))

    def initial_state(params):
        dtype = params.w_q.dtype
        return MLSTMState(jnp.zeros((heads, d_k, d_v), dtype), jnp.zeros((heads, d_k), dtype),
                          jnp.zeros((heads,), dtype))

    def features(params, xs):
        lead = xs.shape[:-1]
        q = (xs @ params.w_q).reshape(lead + (heads, d_k)) * (d_k ** -0.5)
        k = (xs @ params.w_k).reshape(lead + (heads, d_k))
        v = (xs @ params.w_v).reshape(lead + (heads, d_v))
        log_i = _affine(xs, params.w_i, params.b_i)
        log_f = log_forget(_affine(xs, params.w_f, params.b_f))
        return _chunkwise.GatedFeatures(q, k, v, log_f, log_i)

    def readout(params, h, xs):
        mean = jnp.mean(h, axis=-1, keepdims=True)
        centred = h - mean
        var = jnp.mean(centred * centred, axis=-1, keepdims=True)
        normed = (centred * lax.rsqrt(var + norm_eps)).reshape(xs.shape[:-1] + (H,))
        normed = normed * jnp.broadcast_to(params.norm_scale, normed.shape)
        return jax.nn.sigmoid(_affine(xs, params.w_o, params.b_o)) * normed

    return _chunkwise.chunkwise_cell(init, initial_state, lambda p: p.w_q.shape[0], H,
                                     "mlstm", features, recurrence, readout)
