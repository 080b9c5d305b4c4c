"""Feed-forward layers: the gated MLP (SwiGLU, GeGLU) and the plain MLP, as stateless
cells."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax.cells._constructor import constructor
from seqjax.cells.contract import Cell
from seqjax.layers._common import LinearParams, linear, linear_init_params, pointwise_cell


class GatedMLPParams(NamedTuple):
    """``gate, up [D -> F]`` and ``down [F -> D]`` (:class:`LinearParams`)."""

    gate: LinearParams
    up: LinearParams
    down: LinearParams


class MLPParams(NamedTuple):
    """``up [D -> F]`` and ``down [F -> D]`` (:class:`LinearParams`)."""

    up: LinearParams
    down: LinearParams


def gelu_tanh(x):
    """GeLU with the tanh approximation (PyTorch's ``gelu(approximate="tanh")``,
    Gemma's and RecurrentGemma's ``gelu_pytorch_tanh``)."""
    return jax.nn.gelu(x, approximate=True)


@constructor
def gated_mlp(d_model: int, hidden_size: int, *, activation: Callable = jax.nn.silu,
              bias: bool = False, param_dtype=jnp.float32) -> Cell:
    """The gated MLP (Shazeer 2020): SwiGLU with ``silu``, GeGLU with ``gelu_tanh``.

    .. math::
        y = \\big(\\mathrm{act}(x W_g + b_g) \\odot (x W_u + b_u)\\big) W_d + b_d

    Args:
      d_model: ``D``, the width of ``x`` and ``y``.
      hidden_size: ``F``.
      activation: ``act`` (``jax.nn.silu``: Llama, Mamba-2-hybrid, Qwen; ``gelu_tanh``:
        Gemma, RecurrentGemma).
      bias: whether the three maps have biases.
      param_dtype: dtype of the params.

    Returns:
      A stateless :class:`~seqjax.Cell` with params :class:`GatedMLPParams`.

    References:
      Shazeer, "GLU variants improve transformer", arXiv:2002.05202, 2020.
    """
    D = _checks.positive_int(d_model, "d_model")
    F = _checks.positive_int(hidden_size, "hidden_size")

    def init(key, input_size):
        _checks.positive_int(input_size, "input_size")
        k_g, k_u, k_d = jax.random.split(key, 3)
        return GatedMLPParams(
            linear_init_params(k_g, input_size, F, bias=bias, dtype=param_dtype),
            linear_init_params(k_u, input_size, F, bias=bias, dtype=param_dtype),
            linear_init_params(k_d, F, D, bias=bias, dtype=param_dtype))

    def fn(params, x):
        return linear(params.down, activation(linear(params.gate, x)) * linear(params.up, x))

    return pointwise_cell(init, fn, lambda p: p.gate.w.shape[0], D)


@constructor
def mlp(d_model: int, hidden_size: int, *, activation: Callable = gelu_tanh,
        bias: bool = True, param_dtype=jnp.float32) -> Cell:
    """The transformer's two-layer MLP: ``y = act(x W_u + b_u) W_d + b_d``.

    Args:
      d_model: ``D``, the width of ``x`` and ``y``.
      hidden_size: ``F``.
      activation: ``act``.
      bias: whether the two maps have biases.
      param_dtype: dtype of the params.

    Returns:
      A stateless :class:`~seqjax.Cell` with params :class:`MLPParams`.

    References:
      Vaswani et al., "Attention is all you need", NeurIPS 2017.
    """
    D = _checks.positive_int(d_model, "d_model")
    F = _checks.positive_int(hidden_size, "hidden_size")

    def init(key, input_size):
        _checks.positive_int(input_size, "input_size")
        k_u, k_d = jax.random.split(key)
        return MLPParams(linear_init_params(k_u, input_size, F, bias=bias, dtype=param_dtype),
                         linear_init_params(k_d, F, D, bias=bias, dtype=param_dtype))

    def fn(params, x):
        return linear(params.down, activation(linear(params.up, x)))

    return pointwise_cell(init, fn, lambda p: p.up.w.shape[0], D)
