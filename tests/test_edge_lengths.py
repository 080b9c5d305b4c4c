"""Sequences of length 0 and 1, for every cell, unroll strategy and form.

* ``T = 0``: :func:`seqjax.unroll` and :func:`seqjax.unroll_batch` return empty outputs
  ``[0, H]`` (``[B, 0, H]``) and the initial state, or the state given, untouched; the
  gradient of ``sum(outputs) + sum(final state)`` is exactly zero for the params and
  exactly one for the given state (the final state *is* it).
* ``T = 1``: the unroll equals one ``cell.apply`` step, values and gradients, with and
  without ``length``/``lengths`` (``0`` leaves the state as given and the output zero).

Every strategy that changes the path is run: the associative, sequential (hoisted
coefficients) and stepped scans and the Pallas kernel of linear cells; the plain,
hoisted, fused and Pallas paths of gated cells; the chunkwise, stepped and default
(stepped value, chunkwise derivative) forms of matrix cells; ``reverse`` and ``remat``;
stacks and bidirectional models. At ``T = 0`` every cell meets every strategy of its
kind; at ``T = 1``, where each case costs a compilation of a second or more, see
``ONE_STEP``. Before, linear cells raised an ``IndexError`` from inside JAX at ``T = 0``
and the fused backward pass a scan-length mismatch.

One ``jax.jit`` per case and length serves every check (lengths are traced arguments,
so ``length = 0`` and ``length = 1`` share the compilation).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import seqjax as sj

H, I = 4, 3
_leaves = jax.tree_util.tree_leaves
_map = jax.tree_util.tree_map
# compiling is most of this file's time: the cheaper XLA pipeline (same numbers to the
# tolerance here) and numpy for everything outside the compiled functions
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                    "xla_llvm_disable_expensive_passes": True})


def _models():
    """``name -> (model, input_size)``; lru, rg_lru and s6 need input_size == H."""
    return {
        "rnn": (sj.rnn(H), I),
        "lstm": (sj.lstm(H), I),
        "gru": (sj.gru(H), I),
        "gru_before": (sj.gru(H, reset_after=False), I),
        "mgu": (sj.mgu(H), I),
        "slstm": (sj.slstm(H, num_heads=2), I),
        "min_gru": (sj.min_gru(H), I),
        "min_lstm": (sj.min_lstm(H), I),
        "lru": (sj.lru(H, 3), H),
        "rg_lru": (sj.rg_lru(H, num_heads=2), H),
        "s6": (sj.s6(H, state_size=3), H),
        "mlstm": (sj.mlstm(H, num_heads=2), I),
        "delta_net": (sj.delta_net(H, num_heads=1), I),
        "gated_delta_net": (sj.gated_delta_net(H, num_heads=2), I),
        "mamba2": (sj.mamba2(H, num_heads=2, state_size=3), I),
        "stack": (sj.stack(sj.lstm(H), sj.min_gru(H), residual=True), I),
        "bidirectional": (sj.bidirectional(sj.lstm(H), sj.min_gru(H)), I),
    }


MODELS = _models()

# Every option of unroll that changes the path, for every kind of cell; reverse and
# remat ride along (remat changes nothing below T = 2, which is what is checked).
_GATED = [dict(hoist=False, fused=False, remat=True), dict(hoist=True, fused=False),
          dict(hoist=False, fused=True, reverse=True), dict(hoist=True, fused=True),
          dict(pallas=True, reverse=True)]
_RESET_BEFORE = [dict(hoist=False, remat=True), dict(hoist=True, reverse=True)]
_LINEAR = [dict(associative=True, reverse=True, remat=True),
           dict(associative=False, hoist=True), dict(associative=False, hoist=False),
           dict(pallas=True, reverse=True)]
# chunkwise=None, the default: on CPU the stepped scan's value, and under jax.grad the
# chunkwise form's value and derivative
_MATRIX = [dict(chunkwise=True, reverse=True), dict(chunkwise=False, remat=True), dict()]
_COMPOSED = {"stack": [dict(), dict(reverse=True, remat=True, associative=True, hoist=True,
                                    fused=True)],
             "bidirectional": [dict(), dict(associative=True, fused=True, remat=True)]}

# T = 0 (cheap: XLA drops loops of no steps): every cell with every strategy of its kind.
EMPTY = dict(
    rnn=_GATED, lstm=_GATED, gru=_GATED, slstm=_GATED, gru_before=_RESET_BEFORE,
    mgu=_RESET_BEFORE, min_gru=_LINEAR, min_lstm=_LINEAR, lru=_LINEAR, rg_lru=_LINEAR,
    s6=_LINEAR, mlstm=_MATRIX, delta_net=_MATRIX, gated_delta_net=_MATRIX, mamba2=_MATRIX,
    **_COMPOSED)
# T = 1 (compiling a step costs about a second, a chunkwise form several): every strategy
# for the cells that stand for their kind (lstm; min_gru; lru, whose state is complex;
# mlstm), and every other cell on the strategies whose code is furthest from its
# ``apply``: the fused backward pass, the Pallas kernels, the associative scan, the
# chunkwise form (for delta_net, gated_delta_net and mamba2, that of the default, which
# jax.grad evaluates).
ONE_STEP = dict(
    rnn=_GATED[2:5:2], lstm=_GATED, gru=_GATED[2:5:2], slstm=_GATED[2:5:2],
    gru_before=_RESET_BEFORE, mgu=_RESET_BEFORE[1:], min_gru=_LINEAR,
    min_lstm=_LINEAR[::3], lru=_LINEAR, rg_lru=_LINEAR[::3], s6=_LINEAR[::3], mlstm=_MATRIX,
    delta_net=[dict(reverse=True)], gated_delta_net=[dict(reverse=True)],
    mamba2=[dict(reverse=True)], **_COMPOSED)


def _cases(strategies):
    cases = [(name, options) for name, chosen in strategies.items() for options in chosen]
    ids = [name + "".join(f"-{k}={v}" for k, v in options.items()) for name, options in cases]
    return dict(argvalues=cases, ids=ids)


@functools.lru_cache(maxsize=None)
def _setup(name):
    """``(model, params, a given state)``, drawn with numpy (nothing to compile): params
    ``N(0, 0.5^2)`` in the shapes ``init`` builds, a state away from zero (positive, so
    that the sLSTM's and mLSTM's normalisers stay positive)."""
    model, size = MODELS[name]
    rng = np.random.default_rng(0)

    def draw(struct, low=None):
        if low is None:
            value = 0.5 * rng.standard_normal(struct.shape)
        else:
            value = rng.uniform(low, 1.0, struct.shape)
        return np.asarray(value).astype(struct.dtype)

    params = _map(draw, jax.eval_shape(lambda k: model.init(k, size), jax.random.PRNGKey(0)))
    state = _map(lambda s: draw(s, 0.5), jax.eval_shape(model.initial_state, params))
    return model, params, state


def _loss(ys, final):
    """``sum(outputs) + sum(final state)`` (real parts of a complex state)."""
    return jnp.sum(ys) + sum(jnp.sum(jnp.real(s)) for s in _leaves(final))


def _pair(state):
    """The state of a batch of two: ``state`` and ``2 * state``."""
    return _map(lambda s: np.stack([s, 2 * s]), state)


@functools.lru_cache(maxsize=None)
def _runner(name, options_items):
    """One jitted function computing everything a case checks, for the ``xs`` (and so
    the ``T``) it is called with; ``length`` and ``lengths`` are traced, so one
    compilation serves every value of them."""
    model, _, _ = _setup(name)
    options = dict(options_items)

    def with_grad(unroll):
        """``unroll(params, state)`` and the gradient of its loss, from one forward pass."""
        def loss(params, state):
            final, ys = unroll(params, state)
            return _loss(ys, final), (final, ys)

        def both(params, state):
            (_, out), grad = jax.value_and_grad(loss, (0, 1), has_aux=True)(params, state)
            return out, grad

        return both

    def run(params, state, states, xs, length, lengths):
        pair = jnp.stack([xs, 2 * xs])
        given, grad = with_grad(lambda p, s: sj.unroll(model, p, xs, s, **options))(
            params, state)
        batch, grad_lengths = with_grad(lambda p, s: sj.unroll_batch(
            model, p, pair, s, lengths=lengths, **options))(params, states)
        out = dict(given=given, grad=grad, lengths=batch, grad_lengths=grad_lengths)
        if xs.shape[0] == 0:  # the entry points' other forms: cheap here, and at T = 1
            # the same machinery as the two above
            out.update(initial=sj.unroll(model, params, xs, **options),
                       length=sj.unroll(model, params, xs, state, length=length, **options),
                       batch=sj.unroll_batch(model, params, pair, **options))
        return out

    return _jit(run)


def _step(model, params, state, x):
    """One step of ``model`` from ``state``: ``(state, y)``; a bidirectional model's
    two directions each take it."""
    if isinstance(model, sj.SequenceModel):  # bidirectional: both directions, one step
        (sf, yf), (sb, yb) = (model.forward.apply(params.forward, state[0], x),
                              model.backward.apply(params.backward, state[1], x))
        return (sf, sb), jnp.concatenate([yf, yb])
    return model.apply(params, state, x)


@functools.lru_cache(maxsize=None)
def _reference(name):
    """Jitted: one ``apply`` step from the given state, and the gradient of its loss."""
    model, _, _ = _setup(name)

    def step(params, state, x):
        final, y = _step(model, params, state, x)
        return final, y[None]

    def both(params, state, x):
        grad = jax.grad(lambda p, s: _loss(*step(p, s, x)[::-1]), (0, 1))(params, state)
        return step(params, state, x), grad

    return _jit(both)


def _same(got, want, what, exact=False):
    got, want = _leaves(got), _leaves(want)
    assert len(got) == len(want), what
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype, (what, g.shape, w.shape, g.dtype,
                                                           w.dtype)
        if exact:
            np.testing.assert_array_equal(g, w, err_msg=what)
        else:
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=what)


def _finite(tree, what):
    for leaf in _leaves(tree):
        assert np.all(np.isfinite(np.asarray(leaf))), what


@pytest.mark.parametrize("name, options", **_cases(EMPTY))
def test_empty_sequences_return_the_state_they_were_given(name, options):
    model, params, state = _setup(name)
    xs = np.zeros((0, MODELS[name][1]), np.float32)
    out = _runner(name, tuple(options.items()))(params, state, _pair(state), xs, np.int32(0),
                                                np.zeros(2, np.int32))
    initial = _map(np.zeros_like, state)
    empty = np.zeros((0, model.output_size), np.float32)
    _same(out["initial"], (initial, empty), "no state given", exact=True)
    _same(out["given"], (state, empty), "a state given", exact=True)
    _same(out["length"], (state, empty), "length=0", exact=True)
    _same(out["batch"], (_pair(initial), np.stack([empty, empty])), "unroll_batch", exact=True)
    _same(out["lengths"], (_pair(state), np.stack([empty, empty])),
          "unroll_batch, lengths=[0, 0]", exact=True)
    # nothing ran: the params get no gradient, the state passes through to the final one
    zeros = _map(np.zeros_like, params)
    _same(out["grad"], (zeros, _map(np.ones_like, state)), "gradient", exact=True)
    _same(out["grad_lengths"], (zeros, _map(np.ones_like, _pair(state))),
          "gradient, lengths=[0, 0]", exact=True)


@pytest.mark.parametrize("name, options", **_cases(ONE_STEP))
def test_one_step_equals_apply(name, options):
    model, params, state = _setup(name)
    x = np.random.default_rng(2).standard_normal((1, MODELS[name][1])).astype(np.float32)
    run = _runner(name, tuple(options.items()))
    (final, ys), (d_params, d_state) = _reference(name)(params, state, x[0])
    double = _map(lambda s: 2 * s, state)
    (final_2, ys_2), (d_params_2, d_state_2) = _reference(name)(params, double, 2 * x[0])
    stack = lambda *trees: _map(lambda *leaves: np.stack(leaves), *trees)  # noqa: E731
    zero, ones = np.zeros_like(ys), _map(np.ones_like, state)

    out = run(params, state, _pair(state), x, np.int32(1), np.array([1, 0], np.int32))
    _same(out["given"], (final, ys), "unroll")
    _same(out["grad"], (d_params, d_state), "gradient")
    # example 0 takes its step, example 1 (length 0) keeps its state
    _same(out["lengths"], (stack(final, double), stack(ys, zero)),
          "unroll_batch, lengths=[1, 0]")
    _same(out["grad_lengths"], (d_params, stack(d_state, ones)), "gradient, lengths=[1, 0]")
    _finite(out, "lengths=[1, 0]")

    out = run(params, state, _pair(state), x, np.int32(0), np.array([0, 1], np.int32))
    _same(out["lengths"], (stack(state, final_2), stack(zero, ys_2)),
          "unroll_batch, lengths=[0, 1]")
    _same(out["grad_lengths"], (d_params_2, stack(ones, d_state_2)), "gradient, lengths=[0, 1]")
    _finite(out, "lengths=[0, 1]")
