"""The delta-rule blocks: DeltaNet (Yang et al. 2024) and Gated DeltaNet (Yang et al.
2025), as flash-linear-attention and Qwen3-Next build them.

A layer is projections, short causal convolutions, the (gated) delta rule over a matrix
memory per value head, a per-head output norm and an output projection::

    x -> [W_q x | W_k x | W_v x] -> conv (k = 4), silu -> q, k, v --+
                                                                     delta rule -> o
    x -> beta = sigmoid(W_b x), alpha = exp(-e^A_log softplus(...)) -+
    y = W_o [RMSNorm(o) * silu(W_g x)]  (per value head)

The convolution is a :func:`seqjax.layers.short_conv` cell over the ``[q | k | v]``
channels; the rest up to the output projection is a cell of
:func:`seqjax.chunkwise.chunkwise_cell` over the machinery of
:func:`seqjax.chunkwise.delta_rule`, whose input is the convolution's output beside
``x``. :func:`seqjax.unroll` runs both in their whole-sequence forms (the convolution at
once, the delta rule chunkwise); ``apply`` steps them one token at a time. A block is
the layer in :func:`seqjax.blocks.residual` with a SwiGLU MLP.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from seqjax import _checks
from seqjax import chunkwise
from seqjax.blocks.residual import residual
from seqjax.cells._constructor import constructor
from seqjax.cells.contract import Array, Cell
from seqjax.layers._common import (LinearParams, dtype_of, linear, linear_init_params,
                                   work_dtype)
from seqjax.layers.conv import ConvParams, short_conv
from seqjax.layers.mlp import gated_mlp
from seqjax.layers.norms import NormParams, rms_norm, rms_normalise
from seqjax.unroll import run


class DeltaRuleParams(NamedTuple):
    """What the delta rule reads besides ``q, k, v``, for ``Hv`` value heads of ``d_v``
    channels (:class:`~seqjax.layers.LinearParams`, ``w [in, out]``, no biases).

    ``beta [D -> Hv]``: the writing strength ``sigmoid(x W_b)``. ``alpha [D -> Hv]``,
    ``a_log [Hv]``, ``dt_bias [Hv]``: the decay ``exp(-exp(a_log) softplus(x W_a +
    dt_bias))`` (Gated DeltaNet; ``None`` in DeltaNet). ``gate [D -> Hv d_v]``: the
    output gate ``silu(x W_g)``, or ``None``. ``norm``: the per-head output RMSNorm's
    scale ``[d_v]``, shared by the heads.
    """

    beta: LinearParams
    alpha: Optional[LinearParams]
    a_log: Optional[Array]
    dt_bias: Optional[Array]
    gate: Optional[LinearParams]
    norm: NormParams


class DeltaLayerParams(NamedTuple):
    """A delta-rule layer: ``q, k [D -> Hk d_k]``, ``v [D -> Hv d_v]`` (no biases);
    ``conv``, the depthwise convolution over the ``[q | k | v]`` channels
    (:class:`~seqjax.layers.ConvParams`, ``w [k, 2 Hk d_k + Hv d_v]``); ``rule``
    (:class:`DeltaRuleParams`); ``out [Hv d_v -> D]``."""

    q: LinearParams
    k: LinearParams
    v: LinearParams
    conv: ConvParams
    rule: DeltaRuleParams
    out: LinearParams


class DeltaLayerState(NamedTuple):
    """``conv [k - 1, 2 Hk d_k + Hv d_v]``: the last inputs of the convolution;
    ``S [Hv, d_k, d_v]``: the memory of each value head (stored ``k v^T``)."""

    conv: Array
    S: Array


def _l2_normalise(x, eps=1e-6):
    """``x / sqrt(sum x^2 + eps)`` over the last axis (flash-linear-attention's and
    Qwen3-Next's ``l2norm``, eps 1e-6)."""
    return x * lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + jnp.asarray(eps, x.dtype))


def _decay_init(key, heads, dtype):
    """``(a_log, dt_bias)`` as the Gated DeltaNet code and Mamba-2 draw them: ``A``
    uniform on ``[0, 16]``, ``dt`` log-uniform on ``[0.001, 0.1]`` floored at ``1e-4``,
    ``dt_bias = softplus^-1(dt)``."""
    k_a, k_dt = jax.random.split(key)
    A = jax.random.uniform(k_a, (heads,), jnp.float32, 0.0, 16.0)
    u = jax.random.uniform(k_dt, (heads,), jnp.float32)
    dt = jnp.maximum(jnp.exp(u * (math.log(0.1) - math.log(0.001)) + math.log(0.001)), 1e-4)
    return jnp.log(A).astype(dtype), (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)


def _delta_rule_cell(D, Hk, Hv, d_k, d_v, gated, use_gate, norm_eps, param_dtype) -> Cell:
    """The chunkwise core: input ``[c | x]`` (the convolution's output ``c`` over ``[q |
    k | v]``, then the layer's input ``x``), output the gated, normalised read-out
    ``[Hv d_v]``; params :class:`DeltaRuleParams`, state ``S [Hv, d_k, d_v]``."""
    key_dim, value_dim = Hk * d_k, Hv * d_v
    channels = 2 * key_dim + value_dim
    group = Hv // Hk

    def init(key, input_size):
        if input_size != channels + D:
            raise ValueError(f"delta rule: input_size ({input_size}) must be {channels + D}")
        k_b, k_a, k_d, k_g = jax.random.split(key, 4)
        lin = functools.partial(linear_init_params, bias=False, dtype=param_dtype)
        a_log, dt_bias = _decay_init(k_d, Hv, param_dtype) if gated else (None, None)
        return DeltaRuleParams(lin(k_b, D, Hv), lin(k_a, D, Hv) if gated else None, a_log,
                               dt_bias, lin(k_g, D, value_dim) if use_gate else None,
                               NormParams(jnp.ones((d_v,), param_dtype), None))

    def initial_state(params):
        return jnp.zeros((Hv, d_k, d_v), dtype_of(params))

    def heads(a, n, d):
        return a.reshape(a.shape[:-1] + (n, d))

    def features(params, xs):
        # in float32 at least, as the references compute the delta rule's inputs
        work = work_dtype(xs.dtype)
        c, x = xs[..., :channels].astype(work), xs[..., channels:].astype(work)
        params = jax.tree_util.tree_map(lambda a: a.astype(work), params)
        q = _l2_normalise(heads(c[..., :key_dim], Hk, d_k))
        k = _l2_normalise(heads(c[..., key_dim:2 * key_dim], Hk, d_k))
        v = heads(c[..., 2 * key_dim:], Hv, d_v)
        if group > 1:  # value head h reads key head h // group
            q, k = jnp.repeat(q, group, axis=-2), jnp.repeat(k, group, axis=-2)
        beta = jax.nn.sigmoid(linear(params.beta, x))
        log_alpha = None
        if gated:
            pre = linear(params.alpha, x) + jnp.broadcast_to(params.dt_bias, x.shape[:-1] + (Hv,))
            log_alpha = -jnp.exp(jnp.broadcast_to(params.a_log, pre.shape)) * jax.nn.softplus(pre)
        scale = jnp.asarray(d_k ** -0.5, q.dtype)
        return chunkwise.DeltaFeatures(q * scale, k, v, beta, log_alpha)

    def readout(params, o, xs):
        o = rms_normalise(o, params.norm.scale, eps=norm_eps)
        if params.gate is not None:
            o = o * jax.nn.silu(heads(linear(params.gate, xs[..., channels:]), Hv, d_v))
        return o.reshape(o.shape[:-2] + (value_dim,))

    return chunkwise.chunkwise_cell(init, initial_state, lambda p: channels + D, value_dim,
                                    "delta rule", features, chunkwise.delta_rule(), readout)


def _delta_layer(name, D, Hk, Hv, d_k, d_v, *, gated, use_gate, conv_size, activation,
                 norm_eps, param_dtype) -> Cell:
    """The body of :func:`deltanet_layer` and :func:`gated_deltanet_layer`."""
    if Hv % Hk:
        raise ValueError(f"{name}: the value heads ({Hv}) must be a multiple of the key "
                         f"heads ({Hk})")
    key_dim, value_dim = Hk * d_k, Hv * d_v
    channels = 2 * key_dim + value_dim
    conv = short_conv(channels, kernel_size=conv_size, bias=False, activation=activation,
                      param_dtype=param_dtype)
    rule = _delta_rule_cell(D, Hk, Hv, d_k, d_v, gated, use_gate, norm_eps, param_dtype)

    def init(key, input_size):
        size = _checks.positive_int(input_size, "input_size")
        if size != D:
            raise ValueError(f"{name}: input_size ({size}) must equal d_model ({D})")
        kq, kk, kv, kc, kr, ko = jax.random.split(key, 6)
        lin = functools.partial(linear_init_params, bias=False, dtype=param_dtype)
        return DeltaLayerParams(lin(kq, D, key_dim), lin(kk, D, key_dim), lin(kv, D, value_dim),
                                conv.init(kc, channels), rule.init(kr, channels + D),
                                lin(ko, value_dim, D))

    def initial_state(params):
        return DeltaLayerState(conv.initial_state(params.conv), rule.initial_state(params.rule))

    def project(params, x):
        return jnp.concatenate([linear(params.q, x), linear(params.k, x), linear(params.v, x)],
                               axis=-1)

    def apply(params, state, x):
        _checks.step_input(x, D, name)
        x = x.astype(dtype_of(params))
        conv_state, c = conv.apply(params.conv, state.conv, project(params, x))
        S, o = rule.apply(params.rule, state.S, jnp.concatenate([c, x], axis=-1))
        return DeltaLayerState(conv_state, S), linear(params.out, o)

    def parallel(params, xs, state, valid, options):
        lengths = None if valid is None else jnp.sum(valid, axis=0, dtype=jnp.int32)
        conv_state, c = run(conv, params.conv, project(params, xs),
                            None if state is None else state.conv, lengths=lengths, keys=None,
                            options=options)
        S, o = run(rule, params.rule, jnp.concatenate([c, xs.astype(c.dtype)], axis=-1),
                   None if state is None else state.S, lengths=lengths, keys=None,
                   options=options)
        return DeltaLayerState(conv_state, S), linear(params.out, o)

    return Cell(init, initial_state, apply, lambda p: p.q.w.shape[0], D, parallel=parallel)


def _split(name, total, heads):
    """``(heads, head size)`` for ``total`` channels in ``heads`` heads, checked."""
    heads = _checks.positive_int(heads, "num_heads")
    if total % heads:
        raise ValueError(f"{name}: {total} channels do not split into {heads} heads; pass "
                         f"num_heads, a divisor of {total}")
    return heads, total // heads


@constructor
def deltanet_layer(
    d_model: int,
    *,
    num_heads: Optional[int] = None,
    expand_k: float = 1.0,
    expand_v: float = 1.0,
    use_gate: bool = False,
    conv_size: int = 4,
    activation: Callable = jax.nn.silu,
    norm_eps: float = 1e-6,
    param_dtype=jnp.float32,
) -> Cell:
    """The DeltaNet layer (Yang et al. 2024), as flash-linear-attention's ``DeltaNet``.

    Per head, with ``c_t = silu(conv([W_q | W_k | W_v] x)_t)``, the causal depthwise
    convolution of ``conv_size`` taps over the projections:

    .. math::
        q_t &= \\frac{\\mathrm{L2}(c^q_t)}{\\sqrt{d_k}}, \\quad
            k_t = \\mathrm{L2}(c^k_t), \\quad v_t = c^v_t, \\quad
            \\beta_t = \\sigma(W_\\beta x_t) \\\\
        S_t &= (I - \\beta_t k_t k_t^T) S_{t-1} + \\beta_t k_t v_t^T, \\qquad
            o_t = S_t^T q_t \\\\
        y_t &= W_o\\, [\\mathrm{RMSNorm}(o_t) \\;(\\odot\\, \\mathrm{silu}(W_g x_t))]_{heads}

    The write replaces the value stored under ``k_t`` by ``v_t`` with strength
    ``beta_t``. The convolution is a :func:`seqjax.layers.short_conv` cell (state: its
    last ``conv_size - 1`` inputs), the rest a chunkwise cell of
    :func:`seqjax.chunkwise.delta_rule` (state ``S``), so :func:`seqjax.unroll` runs the
    layer in parallel over a sequence and ``apply`` steps it.

    Defaults are flash-linear-attention's ``DeltaNetConfig``: heads of 128 channels (16
    at ``D = 2048``), keys and values ``D`` wide, convolutions of 4 taps without bias, a
    plain output RMSNorm (``use_gate=False``), eps 1e-6. Initialisation: projections as
    PyTorch's ``nn.Linear``, convolution as ``nn.Conv1d``, norm scale 1.

    Args:
      d_model: ``D``.
      num_heads: heads (keys and values alike); ``None``: ``D / 128`` (at least 1).
      expand_k: key width over ``D``.
      expand_v: value width over ``D``.
      use_gate: the output gate ``silu(W_g x)`` after the norm.
      conv_size: taps of the convolutions.
      activation: after the convolutions (``silu``).
      norm_eps: the output RMSNorm's epsilon.
      param_dtype: dtype of the params and the state.

    Returns:
      A :class:`~seqjax.Cell` from ``D`` to ``D`` features with params
      :class:`DeltaLayerParams` and state :class:`DeltaLayerState`.

    References:
      Yang, Wang, Zhang, Shen & Kim, "Parallelizing linear transformers with the delta
      rule over sequence length", NeurIPS 2024, arXiv:2406.06484; Schlag, Irie &
      Schmidhuber, "Linear transformers are secretly fast weight programmers", ICML 2021.
    """
    D = _checks.positive_int(d_model, "d_model")
    key_dim = _width("deltanet_layer", D, expand_k)
    value_dim = _width("deltanet_layer", D, expand_v)
    heads = max(1, D // 128) if num_heads is None else num_heads
    heads, d_k = _split("deltanet_layer", key_dim, heads)
    _, d_v = _split("deltanet_layer", value_dim, heads)
    return _delta_layer("deltanet_layer", D, heads, heads, d_k, d_v, gated=False,
                        use_gate=use_gate, conv_size=conv_size, activation=activation,
                        norm_eps=norm_eps, param_dtype=param_dtype)


def _width(name, size, ratio):
    width = size * ratio
    if not (width >= 1 and math.isclose(width, round(width), rel_tol=1e-6)):
        raise ValueError(f"{name}: {size} * {ratio} is not a whole number of channels")
    return int(round(width))


@constructor
def gated_deltanet_layer(
    d_model: int,
    *,
    num_heads: Optional[int] = None,
    num_v_heads: Optional[int] = None,
    head_dim: Optional[int] = None,
    expand_v: float = 2.0,
    use_gate: bool = True,
    conv_size: int = 4,
    activation: Callable = jax.nn.silu,
    norm_eps: float = 1e-6,
    param_dtype=jnp.float32,
) -> Cell:
    """The Gated DeltaNet layer (Yang et al. 2025), as flash-linear-attention's
    ``GatedDeltaNet`` and Qwen3-Next's linear attention.

    As :func:`deltanet_layer`, with a decay per value head and step, and the output
    gate:

    .. math::
        \\alpha_t &= \\exp\\!\\big(-e^{A_{log}}\\, \\mathrm{softplus}(W_a x_t
            + dt_{bias})\\big) \\in (0, 1] \\\\
        S_t &= \\alpha_t (I - \\beta_t k_t k_t^T) S_{t-1} + \\beta_t k_t v_t^T,
            \\qquad o_t = S_t^T q_t \\\\
        y_t &= W_o\\, [\\mathrm{RMSNorm}(o_t) \\odot \\mathrm{silu}(W_g x_t)]_{heads}

    (equation 10 of Yang et al. 2025, the decay parametrised as Mamba-2's). With more
    value heads than key heads (``num_v_heads``, Qwen3-Next's grouped values), value
    head ``h`` reads query and key head ``h // (num_v_heads / num_heads)``.

    Defaults are flash-linear-attention's ``GatedDeltaNetConfig``: keys ``3 D / 4``
    wide in heads of 256 (6 heads at ``D = 2048``; one narrower head when ``3 D / 4 <
    256``), values twice as wide (``expand_v = 2``), the output gate, convolutions of 4
    taps without bias, eps 1e-6. Initialisation: projections as ``nn.Linear``;
    ``A = exp(A_log)`` uniform on ``[0, 16]``; ``dt_bias = softplus^-1(dt)``, ``dt``
    log-uniform on ``[0.001, 0.1]``; norm scale 1.

    Args:
      d_model: ``D``.
      num_heads: query/key heads ``Hk``; ``None``: ``(3 D / 4) / head_dim`` (at
        least 1).
      num_v_heads: value heads ``Hv``, a multiple of ``Hk``; ``None``: ``Hk``.
      head_dim: ``d_k``; ``None``: 256, or ``3 D / 4`` when smaller (with
        ``num_heads`` given: ``(3 D / 4) / num_heads``).
      expand_v: ``d_v / d_k``.
      use_gate: the output gate ``silu(W_g x)`` (else a plain RMSNorm).
      conv_size: taps of the convolutions.
      activation: after the convolutions (``silu``).
      norm_eps: the output RMSNorm's epsilon.
      param_dtype: dtype of the params and the state.

    Returns:
      A :class:`~seqjax.Cell` from ``D`` to ``D`` features with params
      :class:`DeltaLayerParams` and state :class:`DeltaLayerState`.

    References:
      Yang, Kautz & Hatamizadeh, "Gated delta networks: improving Mamba2 with delta
      rule", ICLR 2025, arXiv:2412.06464; Qwen team, "Qwen3-Next", 2025.
    """
    D = _checks.positive_int(d_model, "d_model")
    key_dim = max(1, 3 * D // 4)
    if head_dim is None:
        if num_heads is None:
            head_dim = min(256, key_dim)
        else:
            num_heads = _checks.positive_int(num_heads, "num_heads")
            head_dim = max(1, key_dim // num_heads)
    d_k = _checks.positive_int(head_dim, "head_dim")
    Hk = max(1, key_dim // d_k) if num_heads is None else _checks.positive_int(num_heads,
                                                                                 "num_heads")
    Hv = Hk if num_v_heads is None else _checks.positive_int(num_v_heads, "num_v_heads")
    d_v = _width("gated_deltanet_layer", d_k, expand_v)
    return _delta_layer("gated_deltanet_layer", D, Hk, Hv, d_k, d_v, gated=True,
                        use_gate=use_gate, conv_size=conv_size, activation=activation,
                        norm_eps=norm_eps, param_dtype=param_dtype)


def _mlp_width(D):
    """flash-linear-attention's ``GatedMLP`` width: ``8 D / 3`` rounded up to a
    multiple of 256 (``hidden_ratio = 4``)."""
    return 256 * -(-int(D * 4 * 2 / 3) // 256)


def _block(layer, D, mlp_hidden, norm_eps, param_dtype):
    hidden = _mlp_width(D) if mlp_hidden is None else mlp_hidden
    return residual(layer, mlp=gated_mlp(D, hidden, activation=jax.nn.silu,
                                         param_dtype=param_dtype),
                    norm=functools.partial(rms_norm, eps=norm_eps, param_dtype=param_dtype))


@constructor
def deltanet_block(
    d_model: int,
    *,
    num_heads: Optional[int] = None,
    expand_k: float = 1.0,
    expand_v: float = 1.0,
    use_gate: bool = False,
    conv_size: int = 4,
    mlp_hidden: Optional[int] = None,
    norm_eps: float = 1e-6,
    param_dtype=jnp.float32,
) -> Cell:
    """The DeltaNet block: :func:`deltanet_layer` and a SwiGLU MLP, pre-norm residual.

    .. math::
        h = x + \\mathrm{DeltaNet}(\\mathrm{RMSNorm}(x)), \\qquad
        y = h + W_d(\\mathrm{silu}(W_g u) \\odot W_u u), \\; u = \\mathrm{RMSNorm}(h)

    flash-linear-attention's ``DeltaNetBlock``.

    Args:
      d_model: ``D``.
      num_heads, expand_k, expand_v, use_gate, conv_size: as :func:`deltanet_layer`.
      mlp_hidden: the MLP's width; ``None``: ``8 D / 3`` rounded up to a multiple of
        256 (flash-linear-attention's ``GatedMLP``).
      norm_eps: the epsilon of the block's RMSNorms and of the layer's output norm.
      param_dtype: dtype of the params.

    Returns:
      A :func:`seqjax.blocks.residual` cell whose state is :class:`DeltaLayerState`.

    References:
      Yang, Wang, Zhang, Shen & Kim, "Parallelizing linear transformers with the delta
      rule over sequence length", NeurIPS 2024, arXiv:2406.06484.
    """
    D = _checks.positive_int(d_model, "d_model")
    layer = deltanet_layer(D, num_heads=num_heads, expand_k=expand_k, expand_v=expand_v,
                           use_gate=use_gate, conv_size=conv_size, norm_eps=norm_eps,
                           param_dtype=param_dtype)
    return _block(layer, D, mlp_hidden, norm_eps, param_dtype)


@constructor
def gated_deltanet_block(
    d_model: int,
    *,
    num_heads: Optional[int] = None,
    num_v_heads: Optional[int] = None,
    head_dim: Optional[int] = None,
    expand_v: float = 2.0,
    use_gate: bool = True,
    conv_size: int = 4,
    mlp_hidden: Optional[int] = None,
    norm_eps: float = 1e-6,
    param_dtype=jnp.float32,
) -> Cell:
    """The Gated DeltaNet block: :func:`gated_deltanet_layer` and a SwiGLU MLP,
    pre-norm residual.

    .. math::
        h = x + \\mathrm{GatedDeltaNet}(\\mathrm{RMSNorm}(x)), \\qquad
        y = h + W_d(\\mathrm{silu}(W_g u) \\odot W_u u), \\; u = \\mathrm{RMSNorm}(h)

    flash-linear-attention's ``GatedDeltaNetBlock`` (Qwen3-Next's linear-attention
    layers are this with ``(1 + w)`` norms: :mod:`seqjax.interop.hf.qwen3_next`).

    Args:
      d_model: ``D``.
      num_heads, num_v_heads, head_dim, expand_v, use_gate, conv_size: as
        :func:`gated_deltanet_layer`.
      mlp_hidden: the MLP's width; ``None``: ``8 D / 3`` rounded up to a multiple of
        256.
      norm_eps: the epsilon of the block's RMSNorms and of the layer's output norm.
      param_dtype: dtype of the params.

    Returns:
      A :func:`seqjax.blocks.residual` cell whose state is :class:`DeltaLayerState`.

    References:
      Yang, Kautz & Hatamizadeh, "Gated delta networks: improving Mamba2 with delta
      rule", ICLR 2025, arXiv:2412.06464.
    """
    D = _checks.positive_int(d_model, "d_model")
    layer = gated_deltanet_layer(D, num_heads=num_heads, num_v_heads=num_v_heads,
                                 head_dim=head_dim, expand_v=expand_v, use_gate=use_gate,
                                 conv_size=conv_size, norm_eps=norm_eps,
                                 param_dtype=param_dtype)
    return _block(layer, D, mlp_hidden, norm_eps, param_dtype)


__all__ = ["DeltaLayerParams", "DeltaLayerState", "DeltaRuleParams", "deltanet_block",
           "deltanet_layer", "gated_deltanet_block", "gated_deltanet_layer"]
