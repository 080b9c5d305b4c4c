"""Mixed precision for the classic cells: a compute ``dtype`` beside ``param_dtype``.

The reference is each cell's equations -- Elman 1990; the LSTM of Hochreiter &
Schmidhuber 1997 with Gers et al. 2000's forget gate; the GRU of Cho et al. 2014
(eqs. 5-8, reset before) and its cuDNN/PyTorch reset-after form; the MGU of Zhou et al.
2016 and Flax's tied form -- written here in float64 numpy, with every matmul operand
(``x_t``, ``h_{t-1}`` or ``r_t * h_{t-1}``, both kernels) rounded to bfloat16 by
``ml_dtypes`` (exactly what the matmul sees) and the products accumulated in float64.
A cell built with ``dtype=bfloat16`` over float32 params must match it to float32
rounding (1e-5 relative), far closer than it matches the same equations without the
rounding (which the float32 cell matches to about 1e-7): that can only hold if the
matmuls took bfloat16 operands, accumulated in float32, and the gates and the state
stayed float32 (a bfloat16 accumulator or state is as far off as no rounding at all).
Every unroll path is held to the same reference.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import seqjax as sj
from seqjax import kernels

BF16 = jnp.bfloat16
H, I, B, T = 8, 6, 3, 12

MAKERS = {
    "rnn": lambda **k: sj.rnn(H, **k),
    "lstm": lambda **k: sj.lstm(H, **k),
    "gru": lambda **k: sj.gru(H, **k),
    "gru_reset_before": lambda **k: sj.gru(H, reset_after=False, **k),
    "mgu": lambda **k: sj.mgu(H, **k),
    "mgu_reset_after": lambda **k: sj.mgu(H, reset_after=True, **k),
}


# --------------------------------------------------------------- float64 reference


def _bf16(a):
    """``a`` rounded to bfloat16 (round to nearest even), back in float64."""
    return np.asarray(a, np.float64).astype(ml_dtypes.bfloat16).astype(np.float64)


def _exact(a):
    return np.asarray(a, np.float64)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _step(kind, p, h, c, x, rnd):
    """One step of the papers' equations for one example; ``rnd`` rounds matmul operands."""
    w_i, w_h, b = p["w_i"], p["w_h"], p["b"]
    u = rnd(x) @ rnd(w_i) + b
    if kind == "rnn":
        return np.tanh(u + rnd(h) @ rnd(w_h)), c
    if kind == "lstm":
        i, f, g, o = np.split(u + rnd(h) @ rnd(w_h), 4)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        return _sigmoid(o) * np.tanh(c), c
    if kind == "gru":  # reset after: n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        r = rnd(h) @ rnd(w_h)
        reset, z = np.split(_sigmoid(u[:2 * H] + r[:2 * H]), 2)
        n = np.tanh(u[2 * H:] + reset * (r[2 * H:] + p["b_hn"]))
        return z * h + (1 - z) * n, c
    if kind == "gru_reset_before":  # Cho et al. 2014, eqs. 5-8
        reset, z = np.split(_sigmoid(u[:2 * H] + rnd(h) @ rnd(w_h[:, :2 * H])), 2)
        n = np.tanh(u[2 * H:] + rnd(reset * h) @ rnd(w_h[:, 2 * H:]))
        return z * h + (1 - z) * n, c
    if kind == "mgu":  # Zhou et al. 2016: f writes the new state
        f = _sigmoid(u[:H] + rnd(h) @ rnd(w_h[:, :H]))
        n = np.tanh(u[H:] + rnd(f * h) @ rnd(w_h[:, H:]))
        return (1 - f) * h + f * n, c
    assert kind == "mgu_reset_after"  # Flax's MGUCell: f keeps the old state
    r = rnd(h) @ rnd(w_h)
    f = _sigmoid(u[:H] + r[:H])
    n = np.tanh(u[H:] + f * (r[H:] + p["b_hn"]))
    return f * h + (1 - f) * n, c


def reference(kind, params, xs, lengths=None, reverse=False, rnd=_bf16):
    """``(final h, final c, ys [B, T, H])`` in float64; with ``lengths`` only the valid
    prefix is read (in reverse with ``reverse``) and padded outputs are zero."""
    p = {k: _exact(v) for k, v in params._asdict().items() if v is not None}
    xs = _exact(xs)
    ys = np.zeros(xs.shape[:2] + (H,))
    hs, cs = [], []
    for e in range(xs.shape[0]):
        n = xs.shape[1] if lengths is None else int(lengths[e])
        steps = range(n - 1, -1, -1) if reverse else range(n)
        h, c = np.zeros(H), np.zeros(H)
        for t in steps:
            h, c = _step(kind, p, h, c, xs[e, t], rnd)
            ys[e, t] = h
        hs.append(h)
        cs.append(c)
    return np.stack(hs), np.stack(cs), ys


def _rel(got, want):
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


def _setup(kind, seed=0):
    cell = MAKERS[kind](dtype=BF16)
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = cell.init(k[0], I)
    # biases away from their zero/one initial values, so that they take part
    params = params._replace(b=params.b + 0.3 * jax.random.normal(k[1], params.b.shape))
    if getattr(params, "b_hn", None) is not None:
        params = params._replace(b_hn=0.3 * jax.random.normal(k[2], params.b_hn.shape))
    xs = jax.random.normal(k[3], (B, T, I))
    return cell, params, xs


def _hidden(state):
    return state.h if hasattr(state, "h") else state


# ------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_bfloat16_matmuls_with_float32_accumulation_and_state(kind):
    cell, params, xs = _setup(kind)
    h_ref, c_ref, ys_ref = reference(kind, params, xs)
    final, ys = jax.jit(lambda p, x: sj.unroll_batch(cell, p, x))(params, xs)  # fused fwd
    assert ys.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(final))
    error = _rel(ys, ys_ref)
    assert error < 1e-5 and _rel(_hidden(final), h_ref) < 1e-5
    if kind == "lstm":
        assert _rel(final.c, c_ref) < 1e-5
    # the float32 computation (no rounding) is far from it: the test sees the dtype
    assert _rel(ys, reference(kind, params, xs, rnd=_exact)[2]) > max(100 * error, 1e-4)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_every_unroll_path_follows_the_compute_dtype(kind):
    cell, params, xs = _setup(kind, seed=1)
    lengths = jnp.array([T, 5, 0], jnp.int32)
    h_ref, _, ys_ref = reference(kind, params, xs, lengths, reverse=True)

    def check(final, ys):
        assert ys.dtype == jnp.float32 and _hidden(final).dtype == jnp.float32
        assert _rel(ys, ys_ref) < 1e-5 and _rel(_hidden(final), h_ref) < 1e-5

    paths = {"lstm": ({}, {"fused": False, "hoist": True}, {"pallas": True}),
             "gru": ({"fused": True, "hoist": True}, {"remat": True}, {"pallas": True})}
    for options in paths[kind]:
        check(*jax.jit(lambda p, x, n: sj.unroll_batch(
            cell, p, x, lengths=n, reverse=True, **options))(params, xs, lengths))
    if kind == "lstm":  # jax.vmap(unroll) runs as unroll_batch's one batched scan
        check(*jax.jit(jax.vmap(lambda x, n: sj.unroll(cell, params, x, length=n,
                                                       reverse=True)))(xs, lengths))


def test_stacked_and_bidirectional_layers_keep_their_compute_dtype():
    lstm, gru, rnn = (MAKERS[k](dtype=BF16) for k in ("lstm", "gru", "rnn"))
    model = sj.stack(sj.bidirectional(lstm, gru), rnn)
    params = model.init(jax.random.PRNGKey(2), I)
    xs = jax.random.normal(jax.random.PRNGKey(3), (B, T, I))
    lengths = jnp.array([T, 7, 1], jnp.int32)
    final, ys = jax.jit(lambda p, x, n: sj.unroll_batch(model, p, x, lengths=n))(
        params, xs, lengths)
    both = params[0]
    _, _, forward = reference("lstm", both.forward, xs, lengths)
    _, _, backward = reference("gru", both.backward, xs, lengths, reverse=True)
    middle = np.concatenate([forward, backward], axis=-1)  # seqjax.concat
    h_ref, _, ys_ref = reference("rnn", params[1], middle, lengths)
    assert ys.dtype == jnp.float32
    assert _rel(ys, ys_ref) < 1e-5 and _rel(final[1], h_ref) < 1e-5


def test_fused_and_plain_gradients_agree():
    cell, params, xs = _setup("lstm", seed=3)
    state = jax.tree_util.tree_map(lambda s: jnp.full((B,) + s.shape, 0.25, s.dtype),
                                   cell.initial_state(params))
    lengths = jnp.array([T, 4, 9], jnp.int32)
    weights = jax.random.normal(jax.random.PRNGKey(7), (B, T, H))

    @jax.jit
    def both(p, x, s):
        def loss(p, x, s, fused):
            ys = sj.unroll_batch(cell, p, x, s, lengths=lengths, fused=fused)[1]
            return jnp.sum(ys * weights)

        grad = jax.grad(loss, argnums=(0, 1, 2))
        return grad(p, x, s, True), grad(p, x, s, False)

    fused, plain = (jax.tree_util.tree_leaves(g) for g in both(params, xs, state))
    for f, p in zip(fused, plain, strict=True):
        assert f.dtype == p.dtype == jnp.float32
        assert np.all(np.isfinite(f)) and np.all(np.isfinite(p))
        # both round to bfloat16 at different places (see the guide): they agree to
        # bfloat16 precision, not to float32's
        assert np.linalg.norm(f - p) <= 1e-2 * np.linalg.norm(p) + 1e-6


@pytest.mark.parametrize("options", [{"fused": True}, {"pallas": True}],
                         ids=["fused", "pallas"])
def test_the_fused_backward_multiplies_in_the_compute_dtype(options):
    # one Elman step from a given state: y = tanh(u + h0 W_h), loss = sum(w * y), so
    # dr = w * (1 - y^2), dh0 = dr W_h^T and dW_h = h0^T dr. The fused backward (and
    # the Pallas kernel) casts dr and W_h to bfloat16 and accumulates in float32.
    cell = sj.rnn(16, dtype=BF16)
    k = jax.random.split(jax.random.PRNGKey(4), 4)
    params = cell.init(k[0], 4)
    xs = jax.random.normal(k[1], (4, 1, 4))
    h0 = jax.random.normal(k[2], (4, 16))
    w = jax.random.normal(k[3], (4, 1, 16))

    def loss(p, s):
        return jnp.sum(sj.unroll_batch(cell, p, xs, s, **options)[1] * w)

    d_params, d_h0 = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, h0)
    u = _bf16(xs[:, 0]) @ _bf16(params.w_i) + _exact(params.b)
    y = np.tanh(u + _bf16(h0) @ _bf16(params.w_h))
    dr = _exact(w[:, 0]) * (1 - y ** 2)
    want = _bf16(dr) @ _bf16(params.w_h).T
    assert _rel(d_h0, want) < 1e-5
    assert _rel(d_h0, dr @ _exact(params.w_h).T) > 1e-4  # float32 operands: far off
    if "fused" in options:  # (the Pallas kernel forms dW in float32, rounded once)
        assert _rel(d_params.w_h, _bf16(h0).T @ _bf16(dr)) < 1e-5


def test_dtype_none_is_the_params_dtype_computation():
    # dtype=None and dtype=param_dtype trace to one program, with no 16-bit value in it:
    # the computation the cells did before the option existed
    params = sj.lstm(H).init(jax.random.PRNGKey(5), I)
    xs = jnp.ones((2, 5, I))

    def program(cell, **options):
        def both(p):
            run = lambda p: sj.unroll_batch(cell, p, xs, **options)[1]
            return run(p), jax.grad(lambda p: jnp.sum(jnp.sin(run(p))))(p)

        return str(jax.make_jaxpr(both)(params))

    for options in ({"fused": True}, {"fused": False, "hoist": True}):
        plain = program(sj.lstm(H), **options)
        assert plain == program(sj.lstm(H, dtype="float32"), **options)
        assert "bf16" not in plain and "f16" not in plain
        assert "bf16" in program(sj.lstm(H, dtype=BF16), **options)
    assert repr(sj.lstm(H)) == "lstm(hidden_size=8, forget_bias=1.0)"  # as before
    assert repr(sj.gru(4, dtype=BF16)) == "gru(hidden_size=4, reset_after=True, dtype=bfloat16)"
    assert sj.mgu(4, dtype=BF16).dtype is BF16


@pytest.mark.parametrize("bad", ["int8", jnp.int32, "float8_e4m3fn", "no_such_dtype", 3])
def test_a_bad_dtype_is_refused_at_construction(bad):
    with pytest.raises(ValueError, match=r"lstm: dtype \(the compute dtype of the matmuls\) "
                                         r"must be None or one of bfloat16, float16, float32, "
                                         r"float64, got"):
        sj.lstm(4, dtype=bad)


def test_a_compute_dtype_wider_than_the_params_is_refused():
    with pytest.raises(ValueError, match=r"gru: dtype=float32 is wider than "
                                         r"param_dtype=bfloat16.*param_dtype=float32"):
        sj.gru(4, dtype=jnp.float32, param_dtype=BF16)


def test_the_kernel_refuses_a_compute_dtype_it_cannot_accumulate_in(x64):
    cell = sj.lstm(4, dtype=BF16)
    built = jax.eval_shape(lambda k: cell.init(k, 3), jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float64),
                                    built)
    xs = jax.ShapeDtypeStruct((1, 2, 3), jnp.float64)
    with pytest.raises(ValueError, match=r"compute dtype bfloat16 with float64 params.*"
                                         r"pallas=False or dtype=None"):
        jax.eval_shape(lambda p, x: sj.unroll_batch(cell, p, x, pallas=True), params, xs)
    # the other paths accumulate in float64
    ys = jax.eval_shape(lambda p, x: sj.unroll_batch(cell, p, x)[1], params, xs)
    assert ys.dtype == jnp.float64


def test_the_mixed_precision_kernel_lowers_to_triton():
    try:
        from jax._src.lib import triton  # noqa: F401
    except ImportError as e:
        pytest.skip(f"this jaxlib cannot lower Pallas to Triton: {e}")
    from jax import export

    # H = 128: W [128, 512] fits on chip in bfloat16 (128 KiB), not in float32
    cell = sj.lstm(128, dtype=BF16)
    params = jax.eval_shape(lambda k: cell.init(k, 32), jax.random.PRNGKey(0))
    xs = jax.ShapeDtypeStruct((8, 16, 32), jnp.float32)  # [T, B, I]
    with pytest.raises(ValueError, match="exceeds the kernel's on-chip limit"):
        jax.eval_shape(lambda p, x: sj.unroll_batch(sj.lstm(128), p, x, pallas=True),
                       params, jax.ShapeDtypeStruct((16, 8, 32), jnp.float32))

    def forward(p, xs):  # compiled (not interpret) as on a GPU
        state = jax.tree_util.tree_map(lambda s: jnp.zeros((16,) + s.shape, s.dtype),
                                       cell.initial_state(p))
        return kernels.fused_recurrent(cell.hoist.recurrent, p, cell.hoist.input_map(p, xs),
                                       state, interpret=False)[1]

    loss = lambda p, x: jnp.sum(forward(p, x))
    exported = export.export(
        jax.jit(jax.grad(loss)), platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(params, xs)
    assert exported.mlir_module().count("__gpu$xla.gpu.triton") == 2
