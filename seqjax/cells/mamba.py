"""Mamba's state-space cells: the selective SSM S6 (Gu & Dao 2023, arXiv:2312.00752) and
Mamba-2's SSD core (Dao & Gu 2024, arXiv:2405.21060)."""

from __future__ import annotations

# -- S6 (modern cells I): imports, params, state and constructor
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax.cells._common import _draw, _linear_cell
from seqjax.cells._constructor import constructor
from seqjax.cells.contract import Array, Cell, Initializer


class S6Params(NamedTuple):
    """S6 parameters (Gu & Dao 2023): channels ``H``, state size ``N``, rank ``R``.

    ``a_log [H, N]``: ``A = -exp(a_log)``. ``w_b, w_c [H, N]``: ``s_B(x) = x W_B``,
    ``s_C(x) = x W_C``. ``w_delta_down [H, R]``, ``w_delta_up [R, H]`` and
    ``b_delta [H]``: ``Delta = softplus(x W_down W_up + b_Delta)``. ``d [H]``: the
    skip ``D``.
    """

    a_log: Array
    w_b: Array
    w_c: Array
    w_delta_down: Array
    w_delta_up: Array
    b_delta: Array
    d: Array


class S6Features(NamedTuple):
    """One step's projections of its input ``x [H]``: ``delta [H]``, ``delta_x =
    Delta * x [H]``, ``b = s_B(x) [N]``, ``c = s_C(x) [N]`` and ``x`` itself (for the
    skip)."""

    delta: Array
    delta_x: Array
    b: Array
    c: Array
    x: Array


def _uniform(scale):
    """``U(-scale, scale)`` as an initialiser."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


@constructor
def s6(
    hidden_size: int,
    *,
    state_size: int = 16,
    delta_rank: Optional[int] = None,
    dt_min: float = 0.001,
    dt_max: float = 0.1,
    dt_init_floor: float = 1e-4,
    dt_scale: float = 1.0,
    kernel_init: Initializer = jax.nn.initializers.variance_scaling(1 / 3, "fan_in",
                                                                     "uniform"),
    param_dtype=jnp.float32,
) -> Cell:
    """S6, Mamba's selective state-space model: a diagonal SSM whose ``Delta, B, C``
    depend on the input.

    .. math::
        B_t &= x_t W_B, \\quad C_t = x_t W_C \\quad [N], \\qquad
        \\Delta_t = \\mathrm{softplus}(x_t W_{\\Delta,down} W_{\\Delta,up} + b_\\Delta)
            \\quad [H] \\\\
        \\bar A_t &= \\exp(\\Delta_t A) \\quad \\text{(zero-order hold)}, \\qquad
        \\bar B_t = \\Delta_t B_t \\quad \\text{(Euler)} \\quad [H, N] \\\\
        h_t &= \\bar A_t \\odot h_{t-1} + \\bar B_t \\odot x_t, \\qquad
        y_t = h_t C_t + D \\odot x_t

    Algorithm 2 of Gu & Dao with ``A`` diagonal: every channel ``d`` of ``x`` has
    its own ``N`` states ``h[d, :]``, with its own step ``Delta[d]`` and decays
    ``A[d, :]``; ``B_t`` and ``C_t`` are shared by the channels. ``A`` is
    discretised by zero-order hold and ``B`` by the simplified Euler rule
    ``Delta B``, as Mamba's ``selective_scan_ref`` does. The recurrence is
    diagonal, so :func:`seqjax.unroll` runs it as an associative scan over the
    ``[H, N]`` state; ``apply`` is one step.

    ``s_Delta`` is Mamba's low-rank projection (``x_proj`` then ``dt_proj``); the
    paper's Algorithm 2 writes ``Broadcast_D(Linear_1(x))``, the rank-1 case up to
    the ``W_up`` scale. The Mamba block around the cell (input and gate
    projections, the causal depthwise convolution, ``y * silu(z)``, the output
    projection) is not part of it.

    Initialisation (Mamba's): S4D-real ``A[d, n] = -(n + 1)``; ``D = 1``;
    ``W_B, W_C, W_down`` as PyTorch's ``nn.Linear`` (``U(+-1/sqrt(H))``);
    ``W_up ~ U(+-dt_scale / sqrt(R))``; ``b_Delta = softplus^-1(dt)`` with ``dt``
    log-uniform on ``[dt_min, dt_max]``, floored at ``dt_init_floor``.

    Args:
      hidden_size: ``H``, the channels of ``x`` and ``y`` (``input_size`` must equal
        it: the skip ``D * x`` and ``Delta`` are per channel).
      state_size: ``N`` per channel (Mamba: 16).
      delta_rank: ``R``; ``None`` is ``ceil(H / 16)`` (Mamba's ``dt_rank="auto"``,
        which Mamba computes from its block's model width).
      dt_min, dt_max, dt_init_floor, dt_scale: Mamba's initialisation of ``Delta``.
      kernel_init: initialiser of ``W_B``, ``W_C`` and ``W_down``.
      param_dtype: dtype of the parameters; inputs are cast to it.

    Returns:
      A :class:`Cell` with params :class:`S6Params`, state ``h [H, N]``, output
      ``y [H]``. ``3HN + 2HR + 2H`` parameters.

    References:
      Gu & Dao, "Mamba: Linear-time sequence modeling with selective state spaces",
      arXiv:2312.00752, 2023, section 3 and Algorithm 2.
    """
    H = _checks.positive_int(hidden_size, "hidden_size")
    N = _checks.positive_int(state_size, "state_size")
    R = math.ceil(H / 16) if delta_rank is None else _checks.positive_int(delta_rank,
                                                                         "delta_rank")
    if not 0.0 < dt_min <= dt_max:
        raise ValueError(f"s6 needs 0 < dt_min <= dt_max, got dt_min={dt_min}, "
                         f"dt_max={dt_max}")
    for name, value in (("dt_max", dt_max), ("dt_init_floor", dt_init_floor),
                        ("dt_scale", dt_scale)):
        _checks.real(value, name, "s6")

    def init(key, input_size_):
        I = _checks.positive_int(input_size_, "input_size")
        if I != H:
            raise ValueError(
                f"s6: Delta and the skip D*x are per channel, so input_size must equal "
                f"hidden_size ({H}); got input_size={I}. Project the inputs to {H} "
                f"features first")
        k_b, k_c, k_down, k_up, k_dt = jax.random.split(key, 5)
        work = jnp.float32 if jnp.dtype(param_dtype).itemsize < 4 else param_dtype
        a_log = jnp.log(jnp.broadcast_to(jnp.arange(1, N + 1, dtype=work), (H, N)))
        u = jax.random.uniform(k_dt, (H,), work)
        dt = jnp.maximum(jnp.exp(u * (math.log(dt_max) - math.log(dt_min))
                                 + math.log(dt_min)), dt_init_floor)
        b_delta = dt + jnp.log(-jnp.expm1(-dt))  # softplus^-1
        return S6Params(
            a_log.astype(param_dtype),
            _draw(kernel_init, k_b, (H, N), param_dtype),
            _draw(kernel_init, k_c, (H, N), param_dtype),
            _draw(kernel_init, k_down, (H, R), param_dtype),
            _draw(_uniform(dt_scale / math.sqrt(R)), k_up, (R, H), param_dtype),
            b_delta.astype(param_dtype),
            jnp.ones((H,), param_dtype),
        )

    def features(params, xs):
        # everything that needs only the step's input, [..., H] or [..., N] per step;
        # the [H, N] coefficients are formed from these (inside the loop, when sequential)
        pre = (xs @ params.w_delta_down) @ params.w_delta_up
        delta = jax.nn.softplus(pre + jnp.broadcast_to(params.b_delta, pre.shape))
        return S6Features(delta, delta * xs, xs @ params.w_b, xs @ params.w_c, xs)

    # Delta A by broadcasting: as an einsum ("...d,dn->...dn", a dot_general batched
    # over d) its transpose in the backward pass went through a layout copy of every
    # step's [B, H, N], the largest single cost of XLA:CPU's loop in a profile; the
    # other two products were faster as einsums than by broadcasting
    def coefficients(params, f):
        A = -jnp.exp(params.a_log)
        a = jnp.exp(f.delta[..., :, None] * A.reshape((1,) * (f.delta.ndim - 1) + A.shape))
        b = jnp.einsum("...d,...n->...dn", f.delta_x, f.b)
        return a, b

    def readout(params, hs, f):
        y = jnp.einsum("...dn,...n->...d", hs, f.c)
        return y + jnp.broadcast_to(params.d, f.x.shape) * f.x

    return _linear_cell("s6", H, lambda p: ((H, N), p.a_log.dtype), init, coefficients,
                        readout, lambda p: p.w_b.shape[0], features)


# -- Mamba-2 (matrix-state cells): imports, params, state and constructor
import math  # noqa: E402,F811 (this section's own imports)
from typing import NamedTuple, Optional  # noqa: E402,F811

import jax  # noqa: E402,F811
import jax.numpy as jnp  # noqa: E402,F811
from jax import lax  # noqa: E402

from seqjax import _checks  # noqa: E402,F811
from seqjax import chunkwise as _chunkwise  # noqa: E402
from seqjax.cells._common import _affine, _draw  # noqa: E402,F811
from seqjax.cells._constructor import constructor  # noqa: E402,F811
from seqjax.cells.contract import Array, Cell, Initializer  # noqa: E402,F811


class Mamba2Params(NamedTuple):
    """Mamba-2 SSD layer parameters (Dao & Gu 2024): ``heads`` heads of ``P = H /
    heads`` channels, state size ``N``.

    ``w_x [I, H]``: the SSM input ``x``. ``w_z [I, H]``: the gate ``z``.
    ``w_b, w_c [I, N]``: ``B`` and ``C``, shared by the heads (one group).
    ``w_delta [I, heads]``, ``b_delta [heads]``: ``Delta = softplus(x w_delta +
    b_delta)``. ``a_log [heads]``: ``A = -exp(a_log)``, a scalar per head. ``d
    [heads]``: the skip ``D``. ``norm_scale [H]``: the gated RMSNorm's scale.
    """

    w_x: Array
    w_z: Array
    w_b: Array
    w_c: Array
    w_delta: Array
    b_delta: Array
    a_log: Array
    d: Array
    norm_scale: Array


@constructor
def mamba2(
    hidden_size: int,
    *,
    num_heads: Optional[int] = None,
    state_size: int = 64,
    dt_min: float = 0.001,
    dt_max: float = 0.1,
    dt_init_floor: float = 1e-4,
    a_init_range: tuple = (1.0, 16.0),
    norm_eps: float = 1e-5,
    kernel_init: Initializer = jax.nn.initializers.variance_scaling(1 / 3, "fan_in",
                                                                     "uniform"),
    param_dtype=jnp.float32,
) -> Cell:
    """Mamba-2's SSD layer core: a selective SSM with ``A`` a scalar times the identity.

    Per head ``h`` (``P`` channels), with ``x_t`` the cell's input ``u_t``:

    .. math::
        x_t &= \\mathrm{silu}(W_x u_t), \\quad B_t = \\mathrm{silu}(W_B u_t), \\quad
            C_t = \\mathrm{silu}(W_C u_t), \\quad
            \\Delta_t = \\mathrm{softplus}(w_\\Delta^T u_t + b_\\Delta) \\\\
        h_t &= e^{\\Delta_t A} h_{t-1} + B_t (\\Delta_t x_t)^T \\quad [N, P], \\qquad
            \\tilde y_t = h_t^T C_t + D x_t \\\\
        y_t &= \\mathrm{RMSNorm}(\\tilde y_t \\odot \\mathrm{silu}(W_z u_t))

    The SSD recurrence (section 3 and Listing 1 of Dao & Gu): because ``A`` is a
    scalar per head, the sequence map is a masked "attention" ``(C B^T) \\odot L``
    with the 1-semiseparable decay matrix ``L``, so :func:`seqjax.unroll` runs it in
    the chunkwise "state-space duality" form of
    :func:`seqjax.chunkwise.gated_outer_product` (intra-chunk matmuls, a scan over
    chunk states); ``apply`` is one step. The state is stored ``[heads, N, P]``
    (``mamba_ssm`` stores ``[heads, P, N]``).

    The cell is the ``Mamba2`` layer of ``mamba_ssm`` between its input and output
    projections, with one group (``B, C`` shared by the heads) and the gated RMSNorm
    over all ``H`` channels (``norm_before_gate=False``): input ``[I]``, output
    ``[H]``. The layer's causal depthwise convolution over ``x, B, C`` and its output
    projection are not part of it; the ``silu`` that follows the convolution in the
    layer acts on the projections directly.

    Initialisation (``mamba_ssm``'s ``Mamba2``): projections as ``nn.Linear``
    (``U(+-1/sqrt(I))``); ``A`` uniform on ``a_init_range`` (``a_log = log A``);
    ``b_delta = softplus^-1(dt)`` with ``dt`` log-uniform on ``[dt_min, dt_max]``,
    floored at ``dt_init_floor``; ``D = 1``; norm scale 1.

    Args:
      hidden_size: ``H = heads * P``, the size of ``y``.
      num_heads: number of heads (must divide ``H``); ``None``: one per 64 channels,
        ``P = 64`` as ``mamba_ssm`` (:func:`seqjax.chunkwise.head_split`).
      state_size: ``N``.
      dt_min, dt_max, dt_init_floor: initial range of ``Delta``.
      a_init_range: initial range of ``-A``.
      norm_eps: the RMSNorm's epsilon.
      kernel_init: initialiser of ``W_x, W_z, W_B, W_C, w_Delta``.
      param_dtype: dtype of the parameters; inputs are cast to it. 16-bit params
        compute the recurrence in float32 and store the state in ``param_dtype``.

    Returns:
      A :class:`Cell` with params :class:`Mamba2Params`, state ``h [heads, N, P]``,
      output ``y [H]``; ``cell.chunkwise`` is set. ``2 I H + 2 I N + I heads +
      3 heads + H`` parameters.

    References:
      Dao & Gu, "Transformers are SSMs: generalized models and efficient algorithms
      through structured state space duality", ICML 2024, arXiv:2405.21060.
    """
    H, heads, _, P = _chunkwise.head_split("mamba2", hidden_size, num_heads)
    N = _checks.positive_int(state_size, "state_size")
    if not 0.0 < dt_min <= dt_max:
        raise ValueError(f"mamba2 needs 0 < dt_min <= dt_max, got dt_min={dt_min}, "
                         f"dt_max={dt_max}")
    low, high = a_init_range
    if not 0.0 < low <= high:
        raise ValueError(f"mamba2 needs 0 < a_init_range[0] <= a_init_range[1], got "
                         f"{a_init_range}")
    for name, value in (("dt_max", dt_max), ("dt_init_floor", dt_init_floor),
                        ("a_init_range[1]", high)):
        _checks.real(value, name, "mamba2")
    _checks.real(norm_eps, "norm_eps", "mamba2", above=0.0,
                 why="it keeps the gated RMSNorm's rsqrt(mean(y^2) + norm_eps) finite where "
                     "y = 0")
    recurrence = _chunkwise.gated_outer_product(normalised=False)

    def init(key, input_size_):
        I = _checks.positive_int(input_size_, "input_size")
        kx, kz, kb, kc, kd, kdt, ka = jax.random.split(key, 7)
        draw = lambda k, shape: _draw(kernel_init, k, shape, param_dtype)
        u = jax.random.uniform(kdt, (heads,), jnp.float32)
        dt = jnp.maximum(jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)),
                         dt_init_floor)
        b_delta = dt + jnp.log(-jnp.expm1(-dt))  # softplus^-1
        A = jax.random.uniform(ka, (heads,), jnp.float32, low, high)
        return Mamba2Params(
            draw(kx, (I, H)), draw(kz, (I, H)), draw(kb, (I, N)), draw(kc, (I, N)),
            draw(kd, (I, heads)), b_delta.astype(param_dtype), jnp.log(A).astype(param_dtype),
            jnp.ones((heads,), param_dtype), jnp.ones((H,), param_dtype))

    def initial_state(params):
        return jnp.zeros((heads, N, P), params.w_x.dtype)

    def ssm_input(params, xs):
        return jax.nn.silu(xs @ params.w_x).reshape(xs.shape[:-1] + (heads, P))

    def features(params, xs):
        delta = jax.nn.softplus(_affine(xs, params.w_delta, params.b_delta))  # [..., heads]
        log_a = -delta * jnp.exp(jnp.broadcast_to(params.a_log, delta.shape))  # Delta A
        B = jax.nn.silu(xs @ params.w_b)[..., None, :]  # [..., 1, N], shared by the heads
        C = jax.nn.silu(xs @ params.w_c)[..., None, :]
        return _chunkwise.GatedFeatures(C, B, delta[..., None] * ssm_input(params, xs), log_a,
                                        None)

    def readout(params, o, xs):
        x = ssm_input(params, xs)
        y = o + jnp.broadcast_to(params.d[:, None], x.shape) * x
        y = y.reshape(xs.shape[:-1] + (H,)) * jax.nn.silu(xs @ params.w_z)
        y = y * lax.rsqrt(jnp.mean(y * y, axis=-1, keepdims=True) + norm_eps)
        return y * jnp.broadcast_to(params.norm_scale, y.shape)

    return _chunkwise.chunkwise_cell(init, initial_state, lambda p: p.w_x.shape[0], H,
                                     "mamba2", features, recurrence, readout)
