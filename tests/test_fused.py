"""The fused backward pass against JAX's own transpose of the plain scan.

``fused=True`` (for rnn, lstm, the reset-after gru and mgu; the default for batches up
to ``seqjax.default_fused``'s limit) replaces the reverse-mode derivative of the unroll with a hand-written ``custom_vjp``; the
reference here is ``jax.grad`` of the same unroll with ``fused=False``, which is
JAX differentiating ``lax.scan`` itself. Float64, so agreement is to rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax as sj
from _jaxpr import scan_dots

B, T, I, H = 3, 6, 4, 5
LENGTHS = jnp.array([6, 2, 0], jnp.int32)

CELLS = {
    "rnn": lambda: sj.rnn(H),
    "rnn_relu": lambda: sj.rnn(H, activation=jax.nn.relu),
    "lstm": lambda: sj.lstm(H),
    "gru": lambda: sj.gru(H),
    "mgu_flax": lambda: sj.mgu(H, reset_after=True),
    "stack": lambda: sj.stack(sj.lstm(H), sj.gru(H), residual=True),
    "bidirectional": lambda: sj.bidirectional(sj.lstm(H), sj.gru(H)),
}


def _f64(tree):
    return jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), tree)


def _setup(name, seed=0):
    cell = CELLS[name]()
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = _f64(cell.init(k1, I))
    xs = jax.random.normal(k2, (B, T, I), jnp.float64)
    leaves, tree = jax.tree_util.tree_flatten(cell.initial_state(params))
    keys = jax.random.split(k3, len(leaves))
    state = jax.tree_util.tree_unflatten(
        tree, [jax.random.normal(k, (B,) + l.shape, jnp.float64) for k, l in zip(keys, leaves)])
    return cell, params, xs, state


def _assert_trees_close(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-10, atol=1e-12)


# every cell both ways; the input projection before the loop (hoist) and inside it
# for the two cells that matter most (a bidirectional model runs both ways already)
CASES = ([(name, reverse, False) for name in sorted(CELLS) for reverse in (False, True)
          if not (name == "bidirectional" and reverse)]
         + [(name, reverse, True) for name in ("lstm", "gru") for reverse in (False, True)])


@pytest.mark.parametrize("name,reverse,hoist", CASES)
def test_fused_equals_autodiff_of_the_scan(x64, name, reverse, hoist):
    cell, params, xs, state = _setup(name)
    w = jax.random.normal(jax.random.PRNGKey(9), (B, T, cell.output_size), jnp.float64)

    def loss(params, xs, state, fused):
        final, ys = sj.unroll_batch(cell, params, xs, state, lengths=LENGTHS, reverse=reverse,
                                    hoist=hoist, fused=fused)
        # every output and every final-state entry reaches the loss, nonlinearly
        return jnp.sum(jnp.sin(ys) * w) + sum(jnp.sum(jnp.cos(l))
                                             for l in jax.tree_util.tree_leaves(final))

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
    value, grads = grad(params, xs, state, True)
    ref_value, ref_grads = grad(params, xs, state, False)
    np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-12)
    _assert_trees_close(grads, ref_grads)
    # padding and the zero-length example: exactly zero input gradient
    np.testing.assert_array_equal(np.asarray(grads[1][1, 2:]), 0.0)
    np.testing.assert_array_equal(np.asarray(grads[1][2]), 0.0)


def test_fused_single_sequence_and_vmap_match(x64):
    cell, params, xs, state = _setup("lstm")

    def per_example(params, x, s, n, fused):
        return jnp.sum(jnp.tanh(sj.unroll(cell, params, x, s, length=n, fused=fused)[1]))

    def total(params, fused):
        return jnp.sum(jax.vmap(per_example, (None, 0, 0, 0, None))(params, xs, state, LENGTHS,
                                                                    fused))

    _assert_trees_close(jax.grad(total)(params, True), jax.grad(total)(params, False))


def test_second_order_reverse_mode(x64):
    cell, params, xs, _ = _setup("gru")

    def loss(params, fused):
        return jnp.sum(sj.unroll_batch(cell, params, xs, fused=fused)[1] ** 2)

    def grad_norm(params, fused):
        g = jax.grad(loss)(params, fused)
        return sum(jnp.sum(l ** 2) for l in jax.tree_util.tree_leaves(g))

    _assert_trees_close(jax.grad(grad_norm)(params, True), jax.grad(grad_norm)(params, False))


def test_forward_mode_needs_fused_false(x64):
    cell, params, xs, _ = _setup("lstm")
    f = lambda xs, fused: sj.unroll_batch(cell, params, xs, fused=fused)[1]
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: f(x, True), (xs,), (xs,))
    jvp = jax.jvp(lambda x: f(x, False), (xs,), (xs,))[1]
    # the tangent of the plain scan equals the fused gradient's transpose action
    _, vjp = jax.vjp(lambda x: f(x, True), xs)
    probe = jax.random.normal(jax.random.PRNGKey(3), jvp.shape, jnp.float64)
    np.testing.assert_allclose(float(jnp.sum(jvp * probe)), float(jnp.sum(vjp(probe)[0] * xs)),
                               rtol=1e-10)


def test_fused_backward_loop_has_one_matmul():
    """The point of the fused pass: the backward loop multiplies by W_h only; the
    weight and input gradients are formed outside it. The plain scan's transpose has
    a matmul per step for each of dW_h, dW_i, dx and dh."""
    cell = sj.lstm(H)
    params = cell.init(jax.random.PRNGKey(0), I)
    xs = jnp.ones((B, T, I))

    def grad(fused):
        return jax.grad(lambda p, x: jnp.sum(sj.unroll_batch(cell, p, x, fused=fused,
                                                             hoist=False)[1]),
                        argnums=(0, 1))

    fused = scan_dots(grad(True), params, xs)
    plain = scan_dots(grad(False), params, xs)
    assert sorted(fused) == [(False, 2), (True, 1)]  # forward: x W_i and h W_h
    assert max(dots for reverse, dots in plain if reverse) >= 3


def test_default_fused_is_chosen_per_batch_size():
    """``fused=None`` is the measured per-backend rule: on CPU the fused pass up to
    B = 63, JAX's scan transpose above; one sequence always fused."""
    cell = sj.lstm(H)
    params = cell.init(jax.random.PRNGKey(0), I)

    def reverse_dots(batch):
        xs = jnp.ones((batch, T, I))
        fn = jax.grad(lambda p, x: jnp.sum(sj.unroll_batch(cell, p, x, hoist=False)[1]))
        return max(d for reverse, d in scan_dots(fn, params, xs) if reverse)

    assert sj.default_fused(1)
    if jax.default_backend() == "cpu":
        assert sj.default_fused(63) and not sj.default_fused(64)
        assert reverse_dots(63) == 1 and reverse_dots(64) >= 3
        # a 16-bit compute dtype: fused at every batch measured (mixed_precision.md)
        assert sj.default_fused(64, compute_dtype=jnp.bfloat16)
        assert not sj.default_fused(64, compute_dtype=jnp.float32)
        mixed = sj.lstm(H, dtype=jnp.bfloat16)
        fn = jax.grad(lambda p, x: jnp.sum(sj.unroll_batch(mixed, p, x, hoist=False)[1]))
        assert max(d for r, d in scan_dots(fn, params, jnp.ones((64, T, I)))
                   if r) == 1
