"""Whole cells against implementations nobody here wrote.

Every modern cell, end to end -- its input projections, gates, norms and output gate,
not only its recurrence -- against its authors' code or a float64 transcription of the
paper's listing, with the same weights:

* mLSTM: ``xlstm``'s ``mLSTMCell`` (its pure-PyTorch recurrent step backend,
  ``recurrent_step_stabilized_simple``), fed our ``q, k, v`` projections; its gates
  read ``concat(q, k, v)``, so they get the weights that make them read ``x w_i + b_i``
  (below); the paper's sigmoid output gate, which that cell does not have, around it
  in float64 PyTorch.
* sLSTM: ``xlstm``'s ``sLSTMCell`` with ``backend="vanilla"``, fed ``x W``.
* RG-LRU: ``recurrentgemma.jax.layers.RGLRU``, the whole layer, at positions that never
  reach 0 (its documented difference at position 0: ``test_modern_cells.py``).
* S6: Gu & Dao 2023, Algorithm 2 with ``selective_scan_ref``'s discretisation (ZOH for
  ``A``, Euler for ``B``, skip ``D``), transcribed in float64 ``jax.numpy``.
* Mamba-2: Dao & Gu 2024, Listing 1 (``ssd_minimal_discrete`` with its ``segsum``, as
  written) in float64 ``jax.numpy``, with the layer's projections, ``silu``, ``D``
  skip, gate and RMSNorm.
* DeltaNet, Gated DeltaNet: the gated delta rule layer of Yang et al. 2025 without its
  short convolutions and output projection, transcribed in float64 ``jax.numpy`` from
  flash-linear-attention (its naive recurrence's loop body, ``l2norm``'s ``eps``, the
  ``FusedRMSNormGated`` read-out); the transcription's recurrence is itself checked
  against ``fla``'s naive recurrences (which compute in float32).

Each cell runs over T = 72 steps (chunks of 16 and of 32, the CPU default: boundaries
are crossed, the last chunk is uneven) two ways -- ``seqjax.unroll_batch`` over two
sequences with ``lengths=(72, 45)`` (padding at the end, which must leave the state
as it is) and ``chunk_size=16``; ``seqjax.unroll`` of the first with ``reverse=True``
-- in both of its forms (``chunkwise=True/False`` for the
matrix-state cells, ``associative=True/False`` for rg_lru and s6, ``fused=True/False``
for the sLSTM), in two regimes (the cell's own initialisation, and per-step log-decays
between about -5 and -45, or inputs x4 for DeltaNet, which has no decay). Compared:
outputs, every leaf of the final state, and the gradients of a random linear
functional of both w.r.t. every parameter and the inputs (the references': PyTorch
autograd or ``jax.vjp`` in float64).

Tolerances: float64, ``1e-10`` relative; float32, the issue's bound
(:func:`float32_bound`) on the error against the float64 reference, where the error
of an array is ``max|a - b| / max|b|``. Parameters and inputs are float32 numbers, so
the float64 reference is exact for the float32 runs' inputs.

The recurrence cores alone, from initial states, against more of the authors' code
(xlstm's parallel and chunkwise backends, mlstm_kernels' JAX kernels, fla's chunkwise
delta rules, the SSD listing), and the sLSTM and RG-LRU from a given state in float32,
are tested in ``test_matrix_cells.py`` and ``test_modern_cells.py``; the reference
loaders and the listing are shared through ``_references.py``. Every reference package
is in the ``test`` extra, so nothing here skips.
"""

import contextlib
import functools
import unittest.mock
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax import lax
from recurrentgemma.jax import layers as rg_layers
from recurrentgemma.jax import scan as rg_scan
from xlstm.blocks.mlstm.cell import mLSTMCell, mLSTMCellConfig
from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

import seqjax as sj

from _references import load, reference_numerics, ssd_minimal_discrete

T = 72  # steps: chunks of 32 (the CPU default) and of 16 both end unevenly
LENGTHS = (72, 45)  # the batch run's valid lengths (padding)
H, HEADS = 16, 2
TOL64 = 1e-10


def float32_bound(step_error: float) -> float:
    """The largest float32 error an array may have against the float64 reference: 1e-5,
    or ten times the error of the same array computed by the cell's float32 step form
    (the plain scan), whichever is larger -- the bound the issue sets."""
    return max(1e-5, 10.0 * step_error)


def _error(a, b) -> float:
    """``max|a - b| / max|b|``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff, scale = np.max(np.abs(a - b), initial=0.0), np.max(np.abs(b), initial=0.0)
    if not np.isfinite(diff):
        return float("inf")
    return float(diff / scale) if scale > 0 else (0.0 if diff == 0 else float("inf"))


def _f32(a):
    """A float64 array of float32 numbers."""
    return np.asarray(a, np.float32).astype(np.float64)


# Every program here is small and runs once, so compile time is this file's cost: XLA:CPU
# compiles the same HLO several times faster at LLVM -O0 with its older (non-MLIR)
# fusion emitters (the chunked mLSTM's program, CPU seconds: 14.7 with the defaults,
# 7.2 at -O0, 2.5 at -O0 without the MLIR emitters). IEEE arithmetic either way (no
# fast math), so the errors measured are the algorithms'.
_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def _as32(tree):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), tree)


# ------------------------------------------------------------- reference adapters
#
# A reference is ``fn(params, xs [L, I]) -> (ys [L, H], final state leaves)`` for one
# sequence from the zero state, in our params' and states' layout; the adapters add
# the gradients of ``<w_y, ys> + sum <w_s, final>`` w.r.t. params and xs.


def _jax_reference(fn):
    """A float64 JAX reference, differentiated by ``jax.vjp``; traced under numpy's
    broadcasting rules, as the listings are written."""

    def run(params, xs, w_y, w_s):
        (ys, final), vjp = jax.vjp(fn, params, xs)
        return ys, final, *vjp((w_y, w_s))

    compiled = {}

    def call(params, xs, w_y, w_s):
        with jax.enable_x64(True), reference_numerics():
            args = jax.tree_util.tree_map(jnp.asarray, (params, xs, w_y, list(w_s)))
            if xs.shape not in compiled:
                compiled[xs.shape] = jax.jit(run).lower(*args).compile(_COMPILER_OPTIONS)
            ys, final, g_params, g_xs = compiled[xs.shape](*args)
            return (np.asarray(ys), [np.asarray(s) for s in final],
                    [np.asarray(g) for g in _leaves(g_params)], np.asarray(g_xs))

    return call


@contextlib.contextmanager
def _one_torch_thread():
    """PyTorch on one thread: its ops here are tiny, and its thread pool costs ten times
    their work on two shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _torch_reference(fn):
    """A float64 PyTorch reference, differentiated by autograd."""

    def call(params, xs, w_y, w_s):
        leaves = [torch.tensor(np.asarray(a), requires_grad=True) for a in params]
        x = torch.tensor(xs, requires_grad=True)
        with _one_torch_thread():
            ys, final = fn(type(params)(*leaves), x)
            loss = torch.sum(torch.tensor(w_y) * ys) + sum(
                torch.sum(torch.tensor(w) * s) for w, s in zip(w_s, final, strict=True))
            grads = torch.autograd.grad(loss, leaves + [x], allow_unused=True)
        grads = [np.zeros(a.shape) if g is None else g.numpy()
                 for a, g in zip(leaves + [x], grads)]
        return (ys.detach().numpy(), [s.detach().numpy() for s in final], grads[:-1],
                grads[-1])

    return call


# ------------------------------------------------------------------------ mLSTM


class _Stepped(torch.nn.Module):
    """xlstm's ``mLSTMCell.step`` over a sequence (from its zero state)."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, q, k, v):
        state, hs = None, []
        for t in range(q.shape[1]):  # copies: the step squeezes its inputs in place
            h, state = self.cell.step(*(a[:, t:t + 1].clone() for a in (q, k, v)),
                                      mlstm_state=state)
            hs.append(h)
        return torch.cat(hs, dim=1), state


@functools.lru_cache(maxsize=None)
def _xlstm_mlstm():
    config = mLSTMCellConfig(context_length=T, embedding_dim=H, num_heads=HEADS)
    return _Stepped(mLSTMCell(config).double())


def _mlstm_reference(p, xs):
    """xlstm's mLSTMCell (recurrent step backend, eps 1e-6, its MultiHeadLayerNorm) on
    ``q, k, v = x W_q, x W_k, x W_v``, times the paper's output gate.

    Its gates are ``Linear(3H, heads)`` of ``concat(q, k, v) = x [W_q W_k W_v]``: with the
    weights ``G = W^T (W W^T)^{-1} w`` (``W = [W_q W_k W_v]``, full row rank) they read
    ``x W G = x w`` exactly, for every ``W`` near this one, so autograd through ``G``
    gives the gradients w.r.t. our ``w_q, .., w_i, w_f``. Its recurrent step scales
    ``k`` by ``1/sqrt(d)`` where ours scales ``q``: its ``C, n`` are ours over
    ``sqrt(d)``. Its norm's weight is ``1 + weight`` (``residual_weight``).
    """
    d = H // HEADS
    W = torch.cat([p.w_q, p.w_k, p.w_v], dim=1)  # [I, 3H]

    def gate(w):
        return (W.T @ torch.linalg.solve(W @ W.T, w)).T  # [heads, 3H]

    weights = {"cell.igate.weight": gate(p.w_i), "cell.igate.bias": p.b_i,
               "cell.fgate.weight": gate(p.w_f), "cell.fgate.bias": p.b_f,
               "cell.outnorm.weight": p.norm_scale - 1.0}
    q, k, v = ((xs @ w)[None] for w in (p.w_q, p.w_k, p.w_v))
    hs, (C, n, m) = torch.func.functional_call(_xlstm_mlstm(), weights, (q, k, v),
                                               strict=False)
    ys = torch.sigmoid(xs @ p.w_o + p.b_o) * hs[0]
    return ys, [C[0] * d ** 0.5, n[0, :, :, 0] * d ** 0.5, m[0, :, 0, 0]]


def _mlstm_strong(p, rng, I):
    """Forget pre-activations around -25 (log_sigmoid in [-45, -5]); input gates drawn
    (the default starts them at zero) so the stabiliser moves."""
    return p._replace(w_f=rng.normal(0.0, 1.5, (I, HEADS)), b_f=np.full(HEADS, -25.0),
                      w_i=rng.normal(0.0, 1.0, (I, HEADS)), b_i=rng.normal(0.0, 1.0, HEADS))


def _log_sigmoid(v):
    return -np.logaddexp(0.0, -v)


def _mlstm_log_decay(p, xs):
    return _log_sigmoid(xs @ p.w_f + p.b_f)


# ------------------------------------------------------------------------ sLSTM


@functools.lru_cache(maxsize=None)
def _xlstm_slstm():
    config = sLSTMCellConfig(hidden_size=H, num_heads=HEADS, backend="vanilla",
                             dtype="float32", enable_automatic_mixed_precision=False)
    return sLSTMCell(config).double()


def _slstm_reference(p, xs):
    """xlstm's sLSTMCell (vanilla backend) on the gate pre-activations ``x W``; ``r``
    is its external recurrent-kernel layout and ``b`` its internal bias (the weight
    conversion of ``_slstm_params_from_xlstm`` in ``test_modern_cells.py``)."""
    cell = _xlstm_slstm()
    weights = {"_recurrent_kernel_": cell._recurrent_kernel_ext2int(p.r), "_bias_": p.b}
    out, final = torch.func.functional_call(cell, weights, ((xs @ p.w)[None], None))
    ys = out.permute(0, 2, 1, 3).reshape(xs.shape[0], H)  # [1, heads, L, d] -> [L, H]
    return ys, list(final[:, 0])


def _slstm_strong(p, rng, I):
    """Forget pre-activations around -25; recurrent blocks drawn (xlstm starts them at
    zero), small in the forget gate so the range holds."""
    d = H // HEADS
    r = rng.normal(0.0, 0.5, (HEADS, d, 4, d))
    r[:, :, 1, :] *= 0.2
    w = np.array(p.w)
    w[:, H:2 * H] = rng.normal(0.0, 1.4, (I, H))
    b = np.array(p.b)
    b[H:2 * H] = -25.0
    return p._replace(w=w, r=r, b=b)


def _slstm_log_decay(p, xs):
    """The forget gate's log-decays: ``log_sigmoid(x W_f + b_f + R_f h)`` with ``|h| <
    1``, bounded on both sides."""
    pre = xs @ p.w[:, H:2 * H] + p.b[H:2 * H]
    reach = np.sum(np.abs(p.r[:, :, 1, :]), axis=1).reshape(H)  # max |R_f h| per unit
    return np.stack([_log_sigmoid(pre - reach), _log_sigmoid(pre + reach)])


# ----------------------------------------------------------------------- RG-LRU


def _rg_lru_variables(p):
    """Our params as RGLRU's: ``a_gate, input_gate`` blocks as they are, their biases
    ``[heads, d]``, ``a_param = -Lambda``."""
    b = lambda v: v.reshape(HEADS, H // HEADS)
    return {"params": {"a_gate": {"w": p.w_a, "b": b(p.b_a)},
                       "input_gate": {"w": p.w_x, "b": b(p.b_x)}, "a_param": -p.lam}}


def _rg_lru_reference(p, xs):
    """recurrentgemma's RGLRU layer at positions 1..L (never 0: a continued segment, the
    same map as ours from the zero state). Its scan accumulates in
    ``acc_float_dtype``, float32 unless told, which the layer does not pass: it is
    passed here (float64), with ``unroll=1`` for the layer's 128 (same arithmetic, a
    fraction of the compile time)."""
    module = rg_layers.RGLRU(width=H, num_heads=HEADS)
    pos = jnp.arange(1, xs.shape[0] + 1, dtype=jnp.int32)[None]
    h0 = jnp.zeros((1, H), jnp.float64)
    linear_scan = rg_scan.linear_scan

    def scan64(*args, **kwargs):
        return linear_scan(*args, **{**kwargs, "acc_float_dtype": jnp.float64, "unroll": 1})

    with unittest.mock.patch.object(rg_scan, "linear_scan", scan64):
        y, last = module.apply(_rg_lru_variables(p), xs[None], pos, h0)
    return y[0], [last[0]]


def _rg_lru_strong(p, rng, I):
    """``a = sigmoid(Lambda)`` with ``softplus(-Lambda)`` near 6, recurrence gates
    ``r`` in about [0.14, 0.9]: ``log a_t = -8 r softplus(-Lambda)`` in [-45, -5]."""
    d = H // HEADS
    return p._replace(lam=rng.uniform(-6.2, -5.8, H), b_a=np.full(H, 0.2),
                      w_a=rng.normal(0.0, 0.18, (HEADS, d, d)))


def _rg_lru_log_decay(p, xs):
    d = H // HEADS
    pre = np.einsum("tki,kij->tkj", xs.reshape(-1, HEADS, d), p.w_a).reshape(-1, H) + p.b_a
    return -8.0 / (1.0 + np.exp(-pre)) * np.logaddexp(0.0, -p.lam)


# --------------------------------------------------------------------------- S6


def _s6_reference(p, xs):
    """Gu & Dao 2023, Algorithm 2, as Mamba's ``selective_scan_ref``: ``B, C = x W_B,
    x W_C``; ``Delta = softplus(x W_down W_up + b_Delta)``; ``deltaA = exp(Delta A)``
    (ZOH), ``deltaB_u = Delta B u`` (Euler); ``h = deltaA h + deltaB_u``, ``y = h C``;
    ``out = y + D u``."""
    A = -jnp.exp(p.a_log)  # [H, N]
    B, C = xs @ p.w_b, xs @ p.w_c  # [L, N]
    delta = jax.nn.softplus(xs @ p.w_delta_down @ p.w_delta_up
                            + jnp.broadcast_to(p.b_delta, xs.shape))  # [L, H]
    delta_A = jnp.exp(jnp.einsum("ld,dn->ldn", delta, A))
    delta_B_u = jnp.einsum("ld,ln,ld->ldn", delta, B, xs)

    def step(h, inputs):
        dA, dBu, c = inputs
        h = dA * h + dBu
        return h, jnp.einsum("dn,n->d", h, c)

    h, ys = lax.scan(step, jnp.zeros_like(A), (delta_A, delta_B_u, C))
    return ys + jnp.broadcast_to(p.d, xs.shape) * xs, [h]


def _s6_strong(p, rng, I):
    """``-A`` in [1, 2] and ``Delta`` in about [6, 18]: ``Delta A`` in [-45, -5]."""
    return p._replace(a_log=np.log(rng.uniform(1.0, 2.0, p.a_log.shape)),
                      b_delta=np.full(H, 12.0),
                      w_delta_up=rng.normal(0.0, 2.5, p.w_delta_up.shape))


def _s6_log_decay(p, xs):
    delta = np.logaddexp(0.0, xs @ p.w_delta_down @ p.w_delta_up + p.b_delta)
    return delta[:, :, None] * -np.exp(p.a_log)


# ----------------------------------------------------------------------- Mamba-2

BLOCK = 8  # the listing's block_len (ours: 32 and 16)


def _mamba2_reference(p, xs, norm_eps=1e-5):
    """The Mamba2 layer between its projections: ``x, B, C = silu(..)`` (no conv),
    ``dt = softplus(u w_dt + dt_bias)``, the listing on ``X = x dt, A dt`` (zero steps
    appended to whole blocks: ``A = 0, X = 0`` leaves the state as it is), ``y + D x``,
    then ``RMSNormGated(norm_before_gate=False)``: ``rmsnorm(y silu(z)) w``. Our state
    is the listing's ``[h, p, n]`` transposed."""
    L = xs.shape[0]
    P, N = H // HEADS, p.w_b.shape[1]
    x = jax.nn.silu(xs @ p.w_x).reshape(L, HEADS, P)
    B = jnp.broadcast_to(jax.nn.silu(xs @ p.w_b)[:, None, :], (L, HEADS, N))
    C = jnp.broadcast_to(jax.nn.silu(xs @ p.w_c)[:, None, :], (L, HEADS, N))
    dt = jax.nn.softplus(xs @ p.w_delta + jnp.broadcast_to(p.b_delta, (L, HEADS)))
    A = -jnp.exp(p.a_log)
    pad = -L % BLOCK
    whole = lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))[None]
    Y, final = ssd_minimal_discrete(whole(x * dt[..., None]), whole(A * dt), whole(B),
                                     whole(C), BLOCK)
    y = Y[0, :L] + p.d[:, None] * x
    y = y.reshape(L, H) * jax.nn.silu(xs @ p.w_z)
    y = y / jnp.sqrt(jnp.mean(y * y, axis=-1, keepdims=True) + norm_eps) * p.norm_scale
    return y, [jnp.swapaxes(final[0], -1, -2)]


def _decay_strong(p, rng, I, a_name, w_name, b_name):
    """``A = exp(a_log)`` in [2, 2.5] and ``softplus(u w + b)`` in about [2.5, 18]: the
    log-decay ``-A softplus(..)`` in [-45, -5] (Mamba-2's and Gated DeltaNet's)."""
    return p._replace(**{a_name: np.log(rng.uniform(2.0, 2.5, HEADS)),
                         w_name: rng.normal(0.0, 0.75, (I, HEADS)),
                         b_name: np.full(HEADS, 10.0)})


def _mamba2_log_decay(p, xs):
    return -np.exp(p.a_log) * np.logaddexp(0.0, xs @ p.w_delta + p.b_delta)


# ------------------------------------------------------ DeltaNet, Gated DeltaNet


def _l2norm(x, eps=1e-6):
    """fla's ``l2norm``: ``x / sqrt(sum x^2 + eps)``."""
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def _delta_features(p, xs):
    """The layer's ``q, k`` (silu, then l2norm), ``v`` (silu), ``beta`` (sigmoid) and
    ``g = -exp(A_log) softplus(u w_a + dt_bias)`` (zero without a decay), per head."""
    L = xs.shape[0]
    heads = lambda a: a.reshape(L, HEADS, -1)
    q = _l2norm(heads(jax.nn.silu(xs @ p.w_q)))
    k = _l2norm(heads(jax.nn.silu(xs @ p.w_k)))
    v = heads(jax.nn.silu(xs @ p.w_v))
    beta = jax.nn.sigmoid(xs @ p.w_beta)
    if hasattr(p, "a_log"):
        g = -jnp.exp(p.a_log) * jax.nn.softplus(xs @ p.w_alpha
                                                 + jnp.broadcast_to(p.b_alpha, beta.shape))
    else:
        g = jnp.zeros_like(beta)
    return q, k, v, beta, g


def _gated_delta_rule(q, k, v, beta, g):
    """The loop body of fla's ``naive_recurrent_gated_delta_rule`` (one sequence, from
    zero; ``g = 0`` is ``delta_rule_recurrence``): ``h *= exp(g)``; ``v -= h^T k``;
    ``v *= beta``; ``h += k v^T``; ``o = h^T q / sqrt(d_k)``."""
    scale = q.shape[-1] ** -0.5

    def step(h, inputs):
        b_q, b_k, b_v, b_beta, b_g = inputs
        h = h * jnp.exp(b_g)[:, None, None]
        b_v = b_v - jnp.sum(h * b_k[..., None], axis=-2)
        b_v = b_v * b_beta[:, None]
        h = h + b_k[..., None] * b_v[:, None, :]
        return h, jnp.einsum("hd,hdm->hm", b_q * scale, h)

    h0 = jnp.zeros(k.shape[1:] + v.shape[-1:], v.dtype)
    return lax.scan(step, h0, (q, k, v, beta, g))


def _delta_reference(p, xs, norm_eps=1e-5):
    """Yang et al. 2025's layer (``use_short_conv=False``, no output projection): the
    features, the gated delta rule, ``FusedRMSNormGated``: ``rmsnorm(o) w silu(u W_g)``
    per head."""
    S, o = _gated_delta_rule(*_delta_features(p, xs))
    o = o / jnp.sqrt(jnp.mean(o * o, axis=-1, keepdims=True) + norm_eps) * p.norm_scale
    return o.reshape(xs.shape[0], H) * jax.nn.silu(xs @ p.w_g), [S]


def _gated_delta_log_decay(p, xs):
    return -np.exp(p.a_log) * np.logaddexp(0.0, xs @ p.w_alpha + p.b_alpha)


def _fla_anchor(p, xs):
    """The transcription's recurrence against fla's naive recurrences (which compute in
    float32): ``max |ours - fla| / max |fla|`` of ``o`` and of the final state."""
    with jax.enable_x64(True), reference_numerics():
        q, k, v, beta, g = _delta_features(jax.tree_util.tree_map(jnp.asarray, p),
                                           jnp.asarray(xs))
        S, o = _gated_delta_rule(q, k, v, beta, g)
    t = lambda a: torch.tensor(np.asarray(a, np.float32))[None]  # [1, L, heads, ..]
    if hasattr(p, "a_log"):
        naive = load("fla", "ops/gated_delta_rule/naive.py")
        o_ref, S_ref = naive.naive_recurrent_gated_delta_rule(
            t(q), t(k), t(v), t(beta), t(g), output_final_state=True)
    else:
        naive = load("fla", "ops/delta_rule/naive.py")
        bh = lambda a: t(a).transpose(1, 2)  # their [B, heads, L, ..]
        o_ref, S_ref = naive.delta_rule_recurrence(bh(q), bh(k), bh(v), bh(beta))
        o_ref = o_ref.transpose(1, 2)
    return _error(o, o_ref[0].numpy()), _error(S, S_ref[0].numpy())


# ------------------------------------------------------------------------ cases


class Case(NamedTuple):
    """One cell and its reference.

    ``forms``: the unroll options of the form under test and of the step form (the
    plain scan) whose float32 error sets the bound. ``strong``: ``(params, rng,
    input_size) -> params`` of the strong-decay regime; ``input_scale``: its inputs'
    scale; ``log_decay``: ``(params, xs) -> per-step log-decays`` (numpy) that the
    regime must keep in about [-45, -5].
    """

    cell: sj.Cell
    input_size: int
    reference: Callable
    forms: tuple
    strong: Callable
    input_scale: float = 1.0
    log_decay: Optional[Callable] = None


CHUNKWISE = ({"chunkwise": True}, {"chunkwise": False})
ASSOCIATIVE = ({"associative": True}, {"associative": False})
I = 12

CASES = {
    "mlstm": Case(sj.mlstm(H, num_heads=HEADS), I, _torch_reference(_mlstm_reference),
                  CHUNKWISE, _mlstm_strong, log_decay=_mlstm_log_decay),
    "slstm": Case(sj.slstm(H, num_heads=HEADS), I, _torch_reference(_slstm_reference),
                  ({"fused": True}, {"fused": False}), _slstm_strong,
                  log_decay=_slstm_log_decay),
    "rg_lru": Case(sj.rg_lru(H, num_heads=HEADS), H, _jax_reference(_rg_lru_reference),
                   ASSOCIATIVE, _rg_lru_strong, log_decay=_rg_lru_log_decay),
    "s6": Case(sj.s6(H, state_size=4, delta_rank=2), H, _jax_reference(_s6_reference),
               ASSOCIATIVE, _s6_strong, log_decay=_s6_log_decay),
    "mamba2": Case(sj.mamba2(H, num_heads=HEADS, state_size=8), I,
                   _jax_reference(_mamba2_reference), CHUNKWISE,
                   functools.partial(_decay_strong, a_name="a_log", w_name="w_delta",
                                     b_name="b_delta"), log_decay=_mamba2_log_decay),
    "delta_net": Case(sj.delta_net(H, num_heads=HEADS), I, _jax_reference(_delta_reference),
                      CHUNKWISE, lambda p, rng, I: p, input_scale=4.0),
    "gated_delta_net": Case(sj.gated_delta_net(H, num_heads=HEADS), I,
                            _jax_reference(_delta_reference), CHUNKWISE,
                            functools.partial(_decay_strong, a_name="a_log",
                                              w_name="w_alpha", b_name="b_alpha"),
                            log_decay=_gated_delta_log_decay),
}
NAMES = sorted(CASES)
REGIMES = ["default", "strong"]


@functools.lru_cache(maxsize=None)
def _setup(name, regime):
    """Float64 params and inputs ``[2, T, I]`` of float32 numbers, and the weights of
    the linear functional of each run."""
    case = CASES[name]
    rng = np.random.default_rng(sorted(CASES).index(name))
    params = case.cell.init(jax.random.PRNGKey(0), case.input_size)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    scale = 1.0
    if regime == "strong":
        params = case.strong(params, rng, case.input_size)
        scale = case.input_scale
    params = jax.tree_util.tree_map(_f32, params)
    xs = _f32(scale * rng.standard_normal((2, T, case.input_size)))
    state = [np.shape(s) for s in _leaves(case.cell.initial_state(_as32(params)))]
    out = case.cell.output_size
    weights = {
        "lengths": (rng.standard_normal((2, T, out)),
                    [rng.standard_normal((2,) + s) for s in state]),
        "reverse": (rng.standard_normal((T, out)), [rng.standard_normal(s) for s in state]),
    }
    return params, xs, jax.tree_util.tree_map(_f32, weights)


def _run_fns(cell, form):
    """The two unrolls: both sequences forward with ``lengths`` (72, 45) -- padding at
    the end -- in chunks of 16 when chunked; the first, whole, in reverse, through
    ``unroll`` in its default chunks (32 on CPU)."""
    chunk = {"chunk_size": 16} if form.get("chunkwise") else {}
    return {
        "lengths": lambda p, x: sj.unroll_batch(cell, p, x, lengths=jnp.array(LENGTHS),
                                                **form, **chunk),
        "reverse": lambda p, x: sj.unroll(cell, p, x[0], reverse=True, **form),
    }


@functools.lru_cache(maxsize=None)
def _ours_fn(name, form_index, dtype):
    """The runs, their outputs and gradients, compiled for ``dtype`` at first call."""
    cell = CASES[name].cell
    runs = _run_fns(cell, CASES[name].forms[form_index])
    compiled = []

    def ours(params, xs, weights):
        out = {}
        for run, fn in runs.items():
            w_y, w_s = weights[run]

            def loss(p, x, fn=fn, w_y=w_y, w_s=w_s):
                final, ys = fn(p, x)
                value = jnp.sum(w_y * ys) + sum(jnp.sum(w * s) for w, s in
                                                zip(w_s, _leaves(final), strict=True))
                return value, (ys, final)

            (_, (ys, final)), (g_p, g_x) = jax.value_and_grad(
                loss, (0, 1), has_aux=True)(params, xs)
            out[run] = (ys, _leaves(final), _leaves(g_p), g_x)
        return out

    def call(*args):
        if not compiled:
            compiled.append(jax.jit(ours).lower(*args).compile(_COMPILER_OPTIONS))
        return compiled[0](*args)

    return call


def _ours(name, regime, form_index, dtype):
    """Our outputs, final state leaves, param gradients and input gradients per run."""
    params, xs, weights = _setup(name, regime)
    cast = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)
    out = _ours_fn(name, form_index, dtype)(cast(params), cast(xs), cast(weights))
    return jax.tree_util.tree_map(np.asarray, out)


def _job(reference, params, x, length, reverse, w_y, w_s):
    """The reference on one sequence's valid prefix (reversed for a reverse run), put
    back in the unroll's layout: outputs and input gradients at the valid steps, zero
    at the padded ones."""
    order = (lambda a: a[:length][::-1]) if reverse else (lambda a: a[:length])
    ys, final, g_p, g_x = reference(params, np.ascontiguousarray(order(x)),
                                    np.ascontiguousarray(order(w_y)), w_s)
    full = lambda a, like: np.concatenate([order(a), np.zeros((like.shape[0] - length,)
                                                              + like.shape[1:])])
    return full(ys, w_y), final, g_p, full(g_x, x)


@functools.lru_cache(maxsize=None)
def _reference(name, regime):
    """The float64 reference of every run, in ``_ours``' layout."""
    case = CASES[name]
    params, xs, weights = _setup(name, regime)
    ref = case.reference
    out = {}
    w_y, w_s = weights["lengths"]
    jobs = [_job(ref, params, xs[b], n, False, w_y[b], [w[b] for w in w_s])
            for b, n in enumerate(LENGTHS)]
    out["lengths"] = (np.stack([j[0] for j in jobs]),
                      [np.stack(s) for s in zip(*(j[1] for j in jobs))],
                      [sum(g) for g in zip(*(j[2] for j in jobs))],
                      np.stack([j[3] for j in jobs]))
    w_y, w_s = weights["reverse"]
    ys, final, g_p, g_x = _job(ref, params, xs[0], T, True, w_y, w_s)
    out["reverse"] = (ys, final, g_p, np.stack([g_x, np.zeros_like(g_x)]))
    return out


def _named(name, results):
    """``{"run | what": array}``: outputs, state leaves, param gradients, input
    gradients."""
    case = CASES[name]
    params = _setup(name, "default")[0]
    state = case.cell.initial_state(_as32(params))
    state_names = getattr(state, "_fields", None) or ["h"]
    out = {}
    for run, (ys, final, g_p, g_x) in results.items():
        out[f"{run} | y"] = ys
        out.update({f"{run} | state.{n}": s for n, s in zip(state_names, final, strict=True)})
        out.update({f"{run} | d/d{n}": g for n, g in zip(params._fields, g_p, strict=True)})
        out[f"{run} | d/dxs"] = g_x
    return out


def parity_errors(name, regime, dtype):
    """``{array: {form: error against the float64 reference}}`` for the form under
    test (``"form"``) and the step form (``"step"``)."""
    with jax.enable_x64(True):
        ref = _named(name, _reference(name, regime))
    forms = {}
    for index, label in enumerate(("form", "step")):
        if dtype == jnp.float64:
            with jax.enable_x64(True):
                forms[label] = _named(name, _ours(name, regime, index, jnp.float64))
        else:
            forms[label] = _named(name, _ours(name, regime, index, jnp.float32))
    return {k: {label: _error(forms[label][k], b) for label in forms}
            for k, b in ref.items()}


def _describe(name, form_index):
    return ", ".join(f"{k}={v}" for k, v in CASES[name].forms[form_index].items())


@pytest.mark.parametrize("name", NAMES)
def test_whole_cell_matches_reference_float64(name):
    """Both forms within 1e-10 of the float64 reference, in both regimes: outputs, final
    states, gradients w.r.t. every parameter and the inputs, in both runs.
    (One test per cell: the regimes share its compiled programs.)"""
    bad = [f"{regime} | {k} [{_describe(name, i)}]: {e[label]:.2e}"
           for regime in REGIMES
           for k, e in parity_errors(name, regime, jnp.float64).items()
           for i, label in enumerate(("form", "step")) if not e[label] <= TOL64]
    assert not bad, f"{name}, errors above {TOL64:g}:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", NAMES)
def test_whole_cell_matches_reference_float32(name):
    """The form under test (chunkwise / associative / fused) within
    :func:`float32_bound` of the float64 reference, every array, both regimes; the step
    form finite."""
    bad = []
    for regime in REGIMES:
        errors = parity_errors(name, regime, jnp.float32)
        assert all(np.isfinite(e["step"]) for e in errors.values()), regime
        bad += [f"{regime} | {k} [{_describe(name, 0)}]: {e['form']:.2e} > bound "
                f"{float32_bound(e['step']):.2e} (step form {e['step']:.2e})"
                for k, e in errors.items() if not e["form"] <= float32_bound(e["step"])]
    assert not bad, f"{name}, float32:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n].log_decay is not None])
def test_strong_regime_decays_as_stated(name):
    """The strong regime's per-step log-decays lie in about [-45, -5] (so the float32
    checks above are where a chunked form loses accuracy), in every run's data."""
    params, xs, _ = _setup(name, "strong")
    decay = CASES[name].log_decay(params, xs.reshape(-1, xs.shape[-1]))
    assert -48.0 <= np.min(decay) and np.max(decay) <= -4.0, (np.min(decay), np.max(decay))


@pytest.mark.parametrize("name", ["delta_net", "gated_delta_net"])
@pytest.mark.parametrize("regime", REGIMES)
def test_delta_transcription_matches_flash_linear_attention(name, regime):
    """The float64 transcription's recurrence is fla's: its naive recurrences (float32
    inside) on the same features agree to float32 accuracy."""
    params, xs, _ = _setup(name, regime)
    error_o, error_S = _fla_anchor(params, xs[0])
    assert error_o < 1e-5 and error_S < 1e-5, (error_o, error_S)

