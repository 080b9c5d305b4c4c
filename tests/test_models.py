"""Models (embeddings, heads, the RNN types, seq2seq) against Python loops over ``apply``
and numpy computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax
from seqjax import models


def _loop(cell, params, xs, state=None, steps=None):
    """The reference recurrence: a Python loop over ``cell.apply``."""
    state = cell.initial_state(params) if state is None else state
    ys = []
    for t in range(xs.shape[0] if steps is None else steps):
        state, y = cell.apply(params, state, xs[t])
        ys.append(np.asarray(y))
    return state, ys


def _dense(p, h):
    return np.asarray(h) @ np.asarray(p.w) + np.asarray(p.b)


# --------------------------------------------------------------------------- layers


def test_dense_and_embed_match_numpy(key):
    p = models.dense_init(key, 3, 4)
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(models.dense(p, x), x @ np.asarray(p.w) + np.asarray(p.b),
                               rtol=1e-6)
    table = models.embedding_init(key, 7, 3)
    ids = np.array([[0, 6], [3, 3]], np.int32)
    np.testing.assert_array_equal(models.embed(table, ids), np.asarray(table)[ids])


def test_readouts_match_slicing():
    ys = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    for n in (1, 4, 6):
        np.testing.assert_allclose(models.last_valid(ys, n), ys[n - 1])
        np.testing.assert_allclose(models.masked_mean(ys, n), ys[:n].mean(0), rtol=1e-6)
    np.testing.assert_array_equal(models.last_valid(ys, 0), np.zeros(3))
    np.testing.assert_array_equal(models.masked_mean(ys, 0), np.zeros(3))
    np.testing.assert_allclose(models.last_valid(ys), ys[-1])


def test_shift_right_is_teacher_forcing_input():
    tokens = np.array([[5, 6, 2], [7, 2, 0]], np.int32)
    np.testing.assert_array_equal(models.shift_right(tokens, 1), [[1, 5, 6], [1, 7, 2]])


def test_state_vector_round_trip(key):
    for cell, size in ((seqjax.lstm(3), 6), (seqjax.stack(seqjax.gru(2), seqjax.lstm(3)), 8),
                       (seqjax.lru(4, 5), 10)):
        params = cell.init(key, 4)
        template = cell.initial_state(params)
        leaves = jax.tree_util.tree_leaves(template)
        state = jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(template),
            [(jnp.arange(l.size, dtype=jnp.float32) + 1).reshape(l.shape).astype(l.dtype)
             for l in leaves])
        vector = models.state_to_vector(state)
        assert vector.shape == (size,)
        back = models.vector_to_state(vector, template)
        for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(state)):
            np.testing.assert_array_equal(a, b)
            assert a.dtype == b.dtype


# ----------------------------------------------------------------------- RNN types


def test_many_to_one_matches_loop_with_lengths(key):
    cell = seqjax.lstm(5)
    model = models.many_to_one(cell, 3, input_size=4)
    params = model.init(key)
    xs = np.random.default_rng(2).normal(size=(3, 7, 4)).astype(np.float32)
    lengths = np.array([7, 3, 0], np.int32)
    got = jax.jit(jax.vmap(model.apply, in_axes=(None, 0, 0)))(params, xs, lengths)
    for i, n in enumerate(lengths):
        _, ys = _loop(cell, params.encoder, xs[i], steps=int(n))
        h = ys[-1] if n else np.zeros(5, np.float32)
        np.testing.assert_allclose(got[i], _dense(params.head, h), rtol=1e-5, atol=1e-6)


def test_many_to_one_bidirectional_tokens_masked_mean(key):
    fwd, bwd = seqjax.gru(4), seqjax.rnn(3)
    model = models.many_to_one(seqjax.bidirectional(fwd, bwd), 2, vocab_size=9, embed_dim=5,
                               readout=models.masked_mean)
    params = model.init(key)
    ids = np.array([3, 1, 8, 0, 5, 0], np.int32)
    n = 4
    got = model.apply(params, ids, n)
    xs = np.asarray(params.embedding)[ids]
    _, yf = _loop(fwd, params.encoder.forward, xs, steps=n)
    _, yb = _loop(bwd, params.encoder.backward, xs[:n][::-1])
    merged = np.concatenate([np.stack(yf), np.stack(yb[::-1])], axis=1)
    np.testing.assert_allclose(got, _dense(params.head, merged.mean(0)), rtol=1e-5, atol=1e-6)


def test_many_to_many_matches_loop_and_zeroes_padding(key):
    cell = seqjax.gru(4)
    model = models.many_to_many(cell, 2, input_size=3)
    params = model.init(key)
    xs = np.random.default_rng(3).normal(size=(6, 3)).astype(np.float32)
    got = np.asarray(model.apply(params, xs, 4))
    _, ys = _loop(cell, params.encoder, xs, steps=4)
    np.testing.assert_allclose(got[:4], _dense(params.head, np.stack(ys)), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(got[4:], 0)


# ---------------------------------------------------------------------- one to many


def _lm(key, context_size=None):
    cell = seqjax.lstm(6)
    model = models.one_to_many(cell, 5, 4, context_size=context_size, start_id=1)
    params = model.init(key)
    # larger output weights so that argmax decisions are not near-ties
    params = params._replace(head=params.head._replace(w=params.head.w * 4))
    return cell, model, params


def test_one_to_many_teacher_forcing_matches_loop(key):
    cell, model, params = _lm(key)
    ids = np.array([0, 4, 2, 2, 3], np.int32)
    _, ys = _loop(cell, params.cell, np.asarray(params.embedding)[ids])
    np.testing.assert_allclose(model.apply(params, ids), _dense(params.head, np.stack(ys)),
                               rtol=1e-5, atol=1e-6)


def test_greedy_generation_matches_loop(key):
    cell, model, params = _lm(key)
    prompt = np.array([3, 0], np.int32)
    table = np.asarray(params.embedding)
    state, ys = _loop(cell, params.cell, table[prompt])
    logits, want = _dense(params.head, ys[-1]), []
    for _ in range(12):
        token = int(np.argmax(logits))
        want.append(token)
        state, y = cell.apply(params.cell, state, table[token])
        logits = _dense(params.head, y)
    got = model.generate(params, jax.random.PRNGKey(5), prompt, 12, greedy=True)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(model.generate(params, jax.random.PRNGKey(6), prompt, 12,
                                                 temperature=0.0), want)
    assert got.dtype == jnp.int32


def test_temperature_sampling_follows_softmax(key):
    _, model, params = _lm(key)
    prompt = np.array([2], np.int32)
    logits = np.asarray(model.apply(params, prompt)[-1], np.float64)
    keys = jax.random.split(jax.random.PRNGKey(7), 4000)
    for temperature in (0.5, 2.0):
        first = jax.vmap(lambda k: model.generate(params, k, prompt, 1,
                                                  temperature=temperature))(keys)[:, 0]
        freq = np.bincount(np.asarray(first), minlength=5) / len(keys)
        p = np.exp(logits / temperature - np.max(logits / temperature))
        np.testing.assert_allclose(freq, p / p.sum(), atol=0.03)


def test_sampling_is_seeded(key):
    _, model, params = _lm(key)
    a = model.generate(params, jax.random.PRNGKey(1), 2, 30, temperature=1.5)
    b = model.generate(params, jax.random.PRNGKey(1), 2, 30, temperature=1.5)
    c = model.generate(params, jax.random.PRNGKey(2), 2, 30, temperature=1.5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_generation_from_context_starts_at_bridge_state(key):
    cell, model, params = _lm(key, context_size=3)
    context = np.array([0.5, -1.0, 2.0], np.float32)
    v = _dense(params.bridge, context)  # LSTM state [h, c], h first
    state = seqjax.LSTMState(jnp.asarray(v[:6]), jnp.asarray(v[6:]))
    table, token, want = np.asarray(params.embedding), 1, []
    for _ in range(8):
        state, y = cell.apply(params.cell, state, table[token])
        token = int(np.argmax(_dense(params.head, y)))
        want.append(token)
    got = model.generate(params, jax.random.PRNGKey(0), context, 8, greedy=True)
    np.testing.assert_array_equal(got, want)


# -------------------------------------------------------------------------- seq2seq


@pytest.mark.parametrize("make", [lambda: seqjax.lstm(6),
                                  lambda: seqjax.stack(seqjax.gru(6), seqjax.mgu(6))],
                         ids=["lstm", "stack"])
def test_seq2seq_teacher_forcing_matches_loop(key, make):
    enc, dec = make(), make()
    model = models.seq2seq(enc, dec, src_vocab=7, tgt_vocab=5, embed_dim=4, start_id=1,
                           end_id=2)
    params = model.init(key)
    assert params.bridge is None  # same state: the encoder's final state is used as is
    src = np.array([3, 4, 6, 0, 0], np.int32)
    tgt_in = np.array([1, 3, 4, 0], np.int32)
    got = model.apply(params, src, 3, tgt_in)
    context, _ = _loop(enc, params.encoder, np.asarray(params.src_embedding)[src], steps=3)
    _, ys = _loop(dec, params.decoder, np.asarray(params.tgt_embedding)[tgt_in], context)
    np.testing.assert_allclose(got, _dense(params.head, np.stack(ys)), rtol=1e-5, atol=1e-6)


def test_seq2seq_greedy_decode_stops_at_end(key):
    fwd, bwd, dec = seqjax.gru(3), seqjax.gru(3), seqjax.lstm(4)
    end, pad, max_len = 2, 0, 7
    model = models.seq2seq(seqjax.bidirectional(fwd, bwd), dec, src_vocab=6, tgt_vocab=4,
                           embed_dim=5, start_id=1, end_id=end, pad_id=pad)
    params = model.init(key)
    params = params._replace(head=params.head._replace(w=params.head.w * 6))
    rng = np.random.default_rng(0)
    src = rng.integers(0, 6, size=(12, 5)).astype(np.int32)
    src_len = rng.integers(1, 6, size=12).astype(np.int32)
    tokens, lengths = jax.jit(jax.vmap(model.greedy_decode, in_axes=(None, 0, 0, None)),
                              static_argnums=3)(params, src, src_len, max_len)

    src_table, tgt_table = np.asarray(params.src_embedding), np.asarray(params.tgt_embedding)
    want_lengths = []
    for i in range(12):
        n = int(src_len[i])
        f, _ = _loop(fwd, params.encoder.forward, src_table[src[i]], steps=n)
        b, _ = _loop(bwd, params.encoder.backward, src_table[src[i, :n][::-1]])
        v = _dense(params.bridge, np.concatenate([np.asarray(f), np.asarray(b)]))
        state = seqjax.LSTMState(jnp.asarray(v[:4]), jnp.asarray(v[4:]))
        token, want = 1, []
        while len(want) < max_len and (not want or want[-1] != end):
            state, y = dec.apply(params.decoder, state, tgt_table[token])
            token = int(np.argmax(_dense(params.head, y)))
            want.append(token)
        want_lengths.append(len(want))
        np.testing.assert_array_equal(tokens[i], want + [pad] * (max_len - len(want)))
    np.testing.assert_array_equal(lengths, want_lengths)
    # the case is only interesting if the lengths differ and some stop early
    assert len(set(want_lengths)) > 1 and min(want_lengths) < max_len
