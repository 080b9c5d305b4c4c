"""Diagonal linear recurrences: the LRU (Orvieto et al. 2023)."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from seqjax import _checks
from seqjax.cells._common import _linear_cell
from seqjax.cells.contract import Array, Cell, constructor


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
