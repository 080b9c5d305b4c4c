"""sLSTM, RG-LRU and S6 against their authors' code and the papers' equations.

* sLSTM: ``xlstm.blocks.slstm.cell.sLSTMCell`` with ``backend="vanilla"`` (the
  authors' PyTorch reference; its default backend compiles CUDA), and float64 numpy
  of Beck et al. 2024's equations without the stabiliser.
* RG-LRU: ``recurrentgemma.jax.layers.RGLRU`` (Google DeepMind's JAX code).
* S6: float64 numpy of Gu & Dao 2023, Algorithm 2, written here from the paper
  (``mamba-ssm``'s ``selective_scan_ref`` needs CUDA to install).

The generic contract tests (loop, reverse, lengths, padded gradients, chunks, remat,
check_grads) run on these cells through the registry of ``tests/test_unroll.py``: for
rg_lru and s6 they compare the associative scan and the sequential scan (the CPU
default) with stepping ``apply``, with random states, lengths and both directions;
this file adds the parity tests, each cell's own properties, and the batch, jit,
stack, bidirectional, bfloat16, bad-input and parameter-count checks that the
registry runs on selected cells only.

The reference packages are in the ``test`` extra (so these tests never skip). The
whole cells against the same references, both forms, float64 and float32, are in
``test_cell_parity.py``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from recurrentgemma.jax import layers as rg_layers
from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

import seqjax as sj
from seqjax.bench import cells as bench_cells
from seqjax.bench import harness
from _jaxpr import scan_dots
from _references import reference_numerics

B, T = 2, 6


def _close(a, b, rtol=1e-5, atol=1e-5):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _f64(tree):
    return jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), tree)


# ----------------------------------------------------------------------------- sLSTM


def _xlstm_cell(H, heads, torch_dtype):
    config = sLSTMCellConfig(hidden_size=H, num_heads=heads, backend="vanilla",
                             dtype="float32", enable_automatic_mixed_precision=False)
    return sLSTMCell(config).to(torch_dtype)


def _slstm_params_from_xlstm(ref, dtype):
    """The weight conversion from xlstm's sLSTMCell (vanilla backend) to SLSTMParams.

    * ``r`` is xlstm's external ``recurrent_kernel`` layout ``[heads, d_in, gates,
      d_out]`` as it is (the vanilla cell stores ``[heads, gates * d_out, d_in]``;
      ``_recurrent_kernel_int2ext`` undoes that).
    * ``b`` is the vanilla cell's internal ``_bias_ [4H]``: gate-major ``i, f, z, o``,
      each gate's units head by head, as seqjax's ``b``.
    * ``w``: xlstm's cell takes the gates' pre-activations ``[B, T, 4H]`` and has no
      input weights; with ``w`` the identity ``[4H, 4H]`` seqjax's inputs are those
      pre-activations.
    """
    r = ref._recurrent_kernel_int2ext(ref._recurrent_kernel_).detach().numpy()
    b = ref._bias_.detach().numpy()
    return sj.SLSTMParams(jnp.eye(b.size, dtype=dtype), jnp.asarray(r, dtype),
                          jnp.asarray(b, dtype))


def _xlstm_setup(torch_dtype, H=8, heads=2, seed=0, scale=2.0):
    ref = _xlstm_cell(H, heads, torch_dtype)
    rng = np.random.default_rng(seed)
    d = H // heads
    with torch.no_grad():  # random weights: xlstm initialises R to zero
        r = rng.normal(0.0, 0.5, (heads, d, 4, d))
        ref._recurrent_kernel_.copy_(ref._recurrent_kernel_ext2int(torch.tensor(r)))
        ref._bias_.copy_(torch.tensor(rng.normal(0.0, 1.0, 4 * H)))
    x = rng.normal(0.0, scale, (B, T, 4 * H))  # large pre-activations: m is busy
    # a state in the cell's own range: n >= 1 after any step, m anywhere
    state = np.stack([np.tanh(rng.normal(size=(B, H))), rng.normal(size=(B, H)),
                      1.0 + rng.random((B, H)), rng.normal(size=(B, H))])
    return ref, x, state


def _xlstm_run(ref, x, state, dtype):
    """``(ys [B, T, H], final [4, B, H], grads)`` of xlstm's cell and a fixed loss."""
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    st = None if state is None else torch.tensor(state, dtype=dtype, requires_grad=True)
    ref.zero_grad()
    out, final = ref(xt, st)  # out [B, heads, T, d]
    ys = out.permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], -1)
    (torch.sin(ys).sum() + torch.cos(final).sum()).backward()
    grads = dict(x=xt.grad.numpy(), b=ref._bias_.grad.numpy(),
                 r=ref._recurrent_kernel_int2ext(ref._recurrent_kernel_.grad).numpy(),
                 state=None if st is None else st.grad.numpy())
    return ys.detach().numpy(), final.detach().numpy(), grads


def _slstm_loss(cell, params, xs, state, fused):
    final, ys = sj.unroll_batch(cell, params, xs, state, fused=fused)
    return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(jnp.cos(l)) for l in final), (final, ys)


_slstm_grad = jax.jit(jax.grad(_slstm_loss, argnums=(1, 2, 3), has_aux=True),
                      static_argnums=(0, 4))


@pytest.mark.parametrize("fresh", [False, True])
def test_slstm_matches_xlstm_float32(fresh):
    """Outputs, final (h, c, n, m) and gradients against xlstm's vanilla sLSTMCell in
    float32, from a given state and from a fresh one (where m_1 = i~_1)."""
    ref, x, state = _xlstm_setup(None)
    ref = ref.float()
    state = None if fresh else state
    ys_ref, final_ref, g_ref = _xlstm_run(ref, x, state, torch.float32)
    cell = sj.slstm(8, num_heads=2)
    params = _slstm_params_from_xlstm(ref, jnp.float32)
    xs = jnp.asarray(x, jnp.float32)
    s0 = None if fresh else sj.SLSTMState(*jnp.asarray(state, jnp.float32))
    for fused in (True, False):
        (gp, gx, gs), (final, ys) = _slstm_grad(cell, params, xs, s0, fused)
        _close(ys, ys_ref)
        _close(tuple(final), tuple(final_ref))
        _close((gx, gp.r, gp.b), (g_ref["x"], g_ref["r"], g_ref["b"]), rtol=1e-4, atol=1e-5)
        if not fresh:
            _close(tuple(gs), tuple(g_ref["state"]), rtol=1e-4, atol=1e-5)


def test_slstm_initialisation_is_xlstms():
    """Zero recurrent blocks and the power-law forget bias (xlstm's defaults), read off
    a freshly built xlstm cell through the same weight conversion."""
    H, heads = 24, 3
    ref = _xlstm_cell(H, heads, torch.float32)
    want = _slstm_params_from_xlstm(ref, jnp.float32)
    got = sj.slstm(H, num_heads=heads).init(jax.random.PRNGKey(0), 5)
    assert got.w.shape == (5, 4 * H) and got.r.shape == (heads, H // heads, 4, H // heads)
    np.testing.assert_array_equal(np.asarray(got.r), np.asarray(want.r))  # zeros
    np.testing.assert_allclose(np.asarray(got.b), np.asarray(want.b), atol=1e-6)
    f = np.asarray(got.b[H:2 * H]).reshape(heads, -1)
    assert f[0, 0] == 5.0 and f[0, -1] == pytest.approx(-7.0)  # per head, 5 down to -7


def _slstm_numpy(w, r, b, xs, log_forget):
    """The sLSTM of Beck et al. (section 2.2) without the stabiliser, from the zero
    state, in the dtype of ``w``."""
    heads, d, _, _ = r.shape
    H = heads * d
    dense = np.zeros((H, 4 * H), w.dtype)
    for k in range(heads):
        for g in range(4):
            dense[k * d:(k + 1) * d, g * H + k * d:g * H + (k + 1) * d] = r[k, :, g, :]
    h, c, n = np.zeros(H, w.dtype), np.zeros(H, w.dtype), np.zeros(H, w.dtype)
    ys = []
    for x in xs:
        pre = x @ w + h @ dense + b
        i_, f_, z_, o_ = np.split(pre, 4)
        i, f = np.exp(i_), np.exp(log_forget(f_))
        c = f * c + i * np.tanh(z_)
        n = f * n + i
        h = 1 / (1 + np.exp(-o_)) * c / n
        ys.append(h)
    return np.stack(ys), (c, n)


@pytest.mark.parametrize("gate", ["sigmoid", "exp"])
def test_slstm_equals_the_papers_equations_float64(x64, gate):
    log_forget = {"sigmoid": (jax.nn.log_sigmoid, lambda v: -np.logaddexp(0.0, -v)),
                  "exp": (lambda v: v, lambda v: v)}[gate]
    cell = sj.slstm(6, num_heads=3, log_forget=log_forget[0],
                    recurrent_init=jax.nn.initializers.normal(0.7),
                    bias_init=jax.nn.initializers.normal(1.0))
    params = _f64(cell.init(jax.random.PRNGKey(1), 3))
    xs = jax.random.normal(jax.random.PRNGKey(2), (9, 3), jnp.float64)
    ys_ref, (c, n) = _slstm_numpy(*(np.asarray(p) for p in params), np.asarray(xs),
                                  log_forget[1])
    final, ys = sj.unroll(cell, params, xs)
    np.testing.assert_allclose(np.asarray(ys), ys_ref, rtol=1e-10, atol=1e-12)
    # the stabilised c and n are the paper's scaled by exp(-m)
    scale = np.exp(-np.asarray(final.m))
    np.testing.assert_allclose(np.asarray(final.c), c * scale, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(final.n), n * scale, rtol=1e-10)


def test_slstm_stabiliser_keeps_float32_finite():
    """Input-gate pre-activations near 100 overflow exp in float32 (above 88.7); the
    stabilised cell stays finite and equal to its float64 run over 400 steps, and its
    gradient is finite. The unstabilised equations do overflow (the check can fail)."""
    H, I, steps = 8, 3, 400
    cell = sj.slstm(H, num_heads=2, recurrent_init=jax.nn.initializers.normal(0.3))
    params = cell.init(jax.random.PRNGKey(0), I)
    params = params._replace(b=params.b.at[:H].set(95.0))  # i~ around 95
    xs = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (steps, I))
    _, ys = sj.unroll(cell, params, xs)
    with jax.enable_x64(True):
        _, ys64 = sj.unroll(cell, _f64(params), xs.astype(jnp.float64))
        ys64 = np.asarray(ys64)
    assert np.all(np.isfinite(np.asarray(ys)))
    np.testing.assert_allclose(np.asarray(ys), ys64, atol=2e-5)
    grad = jax.grad(lambda p: jnp.sum(sj.unroll(cell, p, xs)[1]))(params)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grad)
    with np.errstate(over="ignore", invalid="ignore"):
        raw, _ = _slstm_numpy(*(np.asarray(p, np.float32) for p in params),
                              np.asarray(xs, np.float32), lambda v: -np.logaddexp(0.0, -v))
    assert raw.dtype == np.float32 and not np.all(np.isfinite(raw))


@pytest.mark.parametrize("reverse", [False, True])
def test_slstm_fused_backward_equals_autodiff_of_the_scan(x64, reverse):
    """fused=True (the Recurrent form: R's dense block-diagonal matrix, its gradient
    routed back to the blocks) against JAX differentiating the plain scan, with
    lengths, a state and both directions, in float64."""
    H, I = 6, 3
    cell = sj.slstm(H, num_heads=2, recurrent_init=jax.nn.initializers.normal(0.5))
    params = _f64(cell.init(jax.random.PRNGKey(0), I))
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 5, I), jnp.float64)
    k = jax.random.split(jax.random.PRNGKey(2), 4)
    state = sj.SLSTMState(jnp.tanh(jax.random.normal(k[0], (3, H), jnp.float64)),
                          jax.random.normal(k[1], (3, H), jnp.float64),
                          1.0 + jax.random.uniform(k[2], (3, H), jnp.float64),
                          jax.random.normal(k[3], (3, H), jnp.float64))
    lengths = jnp.array([5, 2, 0], jnp.int32)

    def loss(params, xs, state, fused):
        final, ys = sj.unroll_batch(cell, params, xs, state, lengths=lengths,
                                    reverse=reverse, fused=fused)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(jnp.cos(l)) for l in final)

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
    (v1, g1), (v2, g2) = grad(params, xs, state, True), grad(params, xs, state, False)
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-12)
    _close(g1, g2, rtol=1e-10, atol=1e-12)
    # the off-diagonal (cross-head) entries of the dense R get no gradient: r holds blocks
    assert g1[0].r.shape == params.r.shape
    if not reverse:  # the point of the fused form: one matmul (dr @ R.T) going back
        dots = scan_dots(jax.grad(lambda p, x: loss(p, x, state, True)), params, xs)
        assert [n for rev, n in dots if rev] == [1]


def test_slstm_recurrent_form_is_the_per_head_product():
    from seqjax.cells.xlstm import _slstm_heads

    cell = sj.slstm(8, num_heads=4, recurrent_init=jax.nn.initializers.normal(1.0))
    params = cell.init(jax.random.PRNGKey(0), 3)
    dense = cell.hoist.recurrent.weight(params)
    assert dense.shape == (8, 32)
    h = jax.random.normal(jax.random.PRNGKey(1), (5, 8))
    _close(h @ dense, _slstm_heads(h, params.r), atol=1e-6)
    blocks = np.asarray(dense).reshape(4, 2, 4, 4, 2)  # [head, in, gate, head', out]
    for k in range(4):
        for l in range(4):
            if k != l:
                np.testing.assert_array_equal(blocks[k, :, :, l], 0.0)


# ---------------------------------------------------------------------------- RG-LRU


def _recurrentgemma_setup(H=8, heads=2):
    module = rg_layers.RGLRU(width=H, num_heads=heads)
    x = jax.random.normal(jax.random.PRNGKey(1), (B, T, H))
    pos = jnp.broadcast_to(jnp.arange(1, T + 1, dtype=jnp.int32), (B, T))
    with reference_numerics():
        variables = module.init(jax.random.PRNGKey(0), x, pos)
    p = dict(variables["params"])
    k = jax.random.split(jax.random.PRNGKey(3), 2)
    # nonzero biases; half the channels with a = sigmoid(Lambda) ~ 1 - 6e-6, where
    # 1 - a_t^2 falls below 1 / (4 * 1000^2) for small r_t: the derivative cap acts
    p["a_gate"] = dict(p["a_gate"], b=jax.random.normal(k[0], (heads, H // heads)))
    p["input_gate"] = dict(p["input_gate"], b=jax.random.normal(k[1], (heads, H // heads)))
    p["a_param"] = p["a_param"].at[::2].set(-12.0)
    return module, {"params": p}, x, pos


def _rg_lru_params_from_recurrentgemma(variables):
    """The weight conversion: ``w_a, w_x`` are RGLRU's ``a_gate.w`` and
    ``input_gate.w`` ``[heads, d, d]`` as they are, ``b_a, b_x`` their ``b``
    flattened to ``[H]``, and ``Lambda = -a_param`` (RGLRU computes
    ``log a = -c r softplus(a_param)``, Griffin ``a = sigmoid(Lambda)``)."""
    p = variables["params"]
    return sj.RGLRUParams(p["a_gate"]["w"], p["a_gate"]["b"].reshape(-1),
                          p["input_gate"]["w"], p["input_gate"]["b"].reshape(-1),
                          -p["a_param"])


def test_rg_lru_matches_recurrentgemma():
    """Where the two define the same map -- positions that never reach 0, a given
    state -- outputs, final state and every gradient agree in float32 (the
    associative scan; stepping equals it, test below)."""
    module, variables, x, pos = _recurrentgemma_setup()
    h0 = jax.random.normal(jax.random.PRNGKey(2), (B, 8))
    cell = sj.rg_lru(8, num_heads=2)
    params = _rg_lru_params_from_recurrentgemma(variables)

    def ref_loss(variables, x, h0):
        y, last = module.apply(variables, x, pos, h0)
        return jnp.sum(jnp.sin(y)) + jnp.sum(last ** 2), (y, last)

    with reference_numerics():
        (_, (y_ref, last_ref)), g_ref = jax.value_and_grad(ref_loss, (0, 1, 2),
                                                           has_aux=True)(variables, x, h0)
    # the same conversion maps the gradients (dL/dLambda = -dL/da_param)
    g_ref = (_rg_lru_params_from_recurrentgemma(g_ref[0]), g_ref[1], g_ref[2])

    def loss(params, x, h0):
        final, ys = sj.unroll_batch(cell, params, x, h0)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(final ** 2), (ys, final)

    (_, (ys, final)), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(params, x, h0)
    _close((ys, final), (y_ref, last_ref))
    _close(grads, g_ref, rtol=1e-4, atol=1e-5)


def test_rg_lru_first_position_is_the_documented_difference():
    """recurrentgemma's position 0 drops the state and the sqrt(1 - a^2) factor:
    h_0 = i_0 x_0. seqjax's first step from the zero state is sqrt(1 - a_0^2) i_0 x_0,
    and from h_0 on the two agree (seqjax continued from recurrentgemma's h_0)."""
    module, variables, x, _ = _recurrentgemma_setup()
    pos0 = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    with reference_numerics():
        y_ref, last_ref = module.apply(variables, x, pos0)
    cell = sj.rg_lru(8, num_heads=2)
    params = _rg_lru_params_from_recurrentgemma(variables)
    _, ys = sj.unroll_batch(cell, params, x)
    a0, b0 = cell.linear.coefficients(params, x[:, 0])  # a_0 and sqrt(1 - a_0^2) i_0 x_0
    _close(ys[:, 0], b0)
    _close(ys[:, 0], y_ref[:, 0] * jnp.sqrt(1 - a0 ** 2))
    final, rest = sj.unroll_batch(cell, params, x[:, 1:], y_ref[:, 0])
    _close((rest, final), (y_ref[:, 1:], last_ref))


def test_rg_lru_initialisation_and_sqrt_gradient_cap():
    from seqjax.cells.diagonal import _sqrt_bounded_gradient

    H, heads = 64, 4
    params = sj.rg_lru(H, num_heads=heads, r_min=0.5, r_max=0.9).init(jax.random.PRNGKey(0), H)
    a = np.asarray(jax.nn.sigmoid(params.lam))
    assert np.all((a >= 0.5 - 1e-6) & (a <= 0.9 + 1e-6))
    assert params.w_a.shape == params.w_x.shape == (heads, H // heads, H // heads)
    np.testing.assert_array_equal(np.asarray(params.b_a), 0.0)
    # variance 1 / H over the [heads, d, d] blocks (variance_scaling fan_in = heads * d)
    assert np.std(np.asarray(params.w_a)) == pytest.approx(1 / math.sqrt(H), rel=0.1)
    # the derivative of sqrt capped at 1000 (recurrentgemma's value), exact above the
    # floor, in both differentiation modes; the values are plain sqrt
    for x, slope in ((1e-12, 1000.0), (0.25, 1.0)):
        f = lambda v: _sqrt_bounded_gradient(v, 1000.0)
        assert float(f(jnp.float32(x))) == pytest.approx(math.sqrt(x), rel=1e-6)
        assert float(jax.grad(f)(jnp.float32(x))) == pytest.approx(slope, rel=1e-5)
        assert float(jax.jvp(f, (jnp.float32(x),), (jnp.float32(1.0),))[1]) == \
            pytest.approx(slope, rel=1e-5)
    assert float(jax.grad(lambda v: _sqrt_bounded_gradient(v, None))(1e-12)) > 1e5


# -------------------------------------------------------------------------------- S6


def _s6_numpy(p, xs, h0):
    """Gu & Dao 2023, Algorithm 2 (selective scan, diagonal A), float64, one sequence:
    B, C = s_B(x), s_C(x); Delta = softplus(Parameter + s_Delta(x)); A_bar = exp(Delta A)
    (zero-order hold), B_bar = Delta B (Euler, as selective_scan_ref);
    h_t = A_bar h_{t-1} + B_bar x_t; y_t = C_t h_t + D x_t."""
    p = [np.asarray(a, np.float64) for a in p]
    a_log, w_b, w_c, w_down, w_up, b_delta, d = p
    A = -np.exp(a_log)  # [H, N]
    h = np.array(h0, np.float64)
    ys = []
    for x in np.asarray(xs, np.float64):
        Bt, Ct = x @ w_b, x @ w_c  # [N]
        delta = np.logaddexp(0.0, x @ w_down @ w_up + b_delta)  # softplus, [H]
        for dd in range(x.size):
            for n in range(Bt.size):
                h[dd, n] = math.exp(delta[dd] * A[dd, n]) * h[dd, n] + delta[dd] * Bt[n] * x[dd]
        ys.append(h @ Ct + d * x)
    return h, np.stack(ys)


@pytest.mark.parametrize("associative", [True, False])
def test_s6_equals_algorithm_2_float64(x64, associative):
    """By the associative scan and by stepping (the two ways the unroll evaluates it;
    with lengths and reverse they are compared in tests/test_unroll.py)."""
    H, N = 5, 3
    cell = sj.s6(H, state_size=N, delta_rank=2)
    p = _f64(cell.init(jax.random.PRNGKey(0), H))
    k = jax.random.split(jax.random.PRNGKey(1), 3)
    p = p._replace(b_delta=p.b_delta + jax.random.normal(k[0], (H,), jnp.float64),
                   d=jax.random.normal(k[1], (H,), jnp.float64))
    xs = jax.random.normal(jax.random.PRNGKey(2), (8, H), jnp.float64)
    h0 = jax.random.normal(k[2], (H, N), jnp.float64)
    h_ref, ys_ref = _s6_numpy(p, xs, h0)
    final, ys = sj.unroll(cell, p, xs, h0, associative=associative)
    np.testing.assert_allclose(np.asarray(ys), ys_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.asarray(final), h_ref, rtol=1e-10, atol=1e-10)


def test_s6_initialisation_is_mambas():
    H, N = 40, 6
    cell = sj.s6(H, state_size=N, dt_min=0.01, dt_max=0.05)
    p = cell.init(jax.random.PRNGKey(0), H)
    R = math.ceil(H / 16)
    assert p.w_delta_down.shape == (H, R) and p.w_delta_up.shape == (R, H)
    np.testing.assert_allclose(np.asarray(-jnp.exp(p.a_log)),
                               -np.broadcast_to(np.arange(1, N + 1), (H, N)), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(p.d), 1.0)
    dt = np.asarray(jax.nn.softplus(p.b_delta))
    assert np.all((dt >= 0.01 * (1 - 1e-5)) & (dt <= 0.05 * (1 + 1e-5)))
    assert np.abs(np.asarray(p.w_delta_up)).max() <= 1 / math.sqrt(R)
    assert np.abs(np.asarray(p.w_b)).max() <= 1 / math.sqrt(H)


# ------------------------------------------------------- what every classic cell gets


NEW = {
    "slstm": lambda **kw: sj.slstm(4, num_heads=2,
                                   recurrent_init=jax.nn.initializers.normal(0.5), **kw),
    "rg_lru": lambda **kw: sj.rg_lru(4, num_heads=2, **kw),
    "s6": lambda **kw: sj.s6(4, state_size=3, **kw),
}


@pytest.mark.parametrize("name", sorted(NEW))
def test_batch_vmap_jit_stack_bidirectional_and_bfloat16(name):
    """unroll_batch == vmap(unroll) (with lengths); jit compiles once; a stack and a
    bidirectional model equal their parts run by hand; bfloat16 params are the
    float32 draw cast, and the bfloat16 unroll stays close to float32."""
    cell = NEW[name]()
    params = cell.init(jax.random.PRNGKey(0), 4)
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 4))
    lengths = jnp.array([5, 2, 4], jnp.int32)
    traces = []

    @jax.jit
    def run(params, xs, lengths):
        traces.append(1)
        return sj.unroll_batch(cell, params, xs, lengths=lengths)

    finals, ys = run(params, xs, lengths)
    _close((finals, ys), jax.vmap(lambda x, n: sj.unroll(cell, params, x, length=n))(
        xs, lengths))
    run(params, xs + 1.0, jnp.array([1, 5, 3], jnp.int32))
    assert len(traces) == 1

    stacked = sj.stack(cell, sj.gru(4), residual=True)
    sp = (params, sj.gru(4).init(jax.random.PRNGKey(2), 4))
    (fa, fb), top = sj.unroll(stacked, sp, xs[0])
    ref_a, ya = sj.unroll(cell, params, xs[0])
    ref_b, yb = sj.unroll(sj.gru(4), sp[1], ya)
    _close(((fa, fb), top), ((ref_a, ref_b), yb + ya))

    model = sj.bidirectional(cell, NEW[name]())
    bp = model.init(jax.random.PRNGKey(3), 4)
    (sf, sb), yy = sj.unroll(model, bp, xs[2], length=4)
    ref_f, yf = sj.unroll(cell, bp.forward, xs[2, :4])
    ref_b, yr = sj.unroll(cell, bp.backward, xs[2, :4][::-1])
    _close(((sf, sb), yy[:4]), ((ref_f, ref_b), np.concatenate([yf, yr[::-1]], -1)))
    np.testing.assert_array_equal(np.asarray(yy[4:]), 0.0)

    cell16 = NEW[name](param_dtype=jnp.bfloat16)
    p16 = cell16.init(jax.random.PRNGKey(0), 4)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(p16),
                    strict=True):
        assert b.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(b, np.float32),
                                   np.asarray(a.astype(jnp.bfloat16), np.float32), rtol=1e-2)
    final16, y16 = sj.unroll_batch(cell16, p16, xs.astype(jnp.bfloat16), lengths=lengths)
    assert y16.dtype == jnp.bfloat16
    assert all(l.dtype == jnp.bfloat16 for l in jax.tree_util.tree_leaves(final16))
    np.testing.assert_allclose(np.asarray(y16, np.float32), np.asarray(ys), atol=0.06)


def test_bad_inputs_raise_clear_errors():
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"slstm: hidden_size \(6\) must be divisible by "
                                         r"num_heads \(4\)"):
        sj.slstm(6)
    with pytest.raises(ValueError, match=r"rg_lru: hidden_size \(6\) must be divisible"):
        sj.rg_lru(6, num_heads=4)
    with pytest.raises(ValueError, match="input_size must equal hidden_size \\(4\\); got "
                                         "input_size=3"):
        sj.rg_lru(4).init(key, 3)
    with pytest.raises(ValueError, match="input_size must equal hidden_size \\(4\\); got "
                                         "input_size=3"):
        sj.s6(4).init(key, 3)
    with pytest.raises(ValueError, match="0 < r_min < r_max < 1"):
        sj.rg_lru(4, r_min=0.9, r_max=0.5)
    with pytest.raises(ValueError, match="max_sqrt_gradient must be positive"):
        sj.rg_lru(4, max_sqrt_gradient=0.0)
    with pytest.raises(ValueError, match="0 < dt_min <= dt_max"):
        sj.s6(4, dt_min=0.2, dt_max=0.1)
    with pytest.raises(ValueError, match="positive int"):
        sj.s6(4, state_size=0)
    for name, make in NEW.items():
        cell = make()
        params = cell.init(key, 4)
        with pytest.raises(ValueError, match=r"\[time, 4\].*\(7, 5\)"):
            sj.unroll(cell, params, jnp.ones((7, 5)))
        with pytest.raises(ValueError, match=rf"{name}: expected one step of one example "
                                             r"with shape \[4\]"):
            cell.apply(params, cell.initial_state(params), jnp.ones((2, 4)))
        with pytest.raises(ValueError, match="state"):
            sj.unroll(cell, params, jnp.ones((7, 4)), jnp.zeros((5,)))


@pytest.mark.parametrize("name,I,H,count", [
    ("slstm", 3, 8, 4 * 8 * 3 + 4 * 8 * 8 // 2 + 4 * 8),  # heads=2
    ("rg_lru", 8, 8, 2 * 8 * 8 // 2 + 3 * 8),  # heads=2
    ("s6", 8, 8, 3 * 8 * 5 + 2 * 8 * 1 + 2 * 8),  # N=5, R=ceil(8/16)=1
])
def test_parameter_counts_match_the_docstring_formulas(name, I, H, count):
    make = {"slstm": lambda: sj.slstm(H, num_heads=2), "rg_lru": lambda: sj.rg_lru(H, num_heads=2),
            "s6": lambda: sj.s6(H, state_size=5)}[name]
    params = make().init(jax.random.PRNGKey(0), I)
    assert sum(np.size(a) for a in jax.tree_util.tree_leaves(params)) == count


@pytest.mark.parametrize("name,H", [("slstm", 12), ("rg_lru", 20), ("s6", 40)])
def test_bench_parameter_table_matches_the_cells(name, H):
    """``seqjax bench``'s closed forms (the constructors' defaults) equal the counted
    params."""
    case = bench_cells.Case(name, 1, 1, H, H, H, "float32")
    (row,) = harness.param_table([case], [])
    params = bench_cells.cell_spec(name).build(H, H, jnp.float32).init(jax.random.PRNGKey(0), H)
    assert row["seqjax"] == row["formula"] == sum(np.size(a)
                                                  for a in jax.tree_util.tree_leaves(params))


def test_gradnorm_and_diagnostics_take_the_new_cells():
    """``seqjax gradnorm --cells`` builds them; the recurrent spectrum of the sLSTM is
    each gate's block-diagonal R (eigenvalues: the union of the heads' blocks), the
    RG-LRU's is max sigmoid(Lambda), S6's is empty (its decay depends on the input);
    and perturbed_unroll with lengths handles S6's [H, N] state."""
    from seqjax import diagnostics, gradnorm

    key = jax.random.PRNGKey(0)
    for name in ("slstm", "rg_lru", "s6"):
        make, encoder = gradnorm.CELLS[name]
        assert encoder == (name != "slstm") and make(8).output_size == 8
    cell = sj.slstm(8, num_heads=2, recurrent_init=jax.nn.initializers.normal(0.5))
    params = cell.init(key, 3)
    spectrum = diagnostics.recurrent_spectrum(params)
    r = np.asarray(params.r)
    for g, gate in enumerate("ifzo"):
        want = max(np.abs(np.linalg.eigvals(r[k, :, g, :])).max() for k in range(2))
        assert float(spectrum[gate].spectral_radius) == pytest.approx(want, rel=1e-5)
    dense = np.asarray(cell.hoist.recurrent.weight(params))
    assert float(spectrum["r"].max_singular_value) == pytest.approx(
        np.linalg.norm(dense, 2), rel=1e-5)
    p_rg = sj.rg_lru(8).init(key, 8)
    a = float(diagnostics.recurrent_spectrum(p_rg)["a"].spectral_radius)
    assert a == pytest.approx(float(jnp.max(jax.nn.sigmoid(p_rg.lam))))
    s6 = sj.s6(4, state_size=3)
    p6 = s6.init(key, 4)
    assert diagnostics.recurrent_spectrum(p6) == {}
    xs = jax.random.normal(jax.random.PRNGKey(1), (6, 4))
    eps = diagnostics.zero_perturbation(s6, p6, 6)
    _close(diagnostics.perturbed_unroll(s6, p6, xs, eps, length=3, associative=True),
           sj.unroll(s6, p6, xs, length=3))
