"""The matrix-state cells (mlstm, delta_net, gated_delta_net, mamba2) against code and
listings nobody here wrote -- the xLSTM authors' PyTorch backends and JAX kernels,
flash-linear-attention's naive delta-rule recurrences, Mamba-2's minimal SSD listing
(Dao & Gu 2024, Listing 1) in float64 ``jax.numpy`` -- and their chunkwise-parallel form
against their one-step form. The generic contract tests of ``test_unroll.py`` run on
these cells too.

The reference files are loaded by path (``_references.load``): ``mlstm_kernels``' and
``fla``'s package ``__init__``s import ``jax_triton`` / ``triton``, which are not
installed. The whole cells -- projections, gates, norms -- against the same references
are in ``test_cell_parity.py``."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax import lax

import seqjax as sj
from seqjax import chunkwise as cw
from seqjax import diagnostics

from _jaxpr import scans
from _references import load, reference_numerics, ssd_minimal_discrete


def _tm(x):
    """``[B, heads, T, ...] -> [T, B, heads, ...]`` (the unroll's time-major layout)."""
    return jnp.moveaxis(jnp.asarray(x), 2, 0)


def _bm(x):
    """``[T, B, heads, ...] -> [B, heads, T, ...]``."""
    return jnp.moveaxis(x, 0, 2)


def _close(a, b, tol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                                   rtol=tol, atol=tol)


# ------------------------------------------------------------ the authors' references


def test_mlstm_matches_xlstm_and_mlstm_kernels(x64):
    """The stabilised mLSTM recurrence (chunks of 5 over 12 steps: uneven) against the
    xlstm package's parallel, recurrent-step and chunkwise PyTorch backends and the
    mlstm_kernels native JAX step and chunkwise forward, float64; gradients against
    PyTorch autograd through the parallel form."""
    backends = load("xlstm", "blocks/mlstm/backends.py")
    kernels_step = load("mlstm_kernels", "jax/recurrent/native_step.py")
    kernels_chunk = load("mlstm_kernels", "jax/chunkwise/native/fw.py")
    B, NH, S, D = 2, 2, 12, 4
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((B, NH, S, D)) for _ in range(3))
    i_pre = 3.0 * rng.standard_normal((B, NH, S))
    f_pre = 2.0 + 3.0 * rng.standard_normal((B, NH, S))
    C0, n0 = rng.standard_normal((B, NH, D, D)), rng.standard_normal((B, NH, D))
    m0 = rng.standard_normal((B, NH))
    zero = (np.zeros_like(C0), np.zeros_like(n0), np.zeros_like(m0))

    def ours(q, k, v, i_pre, f_pre, state, eps):
        f = cw.GatedFeatures(_tm(q) * D ** -0.5, _tm(k), _tm(v), jax.nn.log_sigmoid(_tm(f_pre)),
                             _tm(i_pre))
        state = cw.Normalised(*(jnp.asarray(s) for s in state))
        final, h = cw.gated_outer_product(normalised=True, eps=eps).chunked(state, f, None, 5)
        return final, _bm(h)

    t = lambda x: torch.tensor(x, dtype=torch.float64)
    # parallel form (no initial state; eps = 0, where the normaliser's scale cancels)
    h_par = backends.parallel_stabilized_simple(t(q), t(k), t(v), t(i_pre)[..., None],
                                                t(f_pre)[..., None], eps=0.0)
    _close(ours(q, k, v, i_pre, f_pre, zero, 0.0)[1], h_par.numpy(), 1e-10)

    # recurrent step and chunkwise forms from an initial state, eps = 1e-6
    final, h = ours(q, k, v, i_pre, f_pre, (C0, n0, m0), 1e-6)
    state = (t(C0) / D ** 0.5, t(n0)[..., None] / D ** 0.5, t(m0)[..., None, None])
    steps = []
    for s in range(S):
        one = lambda x: t(x[:, :, s:s + 1])
        h_s, state = backends.recurrent_step_stabilized_simple(
            *state, one(q), one(k), one(v), one(i_pre)[..., None], one(f_pre)[..., None])
        steps.append(h_s.numpy())
    _close(h, np.concatenate(steps, axis=2), 1e-10)  # xlstm's step scales k, not q:
    _close(final, (state[0].numpy() * D ** 0.5, state[1][..., 0].numpy() * D ** 0.5,
                   state[2][..., 0, 0].numpy()), 1e-10)  # its C, n are ours / sqrt(d_k)
    h_chunk, (C, n, m) = backends.chunkwise_simple(
        t(q), t(k), t(v), t(i_pre), t(f_pre), t(C0), t(n0), t(m0), chunk_size=4,
        return_last_state=True)
    _close((final, h), ((C.numpy(), n.numpy(), m.reshape(B, NH).numpy()), h_chunk.numpy()),
           1e-10)

    with reference_numerics():
        h_k, _, _, (C, n, m), _ = kernels_chunk.mlstm_chunkwise_fw(
            *(jnp.asarray(a) for a in (q, k, v, i_pre, f_pre, C0, n0, m0)),
            return_last_states=True, chunk_size=4, eps=1e-6)
        state, steps = (jnp.asarray(C0), jnp.asarray(n0), jnp.asarray(m0)[..., None]), []
        for s in range(S):
            h_s, state = kernels_step.mlstm_recurrent_step__native(
                *(jnp.asarray(a[:, :, s]) for a in (q, k, v)),
                jnp.asarray(i_pre[:, :, s, None]), jnp.asarray(f_pre[:, :, s, None]), *state)
            steps.append(np.asarray(h_s))
    _close((final, h), ((C, n, m), h_k), 1e-10)
    _close((final, h), ((state[0], state[1], state[2][..., 0]), np.stack(steps, axis=2)),
           1e-10)

    # gradients w.r.t. q, k, v and both gates' pre-activations
    w = rng.standard_normal((B, NH, S, D))
    grads = jax.grad(lambda *a: jnp.sum(jnp.asarray(w) * ours(*a, zero, 0.0)[1]),
                     argnums=(0, 1, 2, 3, 4))(*(jnp.asarray(a) for a in (q, k, v, i_pre, f_pre)))
    leaves = [t(a).requires_grad_() for a in (q, k, v, i_pre, f_pre)]
    h_par = backends.parallel_stabilized_simple(*leaves[:3], leaves[3][..., None],
                                                leaves[4][..., None], eps=0.0)
    torch.sum(t(w) * h_par).backward()
    _close(grads, [a.grad.numpy() for a in leaves], 1e-9)


def _delta_inputs(rng, B, NH, S, D, dtype=np.float32):
    q, k, v = (rng.standard_normal((B, NH, S, D)).astype(dtype) for _ in range(3))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    beta = (1 / (1 + np.exp(-rng.standard_normal((B, NH, S))))).astype(dtype)
    log_alpha = -np.abs(rng.standard_normal((B, NH, S))).astype(dtype)
    S0 = rng.standard_normal((B, NH, D, D)).astype(dtype)
    return q, k, v, beta, log_alpha, S0


def _ours_delta(q, k, v, beta, log_alpha, S0, chunk=5):
    D = q.shape[-1]
    f = cw.DeltaFeatures(_tm(q) * D ** -0.5, _tm(k), _tm(v), _tm(beta),
                         None if log_alpha is None else _tm(log_alpha))
    final, o = cw.delta_rule().chunked(jnp.asarray(S0), f, None, chunk)
    return final, _bm(o)


def _torch_grads(fn, arrays, weights):
    leaves = [torch.tensor(a).requires_grad_() for a in arrays]
    outputs = fn(*leaves)
    sum(torch.sum(torch.tensor(w) * o) for w, o in zip(weights, outputs)).backward()
    return [a.grad.numpy() for a in leaves]


def test_delta_net_matches_flash_linear_attention():
    """DeltaNet's recurrence (chunks of 5 over 12 steps) against flash-linear-attention's
    ``delta_rule_recurrence`` (from an initial state) and ``delta_rule_chunkwise``
    (from zero), outputs and final states, and gradients by PyTorch autograd through
    the recurrence. The references compute in float32, so float32 tolerances."""
    naive = load("fla", "ops/delta_rule/naive.py")
    rng = np.random.default_rng(1)
    q, k, v, beta, _, S0 = _delta_inputs(rng, 2, 2, 12, 4)
    t = torch.tensor
    o_ref, S_ref = naive.delta_rule_recurrence(t(q), t(k), t(v), t(beta), t(S0))
    final, o = _ours_delta(q, k, v, beta, None, S0)
    _close((final, o), (S_ref.numpy(), o_ref.numpy()), 2e-5)
    o_ref, S_ref = naive.delta_rule_chunkwise(t(q), t(k), t(v), t(beta), chunk_size=4)
    _close(_ours_delta(q, k, v, beta, None, np.zeros_like(S0)), (S_ref.numpy(),
                                                                  o_ref.numpy()), 2e-5)

    w_o, w_S = rng.standard_normal(o.shape).astype(np.float32), rng.standard_normal(
        S0.shape).astype(np.float32)
    ref = _torch_grads(lambda *a: naive.delta_rule_recurrence(*a)[::-1],
                       (q, k, v, beta, S0), (w_S, w_o))
    ours = jax.grad(lambda *a: sum(jnp.sum(w * o) for w, o in zip(
        (w_S, w_o), _ours_delta(a[0], a[1], a[2], a[3], None, a[4]))),
        argnums=(0, 1, 2, 3, 4))(q, k, v, beta, S0)
    _close(ours, ref, 1e-4)


def test_gated_delta_net_matches_flash_linear_attention():
    """Gated DeltaNet's recurrence against flash-linear-attention's
    ``naive_recurrent_gated_delta_rule`` and ``naive_chunk_gated_delta_rule`` (both from
    an initial state; ``g`` is ``log alpha``), and gradients through the recurrence."""
    naive = load("fla", "ops/gated_delta_rule/naive.py")
    rng = np.random.default_rng(2)
    q, k, v, beta, log_alpha, S0 = _delta_inputs(rng, 2, 2, 12, 4)
    tt = lambda x: torch.tensor(np.swapaxes(x, 1, 2))  # their [B, T, heads, ...] layout
    final, o = _ours_delta(q, k, v, beta, log_alpha, S0)
    o_ref, S_ref = naive.naive_recurrent_gated_delta_rule(
        tt(q), tt(k), tt(v), tt(beta), tt(log_alpha), initial_state=torch.tensor(S0),
        output_final_state=True)
    _close((final, o), (S_ref.numpy(), np.swapaxes(o_ref.numpy(), 1, 2)), 2e-5)
    o_ref, S_ref = naive.naive_chunk_gated_delta_rule(
        tt(q), tt(k), tt(v), tt(log_alpha), tt(beta), chunk_size=4,
        initial_state=torch.tensor(S0), output_final_state=True)
    _close((final, o), (S_ref.numpy(), np.swapaxes(o_ref.numpy(), 1, 2)), 2e-5)

    w_o, w_S = rng.standard_normal(o.shape).astype(np.float32), rng.standard_normal(
        S0.shape).astype(np.float32)

    def reference(q, k, v, beta, g, S0):
        o, S = naive.naive_recurrent_gated_delta_rule(
            *(x.transpose(1, 2) for x in (q, k, v, beta, g)), initial_state=S0,
            output_final_state=True)
        return S, o.transpose(1, 2)

    ref = _torch_grads(reference, (q, k, v, beta, log_alpha, S0), (w_S, w_o))
    ours = jax.grad(lambda *a: sum(jnp.sum(w * o) for w, o in zip(
        (w_S, w_o), _ours_delta(*a))), argnums=(0, 1, 2, 3, 4, 5))(
            q, k, v, beta, log_alpha, S0)
    _close(ours, ref, 1e-4)


def test_mamba2_matches_the_minimal_ssd_listing(x64):
    """Mamba-2's SSD recurrence (one group of ``B, C`` shared by the heads; chunks of 5
    over 12 steps) against the paper's minimal listing (chunks of 4), float64, from an
    initial state."""
    rng = np.random.default_rng(3)
    b, l, h, p, n = 2, 12, 3, 4, 5
    dt = np.log1p(np.exp(rng.standard_normal((b, l, h)) - 1))
    X = rng.standard_normal((b, l, h, p)) * dt[..., None]
    A = -np.exp(rng.standard_normal(h)) * dt
    B, C = rng.standard_normal((b, l, 1, n)), rng.standard_normal((b, l, 1, n))
    h0 = rng.standard_normal((b, 1, h, p, n))
    heads = lambda a: jnp.asarray(np.broadcast_to(a, (b, l, h, n)))  # the listing's layout
    with reference_numerics():
        Y, final = ssd_minimal_discrete(jnp.asarray(X), jnp.asarray(A), heads(B), heads(C), 4,
                                        jnp.asarray(h0))
    sw = lambda x: jnp.asarray(np.swapaxes(x, 0, 1))  # [b, l, ...] -> [l, b, ...]
    f = cw.GatedFeatures(sw(C), sw(B), sw(X), sw(A), None)
    ours_final, ours_Y = cw.gated_outer_product(normalised=False).chunked(
        jnp.asarray(np.swapaxes(h0[:, 0], -1, -2)), f, None, 5)  # ours: [h, n, p]
    _close((np.swapaxes(ours_final, -1, -2), np.swapaxes(ours_Y, 0, 1)), (final, Y), 1e-10)


# ------------------------------------------------ the chunkwise form against the step

H, I = 6, 5
MATRIX = {
    "mlstm": lambda dt: sj.mlstm(H, num_heads=2, gate_init=jax.nn.initializers.normal(0.5),
                                 param_dtype=dt),
    "delta_net": lambda dt: sj.delta_net(H, num_heads=2, param_dtype=dt),
    "gated_delta_net": lambda dt: sj.gated_delta_net(H, num_heads=2, param_dtype=dt),
    "mamba2": lambda dt: sj.mamba2(H, num_heads=2, state_size=4, param_dtype=dt),
}


def _random_state(cell, params, batch, key):
    leaves, tree = jax.tree_util.tree_flatten(cell.initial_state(params))
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(tree, [
        jax.random.normal(k, (batch,) + l.shape, l.dtype) for k, l in zip(keys, leaves)])


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_chunkwise_equals_step_float64(name, x64):
    """Chunks of 4 over 11 steps (uneven last chunk), a random initial state, lengths
    11, 6 and 0, forward and reverse: outputs, final states and gradients w.r.t.
    params, inputs and initial state equal the step-by-step scan within 1e-10; and
    streaming the sequence in two calls equals one call."""
    cell = MATRIX[name](jnp.float64)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    params = cell.init(k1, I)
    xs = jax.random.normal(k2, (3, 11, I), jnp.float64)
    state = _random_state(cell, params, 3, k3)
    lengths = jnp.array([11, 6, 0])

    @functools.partial(jax.jit, static_argnums=3)
    def both_ways(params, xs, state, chunkwise):
        def loss(params, xs, state):
            runs = [sj.unroll_batch(cell, params, xs, state, lengths=lengths, reverse=r,
                                    chunkwise=chunkwise, chunk_size=4) for r in (False, True)]
            value = sum(jnp.sum(jnp.sin(ys)) + sum(jnp.sum(l ** 2) for l in
                                                    jax.tree_util.tree_leaves(final))
                        for final, ys in runs)
            return value, runs

        result = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(params, xs, state)
        if chunkwise is False:
            return result, None
        first = sj.unroll_batch(cell, params, xs[:, :7], state, chunkwise=True, chunk_size=3)
        second = sj.unroll_batch(cell, params, xs[:, 7:], first[0], chunkwise=True,
                                 chunk_size=3)
        whole = sj.unroll_batch(cell, params, xs, state, chunkwise=True, chunk_size=3)
        return result, (whole, (second[0], jnp.concatenate([first[1], second[1]], axis=1)))

    ((_, chunked), grads), (whole, streamed) = both_ways(params, xs, state, True)
    ((_, stepped), step_grads), _ = both_ways(params, xs, state, False)
    _close(chunked, stepped, 1e-10)
    _close(grads, step_grads, 1e-10)
    np.testing.assert_array_equal(np.asarray(chunked[0][1][2]), 0.0)  # length 0: zeros
    _close(jax.tree_util.tree_map(lambda a: a[2], chunked[0][0]),  # ... and the state kept
           jax.tree_util.tree_map(lambda a: a[2], state), 0.0)
    _close(streamed, whole, 1e-10)


def test_vmap_stack_and_bidirectional_use_the_chunkwise_form(x64):
    """``jax.vmap(unroll)`` equals ``unroll_batch``; a stack and a bidirectional model of
    matrix-state cells give the same numbers chunked and step by step."""
    stack = sj.stack(MATRIX["mlstm"](jnp.float64), MATRIX["gated_delta_net"](jnp.float64),
                     residual=True)
    model = sj.bidirectional(MATRIX["mamba2"](jnp.float64), MATRIX["delta_net"](jnp.float64))
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 9, I), jnp.float64)
    lengths = jnp.array([9, 4, 1])
    for net in (stack, model):
        params = net.init(jax.random.PRNGKey(0), I)
        batch = sj.unroll_batch(net, params, xs, lengths=lengths, chunkwise=True,
                                chunk_size=2)
        mapped = jax.vmap(lambda x, n: sj.unroll(net, params, x, length=n, chunkwise=True,
                                                 chunk_size=2))(xs, lengths)
        stepped = sj.unroll_batch(net, params, xs, lengths=lengths, chunkwise=False)
        _close(batch, mapped, 1e-10)
        _close(batch, stepped, 1e-10)


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_chunkwise_equals_step_float32(name):
    """T = 512, a batch of 2, the cells' own initialisation: the chunkwise form (chunks
    of 64) equals the step-by-step scan within 1e-5 (absolute and relative) in float32."""
    cell = MATRIX[name](jnp.float32)
    params = cell.init(jax.random.PRNGKey(0), I)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 512, I))
    run = jax.jit(lambda p, x, c: sj.unroll_batch(cell, p, x, chunkwise=c, chunk_size=64),
                  static_argnums=2)
    _close(run(params, xs, True), run(params, xs, False), 1e-5)


def _scan_lengths(fn, *args):
    return [e.params["length"] for e in scans(fn, *args)]


def test_inference_scans_and_derivatives_use_the_chunkwise_form(x64):
    """``chunkwise=None`` on CPU: an unroll that nothing differentiates runs as a plain
    scan over the 12 steps (measured faster forward, docs/bench/chunkwise.md), while
    ``jax.grad`` and ``jax.jvp`` see only the chunkwise form (3 chunks of 4; a
    ``custom_jvp``), so the backward pass stores one state per chunk. Values and
    derivatives equal ``chunkwise=True``'s."""
    cell = MATRIX["gated_delta_net"](jnp.float64)
    params = cell.init(jax.random.PRNGKey(0), I)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 12, I), jnp.float64)

    def fwd(params, xs, chunkwise=None):
        return sj.unroll_batch(cell, params, xs, chunkwise=chunkwise, chunk_size=4)[1]

    grad = jax.grad(lambda p, x: jnp.sum(jnp.sin(fwd(p, x))), argnums=(0, 1))
    if jax.default_backend() == "cpu":
        assert 12 in _scan_lengths(fwd, params, xs) and 3 not in _scan_lengths(fwd, params, xs)
    assert 3 in _scan_lengths(grad, params, xs) and 12 not in _scan_lengths(grad, params, xs)
    _close(fwd(params, xs), fwd(params, xs, True), 1e-10)
    _close(grad(params, xs), jax.grad(lambda p, x: jnp.sum(jnp.sin(fwd(p, x, True))),
                                      argnums=(0, 1))(params, xs), 1e-10)
    tangent = jax.random.normal(jax.random.PRNGKey(2), xs.shape, jnp.float64)
    _close(jax.jvp(lambda x: fwd(params, x), (xs,), (tangent,)),
           jax.jvp(lambda x: fwd(params, x, True), (xs,), (tangent,)), 1e-10)


def _recurrences(cell, params, xs, dtype):
    """The recurrence's outputs and final state for features computed in ``dtype``:
    chunkwise, step by step (a scan of ``update``/``read``, the state stored in
    ``dtype``), and chunkwise from the same features in float32 (the reference)."""
    form = cell.chunkwise
    f = form.features(params, xs.astype(dtype))
    state = jax.tree_util.tree_map(lambda s: s[None], cell.initial_state(params))

    def body(s, f_t):
        s = jax.vmap(form.update)(s, f_t)
        return s, jax.vmap(form.read)(s, f_t)

    wide = lambda tree: jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), tree)
    return (form.chunked(state, f, None, 64), lax.scan(body, state, f),
            form.chunked(wide(state), wide(f), None, 64))


def _stress_params(name, params):
    """Large gate pre-activations: mLSTM's exponential input gate and sigmoid forget
    gate at +-50 and beyond; Mamba-2's and Gated DeltaNet's per-step decays down to
    ``exp(-800)``."""
    def big(w, scale):
        return (scale * jax.random.normal(jax.random.PRNGKey(9), w.shape)).astype(w.dtype)

    if name == "mlstm":
        return params._replace(w_i=big(params.w_i, 25.0), w_f=big(params.w_f, 25.0))
    if name == "mamba2":
        return params._replace(w_delta=big(params.w_delta, 10.0))
    return params._replace(w_alpha=big(params.w_alpha, 10.0))


@pytest.mark.parametrize("name", ["mlstm", "mamba2"])
def test_long_sequences_with_large_gates(name):
    """T = 4,096 with gate pre-activations of +-50 (mLSTM's exponential input gate) or
    per-step decays far below float32's range (Mamba-2; the delta rule's decay is the
    same exponential of a segment sum), compared where the readout's normalisation
    cannot amplify rounding: the recurrence's outputs.

    Nothing overflows in float32 or bfloat16, either form. Float32: chunkwise == step
    within 1e-4 of the largest output (measured 1e-5 to 3e-5), final states within
    5e-4 of the largest entry. Bfloat16 (the chunkwise form computes in float32 inside,
    the step stores its state in bfloat16 at every step): the chunkwise form is within
    1e-2 of the float32 evaluation of the same features (measured 2e-3), the step form
    within 0.2 (measured 0.11 for the mLSTM, whose stabilised state loses most; 2e-3
    for Mamba-2)."""
    xs = jax.random.normal(jax.random.PRNGKey(1), (4096, 1, I))
    for dtype in (jnp.float32, jnp.bfloat16):
        cell = MATRIX[name](dtype)
        params = _stress_params(name, cell.init(jax.random.PRNGKey(0), I))
        ys = sj.unroll(cell, params, xs[:, 0].astype(dtype), chunkwise=True)[1]
        assert np.all(np.isfinite(np.asarray(ys, np.float32)))
        chunked, stepped, reference = jax.jit(
            lambda p, cell=cell, dtype=dtype: _recurrences(cell, p, xs, dtype))(params)
        for leaf in jax.tree_util.tree_leaves((chunked, stepped, reference)):
            assert np.all(np.isfinite(np.asarray(leaf, np.float32))), dtype
        o_chunk, o_step, o_ref = (np.asarray(r[1], np.float32) for r in (chunked, stepped,
                                                                       reference))
        scale = np.max(np.abs(o_ref))
        if dtype == jnp.float32:
            np.testing.assert_allclose(o_chunk, o_step, rtol=0, atol=1e-4 * scale)
            for a, b in zip(jax.tree_util.tree_leaves(chunked[0]),
                            jax.tree_util.tree_leaves(stepped[0])):
                np.testing.assert_allclose(a, b, rtol=0, atol=5e-4 * np.max(np.abs(b)))
        else:
            np.testing.assert_allclose(o_chunk, o_ref, rtol=0, atol=1e-2 * scale)
            np.testing.assert_allclose(o_step, o_ref, rtol=0, atol=0.2 * scale)


@pytest.mark.parametrize("name", ["mlstm", "gated_delta_net"])
def test_backward_keeps_one_state_per_chunk_not_per_step(name):
    """T = 8,192, one head of 64 x 64: what ``jax.vjp`` saves for the backward pass
    (shapes only, nothing runs). The chunkwise form keeps no array as large as one
    state per step (its largest is a chunk's worth); the step-by-step scan keeps
    exactly that, which the same check detects."""
    T = 8192
    cell = getattr(sj, name)(64)
    params = jax.eval_shape(lambda k: cell.init(k, 64), jax.random.PRNGKey(0))
    xs = jax.ShapeDtypeStruct((1, T, 64), jnp.float32)
    per_step = T * 64 * 64  # the [heads=1, d_k, d_v] state at every step

    def residuals(chunkwise):
        def vjp(params, xs):
            loss = lambda p, x: jnp.sum(sj.unroll_batch(cell, p, x, chunkwise=chunkwise)[1])
            return jax.vjp(loss, params, xs)[1]

        return [r.size for r in jax.tree_util.tree_leaves(jax.eval_shape(vjp, params, xs))]

    chunked = residuals(None)
    assert max(chunked) <= per_step // 32 and sum(chunked) < per_step
    assert max(residuals(False)) >= per_step


# ------------------------------------------------------------------ the cells' surface


def test_parameter_counts_and_heads():
    I_, H_ = 3, 8
    for cell, count in (
            (sj.mlstm(H_, num_heads=2), 4 * I_ * H_ + 2 * I_ * 2 + 2 * 2 + 2 * H_),
            (sj.delta_net(H_, num_heads=2), 4 * I_ * H_ + I_ * 2 + H_ // 2),
            (sj.gated_delta_net(H_, num_heads=2), 4 * I_ * H_ + 2 * I_ * 2 + 2 * 2 + H_ // 2),
            (sj.mamba2(H_, num_heads=2, state_size=5), 2 * I_ * H_ + 2 * I_ * 5 + I_ * 2
             + 3 * 2 + H_)):
        params = jax.eval_shape(lambda k, cell=cell: cell.init(k, I_), jax.random.PRNGKey(0))
        assert sum(a.size for a in jax.tree_util.tree_leaves(params)) == count, cell
    cell = sj.mlstm(128)  # default: heads of 64 channels
    params = jax.eval_shape(lambda k: cell.init(k, 2), jax.random.PRNGKey(0))
    assert jax.eval_shape(cell.initial_state, params).C.shape == (2, 64, 64)
    assert repr(sj.delta_net(8, num_heads=2)) == (
        "delta_net(hidden_size=8, num_heads=2, key_size=None, norm_eps=1e-05)")


def test_bad_options_raise_clear_errors():
    cell = sj.mlstm(4, num_heads=2)
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = jnp.ones((5, 3))
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size must be a positive int"):
            sj.unroll(cell, params, xs, chunk_size=bad)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        jax.jit(lambda x: sj.unroll(cell, params, x, chunk_size=0))(xs)  # at trace time
    with pytest.raises(ValueError, match=r"num_heads \(3\) must divide hidden_size \(8\)"):
        sj.gated_delta_net(8, num_heads=3)
    with pytest.raises(ValueError, match="heads of 64 channels.*pass num_heads"):
        sj.mamba2(200)
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        cell.apply(params, cell.initial_state(params), jnp.ones((2, 3)))


def test_diagnostics_read_the_matrix_state():
    """``perturbed_unroll`` with a zero perturbation is the unroll (the readout is the
    cell's own), so ``seqjax gradnorm`` measures these cells; their params have no
    recurrent matrix."""
    cell = MATRIX["mamba2"](jnp.float32)
    params = cell.init(jax.random.PRNGKey(0), I)
    xs = jax.random.normal(jax.random.PRNGKey(1), (6, I))
    zero = diagnostics.zero_perturbation(cell, params, 6)
    _close(diagnostics.perturbed_unroll(cell, params, xs, zero, length=4),
           sj.unroll(cell, params, xs, length=4), 1e-5)
    assert diagnostics.recurrent_spectrum(params) == {}
