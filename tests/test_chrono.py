"""Chrono initialisation (Tallec & Ollivier 2018): the bias distribution it draws,
and what it does to the gates, checked against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import seqjax as sj

ZERO = jax.nn.initializers.zeros


def test_lstm_forget_bias_is_log_uniform_and_input_bias_its_negative(key):
    T_max, H = 100.0, 1024
    cell = sj.lstm(H, forget_bias=sj.chrono_init(T_max), kernel_init=ZERO, recurrent_init=ZERO)
    b = np.asarray(jax.jit(cell.init, static_argnums=1)(key, 1).b)
    b_i, b_f, b_g, b_o = np.split(b, 4)
    # exp(b_f) ~ U(1, T_max - 1): a Kolmogorov-Smirnov test against scipy's uniform
    u = np.exp(b_f)
    assert u.min() >= 1.0 and u.max() <= T_max - 1
    assert stats.kstest(u, stats.uniform(loc=1.0, scale=T_max - 2).cdf).pvalue > 1e-3
    assert len(np.unique(b_f)) == H  # one draw per unit, not one value
    np.testing.assert_array_equal(b_i, -b_f)
    np.testing.assert_array_equal(b_g, 0.0)
    np.testing.assert_array_equal(b_o, 0.0)


def test_gru_update_bias_with_zuchet_orvieto_range(key):
    t = 10.0  # log U(t, 2t), their ChronoGRUCell(T_min=t, T_max=2t)
    cell = sj.gru(1024, update_bias=sj.chrono_init(2 * t + 1, t_min=t), kernel_init=ZERO,
                  recurrent_init=ZERO)
    b_r, b_z, b_n = np.split(np.asarray(jax.jit(cell.init, static_argnums=1)(key, 1).b), 3)
    assert np.exp(b_z).min() >= t and np.exp(b_z).max() <= 2 * t
    assert stats.kstest(np.exp(b_z), stats.uniform(loc=t, scale=t).cdf).pvalue > 1e-3
    np.testing.assert_array_equal(b_r, 0.0)
    np.testing.assert_array_equal(b_n, 0.0)
    # a float sets every unit; the default keeps PyTorch/Flax's zeros
    assert np.all(np.split(np.asarray(sj.gru(4, update_bias=2.0).init(key, 3).b), 3)[1] == 2.0)
    assert np.all(np.asarray(sj.gru(4).init(key, 3).b) == 0.0)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_chrono_gates_keep_memory_for_their_characteristic_time(x64, key, name):
    """With zero kernels and zero inputs the candidate is tanh(0) = 0, so the kept
    state decays as sigma(b)^t: unit k remembers for about 1 + exp(b_k) steps."""
    T_max, H, T = 50.0, 64, 120
    init = sj.chrono_init(T_max)
    if name == "lstm":
        cell = sj.lstm(H, forget_bias=init, kernel_init=ZERO, recurrent_init=ZERO,
                       param_dtype=jnp.float64)
        params = cell.init(key, 1)
        b = np.asarray(params.b[H:2 * H])
        state = sj.LSTMState(jnp.zeros(H), jnp.ones(H))
        final, _ = sj.unroll(cell, params, jnp.zeros((T, 1)), state)
        kept = np.asarray(final.c)
    else:
        cell = sj.gru(H, update_bias=init, kernel_init=ZERO, recurrent_init=ZERO,
                      param_dtype=jnp.float64)
        params = cell.init(key, 1)
        b = np.asarray(params.b[H:2 * H])
        final, _ = sj.unroll(cell, params, jnp.zeros((T, 1)), jnp.ones(H))
        kept = np.asarray(final)
    keep = 1 / (1 + np.exp(-b))  # sigma(b), numpy
    np.testing.assert_allclose(kept, keep ** T, rtol=1e-10)
    memory = -1 / np.log(keep)  # steps to decay by 1/e
    np.testing.assert_allclose(memory, np.exp(b) + 0.5, rtol=0.02, atol=0.05)
    assert memory.min() > 1.0 and memory.max() < T_max


def test_chrono_init_repr_dtype_and_bad_range(key):
    assert repr(sj.lstm(4, forget_bias=sj.chrono_init(100))) == (
        "lstm(hidden_size=4, forget_bias=chrono_init(t_max=100.0))")
    assert repr(sj.gru(4, update_bias=sj.chrono_init(21, t_min=10))) == (
        "gru(hidden_size=4, reset_after=True, update_bias=chrono_init(t_max=21.0, t_min=10.0))")
    assert repr(sj.gru(8)) == "gru(hidden_size=8, reset_after=True)"
    cell = sj.lstm(4, forget_bias=sj.chrono_init(10), param_dtype=jnp.bfloat16)
    b = jax.jit(cell.init, static_argnums=1)(key, 2).b
    assert b.dtype == jnp.bfloat16 and np.all(np.asarray(b[4:8], np.float32) > 0)
    with pytest.raises(ValueError, match="t_max - 1"):
        sj.chrono_init(2.0)
    with pytest.raises(ValueError, match="t_max - 1"):
        sj.chrono_init(5.0, t_min=4.5)
