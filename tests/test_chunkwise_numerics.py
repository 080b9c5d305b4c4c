"""The chunkwise form of the matrix-state cells is as accurate as their step form.

Every error here is measured against a float64 step-form reference on the same
(float32) params and inputs, as ``max|a - b| / max|b|`` per array. The bound: the
chunkwise float32 error of the outputs, of every leaf of the final state and of the
gradient of every param leaf and of the inputs is at most ``max(1e-5, 10 x the step
form's float32 error)``, with default init and with strong decay (log-decay per step
between about -45 and -2; trained Mamba-2 / Gated DeltaNet heads and mLSTM forget gates
reach it). ``python benchmarks/chunkwise.py accuracy`` measures the same up to T = 4096
(docs/bench/chunkwise.md).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax.chunkwise import _segsum

MATRIX_CELLS = ("mlstm", "delta_net", "gated_delta_net", "mamba2")


def _cell(name, dtype=jnp.float32):
    return getattr(seqjax, name)(32, num_heads=2, param_dtype=dtype)


def _strong(name, params, key):
    """Params whose log-decay per step lies between about -45 and -2."""
    k1, k2 = jax.random.split(key)
    if name in ("mamba2", "gated_delta_net"):  # -exp(a_log) * softplus(x w + b), b = 1
        heads = params.a_log.shape[0]
        a_log = jnp.log(jax.random.uniform(k1, (heads,), jnp.float32, 3.0, 20.0))
        field = "b_delta" if name == "mamba2" else "b_alpha"
        return params._replace(a_log=a_log, **{field: jnp.ones_like(getattr(params, field))})
    if name == "mlstm":  # log_sigmoid(x w_f + b_f) with b_f = -25, and strong input gates
        size = params.w_f.shape[0]
        return params._replace(
            b_f=jnp.full_like(params.b_f, -25.0),
            w_f=10.0 / np.sqrt(size) * jax.random.normal(k1, params.w_f.shape),
            w_i=3.0 / np.sqrt(size) * jax.random.normal(k2, params.w_i.shape))
    return params  # delta_net has no decay: its inputs are scaled instead


def _error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _run(cell, params, xs, weights, **options):
    """Outputs, final state and the gradient of a random linear functional of both."""
    r_y, r_s = weights

    def loss(p, x):
        final, ys = seqjax.unroll(cell, p, x, **options)
        leaves = jax.tree_util.tree_leaves(final)
        total = jnp.sum(ys * r_y.astype(ys.dtype))
        for leaf, r in zip(leaves, r_s):
            total = total + jnp.sum(leaf * r.astype(leaf.dtype))
        return total, (final, ys)

    grads, (final, ys) = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(params, xs)
    return ys, jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(grads)


def _errors(name, params, xs, **chunk_options):
    """``{what: (step error, chunkwise error)}`` against the float64 step form."""
    cell = _cell(name)
    state = jax.tree_util.tree_leaves(cell.initial_state(params))
    keys = jax.random.split(jax.random.PRNGKey(7), 1 + len(state))
    weights = (jax.random.normal(keys[0], (xs.shape[0], 32)),
               [jax.random.normal(k, s.shape) for k, s in zip(keys[1:], state)])
    step = _run(cell, params, xs, weights, chunkwise=False)
    chunked = _run(cell, params, xs, weights, chunkwise=True, **chunk_options)
    with jax.enable_x64(True):
        to64 = lambda a: jnp.asarray(np.asarray(a, np.float64))  # noqa: E731
        reference = _run(_cell(name, jnp.float64), jax.tree_util.tree_map(to64, params),
                         to64(xs), jax.tree_util.tree_map(to64, weights), chunkwise=False)
        reference = jax.tree_util.tree_map(np.asarray, reference)
    names = ["outputs"] + [f"state[{i}]" for i in range(len(state))] + [
        f"d {field}" for field in type(params)._fields] + ["d xs"]
    flat = lambda run: [run[0]] + list(run[1]) + list(run[2])  # noqa: E731
    return {n: (_error(s, r), _error(c, r))
            for n, s, c, r in zip(names, flat(step), flat(chunked), flat(reference))}


def _within_bound(errors):
    return {what: (step, chunk) for what, (step, chunk) in errors.items()
            if not chunk <= max(1e-5, 10 * step)}


def test_segment_sums_are_exact():
    """Every entry summed from its own segment: the diagonal is exactly 0 and each entry
    is accurate to its own magnitude, also for strong decays; -inf (a decay of 0) gives
    -inf, never NaN; the gradient of sum(exp(segsum)) matches float64. Chunks up to
    64 steps take the matmul form, longer ones (100) the two-level cumulative sums."""
    rng = np.random.default_rng(0)
    for L in (5, 8, 32, 37, 64, 100):
        a = rng.uniform(-45.0, -5.0, (3, L)).astype(np.float32)
        seg = np.asarray(_segsum(jnp.asarray(a)))
        reference = np.full((3, L, L), -np.inf)
        for r in range(L):
            for j in range(r + 1):
                reference[:, r, j] = a[:, j + 1:r + 1].astype(np.float64).sum(-1)
        finite = np.isfinite(reference)
        assert np.all(np.diagonal(seg, axis1=1, axis2=2) == 0.0)
        assert np.all(seg[~finite] == -np.inf)
        relative = np.abs(seg[finite] - reference[finite]) / np.maximum(np.abs(reference[finite]),
                                                                          1e-30)
        assert relative.max() < 1e-6, (L, relative.max())

    for L in (32, 100):
        a = rng.uniform(-3.0, -0.01, (2, L)).astype(np.float32)  # where exp(seg) matters
        grad32 = np.asarray(jax.grad(lambda x: jnp.sum(jnp.exp(_segsum(x))))(jnp.asarray(a)))
        with jax.enable_x64(True):
            grad64 = np.asarray(jax.grad(lambda x: jnp.sum(jnp.exp(_segsum(x))))(
                jnp.asarray(a, jnp.float64)))
        assert _error(grad32, grad64) < 1e-6, L

    for L in (12, 100):
        gates = jnp.array([[-1.0, -jnp.inf, -2.0, -3.0] + [-1.0] * (L - 4)])
        seg = np.asarray(_segsum(gates))
        assert not np.isnan(seg).any()
        assert seg[0, 3, 1] == -3.0 - 2.0 and seg[0, 2, 0] == -np.inf
        assert seg[0, L - 1, 0] == -np.inf and seg[0, L - 1, 1] == -(L - 4) - 5.0


@pytest.mark.parametrize("regime", ["init", "strong"])
@pytest.mark.parametrize("name", MATRIX_CELLS)
def test_chunkwise_float32_error_is_within_the_step_forms(name, regime):
    """Across chunk boundaries (T = 150, chunks of 32 and an uneven last one; T = 37 in
    chunks of 16 for the strong regime too), outputs, final state and all gradients."""
    cell = _cell(name)
    params = cell.init(jax.random.PRNGKey(0), 32)
    if regime == "strong":
        params = _strong(name, params, jax.random.PRNGKey(1))
    scale = 4.0 if (name == "delta_net" and regime == "strong") else 1.0
    cases = [(150, 32)] + ([(37, 16)] if regime == "strong" else [])
    for time, chunk in cases:
        xs = scale * jax.random.normal(jax.random.PRNGKey(2), (time, 32), jnp.float32)
        errors = _errors(name, params, xs, chunk_size=chunk)
        assert _within_bound(errors) == {}, (time, errors)


@pytest.mark.parametrize("name,field,value", [
    ("mamba2", "a_log", 100.0), ("gated_delta_net", "a_log", 100.0),
    ("mlstm", "b_f", -np.inf)])
def test_a_decay_of_exactly_zero_gives_the_step_forms_answer(name, field, value):
    """``exp(a_log) = inf`` (mamba2, gated_delta_net) or a forget gate at -inf (mlstm):
    the state forgets everything at every step. The chunkwise form used to return NaN
    everywhere (inf - inf in the segment sums)."""
    cell = _cell(name)
    params = cell.init(jax.random.PRNGKey(0), 32)
    params = params._replace(**{field: jnp.full_like(getattr(params, field), value)})
    xs = jax.random.normal(jax.random.PRNGKey(2), (70, 32), jnp.float32)
    step_final, step_ys = seqjax.unroll(cell, params, xs, chunkwise=False)
    final, ys = seqjax.unroll(cell, params, xs, chunkwise=True)
    assert np.all(np.isfinite(np.asarray(ys)))
    np.testing.assert_allclose(ys, step_ys, rtol=2e-5, atol=2e-5 * float(jnp.abs(step_ys).max()))
    for a, b in zip(jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(step_final)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name,field,value", [("mamba2", "a_log", 20.0),
                                              ("mlstm", "b_f", -1e4)])
def test_near_zero_decay_is_as_accurate_as_the_step_form(name, field, value):
    """Decays of about exp(-5e8) and exp(-1e4) per step: the old segment sums were off
    by 1.9 and 0.08 relative here."""
    cell = _cell(name)
    params = cell.init(jax.random.PRNGKey(0), 32)
    params = params._replace(**{field: jnp.full_like(getattr(params, field), value)})
    xs = jax.random.normal(jax.random.PRNGKey(2), (70, 32), jnp.float32)
    errors = _errors(name, params, xs)
    forward = {k: v for k, v in errors.items() if not k.startswith("d ")}
    assert _within_bound(forward) == {}, errors


@pytest.mark.parametrize("name", MATRIX_CELLS)
def test_a_nan_at_step_t_reaches_no_output_before_t(name):
    """A NaN input at a valid step t, in the middle of a chunk: outputs before t are the
    clean run's, and from t on the chunkwise form is NaN where the step form is."""
    cell = _cell(name)
    params = cell.init(jax.random.PRNGKey(0), 32)
    xs = jax.random.normal(jax.random.PRNGKey(2), (80, 32), jnp.float32)
    t = 41  # chunk 2 (of 32 steps), position 9
    bad = xs.at[t].set(jnp.nan)
    _, clean = seqjax.unroll(cell, params, xs, chunkwise=True)
    final, ys = seqjax.unroll(cell, params, bad, chunkwise=True)
    step_final, step_ys = seqjax.unroll(cell, params, bad, chunkwise=False)
    ys, step_ys = np.asarray(ys), np.asarray(step_ys)
    np.testing.assert_array_equal(ys[:t], np.asarray(clean)[:t])
    assert np.isnan(step_ys[t:]).any()
    np.testing.assert_array_equal(np.isnan(ys[t:]), np.isnan(step_ys[t:]))
    for a, b in zip(jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(step_final)):
        np.testing.assert_array_equal(np.isnan(np.asarray(a)), np.isnan(np.asarray(b)))


@pytest.mark.parametrize("name", ["mamba2", "delta_net"])
def test_a_nan_in_a_padded_step_changes_nothing(name):
    """What a padded step (beyond ``length``) holds never reaches anything."""
    cell = _cell(name)
    params = cell.init(jax.random.PRNGKey(0), 32)
    xs = jax.random.normal(jax.random.PRNGKey(2), (50, 32), jnp.float32)
    final, ys = seqjax.unroll(cell, params, xs, length=30, chunkwise=True)
    final_bad, ys_bad = seqjax.unroll(cell, params, xs.at[40].set(jnp.nan), length=30,
                                      chunkwise=True)
    np.testing.assert_array_equal(ys, ys_bad)
    for a, b in zip(jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(final_bad)):
        np.testing.assert_array_equal(a, b)
