"""Griffin's blocks (seqjax.blocks.griffin): the recurrent block and local attention.

Against Google's ``recurrentgemma.jax.modules`` (``ResidualBlock`` with its
``RecurrentBlock`` and ``LocalAttentionBlock``) with the same weights: whole
sequences, Google's cached decoding, and a sequence that starts past position 0.
Then the forms of the blocks against one another: the whole-sequence form (associative
or sequential scan) == stepping ``apply`` in a scan == a prefill followed by ``apply``
one token at a time, lengths, reverse, vmap, gradients, and language models of the
family.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from recurrentgemma import common
from recurrentgemma.jax import modules

import seqjax
from seqjax import lm
from seqjax.blocks import griffin
from tests._references import reference_numerics

D, T = 16, 70

# small, uneven sizes: an RG-LRU of 24 channels in two blocks, a window of 16 (crossed
# at T = 70), an MLP of 20
BLOCKS = {
    "griffin": functools.partial(griffin.griffin_block, D, lru_width=24, num_heads=2,
                                 mlp_hidden=20),
    "local_attention": functools.partial(griffin.local_attention_block, D, num_heads=2,
                                         window=16, mlp_hidden=20),
}


def _params(cell, dtype=jnp.float32, seed=0, size=D):
    """Random params of ``cell`` (see :func:`_draw`)."""
    return _draw(jax.eval_shape(lambda: cell.init(jax.random.PRNGKey(seed), size)), dtype, seed)


def _draw(shapes, dtype=jnp.float32, seed=0):
    """Random params in the layout ``shapes`` (what ``init`` builds), drawn with numpy
    (compiling the inits' random draws would cost more than the tests): matrices
    N(0, 1 / fan_in), vectors N(0, 0.1) (norm scales and biases start at 0 in
    ``init``, and a wrong one would go unnoticed), the RG-LRU's ``Lambda`` uniform on
    [2, 6] (``a = sigma(Lambda)`` in [0.88, 0.998], RecurrentGemma's ring)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if getattr(path[-1], "name", None) == "lam":
            value = rng.uniform(2.0, 6.0, leaf.shape)
        elif len(leaf.shape) == 1:
            value = 0.1 * rng.standard_normal(leaf.shape)
        else:
            value = rng.standard_normal(leaf.shape) / np.sqrt(leaf.shape[-2])
        return jnp.asarray(value, dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _inputs(dtype=jnp.float32, time=T, seed=1, batch=None):
    shape = (time, D) if batch is None else (batch, time, D)
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _unroll(cell, **options):
    """``seqjax.unroll`` of ``cell`` with these options, compiled (faster than eager
    dispatch even for one call)."""
    return jax.jit(lambda p, xs, state=None, length=None: seqjax.unroll(
        cell, p, xs, state, length=length, **options))


def _close(a, b, rtol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape, (x.shape, y.shape)
        scale = max(np.max(np.abs(y), initial=0.0), 1e-30)
        assert np.max(np.abs(x - y), initial=0.0) <= rtol * scale, \
            np.max(np.abs(x - y)) / scale


# ---------------------------------------------------------------- against recurrentgemma


def _google_mlp(p):
    m = p.mlp
    return {"ffw_up": {"w": jnp.stack([m.gate.w, m.up.w]),
                       "b": jnp.stack([m.gate.b, m.up.b])[:, None, None, :]},
            "ffw_down": {"kernel": m.down.w, "bias": m.down.b}}


def _google_params(p, kind, heads):
    """seqjax params as Google's Flax tree (recurrent_gemma.md, section 5.1)."""
    tree = {"temporal_pre_norm": {"scale": p.norm.scale},
            "channel_pre_norm": {"scale": p.mlp_norm.scale}, "mlp_block": _google_mlp(p)}
    m = p.mixer
    if kind == "griffin":
        dense = lambda l: {"kernel": l.w, "bias": l.b}  # noqa: E731
        lru = m.rg_lru
        tree["recurrent_block"] = {
            "linear_x": dense(m.linear_x), "linear_y": dense(m.linear_y),
            "linear_out": dense(m.linear_out),
            "conv_1d": {"w": m.conv.w, "b": m.conv.b},
            "rg_lru": {"a_param": -lru.lam,
                       "input_gate": {"w": lru.w_x, "b": lru.b_x.reshape(heads, -1)},
                       "a_gate": {"w": lru.w_a, "b": lru.b_a.reshape(heads, -1)}}}
    else:
        tree["attention_block"] = {"proj_q": {"kernel": m.q.w}, "proj_k": {"kernel": m.k.w},
                                   "proj_v": {"kernel": m.v.w},
                                   "proj_final": {"kernel": m.o.w, "bias": m.o.b}}
    return {"params": tree}


def _google_block(kind, window):
    """Google's block with the sizes of BLOCKS[kind]; its ``attention_window_size = w``
    attends to ``w + 1`` keys, seqjax's (and transformers') ``window = w + 1``."""
    return modules.ResidualBlock(
        width=D, mlp_expanded_width=20, num_heads=2, attention_window_size=window,
        temporal_block_type=(common.TemporalBlockType.RECURRENT if kind == "griffin"
                             else common.TemporalBlockType.ATTENTION),
        lru_width=24, scan_type=common.ScanType.LINEAR_NATIVE)


@pytest.mark.parametrize("kind", BLOCKS)
def test_blocks_equal_recurrentgemma(kind):
    """A batch of 2 x 40 tokens from position 0 (the RG-LRU's document start), Google's
    cache after it (RG-LRU and conv states), then 20 of Google's cached decoding steps
    (past the window of 16) against ``apply``; and for the recurrent block the same
    inputs at positions 5 ... 44 (no reset: a continued document) against a fresh
    state whose counter is at 5."""
    cell = BLOCKS[kind]()
    p = _params(cell)
    google = _google_block(kind, window=15)
    gp = _google_params(p, kind, heads=2)
    xs = _inputs(batch=2, time=40)
    positions = jnp.broadcast_to(jnp.arange(40), (2, 40))
    google_apply = jax.jit(google.apply)
    with reference_numerics():
        ref, cache = google_apply(gp, xs, positions)
    batched = jax.jit(lambda p, xs, state=None: seqjax.unroll_batch(cell, p, xs, state))
    state, ys = batched(p, xs)
    _close(ys, ref, 2e-6)
    if kind == "griffin":
        _close(state.h, cache.rg_lru_state, 2e-6)
        _close(state.conv, cache.conv1d_state, 0.0)

    step = jax.jit(jax.vmap(cell.apply, in_axes=(None, 0, 0)))
    google_step = jax.jit(lambda c, x, pos: google.apply(gp, x, pos, c))
    for i, x in enumerate(jnp.swapaxes(_inputs(batch=2, time=20, seed=7), 0, 1)):
        with reference_numerics():
            ref, cache = google_step(cache, x[:, None], jnp.full((2, 1), 40 + i))
        state, y = step(p, state, x)
        _close(y, ref[:, 0], 2e-6)

    if kind == "griffin":  # the RG-LRU resets at position 0 only
        with reference_numerics():
            later, _ = google_apply(gp, xs, positions + 5)
        fresh = jax.vmap(lambda _: cell.initial_state(p))(jnp.arange(2))
        fresh = fresh._replace(position=jnp.full((2,), 5, jnp.int32))
        _, continued = batched(p, xs, fresh)
        _close(continued, later, 2e-6)
        assert float(jnp.abs(later - ys).max()) > 1e-2  # the reset matters


def test_first_step_is_a_document_start():
    """Position 0: h_0 = i_0 * x_0 (no sqrt(1 - a^2)); any other position is the
    rg_lru cell's step, from whatever state."""
    mixer = griffin.recurrent_block(D, lru_width=24, num_heads=2)
    p = _params(mixer)
    x = _inputs(time=1)[0]
    lru = seqjax.rg_lru(24, num_heads=2)
    conv_state, c = seqjax.layers.short_conv(24).apply(
        p.conv, jnp.zeros((3, 24)), x @ p.linear_x.w + p.linear_x.b)
    state, _ = mixer.apply(p, mixer.initial_state(p), x)
    gate = jax.nn.sigmoid(jnp.einsum("ki,kij->kj", c.reshape(2, 12), p.rg_lru.w_x).reshape(24)
                          + p.rg_lru.b_x)
    _close(state.h, c * gate, 1e-6)
    assert int(state.position) == 1
    _close(state.conv, conv_state, 0.0)
    h = jnp.asarray(np.random.default_rng(3).standard_normal(24), jnp.float32)
    later = mixer.initial_state(p)._replace(h=h, position=jnp.int32(7))
    state, _ = mixer.apply(p, later, x)
    _close(state.h, lru.apply(p.rg_lru, h, c)[0], 1e-6)


# ---------------------------------------------------------------- the forms agree


def _forms(cell, p, xs, options, split=35):
    """The sequence by the whole-sequence form, by stepping ``apply`` in a scan, by a
    prefill of ``split`` tokens continued by a second one, and by that prefill
    continued by ``apply`` one token at a time."""
    whole = _unroll(cell, chunkwise=True, **options)
    stepped = _unroll(cell, chunkwise=False)(p, xs)
    state, first = whole(p, xs[:split], cell.initial_state(p))
    chunked = whole(p, xs[split:], state)
    chunked = (chunked[0], jnp.concatenate([first, chunked[1]]))
    apply = jax.jit(cell.apply)
    rest = []
    for x in xs[split:]:
        state, y = apply(p, state, x)
        rest.append(y)
    streamed = (state, jnp.concatenate([first, jnp.stack(rest)]))
    return whole(p, xs), stepped, chunked, streamed


@pytest.mark.parametrize("name, options", [
    ("griffin", {}), ("griffin", {"associative": False, "chunk_size": 16}),
    ("local_attention", {})])
def test_whole_sequence_scan_and_prefill_then_step_agree(name, options):
    """T = 70 crosses the window of 16; a prefill of 35 tokens continued by a second
    prefill, or by 35 steps of ``apply``. The RG-LRU runs as an associative scan, or
    (``associative=False``) as a sequential one; ``chunk_size`` is passed on to the
    inner cells unchanged (none of them is chunkwise)."""
    cell = BLOCKS[name]()
    p = _params(cell)
    whole, stepped, chunked, streamed = _forms(cell, p, _inputs(), options)
    _close(whole, stepped, 1e-5)
    _close(chunked, stepped, 1e-5)
    _close(streamed, stepped, 1e-5)
    assert int(whole[0].position) == T


@pytest.mark.parametrize("name", BLOCKS)
def test_forms_agree_in_float64(name, x64):
    cell = BLOCKS[name](param_dtype=jnp.float64)
    p = _params(cell, jnp.float64)
    whole, stepped, chunked, streamed = _forms(cell, p, _inputs(jnp.float64), {})
    assert whole[1].dtype == jnp.float64
    _close(whole, stepped, 1e-10)
    _close(chunked, stepped, 1e-10)
    _close(streamed, stepped, 1e-10)


@pytest.mark.parametrize("name", BLOCKS)
def test_lengths_reverse_and_vmap(name):
    """A batch of lengths 70, 50, 1, 0: each valid prefix alone, zeros after it, its
    final state (length 0: the state it was given); reversed, the forward unroll of the
    reversed prefix; and ``jax.vmap(unroll)`` == ``unroll_batch``."""
    cell = BLOCKS[name]()
    p = _params(cell)
    batch = _inputs(batch=4, seed=2)
    lengths = jnp.array([70, 50, 1, 0])
    batched = jax.jit(lambda p, xs, n: seqjax.unroll_batch(cell, p, xs, lengths=n))(
        p, batch, lengths)
    mapped = jax.jit(jax.vmap(lambda x, n: seqjax.unroll(cell, p, x, length=n)))(batch, lengths)
    _close(mapped, batched, 1e-5)
    example = lambda tree, i: jax.tree_util.tree_map(lambda a: a[i], tree)  # noqa: E731
    alone = _unroll(cell)
    for i, n in ((1, 50), (2, 1)):
        state, ys = example(batched, i)
        alone_state, alone_ys = alone(p, batch[i, :n])
        _close(ys[:n], alone_ys, 1e-5)
        assert float(jnp.abs(ys[n:]).max()) == 0.0
        _close(state, alone_state, 1e-5)
    state, ys = example(batched, 3)
    _close(state, cell.initial_state(p), 0.0)
    assert float(jnp.abs(ys).max()) == 0.0

    state, ys = example(jax.jit(lambda p, xs, n: seqjax.unroll_batch(
        cell, p, xs, lengths=n, reverse=True))(p, batch, lengths), 1)
    flipped_state, flipped = alone(p, batch[1, :50][::-1])
    _close(ys[:50], flipped[::-1], 1e-5)
    _close(state, flipped_state, 1e-5)


@pytest.mark.parametrize("name", BLOCKS)
def test_gradients_in_float64(name, x64):
    cell = {"griffin": functools.partial(griffin.griffin_block, 8, lru_width=8, num_heads=2,
                                         mlp_hidden=8),
            "local_attention": functools.partial(griffin.local_attention_block, 8,
                                                 num_heads=2, window=3, mlp_hidden=8),
            }[name](param_dtype=jnp.float64)
    p = _params(cell, jnp.float64, size=8)
    rng = np.random.default_rng(1)
    xs, weights = (jnp.asarray(rng.standard_normal((6, 8)), jnp.float64) for _ in range(2))

    def loss(p, xs):
        state, ys = seqjax.unroll(cell, p, xs, chunkwise=True)
        floats = [a for a in jax.tree_util.tree_leaves(state) if a.dtype == jnp.float64]
        return jnp.sum(ys * weights) + sum(jnp.sum(a ** 2) for a in floats)

    check_grads(jax.jit(loss), (p, xs), order=1, modes=["rev"])


def test_defaults_follow_recurrentgemma():
    """RecurrentGemma 2B's sizes at D = 2560: an RG-LRU of 2560 in 10 blocks of 256, a
    conv of 4 taps, an MLP of 3 D; local MQA with 10 heads of 256, rotary on 128,
    a window of 2048 keys (its cache), o_proj's bias."""
    g = griffin.griffin_block(2560)
    shapes = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), 2560))
    assert shapes.mixer.rg_lru.w_a.shape == (10, 256, 256)
    assert shapes.mixer.conv.w.shape == (4, 2560) and shapes.mixer.conv.b.shape == (2560,)
    assert shapes.mlp.gate.w.shape == (2560, 7680) and shapes.mlp.down.b.shape == (2560,)
    a = griffin.local_attention_block(2560)
    shapes = jax.eval_shape(lambda: a.init(jax.random.PRNGKey(0), 2560))
    assert shapes.mixer.q.w.shape == (2560, 2560) and shapes.mixer.k.w.shape == (2560, 256)
    assert shapes.mixer.o.b.shape == (2560,) and shapes.mixer.q.b is None
    state = jax.eval_shape(lambda: a.initial_state(a.init(jax.random.PRNGKey(0), 2560)))
    assert state.k.shape == (2048, 1, 256)


# ---------------------------------------------------------------- language models


def _tokens(n, vocab, seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, n), jnp.int32)


def _argmax_loop(apply, params, tokens, prompt, steps):
    """Greedy continuation of ``tokens[:prompt]`` by an argmax over ``apply(params,
    tokens, length)`` of the growing sequence, in a buffer the size of ``tokens``."""
    seq = tokens
    for n in range(prompt, prompt + steps):
        seq = seq.at[n].set(jnp.argmax(apply(params, seq, n)[n - 1]).astype(jnp.int32))
    return seq[prompt:prompt + steps]


def _prefill_then_step(model, params, tokens, split):
    logits, state = jax.jit(model.prefill)(params, tokens[:split])
    step = jax.jit(model.step)
    out = [logits]
    for token in tokens[split:]:
        logit, state = step(params, token, state)
        out.append(logit[None])
    return jnp.concatenate(out)


def _model(V, blocks):
    model = lm.language_model(vocab_size=V, d_model=D, blocks=blocks, embed_scale=4.0,
                              logits_soft_cap=30.0)
    apply = jax.jit(lambda p, t, n: model.apply(p, t, length=n))
    return model, apply, _draw(jax.eval_shape(model.init, jax.random.PRNGKey(0)))


def test_language_model_by_names():
    """The Griffin hybrid by names at the defaults (window 2048): greedy generation
    from a 45-token prompt == an argmax loop over apply (prefill + step == apply is
    checked past the window below)."""
    V = 29
    model, apply, params = _model(V, ["griffin", "griffin", "local_attention"])
    tokens = _tokens(T, V)
    generated = model.generate(params, jax.random.PRNGKey(2), tokens[:45], 8, greedy=True)
    np.testing.assert_array_equal(generated, _argmax_loop(apply, params, tokens, 45, 8))


def _windowed_model(V=29):
    return _model(V, [BLOCKS["griffin"](), BLOCKS["local_attention"]()])


def test_language_model_past_the_window():
    """A window of 16: prefill 20 tokens, then step 50 (the cache ring wraps), ==
    apply at T = 70; a greedy loop of prefill + step == an argmax loop over apply."""
    model, apply, params = _windowed_model()
    tokens = _tokens(T, 29)
    full = apply(params, tokens, T)
    _close(_prefill_then_step(model, params, tokens, 20), full, 1e-5)

    logits, state = jax.jit(model.prefill)(params, tokens[:20])
    step = jax.jit(model.step)
    token, stepped = jnp.argmax(logits[-1]).astype(jnp.int32), []
    for _ in range(10):
        stepped.append(int(token))
        logit, state = step(params, token, state)
        token = jnp.argmax(logit).astype(jnp.int32)
    np.testing.assert_array_equal(stepped, _argmax_loop(apply, params, tokens, 20, 10))


def test_generate_past_the_window():
    model, apply, params = _windowed_model()
    tokens = _tokens(T, 29)
    generated = model.generate(params, jax.random.PRNGKey(2), tokens[:20], 10, greedy=True)
    np.testing.assert_array_equal(generated, _argmax_loop(apply, params, tokens, 20, 10))
