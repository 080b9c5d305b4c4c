"""Diagnostics against references nobody here wrote: ``jax.jacrev`` through a Python loop
over each cell's one-step ``apply``, numpy's eig/svd, and closed-form linear cases."""

import functools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax import diagnostics as dg

F64 = jnp.float64
T, IN, H = 5, 3, 3


# ------------------------------------------------------------------------ references


def _readout(cell, params, state, x):
    """``y_t`` from ``h_t``, written from each cell's documented equations."""
    if isinstance(params, seqjax.LRUParams):  # y = Re(C h) + D x
        return jnp.real(jax.lax.complex(params.c_re, params.c_im) @ state) + params.d * x
    if isinstance(state, seqjax.LSTMState):
        return state.h
    return state


def _parts(cell, params):
    if cell.layers is None:
        return [cell], [params], False
    return list(cell.layers.parts), list(params), cell.layers.residual


def _loop(cell, params, xs, override=None):
    """Python loop over ``apply``; ``override=(layer, t, value)`` replaces that state.

    Returns ``(final_state, ys)``. ``t = 0`` is the initial state, ``t >= 1`` the state
    after reading ``xs[t - 1]``; the overridden state's output is read from it.
    """
    parts, ps, residual = _parts(cell, params)
    states = [c.initial_state(p) for c, p in zip(parts, ps)]
    if override is not None and override[1] == 0:
        states[override[0]] = override[2]
    ys = []
    for t in range(1, xs.shape[0] + 1):
        x = xs[t - 1]
        for l, (c, p) in enumerate(zip(parts, ps)):
            states[l], y = c.apply(p, states[l], x)
            if override is not None and override[:2] == (l, t):
                states[l] = override[2]
                y = _readout(c, p, states[l], x)
            if residual and l > 0:
                y = y + x
            x = y
        ys.append(x)
    final = tuple(states) if cell.layers is not None else states[0]
    return final, jnp.stack(ys)


def _states(cell, params, xs):
    """``[(layer states at t) for t in 0..T]`` from the loop."""
    parts, ps, residual = _parts(cell, params)
    states = [c.initial_state(p) for c, p in zip(parts, ps)]
    out = [list(states)]
    for t in range(xs.shape[0]):
        x = xs[t]
        for l, (c, p) in enumerate(zip(parts, ps)):
            states[l], y = c.apply(p, states[l], x)
            x = y + x if residual and l > 0 else y
        out.append(list(states))
    return out


def _jacrev_state_grads(cell, params, xs, loss_fn):
    """``dL/dh_t`` per layer and step by ``jax.jacrev``; complex states as (re, im)."""
    traj = _states(cell, params, xs)
    n_layers = len(traj[0])
    grads = [[None] * len(traj) for _ in range(n_layers)]
    for t, layer_states in enumerate(traj):
        for l, h in enumerate(layer_states):
            if jnp.iscomplexobj(h):
                def f(v, l=l, t=t):
                    return loss_fn(*_loop(cell, params, xs, (l, t, jax.lax.complex(v[0], v[1]))))
                g = jax.jacrev(f)(jnp.stack([h.real, h.imag]))
                grads[l][t] = np.asarray(g[0]) - 1j * np.asarray(g[1])  # JAX: d/dRe - i d/dIm
            else:
                grads[l][t] = jax.jacrev(
                    lambda v, l=l, t=t: loss_fn(*_loop(cell, params, xs, (l, t, v))))(h)
    return grads


def _loss(ys_weight):
    def loss_fn(final, ys):
        leaves = jax.tree_util.tree_leaves(final)
        return jnp.sum(jnp.sin(ys) * ys_weight) + sum(jnp.sum(jnp.abs(s) ** 2) for s in leaves)

    return loss_fn


CELLS = {
    "lstm": lambda: seqjax.lstm(H, param_dtype=F64),
    "min_gru": lambda: seqjax.min_gru(H, param_dtype=F64),
    "lru": lambda: seqjax.lru(IN, 2, param_dtype=F64),
    # a GRU, an LSTM and a min_gru reading each other's outputs, with residual sums
    "stack": lambda: seqjax.stack(seqjax.gru(H, param_dtype=F64), seqjax.lstm(H, param_dtype=F64),
                                  seqjax.min_gru(H, param_dtype=F64), residual=True),
}


def _setup(name, key=0):
    cell = CELLS[name]()
    k_p, k_x, k_w = jax.random.split(jax.random.PRNGKey(key), 3)
    flat, unravel = jax.flatten_util.ravel_pytree(cell.init(k_p, IN))
    # move biases and readouts away from zero so that no path is trivially zero
    params = unravel(flat + 0.3 * jax.random.normal(k_p, flat.shape, flat.dtype))
    xs = jax.random.normal(k_x, (T, IN), F64)
    return cell, params, xs, _loss(jax.random.normal(k_w, (T, cell.output_size), F64))


# --------------------------------------------------------------- state gradients


@pytest.mark.parametrize("name", list(CELLS))
def test_state_gradients_equal_jacrev_per_step(x64, name):
    cell, params, xs, loss_fn = _setup(name)
    want = _jacrev_state_grads(cell, params, xs, loss_fn)
    # the default path (hoist off on CPU, associative scan) and, for the stack (GRU and
    # LSTM hoisted) and the LRU (stepped sequentially), the other one
    other = {"stack": [{"hoist": True}], "lru": [{"associative": False}]}.get(name, [])
    for options in other + [{}]:
        got = jax.jit(lambda p, x: dg.state_gradients(cell, p, x, loss_fn, **options))(params, xs)
        layers = got.states if cell.layers is not None else (got.states,)
        for l, layer in enumerate(layers):
            for t in range(T + 1):
                g_t = jax.tree_util.tree_map(lambda g: g[t], layer)
                jax.tree_util.tree_map(
                    functools.partial(np.testing.assert_allclose, rtol=1e-9, atol=1e-12),
                    g_t, want[l][t])
    # the loss and dL/dtheta are those of the plain unroll
    plain = lambda p: loss_fn(*seqjax.unroll(cell, p, xs))
    value, grad = jax.jit(jax.value_and_grad(plain))(params)
    np.testing.assert_allclose(got.loss, value, rtol=1e-12)
    jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-9, atol=1e-12),
                           got.params, grad)
    # norms: Euclidean over the whole state (complex entries count |g|^2)
    norms = dg.gradient_norms(got)
    flat = [np.concatenate([np.abs(np.asarray(leaf)).ravel() for leaf in
                            jax.tree_util.tree_leaves([w_l[t] for w_l in want])])
            for t in range(T + 1)]
    np.testing.assert_allclose(norms.states, [np.linalg.norm(f) for f in flat], rtol=1e-9)
    # per part: LSTM h and c, a stack's layers
    parts = norms.parts if cell.layers is not None else (norms.parts,)
    for l, part in enumerate(parts):
        want_parts = jax.tree_util.tree_map(lambda *g: np.stack(g), *want[l])
        jax.tree_util.tree_map(
            lambda n, w: np.testing.assert_allclose(
                n, np.linalg.norm(np.reshape(np.abs(w), (T + 1, -1)), axis=1), rtol=1e-9),
            part, want_parts)
    if name == "stack":
        assert isinstance(norms.parts[1], seqjax.LSTMState)
    np.testing.assert_allclose(norms.params, np.sqrt(sum(
        np.sum(np.asarray(g) ** 2) for g in jax.tree_util.tree_leaves(grad))), rtol=1e-9)


def test_length_masks_padded_steps(x64):
    """Padded steps: zero gradient; valid steps: the gradients of the short sequence;
    the outputs and final state: those of ``seqjax.unroll(length=n)``."""
    cell, params, xs, _ = _setup("stack")
    n = 3
    w = jax.random.normal(jax.random.PRNGKey(5), (T, cell.output_size), F64)
    got = jax.jit(lambda p, x: dg.state_gradients(cell, p, x, _loss(w), length=n))(params, xs)
    want = jax.jit(lambda p, x: dg.state_gradients(cell, p, x, _loss(w[:n])))(params, xs[:n])
    for g, s in zip(jax.tree_util.tree_leaves(got.states), jax.tree_util.tree_leaves(want.states)):
        np.testing.assert_allclose(g[:n + 1], s, rtol=1e-9, atol=1e-12)
        assert np.all(np.asarray(g[n + 1:]) == 0)
    np.testing.assert_allclose(got.loss, want.loss, rtol=1e-12)
    eps = dg.zero_perturbation(cell, params, T)
    got_out = jax.jit(lambda p, x, e: dg.perturbed_unroll(cell, p, x, e, length=n))(
        params, xs, eps)
    want_out = jax.jit(lambda p, x: seqjax.unroll(cell, p, x, length=n))(params, xs)
    jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-12, atol=1e-14),
                           got_out, want_out)


def test_batch_norms_are_frobenius_over_the_batch(x64):
    cell, params, _, _ = _setup("lstm")
    B = 3
    xs = jax.random.normal(jax.random.PRNGKey(3), (B, T, IN), F64)
    per_example = _loss(jax.random.normal(jax.random.PRNGKey(4), (T, H), F64))
    lengths = jnp.array([T, 4, 5], jnp.int32)

    def batch_loss(finals, ys):
        return jnp.mean(jax.vmap(per_example)(finals, ys))

    got = jax.jit(lambda p, x, n: dg.batch_state_gradient_norms(cell, p, x, batch_loss,
                                                                lengths=n))(params, xs, lengths)
    one = jax.jit(lambda p, x, n: dg.state_gradients(cell, p, x, per_example, length=n))
    grads = [one(params, xs[b], lengths[b]) for b in range(B)]
    squares = sum(np.sum(np.reshape(np.asarray(leaf), (T + 1, -1)) ** 2, axis=1)
                  for g in grads for leaf in jax.tree_util.tree_leaves(g.states))
    np.testing.assert_allclose(got.states, np.sqrt(squares) / B, rtol=1e-9)
    np.testing.assert_allclose(got.loss, np.mean([g.loss for g in grads]), rtol=1e-12)


# ------------------------------------------------------------------- analytic cases


def test_linear_rnn_gradients_scale_as_a_to_the_distance(x64):
    """h_t = x_t W + a h_{t-1} + b and L = v . h_T: ||dL/dh_t|| = |a|^(T - t) ||v||."""
    hidden, steps = 4, 25
    cell = seqjax.rnn(hidden, activation=lambda u: u, param_dtype=F64)
    params = cell.init(jax.random.PRNGKey(1), 2)
    xs = jax.random.normal(jax.random.PRNGKey(2), (steps, 2), F64)
    v = jnp.arange(1.0, hidden + 1.0, dtype=F64)

    @jax.jit
    def run(p):
        return (dg.state_gradient_norms(cell, p, xs, lambda final, ys: ys[-1] @ v),
                dg.jacobian_norms(cell, p, xs), dg.recurrent_spectrum(p)["w_h"],
                dg.jacobian_spectral_norm(cell, p, xs, jax.random.PRNGKey(0), step=0,
                                          num_iters=3))

    t = np.arange(steps + 1)
    # a = 1e-7: |a|^(T - t) reaches 1e-175, whose square underflows float64; the norms
    # must not (they are scaled by the largest entry, as LAPACK's nrm2)
    for a in (0.8, 1.1, -0.9, 1e-7):
        norms, jac, spec, power = run(params._replace(w_h=a * jnp.eye(hidden, dtype=F64)))
        decay = np.abs(a) ** (steps - t)
        np.testing.assert_allclose(norms.states, decay * np.linalg.norm(v), rtol=1e-12)
        np.testing.assert_allclose(jac.frobenius, decay * np.sqrt(hidden), rtol=1e-12)
        np.testing.assert_allclose(jac.spectral, decay, rtol=1e-12)
        np.testing.assert_allclose(power, decay[0], rtol=1e-12)
        np.testing.assert_allclose([spec.spectral_radius, spec.max_singular_value], [abs(a)] * 2,
                                   rtol=1e-12)


def test_lru_gradients_decay_with_the_eigenvalue_moduli(x64):
    """Diagonal recurrence: |dL/dh_t| = |lambda|^(T - t) |dL/dh_T| elementwise."""
    steps = 30
    cell = seqjax.lru(2, 3, param_dtype=F64)
    params = cell.init(jax.random.PRNGKey(0), 2)
    xs = jax.random.normal(jax.random.PRNGKey(1), (steps, 2), F64)
    got = jax.jit(lambda p: dg.state_gradients(
        cell, p, xs, lambda final, ys: jnp.sum(jnp.abs(final) ** 2)))(params)
    lam = np.exp(-np.exp(np.asarray(params.nu_log)) + 1j * np.exp(np.asarray(params.theta_log)))
    t = np.arange(steps + 1)[:, None]
    np.testing.assert_allclose(np.abs(got.states),
                               np.abs(got.states[-1]) * np.abs(lam) ** (steps - t), rtol=1e-9)
    spec = dg.recurrent_spectrum(params)["lambda"]
    np.testing.assert_allclose([spec.spectral_radius, spec.max_singular_value],
                               [np.abs(lam).max()] * 2, rtol=1e-12)


# ------------------------------------------------------------------------ Jacobians


def _jacrev_jacobians(cell, params, xs):
    """``d h_T / d h_t`` in the real view, by ``jax.jacrev`` of the Python loop."""
    out = []
    for t, (h,) in enumerate(_states(cell, params, xs)):
        if jnp.iscomplexobj(h):
            n = h.shape[0]

            def f(v, t=t):
                final, _ = _loop(cell, params, xs, (0, t, jax.lax.complex(v[:n], v[n:])))
                return jnp.concatenate([final.real, final.imag])

            out.append(jax.jacrev(f)(jnp.concatenate([h.real, h.imag])))
        else:
            leaves, tree = jax.tree_util.tree_flatten(h)

            def f(v, t=t):
                state = jax.tree_util.tree_unflatten(tree, jnp.split(v, len(leaves)))
                final, _ = _loop(cell, params, xs, (0, t, state))
                return jnp.concatenate(jax.tree_util.tree_leaves(final))

            out.append(jax.jacrev(f)(jnp.concatenate(leaves)))
    return np.stack(out)


@pytest.mark.parametrize("name", ["lstm", "lru"])
def test_jacobians_equal_jacrev(x64, name):
    cell, params, xs, _ = _setup(name)
    want = _jacrev_jacobians(cell, params, xs)
    got, norms = jax.jit(lambda p, x: (dg.state_jacobians(cell, p, x),
                                       dg.jacobian_norms(cell, p, x)))(params, xs)
    S = dg.state_size(cell, params)
    assert got.shape == want.shape == (T + 1, S, S) and S == 2 * (H if name == "lstm" else 2)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(norms.frobenius, np.linalg.norm(want, axis=(1, 2)), rtol=1e-9)
    np.testing.assert_allclose(norms.spectral, np.linalg.norm(want, 2, axis=(1, 2)), rtol=1e-9)
    estimate = jax.jit(lambda p, x, k, t: dg.jacobian_spectral_norm(cell, p, x, k, step=t,
                                                                     num_iters=200))
    for step in (0, 3):
        np.testing.assert_allclose(estimate(params, xs, jax.random.PRNGKey(step), step),
                                   np.linalg.norm(want[step], 2), rtol=1e-6)


# ---------------------------------------------------------------- recurrent matrices


def test_recurrent_spectrum_equals_numpy(key):
    H_ = 5
    rnn_p = seqjax.rnn(H_).init(key, 2)
    lstm_p = seqjax.lstm(H_).init(key, 2)
    mgu_p = seqjax.mgu(H_).init(key, 2)
    w = np.asarray(rnn_p.w_h)
    got = dg.recurrent_spectrum(rnn_p)["w_h"]
    np.testing.assert_allclose(got.spectral_radius, np.abs(np.linalg.eigvals(w)).max(), rtol=1e-5)
    np.testing.assert_allclose(got.max_singular_value, np.linalg.norm(w, 2), rtol=1e-5)
    got = dg.recurrent_spectrum(lstm_p)
    for k, gate in enumerate("ifgo"):
        block = np.asarray(lstm_p.w_h)[:, k * H_:(k + 1) * H_]
        np.testing.assert_allclose(got[gate].spectral_radius,
                                   np.abs(np.linalg.eigvals(block)).max(), rtol=1e-5)
        np.testing.assert_allclose(got[gate].max_singular_value, np.linalg.norm(block, 2),
                                   rtol=1e-5)
    np.testing.assert_allclose(got["w_h"].max_singular_value,
                               np.linalg.norm(np.asarray(lstm_p.w_h), 2), rtol=1e-5)
    assert set(dg.recurrent_spectrum(mgu_p)) == {"f", "n", "w_h"}
    assert dg.recurrent_spectrum(seqjax.min_gru(3).init(key, 2)) == {}
    both = dg.recurrent_spectrum((rnn_p, lstm_p))
    np.testing.assert_allclose(both[0]["w_h"].max_singular_value, np.linalg.norm(w, 2), rtol=1e-5)
    with pytest.raises(TypeError, match="recurrent_spectrum"):
        dg.recurrent_spectrum({"w": jnp.ones((2, 2))})


# ------------------------------------------------------------------- jit and vmap


def test_vmap_over_seeds_equals_one_seed_at_a_time():
    cell = seqjax.rnn(4)
    xs = jax.random.normal(jax.random.PRNGKey(0), (5, 2))
    keys = jax.random.split(jax.random.PRNGKey(1), 3)

    def run(key):
        params = cell.init(key, 2)
        params = params._replace(w_h=params.w_h * 0.5)  # spectral radius 0.5 (orthogonal init)
        norms = dg.state_gradient_norms(cell, params, xs, lambda final, ys: jnp.sum(ys[-1] ** 2))
        return norms.states, norms.params, dg.recurrent_spectrum(params)["w_h"].spectral_radius

    batched = jax.jit(jax.vmap(run))(keys)
    one = jax.jit(run)
    for i, k in enumerate(keys):
        for got, want in zip(batched, one(k)):
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- errors


def test_bad_input_fails_before_tracing(key):
    cell = seqjax.gru(3)
    params = cell.init(key, 2)
    loss_fn = lambda final, ys: jnp.sum(ys)
    with pytest.raises(ValueError, match=r"\[time, 2\]"):
        dg.state_gradients(cell, params, jnp.ones((4, 3)), loss_fn)
    with pytest.raises(ValueError, match=r"\[batch, time, 2\]"):
        dg.batch_state_gradients(cell, params, jnp.ones((4, 2)), loss_fn)
    with pytest.raises(ValueError, match="T \\+ 1"):
        dg.perturbed_unroll(cell, params, jnp.ones((4, 2)), jnp.zeros((4, 3)))
    bi = seqjax.bidirectional(seqjax.gru(3), seqjax.gru(3))
    with pytest.raises(TypeError, match="SequenceModel"):
        dg.state_gradients(bi, bi.init(key, 2), jnp.ones((4, 2)), loss_fn)
    with pytest.raises(TypeError, match="Cell"):
        dg.state_gradients(object(), params, jnp.ones((4, 2)), loss_fn)


def test_cell_whose_output_is_not_its_state_is_refused(key):
    base = seqjax.rnn(3)
    doubled = base._replace(apply=lambda p, s, x: (base.apply(p, s, x)[0],
                                                   jnp.concatenate([s, s])),
                            output_size=6, hoist=None)
    params = doubled.init(key, 2)
    with pytest.raises(TypeError, match="hidden state"):
        dg.state_gradients(doubled, params, jnp.ones((4, 2)), lambda f, ys: jnp.sum(ys))


def test_global_norm_counts_complex_moduli_and_does_not_underflow():
    tree = {"a": jnp.array([3.0, 0.0]), "b": (jnp.array([1j + 1.0], jnp.complex64),)}
    np.testing.assert_allclose(dg.global_norm(tree), np.sqrt(9.0 + 2.0), rtol=1e-6)
    tiny = {"a": jnp.full((4,), 1e-30, jnp.float32), "b": jnp.zeros((2,), jnp.float32)}
    np.testing.assert_allclose(dg.global_norm(tiny), 2e-30, rtol=1e-6)  # 1e-60 underflows
    assert dg.global_norm({"a": jnp.zeros((3,))}) == 0
    assert dg.global_norm({"a": jnp.array([1.0, jnp.inf])}) == np.inf


def test_global_norm_of_mixed_precision_tree(x64):
    tree = (jnp.ones(2, jnp.float32), jnp.ones(2, jnp.float64), jnp.ones(1, jnp.complex64))
    norm = dg.global_norm(tree)
    assert norm.dtype == jnp.float64 and float(norm) == pytest.approx(np.sqrt(5.0), rel=1e-7)
