"""The unroll against references that do not share its code paths: a Python loop over
``apply``, per-example loops, reversed inputs, chunked streaming, and JAX's own
``check_grads``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import seqjax as sj

T, I, H = 7, 4, 4


def _cells():
    return {
        "rnn_tanh": sj.rnn(H),
        "rnn_relu": sj.rnn(H, activation=jax.nn.relu),
        "lstm": sj.lstm(H),
        "gru_after": sj.gru(H),
        "gru_before": sj.gru(H, reset_after=False),
        "mgu": sj.mgu(H),
        "mgu_flax": sj.mgu(H, reset_after=True),
        "min_gru": sj.min_gru(H),
        "min_lstm": sj.min_lstm(H),
        "lru": sj.lru(H, 6),
        "stack": sj.stack(sj.lstm(H), sj.gru(H), residual=True),
        "stack_mixed": sj.stack(sj.min_gru(H), sj.rnn(3)),
        # -- modern cells I (sLSTM, RG-LRU, S6)
        # nonzero recurrent blocks (xlstm starts them at zero) so the tests reach R
        "slstm": sj.slstm(H, num_heads=2, recurrent_init=jax.nn.initializers.normal(0.5)),
        "rg_lru": sj.rg_lru(H, num_heads=2),
        "s6": sj.s6(H, state_size=3),
        # -- matrix-state cells (mLSTM, DeltaNet, Gated DeltaNet, Mamba-2)
        # gate weights drawn (xlstm starts them at zero) so the tests reach them; the
        # unroll runs the chunkwise form, apply the step
        "mlstm": sj.mlstm(H, num_heads=2, gate_init=jax.nn.initializers.normal(0.3)),
        "delta_net": sj.delta_net(H, num_heads=1),
        "gated_delta_net": sj.gated_delta_net(H, num_heads=1),
        "mamba2": sj.mamba2(H, num_heads=2, state_size=3),
    }


CELLS = _cells()
NAMES = sorted(CELLS)
LINEAR = ["min_gru", "min_lstm", "lru"]


def _setup(name, seed=0, time=T):
    cell = CELLS[name]
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params = cell.init(k1, I)
    xs = jax.random.normal(k2, (time, I))
    return cell, params, xs


def _loop(cell, params, xs, state=None):
    """The reference: a Python loop over one-step ``apply``."""
    state = cell.initial_state(params) if state is None else state
    ys = []
    for x in xs:
        state, y = cell.apply(params, state, x)
        ys.append(y)
    return state, (jnp.stack(ys) if ys else jnp.zeros((0, cell.output_size)))


def _close(a, b, atol=1e-5):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5)


def _random_state(cell, params, key):
    leaves, tree = jax.tree_util.tree_flatten(cell.initial_state(params))
    keys = jax.random.split(key, len(leaves))
    new = []
    for k, leaf in zip(keys, leaves):
        if jnp.iscomplexobj(leaf):
            re, im = jax.random.normal(k, (2,) + leaf.shape)
            new.append(jax.lax.complex(re, im).astype(leaf.dtype))
        else:
            new.append(jax.random.normal(k, leaf.shape, leaf.dtype))
    return jax.tree_util.tree_unflatten(tree, new)


@pytest.mark.parametrize("name", NAMES)
def test_unroll_equals_python_loop(name):
    cell, params, xs = _setup(name)
    state = _random_state(cell, params, jax.random.PRNGKey(5))
    reference = _loop(cell, params, xs, state)
    for hoist in (False, True):
        _close(sj.unroll(cell, params, xs, state, hoist=hoist), reference)


@pytest.mark.parametrize("name", LINEAR + ["stack_mixed"])
@pytest.mark.parametrize("reverse", [False, True])
def test_associative_equals_sequential(name, reverse):
    cell, params, xs = _setup(name, time=33)
    state = _random_state(cell, params, jax.random.PRNGKey(1))
    for length in (None, 20, 0):
        seq = sj.unroll(cell, params, xs, state, reverse=reverse, length=length, associative=False)
        par = sj.unroll(cell, params, xs, state, reverse=reverse, length=length, associative=True)
        _close(par, seq)


@pytest.mark.parametrize("name", NAMES)
def test_reverse_is_forward_on_flipped_input(name):
    cell, params, xs = _setup(name)
    final_r, ys_r = sj.unroll(cell, params, xs, reverse=True)
    final_f, ys_f = sj.unroll(cell, params, xs[::-1])
    _close((final_r, ys_r), (final_f, ys_f[::-1]))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("length", [0, 3, T])
def test_length_rules(name, length):
    cell, params, xs = _setup(name)
    final, ys = sj.unroll(cell, params, xs, length=length)
    ref_final, ref_ys = _loop(cell, params, xs[:length])
    _close(final, ref_final)
    if length:
        _close(ys[:length], ref_ys)
    np.testing.assert_array_equal(np.asarray(ys[length:]), 0.0)

    # reverse reads only the valid prefix, from its end
    final_r, ys_r = sj.unroll(cell, params, xs, length=length, reverse=True)
    ref_final_r, ref_ys_r = _loop(cell, params, xs[:length][::-1])
    _close(final_r, ref_final_r)
    if length:
        _close(ys_r[:length], ref_ys_r[::-1])
    np.testing.assert_array_equal(np.asarray(ys_r[length:]), 0.0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("reverse", [False, True])
def test_gradient_wrt_padded_inputs_is_exactly_zero(name, reverse):
    cell, params, xs = _setup(name)
    length = 3

    def loss(xs):
        final, ys = sj.unroll(cell, params, xs, length=length, reverse=reverse)
        leaves = jax.tree_util.tree_leaves(final)
        return jnp.sum(ys**2) + sum(jnp.sum(jnp.abs(l) ** 2) for l in leaves)

    g = jax.grad(loss)(xs)
    np.testing.assert_array_equal(np.asarray(g[length:]), 0.0)
    assert np.all(np.abs(np.asarray(g[:length])).sum(axis=1) > 0)


@pytest.mark.parametrize("name", NAMES)
def test_chunked_equals_whole(name):
    cell, params, xs = _setup(name, time=12)
    whole = sj.unroll(cell, params, xs)
    state, outs = None, []
    for chunk in (xs[:5], xs[5:6], xs[6:]):
        state, ys = sj.unroll(cell, params, chunk, state)
        outs.append(ys)
    _close((state, jnp.concatenate(outs)), whole)


@pytest.mark.parametrize("name", ["lstm", "gru_after", "lru", "stack"])
def test_vmap_and_batch_equal_per_example(name):
    cell, params, _ = _setup(name)
    xs = jax.random.normal(jax.random.PRNGKey(3), (3, T, I))
    lengths = jnp.array([T, 2, 5])
    finals, ys = sj.unroll_batch(cell, params, xs, lengths=lengths)
    vfinals, vys = jax.vmap(lambda x, n: sj.unroll(cell, params, x, length=n))(xs, lengths)
    _close((finals, ys), (vfinals, vys))
    for b in range(3):
        f, y = sj.unroll(cell, params, xs[b], length=int(lengths[b]))
        _close(jax.tree_util.tree_map(lambda a: a[b], finals), f)
        _close(ys[b], y)


@pytest.mark.parametrize("name", ["lstm", "gru_before", "min_lstm", "stack"])
def test_jit_equals_eager_and_does_not_recompile(name):
    cell, params, xs = _setup(name)
    traces = []

    @jax.jit
    def run(params, xs, length):
        traces.append(1)
        return sj.unroll(cell, params, xs, length=length)

    _close(run(params, xs, jnp.int32(5)), sj.unroll(cell, params, xs, length=5))
    run(params, xs + 1.0, jnp.int32(3))  # same shapes, new values
    assert len(traces) == 1


@pytest.mark.parametrize("name", NAMES)
def test_remat_gives_same_values_and_gradients(name):
    """remat checkpoints chunks of ceil(sqrt(T)) steps; T = 7 leaves a ragged last
    chunk (3 + 3 + 1, padded with masked steps)."""
    cell, params, xs = _setup(name)
    state = _random_state(cell, params, jax.random.PRNGKey(2))

    def loss(params, xs, remat, reverse, length):
        final, ys = sj.unroll(cell, params, xs, state, remat=remat, reverse=reverse,
                              length=length)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(jnp.abs(l) ** 2)
                                         for l in jax.tree_util.tree_leaves(final))

    # jitted: each variant compiles once as a whole program instead of op by op
    value = jax.jit(loss, static_argnums=(2, 3, 4))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=(2, 3, 4))
    for reverse, length in ((False, None), (True, 5)):
        args = (params, xs)
        _close(value(*args, True, reverse, length), value(*args, False, reverse, length))
        _close(grad(*args, True, reverse, length), grad(*args, False, reverse, length))


def _f64(tree):
    return jax.tree_util.tree_map(
        lambda a: a.astype(jnp.complex128 if jnp.iscomplexobj(a) else jnp.float64), tree)


@pytest.mark.parametrize("name", NAMES)
def test_check_grads_float64(name, x64):
    cell = CELLS[name]
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    params = _f64(cell.init(k1, I))
    xs = jax.random.normal(k2, (5, I), jnp.float64)
    state = _f64(_random_state(cell, params, k3))
    if jax.tree_util.tree_leaves(state)[0].dtype == jnp.complex128:
        # real-valued loss of a complex state: differentiate w.r.t. real inputs only
        def step_loss(params, x):
            s, y = cell.apply(params, state, x)
            return jnp.sum(y) + jnp.sum(jnp.abs(s) ** 2)
    else:
        def step_loss(params, x):
            s, y = cell.apply(params, state, x)
            return jnp.sum(y) + sum(jnp.sum(l) for l in jax.tree_util.tree_leaves(s))
    # jitted: check_grads evaluates each derivative many times; compiled once each
    # instead of dispatched op by op
    check_grads(jax.jit(step_loss), (params, xs[0]), order=2, modes=["rev"], eps=1e-6)

    def seq_loss(params, xs, fused=None):
        final, ys = sj.unroll(cell, params, xs, length=4, fused=fused)
        return jnp.sum(jnp.tanh(ys))

    # forward mode needs the plain scan; the fused backward is a custom_vjp (reverse
    # mode; its second order is checked in test_fused.py)
    check_grads(jax.jit(lambda p, x: seq_loss(p, x, False)), (params, xs), order=1,
                modes=["fwd", "rev"], eps=1e-6)
    if cell.hoist is not None and cell.hoist.recurrent is not None:
        check_grads(jax.jit(seq_loss), (params, xs), order=1, modes=["rev"], eps=1e-6)


def test_stack_and_residual_equal_manual_composition():
    a, b = sj.gru(H), sj.lstm(H)
    cell = sj.stack(a, b, residual=True)
    params = cell.init(jax.random.PRNGKey(0), I)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, I))
    fa, ya = sj.unroll(a, params[0], xs)
    fb, yb = sj.unroll(b, params[1], ya)
    _close(sj.unroll(cell, params, xs), ((fa, fb), yb + ya))


def test_stack_dropout_needs_rng_and_drops_between_layers():
    cell = sj.stack(sj.rnn(H), sj.rnn(H, activation=lambda v: v), dropout=0.5)
    params = cell.init(jax.random.PRNGKey(0), I)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, I))
    plain = sj.unroll(sj.stack(sj.rnn(H), sj.rnn(H, activation=lambda v: v)), params, xs)
    _close(sj.unroll(cell, params, xs), plain)  # no rng: inference, no dropout
    key = jax.random.PRNGKey(7)
    _, y1 = sj.unroll(cell, params, xs, rng=key)
    _, y1_again = sj.unroll(cell, params, xs, rng=key)
    _, y2 = sj.unroll(cell, params, xs, rng=jax.random.PRNGKey(8))
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y1_again))
    assert not np.allclose(np.asarray(y1), np.asarray(y2))
    # reproduce the layer-2 input by hand: inverted dropout of layer-1 outputs
    k0 = jax.random.split(key, 2)[0]
    _, drop_key = jax.random.split(k0)
    _, h1 = sj.unroll(sj.rnn(H), params[0], xs)
    keep = jax.random.bernoulli(drop_key, 0.5, h1.shape)
    _, ref = sj.unroll(sj.rnn(H, activation=lambda v: v), params[1], jnp.where(keep, h1 * 2.0, 0.0))
    _close(y1, ref)


@pytest.mark.parametrize("merge,fn", [
    (sj.concat, lambda f, b: np.concatenate([f, b], -1)),
    (sj.add, lambda f, b: f + b),
    (sj.mean, lambda f, b: (f + b) / 2),
    (sj.multiply, lambda f, b: f * b),
    (lambda f, b: jnp.maximum(f, b), np.maximum),
])
def test_bidirectional_merges_forward_and_reverse(merge, fn):
    model = sj.bidirectional(sj.lstm(H), sj.gru(H), merge=merge)
    params = model.init(jax.random.PRNGKey(0), I)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, I))
    (sf, sb), ys = sj.unroll(model, params, xs, length=5)
    ref_sf, yf = _loop(sj.lstm(H), params.forward, xs[:5])
    ref_sb, yb = _loop(sj.gru(H), params.backward, xs[:5][::-1])
    _close((sf, sb), (ref_sf, ref_sb))
    _close(ys[:5], fn(np.asarray(yf), np.asarray(yb)[::-1]))
    np.testing.assert_array_equal(np.asarray(ys[5:]), 0.0)


def test_stack_of_bidirectional_layers_is_a_sequence_model():
    model = sj.stack(sj.bidirectional(sj.gru(H), sj.gru(H)), sj.bidirectional(sj.gru(3), sj.gru(3)))
    assert isinstance(model, sj.SequenceModel) and model.output_size == 6
    params = model.init(jax.random.PRNGKey(0), I)
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, T, I))
    finals, ys = sj.unroll_batch(model, params, xs, lengths=jnp.array([7, 3, 1]))
    assert ys.shape == (3, T, 6)
    _, y1 = sj.unroll(model, params, xs[1], length=3)
    _close(ys[1], y1)
    _, mid = sj.unroll(sj.bidirectional(sj.gru(H), sj.gru(H)), params[0], xs[1], length=3)
    _, top = sj.unroll(sj.bidirectional(sj.gru(3), sj.gru(3)), params[1], mid, length=3)
    _close(ys[1], top)


@pytest.mark.parametrize("cell,count", [
    (sj.rnn(5), 5 * (3 + 5) + 5),
    (sj.lstm(5), 4 * 5 * (3 + 5) + 4 * 5),
    (sj.gru(5), 3 * 5 * (3 + 5) + 3 * 5 + 5),
    (sj.gru(5, reset_after=False), 3 * 5 * (3 + 5) + 3 * 5),
    (sj.mgu(5), 2 * 5 * (3 + 5) + 2 * 5),
    (sj.min_gru(5), 2 * 5 * 3 + 2 * 5),
    (sj.min_lstm(5), 3 * 5 * 3 + 3 * 5),
])
def test_parameter_counts_match_formulas(cell, count):
    params = cell.init(jax.random.PRNGKey(0), 3)
    assert sum(a.size for a in jax.tree_util.tree_leaves(params)) == count


def test_lru_parameter_count_and_eigenvalue_ring():
    N, Hh = 6, 5
    params = sj.lru(Hh, N, r_min=0.4, r_max=0.8, max_phase=1.0).init(jax.random.PRNGKey(0), Hh)
    assert sum(a.size for a in jax.tree_util.tree_leaves(params)) == 2 * N * Hh + 2 * Hh * N + Hh + 3 * N
    modulus = np.exp(-np.exp(np.asarray(params.nu_log)))
    assert np.all((modulus >= 0.4 - 1e-6) & (modulus <= 0.8 + 1e-6))
    assert np.all(np.exp(np.asarray(params.theta_log)) <= 1.0)
    np.testing.assert_allclose(np.exp(np.asarray(params.gamma_log)), np.sqrt(1 - modulus**2), rtol=1e-5)


def test_lstm_forget_bias_is_the_initial_value_of_b_f():
    params = sj.lstm(3, forget_bias=2.5).init(jax.random.PRNGKey(0), 2)
    np.testing.assert_array_equal(np.asarray(params.b), [0, 0, 0, 2.5, 2.5, 2.5, 0, 0, 0, 0, 0, 0])


def test_recurrent_init_is_orthogonal_per_gate():
    params = sj.lstm(6).init(jax.random.PRNGKey(0), 3)
    for g in range(4):
        block = np.asarray(params.w_h[:, 6 * g:6 * (g + 1)])
        np.testing.assert_allclose(block.T @ block, np.eye(6), atol=1e-5)


@pytest.mark.parametrize("make", [sj.lstm, sj.gru, sj.mgu, sj.rnn, sj.min_gru, sj.min_lstm])
def test_bfloat16_params_init_and_unroll(make):
    """16-bit params are the float32 draw cast (LAPACK's QR behind the orthogonal
    initialiser has no bfloat16 on CPU), and the unroll computes in bfloat16 close to
    float32."""
    key, xs = jax.random.PRNGKey(0), jax.random.normal(jax.random.PRNGKey(1), (2, T, I))
    p32 = make(H).init(key, I)
    p16 = make(H, param_dtype=jnp.bfloat16).init(key, I)
    for a, b in zip(jax.tree_util.tree_leaves(p32), jax.tree_util.tree_leaves(p16), strict=True):
        assert b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(b, np.float32),
                                      np.asarray(a.astype(jnp.bfloat16), np.float32))
    _, y16 = sj.unroll_batch(make(H), p16, xs.astype(jnp.bfloat16))
    _, y32 = sj.unroll_batch(make(H), p32, xs)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float32), np.asarray(y32), atol=0.05)
