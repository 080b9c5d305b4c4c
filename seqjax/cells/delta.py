"""Delta-rule cells: DeltaNet (Schlag et al. 2021; Yang et al. 2024) and Gated DeltaNet
(Yang et al. 2025), with the chunkwise-parallel (WY / UT transform) form of
:func:`seqjax.chunkwise.delta_rule`."""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from seqjax import _checks
from seqjax import chunkwise
from seqjax.cells._common import _affine, _draw
from seqjax.cells._constructor import constructor
from seqjax.cells.contract import Array, Cell, Initializer

# PyTorch's nn.Linear default, U(+-1/sqrt(fan_in)), which flash-linear-attention's
# layers start from
_linear_init = jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class DeltaNetParams(NamedTuple):
    """DeltaNet parameters, ``heads`` heads, key size ``d_k``, value size ``d_v = H /
    heads``.

    ``w_q, w_k [I, heads * d_k]``, ``w_v [I, H]``: queries, keys, values.
    ``w_beta [I, heads]``: the writing strength ``beta = sigmoid(x w_beta)``.
    ``w_g [I, H]``: the output gate. ``norm_scale [d_v]``: the output RMSNorm's scale,
    shared by the heads (as flash-linear-attention's ``o_norm``).
    """

    w_q: Array
    w_k: Array
    w_v: Array
    w_beta: Array
    w_g: Array
    norm_scale: Array


class GatedDeltaNetParams(NamedTuple):
    """Gated DeltaNet parameters: :class:`DeltaNetParams`' fields, then the decay
    ``alpha = exp(-exp(a_log) * softplus(x w_alpha + b_alpha))`` with ``w_alpha [I,
    heads]``, ``b_alpha [heads]``, ``a_log [heads]`` (Mamba-2's parametrisation, as
    the authors' code)."""

    w_q: Array
    w_k: Array
    w_v: Array
    w_beta: Array
    w_g: Array
    norm_scale: Array
    w_alpha: Array
    b_alpha: Array
    a_log: Array


def _l2_normalise(x, eps=1e-6):
    """``x / sqrt(sum x^2 + eps)`` over the last axis (flash-linear-attention's l2norm)."""
    return x * lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def _delta_cell(name, H, heads, d_k, d_v, gated, kernel_init, norm_eps, dt_min, dt_max,
                a_range, param_dtype) -> Cell:
    """The body shared by :func:`delta_net` and :func:`gated_delta_net`."""
    _checks.real(norm_eps, "norm_eps", name, above=0.0,
                 why="it keeps the RMSNorm's rsqrt(mean(o^2) + norm_eps) finite where o = 0")
    recurrence = chunkwise.delta_rule()

    def init(key, input_size_):
        I = _checks.positive_int(input_size_, "input_size")
        kq, kk, kv, kb, kg, ka, kd, kA = jax.random.split(key, 8)
        draw = lambda k, shape: _draw(kernel_init, k, shape, param_dtype)
        base = (draw(kq, (I, heads * d_k)), draw(kk, (I, heads * d_k)), draw(kv, (I, H)),
                draw(kb, (I, heads)), draw(kg, (I, H)), jnp.ones((d_v,), param_dtype))
        if not gated:
            return DeltaNetParams(*base)
        # Mamba-2's initialisation of the decay, as the Gated DeltaNet code:
        # dt log-uniform on [dt_min, dt_max] (floored at 1e-4), b_alpha = softplus^-1(dt),
        # A uniform on a_range, a_log = log A
        u = jax.random.uniform(kd, (heads,), jnp.float32)
        dt = jnp.maximum(jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)),
                         1e-4)
        b_alpha = dt + jnp.log(-jnp.expm1(-dt))
        A = jax.random.uniform(kA, (heads,), jnp.float32, a_range[0], a_range[1])
        return GatedDeltaNetParams(*base, draw(ka, (I, heads)), b_alpha.astype(param_dtype),
                                   jnp.log(A).astype(param_dtype))

    def initial_state(params):
        return jnp.zeros((heads, d_k, d_v), params.w_q.dtype)

    def features(params, xs):
        lead = xs.shape[:-1]
        q = _l2_normalise(jax.nn.silu((xs @ params.w_q).reshape(lead + (heads, d_k))))
        k = _l2_normalise(jax.nn.silu((xs @ params.w_k).reshape(lead + (heads, d_k))))
        v = jax.nn.silu(xs @ params.w_v).reshape(lead + (heads, d_v))
        beta = jax.nn.sigmoid(xs @ params.w_beta)
        if gated:
            pre = _affine(xs, params.w_alpha, params.b_alpha)
            log_alpha = -jnp.exp(jnp.broadcast_to(params.a_log, pre.shape)) * jax.nn.softplus(pre)
        else:
            log_alpha = None
        return chunkwise.DeltaFeatures(q * (d_k ** -0.5), k, v, beta, log_alpha)

    def readout(params, o, xs):
        normed = o * lax.rsqrt(jnp.mean(o * o, axis=-1, keepdims=True) + norm_eps)
        normed = normed * jnp.broadcast_to(params.norm_scale, normed.shape)
        return normed.reshape(xs.shape[:-1] + (H,)) * jax.nn.silu(xs @ params.w_g)

    return chunkwise.chunkwise_cell(init, initial_state, lambda p: p.w_q.shape[0], H, name,
                                    features, recurrence, readout)


@constructor
def delta_net(
    hidden_size: int,
    *,
    num_heads: Optional[int] = None,
    key_size: Optional[int] = None,
    norm_eps: float = 1e-5,
    kernel_init: Initializer = _linear_init,
    param_dtype=jnp.float32,
) -> Cell:
    """DeltaNet: a matrix memory written by the delta rule.

    Per head:

    .. math::
        q_t &= \\frac{\\mathrm{L2}(\\mathrm{silu}(W_q x_t))}{\\sqrt{d_k}}, \\quad
            k_t = \\mathrm{L2}(\\mathrm{silu}(W_k x_t)), \\quad
            v_t = \\mathrm{silu}(W_v x_t), \\quad \\beta_t = \\sigma(w_\\beta^T x_t) \\\\
        S_t &= S_{t-1} (I - \\beta_t k_t k_t^T) + \\beta_t v_t k_t^T
            \\quad (\\text{stored transposed}), \\qquad o_t = S_t q_t \\\\
        y_t &= \\mathrm{RMSNorm}(o_t) \\odot \\mathrm{silu}(W_g x_t)

    The write replaces the value stored under ``k_t`` by ``v_t`` with strength
    ``beta_t`` (``S_t k_t = (1 - beta_t) S_{t-1} k_t + beta_t v_t``).
    :func:`seqjax.unroll` runs it in the chunkwise-parallel form of
    :func:`seqjax.chunkwise.delta_rule` (the WY representation, one triangular solve
    per chunk); ``apply`` is one step.

    Keys and queries go through ``silu`` and are L2-normalised (so ``I - beta k k^T``
    is a contraction for ``beta`` in ``[0, 1]``), the query then scaled by
    ``1/sqrt(d_k)``; values through ``silu``. The output is a per-head RMSNorm (scale
    shared by the heads) times a ``silu`` gate: what flash-linear-attention's
    ``GatedDeltaNet`` layer computes (``FusedRMSNormGated``) before its output
    projection. The layer's short causal convolutions on ``q, k, v`` and its output
    projection are not part of the cell (compose them around it); without the
    convolution the ``silu`` acts on the projections directly, as the layer does with
    ``use_short_conv=False``. The state ``S [heads, d_k, d_v]`` is stored ``k v^T``
    (flash-linear-attention's layout); ``o_t = S_t^T q_t``.

    Initialisation: projections as PyTorch's ``nn.Linear`` (``U(+-1/sqrt(I))``),
    norm scale 1.

    Args:
      hidden_size: ``H = heads * d_v``.
      num_heads: number of heads (must divide ``H``); ``None``: one per 64
        channels (:func:`seqjax.chunkwise.head_split`).
      key_size: ``d_k`` per head; ``None`` means ``d_v``.
      norm_eps: the RMSNorm's epsilon.
      kernel_init: initialiser of every projection.
      param_dtype: dtype of the parameters; inputs are cast to it. 16-bit params
        compute the recurrence in float32 and store the state in ``param_dtype``.

    Returns:
      A :class:`Cell` with params :class:`DeltaNetParams`, state ``S [heads, d_k,
      d_v]``, output ``y [H]``; ``cell.chunkwise`` is set. ``2 I heads d_k + 2 I H +
      I heads + d_v`` parameters.

    References:
      Schlag, Irie & Schmidhuber, "Linear transformers are secretly fast weight
      programmers", ICML 2021, arXiv:2102.11174.
      Yang, Wang, Zhang, Shen & Kim, "Parallelizing linear transformers with the delta
      rule over sequence length", NeurIPS 2024, arXiv:2406.06484.
    """
    H, heads, d_k, d_v = chunkwise.head_split("delta_net", hidden_size, num_heads, key_size)
    return _delta_cell("delta_net", H, heads, d_k, d_v, False, kernel_init, norm_eps,
                       None, None, None, param_dtype)


@constructor
def gated_delta_net(
    hidden_size: int,
    *,
    num_heads: Optional[int] = None,
    key_size: Optional[int] = None,
    norm_eps: float = 1e-5,
    dt_min: float = 0.001,
    dt_max: float = 0.1,
    a_init_range: tuple = (0.0, 16.0),
    kernel_init: Initializer = _linear_init,
    param_dtype=jnp.float32,
) -> Cell:
    """Gated DeltaNet: the delta rule with a data-dependent decay per head.

    Per head, with ``q_t, k_t, v_t, beta_t`` and the output as in :func:`delta_net`:

    .. math::
        \\alpha_t &= \\exp(-e^{A_{log}} \\, \\mathrm{softplus}(w_\\alpha^T x_t
            + b_\\alpha)) \\in (0, 1] \\\\
        S_t &= S_{t-1} \\, \\alpha_t (I - \\beta_t k_t k_t^T) + \\beta_t v_t k_t^T
            \\quad (\\text{stored transposed}), \\qquad o_t = S_t q_t

    Equation (10) of Yang et al. 2025, with the decay parametrised as in Mamba-2
    and the authors' code. :func:`seqjax.unroll` runs it in the chunkwise-parallel
    form of :func:`seqjax.chunkwise.delta_rule` (the WY representation with the
    decay folded into the triangular system); ``apply`` is one step.

    Keys and queries go through ``silu`` and are L2-normalised (so ``I - beta k k^T``
    is a contraction for ``beta`` in ``[0, 1]``), the query then scaled by
    ``1/sqrt(d_k)``; values through ``silu``. The output is a per-head RMSNorm (scale
    shared by the heads) times a ``silu`` gate: what flash-linear-attention's
    ``GatedDeltaNet`` layer computes (``FusedRMSNormGated``) before its output
    projection. The layer's short causal convolutions on ``q, k, v`` and its output
    projection are not part of the cell (compose them around it); without the
    convolution the ``silu`` acts on the projections directly, as the layer does with
    ``use_short_conv=False``. The state ``S [heads, d_k, d_v]`` is stored ``k v^T``
    (flash-linear-attention's layout); ``o_t = S_t^T q_t``.

    Initialisation (the authors' code): projections as ``nn.Linear``; ``A`` uniform
    on ``a_init_range`` (``a_log = log A``); ``b_alpha = softplus^-1(dt)`` with ``dt``
    log-uniform on ``[dt_min, dt_max]``, floored at ``1e-4``; norm scale 1.

    Args:
      hidden_size: ``H = heads * d_v``.
      num_heads: number of heads (must divide ``H``); ``None``: one per 64
        channels (:func:`seqjax.chunkwise.head_split`).
      key_size: ``d_k`` per head; ``None`` means ``d_v``.
      norm_eps: the RMSNorm's epsilon.
      dt_min, dt_max: range of the initial decay rate ``softplus(b_alpha)``.
      a_init_range: range of the initial ``A = exp(a_log)``.
      kernel_init: initialiser of every projection.
      param_dtype: dtype of the parameters; inputs are cast to it.

    Returns:
      A :class:`Cell` with params :class:`GatedDeltaNetParams`, state ``S [heads,
      d_k, d_v]``, output ``y [H]``; ``cell.chunkwise`` is set. ``2 I heads d_k +
      2 I H + 2 I heads + 2 heads + d_v`` parameters.

    References:
      Yang, Kautz & Hatamizadeh, "Gated delta networks: improving Mamba2 with delta
      rule", ICLR 2025, arXiv:2412.06464.
    """
    H, heads, d_k, d_v = chunkwise.head_split("gated_delta_net", hidden_size, num_heads,
                                          key_size)
    if not 0.0 < dt_min <= dt_max:
        raise ValueError(f"gated_delta_net needs 0 < dt_min <= dt_max, got dt_min={dt_min}, "
                         f"dt_max={dt_max}")
    low, high = a_init_range
    if not 0.0 <= low < high:
        raise ValueError(f"gated_delta_net needs 0 <= a_init_range[0] < a_init_range[1], got "
                         f"{a_init_range}")
    _checks.real(dt_max, "dt_max", "gated_delta_net")
    _checks.real(high, "a_init_range[1]", "gated_delta_net")
    return _delta_cell("gated_delta_net", H, heads, d_k, d_v, True, kernel_init, norm_eps,
                       dt_min, dt_max, (low, high), param_dtype)

