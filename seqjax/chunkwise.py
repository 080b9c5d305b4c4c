"""Matrix-state recurrences and their chunkwise-parallel forms.

Two machineries, each with a one-step form (what ``apply`` streams) and a
chunkwise-parallel form over a whole sequence (what :func:`seqjax.unroll` uses). Every
state is a matrix ``S [d_k, d_v]`` per head (stored ``[heads, d_k, d_v]``, the layout of
flash-linear-attention and ``mlstm_kernels``), read by a query: ``o_t = S_t^T q_t``.

**Scalar-gated outer products** (:func:`gated_outer_product`; mLSTM, Mamba-2 and
GLA-style cells with one decay per head):

.. math::
    S_t = f_t S_{t-1} + i_t k_t v_t^T, \\qquad o_t = S_t^T q_t,

with ``f_t = exp(log_f_t) <= 1`` and, for the mLSTM, an exponential input gate
``i_t = exp(log_i_t)``, a normaliser ``n_t = f_t n_{t-1} + i_t k_t`` and the stabiliser
``m_t = max(log_f_t + m_{t-1}, log_i_t)``. The stored state is ``(C, n) exp(-m)``, so
no exponential ever exceeds 1, and the read-out is
``h_t = C_t^T q_t / (max(|n_t^T q_t|, exp(-m_t)) + eps)`` (Beck et al. 2024, eqs. 19-27).

*Chunkwise form.* Cut the sequence into chunks of ``L`` steps. Inside a chunk, with
``b_r = sum_{s<=r} log_f_s`` and the segment sums ``seg[r, j] = sum_{j<s<=r} log_f_s``
(summed from the gates themselves, as Mamba-2's minimal SSD listing does, in two
levels to keep it ``O(L^2)``; not as ``b_r - b_j``, which loses float32 accuracy once
``b`` is large), every output is a masked attention plus the contribution of the
state entering the chunk:

.. math::
    o_r = \\sum_{j \\le r} e^{seg[r,j] + \\log i_j - m_r} (q_r \\cdot k_j) v_j
          + e^{b_r + m_0 - m_r} S_0^T q_r ,
    \\qquad m_r = \\max(b_r + m_0, \\max_{j \\le r} (seg[r,j] + \\log i_j)),

which is the recurrent ``m_r`` itself (its inner maximum is ``b_r + cummax_j(log i_j
- b_j)``, ``O(L)``), so the chunked form and the step form compute the same numbers
(and the same ``eps``). Only the state crosses chunks:
``S_L = e^{b_L + m_0 - m_L} S_0 + sum_j e^{seg[L,j] + log i_j - m_L} k_j v_j^T``; the
sequential part is a scan over ``T / L`` chunks of elementwise work, and everything
else is batched matmuls over all chunks at once. Without an input gate (Mamba-2,
``log_i = 0``, ``m = 0``) the same formulas hold with ``m`` fixed at 0.

**The delta rule** (:func:`delta_rule`; DeltaNet, Gated DeltaNet):

.. math::
    S_t = \\alpha_t (I - \\beta_t k_t k_t^T) S_{t-1} + \\beta_t k_t v_t^T ,
    \\qquad o_t = S_t^T q_t .

*Chunkwise form* (the WY representation; Yang et al. 2024, eqs. 6-9, with the decay of
Yang et al. 2025): inside a chunk, with ``Gamma_r = sum_{s<=r} log alpha_s`` and
``Lambda[r, s] = exp(seg[r, s])``, the per-step writes ``u_r`` solve one unit lower
triangular system (the UT transform; its inverse is formed by doubling blocks, batched
matmuls only),

.. math::
    (I + \\mathrm{tril}_{-1}(\\mathrm{diag}(\\beta) K K^T \\odot \\Lambda))\\, [U \\,|\\, W]
    = [\\mathrm{diag}(\\beta) V \\,|\\, \\mathrm{diag}(\\beta e^{\\Gamma}) K],

after which a chunk's update is ``U - W S_0`` and
``S_L = e^{Gamma_L} S_0 + (Lambda[L] * K)^T (U - W S_0)``,
``O = (e^{Gamma} * Q) S_0 + tril(Q K^T * Lambda) (U - W S_0)``. The sequential part is a
scan over chunks with two ``[L, d_k] x [d_k, d_v]``-sized matmuls.

Lengths: a padded step is neutral (decay 1 and no write: ``log_f = 0`` and its column
masked, or ``alpha = 1, beta = 0``), so the state after it is the state before it. An
uneven last chunk is padded with such steps. Memory: the forward pass keeps one state
per chunk (never one per step), which is also what the backward pass saves.

16-bit inputs are computed in float32 (gate sums, exponentials, matmuls) and the results
cast back; ``m`` is stored rounded to the state dtype together with ``C, n`` scaled to
match, so the stored state stays self-consistent.

References:
  Beck et al., "xLSTM: Extended long short-term memory", NeurIPS 2024, arXiv:2405.04517.
  Yang, Wang, Zhang, Shen & Kim, "Parallelizing linear transformers with the delta rule
  over sequence length", NeurIPS 2024, arXiv:2406.06484.
  Yang, Kautz & Hatamizadeh, "Gated delta networks: improving Mamba2 with delta rule",
  ICLR 2025, arXiv:2412.06464.
  Dao & Gu, "Transformers are SSMs: generalized models and efficient algorithms through
  structured state space duality", ICML 2024, arXiv:2405.21060 (Listing 1, ``segsum``).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from seqjax import _checks
from seqjax.cells.contract import Array, Cell, Chunkwise

_einsum = jnp.einsum


def _jit(*static):
    """Every machinery function is jitted once here (chunk length and ``eps`` static):
    inside a caller's jit it is inlined; called eagerly it compiles once per shape
    rather than once per operation."""
    return functools.partial(jax.jit, static_argnames=static)


# Chunk length of the chunkwise form, by backend. XLA:CPU (2 shared cores): measured with
# `python benchmarks/chunkwise.py speed` (B=8, T=2048, H=64, heads of 64; fwd+bwd; chunks
# 16, 32, 64, 128; interleaved with the plain scan): chunk / scan time was 0.20 / 0.29 /
# 0.39 / 0.24 (mlstm / delta_net / gated_delta_net / mamba2, median of rounds) at 32
# against 0.17 / 0.34 / 0.48 / 0.24 at 64; 32 was best or within noise of best for every
# cell and best for the delta rule, whose [L, L] triangular inverse grows as L^3; it
# also halves the [L, L] intermediates. Other backends: unmeasured; 64, the chunk of
# flash-linear-attention's and xLSTM's GPU kernels.
CHUNK_SIZE_BY_BACKEND = {"cpu": 32}
CHUNK_SIZE_UNMEASURED = 64


def default_chunk_size(backend: Optional[str] = None) -> int:
    """The chunk length :func:`seqjax.unroll` uses on ``backend`` (default: JAX's)."""
    return CHUNK_SIZE_BY_BACKEND.get(backend or jax.default_backend(), CHUNK_SIZE_UNMEASURED)


class Recurrence(NamedTuple):
    """One machinery: a one-step form and a chunkwise-parallel form of the same recurrence.

    Attributes:
      update: ``(state, features) -> state``, one step of one example.
      read: ``(state, features) -> o``: what a step reads from the state it produced.
      chunked: ``(state [B, ...], features [T, B, ...], valid [T, B] or None,
        chunk_size) -> (state [B, ...], o [T, B, ...])``.
    """

    update: Callable
    read: Callable
    chunked: Callable


class GatedFeatures(NamedTuple):
    """Per-step inputs of a scalar-gated outer-product recurrence (any leading axes).

    ``q, k [..., heads or 1, d_k]`` (a head axis of 1 is shared by all heads, as
    Mamba-2's ``B, C``), ``v [..., heads, d_v]``, ``log_f [..., heads]`` (``<= 0``) and
    ``log_i [..., heads]`` or ``None`` (no input gate).
    """

    q: Array
    k: Array
    v: Array
    log_f: Array
    log_i: Optional[Array]


class DeltaFeatures(NamedTuple):
    """Per-step inputs of the (gated) delta rule (any leading axes).

    ``q, k [..., heads, d_k]`` (``k`` unit-norm for a contraction), ``v [..., heads,
    d_v]``, ``beta [..., heads]`` in ``[0, 1]``, ``log_alpha [..., heads]`` (``<= 0``)
    or ``None`` (no decay: DeltaNet).
    """

    q: Array
    k: Array
    v: Array
    beta: Array
    log_alpha: Optional[Array]


class Normalised(NamedTuple):
    """State of the normalised, stabilised gated recurrence (the mLSTM's memory).

    ``C [heads, d_k, d_v]`` and ``n [heads, d_k]`` stored scaled by ``exp(-m)``;
    ``m [heads]`` the stabiliser.
    """

    C: Array
    n: Array
    m: Array


# ----------------------------------------------------------------------------- helpers


def _work(dtype):
    """The dtype the machinery computes in: at least float32."""
    return jnp.dtype(jnp.float32) if jnp.dtype(dtype).itemsize < 4 else jnp.dtype(dtype)


def _lead(mask, ndim):
    """``mask`` with leading singleton axes up to rank ``ndim`` (rank promotion is strict)."""
    return mask.reshape((1,) * (ndim - mask.ndim) + mask.shape)


def _segment_sums(a):
    """``a [..., L] -> [..., L, L]``: ``sum_{j < s <= r} a_s`` for ``j <= r``, 0 above.

    A cumulative sum down every column of the masked gates (Dao & Gu 2024, Listing 1,
    ``segsum``): each entry adds only its own segment's gates. ``O(L^2)`` per column
    (XLA's cumulative sum), so only for short axes.
    """
    L = a.shape[-1]
    r = jnp.arange(L)
    below = _lead(r[:, None] > r[None, :], a.ndim + 1)
    return jnp.cumsum(jnp.where(below, jnp.broadcast_to(a[..., :, None], a.shape + (L,)), 0),
                      axis=-2)


@functools.lru_cache(maxsize=None)
def _segment_mask(L: int):
    """``[L, L * L]`` numpy 0/1: entry ``(s, r * L + j)`` is 1 where ``j < s <= r``."""
    import numpy as np

    r = np.arange(L)
    s = r[:, None, None]
    return ((s > r[None, None, :]) & (s <= r[None, :, None])).reshape(L, L * L)


# up to this chunk length :func:`_segsum` is one matmul with an [L, L * L] mask (1 MiB
# of float32 at 64); longer chunks take the two-level masked cumulative sums
_SEGSUM_MATMUL_MAX = 64


def _segsum(a, block: int = 8):
    """``a [..., L] -> [..., L, L]``: ``sum_{j < s <= r} a_s`` for ``j <= r``, ``-inf`` above.

    The decays inside a chunk, each entry summed from its own segment's gates, never
    as a difference of two running sums: with gates ``a <= 0`` every partial sum has
    one sign, so each entry is accurate to its own magnitude, and the diagonal is
    exactly 0 (``exp`` of it exactly 1). A difference ``b_r - b_j`` of running sums is
    only accurate to ``b_r``'s magnitude: under strong decay (``a`` down to -45 per
    step) that is an error of ``1e-4`` in an exponent whose true value is 0.

    Up to ``L = 64`` the sums are one matmul of the gates with a constant 0/1 mask
    ``[L, L * L]`` (at full float32 precision: a sum of terms of one sign in any
    order). A gate of ``-inf`` (a decay of exactly 0) enters the matmul as a large
    finite floor (``0 * -inf`` would be NaN) and every sum that contains it is set back
    to ``-inf``; the gates reaching here are finite or ``-inf`` (:func:`_prepare`).
    Longer chunks use two levels that keep this ``O(L^2)``: inside blocks of ``block``
    steps, the masked cumulative sums of Dao & Gu 2024 (Listing 1, ``segsum``) on
    ``[block, block]`` tiles, which give the diagonal blocks; across blocks, entry
    ``(r, j)`` with ``r`` in block ``R > J``, the block of ``j``, is ``c_r + rest_j +
    sum_{J < K < R} total_K`` (``c`` the sum up to ``r`` in its block, ``rest`` the sum
    after ``j`` in its block, ``total`` the blocks' sums): terms of one sign. Nothing
    from a step after ``r`` enters row ``r``, and a gate of ``-inf`` gives ``-inf``,
    never ``inf - inf``.
    """
    L = a.shape[-1]
    lower = _lower(L, a.ndim + 1)
    if L <= _SEGSUM_MATMUL_MAX:
        floor = jnp.asarray(jnp.finfo(a.dtype).min / (2 * L), a.dtype)  # L of them: finite
        sums = jnp.matmul(jnp.maximum(a, floor), jnp.asarray(_segment_mask(L), a.dtype),
                          precision=lax.Precision.HIGHEST).reshape(a.shape + (L,))
        return jnp.where(lower & (sums > floor), sums, -jnp.inf)
    pad = -L % block
    if pad:  # zero gates at the end: sums of real entries are unchanged
        a = jnp.concatenate([a, jnp.zeros(a.shape[:-1] + (pad,), a.dtype)], axis=-1)
    m = a.shape[-1] // block
    x = a.reshape(a.shape[:-1] + (m, block))
    inside = _segment_sums(x)  # [.., m, block, block]: the diagonal blocks, exactly
    c = jnp.cumsum(x, axis=-1)  # sum_{u <= i} in the block
    rest = jnp.concatenate([jnp.cumsum(x[..., :0:-1], axis=-1)[..., ::-1],
                            jnp.zeros(x.shape[:-1] + (1,), a.dtype)], axis=-1)  # u > i
    between = _segment_sums(c[..., -1])  # [.., m, m]: sum_{J < K <= R} total_K
    between = jnp.concatenate([jnp.zeros_like(between[..., :1, :]), between[..., :-1, :]],
                              axis=-2)  # sum_{J < K < R} total_K at [R, J]
    across = (c[..., :, :, None, None] + rest[..., None, None, :, :]
              + between[..., :, None, :, None])  # [.., R, r, J, j]
    same = _lead(jnp.eye(m, dtype=bool)[:, None, :, None], across.ndim)
    out = jnp.where(same, inside[..., :, :, None, :], across)
    out = out.reshape(a.shape[:-1] + (m * block, m * block))
    return jnp.where(lower, out[..., :L, :L], -jnp.inf)


def _chunk(x, L):
    """``[n*L, B, heads, (d)] -> [n, B, heads, L, (d)]``."""
    x = x.reshape((x.shape[0] // L, L) + x.shape[1:])
    return jnp.moveaxis(x, 1, 3)


def _unchunk(y):
    """``[n, B, heads, L, d] -> [n*L, B, heads, d]``."""
    y = jnp.moveaxis(y, 3, 1)
    return y.reshape((-1,) + y.shape[2:])


def _prepare(features, valid, chunk_size, neutral):
    """Pads ``[T, B, ...]`` features to whole chunks and sets non-finite writes aside.

    Returns ``(features, valid, L, T, poisoned)``, all padded to whole chunks.
    ``neutral`` maps ``(features, valid)`` to features whose invalid steps leave the
    state unchanged.

    A step whose write is not finite (a NaN or infinite key, value, ``beta`` or input
    gate, a NaN or ``+inf`` log-decay) makes the state, and so every output from that
    step on, NaN in the step form. Inside a chunk, however, the triangular matmuls
    multiply such a step's entries by the zeros above the diagonal, and ``0 * NaN`` is
    NaN: it would reach the outputs *before* it. So such entries are replaced by zeros
    (an input gate and a log-decay keep a legitimate ``-inf``) and the step is
    recorded in ``poisoned [T, B, heads]``, true from the first bad valid step of a head
    on (padding repeats its last step); :func:`_poison` then sets those outputs and the
    final state to NaN, as the step form has them. A query only reaches its own step's
    output and needs none of this.
    """
    T = features.q.shape[0]
    L = min(_checks.positive_int(chunk_size, "chunk_size"), T)
    bad = _bad_writes(features)
    if valid is not None:  # what a padded step holds never counts
        bad = bad & _lead(valid[..., None], bad.ndim)
    poisoned = jnp.cumsum(bad, axis=0, dtype=jnp.int32) > 0  # from the first bad step on
    features = _finite_writes(features)
    pad = -T % L
    if pad:
        batch = features.q.shape[1]
        poisoned = jnp.pad(poisoned, [(0, pad)] + [(0, 0)] * (poisoned.ndim - 1), mode="edge")
        valid = jnp.ones((T, batch), bool) if valid is None else valid
        valid = jnp.concatenate([valid, jnp.zeros((pad, batch), bool)])
        features = jax.tree_util.tree_map(
            lambda a: jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)]), features)
    if valid is not None:
        features = neutral(features, valid)
    return features, valid, L, T, poisoned


def _not_below_inf(x):
    """``x`` is NaN or ``+inf`` (a log-gate of ``-inf`` is a legitimate 0)."""
    return ~(x < jnp.inf)


def _bad_writes(f):
    """``[T, B, heads]``: whether step ``t`` writes something non-finite to a head."""
    bad = ~jnp.all(jnp.isfinite(f.k), axis=-1) | ~jnp.all(jnp.isfinite(f.v), axis=-1)
    if isinstance(f, GatedFeatures):
        gates = [f.log_f] + ([] if f.log_i is None else [f.log_i])
        return functools.reduce(jnp.logical_or, [bad] + [_not_below_inf(g) for g in gates])
    gates = [~jnp.isfinite(f.beta)] + ([] if f.log_alpha is None else
                                       [_not_below_inf(f.log_alpha)])
    return functools.reduce(jnp.logical_or, [bad] + gates)


def _finite_writes(f):
    """``f`` with its non-finite write entries replaced by finite ones (see
    :func:`_prepare`); the steps they belong to are poisoned."""
    def zero(x):
        return jnp.where(jnp.isfinite(x), x, jnp.zeros((), x.dtype))

    def log_gate(x, fill):
        return None if x is None else jnp.where(_not_below_inf(x),
                                                jnp.full((), fill, x.dtype), x)

    f = f._replace(k=zero(f.k), v=zero(f.v))
    if isinstance(f, GatedFeatures):
        return f._replace(log_f=log_gate(f.log_f, 0.0), log_i=log_gate(f.log_i, -jnp.inf))
    return f._replace(beta=zero(f.beta), log_alpha=log_gate(f.log_alpha, 0.0))


def _poison(final, o, poisoned, T):
    """NaN in the chunked outputs ``o [n, B, heads, L, d]`` and the final state's heads
    from the first non-finite write on (see :func:`_prepare`); the outputs are returned
    as ``[T, B, heads, d]``.

    Added, not selected: ``x + (-0.0)`` is ``x`` exactly (signed zeros and infinities
    included) and ``x + NaN`` is NaN, so the poison fuses into the computation of ``o``
    and its gradient is the identity, where a select would cost a pass of its own in
    both directions."""
    nan_or_zero = jnp.where(poisoned, jnp.full((), jnp.nan, o.dtype),
                            jnp.full((), -0.0, o.dtype))  # [n * L, B, heads]
    o = o + _chunk(nan_or_zero, o.shape[-2])[..., None]
    last = nan_or_zero[-1]  # [B, heads]
    final = jax.tree_util.tree_map(
        lambda s: s + last.reshape(last.shape + (1,) * (s.ndim - 2)).astype(s.dtype), final)
    return final, _unchunk(o)[:T]


def _lower(L, ndim):
    """``[L, L]`` booleans ``j <= r``, with leading singleton axes up to ``ndim``."""
    r = jnp.arange(L)
    return _lead(r[:, None] >= r[None, :], ndim)


def _heads(x, heads):
    return jnp.broadcast_to(x, x.shape[:-3] + (heads,) + x.shape[-2:])


# ------------------------------------------------------- scalar-gated outer products


def gated_outer_product(*, normalised: bool, eps: float = 1e-6) -> Recurrence:
    """The scalar-gated outer-product recurrence (see the module docstring).

    Args:
      normalised: the mLSTM form: exponential input gate ``exp(log_i)``, normaliser
        ``n``, stabiliser ``m``; state :class:`Normalised`, read-out
        ``C^T q / (max(|n^T q|, exp(-m)) + eps)``. Otherwise ``S_t = f_t S_{t-1} +
        k_t v_t^T`` (``log_i`` must be ``None``), state ``S [heads, d_k, d_v]``,
        read-out ``S^T q``.
      eps: added to the mLSTM's denominator (``1e-6`` in the xLSTM code).

    Returns:
      A :class:`Recurrence` over :class:`GatedFeatures`.
    """
    if normalised:
        return Recurrence(_normalised_update, functools.partial(_normalised_read, eps=eps),
                          functools.partial(_normalised_chunked, eps=eps))
    return Recurrence(_plain_update, _plain_read, _plain_chunked)


@_jit()
def _plain_update(S, f: GatedFeatures):
    if f.log_i is not None:
        raise ValueError("gated_outer_product(normalised=False) has no input gate; fold it "
                         "into k or v")
    dtype, work = S.dtype, _work(S.dtype)
    k, v = f.k.astype(work), f.v.astype(work)
    decay = jnp.exp(f.log_f.astype(work))[:, None, None]
    S = decay * S.astype(work) + k[:, :, None] * v[:, None, :]
    return S.astype(dtype)


@_jit()
def _plain_read(S, f: GatedFeatures):
    work = _work(S.dtype)
    q = jnp.broadcast_to(f.q.astype(work), S.shape[:1] + f.q.shape[-1:])
    return _einsum("hd,hde->he", q, S.astype(work)).astype(S.dtype)


def _neutral_gates(f, valid):
    ok = valid[..., None]
    return f._replace(log_f=jnp.where(ok, f.log_f, jnp.zeros((), f.log_f.dtype)))


@_jit("chunk_size")
def _plain_chunked(S0, f: GatedFeatures, valid, chunk_size):
    if f.log_i is not None:
        raise ValueError("gated_outer_product(normalised=False) has no input gate")
    dtype, work = S0.dtype, _work(S0.dtype)
    if f.q.shape[0] == 0:
        return S0, jnp.zeros((0,) + f.v.shape[1:], dtype)
    f, valid, L, T, poisoned = _prepare(f, valid, chunk_size, _neutral_gates)
    heads = f.v.shape[2]
    q, k, v = (_chunk(a.astype(work), L) for a in (f.q, f.k, f.v))  # [n, B, h|1, L, d]
    log_f = _chunk(f.log_f.astype(work), L)  # [n, B, heads, L]
    b = jnp.cumsum(log_f, axis=-1)  # from the chunk's start: terms of one sign
    G = _segsum(log_f)  # [n, B, heads, L, L]
    if valid is not None:  # a padded step writes nothing
        G = jnp.where(_chunk(valid[..., None], L)[..., None, :], G, -jnp.inf)
    D = jnp.exp(G)
    # what each chunk adds to the state, decayed to its end: sum_j D[L, j] k_j v_j^T
    kv = _einsum("...jd,...je->...de", D[..., -1, :, None] * _heads(k, heads), v)

    def body(S, inp):
        kv_c, total = inp
        return jnp.exp(total)[..., None, None] * S + kv_c, S

    final, starts = lax.scan(body, S0.astype(work), (kv, b[..., -1]))
    scores = jnp.where(_lower(L, D.ndim), _einsum("...rd,...jd->...rj", q, k) * D,
                       jnp.zeros((), work))
    o = (_einsum("...rj,...je->...re", scores, v)
         + jnp.exp(b)[..., None] * _einsum("...rd,...de->...re", _heads(q, heads), starts))
    final, o = _poison(final, o, poisoned, T)
    return final.astype(dtype), o.astype(dtype)


@_jit()
def _normalised_update(state: Normalised, f: GatedFeatures):
    dtype, work = state.C.dtype, _work(state.C.dtype)
    C, n, m = (a.astype(work) for a in state)
    k, v = f.k.astype(work), f.v.astype(work)
    log_f, log_i = f.log_f.astype(work), f.log_i.astype(work)
    m_new = jnp.maximum(log_f + m, log_i).astype(dtype).astype(work)  # stored as rounded
    decay, gain = jnp.exp(log_f + m - m_new), jnp.exp(log_i - m_new)
    C = decay[:, None, None] * C + gain[:, None, None] * (k[:, :, None] * v[:, None, :])
    n = decay[:, None] * n + gain[:, None] * k
    return type(state)(C.astype(dtype), n.astype(dtype), m_new.astype(dtype))


@_jit("eps")
def _normalised_read(state: Normalised, f: GatedFeatures, eps):
    dtype, work = state.C.dtype, _work(state.C.dtype)
    C, n, m = (a.astype(work) for a in state)
    q = f.q.astype(work)
    num = _einsum("hd,hde->he", q, C)
    den = jnp.maximum(jnp.abs(_einsum("hd,hd->h", q, n)), jnp.exp(-m)) + eps
    return (num / den[:, None]).astype(dtype)


def _neutral_normalised(f, valid):
    ok = valid[..., None]
    return f._replace(log_f=jnp.where(ok, f.log_f, jnp.zeros((), f.log_f.dtype)),
                      log_i=jnp.where(ok, f.log_i, jnp.full((), -jnp.inf, f.log_i.dtype)))


@_jit("chunk_size", "eps")
def _normalised_chunked(state: Normalised, f: GatedFeatures, valid, chunk_size, eps):
    dtype, work = state.C.dtype, _work(state.C.dtype)
    if f.q.shape[0] == 0:
        return state, jnp.zeros((0,) + f.v.shape[1:], dtype)
    f, valid, L, T, poisoned = _prepare(f, valid, chunk_size, _neutral_normalised)
    q, k, v = (_chunk(a.astype(work), L) for a in (f.q, f.k, f.v))  # [n, B, h, L, d]
    log_f, log_i = (_chunk(a.astype(work), L) for a in (f.log_f, f.log_i))
    b = jnp.cumsum(log_f, axis=-1)  # [n, B, h, L], from the chunk's start
    G = _segsum(log_f) + log_i[..., None, :]  # log weight of write j at step r; -inf above
    # the largest write reaching step r, max_{j <= r} G[r, j]: a row maximum of the
    # exact segment sums, so that m_r below is the step form's m_r to rounding (a
    # running form, b_r + cummax_j(log i_j - b_j), subtracts two long sums)
    local = jnp.max(G, axis=-1)  # [n, B, h, L]; -inf while no write reaches r
    # each chunk's writes decayed to its end, relative to their own maximum
    last, top = G[..., -1, :], local[..., -1]
    safe = jnp.where(jnp.isfinite(top), top, jnp.zeros((), work))
    wk = jnp.exp(last - safe[..., None])[..., None] * k
    kv, ksum = _einsum("...jd,...je->...de", wk, v), jnp.sum(wk, axis=-2)

    def body(carry, inp):
        C, n, m = carry
        kv_c, ksum_c, total, top_c = inp
        m_new = jnp.maximum(total + m, top_c)
        decay, gain = jnp.exp(total + m - m_new), jnp.exp(top_c - m_new)
        C = decay[..., None, None] * C + gain[..., None, None] * kv_c
        n = decay[..., None] * n + gain[..., None] * ksum_c
        return (C, n, m_new), (carry[0], carry[1], m)

    init = tuple(a.astype(work) for a in state)
    (C, n, m), (C0, n0, m0) = lax.scan(body, init, (kv, ksum, b[..., -1], top))
    # outputs, stabilised by the recurrent m_r of every step
    inter = b + m0[..., None]
    m_r = jnp.maximum(inter, local)
    D = jnp.exp(G - m_r[..., None])
    w = jnp.exp(inter - m_r)
    scores = jnp.where(_lower(L, D.ndim), _einsum("...rd,...jd->...rj", q, k) * D,
                       jnp.zeros((), work))
    num = (_einsum("...rj,...je->...re", scores, v)
           + w[..., None] * _einsum("...rd,...de->...re", q, C0))
    den = jnp.sum(scores, axis=-1) + w * _einsum("...rd,...d->...r", q, n0)
    h = num / (jnp.maximum(jnp.abs(den), jnp.exp(-m_r)) + eps)[..., None]
    # store m rounded to the state dtype, C and n rescaled to match
    m_stored = m.astype(dtype).astype(work)
    scale = jnp.exp(m - m_stored)
    final = type(state)(scale[..., None, None] * C, scale[..., None] * n, m_stored)
    final, h = _poison(final, h, poisoned, T)
    return jax.tree_util.tree_map(lambda a: a.astype(dtype), final), h.astype(dtype)


# ------------------------------------------------------------------------ delta rule


@jax.custom_jvp
def _unit_lower_inverse(N):
    """``(I + N)^{-1}`` for strictly lower triangular ``N [..., L, L]``, by blocks.

    Doubling the block size from 1: with the inverses ``A^{-1}, D^{-1}`` of two
    neighbouring diagonal blocks and ``C`` the block below the first,
    ``[[A, 0], [C, D]]^{-1} = [[A^{-1}, 0], [-D^{-1} C A^{-1}, D^{-1}]]``: ``log2 L``
    rounds of batched matmuls (about ``L^3 / 4`` multiply-adds in all), where a batched
    triangular solve runs one small system at a time on XLA:CPU. Differentiated by its
    own rule, not through the recursion.
    """
    L = N.shape[-1]
    size = 1 << max(L - 1, 0).bit_length()
    if size != L:  # pad with identity rows and columns: the leading block is unchanged
        N = jnp.pad(N, [(0, 0)] * (N.ndim - 2) + [(0, size - L), (0, size - L)])
    lead = N.shape[:-2]
    # top down: split every diagonal block in two, keeping the block below the first half
    blocks, below = N[..., None, :, :], []
    while blocks.shape[-1] > 1:
        count, half = blocks.shape[-3], blocks.shape[-1] // 2
        quarters = blocks.reshape(lead + (count, 2, half, 2, half))
        below.append(quarters[..., 1, :, 0, :])
        blocks = jnp.stack([quarters[..., 0, :, 0, :], quarters[..., 1, :, 1, :]],
                           axis=-3).reshape(lead + (2 * count, half, half))
    # bottom up: from the (unit) 1 x 1 blocks, join neighbouring inverses
    inverse = jnp.ones(lead + (size, 1, 1), N.dtype)
    for C in reversed(below):
        count, s = C.shape[-3], C.shape[-1]
        pairs = inverse.reshape(lead + (count, 2, s, s))
        first, second = pairs[..., 0, :, :], pairs[..., 1, :, :]
        corner = -_einsum("...ij,...jk,...kl->...il", second, C, first)
        top = jnp.concatenate([first, jnp.zeros_like(first)], axis=-1)
        inverse = jnp.concatenate([top, jnp.concatenate([corner, second], axis=-1)],
                                  axis=-2)  # [.., count, 2s, 2s]
    return inverse.reshape(lead + (size, size))[..., :L, :L]


@_unit_lower_inverse.defjvp
def _unit_lower_inverse_jvp(primals, tangents):
    """``d(M^{-1}) = -M^{-1} dM M^{-1}``: two matmuls, in both modes of differentiation,
    instead of differentiating the block recursion."""
    (N,), (dN,) = primals, tangents
    inverse = _unit_lower_inverse(N)
    L = N.shape[-1]
    r = jnp.arange(L)
    dN = jnp.where(_lead(r[:, None] > r[None, :], dN.ndim), dN, 0)  # only N's entries count
    return inverse, -_einsum("...ij,...jk,...kl->...il", inverse, dN, inverse)


def delta_rule() -> Recurrence:
    """The (gated) delta rule ``S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t
    v_t^T``, ``o_t = S_t^T q_t``, over :class:`DeltaFeatures` (see the module
    docstring); state ``S [heads, d_k, d_v]``."""
    return Recurrence(_delta_update, _plain_read, _delta_chunked)


@_jit()
def _delta_update(S, f: DeltaFeatures):
    dtype, work = S.dtype, _work(S.dtype)
    k, v = f.k.astype(work), f.v.astype(work)
    beta = f.beta.astype(work)[:, None]
    S = S.astype(work)
    if f.log_alpha is not None:
        S = jnp.exp(f.log_alpha.astype(work))[:, None, None] * S
    write = beta * (v - _einsum("hd,hde->he", k, S))  # beta (v - S^T k)
    return (S + k[:, :, None] * write[:, None, :]).astype(dtype)


def _neutral_delta(f, valid):
    ok = valid[..., None]
    zero = jnp.zeros((), f.beta.dtype)
    return f._replace(beta=jnp.where(ok, f.beta, zero),
                      log_alpha=None if f.log_alpha is None else
                      jnp.where(ok, f.log_alpha, jnp.zeros((), f.log_alpha.dtype)))


@_jit("chunk_size")
def _delta_chunked(S0, f: DeltaFeatures, valid, chunk_size):
    dtype, work = S0.dtype, _work(S0.dtype)
    if f.q.shape[0] == 0:
        return S0, jnp.zeros((0,) + f.v.shape[1:], dtype)
    f, valid, L, T, poisoned = _prepare(f, valid, chunk_size, _neutral_delta)
    q, k, v = (_chunk(a.astype(work), L) for a in (f.q, f.k, f.v))  # [n, B, h, L, d]
    beta = _chunk(f.beta.astype(work), L)  # [n, B, h, L]
    lower = _lower(L, beta.ndim + 1)
    if f.log_alpha is None:  # DeltaNet: no decay
        gamma = jnp.zeros_like(beta)
        decay = jnp.broadcast_to(lower.astype(work), beta.shape + (L,))
    else:
        log_alpha = _chunk(f.log_alpha.astype(work), L)
        gamma = jnp.cumsum(log_alpha, axis=-1)  # [n, B, h, L], from the chunk's start
        decay = jnp.exp(_segsum(log_alpha))  # Lambda[r, s], 0 above the diagonal
    r = jnp.arange(L)
    strictly = _lead(r[:, None] > r[None, :], decay.ndim)
    # the UT transform: (I + N) [U | W] = [beta V | beta e^Gamma K], N strictly lower
    N = jnp.where(strictly, beta[..., None] * _einsum("...rd,...sd->...rs", k, k) * decay, 0)
    rhs = jnp.concatenate([beta[..., None] * v, (beta * jnp.exp(gamma))[..., None] * k], -1)
    UW = _einsum("...rs,...se->...re", _unit_lower_inverse(N), rhs)
    U, W = UW[..., :v.shape[-1]], UW[..., v.shape[-1]:]
    k_end = decay[..., -1, :, None] * k  # k_s decayed to the end of its chunk

    def body(S, inp):
        U_c, W_c, k_c, total = inp
        new = U_c - _einsum("...rd,...de->...re", W_c, S)  # the chunk's true writes
        S_next = (jnp.exp(total)[..., None, None] * S
                  + _einsum("...rd,...re->...de", k_c, new))
        return S_next, (S, new)

    final, (starts, new) = lax.scan(body, S0.astype(work), (U, W, k_end, gamma[..., -1]))
    scores = jnp.where(_lower(L, decay.ndim), _einsum("...rd,...sd->...rs", q, k) * decay,
                       jnp.zeros((), work))
    o = (_einsum("...rs,...se->...re", scores, new)
         + _einsum("...rd,...de->...re", jnp.exp(gamma)[..., None] * q, starts))
    final, o = _poison(final, o, poisoned, T)
    return final.astype(dtype), o.astype(dtype)


# ------------------------------------------------------------------------ the cell

HEAD_SIZE = 64  # the default channels per head (Mamba-2's headdim)


def head_split(name: str, hidden_size, num_heads, key_size=None):
    """``(H, heads, d_k, d_v)`` of a multi-head matrix-state cell, checked.

    ``num_heads=None`` means one head per ``HEAD_SIZE = 64`` channels (``H // 64``,
    at least one): Mamba-2's head size and that of most linear-attention models,
    where the chunkwise form's ``[L, d]`` matmuls outweigh its ``[L, L]`` masks.
    ``key_size=None`` means ``d_k = d_v = H / heads``.
    """
    H = _checks.positive_int(hidden_size, "hidden_size")
    if num_heads is None:
        heads = max(1, H // HEAD_SIZE)
        if H % heads:
            raise ValueError(
                f"{name}: hidden_size {H} does not split into heads of {HEAD_SIZE} "
                f"channels ({heads} heads); pass num_heads, a divisor of {H}")
    else:
        heads = _checks.positive_int(num_heads, "num_heads")
        if H % heads:
            raise ValueError(f"{name}: num_heads ({heads}) must divide hidden_size ({H})")
    d_v = H // heads
    d_k = d_v if key_size is None else _checks.positive_int(key_size, "key_size")
    return H, heads, d_k, d_v



def chunkwise_cell(init, initial_state, input_size, output_size, name, features,
                   recurrence: Recurrence, readout) -> Cell:
    """A :class:`~seqjax.Cell` made of ``features -> recurrence -> readout``.

    ``apply`` is the streaming form: one step of ``recurrence.update`` and
    ``recurrence.read``; ``cell.chunkwise`` states the chunkwise-parallel form, which
    :func:`seqjax.unroll` uses when the whole sequence is there.

    Args:
      init, initial_state, input_size, output_size: as in :class:`~seqjax.Cell`.
      name: used in error messages.
      features: ``(params, xs [..., I]) -> features`` on any leading axes.
      recurrence: a :class:`Recurrence` (:func:`gated_outer_product`,
        :func:`delta_rule`).
      readout: ``(params, o [..., heads, d_v], xs [..., I]) -> ys [..., output_size]``
        on any leading axes.
    """

    # jitted once per cell: inside a caller's jit they are inlined; called eagerly (a
    # Python loop over apply, tests) each compiles once per shape instead of per op
    features, readout = jax.jit(features), jax.jit(readout)

    @jax.jit
    def step(params, state, x):
        f = features(params, x)
        state = recurrence.update(state, f)
        return state, readout(params, recurrence.read(state, f), x)

    def apply(params, state, x):
        _checks.step_input(x, input_size(params), name)
        return step(params, state, x.astype(jax.tree_util.tree_leaves(params)[0].dtype))

    form = Chunkwise(features, recurrence.update, recurrence.read, recurrence.chunked,
                     readout)
    return Cell(init, initial_state, apply, input_size, output_size, chunkwise=form)
