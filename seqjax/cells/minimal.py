"""The minimal cells of Feng et al. 2024: minGRU and minLSTM, gates from the input only."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax.cells._common import (_affine, _blocks, _draw, _input_size_from, _linear_cell,
                                  lecun_normal, zeros)
from seqjax.cells._constructor import constructor
from seqjax.cells.contract import Array, Cell, Initializer


class MinParams(NamedTuple):
    """minGRU / minLSTM parameters: ``w [I, kH]``, ``b [kH]`` (k = 2 or 3)."""

    w: Array
    b: Array




@constructor
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


@constructor
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
