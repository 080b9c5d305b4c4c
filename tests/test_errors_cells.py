"""What the cells, :func:`seqjax.unroll`, :func:`seqjax.unroll_batch`, stacks and
bidirectional models reject, and the messages they give.

Every rejection here happens in Python before anything is compiled, so a jitted
caller fails at trace time with the same message. Each test could fail: it either
expects an error that was missing before (or came from deep inside JAX), or checks
the exact wording that names the cell, the field and both shapes.

The reference for "what the params should be" is the cell's own ``init``; the
registry of cells is ``tests/test_unroll.py``'s ``_cells()``, so cells added there
are covered here too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import seqjax as sj
from test_unroll import _cells

T, I, H = 7, 4, 4
KEY = jax.random.PRNGKey(0)
XS = jnp.ones((T, I))
CELLS = _cells()


def _shapes(cell, input_size=I):
    """What ``cell.init`` builds, as ``jax.ShapeDtypeStruct`` leaves: params that are
    rejected never reach a computation, so they need no values (and no time)."""
    return jax.eval_shape(lambda k: cell.init(k, input_size), KEY)


# ------------------------------------------------------------------ inputs, lengths


def test_bad_inputs_raise_clear_errors():
    cell = sj.lstm(H)
    params = _shapes(cell)
    with pytest.raises(ValueError, match=r"\[time, 4\].*\(7, 5\)"):
        sj.unroll(cell, params, jnp.ones((T, 5)))
    with pytest.raises(ValueError, match=r"rank 3.*unroll_batch"):
        sj.unroll(cell, params, jnp.ones((2, T, I)))
    with pytest.raises(TypeError, match="floating dtype.*int32"):
        sj.unroll(cell, params, jnp.ones((T, I), jnp.int32))
    with pytest.raises(ValueError, match=r"\[0, 7\]"):
        sj.unroll(cell, params, XS, length=-1)
    with pytest.raises(ValueError, match=r"\[0, 7\]"):
        sj.unroll(cell, params, XS, length=8)
    with pytest.raises(TypeError, match="integer"):
        sj.unroll(cell, params, XS, length=2.5)
    with pytest.raises(ValueError, match=r"lengths: expected shape \[2\]"):
        sj.unroll_batch(cell, params, jnp.ones((2, T, I)), lengths=jnp.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"\[0, 7\]"):
        sj.unroll_batch(cell, params, jnp.ones((2, T, I)), lengths=jnp.array([1, 9]))
    with pytest.raises(ValueError, match=r"\[batch, time, 4\]"):
        sj.unroll_batch(cell, params, XS)
    with pytest.raises(ValueError, match=r"shape \[4\]"):
        cell.apply(params, cell.initial_state(params), jnp.ones((2, I)))
    with pytest.raises(ValueError, match="positive int"):
        sj.lstm(0)
    with pytest.raises(ValueError, match="input_size == hidden_size"):
        sj.lru(4, 8).init(KEY, 3)
    with pytest.raises(TypeError, match="Cell"):
        sj.unroll(lambda p, s, x: (s, x), params, XS)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['revers'\]"):
        sj.unroll_batch(cell, params, jnp.ones((2, T, I)), revers=True)


def test_errors_are_raised_before_tracing():
    """The check runs in Python, so a jitted caller fails at trace time with our message,
    not inside XLA."""
    cell = sj.gru(H)
    params = _shapes(cell)
    run = jax.jit(lambda xs: sj.unroll(cell, params, xs))
    with pytest.raises(ValueError, match=r"expected xs of shape \[time, 4\]"):
        run(jnp.ones((T, 3)))
    bad = _shapes(sj.gru(H + 1))
    with pytest.raises(ValueError, match=r"(?s)unroll: gru\(hidden_size=4.*GRUParams\.w_h: "
                                         r"expected float32\[4, 12\], got float32\[5, 15\]"):
        jax.jit(lambda p: sj.unroll(cell, p, XS))(bad)
    with pytest.raises(ValueError, match="GRUParams.w_h"):  # under grad: tracers, same check
        jax.eval_shape(jax.grad(lambda p: jnp.sum(sj.unroll(cell, p, XS)[1])), bad)


def test_traced_lengths_are_clipped_and_checkify_reports_them():
    """Documented: a traced length outside [0, T] acts as if clipped; under checkify it
    raises with the message a concrete length gets."""
    cell = sj.rnn(H)
    params = jax.tree_util.tree_map(lambda a: jnp.full(a.shape, 0.1, a.dtype), _shapes(cell))
    run = jax.jit(lambda n: sj.unroll(cell, params, XS, length=n)[1])
    np.testing.assert_array_equal(run(T + 2), run(T))
    np.testing.assert_array_equal(run(-2), np.zeros((T, H)))
    checked = checkify.checkify(run)
    err, _ = checked(T + 2)
    with pytest.raises(checkify.JaxRuntimeError, match=r"length must lie in \[0, 7\].* 9 to 9"):
        err.throw()
    err, _ = checked(3)
    assert err.get() is None


# ------------------------------------------------------------------------- params


def test_params_of_another_cell_are_named():
    """The cases of issue 10, one by one: each used to fail deep inside JAX or, for the
    two GRU forms, to run silently with the wrong params."""
    with pytest.raises(ValueError, match=r"unroll: lstm\(hidden_size=8.*expected "
                                         r"LSTMParams\(w_i, w_h, b\), got GRUParams"):
        sj.unroll(sj.lstm(8), _shapes(sj.gru(8)), XS)
    with pytest.raises(ValueError) as info:
        sj.unroll(sj.lstm(16), _shapes(sj.lstm(8)), XS)
    assert "LSTMParams.w_h: expected float32[16, 64], got float32[8, 32]" in str(info.value)
    assert "LSTMParams.w_i: expected float32[4, 64], got float32[4, 32]" in str(info.value)
    with pytest.raises(ValueError, match=r"expected GRUParams\(w_i, w_h, b, b_hn\), got "
                                         r"LSTMParams"):
        sj.unroll(sj.gru(8), _shapes(sj.lstm(8)), XS)
    # silent before: the reset-after params' b_hn was ignored by the reset-before cell
    with pytest.raises(ValueError, match=r"reset_after=False.*GRUParams\.b_hn: expected "
                                         r"None, got float32\[8\]"):
        sj.unroll(sj.gru(8, reset_after=False), _shapes(sj.gru(8)), XS)
    with pytest.raises(ValueError, match=r"GRUParams\.b_hn: expected float32\[8\], got None"):
        sj.unroll(sj.gru(8), _shapes(sj.gru(8, reset_after=False)), XS)
    # no w_i to read the input size from: still a clear message
    with pytest.raises(ValueError, match=r"do not belong to this cell: expected "
                                         r"LSTMParams\(w_i, w_h, b\), got MinParams\(w, b\)"):
        sj.unroll(sj.lstm(8), _shapes(sj.min_gru(8)), XS)
    with pytest.raises(ValueError, match=r"unroll_batch: lstm.*got GRUParams"):
        sj.unroll_batch(sj.lstm(8), _shapes(sj.gru(8)), XS[None])
    with pytest.raises(ValueError, match=r"apply: lstm.*got GRUParams"):
        sj.lstm(8).apply(_shapes(sj.gru(8)), sj.LSTMState(jnp.zeros(8), jnp.zeros(8)), XS[0])
    with pytest.raises(ValueError, match=r"initial_state: lstm.*got GRUParams"):
        sj.lstm(8).initial_state(_shapes(sj.gru(8)))
    with pytest.raises(ValueError, match=r"lru\(hidden_size=4.*5 input features, which "
                                         r"lru\.init rejects.*input_size == hidden_size"):
        sj.unroll(sj.lru(4, 3), _shapes(sj.lru(5, 3), 5), XS)


def _perturbed(params):
    """The params with their first array one element short on its last axis, and the
    ``Type.field`` that names it."""
    paths, tree = jax.tree_util.tree_flatten_with_path(params)
    leaves = [leaf for _, leaf in paths]
    i = next(j for j, leaf in enumerate(leaves) if leaf.ndim >= 1 and leaf.shape[-1] > 1)
    leaves[i] = jax.ShapeDtypeStruct(leaves[i].shape[:-1] + (leaves[i].shape[-1] - 1,),
                                     leaves[i].dtype)
    return jax.tree_util.tree_unflatten(tree, leaves), jax.tree_util.keystr(paths[i][0])


def _cast(tree, dtype, last_only=False):
    leaves, structure = jax.tree_util.tree_flatten(tree)
    cast = [jax.ShapeDtypeStruct(l.shape, dtype) if (not last_only or i == len(leaves) - 1)
            else l for i, l in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(structure, cast)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_every_cell_checks_its_params(name):
    """Wrong shape, foreign params and mixed dtypes, for every cell in the registry."""
    cell = CELLS[name]
    params = _shapes(cell)
    layer = None
    if cell.layers is not None:  # a stack: damage layer 1, the message names it
        layer = 1
        inner, field = _perturbed(params[1])
        bad = params[:1] + (inner,) + params[2:]
        owner = params[1]
    else:
        bad, field = _perturbed(params)
        owner = params
    with pytest.raises(ValueError) as info:
        sj.unroll(cell, bad, XS)
    message = str(info.value)
    assert message.startswith(f"unroll: {cell!r}"), message
    assert f"{type(owner).__name__}{field}: expected" in message, message
    if layer is not None:
        assert f"layer {layer}: " in message, message

    # params of a cell with another structure
    other = sj.lru(H, 3) if type(owner).__name__ != "LRUParams" else sj.lstm(H)
    foreign = _shapes(other)
    if layer is not None:
        foreign = params[:1] + (foreign,) + params[2:]
    with pytest.raises(ValueError, match=r"params do not (match|belong)"):
        sj.unroll(cell, foreign, XS)

    # one leaf in another dtype than init built it with: named, both fields
    if len(jax.tree_util.tree_leaves(params)) > 1:
        with pytest.raises(TypeError, match=r"params mix dtypes: .* is float32 but .* is "
                                            r"float16.*param_dtype"):
            sj.unroll(cell, _cast(params, jnp.float16, last_only=True), XS)
    # a cast of all params together is the documented way to change their dtype; a
    # cell that cannot compute in that dtype says so instead of failing inside JAX
    try:
        assert cell.input_size(_cast(params, jnp.float16)) == I
    except TypeError as e:
        assert "does not run with its params cast to float16" in str(e), str(e)


def test_a_uniform_cast_runs_or_is_refused_by_name():
    lstm = sj.lstm(H)
    half = _cast(_shapes(lstm), jnp.bfloat16)
    assert jax.eval_shape(lambda p: sj.unroll(lstm, p, XS)[1], half).dtype == jnp.bfloat16
    lru = sj.lru(H, 3)  # its state is complex: no 16-bit floats
    with pytest.raises(TypeError, match=r"unroll: lru\(hidden_size=4.*does not run with its "
                                        r"params cast to float16 \(TypeError: complex"):
        sj.unroll(lru, _cast(_shapes(lru), jnp.float16), XS)


def test_params_check_is_per_member_under_vmap():
    """An ensemble: under ``jax.vmap`` over params, the cell sees one member's params,
    which pass the check, and the result equals each member on its own."""
    cell, xs = sj.rnn(H), XS[:3]
    params = jax.tree_util.tree_map(lambda a: jnp.linspace(-1, 1, a.size).reshape(a.shape),
                                    _shapes(cell))
    stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, 0.5 * a, -a]), params)
    ys = jax.jit(jax.vmap(lambda p: sj.unroll(cell, p, xs)[1]))(stacked)
    one = jax.jit(lambda p: sj.unroll(cell, p, xs)[1])
    for m in range(3):
        member = jax.tree_util.tree_map(lambda a: a[m], stacked)
        np.testing.assert_allclose(ys[m], one(member), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"(?s)got float32\[3, 4, 4\].*one extra leading "
                                         r"axis of 3: params of an ensemble\? Map over it"):
        sj.unroll(cell, stacked, xs)  # the ensemble without the vmap


# -------------------------------------------------------------------------- state


def test_state_errors_name_the_field_and_the_batch_axis():
    cell = sj.lstm(8)
    params = _shapes(cell)
    zeros = sj.LSTMState(jnp.zeros(8), jnp.zeros(8))
    with pytest.raises(ValueError, match=r"unroll_batch: the state is missing its leading "
                                         r"batch axis of 3: expected shapes \[\(3, 8\), "
                                         r"\(3, 8\)\], got \[\(8,\), \(8,\)\]"):
        sj.unroll_batch(cell, params, jnp.ones((3, 6, I)), zeros)
    with pytest.raises(ValueError, match=r"expected state shapes \[\(3, 8\), \(3, 8\)\] "
                                         r"\(with a leading batch axis of 3\), got "
                                         r"\[\(2, 8\), \(2, 8\)\]"):
        sj.unroll_batch(cell, params, jnp.ones((3, 6, I)),
                        jax.tree_util.tree_map(lambda s: jnp.stack([s, s]), zeros))
    half = jax.tree_util.tree_map(lambda s: s.astype(jnp.float16), zeros)
    with pytest.raises(TypeError, match=r"unroll: state\.h must have dtype float32.*got "
                                        r"float16"):
        sj.unroll(cell, params, XS, half)
    with pytest.raises(TypeError, match=r"apply: state\.h must have dtype float32"):
        cell.apply(params, half, XS[0])
    with pytest.raises(ValueError, match=r"unroll: state: expected LSTMState\(h, c\), got "
                                         r"float32\[8\]"):
        sj.unroll(cell, params, XS, jnp.zeros(8))  # an LSTM needs (h, c)
    with pytest.raises(ValueError, match=r"expected state shapes \[\(8,\), \(8,\)\], got "
                                         r"\[\(3,\), \(3,\)\]"):
        sj.unroll(cell, params, XS, sj.LSTMState(jnp.zeros(3), jnp.zeros(3)))
    lru = sj.lru(H, 3)  # a complex state
    with pytest.raises(TypeError, match=r"state must have dtype complex64.*got float32"):
        sj.unroll(lru, _shapes(lru, H), XS, jnp.zeros(3))


# ----------------------------------------------------------- stacks, bidirectional


def test_mismatched_stacks_raise():
    with pytest.raises(ValueError, match="residual.*equal sizes"):
        sj.stack(sj.gru(4), sj.gru(5), residual=True)
    cell = sj.stack(sj.gru(4), sj.gru(5))
    params = _shapes(cell, 3)
    with pytest.raises(ValueError, match="a stack of 2 layers expects a tuple of 2 params, "
                                         "got tuple of length 1"):
        sj.unroll(cell, params[:1], jnp.ones((T, 3)))
    wrong = (params[0], _shapes(sj.gru(5), 3))  # layer 1 expects 4, gets 3
    with pytest.raises(ValueError, match="layer 1 params expect 3 input features but layer 0 "
                                         "outputs 4"):
        sj.unroll(cell, wrong, jnp.ones((T, 3)))
    swapped = (_shapes(sj.lstm(4), 3), params[1])
    with pytest.raises(ValueError, match=r"unroll: stack\(.*\) layer 0: gru\(hidden_size=4.*"
                                         r"got LSTMParams"):
        sj.unroll(cell, swapped, jnp.ones((T, 3)))
    with pytest.raises(TypeError, match="part 1"):
        sj.stack(sj.gru(4), "lstm")


def test_bidirectional_names_the_direction_and_the_merge():
    with pytest.raises(ValueError, match=r"merge=add cannot combine the forward outputs "
                                         r"\[T, 8\] with the backward outputs \[T, 16\]"):
        sj.bidirectional(sj.lstm(8), sj.gru(16), merge=sj.add)
    with pytest.raises(TypeError, match="merge must be a function"):
        sj.bidirectional(sj.lstm(8), sj.gru(8), merge="concat")
    model = sj.bidirectional(sj.lstm(8), sj.gru(8))
    params = _shapes(model)
    swapped = sj.BidirectionalParams(params.backward, params.forward)
    with pytest.raises(ValueError, match=r"unroll: bidirectional\(.*\) forward direction: "
                                         r"lstm\(hidden_size=8.*got GRUParams"):
        sj.unroll(model, swapped, XS)
    with pytest.raises(ValueError, match=r"unroll_batch: bidirectional.*forward direction"):
        sj.unroll_batch(model, swapped, XS[None])
    with pytest.raises(ValueError, match=r"params must be BidirectionalParams\(forward, "
                                         r"backward\), got a tuple of 2"):
        sj.unroll(model, tuple(params), XS)
    with pytest.raises(ValueError, match=r"unroll: state\[0\]: expected LSTMState\(h, c\)"):
        sj.unroll(model, params, XS, (jnp.zeros(8), jnp.zeros(8)))
    deep = sj.stack(model, sj.lstm(3))
    with pytest.raises(ValueError, match="layer 1 params expect 8 input features but layer 0 "
                                         "outputs 16"):
        sj.unroll(deep, (params, _shapes(sj.lstm(3), 8)), XS)


# ------------------------------------------------------------------ configuration

# (construction, what the message must say): configuration that makes a cell
# non-decaying or undefined is refused when the cell is built, naming the argument,
# the allowed range and the value given. Odd but defined choices (a forget bias of -3,
# a phase range past 2 pi, dt_scale=0) are not refused.
_REFUSED = {
    "rg_lru c=0": (lambda: sj.rg_lru(H, c=0.0),
                   r"rg_lru: c must be a finite number > 0 \(a_t = sigmoid\(Lambda\)\^\(c r_t\) "
                   r"must decay; c <= 0 makes a_t >= 1.*\), got c=0\.0"),
    "rg_lru c<0": (lambda: sj.rg_lru(H, c=-8),
                   r"rg_lru: c must be a finite number > 0 .*got c=-8$"),
    "rg_lru c=nan": (lambda: sj.rg_lru(H, c=float("nan")), r"c must be a finite number > 0.*c=nan"),
    "rg_lru r_max=1": (lambda: sj.rg_lru(H, r_max=1.0),
                       r"rg_lru needs 0 < r_min < r_max < 1, got r_min=0\.9, r_max=1\.0"),
    "rg_lru max_sqrt_gradient=0": (lambda: sj.rg_lru(H, max_sqrt_gradient=0.0),
                                   r"max_sqrt_gradient must be positive or None, got 0\.0"),
    "rg_lru heads": (lambda: sj.rg_lru(6, num_heads=4),
                     r"hidden_size \(6\) must be divisible by num_heads \(4\)"),
    "lru r_max=1": (lambda: sj.lru(H, 3, r_max=1.0),
                    r"lru needs 0 <= r_min < r_max < 1 \(\|lambda\| = 1 does not decay.*\), got "
                    r"r_min=0\.9, r_max=1\.0"),
    "lru r_min>r_max": (lambda: sj.lru(H, 3, r_min=0.99, r_max=0.9),
                        r"lru needs 0 <= r_min < r_max < 1.*r_min=0\.99, r_max=0\.9"),
    "lru max_phase=0": (lambda: sj.lru(H, 3, max_phase=0.0),
                        r"lru: max_phase must be a finite number > 0 \(theta_log = log\(max_phase "
                        r"\* u\) is undefined otherwise\), got max_phase=0\.0"),
    "s6 dt_max=inf": (lambda: sj.s6(H, dt_max=float("inf")),
                      r"s6: dt_max must be a finite number, got dt_max=inf"),
    "s6 dt_min=0": (lambda: sj.s6(H, dt_min=0.0),
                    r"s6 needs 0 < dt_min <= dt_max, got dt_min=0\.0"),
    "s6 dt_init_floor=nan": (lambda: sj.s6(H, dt_init_floor=float("nan")),
                             r"s6: dt_init_floor must be a finite number, got dt_init_floor=nan"),
    "s6 state_size=0": (lambda: sj.s6(H, state_size=0),
                        r"state_size must be a positive int, got 0"),
    "mamba2 norm_eps=0": (lambda: sj.mamba2(H, num_heads=2, norm_eps=0.0),
                          r"mamba2: norm_eps must be a finite number > 0 \(it keeps the gated "
                          r"RMSNorm's rsqrt.*\), got norm_eps=0\.0"),
    "mamba2 a_init_range": (lambda: sj.mamba2(H, num_heads=2, a_init_range=(1.0, float("inf"))),
                            r"mamba2: a_init_range\[1\] must be a finite number, got "
                            r"a_init_range\[1\]=inf"),
    "mlstm eps=0": (lambda: sj.mlstm(H, num_heads=2, eps=0.0),
                    r"mlstm: eps must be a finite number > 0 \(it keeps the denominator "
                    r"max\(\|n\^T q\|, exp\(-m\)\) \+ eps of h~ positive.*\), got eps=0\.0"),
    "mlstm norm_eps<0": (lambda: sj.mlstm(H, num_heads=2, norm_eps=-1e-5),
                         r"mlstm: norm_eps must be a finite number > 0 .*got norm_eps=-1e-05"),
    "delta_net norm_eps=0": (lambda: sj.delta_net(H, norm_eps=0),
                             r"delta_net: norm_eps must be a finite number > 0 \(it keeps the "
                             r"RMSNorm's rsqrt\(mean\(o\^2\) \+ norm_eps\) finite where o = 0\), "
                             r"got norm_eps=0"),
    "gated_delta_net norm_eps": (lambda: sj.gated_delta_net(H, norm_eps=float("nan")),
                                 r"gated_delta_net: norm_eps must be a finite number > 0"),
    "gated_delta_net dt_max": (lambda: sj.gated_delta_net(H, dt_max=float("inf")),
                               r"gated_delta_net: dt_max must be a finite number, got dt_max=inf"),
    "slstm heads": (lambda: sj.slstm(6, num_heads=4),
                    r"slstm: hidden_size \(6\) must be divisible by num_heads \(4\)"),
    "lstm forget_bias=inf": (lambda: sj.lstm(H, forget_bias=float("inf")),
                             r"lstm: forget_bias must be a finite number \(an infinite bias is a "
                             r"forget gate fixed at 1 \(never forgets\) or 0\), got "
                             r"forget_bias=inf"),
    "gru update_bias=nan": (lambda: sj.gru(H, update_bias=float("nan")),
                            r"gru: update_bias must be a finite number .*update_bias=nan"),
    "chrono_init t_max=inf": (lambda: sj.chrono_init(float("inf")),
                              r"chrono_init needs 0 < t_min < t_max - 1 < inf \(a non-empty, "
                              r"finite draw U\(t_min, t_max - 1\)\), got t_min=1\.0, t_max=inf"),
    "chrono_init t_max=2": (lambda: sj.chrono_init(2.0),
                            r"chrono_init needs 0 < t_min < t_max - 1 < inf.*t_max=2\.0"),
}


@pytest.mark.parametrize("case", sorted(_REFUSED))
def test_undefined_or_non_decaying_configuration_is_refused(case):
    build, message = _REFUSED[case]
    with pytest.raises(ValueError, match=message):
        build()


def test_odd_but_defined_configuration_is_accepted():
    sj.lstm(H, forget_bias=-3.0)
    sj.gru(H, update_bias=5.0)
    sj.rg_lru(H, c=0.5, max_sqrt_gradient=None)
    sj.lru(H, 3, r_min=0.0, r_max=0.5, max_phase=10.0)
    sj.s6(H, dt_scale=0.0, dt_init_floor=0.0)
    sj.gated_delta_net(H, a_init_range=(0.0, 1.0))
    sj.mlstm(H, num_heads=2, eps=1e-12, norm_eps=1e-12)
