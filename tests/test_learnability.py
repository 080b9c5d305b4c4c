"""Learnability against length, on tiny sizes: one seed's run recomputed with a plain
optax loop over ``seqjax.unroll``, the gradient norms with the diagnostics, and the
command's cache (a second run computes only what is missing)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import seqjax
from seqjax import diagnostics, gradnorm, tasks, train

ARGV = ["learnability", "--lengths", "4", "--steps", "3", "--log-every", "2", "--seeds", "2",
        "--hidden", "4", "--batch", "3", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("learnability")
    assert gradnorm.main(ARGV + ["--cells", "rnn", "--no-plots", "--out", str(out)]) == 0
    first = json.loads((out / "learnability.json").read_text())
    assert gradnorm.main(ARGV + ["--cells", "rnn,min_gru", "--out", str(out)]) == 0
    second = json.loads((out / "learnability.json").read_text())
    return out, first, second


def test_a_seed_equals_a_plain_optax_loop(runs):
    """Seed 1 of the rnn: initial and final held-out loss after 3 Adam steps (the
    second block of 2 steps runs one step past the budget, which must be void)."""
    record = next(r for r in runs[1]["records"] if r["seed"] == 1)
    cell, task = seqjax.rnn(4), tasks.adding_problem(4)
    root = jax.random.PRNGKey(1)

    @jax.jit
    def setup(root):
        k_e, k_c, k_h = jax.random.split(jax.random.fold_in(root, 0), 3)
        lecun = jax.nn.initializers.lecun_normal()
        params = (cell.init(k_c, 2), lecun(k_h, (4, 1), jnp.float32),
                  jnp.zeros((1,), jnp.float32))
        return params, tasks.sample_batch(task, jax.random.fold_in(root, 2), gradnorm.LEARN_EVAL)

    params, held_out = setup(root)

    def loss(p, ex):
        def one(x, target):
            _, ys = seqjax.unroll(cell, p[0], x)
            return ((ys[-1] @ p[1] + p[2])[0] - target) ** 2
        return jnp.mean(jax.vmap(one)(ex.inputs, ex.targets))

    opt = train.default_optimizer(1e-3)

    @jax.jit
    def step(p, state, i):
        ex = tasks.sample_batch(task, jax.random.fold_in(jax.random.fold_in(root, 1), i), 3)
        g = jax.grad(loss)(p, ex)
        with jax.numpy_dtype_promotion("standard"):
            updates, state = opt.update(g, state, p)
        return optax.apply_updates(p, updates), state

    evaluate = jax.jit(loss)
    assert record["loss_init"] == pytest.approx(float(evaluate(params, held_out)), rel=1e-5)
    with jax.numpy_dtype_promotion("standard"):
        state = jax.jit(opt.init)(params)
    for i in range(3):
        params, state = step(params, state, i)
    assert record["loss_final"] == pytest.approx(float(evaluate(params, held_out)), rel=1e-4)
    assert record["ratio"] == pytest.approx(record["loss_final"] * 6, rel=1e-9)
    assert len(record["curve"]) == 2 and record["solved"] is (record["ratio"] < 0.1)


def test_gradient_norms_at_init_equal_the_diagnostics(runs, x64):
    record = next(r for r in runs[2]["records"] if (r["cell"], r["seed"]) == ("min_gru", 0))
    cell, task = seqjax.min_gru(4), tasks.adding_problem(4)

    @jax.jit
    def norms(root):
        k_e, k_c, k_h = jax.random.split(jax.random.fold_in(root, 0), 3)
        wide = lambda a: a.astype(jnp.float64)
        p_cell = jax.tree_util.tree_map(wide, cell.init(k_c, 2))
        head = wide(jax.nn.initializers.lecun_normal()(k_h, (4, 1), jnp.float32))
        ex = tasks.sample_batch(task, jax.random.fold_in(root, 2), gradnorm.LEARN_EVAL)
        ex = jax.tree_util.tree_map(lambda a: a[:gradnorm.LEARN_NORM_EXAMPLES], ex)
        target = ex.targets.astype(jnp.float64)
        fn = lambda finals, ys: jnp.mean((ys[:, -1] @ head[:, 0] - target) ** 2)
        return diagnostics.batch_state_gradient_norms(
            cell, p_cell, ex.inputs.astype(jnp.float64), fn).states

    want = norms(jax.random.PRNGKey(0))
    assert record["grad_h0"] == pytest.approx(float(want[0]), rel=1e-9)
    np.testing.assert_allclose(record["grad_h"], want, rtol=1e-5)  # kept to 6 digits
    assert len(record["grad_h"]) == 5


def test_the_cache_keeps_results_and_computes_only_the_missing(runs, capsys):
    out, first, second = runs
    assert [(r["cell"], r["seed"]) for r in second["records"]] == [
        ("rnn", 0), ("rnn", 1), ("min_gru", 0), ("min_gru", 1)]
    assert second["records"][:2] == first["records"]  # rnn's records reused as they were
    assert [run["computed"] for run in second["runs"]] == [
        [["adding", "rnn", 4, [0, 1]]], [["adding", "min_gru", 4, [0, 1]]]]
    assert second["runs"][0]["command"] == "seqjax gradnorm " + " ".join(
        ARGV + ["--cells", "rnn", "--no-plots", "--out", str(out)])
    lines = (out / "learnability.csv").read_text().splitlines()
    assert len(lines) == 1 + 4 and lines[0].startswith("task,cell,T,time,seed")
    for name in ("learnability.png", "learnability_curves.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    # another configuration in the same file is refused, not mixed in
    with pytest.raises(SystemExit) as e:
        gradnorm.main(ARGV[:4] + ["4"] + ARGV[5:] + ["--cells", "rnn", "--out", str(out)])
    assert e.value.code == 2 and "another configuration" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--lengths", "1"], "argument --lengths: expected a comma list of integers >= 2"),
    (["--cells", "rnn,transformer"], "unknown 'transformer'"),
    (["--tasks", "adding,sorting"], "unknown 'sorting'"),
    (["--steps", "-3"], "argument --steps: expected a positive integer"),
])
def test_bad_values_exit_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        gradnorm.main(["learnability"] + argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[0].startswith("usage:") and message in err[-1]


def test_help_names_the_three_experiments(capsys):
    with pytest.raises(SystemExit):
        gradnorm.main(["--help"])
    text = capsys.readouterr().out
    for word in ("memory", "propagation", "learnability"):
        assert f"  {word} " in text
