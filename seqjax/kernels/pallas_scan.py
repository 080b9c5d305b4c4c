"""A Pallas kernel for the diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t``.

One kernel launch runs the whole time loop (``lax.fori_loop`` over ``t``; Pallas lowers
``scan`` only in that form) for one tile of ``[batch, features]``; the grid runs the
tiles in parallel. The backward pass is the same recurrence run the other way in a
second kernel (``jax.custom_vjp``), which also forms ``da`` and ``dh_0``, so a training
step reads each ``[T, B, N]`` array a constant number of times and never materialises
the ``O(T log T)`` work of an associative scan.

The pattern follows recurrentgemma's ``recurrentgemma/jax/pallas.py``
(``linear_rnn_pallas_kernel``): a grid over batch x feature tiles, on GPU the whole
sequence in one block, the carry in float32 for 16-bit inputs. Differences: the carry
is the ``fori_loop`` value instead of a scratch ref, there are no sequence blocks
(recurrentgemma's TPU path tiles time), and the backward kernel also computes
``da_t = dh_t * h_{t-1}`` in its loop instead of as a separate pass.

Complex states (the LRU) are split into real and imaginary planes, since Triton has no
complex type: ``h <- (a_re h_re - a_im h_im + b_re, a_re h_im + a_im h_re + b_im)``. The
backward pass is the transpose of that real linear map, i.e. it multiplies by
``conj(a)``, which is what JAX's own VJP of the complex recurrence gives.

Unverified on GPU: the kernels lower to Triton IR for CUDA (checked in CI by
``jax.export`` with ``platforms=["cuda"]``), and run in interpret mode on CPU, but they
have not been compiled by Triton or timed on a real GPU. ``benchmarks/gpu.sh`` does
both when a GPU is lent.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax


class ScanConfig(NamedTuple):
    """Static launch configuration of :func:`linear_scan` (hashable)."""

    reverse: bool
    block_batch: int
    block_features: int
    num_warps: int
    num_stages: int
    interpret: bool


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _accumulator(dtype):
    """The carry dtype: float32 for 16-bit inputs, the input's own otherwise."""
    return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else jnp.dtype(dtype)


def default_interpret(backend: Optional[str] = None) -> bool:
    """Whether Pallas runs in interpret mode on ``backend``: everywhere but GPU.

    The kernels here are written for Pallas' Triton lowering; on CPU there is no Pallas
    compiler at all, and on TPU the Mosaic lowering of these kernels is untested.
    """
    return (backend or jax.default_backend()) not in ("gpu", "cuda", "rocm")


def _check_pow2(value, name):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
        raise ValueError(f"linear_scan: {name} must be a positive power of 2 (Triton's block "
                         f"sizes are), got {value!r}")
    return value


def linear_scan(a, b, h0, *, reverse: bool = False, interpret: Optional[bool] = None,
                block_batch: Optional[int] = None, block_features: Optional[int] = None,
                num_warps: Optional[int] = None, num_stages: int = 3):
    """``h_t = a_t * h_{t-1} + b_t`` over time, as one Pallas kernel per direction.

    .. math::
        h_t = a_t \\odot h_{t-1} + b_t, \\quad h_{-1} = h_0 \\qquad
        (\\text{reverse: } h_t = a_t \\odot h_{t+1} + b_t, \\; h_T = h_0)

    Differentiable in reverse mode (a ``jax.custom_vjp`` whose backward pass is the
    transposed recurrence, ``g_t = dh_t + a_{t+1} g_{t+1}``, with
    ``db_t = g_t``, ``da_t = g_t h_{t-1}``, ``dh_0 = a_0 g_0``; conjugated for complex
    inputs). Forward-mode differentiation (``jax.jvp``) is not defined.

    Args:
      a: ``[time, batch, *features]`` coefficients, real or complex.
      b: ``[time, batch, *features]`` inputs, the same shape and dtype as ``a``.
      h0: ``[batch, *features]`` initial state (cast to ``a``'s dtype).
      reverse: run from the last step to the first.
      interpret: run in Pallas interpret mode; ``None`` picks :func:`default_interpret`
        (compiled on GPU, interpreted elsewhere).
      block_batch: rows of the batch per kernel instance (a power of 2; default 1).
      block_features: features per kernel instance (a power of 2; default the
        features rounded up to a power of 2, at most 128). Trailing feature axes are
        flattened first; sizes that the blocks do not divide are padded.
      num_warps: Triton warps per instance (default: one per 32 elements of a block,
        1 to 8).
      num_stages: Triton software-pipelining stages of the time loop (prefetches the
        next steps' ``a_t, b_t``).

    Returns:
      ``hs [time, batch, *features]``, every step's state, in ``a``'s dtype (the
      carry is float32 for 16-bit inputs).

    References:
      Martin & Cundy, "Parallelizing linear recurrent neural nets over sequence
      length", ICLR 2018 (the linear-recurrence scan and its transposed backward);
      De et al., "Griffin", arXiv:2402.19427, 2024 (recurrentgemma's Pallas scan).
    """
    a, b, h0 = jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0)
    if a.ndim < 2 or a.shape != b.shape:
        raise ValueError(f"linear_scan: expected a and b of the same shape [time, batch, "
                         f"*features], got a {tuple(a.shape)} and b {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"linear_scan: a and b need the same dtype, got {a.dtype} and {b.dtype}")
    if not jnp.issubdtype(a.dtype, jnp.inexact):
        raise TypeError(f"linear_scan: expected floating or complex a and b, got {a.dtype}")
    if h0.shape != a.shape[1:]:
        raise ValueError(f"linear_scan: expected h0 of shape {tuple(a.shape[1:])} "
                         f"([batch, *features]), got {tuple(h0.shape)}")
    block_batch = _check_pow2(block_batch, "block_batch")
    block_features = _check_pow2(block_features, "block_features")
    h0 = h0.astype(a.dtype)
    time, batch = a.shape[:2]
    features = math.prod(a.shape[2:])
    out_shape = a.shape
    if time == 0:
        return jnp.zeros(out_shape, a.dtype)

    bb = block_batch or 1
    bn = block_features or min(_next_pow2(features), 128)
    warps = num_warps or max(1, min(8, (bb * bn) // 32))
    config = ScanConfig(bool(reverse), bb, bn, warps, int(num_stages),
                        default_interpret() if interpret is None else bool(interpret))

    def planes(x, lead):
        x = x.reshape(lead + (features,))
        pad_b, pad_n = -batch % bb, -features % bn
        if pad_b or pad_n:
            widths = [(0, 0)] * (len(lead) - 1) + [(0, pad_b), (0, pad_n)]
            x = jnp.pad(x, widths)
        if jnp.iscomplexobj(x):
            return (jnp.real(x), jnp.imag(x))
        return (x,)

    hs = _scan(planes(a, (time, batch)), planes(b, (time, batch)), planes(h0, (batch,)), config)
    hs = hs[0] if len(hs) == 1 else lax.complex(*hs)
    return hs[:, :batch, :features].reshape(out_shape)


# ------------------------------------------------------------------- complex algebra
# Values are tuples of planes: (x,) for real, (re, im) for complex.


def _mul(x, y, conj_x: bool = False):
    if len(x) == 1:
        return (x[0] * y[0],)
    xr, xi = x
    yr, yi = y
    if conj_x:
        xi = -xi
    return (xr * yr - xi * yi, xr * yi + xi * yr)


def _add(x, y):
    return tuple(u + v for u, v in zip(x, y))


def _load(refs, t, dtype):
    return tuple(r[t].astype(dtype) for r in refs)


def _store(refs, t, values):
    for r, v in zip(refs, values):
        r[t] = v.astype(r.dtype)


# ------------------------------------------------------------------------ kernels


def _forward_kernel(*refs, planes: int, reverse: bool):
    """One tile: ``hs[t] = a[t] * h + b[t]`` for ``t`` over the whole sequence."""
    a, b, h0, hs = (refs[i * planes:(i + 1) * planes] for i in range(4))
    time = a[0].shape[0]
    acc = _accumulator(a[0].dtype)
    h = tuple(r[...].astype(acc) for r in h0)

    def body(i, h):
        t = time - 1 - i if reverse else i
        h = _add(_mul(_load(a, t, acc), h), _load(b, t, acc))
        _store(hs, t, h)
        return h

    lax.fori_loop(0, time, body, h)


def _backward_kernel(*refs, planes: int, reverse: bool):
    """One tile of the transposed recurrence, from the last step back to the first.

    ``g_t = dhs_t + c``, ``db_t = g_t``, ``da_t = g_t * conj(h_{t-1})``, then
    ``c = conj(a_t) * g_t`` carries to the step before; ``dh0`` is the final ``c``.
    """
    a, hs, h0, dhs, da, db, dh0 = (refs[i * planes:(i + 1) * planes] for i in range(7))
    time = a[0].shape[0]
    acc = _accumulator(a[0].dtype)
    start = tuple(r[...].astype(acc) for r in h0)
    c = tuple(jnp.zeros_like(v) for v in start)

    def body(i, c):
        t = i if reverse else time - 1 - i
        first = t == (time - 1 if reverse else 0)
        before = jnp.minimum(t + 1, time - 1) if reverse else jnp.maximum(t - 1, 0)
        h_prev = tuple(jnp.where(first, s, v) for s, v in zip(start, _load(hs, before, acc)))
        g = _add(_load(dhs, t, acc), c)
        _store(db, t, g)
        _store(da, t, _mul(h_prev, g, conj_x=True))
        return _mul(_load(a, t, acc), g, conj_x=True)

    c = lax.fori_loop(0, time, body, c)
    for r, v in zip(dh0, c):
        r[...] = v.astype(r.dtype)


def _call(kernel, inputs, outputs, config: ScanConfig, planes: int):
    """``pallas_call`` over the ``(batch / bb, features / bn)`` grid."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plt

    bb, bn = config.block_batch, config.block_features

    def spec(x):
        if x.ndim == 3:  # [T, B, N]: the whole sequence in one block
            return pl.BlockSpec((x.shape[0], bb, bn), lambda i, j: (0, i, j))
        return pl.BlockSpec((bb, bn), lambda i, j: (i, j))

    batch, features = inputs[0].shape[-2:]
    return pl.pallas_call(
        functools.partial(kernel, planes=planes, reverse=config.reverse),
        out_shape=outputs,
        grid=(batch // bb, features // bn),
        in_specs=[spec(x) for x in inputs],
        out_specs=[spec(x) for x in outputs],
        interpret=config.interpret,
        compiler_params=plt.CompilerParams(num_warps=config.num_warps,
                                           num_stages=config.num_stages),
        name="seqjax_linear_scan_bwd" if kernel is _backward_kernel else "seqjax_linear_scan",
    )(*inputs)


def _forward(a, b, h0, config):
    planes = len(a)
    out = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in a]
    return tuple(_call(_forward_kernel, (*a, *b, *h0), out, config, planes))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _scan(a, b, h0, config):
    return _forward(a, b, h0, config)


def _scan_fwd(a, b, h0, config):
    hs = _forward(a, b, h0, config)
    return hs, (a, hs, h0)


def _scan_bwd(config, residuals, dhs):
    a, hs, h0 = residuals
    planes = len(a)
    dhs = tuple(d.astype(x.dtype) for d, x in zip(dhs, hs))
    out = ([jax.ShapeDtypeStruct(x.shape, x.dtype) for x in a] * 2
           + [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in h0])
    grads = _call(_backward_kernel, (*a, *hs, *h0, *dhs), out, config, planes)
    da, db, dh0 = (tuple(grads[i * planes:(i + 1) * planes]) for i in range(3))
    return da, db, dh0


_scan.defvjp(_scan_fwd, _scan_bwd)
