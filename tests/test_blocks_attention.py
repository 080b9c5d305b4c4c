"""Softmax attention (seqjax.layers.attention) and the Transformer block
(seqjax.blocks.attention.attention_block).

The layer against a float64 numpy attention written from the equations (grouped-query
heads, partial rotary, q/k norms, output gate, biases, a sliding window); its forms
against one another: the whole-sequence form == stepping ``apply`` in a scan == a
prefill followed by ``apply`` per token, with the window's ring of slots wrapping
around many times; lengths, reverse, vmap, gradients; the rotary frequencies of the
llama3 and yarn scalings against transformers' own ``ROPE_INIT_FUNCTIONS``; and a
language model of attention blocks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import seqjax
from seqjax import layers, lm
from seqjax.blocks.attention import attention_block

D, T = 24, 70

# name -> the layer's settings: every option at once (global and windowed), and plain
CONFIGS = {
    "gqa_partial_gate_qknorm": dict(num_heads=4, num_kv_heads=2, head_dim=8, rotary=4,
                                    qk_norm=1e-6, qk_norm_offset=1.0, qkv_bias=True,
                                    out_bias=True, output_gate=True, gate_bias=True,
                                    max_length=128),
    "window_mqa": dict(num_heads=4, num_kv_heads=1, head_dim=6, rotary=6, window=16),
    "window_gate_norm": dict(num_heads=2, num_kv_heads=2, head_dim=12, rotary=8, window=7,
                             qk_norm=1e-5, output_gate=True),
}


def _layer(name, dtype=jnp.float32):
    c = dict(CONFIGS[name])
    rotary, heads = c.pop("rotary"), c.pop("num_heads")
    return layers.attention(D, heads, rope=layers.rotary(rotary, theta=500.0),
                            param_dtype=dtype, **c)


def _init(cell, size, seed=0):
    """``cell.init`` compiled once (eagerly, every random draw compiles on its own)."""
    return jax.jit(cell.init, static_argnums=1)(jax.random.PRNGKey(seed), size)


def _perturbed(params, seed=0):
    """N(0, 0.1) noise on every vector (norm scales, biases start constant)."""
    rng = np.random.default_rng(seed + 100)
    return jax.tree_util.tree_map(
        lambda a: a + jnp.asarray(0.1 * rng.standard_normal(a.shape), a.dtype) if a.ndim == 1
        else a, params)


def _inputs(dtype=jnp.float32, time=T, seed=1, batch=None):
    shape = (time, D) if batch is None else (batch, time, D)
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _unroll(cell, p, xs, length=None, **static):
    """:func:`seqjax.unroll`, compiled once per cell, shape and static options (op by op
    it would dispatch, and compile, every primitive on its own)."""
    key = (id(cell), tuple(sorted(static.items())))
    if key not in _COMPILED:
        _COMPILED[key] = (cell, jax.jit(lambda p, xs, n: seqjax.unroll(cell, p, xs, length=n,
                                                                       **static)))
    return _COMPILED[key][1](p, xs, length)


_COMPILED = {}


def _close(a, b, rtol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        scale = max(np.max(np.abs(y)), 1e-30)
        assert np.max(np.abs(x - y)) <= rtol * scale, np.max(np.abs(x - y)) / scale


# ---------------------------------------------------------------- against numpy


def _numpy_attention(p, xs, *, num_heads, num_kv_heads, head_dim, rotary, window=None,
                     qk_norm=None, qk_norm_offset=0.0, output_gate=False, **_):
    """Float64 attention from the equations, one query at a time."""
    f = lambda a: None if a is None else np.asarray(a, np.float64)  # noqa: E731
    x = f(xs)

    def lin(q):
        return x @ f(q.w) + (0.0 if q.b is None else f(q.b))

    H, K, hd, g = num_heads, num_kv_heads, head_dim, num_heads // num_kv_heads
    q, k, v = (lin(p.q).reshape(-1, H, hd), lin(p.k).reshape(-1, K, hd),
               lin(p.v).reshape(-1, K, hd))
    if qk_norm is not None:
        def norm(z, w):
            return z / np.sqrt(np.mean(z * z, -1, keepdims=True) + qk_norm) * (qk_norm_offset
                                                                              + f(w))
        q, k = norm(q, p.q_norm), norm(k, p.k_norm)
    # the rotary angles and their cos, sin in float32, as PyTorch models (and seqjax)
    # compute them whatever the dtype of the model
    f32 = np.float32
    inv = f32(1) / f32(500.0) ** (np.arange(0, rotary, 2).astype(f32) / f32(rotary))
    angle = np.arange(len(x)).astype(f32)[:, None, None] * np.concatenate([inv, inv])
    cos, sin = np.cos(angle).astype(np.float64), np.sin(angle).astype(np.float64)

    def rope(z):
        part, half = z[..., :rotary], rotary // 2
        turned = np.concatenate([-part[..., half:], part[..., :half]], -1)
        return np.concatenate([part * cos + turned * sin, z[..., rotary:]], -1)

    q, k = rope(q), rope(k)
    out = np.zeros((len(x), H, hd))
    for t in range(len(x)):
        first = 0 if window is None else max(0, t - window + 1)
        for n in range(H):
            s = k[first:t + 1, n // g] @ q[t, n] / np.sqrt(hd)
            w = np.exp(s - s.max())
            out[t, n] = (w / w.sum()) @ v[first:t + 1, n // g]
    o = out.reshape(len(x), H * hd)
    if output_gate:
        o = o / (1 + np.exp(-lin(p.gate)))
    return o @ f(p.o.w) + (0.0 if p.o.b is None else f(p.o.b))


@pytest.mark.parametrize("name", CONFIGS)
def test_layer_equals_numpy_attention(name, x64):
    cell = _layer(name, jnp.float64)
    p = _perturbed(_init(cell, D))
    xs = _inputs(jnp.float64, time=40)
    _, ys = _unroll(cell, p, xs)
    # float64 but for the float32 cos and sin (numpy's and XLA's may differ by an ulp)
    _close(ys, _numpy_attention(p, xs, **CONFIGS[name]), 1e-6)


def test_gate_bias_needs_the_gate():
    with pytest.raises(ValueError, match="output_gate"):
        layers.attention(D, 2, gate_bias=True)
    p = jax.eval_shape(lambda: layers.attention(D, 2, output_gate=True, gate_bias=True).init(
        jax.random.PRNGKey(0), D))
    assert p.gate.b.shape == (D,)


# ---------------------------------------------------------------- the forms agree


def _forms(cell, p, xs, split=40):
    """The whole-sequence form, the scan over ``apply``, and a prefill of ``split``
    steps (a length: the whole sequence's compilation serves) then ``apply`` per step."""
    parallel = _unroll(cell, p, xs, len(xs), chunkwise=True)
    stepped = _unroll(cell, p, xs, chunkwise=False)
    state, first = _unroll(cell, p, xs, split, chunkwise=True)
    first = first[:split]
    apply = jax.jit(cell.apply)
    rest = []
    for x in np.asarray(xs[split:]):
        state, y = apply(p, state, x)
        rest.append(y)
    return parallel, stepped, (state, np.concatenate([first, np.stack(rest)]))


@pytest.mark.parametrize("name", CONFIGS)
def test_parallel_scan_and_prefill_then_step_agree(name):
    """T = 70: windows of 16 and 7 slots wrap around the ring many times, in the
    prefill of 40 and in the 30 steps after it; the caches agree slot for slot."""
    cell = _layer(name)
    p = _perturbed(_init(cell, D))
    parallel, stepped, streamed = _forms(cell, p, _inputs())
    _close(parallel, stepped, 1e-5)
    _close(streamed, stepped, 1e-5)
    window = CONFIGS[name].get("window")
    if window is not None:
        assert parallel[0].k.shape[0] == window
        assert int(parallel[0].position) == T


@pytest.mark.parametrize("window", [None, 16])
def test_block_forms_agree_in_float64(window, x64):
    cell = attention_block(D, num_heads=4, num_kv_heads=2, window=window, max_length=80,
                           mlp_hidden=32, param_dtype=jnp.float64)
    p = _perturbed(_init(cell, D))
    parallel, stepped, streamed = _forms(cell, p, _inputs(jnp.float64), split=33)
    assert parallel[1].dtype == jnp.float64
    _close(parallel, stepped, 1e-10)
    _close(streamed, stepped, 1e-10)


@pytest.mark.parametrize("window", [None, 16])
def test_block_lengths_reverse_and_vmap(window):
    cell = attention_block(D, num_heads=4, num_kv_heads=2, window=window, max_length=80,
                           mlp_hidden=32)
    p = _perturbed(_init(cell, D))
    xs = _inputs()
    state, ys = _unroll(cell, p, xs, length=50)
    alone_state, alone = _unroll(cell, p, xs[:50])
    _close(ys[:50], alone, 1e-5)
    assert float(jnp.abs(ys[50:]).max()) == 0.0
    _close(state, alone_state, 1e-6)
    state, ys = _unroll(cell, p, xs, length=50, reverse=True)
    flipped_state, flipped = _unroll(cell, p, xs[:50][::-1])
    _close(ys[:50], flipped[::-1], 1e-5)
    _close(state, flipped_state, 1e-6)
    batch = _inputs(batch=3, seed=2)
    lengths = jnp.array([70, 21, 64])
    mapped = jax.jit(jax.vmap(lambda x, n: seqjax.unroll(cell, p, x, length=n)))(batch,
                                                                              lengths)
    batched = jax.jit(lambda b, n: seqjax.unroll_batch(cell, p, b, lengths=n))(batch, lengths)
    _close(mapped, batched, 1e-5)
    state, ys = _unroll(cell, p, batch[1, :21])
    _close(batched[1][1, :21], ys, 1e-5)
    _close(jax.tree_util.tree_map(lambda a: a[1], batched[0]), state, 1e-6)


def test_gradients_in_float64(x64):
    cell = layers.attention(8, 2, num_kv_heads=1, head_dim=4, window=3,
                            rope=layers.rotary(2), qk_norm=1e-6, qkv_bias=True,
                            output_gate=True, param_dtype=jnp.float64)
    block = seqjax.blocks.residual(cell, mlp=layers.gated_mlp(8, 8, param_dtype=jnp.float64))
    p = _perturbed(_init(block, 8))
    xs = jax.random.normal(jax.random.PRNGKey(1), (6, 8), jnp.float64)
    weights = jax.random.normal(jax.random.PRNGKey(2), (6, 8), jnp.float64)

    def loss(p, xs):
        state, ys = seqjax.unroll(block, p, xs)
        return jnp.sum(ys * weights) + jnp.sum(state.k ** 2) + jnp.sum(state.v)

    check_grads(jax.jit(loss), (p, xs), order=1, modes=["rev"], eps=1e-6)


# ---------------------------------------------------------------- rotary scalings


ROPE_SCALINGS = [
    # llama3 with an original length of 256, so that all three frequency bands occur
    dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
         high_freq_factor=4.0, original_max_position_embeddings=256),
    dict(rope_type="llama3", rope_theta=10000.0, factor=32.0, low_freq_factor=2.0,
         high_freq_factor=8.0, original_max_position_embeddings=8192),
    dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=2048),
    dict(rope_type="yarn", rope_theta=1e6, factor=16.0, original_max_position_embeddings=4096,
         beta_fast=16.0, beta_slow=2.0, mscale=0.8, mscale_all_dim=0.5, truncate=False),
    dict(rope_type="yarn", rope_theta=10000.0, factor=2.0, original_max_position_embeddings=1024,
         attention_factor=1.25),
    dict(rope_type="linear", rope_theta=10000.0, factor=4.0),
]


@pytest.mark.parametrize("head_dim", [32, 128])
@pytest.mark.parametrize("scaling", ROPE_SCALINGS, ids=lambda s: s["rope_type"])
def test_rotary_scalings_equal_transformers(scaling, head_dim):
    """The float32 frequencies bit for bit, and the attention factor, of transformers'
    ``ROPE_INIT_FUNCTIONS`` on a config with the same settings.

    Bit for bit where the unscaled frequencies ``theta^(-2i/d)`` agree: PyTorch's
    float32 ``pow`` on CPU (SLEEF, within 1 ulp) is not always correctly rounded where
    XLA's is (theta 1e6, d = 128: ``i = 37``); there, within an ulp.
    """
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim,
                         max_position_embeddings=32768, rope_parameters=dict(scaling))
    inv_freq, factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config, "cpu")
    want = inv_freq.numpy().astype(np.float32)
    rope = layers.rotary(head_dim, theta=scaling["rope_theta"], scaling=scaling)
    got = np.asarray(rope.inv_freq, np.float32)
    theta = scaling["rope_theta"]
    same = (np.asarray(layers.rotary(head_dim, theta=theta).inv_freq, np.float32)
            == (1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)).numpy())
    assert same.sum() >= len(same) - 1
    np.testing.assert_array_equal(got[same], want[same])
    np.testing.assert_array_max_ulp(got, want, maxulp=1)
    assert rope.scale == pytest.approx(float(factor), rel=1e-12)


# ---------------------------------------------------------------- a language model


def test_language_model_of_attention_blocks():
    """Blocks by name (global) and a windowed block: prefill + step == apply at T = 70,
    and greedy generation == an argmax loop over apply."""
    V = 31
    # a window of 20: the prefill of 45 and the steps wrap its ring; generate (9 + 10
    # positions) stays within it, as lm.generate counts a window's slots as a limit
    windowed = attention_block(D, num_heads=2, window=20, mlp_hidden=48)
    model = lm.language_model(vocab_size=V, d_model=D, blocks=["attention", windowed],
                              max_length=96)
    params = jax.jit(model.init)(jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (T,), 0, V)
    # one compiled apply of T tokens serves the whole sequence and every greedy step
    apply = jax.jit(lambda p, t, n: model.apply(p, t, length=n))
    full = apply(params, tokens, T)
    logits, state = jax.jit(model.prefill)(params, tokens[:45])
    step = jax.jit(model.step)
    out = [logits]
    for token in np.asarray(tokens[45:]):
        logit, state = step(params, token, state)
        out.append(logit[None])
    _close(np.concatenate(out), full, 1e-5)

    prompt, steps = tokens[:9], 10
    generated = model.generate(params, jax.random.PRNGKey(2), prompt, steps, greedy=True)
    seq = jnp.zeros((T,), jnp.int32).at[:9].set(prompt)
    for n in range(9, 9 + steps):
        seq = seq.at[n].set(jnp.argmax(apply(params, seq, n)[n - 1]).astype(jnp.int32))
    np.testing.assert_array_equal(generated, seq[9:9 + steps])
