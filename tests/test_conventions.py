"""The parameter conventions of docs/guides/interop.md that no other test exercises:
each mapping from another library's layout onto seqjax's params, against that
library's own module, with random weights (so a misplaced gate, sign or bias shows).

* Haiku's ``hk.LSTM`` (gates ``i, g, f, o`` on ``[x, h]``, a hidden ``+1`` on the forget
  gate) and ``hk.GRU`` (gates ``z, r, a``, its ``z`` writing the new state).
* Equinox's ``LSTMCell`` and ``GRUCell`` (PyTorch's ``[out, in]`` layout, one bias).
* xlstm's ``MultiHeadLayerNorm``: the mLSTM's ``norm_scale`` is ``1 + weight``.

PyTorch's and Flax linen's mappings are tested in ``test_torch_parity.py`` and
``test_flax.py``; the recurrences' layouts (mLSTM, delta rule, Mamba-2, sLSTM,
RG-LRU) in ``test_matrix_cells.py`` and ``test_modern_cells.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax as sj

I, H, T = 3, 4, 6


def _close(a, b, tol=1e-5):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def _random_like(tree, seed):
    """``tree`` with every array redrawn from a standard normal (numpy: nothing to
    compile)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda l: jnp.asarray(rng.standard_normal(l.shape).astype(l.dtype)), tree)


def _inputs(seed=1):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(s).astype(np.float32))
                 for s in ((T, I), (H,), (H,)))


def _loop(step, state, xs):
    """The reference stepped in a Python loop, compiled once."""
    def run(state, xs):
        ys = []
        for x in xs:
            state, y = step(state, x)
            ys.append(y)
        return state, jnp.stack(ys)

    return jax.jit(run)(state, xs)


def _unroll(cell, params, xs, state):
    return jax.jit(lambda p, x, s: sj.unroll(cell, p, x, s))(params, xs, state)


def _blocks(a, n):
    return jnp.split(a, n, axis=-1)


# ------------------------------------------------------------------------------ Haiku


def _haiku(core):
    hk = pytest.importorskip("haiku")
    model = hk.without_apply_rng(hk.transform(lambda x, s: getattr(hk, core)(H)(x, s)))
    return hk, model


def test_haiku_lstm_gate_order_and_forget_bias():
    """``w [I + H, 4H]`` on ``[x, h]`` with gates ``i, g, f, o``; ``b_f = b_f^hk + 1``."""
    xs, h0, c0 = _inputs()
    hk, model = _haiku("LSTM")
    p = _random_like(model.init(jax.random.PRNGKey(0), xs[0], hk.LSTMState(h0, c0)), 2)
    (w, b), = [(v["w"], v["b"]) for v in p.values()]
    i, g, f, o = _blocks(w, 4)
    bi, bg, bf, bo = _blocks(b, 4)
    w = jnp.concatenate([i, f, g, o], axis=1)
    params = sj.LSTMParams(w[:I], w[I:], jnp.concatenate([bi, bf + 1.0, bg, bo]))

    def step(state, x):
        y, new = model.apply(p, x, hk.LSTMState(*state))
        return (new.hidden, new.cell), y

    (h_ref, c_ref), ys_ref = _loop(step, (h0, c0), xs)
    final, ys = _unroll(sj.lstm(H), params, xs, sj.LSTMState(h0, c0))
    _close((final.h, final.c, ys), (h_ref, c_ref, ys_ref))


def test_haiku_gru_is_the_reset_before_gru_with_its_update_gate_negated():
    """``hk.GRU``: gates ``z, r, a`` and ``h = (1 - z) h + z a``; seqjax's reset-before
    GRU keeps with its ``z``: ``r, -z, a`` (weights and bias), since
    ``sigmoid(-v) = 1 - sigmoid(v)``."""
    xs, h0, _ = _inputs()
    _, model = _haiku("GRU")
    p = _random_like(model.init(jax.random.PRNGKey(0), xs[0], h0), 3)
    (v,) = p.values()

    def ours(a):
        z, r, cand = _blocks(a, 3)
        return jnp.concatenate([r, -z, cand], axis=-1)

    params = sj.GRUParams(ours(v["w_i"]), ours(v["w_h"]), ours(v["b"]), None)
    def step(h, x):
        y, h = model.apply(p, x, h)
        return h, y

    h_ref, ys_ref = _loop(step, h0, xs)
    final, ys = _unroll(sj.gru(H, reset_after=False), params, xs, h0)
    _close((final, ys), (h_ref, ys_ref))


# ---------------------------------------------------------------------------- Equinox


def test_equinox_lstm_and_gru_are_pytorchs_layout_with_one_bias():
    eqx = pytest.importorskip("equinox")
    xs, h0, c0 = _inputs()
    lstm = _random_like(eqx.nn.LSTMCell(I, H, key=jax.random.PRNGKey(0)), 4)
    params = sj.LSTMParams(lstm.weight_ih.T, lstm.weight_hh.T, lstm.bias)
    def lstm_step(state, x):
        h, c = lstm(x, state)
        return (h, c), h

    (h_ref, c_ref), ys_ref = _loop(lstm_step, (h0, c0), xs)
    final, ys = _unroll(sj.lstm(H), params, xs, sj.LSTMState(h0, c0))
    _close((final.h, final.c, ys), (h_ref, c_ref, ys_ref))

    gru = _random_like(eqx.nn.GRUCell(I, H, key=jax.random.PRNGKey(1)), 5)
    params = sj.GRUParams(gru.weight_ih.T, gru.weight_hh.T, gru.bias, gru.bias_n)
    def gru_step(h, x):
        h = gru(x, h)
        return h, h

    h_ref, ys_ref = _loop(gru_step, h0, xs)
    final, ys = _unroll(sj.gru(H), params, xs, h0)
    _close((final, ys), (h_ref, ys_ref))


# ------------------------------------------------------------------------------ xlstm


def test_mlstm_norm_scale_is_one_plus_xlstms_layer_norm_weight():
    """xlstm's ``MultiHeadLayerNorm`` (``residual_weight=True``) applies ``1 + weight``
    over heads laid out ``[heads * d_v]``; seqjax's readout with ``norm_scale = 1 +
    weight`` and a zero output gate pre-activation (``sigmoid(0) = 1/2``) is half of
    it."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("xlstm")
    from xlstm.components.ln import MultiHeadLayerNorm

    heads, d, B = 2, H // 2, 2
    rng = np.random.default_rng(0)
    norm = MultiHeadLayerNorm(ndim=H, weight=True, bias=False)
    assert norm.residual_weight and float(norm.weight.detach().abs().max()) == 0.0  # starts at 0
    weight = rng.normal(size=H).astype(np.float32)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(weight))
    h = rng.normal(size=(B, heads, T, d)).astype(np.float32)  # xlstm's [B, NH, S, DH]
    with torch.no_grad():
        want = norm(torch.from_numpy(h)).transpose(1, 2).reshape(B, T, H).numpy()

    cell = sj.mlstm(H, num_heads=heads)
    params = cell.init(jax.random.PRNGKey(0), I)
    params = params._replace(w_o=jnp.zeros_like(params.w_o), b_o=jnp.zeros_like(params.b_o),
                             norm_scale=jnp.asarray(1.0 + weight))
    o = jnp.asarray(np.transpose(h, (2, 0, 1, 3)))  # the unroll's [T, B, heads, d_v]
    ys = cell.chunkwise.readout(params, o, jnp.ones((T, B, I)))
    _close(2.0 * ys, np.swapaxes(want, 0, 1))
