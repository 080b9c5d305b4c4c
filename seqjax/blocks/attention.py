"""The Transformer block (pre-norm attention and gated MLP, as Llama)."""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax.cells._constructor import constructor
from seqjax.cells.contract import Cell
from seqjax.blocks.residual import residual
from seqjax.layers.attention import attention, rotary
from seqjax.layers.mlp import gated_mlp
from seqjax.layers.norms import rms_norm


@constructor
def attention_block(
    d_model: int,
    *,
    num_heads: Optional[int] = None,
    num_kv_heads: Optional[int] = None,
    head_dim: Optional[int] = None,
    window: Optional[int] = None,
    max_length: int = 2048,
    rope_theta: float = 10000.0,
    mlp_hidden: Optional[int] = None,
    activation: Callable = jax.nn.silu,
    norm_eps: float = 1e-6,
    param_dtype=jnp.float32,
) -> Cell:
    """A Llama-style Transformer block: pre-norm causal attention and a SwiGLU MLP.

    .. math::
        h = x + \\mathrm{Attention}(\\mathrm{RMSNorm}(x)), \\qquad
        y = h + W_d(\\mathrm{silu}(W_g u) \\odot W_u u), \\; u = \\mathrm{RMSNorm}(h)

    with rotary position embeddings on whole heads (theta 10,000) and optional
    grouped-query heads and sliding window (:func:`seqjax.layers.attention`).

    Args:
      d_model: ``D``.
      num_heads: query heads; ``None``: one per 64 channels.
      num_kv_heads: key/value heads; ``None``: ``num_heads``.
      head_dim: channels per head; ``None``: ``D / num_heads``.
      window: sliding window (keys per query), or ``None`` for global attention.
      max_length: KV-cache slots of global attention (the longest sequence decoded).
      rope_theta: the rotary base.
      mlp_hidden: the MLP's width; ``None``: Llama's ``8 D / 3`` rounded up to a
        multiple of 64.
      activation: the MLP's gate activation.
      norm_eps: the RMSNorms' epsilon.
      param_dtype: dtype of the params.

    Returns:
      A :func:`seqjax.blocks.residual` cell whose state is the KV cache.

    References:
      Vaswani et al. 2017; Touvron et al., "LLaMA", arXiv:2302.13971, 2023.
    """
    D = _checks.positive_int(d_model, "d_model")
    heads = max(1, D // 64) if num_heads is None else num_heads
    hd = head_dim if head_dim is not None else D // heads
    hidden = mlp_hidden if mlp_hidden is not None else -(-(8 * D // 3) // 64) * 64
    mixer = attention(D, heads, num_kv_heads=num_kv_heads, head_dim=head_dim, window=window,
                      max_length=max_length, rope=rotary(hd, theta=rope_theta),
                      param_dtype=param_dtype)
    return residual(mixer, mlp=gated_mlp(D, hidden, activation=activation,
                                         param_dtype=param_dtype),
                    norm=functools.partial(rms_norm, eps=norm_eps, param_dtype=param_dtype))
