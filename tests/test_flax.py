"""seqjax against Flax, and seqjax inside Flax.

1. Parity with Flax linen's own cells (``LSTMCell``, ``GRUCell``, ``SimpleCell``,
   ``MGUCell``): Flax initialises its cell with its own initialisers, the weights are
   copied into seqjax's fused layout by the converters below, and one step, a whole
   sequence (``nn.RNN``, including ``seq_lengths`` and ``reverse``), and the gradients
   w.r.t. inputs and params must agree.
2. The NNX adapter ``seqjax.flax.RNN``: trains with ``nnx.Optimizer``, round-trips
   through ``nnx.split``/``nnx.merge``, equals ``seqjax.unroll_batch`` with the same
   params, and drives stack dropout from ``nnx.Rngs``.
"""

import functools
import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import seqjax as sj
import seqjax.flax as sjf

B, T, I, H = 3, 5, 2, 4


def _close(a, b, tol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


# ------------------------------------------------------------ flax params -> seqjax


def _cat(*arrays):
    return jnp.concatenate(arrays, axis=-1)


def lstm_from_flax(p):
    """``ii, if, ig, io`` (no bias) and ``hi, hf, hg, ho`` (bias) -> fused ``i, f, g, o``."""
    return sj.LSTMParams(
        w_i=_cat(*(p["i" + g]["kernel"] for g in "ifgo")),
        w_h=_cat(*(p["h" + g]["kernel"] for g in "ifgo")),
        b=_cat(*(p["h" + g]["bias"] for g in "ifgo")),
    )


def gru_from_flax(p):
    """``ir, iz, in`` (bias), ``hr, hz`` (no bias), ``hn`` (bias = b_hn) -> ``r, z, n``."""
    return sj.GRUParams(
        w_i=_cat(*(p["i" + g]["kernel"] for g in "rzn")),
        w_h=_cat(*(p["h" + g]["kernel"] for g in "rzn")),
        b=_cat(*(p["i" + g]["bias"] for g in "rzn")),
        b_hn=p["hn"]["bias"],
    )


def simple_from_flax(p):
    """``i`` (bias) and ``h`` (no bias)."""
    return sj.RNNParams(w_i=p["i"]["kernel"], w_h=p["h"]["kernel"], b=p["i"]["bias"])


def mgu_from_flax(p):
    """``if, in`` (bias), ``hf`` (no bias), ``hn`` (bias = b_hn) -> ``f, n``."""
    return sj.GRUParams(
        w_i=_cat(p["if"]["kernel"], p["in"]["kernel"]),
        w_h=_cat(p["hf"]["kernel"], p["hn"]["kernel"]),
        b=_cat(p["if"]["bias"], p["in"]["bias"]),
        b_hn=p["hn"]["bias"],
    )


def _lstm_state(carry):  # Flax's carry is (c, h)
    c, h = carry
    return sj.LSTMState(h=h, c=c)


def _identity(carry):
    return carry


_noisy = nn.initializers.normal(0.5)  # non-zero biases, so that a misplaced bias shows

CASES = {
    # name: (flax cell, seqjax cell, params converter, flax carry -> seqjax state)
    "lstm": (lambda dt: nn.LSTMCell(H, bias_init=_noisy, param_dtype=dt),
             sj.lstm(H), lstm_from_flax, _lstm_state),
    "gru": (lambda dt: nn.GRUCell(H, bias_init=_noisy, param_dtype=dt),
            sj.gru(H, reset_after=True), gru_from_flax, _identity),
    "simple": (lambda dt: nn.SimpleCell(H, bias_init=_noisy, param_dtype=dt),
               sj.rnn(H), simple_from_flax, _identity),
    "mgu": (lambda dt: nn.MGUCell(H, forget_bias_init=_noisy, activation_bias_init=_noisy,
                                  param_dtype=dt),
            sj.mgu(H, reset_after=True), mgu_from_flax, _identity),
}
NAMES = sorted(CASES)


def _setup(name, dtype=jnp.float32):
    """Flax's RNN and its own init, the copied seqjax params, inputs and a random carry."""
    return _cached_setup(name, jnp.dtype(dtype).name)


@functools.lru_cache(maxsize=None)
def _cached_setup(name, dtype, seed=0):
    make, cell, convert, to_state = CASES[name]
    flax_cell = make(jnp.dtype(dtype))
    k_x, k_init, k_carry = jax.random.split(jax.random.PRNGKey(seed), 3)
    xs = jax.random.normal(k_x, (B, T, I), dtype)
    carry = jax.tree_util.tree_map(
        lambda z: jax.random.normal(k_carry, z.shape, dtype),
        flax_cell.initialize_carry(k_carry, (B, I)))
    if name == "lstm":  # different c and h, so that swapping them shows
        carry = (carry[0], -0.5 * carry[1])
    # the cell's own init (what nn.RNN(cell).init would store under "cell")
    variables = {"params": {"cell": flax_cell.init(k_init, carry, xs[:, 0])["params"]}}
    rnn = nn.RNN(flax_cell, return_carry=True)
    params = convert(variables["params"]["cell"])
    return flax_cell, rnn, variables, cell, params, xs, carry, to_state


@pytest.mark.parametrize("name", NAMES)
def test_one_step(name):
    flax_cell, _, variables, cell, params, xs, carry, to_state = _setup(name)
    count = lambda tree: sum(np.size(a) for a in jax.tree_util.tree_leaves(tree))
    assert count(variables) == count(params) == count(cell.init(jax.random.PRNGKey(0), I))
    flax_vars = {"params": variables["params"]["cell"]}
    new_carry, y_flax = flax_cell.apply(flax_vars, carry, xs[:, 0])
    state, y = jax.vmap(cell.apply, in_axes=(None, 0, 0))(params, to_state(carry), xs[:, 0])
    _close(y, y_flax, 1e-6)
    _close(state, to_state(new_carry), 1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_sequence_float64(name, x64):
    """The whole sequence (``nn.RNN`` against ``unroll_batch``) in float64, to 1e-12.
    float32 sequences are compared in test_gradients."""
    flax_cell, rnn, variables, cell, params, xs, carry, to_state = _setup(name, "float64")
    carry_flax, ys_flax = rnn.apply(variables, xs, initial_carry=carry)
    assert ys_flax.dtype == jnp.float64 and params.w_i.dtype == jnp.float64
    final, ys = sj.unroll_batch(cell, params, xs, to_state(carry), hoist=True)
    _close(ys, ys_flax, 1e-12)
    _close(final, to_state(carry_flax), 1e-12)


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_seq_lengths(name):
    """Flax ``nn.RNN(seq_lengths=...)``: the carry is the state after the last valid
    step, as ours. Flax leaves its outputs at padded steps unspecified (not zeroed);
    ours are zero, so only the valid steps are compared. With ``reverse=True,
    keep_order=True`` Flax reverses only the valid prefix, as ``unroll(reverse=True)``
    does with ``length``. (Flax's ``seq_lengths=0`` would pick the carry at index -1,
    so lengths start at 1 here.)"""
    _, rnn, variables, cell, params, xs, carry, to_state = _setup(name)
    lengths = jnp.array([T, 2, 1], jnp.int32)
    valid = (jnp.arange(T)[None, :] < lengths[:, None])[..., None]
    for reverse in (False, True):
        carry_flax, ys_flax = rnn.apply(variables, xs, initial_carry=carry, seq_lengths=lengths,
                                        reverse=reverse, keep_order=True)
        final, ys = sj.unroll_batch(cell, params, xs, to_state(carry), lengths=lengths,
                                    reverse=reverse)
        _close(final, to_state(carry_flax), 1e-5)
        _close(jnp.where(valid, ys, 0.0), jnp.where(valid, ys_flax, 0.0), 1e-5)
        np.testing.assert_array_equal(np.asarray(jnp.where(valid, 0.0, ys)), 0.0)
        # the padded steps really are padding: Flax's outputs there are not ours
        assert not np.allclose(np.asarray(jnp.where(valid, 0.0, ys_flax)), 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_sequence_and_gradients(name):
    """float32: the outputs and final state of a whole sequence, d loss / d inputs, and
    d loss / d params mapped through the (linear) converter, to 1e-5."""
    _, rnn, variables, cell, params, xs, carry, to_state = _setup(name)
    _, _, convert, _ = CASES[name]
    weights = jax.random.normal(jax.random.PRNGKey(9), (B, T, H))

    def loss_flax(v, xs):
        carry_out, ys = rnn.apply(v, xs, initial_carry=carry)
        h = carry_out[1] if name == "lstm" else carry_out
        return jnp.sum(ys * weights) + jnp.sum(h), (to_state(carry_out), ys)

    def loss_seqjax(p, xs):
        final, ys = sj.unroll_batch(cell, p, xs, to_state(carry))
        h = final.h if name == "lstm" else final
        return jnp.sum(ys * weights) + jnp.sum(h), (final, ys)

    (_, out_flax), (g_v, g_x_flax) = jax.value_and_grad(
        loss_flax, argnums=(0, 1), has_aux=True)(variables, xs)
    (_, out), (g_p, g_x) = jax.value_and_grad(
        loss_seqjax, argnums=(0, 1), has_aux=True)(params, xs)
    _close(out, out_flax, 1e-5)
    _close(g_x, g_x_flax, 1e-5)
    _close(g_p, convert(g_v["params"]["cell"]), 1e-5)
    assert float(jnp.max(jnp.abs(g_x))) > 1e-3  # not trivially zero


def test_mgu_paper_form_is_not_flax():
    """seqjax's default ``mgu`` is Zhou et al.'s form (forget gate writes the new
    state, reset before the matmul); with Flax's weights it must differ from Flax's
    ``MGUCell``, which ``mgu(reset_after=True)`` matches (test_one_step)."""
    flax_cell, _, variables, _, params, xs, carry, _ = _setup("mgu")
    _, y_flax = flax_cell.apply({"params": variables["params"]["cell"]}, carry, xs[:, 0])
    paper = sj.mgu(H)
    _, y = jax.vmap(paper.apply, in_axes=(None, 0, 0))(params._replace(b_hn=None), carry,
                                                        xs[:, 0])
    assert float(jnp.max(jnp.abs(y - y_flax))) > 1e-2


# ------------------------------------------------------------------ the NNX adapter


def test_import_uses_the_real_flax():
    """``seqjax/flax.py`` must not shadow the ``flax`` package (absolute imports)."""
    assert sjf.__name__ == "seqjax.flax"
    assert sjf.nnx is nnx
    assert nnx.__name__ == "flax.nnx"
    flax_dir = os.path.dirname(os.path.abspath(flax.__file__))
    assert flax_dir != os.path.dirname(os.path.abspath(sjf.__file__))
    assert os.path.basename(flax_dir) == "flax"
    assert issubclass(sjf.RNN, nnx.Module)


class Regressor(nnx.Module):
    def __init__(self, cell, *, rngs):
        self.rnn = sjf.RNN(cell, I, rngs=rngs)
        self.head = nnx.Linear(cell.output_size, 1, rngs=rngs)

    def __call__(self, xs, **kwargs):
        return self.head(self.rnn(xs, **kwargs)[:, -1])


def _task(n=16):
    xs = jax.random.normal(jax.random.PRNGKey(1), (n, T, I))
    return xs, jnp.sum(xs[:, :, 0], axis=1, keepdims=True)  # running sum of feature 0


def test_adapter_trains_with_nnx_optimizer():
    model = Regressor(sj.lstm(8), rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)
    xs, target = _task()

    @nnx.jit
    def train_step(model, optimizer, xs, target):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(xs) - target) ** 2))(model)
        # optax's adam mixes python floats and int32 counts: not strict-promotion clean
        with jax.numpy_dtype_promotion("standard"):
            optimizer.update(model, grads)
        return loss

    before = {k: np.asarray(v.get_value()) for k, v in
              nnx.to_flat_state(nnx.state(model, nnx.Param))}
    losses = [float(train_step(model, optimizer, xs, target)) for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0], losses
    # the RNN's own params moved, not only the head's
    after = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for name in ("w_i", "w_h", "b"):
        path = ("rnn", "params", name)
        assert not np.allclose(before[path], np.asarray(after[path].get_value()))


def test_adapter_state_split_merge_and_names():
    model = Regressor(sj.lstm(H), rngs=nnx.Rngs(0))
    forward = nnx.jit(lambda m, x: m(x))
    xs, _ = _task(4)
    paths = {path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert {("rnn", "params", n) for n in ("w_i", "w_h", "b")} <= paths
    graphdef, state = nnx.split(model)
    clone = nnx.merge(graphdef, state)
    assert isinstance(clone.rnn.cell_params(), sj.LSTMParams)
    np.testing.assert_array_equal(np.asarray(forward(clone, xs)), np.asarray(forward(model, xs)))
    # merge with other values: the output follows the state
    doubled = jax.tree_util.tree_map(lambda a: 2 * a, state)
    other = nnx.merge(graphdef, doubled)
    np.testing.assert_allclose(np.asarray(other.rnn.cell_params().w_i),
                               2 * np.asarray(model.rnn.cell_params().w_i))
    assert not np.allclose(np.asarray(forward(other, xs)), np.asarray(forward(model, xs)))
    # and eagerly, outside nnx.jit
    np.testing.assert_allclose(np.asarray(model(xs)), np.asarray(forward(model, xs)),
                               rtol=1e-6, atol=1e-6)


def test_adapter_equals_unroll_batch():
    cell = sj.gru(H)
    layer = sjf.RNN(cell, I, rngs=nnx.Rngs(3))
    params = jax.tree_util.tree_map(lambda v: v[...], layer.params,
                                    is_leaf=lambda v: isinstance(v, nnx.Variable))
    # init draws from the params stream exactly as cell.init does
    _close(params, cell.init(nnx.Rngs(3).params(), I), 0.0)
    xs, _ = _task(B)
    lengths = jnp.array([T, 3, 1], jnp.int32)
    h0 = jax.random.normal(jax.random.PRNGKey(4), (B, H))
    final, ys = layer(xs, lengths=lengths, initial_state=h0, return_state=True)
    _close((final, ys), sj.unroll_batch(cell, params, xs, h0, lengths=lengths), 1e-6)
    _close(layer(xs), sj.unroll_batch(cell, params, xs)[1], 1e-6)
    assert layer.initial_state(B).shape == (B, H)
    backward = sjf.RNN(cell, I, rngs=nnx.Rngs(3), reverse=True)
    _close(backward(xs, lengths=lengths),
           sj.unroll_batch(cell, params, xs, lengths=lengths, reverse=True)[1], 1e-6)


def test_adapter_sequence_model_and_stack():
    model = sj.bidirectional(sj.lstm(H), sj.stack(sj.gru(3), sj.rnn(2)))
    layer = sjf.RNN(model, I, rngs=nnx.Rngs(5))
    xs, _ = _task(B)
    lengths = jnp.array([T, 2, 4], jnp.int32)
    ys = layer(xs, lengths=lengths)
    assert ys.shape == (B, T, H + 2)
    _close(ys, sj.unroll_batch(model, layer.cell_params(), xs, lengths=lengths)[1], 1e-6)
    paths = {path for path, _ in nnx.to_flat_state(nnx.state(layer, nnx.Param))}
    assert ("params", "forward", "w_i") in paths and ("params", "backward", 1, "w_h") in paths
    with pytest.raises(ValueError, match="reverse"):
        sjf.RNN(model, I, rngs=nnx.Rngs(0), reverse=True)
    with pytest.raises(TypeError, match="Cell or SequenceModel"):
        sjf.RNN(nn.LSTMCell(H), I, rngs=nnx.Rngs(0))


def test_adapter_dropout():
    cell = sj.stack(sj.lstm(H), sj.lstm(H), dropout=0.5)
    xs, _ = _task(B)
    layer = sjf.RNN(cell, I, rngs=nnx.Rngs(0, dropout=1))
    params = layer.cell_params()
    clean = sj.unroll_batch(cell, params, xs)[1]
    # training mode (the default) draws a fresh key from the module's "dropout" stream
    # on every call; under nnx.jit the stream's counter is module state
    forward = nnx.jit(lambda m, x: m(x))
    y1, y2 = forward(layer, xs), forward(layer, xs)
    assert not np.allclose(np.asarray(y1), np.asarray(clean))
    assert not np.allclose(np.asarray(y1), np.asarray(y2))
    # an explicit key is used as given
    key = jax.random.PRNGKey(7)
    _close(layer(xs, rngs=key), sj.unroll_batch(cell, params, xs, rng=key)[1], 1e-6)
    # eval mode: no dropout
    layer.eval()
    assert layer.deterministic
    _close(forward(layer, xs), clean, 1e-6)
    layer.train()
    assert not layer.deterministic
    # no dropout stream anywhere and dropout declared: refuse to train silently without
    bare = sjf.RNN(cell, I, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dropout"):
        bare(xs)
