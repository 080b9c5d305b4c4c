"""Softmax attention as a cell: causal, optionally windowed, rotary, grouped heads.

Its state is the key-value cache: the keys (after rotary) and values of the last ``C``
tokens in a ring of ``C`` slots, and the position of the next token. ``C`` is the
window for sliding-window attention (so the state does not grow with the sequence)
and ``max_length`` otherwise. The whole-sequence form computes all queries at once
against the cache and the new keys; the one-token ``apply`` is the same function on a
sequence of one, so the two agree by construction.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import _checks
from seqjax.cells._constructor import constructor
from seqjax.cells.contract import Array, Cell
from seqjax.layers._common import LinearParams, dtype_of, linear, linear_init_params, work_dtype
from seqjax.layers.norms import rms_normalise


class Rotary(NamedTuple):
    """Rotary position embedding of the first ``dim`` channels of every head.

    ``inv_freq``: ``dim / 2`` float32 frequencies (a tuple, static configuration);
    ``scale``: multiplies ``cos`` and ``sin`` (YaRN's attention factor; 1 otherwise).
    """

    dim: int
    inv_freq: tuple
    scale: float = 1.0

    def __repr__(self):
        return f"Rotary(dim={self.dim}, inv_freq=[{len(self.inv_freq)} values], scale={self.scale})"


def rotary(dim: int, *, theta: float = 10000.0, scaling: Optional[dict] = None) -> Rotary:
    """The rotary embedding of Su et al. 2021 on ``dim`` channels, frequencies
    ``theta^(-2i / dim)``, computed in float32 as PyTorch implementations do.

    Args:
      dim: rotated channels per head (even); the rest of the head is left as it is
        (partial rotary: RecurrentGemma rotates half, Qwen3-Next a quarter).
      theta: the base.
      scaling: ``None`` or a Hugging Face ``rope_parameters`` dict with ``rope_type``
        ``"default"``, ``"linear"`` (``factor``), ``"llama3"`` (``factor``,
        ``low_freq_factor``, ``high_freq_factor``, ``original_max_position_embeddings``)
        or ``"yarn"`` (``factor``, ``original_max_position_embeddings``, optional
        ``beta_fast``, ``beta_slow``, ``attention_factor``, ``mscale``,
        ``mscale_all_dim``, ``truncate``).

    Returns:
      A :class:`Rotary`.

    References:
      Su et al., "RoFormer: enhanced transformer with rotary position embedding",
      arXiv:2104.09864, 2021.
    """
    dim = _checks.positive_int(dim, "rotary dim")
    if dim % 2:
        raise ValueError(f"rotary: dim must be even, got {dim}")
    f32 = np.float32
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(f32) / f32(dim)
    powers = np.asarray(jnp.power(jnp.float32(theta), jnp.asarray(exponents)))
    inv_freq = (f32(1.0) / powers).astype(f32)
    scale = 1.0
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        pass
    elif kind == "linear":
        inv_freq = (inv_freq / f32(scaling["factor"])).astype(f32)
    elif kind == "llama3":
        factor, low, high = (f32(scaling[k]) for k in ("factor", "low_freq_factor",
                                                       "high_freq_factor"))
        old = f32(scaling["original_max_position_embeddings"])
        # PyTorch evaluates `scalar / tensor` as `tensor.reciprocal() * scalar`: so here,
        # or a few frequencies of the medium band differ from transformers' by an ulp
        wavelen = (f32(1) / inv_freq) * f32(2 * math.pi)
        scaled = np.where(wavelen > old / low, inv_freq / factor, inv_freq)
        smooth = ((f32(1) / wavelen) * old - low) / (high - low)
        smoothed = (f32(1) - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) & ~(wavelen > old / low)
        inv_freq = np.where(medium, smoothed, scaled).astype(f32)
    elif kind == "yarn":
        inv_freq, scale = _yarn(dim, float(theta), scaling)
    else:
        raise ValueError(f"rotary: rope_type {kind!r} is not supported (supported: default, "
                         "linear, llama3, yarn)")
    return Rotary(dim, tuple(float(v) for v in inv_freq), float(scale))


def _yarn(dim, base, s):
    f32 = np.float32
    factor = float(s["factor"])
    old = float(s["original_max_position_embeddings"])
    beta_fast, beta_slow = float(s.get("beta_fast", 32)), float(s.get("beta_slow", 1))

    def mscale(scale, m=1.0):
        return 0.1 * m * math.log(scale) + 1.0 if scale > 1 else 1.0

    if s.get("attention_factor") is not None:
        attention = float(s["attention_factor"])
    elif s.get("mscale") and s.get("mscale_all_dim"):
        attention = mscale(factor, s["mscale"]) / mscale(factor, s["mscale_all_dim"])
    else:
        attention = mscale(factor)
    truncate = s.get("truncate", True)

    def correction(rotations):
        return (dim * math.log(old / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction(beta_fast), correction(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    pos_freqs = np.asarray(jnp.power(jnp.float32(base), jnp.asarray(
        np.arange(0, dim, 2, dtype=np.int64).astype(f32) / f32(dim))))
    extrapolation, interpolation = f32(1) / pos_freqs, f32(1) / (f32(factor) * pos_freqs)
    ramp = np.clip((np.arange(dim // 2, dtype=f32) - f32(low)) / f32(high - low), 0, 1)
    extrapolation_factor = f32(1) - ramp
    inv = interpolation * (f32(1) - extrapolation_factor) + extrapolation * extrapolation_factor
    return inv.astype(f32), attention


def apply_rotary(x, positions, rope: Rotary):
    """``x [T, heads, hd]`` rotated at ``positions [T]`` (``rotate_half`` layout: channel
    ``i`` pairs with ``i + dim / 2``), its first ``rope.dim`` channels only."""
    dtype = x.dtype
    inv = jnp.asarray(np.asarray(rope.inv_freq, np.float32))
    angles = positions.astype(jnp.float32)[:, None] * inv[None, :]  # [T, dim / 2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, None, :]
    cos, sin = jnp.cos(angles) * rope.scale, jnp.sin(angles) * rope.scale
    part, rest = x[..., :rope.dim], x[..., rope.dim:]
    half = rope.dim // 2
    turned = jnp.concatenate([-part[..., half:], part[..., :half]], axis=-1)
    rotated = (part * cos.astype(dtype) + turned * sin.astype(dtype)).astype(dtype)
    return jnp.concatenate([rotated, rest], axis=-1)


class AttentionParams(NamedTuple):
    """Projections (:class:`LinearParams`, ``w [in, out]``): ``q [D -> heads hd]``,
    ``k, v [D -> kv_heads hd]``, ``o [heads hd -> D]``; ``gate [D -> heads hd]`` or
    ``None`` (an output gate ``sigmoid(x W_gate)``, Qwen3-Next); ``q_norm, k_norm
    [hd]`` or ``None`` (per-head RMSNorm scales of queries and keys)."""

    q: LinearParams
    k: LinearParams
    v: LinearParams
    o: LinearParams
    gate: Optional[LinearParams]
    q_norm: Optional[Array]
    k_norm: Optional[Array]


class KVCache(NamedTuple):
    """The state of global attention: ``k, v [C, kv_heads, hd]`` in a ring of ``C =
    max_length`` slots (the token at position ``p`` is in slot ``p mod C``) and
    ``position`` (int32), the position of the next token. Past ``C`` tokens the oldest
    are overwritten, so decoding is limited to ``C`` positions."""

    k: Array
    v: Array
    position: Array


class WindowCache(NamedTuple):
    """The state of sliding-window attention: as :class:`KVCache` with ``C = window``
    slots, which hold every key the window can see, so decoding is not limited."""

    k: Array
    v: Array
    position: Array


@constructor
def attention(
    d_model: int,
    num_heads: int,
    *,
    num_kv_heads: Optional[int] = None,
    head_dim: Optional[int] = None,
    window: Optional[int] = None,
    max_length: int = 2048,
    rope: Optional[Rotary] = None,
    qk_norm: Optional[float] = None,
    qk_norm_offset: float = 0.0,
    qkv_bias: bool = False,
    out_bias: bool = False,
    output_gate: bool = False,
    gate_bias: bool = False,
    scale: Optional[float] = None,
    param_dtype=jnp.float32,
) -> Cell:
    """Causal multi-head softmax attention as a cell whose state is its KV cache.

    For the token at position ``p`` with input ``x``, per head ``n`` (key/value head
    ``n // (heads / kv_heads)``):

    .. math::
        q &= \\mathrm{rope}(\\mathrm{norm}(x W_q)), \\quad
        k_p = \\mathrm{rope}(\\mathrm{norm}(x W_k)), \\quad v_p = x W_v \\\\
        o &= \\sum_{j \\in S(p)} \\mathrm{softmax}_j(s\\, q \\cdot k_j)\\, v_j, \\qquad
        y = (o \\odot \\sigma(x W_g)) W_o

    with ``S(p) = {p - w + 1, ..., p}`` (``w = window``: ``w`` keys including the
    token itself, the convention of Mistral, Gemma and RecurrentGemma in
    transformers) or ``{0, ..., p}`` (``window=None``), ``s = scale`` (default
    ``hd^-1/2``). The scores and the softmax are computed in float32 (at least).

    The state (:class:`WindowCache`, :class:`KVCache`) keeps ``C = window`` slots for a window, so a
    windowed cell decodes in constant memory, and ``C = max_length`` slots otherwise;
    positions beyond ``max_length`` overwrite the oldest slots (a global attention
    cell then attends only to the last ``max_length`` tokens, so keep sequences within
    it; :func:`seqjax.lm.language_model`'s ``generate`` checks this). The
    whole-sequence form (what :func:`seqjax.unroll` runs) computes every query at
    once, against the cache and the new keys; ``apply`` is the same computation for
    one token.

    Args:
      d_model: ``D``, the width of ``x`` and ``y``.
      num_heads: query heads.
      num_kv_heads: key/value heads (grouped-query attention; 1: multi-query);
        ``None``: ``num_heads``.
      head_dim: ``hd``; ``None``: ``D / num_heads``.
      window: sliding window ``w`` (keys per query, itself included), or ``None``.
      max_length: cache slots of a global (``window=None``) attention cell.
      rope: a :class:`Rotary` (:func:`rotary`), or ``None`` for no position encoding.
      qk_norm: if given, the epsilon of an RMSNorm over each head of ``q`` and ``k``
        before the rotary embedding (Qwen3, Qwen3-Next); its scales are params.
      qk_norm_offset: ``o`` of that norm (it multiplies by ``o + w``).
      qkv_bias: biases on the ``q, k, v`` projections.
      out_bias: a bias on the output projection.
      output_gate: the output gate ``sigma(x W_g)`` per head and channel (Qwen3-Next's
        gated attention).
      gate_bias: a bias on that gate (``sigma(x W_g + b_g)``; Qwen3-Next with
        ``attention_bias``, whose gate is part of the query projection).
      scale: ``s``; ``None``: ``hd^-1/2``.
      param_dtype: dtype of the params and the cache.

    Returns:
      A :class:`~seqjax.Cell` with params :class:`AttentionParams` and state
      :class:`KVCache`.

    References:
      Vaswani et al., "Attention is all you need", NeurIPS 2017; Shazeer, "Fast
      transformer decoding: one write-head is all you need", 2019 (multi-query);
      Ainslie et al., "GQA", EMNLP 2023; Beltagy et al., "Longformer", 2020 (sliding
      windows).
    """
    D = _checks.positive_int(d_model, "d_model")
    heads = _checks.positive_int(num_heads, "num_heads")
    kv = heads if num_kv_heads is None else _checks.positive_int(num_kv_heads, "num_kv_heads")
    if heads % kv:
        raise ValueError(f"attention: num_kv_heads ({kv}) must divide num_heads ({heads})")
    if head_dim is None:
        if D % heads:
            raise ValueError(f"attention: num_heads ({heads}) must divide d_model ({D}), or "
                             "pass head_dim")
        hd = D // heads
    else:
        hd = _checks.positive_int(head_dim, "head_dim")
    if window is not None:
        window = _checks.positive_int(window, "window")
    capacity = window if window is not None else _checks.positive_int(max_length, "max_length")
    if rope is not None and rope.dim > hd:
        raise ValueError(f"attention: the rotary embedding rotates {rope.dim} channels, more "
                         f"than head_dim ({hd})")
    if gate_bias and not output_gate:
        raise ValueError("attention: gate_bias=True needs output_gate=True")
    if qk_norm is not None and not qk_norm > 0:
        raise ValueError(f"attention: qk_norm (an epsilon) must be positive, got {qk_norm!r}")
    s = hd ** -0.5 if scale is None else float(scale)
    group = heads // kv

    def init(key, input_size):
        size = _checks.positive_int(input_size, "input_size")
        kq, kk, kv_, ko, kg = jax.random.split(key, 5)
        lin = lambda k, i, o, b: linear_init_params(k, i, o, bias=b, dtype=param_dtype)  # noqa: E731
        norm = (None if qk_norm is None else
                jnp.full((hd,), 1.0 - qk_norm_offset, param_dtype))
        return AttentionParams(
            lin(kq, size, heads * hd, qkv_bias), lin(kk, size, kv * hd, qkv_bias),
            lin(kv_, size, kv * hd, qkv_bias), lin(ko, heads * hd, D, out_bias),
            lin(kg, size, heads * hd, gate_bias) if output_gate else None, norm, norm)

    def initial_state(params):
        dtype = dtype_of(params)
        kind = KVCache if window is None else WindowCache
        return kind(jnp.zeros((capacity, kv, hd), dtype), jnp.zeros((capacity, kv, hd), dtype),
                       jnp.zeros((), jnp.int32))

    def project(params, xs, positions):
        T = xs.shape[0]
        q = linear(params.q, xs).reshape(T, heads, hd)
        k = linear(params.k, xs).reshape(T, kv, hd)
        v = linear(params.v, xs).reshape(T, kv, hd)
        if qk_norm is not None:
            q = rms_normalise(q, params.q_norm, eps=qk_norm, offset=qk_norm_offset)
            k = rms_normalise(k, params.k_norm, eps=qk_norm, offset=qk_norm_offset)
        if rope is not None:
            q, k = apply_rotary(q, positions, rope), apply_rotary(k, positions, rope)
        return q, k, v

    def slot_positions(next_position):
        """The position held by every slot of a cache whose next token is at
        ``next_position`` (negative: empty)."""
        last = next_position - 1
        slots = jnp.arange(capacity, dtype=jnp.int32)
        return last - jnp.mod(last - slots, capacity)

    def one(params, xs, cache, length, fresh):
        """One example: ``xs [T, D]``, ``length`` valid steps -> ``(cache, ys [T, D])``."""
        T = xs.shape[0]
        start = cache.position
        positions = start + jnp.arange(T, dtype=jnp.int32)
        q, k, v = project(params, xs, positions)
        ok = jnp.arange(T, dtype=jnp.int32) < length
        if fresh:
            keys, values, key_pos, key_ok = k, v, positions, ok
        else:
            keys = jnp.concatenate([cache.k.astype(k.dtype), k])
            values = jnp.concatenate([cache.v.astype(v.dtype), v])
            held = slot_positions(start)
            key_pos = jnp.concatenate([held, positions])
            key_ok = jnp.concatenate([held >= 0, ok])
        mask = key_ok[None, :] & (key_pos[None, :] <= positions[:, None])
        if window is not None:
            mask = mask & (key_pos[None, :] > positions[:, None] - window)
        work = work_dtype(xs.dtype)
        qg = q.reshape(T, kv, group, hd).astype(work)
        scores = jnp.einsum("tkgd,skd->kgts", qg, keys.astype(work)) * jnp.asarray(s, work)
        scores = jnp.where(mask[None, None], scores, jnp.finfo(work).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(xs.dtype)
        o = jnp.einsum("kgts,skd->tkgd", probs, values).reshape(T, heads * hd)
        if params.gate is not None:
            o = o * jax.nn.sigmoid(linear(params.gate, xs))
        ys = linear(params.o, o)
        # the cache after the last valid step: slot s holds the latest position = s mod C
        end = start + length
        held = slot_positions(end)
        new = held >= start
        index = jnp.clip(held - start, 0, max(T - 1, 0))
        pick = lambda old, fresh_: jnp.where(new[:, None, None], fresh_[index].astype(old.dtype), old)  # noqa: E731
        cache = type(cache)(pick(cache.k, k), pick(cache.v, v), end.astype(jnp.int32))
        return cache, ys

    def apply(params, state, x):
        _checks.step_input(x, params.q.w.shape[0], "attention")
        x = x.astype(dtype_of(params))
        state, ys = one(params, x[None], state, jnp.ones((), jnp.int32), False)
        return state, ys[0]

    def parallel(params, xs, state, valid, options):
        T, B = xs.shape[:2]
        fresh = state is None
        if fresh:
            state = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (B,) + a.shape),
                                           initial_state(params))
        lengths = (jnp.full((B,), T, jnp.int32) if valid is None
                   else jnp.sum(valid, axis=0, dtype=jnp.int32))
        if T == 0:
            return state, jnp.zeros((0, B, D), xs.dtype)
        run = jax.vmap(lambda x, c, n: one(params, x, c, n, fresh), in_axes=(1, 0, 0),
                       out_axes=(0, 1))
        return run(xs, state, lengths)

    return Cell(init, initial_state, apply, lambda p: p.q.w.shape[0], D, parallel=parallel)
