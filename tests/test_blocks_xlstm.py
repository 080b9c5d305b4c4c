"""xLSTM's blocks (seqjax.blocks.xlstm): the mLSTM block of xLSTM 7B and the sLSTM
block. The whole-sequence form (chunkwise for the mLSTM, chunks of 32 and 16), the
step-by-step form and a prefill followed by one ``apply`` per token compute the same
outputs and states; lengths, reversal and vmap follow the unroll's contract; gradients
are checked numerically; the sLSTM block equals the ``xlstm`` package's ``sLSTMBlock``
(vanilla backend, float64) with the same weights; a language model of these blocks
decodes as it applies.

The params are random (:func:`_draw`: input gates near 0 instead of -10, the sLSTM's
recurrent kernel non-zero, norm scales off 1), so that every gate and both branches of
the mLSTM read-out's denominator are exercised.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax import lax
from jax.test_util import check_grads

import seqjax
from seqjax import lm
from seqjax.blocks.xlstm import SLSTMLayerState, mlstm_block, mlstm_layer, slstm_block
from seqjax.cells.xlstm import MLSTMState

D = 32
BLOCKS = {
    # 4 heads, q/k of 4 channels and values of 8, biases everywhere
    "mlstm": lambda dtype: mlstm_block(D, num_heads=4, bias=True, param_dtype=dtype),
    "slstm": lambda dtype: slstm_block(D, param_dtype=dtype),
    "slstm_no_conv": lambda dtype: slstm_block(D, conv_kernel_size=0, param_dtype=dtype),
}
CHUNKED = ("mlstm",)


def _close(a, b, rtol):
    """Every leaf of ``a`` within ``rtol`` of ``b``'s largest magnitude."""
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape
        scale = max(np.max(np.abs(y)), 1e-30)
        assert np.max(np.abs(x - y)) <= rtol * scale, (np.max(np.abs(x - y)), scale)


def _draw(path, leaf, rng):
    """One random param, scaled like an init: weights ``N(0, 1 / fan_in)`` (the sLSTM's
    recurrent kernel half that), norm scales ``1 + N(0, 0.2^2)``, biases ``N(0, 0.3^2)``;
    the mLSTM's forget-gate bias 3 ... 6 and its input-gate bias ``N(0, 1)`` (not
    -10: the input gate matters and the read-out's denominator takes both branches)."""
    name = jax.tree_util.keystr(path)
    shape = leaf.shape
    if name.endswith("fgate.b"):
        value = np.linspace(3.0, 6.0, shape[0]) + rng.normal(0.0, 0.3, shape)
    elif name.endswith("igate.b"):
        value = rng.normal(0.0, 1.0, shape)
    elif name.endswith("scale"):
        value = 1.0 + rng.normal(0.0, 0.2, shape)
    elif name == ".embed":
        value = rng.normal(0.0, 1.0, shape)
    elif len(shape) == 1:
        value = rng.normal(0.0, 0.3, shape)
    else:
        fan_in = shape[1] if name.endswith(".r") else shape[-2]
        value = rng.normal(0.0, (0.5 if name.endswith(".r") else 1.0) / np.sqrt(fan_in), shape)
    return jnp.asarray(value, leaf.dtype)


def _params(init, *args, seed=0):
    """Random params with the structure ``init(key, *args)`` builds, drawn in numpy
    (the init's own random calls would each compile, seconds in all)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda key: init(key, *args), jax.random.PRNGKey(0))
    return jax.tree_util.tree_map_with_path(lambda p, leaf: _draw(p, leaf, rng), shapes)


def _setup(name, dtype, T=70, batch=None, seed=0):
    block = BLOCKS[name](dtype)
    shape = (T, D) if batch is None else (batch, T, D)
    xs = jnp.asarray(np.random.default_rng(seed + 1).normal(size=shape), dtype)
    return block, _params(block.init, D, seed=seed), xs


def _prefill_then_apply(block, params, xs, split, chunk_size=None):
    """The first ``split`` inputs in the whole-sequence form, then ``apply`` per step."""
    state, head = seqjax.unroll(block, params, xs[:split], chunkwise=True, chunk_size=chunk_size)

    def body(s, x):
        return block.apply(params, s, x)

    state, tail = lax.scan(body, state, xs[split:])
    return state, jnp.concatenate([head, tail])


@pytest.mark.parametrize("name, dtype", [("mlstm", "float32"), ("mlstm", "float64"),
                                         ("slstm", "float32"), ("slstm", "float64"),
                                         ("slstm_no_conv", "float32")])
def test_parallel_step_and_prefill_then_apply_agree(name, dtype):
    """T = 70 crosses chunks of 32 (the CPU default) and of 16; prefill 45 steps (in
    chunks of 16: two and a ragged one), then 25 ``apply`` calls; outputs and final
    states agree to ~1e-5 (float32) and ~1e-10 (float64)."""
    with jax.enable_x64(dtype == "float64"):
        block, params, xs = _setup(name, jnp.dtype(dtype))
        tol = 1e-10 if dtype == "float64" else 2e-5
        unroll = jax.jit(seqjax.unroll, static_argnums=0,
                         static_argnames=("chunkwise", "chunk_size"))
        stepped = unroll(block, params, xs, chunkwise=False)
        assert isinstance(stepped[0], MLSTMState if name in CHUNKED else SLSTMLayerState)
        _close(unroll(block, params, xs, chunkwise=True), stepped, tol)
        if name in CHUNKED:
            _close(unroll(block, params, xs, chunkwise=True, chunk_size=16), stepped, tol)
        if name != "slstm_no_conv":  # the same code as "slstm" but for the convolution
            prefill = jax.jit(_prefill_then_apply, static_argnums=(0, 3, 4))
            _close(prefill(block, params, xs, 45, 16), stepped, tol)


@pytest.mark.parametrize("name", ["mlstm", "slstm"])
def test_lengths_reverse_and_vmap(name):
    """``length``: the valid prefix alone, zeros after it (length 0: the initial
    state); ``reverse``: the forward unroll of the reversed prefix, reversed;
    ``jax.vmap`` of ``unroll`` == ``unroll_batch``."""
    block, params, xs = _setup(name, jnp.float32, T=40, batch=3)
    lengths = jnp.array([40, 23, 0], jnp.int32)
    options = dict(chunkwise=True, chunk_size=16)

    @jax.jit
    def batched(xs, lengths):
        return seqjax.unroll_batch(block, params, xs, lengths=lengths, **options)

    @jax.jit
    def mapped(xs, lengths):
        return jax.vmap(lambda x, n: seqjax.unroll(block, params, x, length=n, **options))(
            xs, lengths)

    @functools.partial(jax.jit, static_argnames="reverse")
    def one(xs, length=None, reverse=False):
        return seqjax.unroll(block, params, xs, length=length, reverse=reverse, **options)

    final, ys = batched(xs, lengths)
    _close(mapped(xs, lengths), (final, ys), 1e-6)
    pick = lambda b: jax.tree_util.tree_map(lambda a: a[b], final)
    _close((pick(1), ys[1, :23]), one(xs[1, :23]), 1e-5)
    _close(pick(2), block.initial_state(params), 0.0)
    assert np.all(np.asarray(ys[1, 23:]) == 0) and np.all(np.asarray(ys[2]) == 0)

    rev_final, rev_ys = one(xs[1], length=23, reverse=True)
    fwd_final, fwd_ys = one(xs[1, :23][::-1])
    _close((rev_final, rev_ys[:23]), (fwd_final, fwd_ys[::-1]), 1e-5)
    assert np.all(np.asarray(rev_ys[23:]) == 0)


@pytest.mark.parametrize("name", ["mlstm", "slstm"])
def test_gradients(name, x64):
    """Reverse-mode derivatives of outputs and final state w.r.t. params, inputs and an
    initial state, against finite differences (float64; T = 9, chunks of 4)."""
    f64 = jnp.float64
    block = (mlstm_block(8, num_heads=2, qk_dim_factor=1.0, bias=True, gate_soft_cap=3.0,
                         ffn_round_up_to_multiple_of=8, param_dtype=f64) if name == "mlstm"
             else slstm_block(8, num_heads=2, mlp_round_up_to_multiple_of=8, param_dtype=f64))
    params = _params(block.init, 8, seed=1)
    rng = np.random.default_rng(2)
    normal = lambda *shape: jnp.asarray(rng.normal(0.0, 0.3, shape), f64)
    xs = jnp.asarray(rng.normal(size=(9, 8)), f64)
    state = block.initial_state(params)
    if name == "mlstm":  # a non-empty memory: C, n of either sign, the stabiliser m > 0
        state = MLSTMState(normal(*state.C.shape), normal(*state.n.shape),
                           jnp.full(state.m.shape, 0.5, f64))
    else:  # the normaliser n >= 1 of a running sLSTM
        cell = state.cell._replace(h=normal(8), c=normal(8), n=jnp.full((8,), 1.5, f64),
                                   m=jnp.full((8,), 0.2, f64))
        state = SLSTMLayerState(normal(*state.conv.shape), cell)

    @jax.jit
    def f(params, xs, state):
        return seqjax.unroll(block, params, xs, state, chunkwise=True, chunk_size=4)

    check_grads(f, (params, xs, state), order=1, modes=["rev"])


def test_slstm_block_equals_the_xlstm_package():
    """``xlstm``'s ``sLSTMBlock`` (vanilla backend, float64; conv 4, 4 heads, gated GeLU
    MLP of factor 4/3) with our weights: same outputs at T = 20. Its layer names the
    module that makes the input gate ``fgate`` and the forget gate's ``igate``."""
    from xlstm.blocks.slstm.block import sLSTMBlock, sLSTMBlockConfig
    from xlstm.blocks.slstm.layer import sLSTMLayerConfig
    from xlstm.components.feedforward import FeedForwardConfig

    config = sLSTMBlockConfig(
        slstm=sLSTMLayerConfig(embedding_dim=D, num_heads=4, conv1d_kernel_size=4,
                               backend="vanilla", dtype="float32",
                               enable_automatic_mixed_precision=False),
        feedforward=FeedForwardConfig(proj_factor=4 / 3, act_fn="gelu"),
        _num_blocks=1, _block_idx=0)
    reference = sLSTMBlock(config).double().eval()
    with jax.enable_x64(True):
        block, params, xs = _setup("slstm", jnp.float64, T=20, batch=2)
        p = jax.tree_util.tree_map(lambda a: torch.tensor(np.asarray(a)), params)
        mixer, cell, mlp = p.mixer, p.mixer.cell, p.mlp
        headwise = lambda w: w.transpose(1, 2)  # [heads, in, out] -> [heads, out, in]
        weights = {
            "xlstm_norm.weight": p.norm.scale,
            "xlstm.conv1d.conv.weight": mixer.conv.w.T[:, None, :],
            "xlstm.conv1d.conv.bias": mixer.conv.b,
            "xlstm.fgate.weight": headwise(cell.w_i), "xlstm.igate.weight": headwise(cell.w_f),
            "xlstm.zgate.weight": headwise(cell.w_z), "xlstm.ogate.weight": headwise(cell.w_o),
            "xlstm.slstm_cell._recurrent_kernel_":
                reference.xlstm.slstm_cell._recurrent_kernel_ext2int(cell.r),
            "xlstm.slstm_cell._bias_": cell.b,
            "xlstm.group_norm.weight": mixer.norm.scale,
            "ffn_norm.weight": p.mlp_norm.scale,
            "ffn.proj_up.weight": torch.cat([mlp.gate.w, mlp.up.w], dim=1).T,
            "ffn.proj_down.weight": mlp.down.w.T,
        }
        assert set(weights) == set(reference.state_dict())
        with torch.no_grad():
            ref = torch.func.functional_call(reference, weights, (torch.tensor(np.asarray(xs)),))
        _, ys = seqjax.unroll_batch(block, params, xs, chunkwise=True)
        _close(ys, ref.numpy(), 1e-12)


def test_mlstm_layer_checks_its_configuration():
    with pytest.raises(ValueError, match="qk_dim_factor.*num_heads"):
        mlstm_layer(64, num_heads=3, qk_dim_factor=1.0)
    with pytest.raises(ValueError, match="conv_kernel_size"):
        slstm_block(32, conv_kernel_size=-1)
    params = jax.eval_shape(lambda k: mlstm_block(64, num_heads=4).init(k, 64),
                            jax.random.PRNGKey(0))
    assert params.mixer.q.w.shape == (64, 32) and params.mlp.up.w.shape == (64, 192)
    assert params.mixer.q.b is None and params.mixer.igate.b.shape == (4,)
    assert repr(slstm_block(32)).startswith("slstm_block(d_model=32")


def test_language_model_prefill_step_generate():
    """An mLSTM / sLSTM model built from the block names (papers' defaults): prefill 40
    tokens then 30 steps == apply at T = 70; greedy generate == an argmax loop over
    apply."""
    model = lm.language_model(vocab_size=29, d_model=D, blocks=["mlstm", "slstm"])
    params = _params(model.init)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 29, 70), jnp.int32)
    apply = jax.jit(model.apply)
    full = apply(params, tokens)

    @jax.jit
    def prefill_then_step(params, tokens):
        logits, state = model.prefill(params, tokens[:40])

        def body(s, t):
            logit, s = model.step(params, t, s)
            return s, logit

        return jnp.concatenate([logits, lax.scan(body, state, tokens[40:])[1]])

    _close(prefill_then_step(params, tokens), full, 2e-5)

    prompt, steps = tokens[:12], 8
    out = model.generate(params, jax.random.PRNGKey(2), prompt, steps, greedy=True)
    seq = jnp.concatenate([prompt, jnp.zeros((steps,), prompt.dtype)])
    for i in range(steps):  # an argmax loop over apply (padded to one shape: causal)
        seq = seq.at[12 + i].set(jnp.argmax(apply(params, seq)[11 + i]).astype(seq.dtype))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(seq[12:]))
