"""Mamba's and Mamba-2's blocks: a selective state-space mixer in a pre-norm residual,
without an MLP (Gu & Dao 2023; Dao & Gu 2024).

Both mixers are ``in_proj -> causal depthwise conv -> SSM -> gate -> out_proj``. The
Mamba mixer's SSM is the :func:`seqjax.s6` cell, whose params hold ``mamba_ssm``'s
``x_proj`` (split into its ``Delta``, ``B`` and ``C`` rows), ``dt_proj``, ``A_log`` and
``D`` as they are stored. The Mamba-2 mixer's SSM is :func:`ssd`, a chunkwise cell of
:func:`seqjax.chunkwise.gated_outer_product` (the state-space duality form) that reads
the convolved ``x, B, C`` and the raw ``dt``: Mamba-2's convolution sits between its
input projection and its SSM, so the :func:`seqjax.mamba2` cell, which projects its
input itself, cannot hold a checkpoint.
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
from seqjax.cells.contract import Array, Cell
from seqjax.cells.mamba import S6Params, s6
from seqjax.layers._common import (LinearParams, dtype_of, linear, linear_init_params,
                                   linear_split)
from seqjax.layers.conv import ConvParams, short_conv
from seqjax.layers.norms import NormParams, rms_norm
from seqjax.unroll import run


def _lengths(valid):
    return None if valid is None else jnp.sum(valid, axis=0, dtype=jnp.int32)


def _inv_softplus_dt(key, shape, dt_min, dt_max, dt_init_floor, dtype):
    """``softplus^-1(dt)`` with ``dt`` log-uniform on ``[dt_min, dt_max]``, floored at
    ``dt_init_floor``: Mamba's initial ``Delta`` bias."""
    u = jax.random.uniform(key, shape, jnp.float32)
    dt = jnp.maximum(jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)),
                     dt_init_floor)
    return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)


# ------------------------------------------------------------------------------- Mamba


class MambaParams(NamedTuple):
    """The Mamba mixer (``mamba_ssm``'s ``Mamba``): ``in_proj [D, 2E]`` (``x`` then
    ``z``), ``conv`` over the ``E`` channels of ``x``, ``ssm`` the S6 params
    (:class:`seqjax.S6Params`: ``x_proj`` is ``[w_delta_down | w_b | w_c]``,
    ``dt_proj`` is ``w_delta_up`` and ``b_delta``), ``out_proj [E, D]``."""

    in_proj: LinearParams
    conv: ConvParams
    ssm: S6Params
    out_proj: LinearParams


class MambaState(NamedTuple):
    """``conv [k - 1, E]``: the last convolution inputs; ``ssm [E, N]``: the S6 state."""

    conv: Array
    ssm: Array


@constructor
def mamba_mixer(
    d_model: int,
    *,
    state_size: int = 16,
    expand: int = 2,
    intermediate_size: Optional[int] = None,
    conv_kernel: int = 4,
    delta_rank: Optional[int] = None,
    conv_bias: bool = True,
    bias: bool = False,
    activation: Callable = jax.nn.silu,
    dt_min: float = 0.001,
    dt_max: float = 0.1,
    dt_init_floor: float = 1e-4,
    dt_scale: float = 1.0,
    param_dtype=jnp.float32,
) -> Cell:
    """The Mamba mixer (Gu & Dao 2023, Figure 3), without its norm and residual.

    .. math::
        [x_t; z_t] &= W_{in} u_t, \\qquad
        \\tilde x_t = \\sigma\\Big(\\sum_{j=0}^{k-1} w_j \\odot x_{t-k+1+j} + b\\Big) \\\\
        y_t &= \\mathrm{S6}(\\tilde x)_t \\odot \\mathrm{silu}(z_t), \\qquad
        \\text{out}_t = W_{out} y_t

    with ``sigma = activation`` and the selective SSM :func:`seqjax.s6` (``Delta, B, C``
    from ``x_proj``, ``Delta`` through ``dt_proj`` and a softplus, ``A = -exp(A_log)``,
    the skip ``D``). Arguments as :func:`mamba_block`.

    Returns:
      A :class:`~seqjax.Cell` from ``D`` to ``D`` features with params
      :class:`MambaParams` and state :class:`MambaState`.
    """
    D = _checks.positive_int(d_model, "d_model")
    E = (_checks.positive_int(int(expand * D), "expand * d_model") if intermediate_size is None
         else _checks.positive_int(intermediate_size, "intermediate_size"))
    R = math.ceil(D / 16) if delta_rank is None else _checks.positive_int(delta_rank,
                                                                         "delta_rank")
    conv = short_conv(E, kernel_size=conv_kernel, bias=conv_bias, activation=activation,
                      param_dtype=param_dtype)
    ssm = s6(E, state_size=state_size, delta_rank=R, dt_min=dt_min, dt_max=dt_max,
             dt_init_floor=dt_init_floor, dt_scale=dt_scale, param_dtype=param_dtype)

    def init(key, input_size):
        size = _checks.positive_int(input_size, "input_size")
        if size != D:
            raise ValueError(f"mamba_mixer: input_size ({size}) must equal d_model ({D})")
        k_in, k_conv, k_ssm, k_out = jax.random.split(key, 4)
        return MambaParams(linear_init_params(k_in, D, 2 * E, bias=bias, dtype=param_dtype),
                           conv.init(k_conv, E), ssm.init(k_ssm, E),
                           linear_init_params(k_out, E, D, bias=bias, dtype=param_dtype))

    def initial_state(params):
        return MambaState(conv.initial_state(params.conv), ssm.initial_state(params.ssm))

    def gate_out(params, y, z):
        return linear(params.out_proj, y * jax.nn.silu(z))

    def apply(params, state, u):
        _checks.step_input(u, D, "mamba_mixer")
        xz = linear(params.in_proj, u.astype(dtype_of(params)))
        conv_state, x = conv.apply(params.conv, state.conv, xz[:E])
        ssm_state, y = ssm.apply(params.ssm, state.ssm, x)
        return MambaState(conv_state, ssm_state), gate_out(params, y, xz[E:])

    def parallel(params, us, state, valid, options):
        lengths = _lengths(valid)
        x, z = linear_split(params.in_proj, us, (E, E))
        conv_state, x = run(conv, params.conv, x, None if state is None else state.conv,
                            lengths=lengths, keys=None, options=options)
        ssm_state, y = run(ssm, params.ssm, x, None if state is None else state.ssm,
                           lengths=lengths, keys=None, options=options)
        return MambaState(conv_state, ssm_state), gate_out(params, y, z)

    return Cell(init, initial_state, apply, lambda p: p.in_proj.w.shape[0], D,
                parallel=parallel)


@constructor
def mamba_block(
    d_model: int,
    *,
    state_size: int = 16,
    expand: int = 2,
    intermediate_size: Optional[int] = None,
    conv_kernel: int = 4,
    delta_rank: Optional[int] = None,
    conv_bias: bool = True,
    bias: bool = False,
    activation: Callable = jax.nn.silu,
    norm_eps: float = 1e-5,
    dt_min: float = 0.001,
    dt_max: float = 0.1,
    dt_init_floor: float = 1e-4,
    dt_scale: float = 1.0,
    param_dtype=jnp.float32,
) -> Cell:
    """The Mamba block: RMSNorm, the Mamba mixer, a residual; no MLP.

    .. math::
        [x_t; z_t] &= W_{in}\\, \\mathrm{RMSNorm}(h_t), \\qquad
        \\tilde x = \\sigma(\\mathrm{conv}_k(x)) \\\\
        B_t, C_t, \\Delta_t &= \\tilde x_t W_B,\\; \\tilde x_t W_C,\\;
            \\mathrm{softplus}(\\tilde x_t W_{\\Delta,down} W_{\\Delta,up} + b_\\Delta) \\\\
        s_t &= e^{\\Delta_t A} \\odot s_{t-1} + (\\Delta_t \\odot \\tilde x_t) B_t^T,
            \\qquad y_t = s_t C_t + D \\odot \\tilde x_t \\quad (A = -e^{A_{log}}) \\\\
        h'_t &= h_t + W_{out}\\,(y_t \\odot \\mathrm{silu}(z_t))

    ``s_t [E, N]`` per channel of the ``E = expand * D`` inner channels; ``conv_k`` is
    the causal depthwise convolution (:func:`seqjax.layers.short_conv`). As Mamba
    language models (``MambaLMHeadModel``, transformers' ``MambaForCausalLM``) stack
    it: no MLP, pre-norm RMSNorm. The state is the last ``k - 1`` convolution inputs
    and ``s``; the whole-sequence form runs the convolution and S6 through
    :func:`seqjax.unroll.run`, and ``apply`` is one token.

    Defaults are ``mamba_ssm``'s ``Mamba`` (``d_state=16, d_conv=4, expand=2,
    dt_rank="auto"``, conv bias, no projection biases) with its initialisation
    (S4D-real ``A``, ``D = 1``, ``dt_proj`` from ``dt_min, dt_max, dt_init_floor,
    dt_scale``) and its LM's RMSNorm epsilon (1e-5).

    Args:
      d_model: ``D``.
      state_size: ``N`` per inner channel.
      expand: ``E = expand * D`` unless ``intermediate_size`` is given.
      intermediate_size: ``E`` itself (transformers' config may set it).
      conv_kernel: ``k``.
      delta_rank: the rank ``R`` of the ``Delta`` projection; ``None``:
        ``ceil(D / 16)`` (Mamba's ``dt_rank="auto"``, from the model width).
      conv_bias: whether the convolution has a bias.
      bias: whether ``in_proj`` and ``out_proj`` have biases.
      activation: ``sigma`` after the convolution (the gate is always ``silu``).
      norm_eps: the RMSNorm's epsilon.
      dt_min, dt_max, dt_init_floor, dt_scale: the initialisation of ``Delta``.
      param_dtype: dtype of the params.

    Returns:
      A :func:`seqjax.blocks.residual` cell around :func:`mamba_mixer` (params
      :class:`~seqjax.blocks.ResidualParams`, state :class:`MambaState`).

    References:
      Gu & Dao, "Mamba: Linear-time sequence modeling with selective state spaces",
      arXiv:2312.00752, 2023 (section 3.4, Figure 3; Algorithm 2).
    """
    mixer = mamba_mixer(d_model, state_size=state_size, expand=expand,
                        intermediate_size=intermediate_size, conv_kernel=conv_kernel,
                        delta_rank=delta_rank, conv_bias=conv_bias, bias=bias,
                        activation=activation, dt_min=dt_min, dt_max=dt_max,
                        dt_init_floor=dt_init_floor, dt_scale=dt_scale,
                        param_dtype=param_dtype)
    return residual(mixer, norm=functools.partial(rms_norm, eps=norm_eps,
                                                  param_dtype=param_dtype))


# ----------------------------------------------------------------------------- Mamba-2


class SSDParams(NamedTuple):
    """Mamba-2's SSM parameters, one per head: ``dt_bias [heads]``, ``a_log [heads]``
    (``A = -exp(a_log)``) and ``d [heads]`` (the skip ``D``)."""

    dt_bias: Array
    a_log: Array
    d: Array


@constructor
def ssd(
    num_heads: int,
    head_dim: int,
    *,
    state_size: int = 128,
    n_groups: int = 1,
    time_step_limit: tuple = (0.0, math.inf),
    dt_min: float = 0.001,
    dt_max: float = 0.1,
    dt_init_floor: float = 1e-4,
    a_init_range: tuple = (1.0, 16.0),
    param_dtype=jnp.float32,
) -> Cell:
    """Mamba-2's SSM on its convolved inputs: the SSD recurrence with ``G`` groups of
    ``B, C``.

    The input of a step is ``[x (H P) | B (G N) | C (G N) | dt (H)]`` (``x, B, C``
    after the convolution and its activation, ``dt`` straight from the projection);
    head ``h`` reads group ``g = h // (H / G)``:

    .. math::
        \\Delta_t &= \\mathrm{clip}(\\mathrm{softplus}(dt_t + dt_{bias}),\\;
            \\Delta_{min}, \\Delta_{max}), \\qquad A = -e^{A_{log}} \\\\
        S^h_t &= e^{\\Delta^h_t A^h} S^h_{t-1} + B^g_t (\\Delta^h_t x^h_t)^T
            \\quad [N, P], \\qquad
        y^h_t = S^{h\\,T}_t C^g_t + D^h x^h_t

    :func:`seqjax.chunkwise.gated_outer_product` with keys ``B``, queries ``C``,
    values ``Delta x`` and log-decays ``Delta A``, so :func:`seqjax.unroll` runs it in
    the chunkwise state-space-duality form and ``apply`` is one step. The state is
    ``[H, N, P]`` (``mamba_ssm`` and transformers store ``[H, P, N]``).

    Args:
      num_heads: ``H``.
      head_dim: ``P``.
      state_size: ``N``.
      n_groups: ``G``, which divides ``H``.
      time_step_limit: ``(Delta_min, Delta_max)``; the default ``(0, inf)`` clips
        nothing.
      dt_min, dt_max, dt_init_floor: the initial range of ``softplus(dt_bias)``.
      a_init_range: the initial range of ``-A``.
      param_dtype: dtype of the params and the state.

    Returns:
      A :class:`~seqjax.Cell` from ``H P + 2 G N + H`` to ``H P`` features with params
      :class:`SSDParams`; ``cell.chunkwise`` is set.

    References:
      Dao & Gu, "Transformers are SSMs: generalized models and efficient algorithms
      through structured state space duality", ICML 2024, arXiv:2405.21060 (sections
      6-7, Listing 1).
    """
    heads = _checks.positive_int(num_heads, "num_heads")
    P = _checks.positive_int(head_dim, "head_dim")
    N = _checks.positive_int(state_size, "state_size")
    G = _checks.positive_int(n_groups, "n_groups")
    if heads % G:
        raise ValueError(f"ssd: n_groups ({G}) must divide num_heads ({heads})")
    low, high = (float(v) for v in time_step_limit)
    if not 0.0 <= low <= high:
        raise ValueError(f"ssd: time_step_limit must be (low, high) with 0 <= low <= high, "
                         f"got {time_step_limit!r}")
    clip = (low, high) != (0.0, math.inf)  # softplus >= 0: the default clips nothing
    a_low, a_high = a_init_range
    if not 0.0 < a_low <= a_high:
        raise ValueError(f"ssd: a_init_range must be (low, high) with 0 < low <= high, got "
                         f"{a_init_range!r}")
    I = heads * P
    size = I + 2 * G * N + heads

    def init(key, input_size):
        got = _checks.positive_int(input_size, "input_size")
        if got != size:
            raise ValueError(f"ssd: input_size ({got}) must be heads * head_dim + 2 * "
                             f"n_groups * state_size + heads = {size}")
        k_dt, k_a = jax.random.split(key)
        A = jax.random.uniform(k_a, (heads,), jnp.float32, a_low, a_high)
        return SSDParams(
            _inv_softplus_dt(k_dt, (heads,), dt_min, dt_max, dt_init_floor, param_dtype),
            jnp.log(A).astype(param_dtype), jnp.ones((heads,), param_dtype))

    def initial_state(params):
        return jnp.zeros((heads, N, P), params.d.dtype)

    def per_head(g):
        """``[..., G N] -> [..., H or 1, N]``: each head's group (shared when G = 1)."""
        g = g.reshape(g.shape[:-1] + (G, N))
        return g if G == 1 else jnp.repeat(g, heads // G, axis=-2)

    def ssm_input(xs):
        return xs[..., :I].reshape(xs.shape[:-1] + (heads, P))

    def features(params, xs):
        B, C = xs[..., I:I + G * N], xs[..., I + G * N:I + 2 * G * N]
        dt = xs[..., I + 2 * G * N:]
        delta = jax.nn.softplus(dt + jnp.broadcast_to(params.dt_bias, dt.shape))
        if clip:
            delta = jnp.clip(delta, low, high)
        log_f = -delta * jnp.exp(jnp.broadcast_to(params.a_log, delta.shape))
        return _chunkwise.GatedFeatures(per_head(C), per_head(B),
                                        delta[..., None] * ssm_input(xs), log_f, None)

    def readout(params, o, xs):
        x = ssm_input(xs)
        y = o + jnp.broadcast_to(params.d[:, None], x.shape) * x
        return y.reshape(xs.shape[:-1] + (I,))

    return _chunkwise.chunkwise_cell(init, initial_state, lambda p: size, I, "ssd", features,
                                     _chunkwise.gated_outer_product(normalised=False),
                                     readout)


class Mamba2Params(NamedTuple):
    """The Mamba-2 mixer (``mamba_ssm``'s ``Mamba2``): ``in_proj [D, 2E + 2GN + H]``
    (``z, x, B, C, dt`` in that order), ``conv`` over the ``E + 2GN`` channels of
    ``x, B, C``, ``ssd`` (:class:`SSDParams`), ``norm`` the gated RMSNorm's scale
    ``[E]``, ``out_proj [E, D]``."""

    in_proj: LinearParams
    conv: ConvParams
    ssd: SSDParams
    norm: NormParams
    out_proj: LinearParams


class Mamba2State(NamedTuple):
    """``conv [k - 1, E + 2GN]``: the last convolution inputs; ``ssm [H, N, P]``."""

    conv: Array
    ssm: Array


def _mamba2_sizes(name, d_model, expand, head_dim, num_heads, n_groups):
    D = _checks.positive_int(d_model, "d_model")
    E = _checks.positive_int(int(expand * D), "expand * d_model")
    if num_heads is None:
        P = _checks.positive_int(head_dim, "head_dim")
        if E % P:
            raise ValueError(f"{name}: head_dim ({P}) must divide expand * d_model ({E})")
        heads = E // P
    else:
        heads = _checks.positive_int(num_heads, "num_heads")
        P = _checks.positive_int(head_dim, "head_dim")
        if heads * P != E:
            raise ValueError(f"{name}: num_heads * head_dim ({heads} * {P}) must equal "
                             f"expand * d_model ({E})")
    G = _checks.positive_int(n_groups, "n_groups")
    if heads % G:
        raise ValueError(f"{name}: n_groups ({G}) must divide the number of heads ({heads})")
    return D, E, heads, P, G


@constructor
def mamba2_mixer(
    d_model: int,
    *,
    state_size: int = 128,
    expand: int = 2,
    head_dim: int = 64,
    num_heads: Optional[int] = None,
    n_groups: int = 1,
    conv_kernel: int = 4,
    conv_bias: bool = True,
    bias: bool = False,
    activation: Callable = jax.nn.silu,
    time_step_limit: tuple = (0.0, math.inf),
    norm_eps: float = 1e-5,
    dt_min: float = 0.001,
    dt_max: float = 0.1,
    dt_init_floor: float = 1e-4,
    a_init_range: tuple = (1.0, 16.0),
    param_dtype=jnp.float32,
) -> Cell:
    """The Mamba-2 mixer (Dao & Gu 2024, Figure 6), without its norm and residual.

    .. math::
        [z_t; x_t; B_t; C_t; dt_t] &= W_{in} u_t, \\qquad
        [\\tilde x; \\tilde B; \\tilde C] = \\sigma(\\mathrm{conv}_k([x; B; C])) \\\\
        y &= \\mathrm{SSD}(\\tilde x, \\tilde B, \\tilde C, dt), \\qquad
        \\text{out}_t = W_{out}\\, \\mathrm{RMSNorm}_G(y_t \\odot \\mathrm{silu}(z_t))

    with :func:`ssd` and the gated RMSNorm over ``G`` equal groups of channels
    (``norm_before_gate=False``). Arguments as :func:`mamba2_block`.

    Returns:
      A :class:`~seqjax.Cell` from ``D`` to ``D`` features with params
      :class:`Mamba2Params` and state :class:`Mamba2State`.
    """
    D, E, heads, P, G = _mamba2_sizes("mamba2_mixer", d_model, expand, head_dim, num_heads,
                                      n_groups)
    N = _checks.positive_int(state_size, "state_size")
    CD = E + 2 * G * N
    conv = short_conv(CD, kernel_size=conv_kernel, bias=conv_bias, activation=activation,
                      param_dtype=param_dtype)
    core = ssd(heads, P, state_size=N, n_groups=G, time_step_limit=time_step_limit,
               dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor,
               a_init_range=a_init_range, param_dtype=param_dtype)
    gated_norm = rms_norm(E, eps=norm_eps, groups=G, param_dtype=param_dtype)

    def init(key, input_size):
        size = _checks.positive_int(input_size, "input_size")
        if size != D:
            raise ValueError(f"mamba2_mixer: input_size ({size}) must equal d_model ({D})")
        k_in, k_conv, k_ssd, k_norm, k_out = jax.random.split(key, 5)
        return Mamba2Params(
            linear_init_params(k_in, D, E + CD + heads, bias=bias, dtype=param_dtype),
            conv.init(k_conv, CD), core.init(k_ssd, CD + heads), gated_norm.init(k_norm, E),
            linear_init_params(k_out, E, D, bias=bias, dtype=param_dtype))

    def initial_state(params):
        return Mamba2State(conv.initial_state(params.conv), core.initial_state(params.ssd))

    def gate_out(params, y, z):
        y = gated_norm.parallel(params.norm, y * jax.nn.silu(z), (), None, None)[1]
        return linear(params.out_proj, y)

    def apply(params, state, u):
        _checks.step_input(u, D, "mamba2_mixer")
        zxbcdt = linear(params.in_proj, u.astype(dtype_of(params)))
        conv_state, xbc = conv.apply(params.conv, state.conv, zxbcdt[E:E + CD])
        ssm_state, y = core.apply(params.ssd, state.ssm,
                                  jnp.concatenate([xbc, zxbcdt[E + CD:]]))
        return Mamba2State(conv_state, ssm_state), gate_out(params, y, zxbcdt[:E])

    def parallel(params, us, state, valid, options):
        lengths = _lengths(valid)
        z, xbc, dt = linear_split(params.in_proj, us, (E, CD, heads))
        conv_state, xbc = run(conv, params.conv, xbc, None if state is None else state.conv,
                              lengths=lengths, keys=None, options=options)
        ssm_state, y = run(core, params.ssd, jnp.concatenate([xbc, dt], axis=-1),
                           None if state is None else state.ssm, lengths=lengths, keys=None,
                           options=options)
        return Mamba2State(conv_state, ssm_state), gate_out(params, y, z)

    return Cell(init, initial_state, apply, lambda p: p.in_proj.w.shape[0], D,
                parallel=parallel)


@constructor
def mamba2_block(
    d_model: int,
    *,
    state_size: int = 128,
    expand: int = 2,
    head_dim: int = 64,
    num_heads: Optional[int] = None,
    n_groups: int = 1,
    conv_kernel: int = 4,
    conv_bias: bool = True,
    bias: bool = False,
    activation: Callable = jax.nn.silu,
    time_step_limit: tuple = (0.0, math.inf),
    norm_eps: float = 1e-5,
    dt_min: float = 0.001,
    dt_max: float = 0.1,
    dt_init_floor: float = 1e-4,
    a_init_range: tuple = (1.0, 16.0),
    param_dtype=jnp.float32,
) -> Cell:
    """The Mamba-2 block: RMSNorm, the Mamba-2 mixer, a residual; no MLP.

    .. math::
        [z_t; x_t; B_t; C_t; dt_t] &= W_{in}\\, \\mathrm{RMSNorm}(h_t), \\qquad
        [\\tilde x; \\tilde B; \\tilde C] = \\sigma(\\mathrm{conv}_k([x; B; C])) \\\\
        \\Delta_t &= \\mathrm{clip}(\\mathrm{softplus}(dt_t + dt_{bias}),
            \\text{time\\_step\\_limit}), \\qquad A = -e^{A_{log}} \\\\
        S^h_t &= e^{\\Delta^h_t A^h} S^h_{t-1} + \\tilde B^g_t (\\Delta^h_t \\tilde x^h_t)^T,
            \\qquad y^h_t = S^{h\\,T}_t \\tilde C^g_t + D^h \\tilde x^h_t \\\\
        h'_t &= h_t + W_{out}\\, \\mathrm{RMSNorm}_G(y_t \\odot \\mathrm{silu}(z_t))

    ``H = expand * D / head_dim`` heads of ``P = head_dim`` channels, ``A`` and ``D`` a
    scalar per head, ``B, C`` in ``G = n_groups`` groups shared by ``H / G`` heads
    each (head ``h`` reads group ``h // (H / G)``), and a gated RMSNorm normalising
    ``G`` equal groups of channels separately (``norm_before_gate=False``). The SSM is
    :func:`ssd`, run chunkwise by :func:`seqjax.unroll` (the state-space duality), one
    step by ``apply``. As Mamba-2 language models stack it: no MLP, pre-norm RMSNorm.

    ``time_step_limit`` clips ``Delta`` in every path, the whole-sequence form and
    ``apply`` alike (``mamba_ssm``'s kernels do the same). transformers'
    ``Mamba2ForCausalLM`` clips only in its full-sequence path: its one-token cached
    step skips the clip, so with a limit other than ``(0, inf)`` its cached decoding
    differs from its own full forward; seqjax matches the full forward.

    Defaults are ``mamba_ssm``'s ``Mamba2`` (``d_state=128, d_conv=4, expand=2,
    headdim=64, ngroups=1``, ``dt_limit=(0, inf)``, conv bias, no projection biases)
    with its initialisation and its LM's RMSNorm epsilon (1e-5).

    Args:
      d_model: ``D``.
      state_size: ``N``.
      expand: ``E = expand * D`` inner channels.
      head_dim: ``P``.
      num_heads: ``H``; ``None``: ``E / head_dim``. Given, ``H * P`` must equal ``E``.
      n_groups: ``G``, the groups of ``B, C`` and of the gated norm.
      conv_kernel: ``k``.
      conv_bias: whether the convolution has a bias.
      bias: whether ``in_proj`` and ``out_proj`` have biases.
      activation: ``sigma`` after the convolution (the gate is always ``silu``).
      time_step_limit: ``(Delta_min, Delta_max)`` (``mamba_ssm``'s ``dt_limit``).
      norm_eps: the epsilon of the block's RMSNorm and of the gated norm.
      dt_min, dt_max, dt_init_floor: the initial range of ``softplus(dt_bias)``.
      a_init_range: the initial range of ``-A``.
      param_dtype: dtype of the params.

    Returns:
      A :func:`seqjax.blocks.residual` cell around :func:`mamba2_mixer` (params
      :class:`~seqjax.blocks.ResidualParams`, state :class:`Mamba2State`).

    References:
      Dao & Gu, "Transformers are SSMs: generalized models and efficient algorithms
      through structured state space duality", ICML 2024, arXiv:2405.21060 (section 7,
      Figure 6).
    """
    mixer = mamba2_mixer(d_model, state_size=state_size, expand=expand, head_dim=head_dim,
                         num_heads=num_heads, n_groups=n_groups, conv_kernel=conv_kernel,
                         conv_bias=conv_bias, bias=bias, activation=activation,
                         time_step_limit=time_step_limit, norm_eps=norm_eps, dt_min=dt_min,
                         dt_max=dt_max, dt_init_floor=dt_init_floor, a_init_range=a_init_range,
                         param_dtype=param_dtype)
    return residual(mixer, norm=functools.partial(rms_norm, eps=norm_eps,
                                                  param_dtype=param_dtype))


__all__ = ["Mamba2Params", "Mamba2State", "MambaParams", "MambaState", "SSDParams",
           "mamba2_block", "mamba2_mixer", "mamba_block", "mamba_mixer", "ssd"]
