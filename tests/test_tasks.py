"""Task generators: the papers' constructions checked example by example with numpy, and
the stated baselines against the best memoryless predictor estimated from large samples."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import tasks


def _batch(task, n):
    """A large batch from key 0, after checking that the jitted generator is seeded:
    the same key gives the same batch, another key another one, and example ``i`` is
    ``task.sample`` of the ``i``-th split key."""
    sampler = jax.jit(lambda k: tasks.sample_batch(task, k, n))
    batch = jax.device_get(sampler(jax.random.PRNGKey(0)))
    again = jax.device_get(sampler(jax.random.PRNGKey(0)))
    other = jax.device_get(sampler(jax.random.PRNGKey(1)))
    for a, b in zip(batch, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(batch.inputs, other.inputs)
    one = jax.jit(task.sample)(jax.random.split(jax.random.PRNGKey(0), n)[5])
    for a, b in zip(one, batch):
        np.testing.assert_array_equal(a, b[5])
    assert batch.inputs.dtype == np.float32 and batch.length.dtype == np.int32
    assert batch.inputs.shape == (n, task.time, task.input_size)
    return batch


def _mean_loss(task, outputs, batch):
    return float(jnp.mean(jax.vmap(task.loss)(outputs, batch)))


def test_adding_problem_construction_and_baseline():
    T, n = 40, 20000
    task = tasks.adding_problem(T)
    b = _batch(task, n)
    values, marker = b.inputs[..., 0], b.inputs[..., 1]
    assert values.min() >= 0 and values.max() <= 1
    assert np.all(marker[:, :T // 2].sum(1) == 1) and np.all(marker[:, T // 2:].sum(1) == 1)
    assert set(np.unique(marker)) == {0.0, 1.0}
    np.testing.assert_allclose(b.targets, (values * marker).sum(1), rtol=1e-6)
    assert np.all(b.length == T)
    # both marker positions uniform over their half (chi-square-free check: all used)
    assert len(np.unique(marker[:, :T // 2].argmax(1))) == T // 2
    assert len(np.unique(marker[:, T // 2:].argmax(1))) == T - T // 2
    # the best constant is the mean target, its error the target variance: 1/6
    assert abs(b.targets.mean() - 1.0) < 0.01
    assert task.baseline == pytest.approx(1 / 6)
    assert np.mean((b.targets - 1.0) ** 2) == pytest.approx(1 / 6, abs=0.005)
    # the task's loss reads the last output: predicting 1 there scores the baseline
    outputs = jnp.zeros((n, T, 1), jnp.float32).at[:, -1, 0].set(1.0)
    assert _mean_loss(task, outputs, b) == pytest.approx(np.mean((b.targets - 1.0) ** 2),
                                                         rel=1e-5)


def test_hochreiter_adding_problem_construction_and_baseline():
    T, n = 20, 50000
    task = tasks.hochreiter_adding_problem(T)
    b = _batch(task, n)
    assert task.time == 22 and task.input_size == 2
    values, marker = b.inputs[..., 0], b.inputs[..., 1]
    assert b.length.min() == T and b.length.max() == T + T // 10
    steps = np.arange(task.time)
    valid = steps[None] < b.length[:, None]
    assert np.all(b.inputs[~valid] == 0)
    assert np.all(np.abs(values) <= 1)
    marked = marker == 1
    assert np.all(marked.sum(1) == 2)
    lo = marked.argmax(1)
    hi = task.time - 1 - marked[:, ::-1].argmax(1)
    # one marker among the first ten pairs, the other among the first T/2 pairs
    assert lo.max() <= 9 and hi.max() < T // 2
    # -1 on the first and the last valid pair unless marked, 0 elsewhere
    last = b.length - 1
    assert np.all(marker[np.arange(n), last] == -1)
    assert np.all(marker[lo != 0, 0] == -1)
    others = valid & ~marked
    others[np.arange(n), last] = False
    others[:, 0] = False
    assert np.all(marker[others] == 0)
    # the first pair is marked with probability 1/10 (as X1) + 9/10 * 1/(T/2 - 1) (as X2);
    # only as X1 is its value set to zero, so zero-valued marked first pairs occur 1/10
    assert np.mean(lo == 0) == pytest.approx(0.1 + 0.9 / (T // 2 - 1), abs=0.01)
    assert np.mean((lo == 0) & (values[:, 0] == 0)) == pytest.approx(0.1, abs=0.01)
    np.testing.assert_allclose(b.targets, 0.5 + (values * marked).sum(1) / 4, rtol=1e-6)
    # baseline: constant 0.5 -> 19/480 (not 1/24: X1 vanishes one time in ten)
    assert task.baseline == pytest.approx(19 / 480)
    assert np.mean((b.targets - 0.5) ** 2) == pytest.approx(19 / 480, abs=4e-4)
    # the loss reads the output at step length - 1
    outputs = jnp.where(jnp.arange(task.time)[None, :, None] == jnp.asarray(last)[:, None, None],
                        jnp.float32(0.5), jnp.float32(7.0)) * jnp.ones((n, task.time, 1),
                                                                        jnp.float32)
    assert _mean_loss(task, outputs, b) == pytest.approx(np.mean((b.targets - 0.5) ** 2),
                                                         rel=1e-5)


def test_copy_memory_construction_and_baseline():
    T, n = 5, 20000
    task = tasks.copy_memory(T)
    b = _batch(task, n)
    assert task.time == T + 20 and task.input_size == task.output_size == 10
    ids = b.inputs.argmax(-1)
    np.testing.assert_array_equal(b.inputs.sum(-1), 1.0)  # one-hot
    data = ids[:, :10]
    assert data.max() <= 7
    np.testing.assert_array_equal(ids[:, 10:T + 9], 8)  # T - 1 blanks
    np.testing.assert_array_equal(ids[:, T + 9], 9)  # delimiter
    np.testing.assert_array_equal(ids[:, T + 10:], 8)
    np.testing.assert_array_equal(b.targets[:, :T + 10], 8)
    np.testing.assert_array_equal(b.targets[:, T + 10:], data)
    # the best memoryless predictor: each step's empirical target distribution
    entropy = 0.0
    for t in range(task.time):
        p = np.bincount(b.targets[:, t], minlength=10) / n
        entropy -= np.sum(p[p > 0] * np.log(p[p > 0]))
    assert task.baseline == pytest.approx(10 * math.log(8) / (T + 20))
    assert entropy / task.time == pytest.approx(task.baseline, rel=0.01)
    # the loss is the cross-entropy averaged over every step (numpy log-softmax)
    logits = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (8, task.time, 10)))
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = b.targets[:8]
    want = -np.mean(np.take_along_axis(log_p, targets[..., None], -1))
    small = jax.tree_util.tree_map(lambda x: x[:8], b)
    assert _mean_loss(task, jnp.asarray(logits), small) == pytest.approx(want, rel=1e-5)
    # the memory loss: the same cross-entropy over the recall window only
    recall = -np.mean(np.take_along_axis(log_p, targets[..., None], -1)[:, T + 10:])
    got = float(jnp.mean(jax.vmap(task.memory_loss)(jnp.asarray(logits), small)))
    assert got == pytest.approx(recall, rel=1e-5)
    assert tasks.adding_problem(4).memory_loss is None  # its loss is all memory


def test_ar1_inputs_are_stationary_with_autocorrelation_rho():
    """Unit variance at every step (from the first), E[x_t x_(t+k)] = rho^k, independent
    features, and pieces joined with ``previous`` continue the same process; each
    checked within 5 standard errors of 20,000 sequences."""
    rho, n, T = 0.9, 20000, 30
    draw = jax.jit(jax.vmap(lambda k: tasks.ar1_inputs(k, T, 2, rho)))
    x = np.asarray(draw(jax.random.split(jax.random.PRNGKey(0), n)), np.float64)
    se = 5 * np.sqrt(2 / n)  # of a variance / a correlation near 1, generously
    assert abs(x[:, 0].var() - 1) < se and abs(x[:, -1].var() - 1) < se
    for k in (1, 5, 20):
        assert abs(np.mean(x[:, 3] * x[:, 3 + k]) - rho ** k) < se
    assert abs(np.mean(x[:, 7, 0] * x[:, 7, 1])) < 5 / np.sqrt(n)
    more = jax.jit(jax.vmap(lambda k, prev: tasks.ar1_inputs(k, 5, 2, rho, previous=prev)))
    y = np.asarray(more(jax.random.split(jax.random.PRNGKey(1), n), x[:, -1]), np.float64)
    assert abs(np.mean(x[:, -1] * y[:, 0]) - rho) < se and abs(y[:, 0].var() - 1) < se
    with pytest.raises(ValueError, match="rho must be in"):
        tasks.ar1_inputs(jax.random.PRNGKey(0), 4, 1, 1.0)


def test_bad_configuration_and_outputs_are_refused():
    with pytest.raises(ValueError, match="length must be >= 2"):
        tasks.adding_problem(1)
    with pytest.raises(ValueError, match="min_length must be >= 20"):
        tasks.hochreiter_adding_problem(10)
    with pytest.raises(ValueError, match="delay must be a positive int"):
        tasks.copy_memory(0)
    task = tasks.adding_problem(6)
    example = task.sample(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"\[6, 1\]"):
        task.loss(jnp.zeros((6, 2)), example)
    with pytest.raises(ValueError, match="batch_size"):
        tasks.sample_batch(task, jax.random.PRNGKey(0), 0)


# ------------------------------------------------------------------------------ MQAR


def _mqar_batch(task, n, seed=0):
    return jax.vmap(task.sample)(jax.random.split(jax.random.PRNGKey(seed), n))


def test_mqar_has_zoologys_layout():
    """Pairs first (keys from [1, V/2), values from [V/2, V), all distinct), each key
    queried once at an even offset after them, the target its value, only queries
    scored; with random_fill=False the rest is 0, as in Zoology's docstring example."""
    V, T, N = 128, 64, 8
    batch = _mqar_batch(tasks.mqar(V, T, N, random_fill=False), 200)
    tokens, targets, mask = (np.asarray(a) for a in batch)
    for toks, tgts, m in zip(tokens, targets, mask):
        keys, values = toks[0:2 * N:2], toks[1:2 * N:2]
        assert len(set(keys)) == N and len(set(values)) == N
        assert keys.min() >= 1 and keys.max() < V // 2
        assert values.min() >= V // 2 and values.max() < V
        where = np.flatnonzero(m)
        assert len(where) == N and where.min() >= 2 * N and np.all((where - 2 * N) % 2 == 0)
        pairs = dict(zip(keys, values))
        assert sorted(toks[where]) == sorted(keys)  # every key queried once
        assert all(tgts[i] == pairs[toks[i]] for i in where)
        assert np.all(tgts[~m] == 0)
        rest = np.ones(T, bool)
        rest[:2 * N] = False
        rest[where] = False
        assert np.all(toks[rest] == 0)


def test_mqar_query_positions_follow_the_power_law():
    """How often each query slot is used, against numpy's sequential draw without
    replacement with Zoology's probabilities (power_a = 0.01), over 4,000 examples."""
    V, T, N = 256, 64, 8
    space = (T - 2 * N) // 2
    mask = np.asarray(_mqar_batch(tasks.mqar(V, T, N), 4000).mask)
    slots = mask[:, 2 * N::2]  # [examples, space]
    ours = slots.mean(axis=0)
    p = 0.01 * np.arange(1, space + 1) ** (0.01 - 1)
    p = p / p.sum()
    rng = np.random.default_rng(0)
    reference = np.zeros(space)
    for _ in range(4000):
        reference[rng.choice(space, N, replace=False, p=p)] += 1
    reference /= 4000
    assert np.abs(ours - reference).max() < 0.04, (ours, reference)
    assert ours[0] > 0.5 and ours[-1] < ours[0] / 2  # early slots are favoured


def test_mqar_is_seeded_and_scores_only_queries():
    task = tasks.mqar(64, 32, 4)
    a, b = _mqar_batch(task, 3, seed=1), _mqar_batch(task, 3, seed=1)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(np.asarray(a.tokens), np.asarray(_mqar_batch(task, 3, 2).tokens))
    example = jax.tree_util.tree_map(lambda x: x[0], a)
    perfect = jax.nn.one_hot(example.targets, 64) * 50.0  # right at queries, 0 elsewhere
    assert float(task.accuracy(perfect, example)) == 1.0
    assert float(task.loss(perfect, example)) < 1e-6
    assert task.baseline == 0.25
    with pytest.raises(ValueError, match="even"):
        tasks.mqar(64, 31, 4)
    with pytest.raises(ValueError, match="length >= 20"):
        tasks.mqar(64, 16, 5)
