"""Griffin's blocks (De et al. 2024), as RecurrentGemma (Botev et al. 2024) runs them:
the recurrent block around the RG-LRU and the local multi-query attention block.

Both are pre-norm residual blocks with Gemma's RMSNorm (``(1 + w) x / rms(x)``) and a
GeGLU MLP; ``["griffin", "griffin", "local_attention"] * n`` is the Griffin hybrid.

The recurrent block treats the first token of a fresh state as the start of a
document, as RecurrentGemma does (Google's ``recurrentgemma`` and transformers): there
the RG-LRU drops ``h_{t-1}`` and skips the ``sqrt(1 - a_t^2)`` factor. Its state
counts positions for that purpose; the :func:`seqjax.rg_lru` cell itself has no
positions and always applies the factor.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax.blocks.residual import residual
from seqjax.cells._constructor import constructor
from seqjax.cells.contract import Array, Cell
from seqjax.cells.diagonal import RGLRUParams, _block_diagonal, rg_lru
from seqjax.layers._common import LinearParams, dtype_of, linear, linear_init_params
from seqjax.layers.attention import attention, rotary
from seqjax.layers.conv import ConvParams, short_conv
from seqjax.layers.mlp import gated_mlp, gelu_tanh
from seqjax.layers.norms import rms_norm
from seqjax.unroll import run

# RecurrentGemma's projections: normal with variance 1 / fan_in
_fan_in_normal = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal")


class RecurrentBlockParams(NamedTuple):
    """The recurrent block's params, named as in RecurrentGemma.

    ``linear_y, linear_x [D -> L]`` and ``linear_out [L -> D]``
    (:class:`~seqjax.layers.LinearParams`, with biases); ``conv``, the temporal
    convolution (:class:`~seqjax.layers.ConvParams`, ``w [k, L]``, ``b [L]``);
    ``rg_lru``, the RG-LRU's :class:`~seqjax.cells.diagonal.RGLRUParams` (``lam`` is
    RecurrentGemma's ``-a_param``).
    """

    linear_y: LinearParams
    linear_x: LinearParams
    conv: ConvParams
    rg_lru: RGLRUParams
    linear_out: LinearParams


class RecurrentBlockState(NamedTuple):
    """``conv [k - 1, L]``: the last inputs of the convolution (oldest first); ``h
    [L]``: the RG-LRU state; ``position`` (int32): the position of the next token (0:
    a fresh sequence, whose first step resets the RG-LRU)."""

    conv: Array
    h: Array
    position: Array


def _default_heads(width: int) -> int:
    """One head per 256 channels (RecurrentGemma), or one when 256 does not divide."""
    return width // 256 if width >= 256 and width % 256 == 0 else 1


@constructor
def recurrent_block(
    d_model: int,
    *,
    lru_width: Optional[int] = None,
    num_heads: Optional[int] = None,
    conv_width: int = 4,
    c: float = 8.0,
    activation: Callable = gelu_tanh,
    param_dtype=jnp.float32,
) -> Cell:
    """Griffin's recurrent (temporal mixing) block, the mixer of :func:`griffin_block`.

    .. math::
        y_t &= \\mathrm{gelu}(u_t W_y + b_y), \\qquad
        \\tilde x_t = \\mathrm{Conv1D}(u W_x + b_x)_t \\\\
        r_t &= \\sigma(\\tilde x_t W_a + b_a), \\quad
        i_t = \\sigma(\\tilde x_t W_i + b_i), \\quad
        a_t = \\sigma(\\Lambda)^{c\\, r_t} \\\\
        h_t &= a_t \\odot h_{t-1} + \\sqrt{1 - a_t^2} \\odot (i_t \\odot \\tilde x_t)
            \\qquad (\\text{at position } 0: \\; h_0 = i_0 \\odot \\tilde x_0) \\\\
        o_t &= (h_t \\odot y_t) W_o + b_o

    ``Conv1D`` is a causal depthwise convolution of ``conv_width`` taps with a bias and
    no activation (:func:`seqjax.layers.short_conv`), the RG-LRU is
    :func:`seqjax.rg_lru` with block-diagonal gates of ``num_heads`` blocks.

    Position 0 (a fresh state) is a document start, as in RecurrentGemma: the first
    step drops ``h_{t-1}`` and the ``sqrt(1 - a^2)`` factor. The state counts positions,
    so a sequence continued from a state (a chunked prefill, decoding) uses the plain
    RG-LRU step. The whole-sequence form computes that first step on its own and runs
    the rest through :func:`seqjax.unroll.run` (an associative scan).

    Args:
      d_model: ``D``, the width of ``u`` and ``o``.
      lru_width: ``L``, the width of the recurrence; ``None``: ``D`` (RecurrentGemma;
        the Griffin paper uses about ``4 D / 3``).
      num_heads: diagonal blocks of ``W_a`` and ``W_i`` (must divide ``L``);
        ``None``: one per 256 channels (RecurrentGemma), or one.
      conv_width: taps of the convolution.
      c: the constant of ``a_t = a^{c r_t}``.
      activation: the ``y`` branch's activation (tanh-approximate GeLU).
      param_dtype: dtype of the params and the state.

    Returns:
      A :class:`~seqjax.Cell` from ``D`` to ``D`` features with params
      :class:`RecurrentBlockParams` and state :class:`RecurrentBlockState`.

    References:
      De et al., "Griffin: mixing gated linear recurrences with local attention for
      efficient language models", arXiv:2402.19427, 2024, section 2.4 and figure 2;
      Botev et al., "RecurrentGemma: moving past Transformers for efficient open
      language models", arXiv:2404.07839, 2024.
    """
    D = _checks.positive_int(d_model, "d_model")
    L = D if lru_width is None else _checks.positive_int(lru_width, "lru_width")
    heads = _default_heads(L) if num_heads is None else _checks.positive_int(num_heads,
                                                                             "num_heads")
    conv = short_conv(L, kernel_size=conv_width, bias=True, param_dtype=param_dtype)
    lru = rg_lru(L, num_heads=heads, c=c, param_dtype=param_dtype)

    def init(key, input_size):
        size = _checks.positive_int(input_size, "input_size")
        if size != D:
            raise ValueError(f"recurrent_block: input_size ({size}) must equal d_model ({D})")
        k_y, k_x, k_c, k_l, k_o = jax.random.split(key, 5)
        lin = functools.partial(linear_init_params, bias=True, dtype=param_dtype,
                                init=_fan_in_normal)
        # RecurrentGemma's Conv1D: normal, variance 0.01 / conv_width
        w = jax.nn.initializers.variance_scaling(0.01, "fan_in", "normal")(
            k_c, (conv_width, L), jnp.float32).astype(param_dtype)
        return RecurrentBlockParams(lin(k_y, D, L), lin(k_x, D, L),
                                    ConvParams(w, jnp.zeros((L,), param_dtype)),
                                    lru.init(k_l, L), lin(k_o, L, D))

    def initial_state(params):
        return RecurrentBlockState(conv.initial_state(params.conv),
                                   lru.initial_state(params.rg_lru), jnp.zeros((), jnp.int32))

    def lru_step(params, h, x, position):
        """One RG-LRU step of one example; at position 0 the document-start step."""
        _, continued = lru.apply(params, h, x)
        started = x * jax.nn.sigmoid(_block_diagonal(x, params.w_x, params.b_x))
        return jnp.where(position == 0, started, continued)

    def apply(params, state, u):
        _checks.step_input(u, D, "recurrent_block")
        u = u.astype(dtype_of(params))
        y = activation(linear(params.linear_y, u))
        history, x = conv.apply(params.conv, state.conv, linear(params.linear_x, u))
        h = lru_step(params.rg_lru, state.h, x, state.position)
        out = linear(params.linear_out, h * y)
        return RecurrentBlockState(history, h, state.position + 1), out

    def parallel(params, us, state, valid, options):
        T, B = us.shape[:2]
        lengths = None if valid is None else jnp.sum(valid, axis=0, dtype=jnp.int32)
        if state is None:
            h0 = jnp.zeros((B, L), params.rg_lru.lam.dtype)
            position = jnp.zeros((B,), jnp.int32)
        else:
            h0, position = state.h, state.position
        ys = activation(linear(params.linear_y, us))
        history, xs = run(conv, params.conv, linear(params.linear_x, us),
                          None if state is None else state.conv, lengths=lengths, keys=None,
                          options=options)
        first = jax.vmap(lru_step, in_axes=(None, 0, 0, 0))(params.rg_lru, h0, xs[0], position)
        if T > 1:
            rest = None if lengths is None else jnp.maximum(lengths - 1, 0)
            h, hs = run(lru, params.rg_lru, xs[1:], first, lengths=rest, keys=None,
                        options=options)
            hs = jnp.concatenate([first[None], hs], axis=0)
        else:
            h, hs = first, first[None]
        if lengths is None:
            position = position + T
        else:
            h = jnp.where((lengths > 0)[:, None], h, h0)
            position = position + lengths
        out = linear(params.linear_out, hs * ys)
        return RecurrentBlockState(history, h, position.astype(jnp.int32)), out

    return Cell(init, initial_state, apply, lambda p: p.linear_x.w.shape[0], D,
                parallel=parallel)


def _gemma_norm(eps, param_dtype):
    return functools.partial(rms_norm, eps=eps, offset=1.0, param_dtype=param_dtype)


@constructor
def griffin_block(
    d_model: int,
    *,
    lru_width: Optional[int] = None,
    num_heads: Optional[int] = None,
    conv_width: int = 4,
    c: float = 8.0,
    mlp_hidden: Optional[int] = None,
    activation: Callable = gelu_tanh,
    norm_eps: float = 1e-6,
    param_dtype=jnp.float32,
) -> Cell:
    """Griffin's residual block with the recurrent block (RG-LRU) as its mixer.

    .. math::
        h = x + \\mathrm{Recurrent}(\\mathrm{RMSNorm}(x)), \\qquad
        y = h + W_d\\big(\\mathrm{gelu}(u W_g + b_g) \\odot (u W_u + b_u)\\big) + b_d,
        \\; u = \\mathrm{RMSNorm}(h)

    with Gemma's RMSNorm ``(1 + w) x / sqrt(mean(x^2) + eps)`` (``w`` stored centred
    at 0) and the recurrent block of :func:`recurrent_block`: two branches, ``gelu(u
    W_y)`` and ``u W_x`` -> causal Conv1D -> RG-LRU, multiplied and projected back.
    Position 0 of a fresh state starts a document (the RG-LRU drops ``h_{t-1}`` and
    its ``sqrt(1 - a^2)`` factor there), as in RecurrentGemma.

    Args:
      d_model: ``D``.
      lru_width: ``L``, the recurrence's width; ``None``: ``D`` (RecurrentGemma).
      num_heads: diagonal blocks of the RG-LRU's gates; ``None``: one per 256
        channels (RecurrentGemma), or one.
      conv_width: taps of the temporal convolution.
      c: the RG-LRU's constant ``c`` (8).
      mlp_hidden: the MLP's width; ``None``: ``3 D`` (the paper's expansion).
      activation: the MLP gate's and the ``y`` branch's activation (tanh GeLU).
      norm_eps: the RMSNorms' epsilon.
      param_dtype: dtype of the params.

    Returns:
      A :func:`seqjax.blocks.residual` cell whose state is
      :class:`RecurrentBlockState`.

    References:
      De et al., "Griffin: mixing gated linear recurrences with local attention for
      efficient language models", arXiv:2402.19427, 2024, figure 2; Botev et al.,
      "RecurrentGemma", arXiv:2404.07839, 2024.
    """
    D = _checks.positive_int(d_model, "d_model")
    hidden = 3 * D if mlp_hidden is None else mlp_hidden
    mixer = recurrent_block(D, lru_width=lru_width, num_heads=num_heads, conv_width=conv_width,
                            c=c, activation=activation, param_dtype=param_dtype)
    return residual(mixer, mlp=gated_mlp(D, hidden, activation=activation, bias=True,
                                         param_dtype=param_dtype),
                    norm=_gemma_norm(norm_eps, param_dtype))


@constructor
def local_attention_block(
    d_model: int,
    *,
    num_heads: Optional[int] = None,
    num_kv_heads: Optional[int] = 1,
    head_dim: Optional[int] = None,
    window: Optional[int] = 2048,
    max_length: int = 2048,
    rotary_fraction: float = 0.5,
    rope_theta: float = 10000.0,
    qkv_bias: bool = False,
    mlp_hidden: Optional[int] = None,
    activation: Callable = gelu_tanh,
    norm_eps: float = 1e-6,
    param_dtype=jnp.float32,
) -> Cell:
    """Griffin's residual block with local multi-query attention as its mixer.

    .. math::
        h = x + \\mathrm{LocalMQA}(\\mathrm{RMSNorm}(x)), \\qquad
        y = h + \\mathrm{GeGLU}(\\mathrm{RMSNorm}(h))

    The attention (:func:`seqjax.layers.attention`) has one key/value head, rotary
    embeddings on the first half of each head (rotate-half layout), a bias on the
    output projection only, and a sliding window: the query at position ``p``
    attends to ``p - w + 1, ..., p`` (``w = window`` keys, itself included, the
    convention of transformers' ``attention_window_size``; Google's
    ``recurrentgemma`` attends to ``w + 1``, so its ``attention_window_size = w - 1``
    is this ``window = w``). Norms and MLP are :func:`griffin_block`'s. The KV cache
    keeps ``window`` slots.

    Args:
      d_model: ``D``.
      num_heads: query heads; ``None``: one per 256 channels (RecurrentGemma), or one.
      num_kv_heads: key/value heads (1: multi-query, the paper's); ``None``:
        ``num_heads``.
      head_dim: channels per head; ``None``: ``D / num_heads``.
      window: keys per query, itself included; ``None``: global attention.
      max_length: KV-cache slots when ``window`` is ``None`` (ignored otherwise).
      rotary_fraction: rotary channels per head are ``int(head_dim *
        rotary_fraction)`` (an even number; 0: no position encoding).
      rope_theta: the rotary base.
      qkv_bias: biases on the query, key and value projections.
      mlp_hidden: the MLP's width; ``None``: ``3 D``.
      activation: the MLP gate's activation.
      norm_eps: the RMSNorms' epsilon.
      param_dtype: dtype of the params and the cache.

    Returns:
      A :func:`seqjax.blocks.residual` cell whose state is the attention's
      :class:`~seqjax.layers.KVCache`.

    References:
      De et al., "Griffin", arXiv:2402.19427, 2024, section 2.5; Botev et al.,
      "RecurrentGemma", arXiv:2404.07839, 2024; Shazeer 2019 (multi-query attention).
    """
    D = _checks.positive_int(d_model, "d_model")
    heads = _default_heads(D) if num_heads is None else _checks.positive_int(num_heads,
                                                                             "num_heads")
    hd = D // heads if head_dim is None else _checks.positive_int(head_dim, "head_dim")
    rotated = int(hd * rotary_fraction)
    rope = rotary(rotated, theta=rope_theta) if rotated > 0 else None
    hidden = 3 * D if mlp_hidden is None else mlp_hidden
    mixer = attention(D, heads, num_kv_heads=num_kv_heads, head_dim=head_dim, window=window,
                      max_length=max_length, rope=rope, qkv_bias=qkv_bias, out_bias=True,
                      param_dtype=param_dtype)
    return residual(mixer, mlp=gated_mlp(D, hidden, activation=activation, bias=True,
                                         param_dtype=param_dtype),
                    norm=_gemma_norm(norm_eps, param_dtype))


__all__ = ["RecurrentBlockParams", "RecurrentBlockState", "griffin_block",
           "local_attention_block", "recurrent_block"]
