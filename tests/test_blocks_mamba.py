"""Mamba's and Mamba-2's blocks (seqjax.blocks.mamba): the whole-sequence form (chunkwise
for Mamba-2's SSD, chunks of 32 and 16), the step-by-step form and a prefill followed by
one ``apply`` per token compute the same outputs and states; lengths, reversal and vmap
follow the unroll's contract; gradients are checked numerically; a language model of
these blocks decodes as it applies."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

import seqjax
from seqjax import lm
from seqjax.blocks.mamba import (Mamba2State, MambaState, mamba2_block, mamba_block, ssd)

D = 16
BLOCKS = {
    "mamba": lambda dtype: mamba_block(D, state_size=4, param_dtype=dtype),
    # G = 2 groups of B, C over 4 heads; a time-step limit that binds at both ends
    # (softplus(dt + dt_bias) of the random params below spreads over ~0.2 ... 3)
    "mamba2": lambda dtype: mamba2_block(D, state_size=8, head_dim=8, n_groups=2,
                                         time_step_limit=(0.5, 1.5), param_dtype=dtype),
}


def _random_params(init, seed=0):
    """Params shaped as ``init()`` builds them, drawn with numpy (JAX's eager random draws
    compile once per shape): matrices ``N(0, 1/fan_in)``, vectors ``1 + N(0, 0.3)``, so
    that norm scales, biases, ``D``, ``dt_bias`` and ``A_log`` all differ from their
    fresh values."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(init)

    def draw(s):
        if len(s.shape) >= 2:
            x = rng.standard_normal(s.shape) / np.sqrt(s.shape[0])
        else:
            x = 1.0 + 0.3 * rng.standard_normal(s.shape)
        return jnp.asarray(x, s.dtype)

    return jax.tree_util.tree_map(draw, shapes)


def _close(a, b, rtol):
    """Every leaf of ``a`` within ``rtol`` of ``b``'s largest magnitude."""
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape
        scale = max(np.max(np.abs(y)), 1e-30)
        assert np.max(np.abs(x - y)) <= rtol * scale, (np.max(np.abs(x - y)), scale)


def _setup(name, dtype, T=70, batch=None, seed=0):
    block = BLOCKS[name](dtype)
    params = _random_params(lambda: block.init(jax.random.PRNGKey(0), D), seed)
    shape = (T, D) if batch is None else (batch, T, D)
    xs = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(shape), dtype)
    return block, params, xs


def _prefill_then_apply(block, params, xs, split):
    """The first ``split`` inputs in the whole-sequence form, then ``apply`` per step."""
    state, head = seqjax.unroll(block, params, xs[:split], chunkwise=True)

    def body(s, x):
        return block.apply(params, s, x)

    state, tail = lax.scan(body, state, xs[split:])
    return state, jnp.concatenate([head, tail])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(BLOCKS))
def test_parallel_step_and_prefill_then_apply_agree(name, dtype):
    """T = 70 crosses chunks of 32 (the CPU default) and of 16; prefill 45 steps, then
    25 ``apply`` calls; outputs and final states (conv history, SSM state) agree to
    ~1e-5 (float32) and ~1e-10 (float64)."""
    with jax.enable_x64(dtype == "float64"):
        block, params, xs = _setup(name, jnp.dtype(dtype))
        tol = 1e-10 if dtype == "float64" else 2e-5
        unroll = jax.jit(seqjax.unroll, static_argnums=0,
                         static_argnames=("chunkwise", "chunk_size"))
        stepped = unroll(block, params, xs, chunkwise=False)
        assert isinstance(stepped[0], Mamba2State if name == "mamba2" else MambaState)
        _close(unroll(block, params, xs, chunkwise=True), stepped, tol)
        if name == "mamba2":  # a chunkwise SSD inside
            _close(unroll(block, params, xs, chunkwise=True, chunk_size=16), stepped, tol)
        _close(jax.jit(_prefill_then_apply, static_argnums=(0, 3))(block, params, xs, 45),
               stepped, tol)


@pytest.mark.parametrize("name", list(BLOCKS))
def test_lengths_reverse_and_vmap(name):
    """``lengths``: each example's valid prefix alone, zeros after it, the initial state
    for length 0; ``jax.vmap`` of ``unroll`` == ``unroll_batch``; ``reverse``: the
    forward unroll of the reversed valid prefix, reversed. T = 40, chunks of 16."""
    block, params, xs = _setup(name, jnp.float32, T=40, batch=3)
    lengths = jnp.array([40, 23, 0], jnp.int32)
    options = dict(chunkwise=True, chunk_size=16)

    @jax.jit
    def run(xs, lengths):
        batched = seqjax.unroll_batch(block, params, xs, lengths=lengths, **options)
        mapped = jax.vmap(lambda x, n: seqjax.unroll(block, params, x, length=n, **options))(
            xs, lengths)
        backward = seqjax.unroll_batch(block, params, xs, lengths=lengths, reverse=True,
                                       **options)
        return batched, mapped, backward

    @jax.jit
    def alone(xs, n):  # one example, stepped through apply (masked after n)
        return seqjax.unroll(block, params, xs, length=n, chunkwise=False)

    (final, ys), mapped, (rev_final, rev_ys) = run(xs, lengths)
    _close(mapped, (final, ys), 1e-6)
    for b, n in enumerate(lengths.tolist()):
        one = jax.tree_util.tree_map(lambda a: a[b], final)
        flipped = jnp.concatenate([xs[b, :n][::-1], xs[b, n:]])
        if n:
            want_final, want_ys = alone(xs[b], n)
            _close((one, ys[b, :n]), (want_final, want_ys[:n]), 1e-5)
            want_final, want_ys = alone(flipped, n)
            _close((jax.tree_util.tree_map(lambda a: a[b], rev_final), rev_ys[b, :n]),
                   (want_final, want_ys[:n][::-1]), 1e-5)
        else:  # no valid step: the initial state
            _close(one, block.initial_state(params), 0.0)
        assert np.all(np.asarray(ys[b, n:]) == 0) and np.all(np.asarray(rev_ys[b, n:]) == 0)


@pytest.mark.parametrize("name", list(BLOCKS))
def test_gradients(name, x64):
    """Reverse-mode derivatives of the outputs and final state w.r.t. params, inputs and
    an initial state, against finite differences (float64; T = 11, chunks of 4)."""
    f64 = jnp.float64
    block = (mamba_block(4, state_size=2, expand=1, param_dtype=f64) if name == "mamba" else
             mamba2_block(4, state_size=2, head_dim=2, n_groups=2, time_step_limit=(0.5, 1.5),
                          param_dtype=f64))
    params = _random_params(lambda: block.init(jax.random.PRNGKey(0), 4))
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.standard_normal((11, 4)))
    state = jax.tree_util.tree_map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape)),
                                   block.initial_state(params))
    check_grads(jax.jit(lambda p, x, s: seqjax.unroll(block, p, x, s, chunk_size=4)),
                (params, xs, state), order=1, modes=["rev"])


def test_ssd_checks_its_configuration():
    with pytest.raises(ValueError, match="n_groups"):
        ssd(4, 8, n_groups=3)
    with pytest.raises(ValueError, match="time_step_limit"):
        ssd(4, 8, time_step_limit=(0.1, 0.01))
    with pytest.raises(ValueError, match="num_heads \\* head_dim"):
        mamba2_block(16, num_heads=3, head_dim=8)
    assert ssd(4, 8, time_step_limit=(0.0, math.inf)).output_size == 32


def test_language_model_prefill_step_generate():
    """A Mamba / Mamba-2 hybrid built from the block names (papers' defaults): prefill
    40 tokens then 30 steps == apply at T = 70; greedy generate == an argmax loop over
    apply."""
    model = lm.language_model(vocab_size=29, d_model=32, blocks=["mamba", "mamba2"])
    params = _random_params(lambda: model.init(jax.random.PRNGKey(0)))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 29, 70), jnp.int32)
    apply = jax.jit(model.apply)
    full = apply(params, tokens)
    logits, state = jax.jit(model.prefill)(params, tokens[:40])

    def body(s, t):
        logit, s = model.step(params, t, s)
        return s, logit

    _, tail = jax.jit(lambda s, ts: lax.scan(body, s, ts))(state, tokens[40:])
    _close(jnp.concatenate([logits, tail]), full, 2e-5)

    prompt, steps = tokens[:12], 8
    out = model.generate(params, jax.random.PRNGKey(2), prompt, steps, greedy=True)
    seq = jnp.concatenate([prompt, jnp.zeros((steps,), prompt.dtype)])
    for i in range(steps):  # an argmax loop over apply (padded to one shape: causal)
        seq = seq.at[12 + i].set(jnp.argmax(apply(params, seq)[11 + i]).astype(seq.dtype))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(seq[12:]))
