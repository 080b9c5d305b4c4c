"""The short causal depthwise convolution of Mamba, Griffin, xLSTM and the delta-rule
layers, as a cell whose state is its last ``k - 1`` inputs."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax.cells._constructor import constructor
from seqjax.cells.contract import Array, Cell
from seqjax.layers._common import dtype_of


class ConvParams(NamedTuple):
    """``w [k, C]``: tap ``k - 1`` multiplies the current input, tap 0 the oldest
    (PyTorch's ``Conv1d(C, C, k, groups=C).weight [C, 1, k]`` is ``w.T[:, None, :]``);
    ``b [C]`` or ``None``."""

    w: Array
    b: Optional[Array]


def causal_conv(xs, w, b, history):
    """``y_t = sum_j w[j] x_{t - k + 1 + j} (+ b)`` over ``xs [T, ..., C]``, the inputs
    before ``x_0`` taken from ``history [k - 1, ..., C]`` (oldest first)."""
    k, T = w.shape[0], xs.shape[0]
    padded = jnp.concatenate([history.astype(xs.dtype), xs], axis=0)  # [k - 1 + T, ...]
    y = sum(padded[j:j + T] * jnp.broadcast_to(w[j], xs.shape) for j in range(k))
    if b is not None:
        y = y + jnp.broadcast_to(b, y.shape)
    return y


def last_inputs(xs, history, lengths):
    """The ``k - 1`` inputs before step ``lengths`` of each example: ``xs [T, B, C]``,
    ``history [B, k - 1, C]``, ``lengths [B]`` or ``None`` (all ``T``) ->
    ``[B, k - 1, C]``."""
    keep = history.shape[1]
    if keep == 0:
        return history
    T = xs.shape[0]
    padded = jnp.concatenate([jnp.swapaxes(history, 0, 1).astype(xs.dtype), xs], axis=0)
    end = jnp.full((xs.shape[1],), T, jnp.int32) if lengths is None else lengths
    index = end[None, :] + jnp.arange(keep, dtype=jnp.int32)[:, None]  # rows of padded
    picked = jnp.take_along_axis(padded, index[:, :, None], axis=0)  # [k - 1, B, C]
    return jnp.swapaxes(picked, 0, 1).astype(history.dtype)


@constructor
def short_conv(channels: int, *, kernel_size: int = 4, bias: bool = True,
               activation: Optional[Callable] = None, param_dtype=jnp.float32) -> Cell:
    """Causal depthwise convolution over time, one filter of ``kernel_size`` taps per
    channel.

    .. math::
        y_t = \\mathrm{act}\\Big(\\sum_{j=0}^{k-1} w_j \\odot x_{t-k+1+j} + b\\Big)

    The state is the last ``k - 1`` inputs (zeros at the start), so stepping ``apply``
    one input at a time equals the whole-sequence convolution with ``k - 1`` zeros of
    left padding (Mamba's ``conv1d``, Griffin's ``Conv1D``). Initialisation: PyTorch's
    ``Conv1d`` (``U(+-1/sqrt(k))``).

    Args:
      channels: ``C``, the width of ``x`` and ``y``.
      kernel_size: ``k`` (4 in Mamba, Mamba-2, Griffin, xLSTM and Gated DeltaNet).
      bias: whether there is a ``b``.
      activation: applied after the sum (``jax.nn.silu`` in Mamba and the delta-rule
        layers); ``None``: the identity (Griffin).
      param_dtype: dtype of the params and the state.

    Returns:
      A :class:`~seqjax.Cell` with params :class:`ConvParams` and state ``[k - 1, C]``.

    References:
      Gu & Dao 2023 (Mamba, section 3.4); De et al. 2024 (Griffin, section 2.4).
    """
    C = _checks.positive_int(channels, "channels")
    k = _checks.positive_int(kernel_size, "kernel_size")
    act = (lambda y: y) if activation is None else activation

    def init(key, input_size):
        size = _checks.positive_int(input_size, "input_size")
        if size != C:
            raise ValueError(f"short_conv: input_size ({size}) must equal channels ({C})")
        k_w, k_b = jax.random.split(key)
        bound = 1.0 / k ** 0.5
        w = jax.random.uniform(k_w, (k, C), jnp.float32, -bound, bound).astype(param_dtype)
        b = (jax.random.uniform(k_b, (C,), jnp.float32, -bound, bound).astype(param_dtype)
             if bias else None)
        return ConvParams(w, b)

    def initial_state(params):
        return jnp.zeros((k - 1, C), dtype_of(params))

    def apply(params, state, x):
        _checks.step_input(x, C, "short_conv")
        x = x.astype(dtype_of(params))
        y = causal_conv(x[None], params.w, params.b, state)[0]
        window = jnp.concatenate([state, x[None]], axis=0)
        return window[1:], act(y)

    def parallel(params, xs, state, valid, options):
        if state is None:
            state = jnp.zeros((xs.shape[1], k - 1, C), xs.dtype)
        history = jnp.swapaxes(state, 0, 1)  # [k - 1, B, C]
        ys = act(causal_conv(xs, params.w, params.b, history))
        lengths = None if valid is None else jnp.sum(valid, axis=0, dtype=jnp.int32)
        return last_inputs(xs, state, lengths), ys

    return Cell(init, initial_state, apply, lambda p: p.w.shape[1], C, parallel=parallel)
