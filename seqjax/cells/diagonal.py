"""Diagonal linear recurrences: the LRU (Orvieto et al. 2023) and Griffin's RG-LRU
(De et al. 2024)."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from seqjax import _checks
from seqjax.cells._common import _draw, _linear_cell
from seqjax.cells._constructor import constructor
from seqjax.cells.contract import Array, Cell, Initializer

variance_scaling = jax.nn.initializers.variance_scaling


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


@constructor
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
        ``r_min <= |lambda| <= r_max`` (paper default ``0.9 .. 0.999``);
        ``0 <= r_min < r_max < 1``.
      max_phase: phases are drawn uniformly in ``[0, max_phase]``; ``> 0``.
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
    if not 0.0 <= r_min < r_max < 1.0:  # also refuses NaN
        raise ValueError(
            f"lru needs 0 <= r_min < r_max < 1 (|lambda| = 1 does not decay, and its "
            f"nu_log = log(-log|lambda|) is -inf), got r_min={r_min}, r_max={r_max}")
    _checks.real(max_phase, "max_phase", "lru", above=0.0,
                 why="theta_log = log(max_phase * u) is undefined otherwise")
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


class RGLRUParams(NamedTuple):
    """RG-LRU parameters (De et al. 2024), width ``H`` in ``heads`` blocks of ``d``.

    ``w_a, w_x [heads, d, d]`` and ``b_a, b_x [H]``: the block-diagonal recurrence
    gate and input gate. ``lam [H]``: ``Lambda``, with ``a = sigmoid(Lambda)``.

    From ``recurrentgemma.jax.layers.RGLRU``: ``w_a, w_x`` are ``a_gate.w`` and
    ``input_gate.w``, ``b_a, b_x`` their ``b`` flattened, and ``lam = -a_param``
    (RGLRU computes ``log a = -c r softplus(a_param)``).
    """

    w_a: Array
    b_a: Array
    w_x: Array
    b_x: Array
    lam: Array


def _block_diagonal(x, w, b):
    """``x [.., heads*d] -> [.., heads*d]``, one ``[d, d]`` matmul per head, plus ``b``."""
    heads, d, out = w.shape
    y = jnp.einsum("...ki,kij->...kj", x.reshape(x.shape[:-1] + (heads, d)), w)
    y = y.reshape(x.shape[:-1] + (heads * out,))
    return y + jnp.broadcast_to(b, y.shape)


def _sqrt_bounded_gradient(x, max_gradient):
    """``sqrt(x)`` whose derivative is capped at ``max_gradient`` (``None``: no cap).

    The value is exact; the derivative is ``1 / (2 sqrt(max(x, 1 / (4 g^2))))``, as
    recurrentgemma's ``sqrt_bound_derivative``, here a ``jax.custom_jvp`` so that
    forward mode works too (reverse mode transposes it).
    """
    if max_gradient is None:
        return jnp.sqrt(x)
    return _capped_sqrt(x, float(max_gradient))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _capped_sqrt(x, max_gradient):
    return jnp.sqrt(x)


@_capped_sqrt.defjvp
def _capped_sqrt_jvp(max_gradient, primals, tangents):
    (x,), (t,) = primals, tangents
    floor = 1.0 / (4.0 * max_gradient**2)
    return jnp.sqrt(x), t / (2 * jnp.sqrt(jnp.maximum(x, floor)))


@constructor
def rg_lru(
    hidden_size: int,
    *,
    num_heads: int = 1,
    c: float = 8.0,
    r_min: float = 0.9,
    r_max: float = 0.999,
    max_sqrt_gradient: Optional[float] = 1000.0,
    kernel_init: Initializer = variance_scaling(1.0, "fan_in", "normal"),
    param_dtype=jnp.float32,
) -> Cell:
    """Real-gated linear recurrent unit, the recurrence of Griffin and RecurrentGemma.

    .. math::
        r_t &= \\sigma(x_t W_a + b_a) \\qquad \\text{(recurrence gate)} \\\\
        i_t &= \\sigma(x_t W_x + b_x) \\qquad \\text{(input gate)} \\\\
        a_t &= a^{c r_t}, \\quad a = \\sigma(\\Lambda)
            \\quad (\\log a_t = -c\\, r_t\\, \\mathrm{softplus}(-\\Lambda)) \\\\
        h_t &= a_t \\odot h_{t-1} + \\sqrt{1 - a_t^2} \\odot (i_t \\odot x_t),
            \\qquad y_t = h_t

    The RG-LRU of De et al. (section 2.4). The recurrence is diagonal, so
    :func:`seqjax.unroll` runs it as an associative scan; ``apply`` is one step.
    ``W_a`` and ``W_x`` are block-diagonal with ``num_heads`` blocks, as in
    RecurrentGemma's ``BlockDiagonalLinear``.

    Initialisation (RecurrentGemma's): ``a^2 = sigmoid(Lambda)^2`` uniform on
    ``[r_min^2, r_max^2]`` (uniform on the ring's area), gate kernels normal with
    variance ``1 / H`` (``variance_scaling(1, "fan_in")`` over the ``[heads, d, d]``
    blocks), gate biases zero.

    Difference from ``recurrentgemma.jax.layers.RGLRU`` (deliberate): that layer
    treats ``segment_pos == 0`` as the start of a document -- it drops ``h_{t-1}``
    and skips the ``sqrt(1 - a_t^2)`` factor, so ``h_0 = i_0 * x_0``. Here every step
    is the equation above, from whatever state is passed in (zeros by default), so
    streaming a sequence in chunks equals running it whole, and the first step of
    a sequence is ``sqrt(1 - a_1^2) * i_1 * x_1``. The two are the same map when the
    reference is given positions that never reach 0 (a continued segment); the
    tests check that, and the exact first-step difference. To start documents
    inside one sequence, unroll them separately (or pass a fresh state).

    Args:
      hidden_size: ``H``, the width of ``x``, ``h`` and ``y`` (``input_size`` must
        equal it, as in the paper; project first otherwise).
      num_heads: number of diagonal blocks of ``W_a`` and ``W_x`` (RecurrentGemma 2B
        uses 10 blocks of 256); ``1`` makes them dense.
      c: the constant ``c`` of ``a_t = a^{c r_t}`` (paper: 8); ``> 0``, else
        ``a_t >= 1`` never decays.
      r_min, r_max: the ring of ``a = sigmoid(Lambda)`` at initialisation.
      max_sqrt_gradient: cap on the derivative of the ``sqrt`` in
        ``sqrt(1 - a_t^2)`` (RecurrentGemma: 1000, which keeps bfloat16 training
        finite as ``a_t -> 1``); ``None`` for the plain derivative. Values are
        unaffected.
      kernel_init: initialiser of ``W_a`` and ``W_x``, called with shape
        ``[heads, d, d]``.
      param_dtype: dtype of the parameters; inputs are cast to it.

    Returns:
      A :class:`Cell` with params :class:`RGLRUParams`, state ``h [H]``, output
      ``h``. ``2 H^2 / heads + 3H`` parameters.

    References:
      De et al., "Griffin: Mixing gated linear recurrences with local attention for
      efficient language models", arXiv:2402.19427, 2024, section 2.4;
      Botev et al., "RecurrentGemma", arXiv:2404.07839, 2024.
    """
    H = _checks.positive_int(hidden_size, "hidden_size")
    K = _checks.positive_int(num_heads, "num_heads")
    if H % K:
        raise ValueError(f"rg_lru: hidden_size ({H}) must be divisible by num_heads ({K})")
    _checks.real(c, "c", "rg_lru", above=0.0,
                 why="a_t = sigmoid(Lambda)^(c r_t) must decay; c <= 0 makes a_t >= 1, a "
                     "recurrence that never forgets")
    if not 0.0 < r_min < r_max < 1.0:
        raise ValueError(f"rg_lru needs 0 < r_min < r_max < 1, got r_min={r_min}, "
                         f"r_max={r_max}")
    if max_sqrt_gradient is not None and not max_sqrt_gradient > 0:
        raise ValueError(f"rg_lru: max_sqrt_gradient must be positive or None, got "
                         f"{max_sqrt_gradient!r}")
    d = H // K

    def init(key, input_size_):
        I = _checks.positive_int(input_size_, "input_size")
        if I != H:
            raise ValueError(
                f"rg_lru: the input gate multiplies x elementwise, so input_size must "
                f"equal hidden_size ({H}); got input_size={I}. Project the inputs to {H} "
                f"features first")
        k_a, k_x, k_l = jax.random.split(key, 3)
        work = jnp.float32 if jnp.dtype(param_dtype).itemsize < 4 else param_dtype
        u = jax.random.uniform(k_l, (H,), work)
        a = jnp.sqrt(u * (r_max**2 - r_min**2) + r_min**2)
        lam = jnp.log(a) - jnp.log1p(-a)  # sigmoid^-1
        zero = jnp.zeros((H,), param_dtype)
        return RGLRUParams(_draw(kernel_init, k_a, (K, d, d), param_dtype), zero,
                           _draw(kernel_init, k_x, (K, d, d), param_dtype), zero,
                           lam.astype(param_dtype))

    def coefficients(params, xs):
        r = jax.nn.sigmoid(_block_diagonal(xs, params.w_a, params.b_a))
        i = jax.nn.sigmoid(_block_diagonal(xs, params.w_x, params.b_x))
        log_a = -c * r * jnp.broadcast_to(jax.nn.softplus(-params.lam), r.shape)
        a = jnp.exp(log_a)
        scale = _sqrt_bounded_gradient(1 - jnp.exp(2 * log_a), max_sqrt_gradient)
        return a, scale * (i * xs)

    def readout(params, hs, xs):
        return hs

    return _linear_cell("rg_lru", H, lambda p: ((H,), p.lam.dtype), init, coefficients,
                        readout, lambda p: p.w_a.shape[0] * p.w_a.shape[1])
