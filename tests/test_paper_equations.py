"""seqjax's cells against numpy written from the published equations, in float64.

The references below are written the way the papers write the cells, not the way
seqjax stores them: the LSTM has four separate matrices ``W_f, W_i, W_c, W_o`` acting
on the concatenation ``[h_{t-1}, x_t]`` (Hochreiter & Schmidhuber 1997 with the forget
gate of Gers et al. 2000), the Elman cell ``h_t = phi(W_hh h_{t-1} + W_xh x_t + b)``
uses column vectors (Elman 1990), the GRU candidate is
``tanh(X W_xh + (R * H) W_hh + b_h)`` in row vectors (Cho et al. 2014, eqs. 5-8). The
seqjax params are then assembled from those matrices (transposed, sliced,
concatenated into the fused ``[in, gates * H]`` layout), so a wrong gate order or a
transposed block fails here.

The LSTM memory update is ``C_t = f_t * C_{t-1} + i_t * C~_t`` with no nonlinearity
around it, as in Hochreiter & Schmidhuber and Gers et al. (some secondary sources
write ``sigma(...)`` around it); that is what the reference uses.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax as sj

I, H, N, T = 3, 4, 5, 6
TOL = 1e-12


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def relu(v):
    return np.maximum(v, 0.0)


def _rng(seed):
    return np.random.default_rng(seed)


def _assert_close(got, want, tol=TOL):
    got = np.asarray(got)
    assert got.dtype in (np.float64, np.complex128), got.dtype
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _numpy_loop(step, state, xs):
    ys = []
    for x in xs:
        state, y = step(state, x)
        ys.append(y)
    return state, np.stack(ys)


# --------------------------------------------------------------------------- Elman


def _elman(seed, phi):
    r = _rng(seed)
    W_hh, W_xh, b = r.normal(size=(H, H)), r.normal(size=(H, I)), r.normal(size=H)

    def step(h, x):  # Elman 1990: h_t = tanh(W_hh h_{t-1} + W_xh x_t), plus a bias
        h = phi(W_hh @ h + W_xh @ x + b)
        return h, h

    params = sj.RNNParams(jnp.asarray(W_xh.T), jnp.asarray(W_hh.T), jnp.asarray(b))
    return step, params


@pytest.mark.parametrize("name, phi_np, phi_jax", [
    ("tanh", np.tanh, jnp.tanh),
    ("relu", relu, jax.nn.relu),
    ("sigmoid", sigmoid, jax.nn.sigmoid),
])
def test_elman(x64, name, phi_np, phi_jax):
    step, params = _elman(0, phi_np)
    cell = sj.rnn(H, activation=phi_jax)
    r = _rng(1)
    h0, xs = r.normal(size=H), r.normal(size=(T, I))
    h, y = cell.apply(params, jnp.asarray(h0), jnp.asarray(xs[0]))
    want, _ = step(h0, xs[0])
    _assert_close(h, want)
    _assert_close(y, want)
    hT, ys = sj.unroll(cell, params, jnp.asarray(xs), jnp.asarray(h0))
    want_h, want_ys = _numpy_loop(step, h0, xs)
    _assert_close(hT, want_h)
    _assert_close(ys, want_ys)


# ---------------------------------------------------------------------------- LSTM


def _lstm_reference(seed):
    """Hochreiter & Schmidhuber 1997, Gers et al. 2000: one matrix per gate on
    [h_{t-1}, x_t], one bias per gate."""
    r = _rng(seed)
    W = {g: r.normal(size=(H, H + I)) * 0.7 for g in "fico"}
    b = {g: r.normal(size=H) for g in "fico"}

    def step(state, x):
        h, C = state
        hx = np.concatenate([h, x])
        f = sigmoid(W["f"] @ hx + b["f"])
        i = sigmoid(W["i"] @ hx + b["i"])
        C_tilde = np.tanh(W["c"] @ hx + b["c"])
        C = f * C + i * C_tilde
        o = sigmoid(W["o"] @ hx + b["o"])
        h = o * np.tanh(C)
        return (h, C), h

    # seqjax: x @ w_i + h @ w_h + b, gate blocks i, f, g(=C~), o
    order = "ifco"
    params = sj.LSTMParams(
        w_i=jnp.asarray(np.concatenate([W[g][:, H:].T for g in order], axis=1)),
        w_h=jnp.asarray(np.concatenate([W[g][:, :H].T for g in order], axis=1)),
        b=jnp.asarray(np.concatenate([b[g] for g in order])),
    )
    return step, params


def test_lstm(x64):
    step, params = _lstm_reference(0)
    cell = sj.lstm(H)
    r = _rng(1)
    h0, c0, xs = r.normal(size=H), r.normal(size=H), r.normal(size=(T, I))
    state0 = sj.LSTMState(jnp.asarray(h0), jnp.asarray(c0))
    state, y = cell.apply(params, state0, jnp.asarray(xs[0]))
    (want_h, want_c), want_y = step((h0, c0), xs[0])
    _assert_close(state.h, want_h)
    _assert_close(state.c, want_c)
    _assert_close(y, want_y)
    for hoist in (False, True):
        final, ys = sj.unroll(cell, params, jnp.asarray(xs), state0, hoist=hoist)
        (want_h, want_c), want_ys = _numpy_loop(step, (h0, c0), xs)
        _assert_close(final.h, want_h)
        _assert_close(final.c, want_c)
        _assert_close(ys, want_ys)


def test_lstm_forget_bias_is_an_initial_value_only(x64):
    key = jax.random.PRNGKey(3)
    noisy = jax.nn.initializers.normal(1.0)
    kw = dict(bias_init=noisy, param_dtype=jnp.float64)
    b1 = np.asarray(sj.lstm(H, forget_bias=1.0, **kw).init(key, I).b)
    b0 = np.asarray(sj.lstm(H, forget_bias=0.0, **kw).init(key, I).b)
    # gate order i, f, g, o: the f-block is exactly 1.0, every other entry untouched
    np.testing.assert_array_equal(b1[H:2 * H], np.ones(H))
    np.testing.assert_array_equal(np.delete(b1, np.s_[H:2 * H]), np.delete(b0, np.s_[H:2 * H]))
    np.testing.assert_array_equal(b0[H:2 * H], np.zeros(H))
    # default init: zeros everywhere except the forget block
    b_default = np.asarray(sj.lstm(H, param_dtype=jnp.float64).init(key, I).b)
    np.testing.assert_array_equal(b_default, np.r_[np.zeros(H), np.ones(H), np.zeros(2 * H)])

    # forward pass: all-zero params give f = sigmoid(0) = 1/2 whatever forget_bias is
    zero = sj.LSTMParams(jnp.zeros((I, 4 * H)), jnp.zeros((H, 4 * H)), jnp.zeros(4 * H))
    c0 = _rng(4).normal(size=H)
    state0 = sj.LSTMState(jnp.zeros(H), jnp.asarray(c0))
    x = jnp.asarray(_rng(5).normal(size=I))
    for forget_bias in (0.0, 1.0, 5.0):
        state, _ = sj.lstm(H, forget_bias=forget_bias).apply(zero, state0, x)
        # c = f * c0 + i * tanh(0) = c0 / 2; h = o * tanh(c) = tanh(c0 / 2) / 2
        _assert_close(state.c, 0.5 * c0)
        _assert_close(state.h, 0.5 * np.tanh(0.5 * c0))


# ----------------------------------------------------------------------------- GRU


def _gru_weights(seed):
    r = _rng(seed)
    # row vectors: X [1, I] @ W_x* [I, H], H [1, H] @ W_h* [H, H]
    Wx = {g: r.normal(size=(I, H)) for g in "rzh"}
    Wh = {g: r.normal(size=(H, H)) * 0.7 for g in "rzh"}
    b = {g: r.normal(size=H) for g in "rzh"}
    return Wx, Wh, b, r.normal(size=H)


def _gru_params(Wx, Wh, b, b_hn):
    order = "rzh"
    return sj.GRUParams(
        w_i=jnp.asarray(np.concatenate([Wx[g] for g in order], axis=1)),
        w_h=jnp.asarray(np.concatenate([Wh[g] for g in order], axis=1)),
        b=jnp.asarray(np.concatenate([b[g] for g in order])),
        b_hn=None if b_hn is None else jnp.asarray(b_hn),
    )


@pytest.mark.parametrize("reset_after", [False, True])
def test_gru(x64, reset_after):
    Wx, Wh, b, b_hn = _gru_weights(0)

    def step(Hprev, X):
        R = sigmoid(X @ Wx["r"] + Hprev @ Wh["r"] + b["r"])
        Z = sigmoid(X @ Wx["z"] + Hprev @ Wh["z"] + b["z"])
        if reset_after:  # Cho et al. 2014 / cuDNN: reset applied after the matmul
            H_tilde = np.tanh(X @ Wx["h"] + b["h"] + R * (Hprev @ Wh["h"] + b_hn))
        else:  # Cho et al. 2014, eqs. 5-8: H~ = tanh(X W_xh + (R * H) W_hh + b_h)
            H_tilde = np.tanh(X @ Wx["h"] + (R * Hprev) @ Wh["h"] + b["h"])
        Hnew = Z * Hprev + (1 - Z) * H_tilde
        return Hnew, Hnew

    params = _gru_params(Wx, Wh, b, b_hn if reset_after else None)
    cell = sj.gru(H, reset_after=reset_after)
    r = _rng(1)
    h0, xs = r.normal(size=H), r.normal(size=(T, I))
    h, y = cell.apply(params, jnp.asarray(h0), jnp.asarray(xs[0]))
    want, _ = step(h0, xs[0])
    _assert_close(h, want)
    _assert_close(y, want)
    for hoist in (False, True):
        hT, ys = sj.unroll(cell, params, jnp.asarray(xs), jnp.asarray(h0), hoist=hoist)
        want_h, want_ys = _numpy_loop(step, h0, xs)
        _assert_close(hT, want_h)
        _assert_close(ys, want_ys)


# ----------------------------------------------------------------------------- MGU


@pytest.mark.parametrize("reset_after", [False, True])
def test_mgu(x64, reset_after):
    r = _rng(0)
    W_f, b_f = r.normal(size=(H, H + I)), r.normal(size=H)
    W_h, b_h = r.normal(size=(H, H + I)) * 0.7, r.normal(size=H)
    b_hn = r.normal(size=H)

    def step(h, x):
        f = sigmoid(W_f @ np.concatenate([h, x]) + b_f)
        if reset_after:  # Flax linen MGUCell(reset_gate=True)
            n = np.tanh(W_h[:, H:] @ x + b_h + f * (W_h[:, :H] @ h + b_hn))
            h = f * h + (1 - f) * n
        else:  # Zhou et al. 2016
            n = np.tanh(W_h @ np.concatenate([f * h, x]) + b_h)
            h = (1 - f) * h + f * n
        return h, h

    params = sj.GRUParams(
        w_i=jnp.asarray(np.concatenate([W_f[:, H:].T, W_h[:, H:].T], axis=1)),
        w_h=jnp.asarray(np.concatenate([W_f[:, :H].T, W_h[:, :H].T], axis=1)),
        b=jnp.asarray(np.concatenate([b_f, b_h])),
        b_hn=jnp.asarray(b_hn) if reset_after else None,
    )
    cell = sj.mgu(H, reset_after=reset_after)
    r = _rng(1)
    h0, xs = r.normal(size=H), r.normal(size=(T, I))
    h, _ = cell.apply(params, jnp.asarray(h0), jnp.asarray(xs[0]))
    _assert_close(h, step(h0, xs[0])[0])
    for hoist in (False, True):
        hT, ys = sj.unroll(cell, params, jnp.asarray(xs), jnp.asarray(h0), hoist=hoist)
        want_h, want_ys = _numpy_loop(step, h0, xs)
        _assert_close(hT, want_h)
        _assert_close(ys, want_ys)


# ------------------------------------------------------------------- minGRU / minLSTM


def _paper_g(v):
    """The minGRU paper's positive candidate map: v + 0.5 if v >= 0 else sigmoid(v)."""
    return np.where(v >= 0, v + 0.5, sigmoid(v))


@pytest.mark.parametrize("candidate", ["identity", "paper_g"])
def test_min_gru(x64, candidate):
    r = _rng(0)
    W_z, b_z, W_h, b_h = r.normal(size=(I, H)), r.normal(size=H), r.normal(size=(I, H)), r.normal(size=H)
    g_np = (lambda v: v) if candidate == "identity" else _paper_g
    g_jax = ((lambda v: v) if candidate == "identity"
             else lambda v: jnp.where(v >= 0, v + 0.5, jax.nn.sigmoid(v)))

    def step(h, x):  # Feng et al. 2024, minGRU
        z = sigmoid(x @ W_z + b_z)
        h_tilde = g_np(x @ W_h + b_h)
        h = (1 - z) * h + z * h_tilde
        return h, h

    params = sj.MinParams(jnp.asarray(np.concatenate([W_z, W_h], axis=1)),
                          jnp.asarray(np.concatenate([b_z, b_h])))
    cell = sj.min_gru(H, candidate_activation=g_jax)
    r = _rng(1)
    h0, xs = r.normal(size=H), r.normal(size=(T, I))
    h, _ = cell.apply(params, jnp.asarray(h0), jnp.asarray(xs[0]))
    _assert_close(h, step(h0, xs[0])[0])
    for associative in (True, False):
        hT, ys = sj.unroll(cell, params, jnp.asarray(xs), jnp.asarray(h0), associative=associative)
        want_h, want_ys = _numpy_loop(step, h0, xs)
        _assert_close(hT, want_h)
        _assert_close(ys, want_ys)


def test_min_lstm(x64):
    r = _rng(0)
    W = {g: r.normal(size=(I, H)) for g in "fih"}
    b = {g: r.normal(size=H) for g in "fih"}

    def step(h, x):  # Feng et al. 2024, minLSTM with normalised gates
        f = sigmoid(x @ W["f"] + b["f"])
        i = sigmoid(x @ W["i"] + b["i"])
        h_tilde = x @ W["h"] + b["h"]
        f_prime, i_prime = f / (f + i), i / (f + i)
        h = f_prime * h + i_prime * h_tilde
        return h, h

    params = sj.MinParams(jnp.asarray(np.concatenate([W[g] for g in "fih"], axis=1)),
                          jnp.asarray(np.concatenate([b[g] for g in "fih"])))
    cell = sj.min_lstm(H)
    r = _rng(1)
    h0, xs = r.normal(size=H), r.normal(size=(T, I))
    h, _ = cell.apply(params, jnp.asarray(h0), jnp.asarray(xs[0]))
    _assert_close(h, step(h0, xs[0])[0])
    for associative in (True, False):
        hT, ys = sj.unroll(cell, params, jnp.asarray(xs), jnp.asarray(h0), associative=associative)
        want_h, want_ys = _numpy_loop(step, h0, xs)
        _assert_close(hT, want_h)
        _assert_close(ys, want_ys)


# ----------------------------------------------------------------------------- LRU


def test_lru(x64):
    r = _rng(0)
    nu_log, theta_log = np.log(r.uniform(0.01, 0.3, N)), np.log(r.uniform(0.1, 6.0, N))
    gamma_log = r.normal(size=N) * 0.3
    b_re, b_im = r.normal(size=(N, H)), r.normal(size=(N, H))
    c_re, c_im = r.normal(size=(H, N)), r.normal(size=(H, N))
    d = r.normal(size=H)

    # Orvieto et al. 2023: lambda = exp(-exp(nu) + i exp(theta)), complex B and C
    lam = np.exp(-np.exp(nu_log) + 1j * np.exp(theta_log))
    gamma = np.exp(gamma_log)
    B, C = b_re + 1j * b_im, c_re + 1j * c_im

    def step(h, x):
        h = lam * h + gamma * (B @ x)
        y = (C @ h).real + d * x
        return h, y

    params = sj.LRUParams(*(jnp.asarray(a) for a in
                            (nu_log, theta_log, gamma_log, b_re, b_im, c_re, c_im, d)))
    cell = sj.lru(H, N, param_dtype=jnp.float64)
    r = _rng(1)
    h0 = r.normal(size=N) + 1j * r.normal(size=N)
    xs = r.normal(size=(T, H))
    h, y = cell.apply(params, jnp.asarray(h0), jnp.asarray(xs[0]))
    want_h, want_y = step(h0, xs[0])
    _assert_close(h, want_h)
    _assert_close(y, want_y)
    for associative in (True, False):
        hT, ys = sj.unroll(cell, params, jnp.asarray(xs), jnp.asarray(h0), associative=associative)
        want_h, want_ys = _numpy_loop(step, h0, xs)
        _assert_close(hT, want_h)
        _assert_close(ys, want_ys)


def test_lru_init_ring_and_normaliser(x64):
    """Initial eigenvalues lie on the ring r_min <= |lambda| <= r_max with phase in
    [0, max_phase], and gamma = sqrt(1 - |lambda|^2) (Orvieto et al. 2023, Sec. 3)."""
    r_min, r_max, max_phase = 0.4, 0.9, 1.5
    params = sj.lru(H, 64, r_min=r_min, r_max=r_max, max_phase=max_phase,
                    param_dtype=jnp.float64).init(jax.random.PRNGKey(0), H)
    nu_log, theta_log, gamma_log = (np.asarray(a) for a in params[:3])
    modulus = np.exp(-np.exp(nu_log))
    phase = np.exp(theta_log)
    assert modulus.min() >= r_min - 1e-12 and modulus.max() <= r_max + 1e-12
    assert phase.min() >= 0.0 and phase.max() <= max_phase + 1e-12
    # both ends of the ring are reached (64 draws), so the bounds are not vacuous
    assert modulus.min() < r_min + 0.15 and modulus.max() > r_max - 0.15
    np.testing.assert_allclose(np.exp(gamma_log), np.sqrt(1 - modulus**2), rtol=1e-12)
