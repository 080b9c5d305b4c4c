"""seqjax.lm: decoder language models from blocks, their prefill, step and generate.

Every block and hybrid must give the same logits whether the whole sequence runs in
its parallel form (apply), is prefilled and then stepped token by token, or is
prefilled in two chunks; generation compiles once.
"""


import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.test_util import check_grads
import pytest

import seqjax
from seqjax import blocks, layers, lm, train

V, D = 37, 32


def _tokens(T, seed=1, batch=None):
    shape = (T,) if batch is None else (batch, T)
    return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, V)


def _model(names, **options):
    return lm.language_model(vocab_size=V, d_model=D, blocks=names, max_length=128, **options)


def _prefill_then_step(model, params, tokens, split):
    logits, state = model.prefill(params, tokens[:split])
    out = [logits]
    step = jax.jit(model.step)
    for t in tokens[split:]:
        logit, state = step(params, t, state)
        out.append(logit[None])
    return jnp.concatenate(out), state


def _close(a, b, rtol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.max(np.abs(b)), 1e-30)
    assert np.max(np.abs(a - b)) <= rtol * scale, np.max(np.abs(a - b)) / scale


HYBRID = ["attention", "lstm", "gated_delta_net", "attention"]


@pytest.mark.parametrize("name", blocks.names())
def test_every_block_prefill_and_step_equal_apply(name):
    """T = 70: crosses the chunkwise cells' chunks of 32; prefill 45 tokens, then 25
    steps; and the prefill continued in a second chunk."""
    model = _model([name, name])
    params = model.init(jax.random.PRNGKey(0))
    tokens = _tokens(70)
    full = jax.jit(model.apply)(params, tokens)
    stepped, _ = _prefill_then_step(model, params, tokens, 45)
    _close(stepped, full, 2e-5)
    first, state = model.prefill(params, tokens[:30])
    second, _ = model.prefill(params, tokens[30:], state)
    _close(jnp.concatenate([first, second]), full, 2e-5)


def test_hybrid_in_float64(x64):
    model = _model(HYBRID, param_dtype=jnp.float64)
    params = model.init(jax.random.PRNGKey(0))
    assert params.embed.dtype == jnp.float64
    tokens = _tokens(66)
    full = model.apply(params, tokens)
    stepped, _ = _prefill_then_step(model, params, tokens, 50)
    _close(stepped, full, 1e-10)


def test_windowed_attention_hybrid_decodes_past_its_window():
    """A sliding window of 8 slots, prompts and decoding far beyond it: the ring of the
    KV cache wraps many times and still equals the whole-sequence attention."""
    local = blocks.residual(layers.attention(D, 4, num_kv_heads=1, window=8,
                                             rope=layers.rotary(4)),
                            mlp=layers.gated_mlp(D, 64))
    model = _model([local, "lstm", local])
    params = model.init(jax.random.PRNGKey(0))
    tokens = _tokens(67)
    full = model.apply(params, tokens)
    stepped, state = _prefill_then_step(model, params, tokens, 20)
    _close(stepped, full, 2e-5)
    assert state[0].k.shape[0] == 8  # the cache holds the window, not the sequence


def test_lengths_pad_and_vmap_batches():
    model = _model(HYBRID)
    params = model.init(jax.random.PRNGKey(0))
    tokens = _tokens(40, batch=3)
    lengths = jnp.array([40, 25, 1])
    batched = jax.vmap(lambda t, n: model.apply(params, t, length=n))(tokens, lengths)
    for b in range(3):
        n = int(lengths[b])
        alone = model.apply(params, tokens[b, :n])
        _close(batched[b, :n], alone, 2e-5)
    # a prefill with a length stops the state there: continuing from it equals the
    # unpadded sequence
    _, state = model.prefill(params, tokens[1], length=25)
    logit, _ = model.step(params, tokens[1, 25], state)
    _close(logit, model.apply(params, tokens[1, :26])[-1], 2e-5)


def test_gradients_check_in_float64(x64):
    small = lm.language_model(vocab_size=7, d_model=8, blocks=[
        blocks.residual(layers.attention(8, 2, rope=layers.rotary(4), max_length=16,
                                         param_dtype=jnp.float64),
                        mlp=layers.gated_mlp(8, 16, param_dtype=jnp.float64)),
        "delta_net"], max_length=16, param_dtype=jnp.float64)
    params = small.init(jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (9,), 0, 7)
    # eps 1e-6: with the default 1e-4 the delta rule's finite differences carry a
    # truncation error of ~2e-4 relative (its chunkwise and stepped gradients agree to
    # 1e-14: tests/test_blocks_delta.py)
    check_grads(lambda p: small.loss(p, tokens), (params,), order=1, modes=["rev"],
                eps=1e-6)


def test_generate_is_one_compiled_loop():
    """Greedy generation equals an argmax loop over ``apply``; a second call with other
    token values compiles nothing, and the decode state does not grow with the prompt."""
    model = _model(HYBRID)
    params = model.init(jax.random.PRNGKey(0))
    prompt = _tokens(12)
    out = model.generate(params, jax.random.PRNGKey(2), prompt, 10, greedy=True)
    seq = jnp.zeros((22,), jnp.int32).at[:12].set(prompt)
    apply = jax.jit(lambda s, n: model.apply(params, s, length=n)[n - 1])
    for n in range(12, 22):
        seq = seq.at[n].set(jnp.argmax(apply(seq, n)).astype(jnp.int32))
    np.testing.assert_array_equal(out, seq[12:])

    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        model.generate(params, jax.random.PRNGKey(3), _tokens(12, seed=5), 10, greedy=True)
        again = len(compiles)
        model.generate(params, jax.random.PRNGKey(3), _tokens(13, seed=5), 10, greedy=True)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert again == 0  # same shapes, other tokens: nothing compiles
    assert len(compiles) >= 1  # a new prompt length does compile: the listener works

    def decode_state(p):
        return jax.eval_shape(lambda: model.prefill(params, _tokens(p))[1])

    assert jax.tree_util.tree_map(lambda a: a.shape, decode_state(5)) == \
        jax.tree_util.tree_map(lambda a: a.shape, decode_state(60))


def test_generate_checks_the_attention_cache():
    model = lm.language_model(vocab_size=V, d_model=D, blocks=["attention"], max_length=16)
    params = model.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="max_length"):
        model.generate(params, jax.random.PRNGKey(0), _tokens(10), 10)


def test_trains_with_fit_and_gradient_norms_per_layer():
    model = _model(HYBRID)
    params = model.init(jax.random.PRNGKey(0))
    data = _tokens(24, batch=8)

    def loss_fn(p, batch, rng):
        return jnp.mean(jax.vmap(model.loss, (None, 0))(p, batch))

    state, history = train.fit(loss_fn, optax.adam(3e-3), params, lambda step, rng: data,
                               steps=30, progress=False)
    params = state.params
    assert history[-1]["loss"] < history[0]["loss"] - 0.5
    value, grads = model.hidden_gradients(params, data[0])
    assert grads.shape == (len(HYBRID) + 1, 24, D)
    np.testing.assert_allclose(value, model.loss(params, data[0]), rtol=1e-6)
    # the last step's hidden state reaches no loss term (it predicts nothing)
    assert float(jnp.abs(grads[:, -1]).max()) == 0.0
    assert float(jnp.abs(grads[:, 0]).max()) > 0.0


def test_bad_input_is_refused_before_tracing():
    model = _model(["lstm"])
    params = model.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="token ids"):
        model.apply(params, jnp.array([0, V]))
    with pytest.raises(ValueError, match=r"\[T\]"):
        model.apply(params, _tokens(5, batch=2))
    with pytest.raises(ValueError, match="unknown block"):
        _model(["nosuch"])
    with pytest.raises(ValueError, match="d_model"):
        _model([seqjax.lstm(D + 1)])
