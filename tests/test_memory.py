"""The curse of memory (Zucchet & Orvieto 2024): the closed forms against brute-force
sums in numpy, the diagonal linear cell's sensitivity against numpy, and the Monte
Carlo measurement through seqjax against the closed forms within a stated tolerance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import diagnostics, experiments, gradnorm

# (lambda, rho): short memory, input memory longer than the state's, both long
POINTS = [(0.9, 0.0), (0.6, 0.99), (0.99, 0.9)]


def _brute_force(lam, rho, K=1500):
    """E[h^2] = sum_kl lam^(k+l) rho^|k-l|; E[(dh/dlam)^2] = sum_kl k l lam^(k+l-2)
    rho^|k-l| (h = sum_k lam^k x_(t-k), unit-variance inputs, E[x_s x_t] = rho^|s-t|)."""
    k = np.arange(K, dtype=np.float64)
    corr = rho ** np.abs(k[:, None] - k[None, :])
    a = lam ** k
    da = k * lam ** np.maximum(k - 1, 0)
    return a @ corr @ a, da @ corr @ da


@pytest.mark.parametrize("lam,rho", POINTS + [(0.5, 0.0), (0.95, 0.99)])
def test_closed_forms_equal_the_sums_they_come_from(lam, rho):
    var_h, var_dh = _brute_force(lam, rho)
    m = diagnostics.memory_moments(lam, rho)
    np.testing.assert_allclose([m.var_h, m.var_dh], [var_h, var_dh], rtol=1e-9)
    gamma2, dlam_dnu2 = 1 - lam ** 2, (lam * np.log(lam)) ** 2
    m = diagnostics.memory_moments(lam, rho, normalised=True, exponential=True)
    np.testing.assert_allclose([m.var_h, m.var_dh], [gamma2 * var_h, gamma2 * dlam_dnu2 * var_dh],
                               rtol=1e-9)
    if rho == 0:  # the paper's special case
        assert m.var_dh / gamma2 / dlam_dnu2 == pytest.approx((1 + lam ** 2) / (1 - lam ** 2) ** 3)


def test_diagonal_cell_sensitivity_equals_numpy(x64, key):
    """dh_T/dw through seqjax.unroll (jax.grad, both parametrisations) against
    sum_k k lam^(k-1) gamma x_(T-k) * dlam/dw in numpy."""
    T, lam = 40, np.array([0.3, 0.9, 0.99])
    xs = np.asarray(jax.random.normal(key, (T, 3), jnp.float64))
    gamma = np.sqrt(1 - lam ** 2)
    k = np.arange(T)[:, None]
    h_ref = (lam ** k * gamma * xs[::-1]).sum(0)
    dh_ref = (k * lam ** np.maximum(k - 1, 0) * gamma * xs[::-1]).sum(0)
    for par, dlam_dw in [(experiments.DIRECT, 1.0),
                         (experiments.EXPONENTIAL, lam * np.log(lam))]:
        cell = experiments.diagonal_linear(3, parametrisation=par, param_dtype=jnp.float64)
        p = experiments.DiagonalParams(par.param(jnp.asarray(lam)), jnp.asarray(gamma))
        # the associative scan here; the Monte Carlo test runs the step-by-step apply
        final = jax.jit(jax.value_and_grad(lambda w: jnp.sum(experiments.unroll(
            cell, p._replace(w=w), xs)[0] * jnp.asarray([1.0, 10.0, 100.0]))))
        h, dh = final(p.w)  # weights tell the channels apart in one sum
        np.testing.assert_allclose(h, h_ref @ [1.0, 10.0, 100.0], rtol=1e-10)
        np.testing.assert_allclose(dh, dh_ref * dlam_dw * [1.0, 10.0, 100.0], rtol=1e-9)


def test_monte_carlo_matches_theory_within_five_standard_errors(x64):
    """The measurement through seqjax against the closed forms. Tolerance: 5 standard
    errors of the Monte Carlo mean of z^2 (std(z^2) / sqrt(samples)), i.e. about
    +-11% of the value with 4096 Gaussian samples; every variant and both moments
    at three (lambda, rho). The sequences are long enough (horizon 8) for the bias of
    starting at h_0 = 0 to be below 1e-4."""
    for i, (lam, rho) in enumerate(POINTS):
        r = experiments.memory_monte_carlo(jax.random.PRNGKey(i), lam, rho, samples=4096,
                                           steps=experiments.memory_steps(lam, rho, horizon=8),
                                           chunk=200)
        for v in experiments.MEMORY_VARIANTS:
            d = r[v.name]
            for m, th in (("var_h", "theory_h"), ("var_dh", "theory_dh")):
                assert abs(d[m] - d[th]) < 5 * d[m + "_se"], (lam, rho, v.name, m, d)
                assert d[m + "_se"] < 0.04 * d[m]  # the tolerance is not vacuous
        # the curse: without gamma the sensitivity outgrows the state by (1 - lam)^-2
        assert r["lambda"]["var_dh"] > 10 * r["lambda"]["var_h"] or lam < 0.95


def test_memory_command_writes_its_files(tmp_path, capsys):
    out = tmp_path / "memory"
    # the Monte Carlo test's sizes: one compiled estimator serves both tests
    assert gradnorm.main(["memory", "--rhos", "0,0.9", "--decades", "1", "--per-decade", "2",
                          "--samples", "4096", "--chunk", "200", "--no-progress",
                          "--out", str(out)]) == 0
    import json

    data = json.loads((out / "memory.json").read_text())
    assert data["meta"]["command"].startswith("seqjax gradnorm memory --rhos 0,0.9")
    assert data["meta"]["versions"]["jax"] == jax.__version__ and data["meta"]["wall_s"] > 0
    assert [round(1 - r["lam"], 6) for r in data["rows"]] == [0.316228, 0.1] * 2
    assert len((out / "memory.csv").read_text().splitlines()) == 1 + 4 * 4
    assert (out / "memory.png").read_bytes()[:4] == b"\x89PNG"
    assert "| rho | 1 - lambda |" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--rhos", "0,1"], "argument --rhos: expected a comma list of numbers in [0, 1)"),
    (["--samples", "0"], "argument --samples: expected a positive integer"),
    (["--decades", "9"], "argument --decades: expected a number in [0.1, 6]"),
])
def test_memory_command_rejects_bad_values(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        gradnorm.main(["memory"] + argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
