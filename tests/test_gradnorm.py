"""The ``seqjax gradnorm`` runner: a tiny end-to-end run, checked against the same
experiment recomputed with plain ``jax.grad`` through ``seqjax.unroll``, a plain optax
loop and the (separately tested) diagnostics."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import seqjax
from seqjax import cli, diagnostics, gradnorm, tasks, train

RTOL = 1e-6
ARGS = dict(cells=("rnn", "lru"), lengths=(4,), seeds=2, steps=2, hidden=4, batch=3, lr=0.05)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("gradnorm")
    argv = ["--cells", ",".join(ARGS["cells"]), "--lengths", ",".join(map(str, ARGS["lengths"])),
            "--seeds", str(ARGS["seeds"]), "--steps", str(ARGS["steps"]),
            "--hidden", str(ARGS["hidden"]), "--batch", str(ARGS["batch"]),
            "--lr", str(ARGS["lr"]), "--no-progress", "--out", str(out)]
    assert cli.main(["gradnorm"] + argv) == 0
    return out, json.loads((out / "gradnorm.json").read_text())


def _reference(cell_name, T, seed):
    """The experiment of one seed, recomputed: plain unroll, plain optax loop."""
    make, encoder = gradnorm.CELLS[cell_name]
    cell, task, H = make(ARGS["hidden"]), tasks.adding_problem(T), ARGS["hidden"]
    key = jax.random.PRNGKey(seed)
    init_key, data_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    k_e, k_c, k_h = jax.random.split(init_key, 3)
    lecun = jax.nn.initializers.lecun_normal()
    enc = (lecun(k_e, (2, H), jnp.float32), jnp.zeros((H,), jnp.float32)) if encoder else None
    params = (enc, cell.init(k_c, H if encoder else 2),
              (lecun(k_h, (H, 1), jnp.float32), jnp.zeros((1,), jnp.float32)))
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)

    def encode(p, x):
        x = x.astype(jnp.float64)
        return x if p[0] is None else x @ p[0][0] + p[0][1][None]

    def loss(p, ex):
        def one(x, n, target):
            _, ys = seqjax.unroll(cell, p[1], encode(p, x), length=n)
            return (ys[n - 1] @ p[2][0] + p[2][1])[0] - target
        return jnp.mean(jax.vmap(one)(ex.inputs, ex.length, ex.targets.astype(jnp.float64)) ** 2)

    def norms(p, ex):
        xs = jax.vmap(lambda x: encode(p, x))(ex.inputs)
        head = lambda ys, n: (ys[n - 1] @ p[2][0] + p[2][1])[0]
        target = ex.targets.astype(jnp.float64)
        fn = lambda finals, ys: jnp.mean((jax.vmap(head)(ys, ex.length) - target) ** 2)
        return diagnostics.batch_state_gradient_norms(cell, p[1], xs, fn, lengths=ex.length)

    opt = train.default_optimizer(ARGS["lr"])

    @jax.jit
    def step(params, state, i):
        ex = tasks.sample_batch(task, jax.random.fold_in(data_key, i), ARGS["batch"])
        value, g = jax.value_and_grad(loss)(params, ex)
        with jax.numpy_dtype_promotion("standard"):  # optax's Adam is not strict-clean
            updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state, value, g, norms(params, ex)

    state = opt.init(params)
    out = {}
    for i in range(ARGS["steps"] + 1):
        new_params, state, value, g, n = step(params, state, i)
        if i in (0, ARGS["steps"]):
            out["init" if i == 0 else "trained"] = (value, g, n, params)
        params = new_params
    return out


def test_rows_equal_the_experiment_recomputed(x64, result):
    """The LRU (input projection, complex state), seed 1, at initialisation and after
    two steps. The runner draws the float32 initial params under jit(vmap), the
    reference eagerly: equal up to float32 rounding, which training carries along."""
    rows = result[1]["rows"]
    assert len(rows) == 2 * 1 * 2 * 2  # cells x lengths x seeds x phases
    for phase, (value, g, norms, params) in _reference("lru", 4, 1).items():
        (row,) = [r for r in rows if (r["cell"], r["seed"], r["phase"]) == ("lru", 1, phase)]
        assert row["T"] == 4 and row["step"] == (0 if phase == "init" else ARGS["steps"])
        assert row["baseline"] == pytest.approx(1 / 6)
        np.testing.assert_allclose(row["loss"], value, rtol=RTOL)
        np.testing.assert_allclose(row["grad_h"], norms.states, rtol=RTOL)
        np.testing.assert_allclose(row["grad_params"], optax.global_norm(g[1]), rtol=RTOL)
        np.testing.assert_allclose(row["grad_model"], optax.global_norm(g), rtol=RTOL)
        spec = diagnostics.recurrent_spectrum(params[1])["lambda"]
        np.testing.assert_allclose(row["spectrum"]["lambda"]["max_singular_value"],
                                   spec.max_singular_value, rtol=RTOL)


def test_outputs_and_figures_are_written(result):
    out, data = result
    meta = data["meta"]
    assert meta["steps"] == 2 and meta["dtype"] == "float64" and meta["wall_s"] > 0
    assert meta["versions"]["jax"] == jax.__version__
    for name in ("gradnorm.csv", "summary.csv", "loss.csv"):
        assert (out / name).stat().st_size > 0
    lines = (out / "gradnorm.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 2 * 2 * 5  # header + cells x seeds x phases x (T + 1)
    for name in ("gradnorm_by_step.png", "gradnorm_by_length.png", "loss.png"):
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 200_000
    curves = data["curves"]
    assert all(len(c["loss"]) == ARGS["steps"] + 1 for c in curves)
    # the summary's decay is the one fitted to the seed-averaged curve
    row = next(r for r in data["summary"] if r["cell"] == "rnn" and r["phase"] == "init")
    curves = np.array([r["grad_h"] for r in data["rows"] if (r["cell"], r["phase"])
                       == ("rnn", "init")])
    mean = np.exp(np.log(curves).mean(0))
    slope = np.polyfit(np.arange(5), np.log(mean), 1)[0]
    assert row["decay_per_step"] == pytest.approx(np.exp(-slope), rel=1e-9)


def test_decay_per_step_recovers_a_geometric_sequence():
    t = np.arange(50)
    norms = 3.0 * 0.9 ** (49 - t)
    assert gradnorm.decay_per_step(norms) == pytest.approx(0.9, rel=1e-12)
    norms[:10] = 0.0  # underflowed entries are left out
    assert gradnorm.decay_per_step(norms) == pytest.approx(0.9, rel=1e-12)
    assert gradnorm.decay_per_step(np.zeros(5)) is None


def test_bad_arguments_exit_with_a_message(capsys):
    with pytest.raises(SystemExit) as e:
        gradnorm.main(["--cells", "rnn,transformer"])
    assert e.value.code == 2 and "transformer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gradnorm.main(["--task", "adding1997", "--lengths", "10"])
    assert "min_length must be >= 20" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gradnorm.main(["--seeds", "0"])
    assert "argument --seeds: expected a positive integer (>= 1), got '0'" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit):
        gradnorm.main(["--lengths", "10,x"])
    assert "argument --lengths" in capsys.readouterr().err


def test_language_model_gradients_per_layer_and_position(tmp_path, capsys):
    """``seqjax gradnorm lm``: the norms equal ``hidden_gradients`` recomputed by hand, the
    separator of the copy task shows (nothing before it is scored, so the top layer's
    gradient there is zero), and the files are written."""
    out = tmp_path / "lm"
    assert cli.main(["gradnorm", "lm", "--blocks", "lstm,attention", "--d-model", "16",
                     "--length", "12", "--vocab", "6", "--steps", "3", "--batch", "4",
                     "--out", str(out), "--no-progress", "--no-plots"]) == 0
    data = json.loads((out / "gradnorm_lm.json").read_text())
    init = np.asarray(data["norms"]["init"])
    assert init.shape == (3, 12) and np.all(np.isfinite(init))
    k = (12 - 1) // 2
    assert np.all(init[-1, :k] == 0) and np.all(init[-1, k:2 * k] > 0)
    assert np.all(init[0, :2 * k] > 0)  # the embedding of every symbol is read
    model = seqjax.lm.language_model(vocab_size=6, d_model=16, blocks=["lstm", "attention"],
                                     max_length=16)
    tokens, mask = gradnorm.copy_tokens(jax.random.PRNGKey(1), 4, 12, 6)
    _, norms = gradnorm.lm_gradients(model, model.init(jax.random.PRNGKey(0)), tokens, mask)
    np.testing.assert_allclose(norms, init, rtol=1e-5, atol=1e-12)
    assert "wrote" in capsys.readouterr().out
