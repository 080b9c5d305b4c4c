"""The delta-rule blocks (seqjax.blocks.delta): DeltaNet and Gated DeltaNet.

The layers against flash-linear-attention's own reference recurrences (its
``naive.py`` files, loaded by path without importing the package); then the forms of
the blocks against one another: chunkwise (chunks of 32 and 16) == stepping ``apply``
in a scan == a prefill followed by ``apply`` one token at a time, lengths, reverse,
vmap, gradients, and a language model of the family.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax.test_util import check_grads

import seqjax
from seqjax import lm
from seqjax.blocks import delta

from _references import load as _load_reference

D, T = 16, 70


def _naive(name):
    """flash-linear-attention's pure-PyTorch reference file ``fla/ops/<name>/naive.py``."""
    return _load_reference("fla", f"ops/{name}/naive.py")


# name -> (layer, block) constructors with small, uneven sizes: two key heads, and for
# Gated DeltaNet four value heads (grouped values) of 12 channels over keys of 8
LAYERS = {
    "deltanet": functools.partial(delta.deltanet_layer, D, num_heads=2),
    "gated_deltanet": functools.partial(delta.gated_deltanet_layer, D, num_heads=2,
                                        num_v_heads=4, head_dim=8, expand_v=1.5),
}
BLOCKS = {
    "deltanet": functools.partial(delta.deltanet_block, D, num_heads=2, mlp_hidden=32),
    "gated_deltanet": functools.partial(delta.gated_deltanet_block, D, num_heads=2,
                                        num_v_heads=4, head_dim=8, expand_v=1.5,
                                        mlp_hidden=32),
}


def _init(cell, size, seed=0):
    """``cell.init`` compiled once (eagerly, every random draw compiles on its own)."""
    return jax.jit(cell.init, static_argnums=1)(jax.random.PRNGKey(seed), size)


def _params(cell, seed=0):
    """Fresh params with N(0, 0.1) noise on every vector (norm scales start at 1, and a
    wrong one would go unnoticed)."""
    rng = np.random.default_rng(seed + 100)
    return jax.tree_util.tree_map(
        lambda a: a + jnp.asarray(0.1 * rng.standard_normal(a.shape), a.dtype) if a.ndim == 1
        else a, _init(cell, D, seed))


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


# ---------------------------------------------------------------- against flash-linear-attention


def _reference_layer(name, p, xs):
    """The layer in PyTorch float32 from its published parts: projections,
    ``F.conv1d`` (depthwise, causal), silu, l2norm, flash-linear-attention's naive
    recurrence, the per-head RMSNorm (and gate), the output projection."""
    t = lambda a: torch.tensor(np.asarray(a, np.float32))  # noqa: E731
    x = t(xs)[None]  # [1, T, D]
    cell = LAYERS[name]()
    heads_k, key_dim, d_v = cell.num_heads, p.q.w.shape[1], p.rule.norm.scale.shape[0]
    d_k, Hv = key_dim // heads_k, p.v.w.shape[1] // d_v
    qkv = torch.cat([x @ t(p.q.w), x @ t(p.k.w), x @ t(p.v.w)], -1)
    C, k_size = qkv.shape[-1], p.conv.w.shape[0]
    conv = F.conv1d(qkv.transpose(1, 2), t(p.conv.w).T[:, None, :], padding=k_size - 1,
                    groups=C)[..., :xs.shape[0]]
    c = F.silu(conv).transpose(1, 2)
    q = c[..., :key_dim].reshape(1, -1, heads_k, d_k)
    k = c[..., key_dim:2 * key_dim].reshape(1, -1, heads_k, d_k)
    v = c[..., 2 * key_dim:].reshape(1, -1, Hv, d_v)
    q, k = (z.repeat_interleave(Hv // heads_k, dim=2) for z in (q, k))
    l2 = lambda z: z / torch.sqrt((z * z).sum(-1, keepdim=True) + 1e-6)  # noqa: E731
    q, k = l2(q), l2(k)
    beta = torch.sigmoid(x @ t(p.rule.beta.w))
    if p.rule.alpha is None:
        o, S = _naive("delta_rule").delta_rule_recurrence(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), beta.transpose(1, 2))
        o = o.transpose(1, 2)
    else:
        g = -torch.exp(t(p.rule.a_log)) * F.softplus(x @ t(p.rule.alpha.w) + t(p.rule.dt_bias))
        o, S = _naive("gated_delta_rule").naive_recurrent_gated_delta_rule(
            q, k, v, beta, g, output_final_state=True)
    o = o * torch.rsqrt((o * o).mean(-1, keepdim=True) + cell.norm_eps) * t(p.rule.norm.scale)
    if p.rule.gate is not None:
        o = o * F.silu((x @ t(p.rule.gate.w)).reshape(o.shape))
    y = o.reshape(1, -1, Hv * d_v) @ t(p.out.w)
    return y[0].numpy(), S[0].numpy()


@pytest.mark.parametrize("name", LAYERS)
def test_layers_equal_flash_linear_attention_reference(name):
    cell = LAYERS[name]()
    p = _params(cell)
    xs = _inputs(time=37)
    state, ys = _unroll(cell, p, xs, chunkwise=True, chunk_size=16)
    ref_y, ref_S = _reference_layer(name, p, xs)
    _close(ys, ref_y, 2e-5)
    _close(state.S, ref_S, 2e-5)
    # the convolution's state: the last k - 1 inputs [q | k | v]
    qkv = jnp.concatenate([xs @ p.q.w, xs @ p.k.w, xs @ p.v.w], -1)
    _close(state.conv, qkv[-3:], 1e-6)


def test_defaults_follow_flash_linear_attention():
    """fla's configs: DeltaNet 16 heads of 128 at D = 2048, no gate; Gated DeltaNet 6
    heads of 256 with values twice as wide and the gate; MLP 8 D / 3 rounded up to 256."""
    dn = delta.deltanet_block(2048)
    shapes = jax.eval_shape(lambda: dn.init(jax.random.PRNGKey(0), 2048))
    assert shapes.mixer.rule.norm.scale.shape == (128,)
    assert shapes.mixer.q.w.shape == (2048, 2048) and shapes.mixer.rule.gate is None
    assert shapes.mixer.conv.w.shape == (4, 3 * 2048) and shapes.mixer.conv.b is None
    assert shapes.mlp.gate.w.shape == (2048, 5632)
    gdn = delta.gated_deltanet_block(2048)
    shapes = jax.eval_shape(lambda: gdn.init(jax.random.PRNGKey(0), 2048))
    assert shapes.mixer.q.w.shape == (2048, 6 * 256)
    assert shapes.mixer.v.w.shape == (2048, 6 * 512)
    assert shapes.mixer.rule.gate.w.shape == (2048, 6 * 512)
    assert shapes.mixer.rule.a_log.shape == (6,)
    state = jax.eval_shape(lambda: gdn.initial_state(gdn.init(jax.random.PRNGKey(0), 2048)))
    assert state.S.shape == (6, 256, 512) and state.conv.shape == (3, 2 * 1536 + 3072)
    with pytest.raises(ValueError, match="multiple"):
        delta.gated_deltanet_layer(D, num_heads=2, num_v_heads=3, head_dim=8)


# ---------------------------------------------------------------- the forms agree


def _prefill_then_step(cell, p, xs, chunk_size, split=40):
    """The first ``split`` steps chunkwise (as a length, so that the compilation of
    the whole sequence serves), then ``apply`` per step."""
    state, first = _unroll(cell, p, xs, split, chunkwise=True, chunk_size=chunk_size)
    first = first[:split]
    apply = jax.jit(cell.apply)
    rest = []
    for x in np.asarray(xs[split:]):
        state, y = apply(p, state, x)
        rest.append(y)
    return state, np.concatenate([first, np.stack(rest)])


@pytest.mark.parametrize("name", BLOCKS)
def test_chunkwise_scan_and_prefill_then_step_agree(name):
    """T = 70 crosses chunks of 32 and of 16; prefill 40 tokens, then step 30."""
    cell = BLOCKS[name]()
    p = _params(cell)
    xs = _inputs()
    stepped = _unroll(cell, p, xs, chunkwise=False)
    _close(_unroll(cell, p, xs, chunkwise=True), stepped, 1e-5)
    _close(_unroll(cell, p, xs, T, chunkwise=True, chunk_size=16), stepped, 1e-5)
    _close(_prefill_then_step(cell, p, xs, 16), stepped, 1e-5)


@pytest.mark.parametrize("name", BLOCKS)
def test_forms_agree_in_float64(name, x64):
    cell = BLOCKS[name](param_dtype=jnp.float64)
    p = _params(cell)
    xs = _inputs(jnp.float64, time=66)
    stepped = _unroll(cell, p, xs, chunkwise=False)
    assert stepped[1].dtype == jnp.float64
    _close(_unroll(cell, p, xs, 66, chunkwise=True, chunk_size=16), stepped, 1e-10)
    _close(_prefill_then_step(cell, p, xs, 16), stepped, 1e-10)


def _reversed_prefixes(batch, lengths):
    """Each example's first ``lengths[b]`` steps reversed in place."""
    out = np.array(batch)
    for b, n in enumerate(np.asarray(lengths)):
        out[b, :n] = out[b, :n][::-1]
    return jnp.asarray(out)


@pytest.mark.parametrize("name", BLOCKS)
def test_lengths_reverse_and_vmap(name):
    """Lengths in the chunkwise form (unroll_batch, chunks of 16): padded steps are
    zeros and leave the state alone; jax.vmap of unroll (the default forms) ==
    unroll_batch; a reversed unroll is the forward one of the reversed prefixes."""
    cell = BLOCKS[name]()
    p = _params(cell)
    batch = _inputs(batch=3, seed=2)
    lengths = jnp.array([70, 33, 50])

    def run(b, n, **options):
        return jax.jit(lambda b, n: seqjax.unroll_batch(cell, p, b, lengths=n, **options))(b, n)

    state, ys = run(batch, lengths, chunkwise=True, chunk_size=16)
    alone_state, alone = _unroll(cell, p, batch[1, :33])
    _close(ys[1, :33], alone, 1e-5)
    assert float(jnp.abs(ys[1, 33:]).max()) == 0.0 and float(jnp.abs(ys[2, 50:]).max()) == 0.0
    _close(jax.tree_util.tree_map(lambda a: a[1], state), alone_state, 1e-5)
    mapped_fn = jax.jit(jax.vmap(lambda x, n: seqjax.unroll(cell, p, x, length=n)))
    mapped = mapped_fn(batch, lengths)
    _close(mapped, (state, ys), 1e-5)
    # reverse (the default forms: unroll reverses each prefix around the block's own
    # forms): the forward unroll of the reversed prefixes, its outputs reversed back
    back_state, back = run(batch, lengths, reverse=True)
    flipped_state, flipped = mapped_fn(_reversed_prefixes(batch, lengths), lengths)
    _close(back, _reversed_prefixes(flipped, lengths), 1e-5)
    _close(back_state, flipped_state, 1e-5)


@pytest.mark.parametrize("name", BLOCKS)
def test_gradients_in_float64(name, x64):
    cell = {"deltanet": functools.partial(delta.deltanet_block, 8, num_heads=2, mlp_hidden=8),
            "gated_deltanet": functools.partial(delta.gated_deltanet_block, 8, num_heads=1,
                                                num_v_heads=2, head_dim=4, mlp_hidden=8),
            }[name](param_dtype=jnp.float64)
    p = _init(cell, 8)
    xs = jax.random.normal(jax.random.PRNGKey(1), (6, 8), jnp.float64)
    weights = jax.random.normal(jax.random.PRNGKey(2), (6, 8), jnp.float64)

    def loss(p, xs):
        state, ys = _unroll(cell, p, xs, chunkwise=True, chunk_size=4)
        return jnp.sum(ys * weights) + jnp.sum(state.S ** 2) + jnp.sum(state.conv)

    check_grads(jax.jit(loss), (p, xs), order=1, modes=["rev"], eps=1e-6)


# ---------------------------------------------------------------- a language model


def test_language_model_of_the_family():
    """Blocks by name at their defaults: prefill + step == apply at T = 70, and greedy
    generation == an argmax loop over apply."""
    V = 29
    model = lm.language_model(vocab_size=V, d_model=D, blocks=["deltanet", "gated_deltanet"])
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

    prompt, steps = tokens[:9], 8
    generated = model.generate(params, jax.random.PRNGKey(2), prompt, steps, greedy=True)
    seq = jnp.zeros((T,), jnp.int32).at[:9].set(prompt)
    for n in range(9, 9 + steps):
        seq = seq.at[n].set(jnp.argmax(apply(params, seq, n)[n - 1]).astype(jnp.int32))
    np.testing.assert_array_equal(generated, seq[9:9 + steps])
