"""Normalisation layers: RMSNorm and LayerNorm, as stateless cells."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax.numpy as jnp
from jax import lax

from seqjax import _checks
from seqjax.cells._constructor import constructor
from seqjax.cells.contract import Array, Cell
from seqjax.layers._common import pointwise_cell, work_dtype


class NormParams(NamedTuple):
    """``scale [size]`` (the checkpoint's ``weight``; the norm multiplies by ``offset +
    scale``) and ``bias [size]`` or ``None``."""

    scale: Array
    bias: Optional[Array]


def _positive(value, name):
    if not (isinstance(value, (int, float)) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def rms_normalise(x, scale, *, eps: float, offset: float = 0.0, groups: int = 1):
    """``x / rms(x) * (offset + scale)`` over the last axis, in ``groups`` equal parts.

    The mean of squares and the division run in float32 (at least); the normalised
    ``x`` is cast back to ``x``'s dtype before the scale multiplies it, as the
    reference implementations of Llama, Mamba and Qwen do.
    """
    dtype = x.dtype
    work = x.astype(work_dtype(dtype))
    if groups > 1:
        work = work.reshape(work.shape[:-1] + (groups, work.shape[-1] // groups))
    work = work * lax.rsqrt(jnp.mean(work * work, axis=-1, keepdims=True) + eps)
    normed = work.reshape(x.shape).astype(dtype)
    weight = scale if offset == 0.0 else scale + jnp.asarray(offset, scale.dtype)
    return normed * jnp.broadcast_to(weight, normed.shape).astype(dtype)


def layer_normalise(x, scale, bias, *, eps: float, offset: float = 0.0):
    """``(x - mean) / sqrt(var + eps) * (offset + scale) + bias`` over the last axis,
    the statistics in float32 (at least)."""
    dtype = x.dtype
    work = x.astype(work_dtype(dtype))
    centred = work - jnp.mean(work, axis=-1, keepdims=True)
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    normed = (centred * lax.rsqrt(var + eps)).astype(dtype)
    weight = scale if offset == 0.0 else scale + jnp.asarray(offset, scale.dtype)
    out = normed * jnp.broadcast_to(weight, normed.shape).astype(dtype)
    if bias is not None:
        out = out + jnp.broadcast_to(bias, out.shape).astype(dtype)
    return out


@constructor
def rms_norm(size: int, *, eps: float = 1e-6, offset: float = 0.0, groups: int = 1,
             param_dtype=jnp.float32) -> Cell:
    """RMSNorm (Zhang & Sennrich 2019) as a stateless cell.

    .. math::
        y = \\frac{x}{\\sqrt{\\mathrm{mean}(x^2) + \\epsilon}} \\odot (o + w)

    ``o = offset``: 0 for Llama, Mamba and xLSTM (``w`` starts at 1); 1 for Gemma,
    RecurrentGemma and Qwen3-Next's decoder norms, which store ``w`` centred at 0.
    ``w`` is stored as the checkpoint stores it, so loading is a copy. ``groups > 1``
    normalises each of ``groups`` equal parts of ``x`` on its own (Mamba-2's gated
    norm).

    Args:
      size: the width of ``x``.
      eps: added to the mean of squares.
      offset: ``o`` above.
      groups: parts normalised separately (must divide ``size``).
      param_dtype: dtype of ``w``.

    Returns:
      A stateless :class:`~seqjax.Cell` with params :class:`NormParams` (``bias``
      ``None``).

    References:
      Zhang & Sennrich, "Root mean square layer normalization", NeurIPS 2019.
    """
    size = _checks.positive_int(size, "size")
    groups = _checks.positive_int(groups, "groups")
    eps = _positive(eps, "rms_norm: eps")
    if size % groups:
        raise ValueError(f"rms_norm: groups ({groups}) must divide size ({size})")

    def init(key, input_size):
        _same(input_size, size, "rms_norm")
        return NormParams(jnp.full((size,), 1.0 - offset, param_dtype), None)

    def fn(params, x):
        return rms_normalise(x, params.scale, eps=eps, offset=offset, groups=groups)

    return pointwise_cell(init, fn, lambda p: p.scale.shape[0], size)


@constructor
def layer_norm(size: int, *, eps: float = 1e-5, bias: bool = True, offset: float = 0.0,
               param_dtype=jnp.float32) -> Cell:
    """LayerNorm (Ba et al. 2016) as a stateless cell.

    .. math::
        y = \\frac{x - \\mathrm{mean}(x)}{\\sqrt{\\mathrm{var}(x) + \\epsilon}}
            \\odot (o + w) + b

    Args:
      size: the width of ``x``.
      eps: added to the variance.
      bias: whether there is a ``b``.
      offset: ``o``; ``w`` is stored as the checkpoint stores it.
      param_dtype: dtype of ``w`` and ``b``.

    Returns:
      A stateless :class:`~seqjax.Cell` with params :class:`NormParams`.

    References:
      Ba, Kiros & Hinton, "Layer normalization", arXiv:1607.06450, 2016.
    """
    size = _checks.positive_int(size, "size")
    eps = _positive(eps, "layer_norm: eps")

    def init(key, input_size):
        _same(input_size, size, "layer_norm")
        return NormParams(jnp.full((size,), 1.0 - offset, param_dtype),
                          jnp.zeros((size,), param_dtype) if bias else None)

    def fn(params, x):
        return layer_normalise(x, params.scale, params.bias, eps=eps, offset=offset)

    return pointwise_cell(init, fn, lambda p: p.scale.shape[0], size)


def _same(input_size, size, name):
    input_size = _checks.positive_int(input_size, "input_size")
    if input_size != size:
        raise ValueError(f"{name}: input_size ({input_size}) must equal size ({size})")
