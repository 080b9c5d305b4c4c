"""Signal propagation at initialisation (Zucchet & Orvieto 2024, Figure 5), on tiny
sizes: the complex diagonal RNN against the LRU it differs from only by gamma and the
parametrisation, the initial timescales, the bookkeeping of the gradient groups, and
the command."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax as sj
from seqjax import experiments, gradnorm, tasks


def test_complex_diagonal_is_the_lru_without_gamma(key):
    """With the LRU's lambda and gamma = 1 the two cells compute the same outputs."""
    lru, cell = sj.lru(4, 6), experiments.complex_diagonal(4, 6)

    @jax.jit
    def both(key):
        p = lru.init(key, 4)._replace(gamma_log=jnp.zeros(6))
        lam = jnp.exp(jax.lax.complex(-jnp.exp(p.nu_log), jnp.exp(p.theta_log)))
        q = experiments.ComplexDiagonalParams(lam.real, lam.imag, p.b_re, p.b_im, p.c_re,
                                              p.c_im, p.d)
        xs = jax.random.normal(jax.random.PRNGKey(1), (9, 4))
        return (sj.unroll(lru, p, xs)[1], sj.unroll(cell, q, xs)[1],
                sj.unroll(cell, q, xs, associative=False)[1])

    want, scan, steps = both(key)
    np.testing.assert_allclose(scan, want, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(steps, want, rtol=2e-5, atol=1e-6)


def test_initial_timescales_follow_t(key):
    """|lambda| in [1 - 1/t, 1 - 1/(2t)] for the diagonal RNNs; chrono gate biases
    b ~ log U(t, 2t) for the GRU and LSTM (drawn as in tests/test_chrono.py)."""
    t = 10.0
    models = experiments.PROPAGATION_MODELS
    p = jax.jit(models["complex"].cell(t, 256).init, static_argnums=1)(key, 256)
    modulus = np.hypot(p.lam_re, p.lam_im)
    assert modulus.min() >= 0.9 - 1e-6 and modulus.max() <= 0.95 + 1e-6
    assert modulus.min() < 0.91 and modulus.max() > 0.94  # the whole ring is used
    lru = models["lru"].cell(t, 8)
    assert (lru.name, lru.r_min, lru.r_max) == ("lru", 0.9, 0.95)
    assert models["gru"].cell(t, 8).update_bias == sj.chrono_init(21.0, t_min=10.0)
    assert models["lstm"].cell(t, 8).forget_bias == sj.chrono_init(21.0, t_min=10.0)


def test_statistics_split_every_parameter_once(key):
    """The timescale group and the others partition the gradient: their mean squares,
    weighted by their sizes, give the mean square of the whole gradient computed
    directly with jax.grad; the per-layer h^2 equal a forward recomputed here."""
    width, T, layers = 4, 5, 2
    model = experiments.PROPAGATION_MODELS["lru"]
    cell = model.cell(10.0, width)
    init, forward = experiments.propagation_network(cell, width=width, input_size=3,
                                                    layers=layers)
    params = jax.jit(init)(key)
    us = jax.vmap(lambda k: tasks.ar1_inputs(k, T, 3, 0.9))(jax.random.split(key, 2))
    s = jax.jit(lambda p, u: experiments.propagation_statistics(model, cell, p, forward, u))(
        params, us)
    g = jax.jit(jax.grad(lambda p: jnp.mean(jax.vmap(lambda u: forward(p, u)[0])(us))))(params)
    flat = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g)])
    n_time = sum(x.size for layer in g.layers for x in (layer.cell.nu_log, layer.cell.theta_log))
    total = (s["grad2_timescale_all"] * n_time + s["grad2_other_all"] * (flat.size - n_time))
    np.testing.assert_allclose(total / flat.size, np.mean(flat ** 2), rtol=1e-5)
    timescale = np.concatenate([np.ravel(x) for layer in g.layers
                                for x in (layer.cell.nu_log, layer.cell.theta_log)])
    np.testing.assert_allclose(s["grad2_timescale_all"], np.mean(timescale ** 2), rtol=1e-5)
    # the forward, layer by layer in numpy: x <- GLU(GELU(lru(x))) + x
    run = jax.jit(jax.vmap(lambda p, v: sj.unroll(cell, p, v)[1], in_axes=(None, 0)))
    gelu = lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))
    sigmoid = lambda v: 1 / (1 + np.exp(-v))
    x = np.asarray(us) @ np.asarray(params.encoder.w) + np.asarray(params.encoder.b)
    for i, layer in enumerate(params.layers):
        y = np.asarray(run(layer.cell, x.astype(np.float32)))
        gy = gelu(y)
        w1, b1, w2, b2 = (np.asarray(a) for a in (layer.out1.w, layer.out1.b, layer.out2.w,
                                                   layer.out2.b))
        x = (gy @ w1 + b1) * sigmoid(gy @ w2 + b2) + x
        np.testing.assert_allclose(s["h2"][i], np.mean(x ** 2), rtol=1e-4)
        np.testing.assert_allclose(s["rnn2"][i], np.mean(y ** 2), rtol=1e-4)


def test_command_and_the_complex_models_explosion(tmp_path, capsys):
    """Tiny run of ``seqjax gradnorm propagation``. Even at width 8 the finding shows:
    the complex RNN's outputs and eigenvalue gradients grow with t, the GRU's outputs
    do not."""
    out = tmp_path / "prop"
    assert gradnorm.main(["propagation", "--models", "complex,gru", "--timescales", "1,30",
                          "--width", "8", "--time", "48", "--batch", "2", "--batches", "1",
                          "--input-size", "3", "--layers", "1", "--no-progress",
                          "--out", str(out)]) == 0
    data = json.loads((out / "propagation.json").read_text())
    assert data["meta"]["command"].startswith("seqjax gradnorm propagation --models complex,gru")
    assert len(data["rows"]) == 4 and len(data["summary"]) == 4
    by = {(d["model"], d["t"]): d for d in data["summary"]}
    # (at width 256 the factors are 100 and more; see docs/science)
    assert by["complex", 30.0]["rnn2"][-1] > 2 * by["complex", 1.0]["rnn2"][-1]
    assert (by["complex", 30.0]["grad2_timescale_all"]
            > 10 * by["complex", 1.0]["grad2_timescale_all"])
    assert by["gru", 30.0]["rnn2"][-1] < by["gru", 1.0]["rnn2"][-1]
    assert len((out / "propagation.csv").read_text().splitlines()) == 1 + 4 * 1
    assert (out / "propagation.png").read_bytes()[:4] == b"\x89PNG"
    assert "| model | t |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        gradnorm.main(["propagation", "--timescales", "0.5"])
    assert e.value.code == 2 and "argument --timescales" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gradnorm.main(["propagation", "--models", "transformer"])
    assert "unknown 'transformer'" in capsys.readouterr().err
