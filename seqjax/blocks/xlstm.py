"""xLSTM's blocks: the mLSTM block of xLSTM 7B and the sLSTM block of the xLSTM paper.

:func:`mlstm_block` is the block of xLSTM 7B (Beck et al. 2025), the architecture of
transformers' ``xlstm`` model type and of the published checkpoint: a pre-norm residual
mLSTM layer (:func:`mlstm_layer`) and a pre-norm residual SwiGLU MLP.
:func:`slstm_block` is the sLSTM block of Beck et al. 2024 (post up-projection): a
pre-norm residual sLSTM layer (:func:`slstm_layer`: causal convolution, head-wise gate
projections, the :func:`seqjax.slstm` recurrence, group norm) and a pre-norm residual
gated GeLU MLP.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax import chunkwise as _chunkwise
from seqjax.blocks.residual import residual
from seqjax.cells._constructor import constructor
from seqjax.cells.contract import Array, Cell, Hoist
from seqjax.cells.xlstm import MLSTMState, SLSTMState, powerlaw_forget_bias, slstm
from seqjax.layers._common import LinearParams, dtype_of, linear, pointwise_cell
from seqjax.layers.conv import ConvParams, short_conv
from seqjax.layers.mlp import gated_mlp
from seqjax.layers.norms import NormParams, layer_norm, layer_normalise, rms_norm, rms_normalise
from seqjax.unroll import run


def _lengths(valid):
    return None if valid is None else jnp.sum(valid, axis=0, dtype=jnp.int32)


def round_up(x: float, multiple: int) -> int:
    """``x`` rounded up to a multiple of ``multiple`` (xLSTM's
    ``round_up_to_next_multiple_of``, on the float: ``64 * 2.667 -> 192``)."""
    return int(((x + multiple - 1) // multiple) * multiple)


def soft_cap(x, cap: Optional[float]):
    """``cap * tanh(x / cap)``; the identity for ``cap=None``."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def gelu(x):
    """The exact (erf) GeLU, PyTorch's ``gelu`` default and xlstm's ``"gelu"``."""
    return jax.nn.gelu(x, approximate=False)


def _normal(std: float):
    def init(key, shape, dtype):
        return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

    return init


def _rms_norm(size: int, *, eps: float, bias: bool, param_dtype) -> Cell:
    """RMSNorm, with an additive bias when ``bias`` (xLSTM 7B's ``use_bias``:
    ``x / rms(x) * w + b``; :func:`seqjax.layers.rms_norm` has no bias)."""
    if not bias:
        return rms_norm(size, eps=eps, param_dtype=param_dtype)

    def init(key, input_size):
        if _checks.positive_int(input_size, "input_size") != size:
            raise ValueError(f"rms_norm: input_size ({input_size}) must equal size ({size})")
        return NormParams(jnp.ones((size,), param_dtype), jnp.zeros((size,), param_dtype))

    def fn(params, x):
        y = rms_normalise(x, params.scale, eps=eps)
        return y + jnp.broadcast_to(params.bias, y.shape).astype(y.dtype)

    return pointwise_cell(init, fn, lambda p: p.scale.shape[0], size)


# ----------------------------------------------------------------------------- mLSTM


class MLSTMLayerParams(NamedTuple):
    """The mLSTM layer of xLSTM 7B (:class:`~seqjax.layers.LinearParams` ``w [in,
    out]``), with the checkpoint's names in brackets.

    ``q, k [D -> heads * d_qk]``, ``v [D -> heads * d_v]`` (``q, k, v``);
    ``igate, fgate [D -> heads]``, always with a bias (``igate_preact``,
    ``fgate_preact``); ``ogate [D -> heads * d_v]`` (``ogate_preact``); ``norm``, the
    head-wise LayerNorm's ``scale [heads * d_v]`` (head-major) and bias
    (``multihead_norm``); ``out_proj [heads * d_v -> D]`` (``out_proj``). The biases of
    ``q, k, v, ogate, norm, out_proj`` are ``None`` unless ``bias``.
    """

    q: LinearParams
    k: LinearParams
    v: LinearParams
    igate: LinearParams
    fgate: LinearParams
    ogate: LinearParams
    norm: NormParams
    out_proj: LinearParams


@constructor
def mlstm_layer(
    d_model: int,
    *,
    num_heads: int = 8,
    qk_dim_factor: float = 0.5,
    v_dim_factor: float = 1.0,
    gate_soft_cap: Optional[float] = 15.0,
    eps: float = 1e-6,
    norm_eps: float = 1e-6,
    bias: bool = False,
    num_blocks: int = 1,
    param_dtype=jnp.float32,
) -> Cell:
    """The mLSTM layer of xLSTM 7B: matrix memory, capped exponential gates, head-wise
    LayerNorm, output gate.

    Per head, from the (normed) block input ``x_t``:

    .. math::
        q_t &= W_q x_t / \\sqrt{d_{qk}}, \\quad k_t = W_k x_t, \\quad v_t = W_v x_t \\\\
        \\tilde i_t &= c \\tanh((w_i^T x_t + b_i) / c), \\quad
        \\tilde f_t = c \\tanh((w_f^T x_t + b_f) / c) \\\\
        m_t &= \\max(\\log\\sigma(\\tilde f_t) + m_{t-1}, \\tilde i_t), \\quad m_0 = 0 \\\\
        C_t &= e^{\\log\\sigma(\\tilde f_t) + m_{t-1} - m_t} C_{t-1}
               + e^{\\tilde i_t - m_t} k_t v_t^T \\quad (n_t \\text{ likewise with } k_t) \\\\
        \\tilde h_t &= C_t^T q_t / (\\max(|n_t^T q_t|, e^{-m_t}) + \\epsilon) \\\\
        y_t &= W_{out} \\big(\\sigma(W_o x_t) \\odot \\mathrm{LN}_{head}(\\tilde h_t)\\big)

    with the gate soft cap ``c`` (15), an exponential input gate and a log-sigmoid
    forget gate, the stabiliser starting at ``m_0 = 0`` (not ``-inf``), ``eps`` added
    after the maximum, and a LayerNorm per head (mean-centred, biased variance, no bias
    unless ``bias``, statistics in float32) whose scale is one flat ``[heads * d_v]``
    vector. The output gate is per channel.

    The core is :func:`seqjax.chunkwise.gated_outer_product` (``normalised=True``):
    ``apply`` is one step, :func:`seqjax.unroll` runs the exact chunkwise-parallel form
    (the same ``m_t``, so the same numbers).

    Initialisation (transformers' ``xLSTMPreTrainedModel._init_weights``): ``W_q, W_k,
    W_v, W_o`` normal with variance ``2 / (5 D)``; ``w_i, w_f`` zero; ``b_i = -10``;
    ``b_f`` linearly spaced from 3 to 6 over the heads; ``W_out`` normal with standard
    deviation ``2 / (num_blocks sqrt(D))``; other biases 0, norm scale 1.
    (transformers also zeroes ``W_o``, whose module name contains ``gate``; here it
    starts like ``W_q``.)

    Args:
      d_model: ``D``, the width of ``x`` and ``y``.
      num_heads: heads (8 in xLSTM 7B).
      qk_dim_factor: ``heads * d_qk = int(D * qk_dim_factor)``.
      v_dim_factor: ``heads * d_v = int(D * v_dim_factor)``.
      gate_soft_cap: ``c``, or ``None`` for no cap.
      eps: ``epsilon`` of the read-out's denominator (the config's ``eps``).
      norm_eps: the head-wise LayerNorm's epsilon (the config's ``norm_eps``).
      bias: biases on ``q, k, v, ogate, out_proj`` and the norm (``use_bias``).
      num_blocks: the depth of the stack, for the initialisation of ``W_out``.
      param_dtype: dtype of the params and the state.

    Returns:
      A :class:`~seqjax.Cell` from ``D`` to ``D`` features with params
      :class:`MLSTMLayerParams` and state :class:`~seqjax.cells.xlstm.MLSTMState`
      (``C [heads, d_qk, d_v]``, ``n [heads, d_qk]``, ``m [heads]``); ``cell.chunkwise``
      is set.

    References:
      Beck et al., "xLSTM 7B: a recurrent LLM for fast and efficient inference",
      arXiv:2503.13427, 2025; Beck et al., "xLSTM: Extended long short-term memory",
      NeurIPS 2024, arXiv:2405.04517, section 2.3.
    """
    D = _checks.positive_int(d_model, "d_model")
    heads = _checks.positive_int(num_heads, "num_heads")
    qk_dim, v_dim = int(D * qk_dim_factor), int(D * v_dim_factor)
    for name, size in (("qk_dim_factor", qk_dim), ("v_dim_factor", v_dim)):
        if size < heads or size % heads:
            raise ValueError(f"mlstm_layer: int(d_model * {name}) = {size} must be a positive "
                             f"multiple of num_heads ({heads})")
    d_qk, d_v = qk_dim // heads, v_dim // heads
    blocks = _checks.positive_int(num_blocks, "num_blocks")
    recurrence = _chunkwise.gated_outer_product(normalised=True, eps=eps)

    def init(key, input_size):
        if _checks.positive_int(input_size, "input_size") != D:
            raise ValueError(f"mlstm_layer: input_size ({input_size}) must equal d_model ({D})")
        kq, kk, kv, ko, kout = jax.random.split(key, 5)
        small, wang = _normal(math.sqrt(2 / (5 * D))), _normal(2 / (blocks * math.sqrt(D)))

        def zeros(*shape):
            return jnp.zeros(shape, param_dtype)

        def dense(init_fn, k, size_in, size_out):
            return LinearParams(init_fn(k, (size_in, size_out), param_dtype),
                                zeros(size_out) if bias else None)

        return MLSTMLayerParams(
            dense(small, kq, D, qk_dim), dense(small, kk, D, qk_dim), dense(small, kv, D, v_dim),
            LinearParams(zeros(D, heads), jnp.full((heads,), -10.0, param_dtype)),
            LinearParams(zeros(D, heads),
                         jnp.linspace(3.0, 6.0, heads, dtype=jnp.float32).astype(param_dtype)),
            dense(small, ko, D, v_dim),
            NormParams(jnp.ones((v_dim,), param_dtype), zeros(v_dim) if bias else None),
            dense(wang, kout, v_dim, D))

    def initial_state(params):
        dtype = params.q.w.dtype
        return MLSTMState(jnp.zeros((heads, d_qk, d_v), dtype), jnp.zeros((heads, d_qk), dtype),
                          jnp.zeros((heads,), dtype))

    def features(params, xs):
        lead = xs.shape[:-1]
        q = linear(params.q, xs).reshape(lead + (heads, d_qk)) * (d_qk ** -0.5)
        k = linear(params.k, xs).reshape(lead + (heads, d_qk))
        v = linear(params.v, xs).reshape(lead + (heads, d_v))
        log_i = soft_cap(linear(params.igate, xs), gate_soft_cap)
        log_f = jax.nn.log_sigmoid(soft_cap(linear(params.fgate, xs), gate_soft_cap))
        return _chunkwise.GatedFeatures(q, k, v, log_f, log_i)

    def readout(params, h, xs):
        scale = params.norm.scale.reshape(heads, d_v)
        shift = None if params.norm.bias is None else params.norm.bias.reshape(heads, d_v)
        normed = layer_normalise(h, scale, shift, eps=norm_eps).reshape(xs.shape[:-1] + (v_dim,))
        return linear(params.out_proj, jax.nn.sigmoid(linear(params.ogate, xs)) * normed)

    return _chunkwise.chunkwise_cell(init, initial_state, lambda p: p.q.w.shape[0], D,
                                     "mlstm_layer", features, recurrence, readout)


@constructor
def mlstm_block(
    d_model: int,
    *,
    num_heads: int = 8,
    qk_dim_factor: float = 0.5,
    v_dim_factor: float = 1.0,
    gate_soft_cap: Optional[float] = 15.0,
    eps: float = 1e-6,
    norm_eps: float = 1e-6,
    ffn_proj_factor: float = 2.667,
    ffn_round_up_to_multiple_of: int = 64,
    bias: bool = False,
    num_blocks: int = 1,
    param_dtype=jnp.float32,
) -> Cell:
    """The block of xLSTM 7B: pre-norm mLSTM layer and pre-norm SwiGLU MLP.

    .. math::
        h = x + \\mathrm{mLSTM}(\\mathrm{RMSNorm}(x)), \\qquad
        y = h + W_{down}\\big(\\mathrm{silu}(W_{gate} u) \\odot W_{up} u\\big), \\;
        u = \\mathrm{RMSNorm}(h)

    the block of transformers' ``xLSTMForCausalLM`` (``mLSTMBlock`` of the ``xlstm``
    package's ``xlstm_large``). The mLSTM layer is :func:`mlstm_layer`; the MLP's width
    is ``round_up(D * ffn_proj_factor, ffn_round_up_to_multiple_of)`` (on the float:
    10944 for ``D = 4096``); both RMSNorms use ``norm_eps`` (statistics in float32)
    and have a bias when ``bias``. The MLP starts from
    :func:`seqjax.layers.gated_mlp`'s initialisation (transformers' init zeroes its
    SiLU branch, ``proj_up_gate``, so that a fresh model's MLP outputs 0).

    Args:
      d_model: ``D`` (4096 in xLSTM 7B).
      num_heads, qk_dim_factor, v_dim_factor, gate_soft_cap, eps, norm_eps, bias,
        num_blocks: as in :func:`mlstm_layer` (xLSTM 7B: 8 heads, 0.5, 1.0, 15, 1e-6,
        1e-6, no biases, 32 blocks).
      ffn_proj_factor: the MLP's width over ``D`` before rounding (2.667).
      ffn_round_up_to_multiple_of: the MLP's width is a multiple of this (64).
      param_dtype: dtype of the params.

    Returns:
      A :func:`seqjax.blocks.residual` cell whose state is the mLSTM's
      (:class:`~seqjax.cells.xlstm.MLSTMState`).

    References:
      Beck et al., "xLSTM 7B: a recurrent LLM for fast and efficient inference",
      arXiv:2503.13427, 2025 (section 3, figure 2).
    """
    D = _checks.positive_int(d_model, "d_model")
    mixer = mlstm_layer(D, num_heads=num_heads, qk_dim_factor=qk_dim_factor,
                        v_dim_factor=v_dim_factor, gate_soft_cap=gate_soft_cap, eps=eps,
                        norm_eps=norm_eps, bias=bias, num_blocks=num_blocks,
                        param_dtype=param_dtype)
    hidden = round_up(D * ffn_proj_factor,
                      _checks.positive_int(ffn_round_up_to_multiple_of,
                                           "ffn_round_up_to_multiple_of"))
    mlp = gated_mlp(D, hidden, activation=jax.nn.silu, bias=bias, param_dtype=param_dtype)
    return residual(mixer, mlp=mlp, norm=functools.partial(_rms_norm, eps=norm_eps, bias=bias,
                                                           param_dtype=param_dtype))


# ----------------------------------------------------------------------------- sLSTM


class SLSTMGateParams(NamedTuple):
    """The sLSTM of the sLSTM block: head-wise input kernels and the
    :func:`seqjax.slstm` cell's recurrent kernel and bias.

    ``w_i, w_f, w_z, w_o [heads, d, d]``: head ``k`` maps its ``d`` input channels to
    its ``d`` units of a gate (``[in, out]``; xlstm's ``LinearHeadwiseExpand.weight
    [heads, out, in]`` transposed): ``w_i, w_f`` read the convolution's output,
    ``w_z, w_o`` the block's normed input. ``r [heads, d, 4, d]`` and ``b [4 D]``: as
    in :class:`~seqjax.cells.xlstm.SLSTMParams` (gates ``i, f, z, o``, head-major).

    From xlstm's ``sLSTMLayer``: its ``forward`` takes the input gate from the module
    named ``fgate`` and the forget gate from ``igate``, so ``w_i`` is
    ``fgate.weight`` and ``w_f`` is ``igate.weight`` (transposed per head); ``r`` is
    the cell's ``recurrent_kernel`` and ``b`` its ``_bias_``.
    """

    w_i: Array
    w_f: Array
    w_z: Array
    w_o: Array
    r: Array
    b: Array


class SLSTMLayerParams(NamedTuple):
    """``conv``: the causal convolution (``None`` without one); ``cell``:
    :class:`SLSTMGateParams`; ``norm``: the group norm's scale ``[D]`` (stored as
    xlstm stores it, the norm multiplies by ``1 + scale``)."""

    conv: Optional[ConvParams]
    cell: SLSTMGateParams
    norm: NormParams


class SLSTMLayerState(NamedTuple):
    """``conv``: the last ``k - 1`` inputs of the convolution (``None`` without one);
    ``cell``: the sLSTM's :class:`~seqjax.cells.xlstm.SLSTMState`."""

    conv: Optional[Array]
    cell: SLSTMState


def _headwise(x, w):
    """``x [..., heads * d]`` through the block-diagonal ``w [heads, d, d]``."""
    heads, d, _ = w.shape
    y = jnp.einsum("...ka,kab->...kb", x.reshape(x.shape[:-1] + (heads, d)), w)
    return y.reshape(x.shape)


def _slstm_recurrence(D: int, heads: int, param_dtype) -> Cell:
    """The sLSTM recurrence over ``[conv(x), x]`` (``2 D`` inputs): the head-wise gate
    pre-activations, then :func:`seqjax.slstm`'s step and its :class:`~seqjax.Recurrent`
    form (which read only the params' ``r``), so :func:`seqjax.unroll` gives it the
    hoisted input map and the fused backward pass as the cell itself."""
    cell = slstm(D, num_heads=heads, param_dtype=param_dtype)
    d = D // heads

    def init(key, input_size):
        k_i, k_f, k_z, k_o = jax.random.split(key, 4)
        small = _normal(math.sqrt(2 / (5 * D)))
        w = [small(k, (heads, d, d), param_dtype) for k in (k_i, k_f, k_z, k_o)]
        b = jnp.zeros((4 * D,), param_dtype)
        b = b.at[D:2 * D].set(powerlaw_forget_bias(None, (heads, d), param_dtype).reshape(D))
        return SLSTMGateParams(*w, jnp.zeros((heads, d, 4, d), param_dtype), b)

    def input_map(params, x):
        conv, inp = x[..., :D], x[..., D:]
        u = jnp.concatenate([_headwise(conv, params.w_i), _headwise(conv, params.w_f),
                             _headwise(inp, params.w_z), _headwise(inp, params.w_o)], axis=-1)
        return u + jnp.broadcast_to(params.b, u.shape)

    def apply(params, state, x):
        return cell.hoist.step(params, state, input_map(params, x))

    def initial_state(params):
        z = jnp.zeros((D,), params.b.dtype)
        return SLSTMState(z, z, z, z)

    return Cell(init, initial_state, apply, lambda p: 2 * p.b.shape[0] // 4, D,
                hoist=Hoist(input_map, cell.hoist.step, cell.hoist.recurrent))


@constructor
def slstm_layer(
    d_model: int,
    *,
    num_heads: int = 4,
    conv_kernel_size: int = 4,
    norm_eps: float = 1e-5,
    param_dtype=jnp.float32,
) -> Cell:
    """The sLSTM layer of the sLSTM block: causal convolution, head-wise gate
    projections, the sLSTM recurrence and a group norm.

    .. math::
        c_t &= \\mathrm{swish}(\\mathrm{conv}_4(x)_t) \\\\
        \\tilde i_t, \\tilde f_t &= W_i c_t, W_f c_t, \\qquad
        \\tilde z_t, \\tilde o_t = W_z x_t, W_o x_t \\quad
        (\\text{block-diagonal over heads}) \\\\
        h_t &= \\mathrm{sLSTM}\\big([\\tilde i_t; \\tilde f_t; \\tilde z_t; \\tilde o_t]
               + R h_{t-1} + b\\big), \\qquad y_t = \\mathrm{GroupNorm}_{heads}(h_t)

    as the ``xlstm`` package's ``sLSTMLayer`` (Beck et al. 2024, figure 10): the
    convolution's output feeds only the input and forget gates; the cell and
    hidden-state recurrence are :func:`seqjax.slstm`'s (exponential input gate,
    log-sigmoid forget gate, normaliser, stabiliser, block-diagonal ``R``), and the
    group norm is a LayerNorm per head with scale ``1 + w`` and no bias.

    :func:`seqjax.slstm` computes its four gates from one input through one dense
    ``W``, so it cannot take ``i, f`` from the convolution and ``z, o`` from the input
    through head-wise projections as the paper does. This layer therefore computes the
    pre-activations itself (:class:`SLSTMGateParams`) and runs the cell's own step and
    :class:`~seqjax.Recurrent` form on them (they read only the recurrent kernel ``r``):
    the paper's layer exactly, with the cell's recurrence.

    Initialisation (xlstm's): the head-wise kernels normal with variance ``2 / (5 D)``,
    ``R = 0``, the forget bias :func:`~seqjax.cells.xlstm.powerlaw_forget_bias` (the
    first block's), other biases 0, the convolution as PyTorch's ``Conv1d``.

    Args:
      d_model: ``D``; divisible by ``num_heads``.
      num_heads: heads of the projections, of ``R`` and of the group norm (4).
      conv_kernel_size: taps of the causal convolution (4); 0: no convolution (the
        gates read the input).
      norm_eps: the group norm's epsilon (1e-5).
      param_dtype: dtype of the params and the state.

    Returns:
      A :class:`~seqjax.Cell` from ``D`` to ``D`` features with params
      :class:`SLSTMLayerParams` and state :class:`SLSTMLayerState`.

    References:
      Beck et al., "xLSTM: Extended long short-term memory", NeurIPS 2024,
      arXiv:2405.04517, section 2.2 and appendix (figure 10, the sLSTM block).
    """
    D = _checks.positive_int(d_model, "d_model")
    heads = _checks.positive_int(num_heads, "num_heads")
    if D % heads:
        raise ValueError(f"slstm_layer: num_heads ({heads}) must divide d_model ({D})")
    if not (isinstance(conv_kernel_size, int) and conv_kernel_size >= 0):
        raise ValueError(f"slstm_layer: conv_kernel_size must be an int >= 0, got "
                         f"{conv_kernel_size!r}")
    d = D // heads
    conv = (short_conv(D, kernel_size=conv_kernel_size, activation=jax.nn.silu,
                       param_dtype=param_dtype) if conv_kernel_size else None)
    recurrence = _slstm_recurrence(D, heads, param_dtype)

    def init(key, input_size):
        if _checks.positive_int(input_size, "input_size") != D:
            raise ValueError(f"slstm_layer: input_size ({input_size}) must equal d_model ({D})")
        k_conv, k_cell = jax.random.split(key)
        return SLSTMLayerParams(None if conv is None else conv.init(k_conv, D),
                                recurrence.init(k_cell, 2 * D),
                                NormParams(jnp.zeros((D,), param_dtype), None))

    def initial_state(params):
        return SLSTMLayerState(None if conv is None else conv.initial_state(params.conv),
                               recurrence.initial_state(params.cell))

    def group_norm(params, h):
        scale = params.norm.scale.reshape(heads, d)
        y = layer_normalise(h.reshape(h.shape[:-1] + (heads, d)), scale, None, eps=norm_eps,
                            offset=1.0)
        return y.reshape(h.shape)

    def apply(params, state, x):
        _checks.step_input(x, D, "slstm_layer")
        x = x.astype(dtype_of(params))
        conv_state, c = (None, x) if conv is None else conv.apply(params.conv, state.conv, x)
        cell_state, h = recurrence.apply(params.cell, state.cell, jnp.concatenate([c, x]))
        return SLSTMLayerState(conv_state, cell_state), group_norm(params, h)

    def parallel(params, xs, state, valid, options):
        lengths = _lengths(valid)
        if conv is None:
            conv_state, cs = None, xs
        else:
            conv_state, cs = run(conv, params.conv, xs, None if state is None else state.conv,
                                 lengths=lengths, keys=None, options=options)
        cell_state, hs = run(recurrence, params.cell, jnp.concatenate([cs, xs], axis=-1),
                             None if state is None else state.cell, lengths=lengths,
                             keys=None, options=options)
        return SLSTMLayerState(conv_state, cell_state), group_norm(params, hs)

    return Cell(init, initial_state, apply, lambda p: p.norm.scale.shape[0], D,
                parallel=parallel)


@constructor
def slstm_block(
    d_model: int,
    *,
    num_heads: int = 4,
    conv_kernel_size: int = 4,
    mlp_proj_factor: float = 4 / 3,
    mlp_round_up_to_multiple_of: int = 64,
    activation: Callable = gelu,
    norm_eps: float = 1e-5,
    param_dtype=jnp.float32,
) -> Cell:
    """The sLSTM block of xLSTM (post up-projection): pre-norm sLSTM layer and
    pre-norm gated MLP.

    .. math::
        h = x + \\mathrm{sLSTM}(\\mathrm{LN}(x)), \\qquad
        y = h + W_{down}\\big(\\mathrm{gelu}(W_{gate} u) \\odot W_{up} u\\big), \\;
        u = \\mathrm{LN}(h)

    Figure 10 of Beck et al. 2024 and the ``xlstm`` package's ``sLSTMBlock``: the
    sLSTM layer (:func:`slstm_layer`: causal convolution with swish feeding the input
    and forget gates, 4 heads, group norm) and a gated MLP of width
    ``ceil(D * 4/3 / 64) * 64``. The LayerNorms have no bias and a scale ``1 + w``
    (``w`` stored at 0, as xlstm), epsilon 1e-5.

    Args:
      d_model: ``D``; divisible by ``num_heads``.
      num_heads, conv_kernel_size: as in :func:`slstm_layer` (4, 4).
      mlp_proj_factor: the MLP's width over ``D`` before rounding up (4/3).
      mlp_round_up_to_multiple_of: the MLP's width is a multiple of this (64).
      activation: the MLP's gate activation (the exact GeLU, xlstm's ``"gelu"``).
      norm_eps: the epsilon of the LayerNorms and the group norm.
      param_dtype: dtype of the params.

    Returns:
      A :func:`seqjax.blocks.residual` cell whose state is the sLSTM layer's
      (:class:`SLSTMLayerState`).

    References:
      Beck et al., "xLSTM: Extended long short-term memory", NeurIPS 2024,
      arXiv:2405.04517 (section 2.4 and figure 10).
    """
    D = _checks.positive_int(d_model, "d_model")
    mixer = slstm_layer(D, num_heads=num_heads, conv_kernel_size=conv_kernel_size,
                        norm_eps=norm_eps, param_dtype=param_dtype)
    multiple = _checks.positive_int(mlp_round_up_to_multiple_of, "mlp_round_up_to_multiple_of")
    hidden = math.ceil(D * mlp_proj_factor / multiple) * multiple
    mlp = gated_mlp(D, hidden, activation=activation, param_dtype=param_dtype)
    return residual(mixer, mlp=mlp, norm=functools.partial(layer_norm, eps=norm_eps, bias=False,
                                                           offset=1.0, param_dtype=param_dtype))


__all__ = [
    "MLSTMLayerParams",
    "SLSTMGateParams",
    "SLSTMLayerParams",
    "SLSTMLayerState",
    "mlstm_block",
    "mlstm_layer",
    "round_up",
    "slstm_block",
    "slstm_layer",
    "soft_cap",
]
