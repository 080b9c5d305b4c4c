"""``jax.vmap(unroll)`` is the batched scan of ``unroll_batch``, under every
composition of transformations a user writes: grad of vmap, vmap of grad, nested vmap,
vmap over params (ensembles), jit inside and outside, forward mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax as sj
from _jaxpr import equations

B, T, I, H = 3, 6, 4, 5


def _close(a, b, atol=1e-5):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5)


CELLS = {
    "lstm": sj.lstm(H),  # fused backward
    "gru_before": sj.gru(H, reset_after=False),  # plain scan
    "min_gru": sj.min_gru(H),  # associative scan
    "stack": sj.stack(sj.gru(H), sj.lstm(H), dropout=0.5),
    "bidirectional": sj.bidirectional(sj.lstm(H), sj.rnn(H)),
}


def _data(name):
    cell = CELLS[name]
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return cell, cell.init(k1, I), jax.random.normal(k2, (B, T, I))


def _batch_dot_generals(jaxpr):
    """dot_generals with batch dimensions, anywhere in a (nested) jaxpr: what a fused
    backward vmapped per example would form (one weight gradient per example)."""
    return sum(e.primitive.name == "dot_general" and bool(e.params["dimension_numbers"][1][0])
               for e in equations(jaxpr))


@pytest.mark.parametrize("name", sorted(CELLS))
def test_vmap_of_unroll_equals_unroll_batch(name):
    cell, params, xs = _data(name)
    lengths = jnp.array([T, 2, 0])
    vmapped = jax.vmap(lambda x, n: sj.unroll(cell, params, x, length=n))(xs, lengths)
    _close(vmapped, sj.unroll_batch(cell, params, xs, lengths=lengths), atol=0)

    def loss(params, run):
        final, ys = run(params)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(l ** 2) for l in jax.tree_util.tree_leaves(final))

    g_vmap = jax.grad(loss)(params, lambda p: jax.vmap(
        lambda x, n: sj.unroll(cell, p, x, length=n))(xs, lengths))
    g_batch = jax.grad(loss)(params, lambda p: sj.unroll_batch(cell, p, xs, lengths=lengths))
    _close(g_vmap, g_batch, atol=1e-6)


def test_grad_of_vmap_forms_weight_gradients_over_the_whole_batch():
    cell, params, xs = _data("lstm")

    def loss(params):
        return jnp.sum(jax.vmap(lambda x: sj.unroll(cell, params, x, fused=True)[1])(xs))

    assert _batch_dot_generals(jax.make_jaxpr(jax.grad(loss))(params).jaxpr) == 0
    # per-example gradients (vmap of grad) do form them, so the check can fail
    outside_vmap = jax.make_jaxpr(jax.vmap(jax.grad(
        lambda p, x: jnp.sum(sj.unroll(cell, p, x, fused=True)[1])), (None, 0)))(params, xs)
    assert _batch_dot_generals(outside_vmap.jaxpr) > 0


@pytest.mark.parametrize("name", ["lstm", "bidirectional"])
def test_vmap_of_grad_gives_per_example_gradients(name):
    cell, params, xs = _data(name)

    def loss(params, x):
        return jnp.sum(jnp.tanh(sj.unroll(cell, params, x)[1]))

    per_example = jax.vmap(jax.grad(loss), (None, 0))(params, xs)
    for b in range(B):
        _close(jax.tree_util.tree_map(lambda g: g[b], per_example), jax.grad(loss)(params, xs[b]))


def test_nested_vmap_and_vmap_over_other_axes():
    cell, params, xs = _data("lstm")
    xs2 = jnp.stack([xs, 2 * xs])  # [2, B, T, I]
    nested = jax.vmap(jax.vmap(lambda x: sj.unroll(cell, params, x)))(xs2)
    flat = sj.unroll_batch(cell, params, xs2.reshape(2 * B, T, I))
    _close(jax.tree_util.tree_map(lambda a: a.reshape((2 * B,) + a.shape[2:]), nested), flat)
    time_major = jax.vmap(lambda x: sj.unroll(cell, params, x), in_axes=1)(jnp.swapaxes(xs, 0, 1))
    _close(time_major, sj.unroll_batch(cell, params, xs))


def test_vmap_over_params_is_an_ensemble():
    cell = CELLS["lstm"]
    params = jax.vmap(lambda k: cell.init(k, I))(jax.random.split(jax.random.PRNGKey(1), B))
    xs = jax.random.normal(jax.random.PRNGKey(2), (T, I))
    ens = jax.vmap(lambda p: sj.unroll(cell, p, xs))(params)
    both = jax.vmap(lambda p, x: sj.unroll(cell, p, x))(params, jnp.stack([xs] * B))
    for b in range(B):
        one = sj.unroll(cell, jax.tree_util.tree_map(lambda a: a[b], params), xs)
        _close(jax.tree_util.tree_map(lambda a: a[b], ens), one)
        _close(jax.tree_util.tree_map(lambda a: a[b], both), one)
    grads = jax.grad(lambda p: jnp.sum(jax.vmap(lambda p: sj.unroll(cell, p, xs)[1])(p)))(params)
    for b in range(B):
        _close(jax.tree_util.tree_map(lambda a: a[b], grads), jax.grad(
            lambda p: jnp.sum(sj.unroll(cell, p, xs)[1]))(
                jax.tree_util.tree_map(lambda a: a[b], params)))


def test_unbatched_state_and_shared_dropout_key_follow_vmap_semantics():
    cell, params, xs = _data("stack")
    state = jax.tree_util.tree_map(lambda s: s + 0.3, cell.initial_state(params))
    key = jax.random.PRNGKey(7)
    vm = jax.vmap(lambda x: sj.unroll(cell, params, x, state, rng=key))(xs)
    for b in range(B):
        _close(jax.tree_util.tree_map(lambda a: a[b], vm),
               sj.unroll(cell, params, xs[b], state, rng=key))


def test_jit_inside_and_outside_vmap_and_forward_mode():
    cell, params, xs = _data("lstm")
    reference = sj.unroll_batch(cell, params, xs)
    f = lambda x: sj.unroll(cell, params, x)
    _close(jax.jit(jax.vmap(f))(xs), reference)
    _close(jax.vmap(jax.jit(f))(xs), reference)
    tangent = jnp.ones_like(xs)
    _, jvp = jax.jvp(jax.vmap(lambda x: sj.unroll(cell, params, x, fused=False)[1]), (xs,),
                     (tangent,))
    _, jvp_batch = jax.jvp(lambda x: sj.unroll_batch(cell, params, x, fused=False)[1], (xs,),
                           (tangent,))
    _close(jvp, jvp_batch)
