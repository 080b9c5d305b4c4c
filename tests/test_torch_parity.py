"""seqjax against PyTorch's nn.RNN / nn.LSTM / nn.GRU with the same weights.

The reference is PyTorch's own implementation (CPU, float32): outputs, final states
``h_n`` / ``c_n`` and gradients w.r.t. every weight, the inputs and the initial state,
with ragged lengths through ``pack_padded_sequence``. The gradient mapping below is
written from PyTorch's parameter names, not with seqjax.interop's conversion.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import seqjax as sj  # noqa: E402
from seqjax.interop.torch import (  # noqa: E402
    final_state_to_torch,
    from_torch,
    state_from_torch,
    to_torch,
)

B, T, I, H = 3, 5, 4, 6
LENGTHS = [5, 2, 4]  # unsorted on purpose: enforce_sorted=False must unsort h_n
TOL = dict(atol=1e-5, rtol=1e-5)
KINDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def _module(kind, seed=0, **kwargs):
    torch.manual_seed(seed)
    if kind.startswith("rnn"):
        return torch.nn.RNN(I, H, nonlinearity=kind[4:], **kwargs)
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](I, H, **kwargs)


def _suffixes(module):
    dirs = 2 if module.bidirectional else 1
    return [f"_l{k}" + ("_reverse" if d else "")
            for k in range(module.num_layers) for d in range(dirs)]


def _per_direction(params, num_layers, bidirectional):
    """seqjax params (or grads), one entry per (layer, direction) in PyTorch's order."""
    layers = params if num_layers > 1 else (params,)
    out = []
    for layer in layers:
        out.extend([layer.forward, layer.backward] if bidirectional else [layer])
    return out


def _run_torch(module, x, lengths, h0, c0, weights):
    """Forward and backward in PyTorch; everything returned batch-major, as numpy."""
    bf = module.batch_first
    xt = torch.tensor(x if bf else x.transpose(1, 0, 2), requires_grad=True)
    hx = None
    if h0 is not None:
        h0t = torch.tensor(h0, requires_grad=True)
        hx = h0t
        if c0 is not None:
            c0t = torch.tensor(c0, requires_grad=True)
            hx = (h0t, c0t)
    module.zero_grad()
    if lengths is None:
        out, final = module(xt, hx)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.tensor(lengths), batch_first=bf, enforce_sorted=False)
        out, final = module(packed, hx)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=bf, total_length=T)
    if not bf:
        out = out.transpose(0, 1)
    h_n, c_n = final if isinstance(final, tuple) else (final, None)
    loss = (out * torch.tensor(weights["y"])).sum() + (h_n * torch.tensor(weights["h"])).sum()
    if c_n is not None:
        loss = loss + (c_n * torch.tensor(weights["c"])).sum()
    loss.backward()
    x_grad = xt.grad.numpy()
    result = dict(y=out.detach().numpy(), h=h_n.detach().numpy(),
                  x_grad=x_grad if bf else x_grad.transpose(1, 0, 2))
    if c_n is not None:
        result["c"] = c_n.detach().numpy()
    if h0 is not None:
        result["h0_grad"] = h0t.grad.numpy()
        if c0 is not None:
            result["c0_grad"] = c0t.grad.numpy()
    return result


def _torch_param_grads(module, kind):
    """PyTorch's ``.grad`` per (layer, direction), in seqjax's layout.

    ``b`` enters the pre-activation once where PyTorch adds ``bias_ih`` and
    ``bias_hh``, so its gradient is either one of theirs (which are equal); for the
    GRU only the ``r, z`` blocks of ``bias_hh`` are summed, its ``n`` block is ``b_hn``.
    """
    out = []
    for s in _suffixes(module):
        g = {name: getattr(module, name + s).grad.numpy()
             for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
             if getattr(module, name + s, None) is not None}
        entry = dict(w_i=g["weight_ih"].T, w_h=g["weight_hh"].T)
        if module.bias:
            entry["b"] = g["bias_ih"]
            if kind == "gru":
                np.testing.assert_allclose(g["bias_hh"][:2 * H], g["bias_ih"][:2 * H], **TOL)
                entry["b_hn"] = g["bias_hh"][2 * H:]
            else:
                np.testing.assert_allclose(g["bias_hh"], g["bias_ih"], **TOL)
        out.append(entry)
    return out


def _run_seqjax(model, params, x, lengths, h0, c0, weights, hoist):
    lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)

    def loss(params, x, h0, c0):
        state = None if h0 is None else state_from_torch(model, params, h0, c0)
        final, ys = sj.unroll_batch(model, params, x, state, lengths=lengths, hoist=hoist)
        h_n = final_state_to_torch(final)
        c_n = None
        if isinstance(h_n, tuple):
            h_n, c_n = h_n
        total = jnp.sum(ys * weights["y"]) + jnp.sum(h_n * weights["h"])
        if c_n is not None:
            total = total + jnp.sum(c_n * weights["c"])
        return total, (ys, h_n, c_n)

    argnums = (0, 1) if h0 is None else ((0, 1, 2) if c0 is None else (0, 1, 2, 3))
    grad_fn = jax.jit(jax.grad(loss, argnums=argnums, has_aux=True))
    grads, (ys, h_n, c_n) = grad_fn(params, jnp.asarray(x), h0, c0)
    result = dict(y=ys, h=h_n, x_grad=grads[1], param_grads=grads[0])
    if c_n is not None:
        result["c"] = c_n
    if h0 is not None:
        result["h0_grad"] = grads[2]
        if c0 is not None:
            result["c0_grad"] = grads[3]
    return result


def _check_parity(kind, num_layers=1, bidirectional=False, ragged=False, initial=False,
                  bias=True, batch_first=False, hoist=None, seed=0):
    module = _module(kind, seed, num_layers=num_layers, bidirectional=bidirectional,
                     bias=bias, batch_first=batch_first)
    model, params = from_torch(module)
    D = 2 if bidirectional else 1
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    x = normal(B, T, I)
    lengths = LENGTHS if ragged else None
    h0 = normal(num_layers * D, B, H) if initial else None
    c0 = normal(num_layers * D, B, H) if initial and kind == "lstm" else None
    weights = dict(y=normal(B, T, D * H), h=normal(num_layers * D, B, H),
                   c=normal(num_layers * D, B, H))

    ref = _run_torch(module, x, lengths, h0, c0, weights)
    got = _run_seqjax(model, params, x, lengths, h0, c0, weights, hoist)

    assert set(ref) == set(got) - {"param_grads"}
    for name in ref:
        np.testing.assert_allclose(np.asarray(got[name]), ref[name], err_msg=name, **TOL)
    if ragged:  # padded outputs are exactly zero on both sides
        for b, n in enumerate(LENGTHS):
            assert np.all(ref["y"][b, n:] == 0)
            assert np.all(np.asarray(got["y"])[b, n:] == 0)

    ours = _per_direction(got["param_grads"], num_layers, bidirectional)
    theirs = _torch_param_grads(module, kind)
    assert len(ours) == len(theirs) == num_layers * D
    for k, (g, want) in enumerate(zip(ours, theirs)):
        for field, value in want.items():
            np.testing.assert_allclose(np.asarray(getattr(g, field)), value,
                                       err_msg=f"direction {k} {field}", **TOL)


# ------------------------------------------------------------------------------ parity


# Every case compiles its own forward + backward (the cost of these tests), so the
# matrix covers each axis (cell, layers, directions, lengths, initial state, hoist,
# bias, batch_first) without taking the full product of them.
PARITY_CASES = [
    # kind, num_layers, bidirectional, ragged, initial
    *[(kind, 1, False, False, False) for kind in KINDS],  # defaults: no lengths, zero state
    *[(kind, 2, True, True, True) for kind in ("lstm", "gru", "rnn_tanh")],  # everything
    ("lstm", 1, True, True, True),
    ("gru", 1, True, False, False),
    ("gru", 2, False, True, True),
    ("rnn_relu", 2, False, False, True),
]


def _case_id(case):
    kind, layers, bi, ragged, initial = case
    return "-".join([kind, f"{layers}layer", "bi" if bi else "uni",
                     "ragged" if ragged else "full", "h0" if initial else "zero"])


@pytest.mark.parametrize("case", PARITY_CASES, ids=[_case_id(c) for c in PARITY_CASES])
def test_parity(case):
    kind, num_layers, bidirectional, ragged, initial = case
    _check_parity(kind, num_layers, bidirectional, ragged, initial)


@pytest.mark.parametrize("hoist", [True, False], ids=["hoist", "no_hoist"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_parity_hoist(kind, hoist):
    _check_parity(kind, ragged=True, initial=True, hoist=hoist, seed=2)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_parity_no_bias(kind):
    _check_parity(kind, ragged=True, bias=False, seed=3)


def test_parity_batch_first():
    _check_parity("gru", ragged=True, initial=True, batch_first=True, seed=4)


@pytest.mark.parametrize("kind", KINDS)
def test_cell_modules(kind):
    """nn.RNNCell / nn.LSTMCell / nn.GRUCell: one step, from a non-zero state."""
    torch.manual_seed(5)
    if kind.startswith("rnn"):
        module = torch.nn.RNNCell(I, H, nonlinearity=kind[4:])
    else:
        module = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[kind](I, H)
    cell, params = from_torch(module)
    assert isinstance(cell, sj.Cell)
    rng = np.random.default_rng(5)
    x, h, c = (rng.standard_normal((B, n)).astype(np.float32) for n in (I, H, H))
    if kind == "lstm":
        want_h, want_c = module(torch.tensor(x), (torch.tensor(h), torch.tensor(c)))
        state = sj.LSTMState(jnp.asarray(h), jnp.asarray(c))
    else:
        want_h, want_c = module(torch.tensor(x), torch.tensor(h)), None
        state = jnp.asarray(h)
    new, y = jax.vmap(cell.apply, in_axes=(None, 0, 0))(params, state, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), want_h.detach().numpy(), **TOL)
    if want_c is not None:
        np.testing.assert_allclose(np.asarray(new.c), want_c.detach().numpy(), **TOL)
    other = type(module)(I, H, **({"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}))
    back = from_torch(to_torch(params, other))[1]
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


# -------------------------------------------------------------------------- round trips

STRUCTURES = [(1, False), (1, True), (2, False), (2, True)]


@pytest.mark.parametrize("num_layers,bidirectional", STRUCTURES)
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_seqjax_torch_seqjax(kind, num_layers, bidirectional):
    module = _module(kind, num_layers=num_layers, bidirectional=bidirectional)
    rng = np.random.default_rng(7)  # every leaf random, biases included
    params = jax.tree_util.tree_map(
        lambda leaf: jnp.asarray(rng.standard_normal(leaf.shape).astype(np.float32)),
        from_torch(module)[1])
    back = from_torch(to_torch(params, module))[1]
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(back)):
        assert b.dtype == a.dtype
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


@pytest.mark.parametrize("num_layers,bidirectional", STRUCTURES)
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_torch_seqjax_torch(kind, num_layers, bidirectional):
    module = _module(kind, num_layers=num_layers, bidirectional=bidirectional)
    with torch.no_grad():  # the part of bias_hh that seqjax folds into b
        for s in _suffixes(module):
            bias_hh = getattr(module, "bias_hh" + s)
            bias_hh[: 2 * H if kind == "gru" else None].zero_()
    _, params = from_torch(module)
    target = _module(kind, seed=1, num_layers=num_layers, bidirectional=bidirectional)
    to_torch(params, target)
    want, got = module.state_dict(), target.state_dict()
    assert list(want) == list(got)
    for name in want:
        np.testing.assert_array_equal(got[name].numpy(), want[name].numpy(), err_msg=name)


def test_to_torch_output_parity():
    """seqjax params written into a fresh torch module give the same outputs and the
    same ``(h_n, c_n)`` layout, here for an unbatched ``[time, features]`` input."""
    model, params = from_torch(_module("lstm", num_layers=2, bidirectional=True))
    params = jax.tree_util.tree_map(lambda p: p * 1.5 + 0.1, params)
    module = to_torch(params, _module("lstm", seed=2, num_layers=2, bidirectional=True))
    x = np.random.default_rng(9).standard_normal((T, I)).astype(np.float32)
    final, ys = jax.jit(lambda p, x: sj.unroll(model, p, x))(params, jnp.asarray(x))
    h_n, c_n = final_state_to_torch(final)
    out, (want_h, want_c) = module(torch.tensor(x))
    assert h_n.shape == c_n.shape == (4, H)
    np.testing.assert_allclose(np.asarray(ys), out.detach().numpy(), **TOL)
    np.testing.assert_allclose(np.asarray(h_n), want_h.detach().numpy(), **TOL)
    np.testing.assert_allclose(np.asarray(c_n), want_c.detach().numpy(), **TOL)


# --------------------------------------------------------------------- structure, errors


def test_structure():
    lstm = from_torch(_module("lstm"))[0]
    assert isinstance(lstm, sj.Cell) and lstm.layers is None and lstm.output_size == H
    deep = from_torch(_module("gru", num_layers=3, dropout=0.25))[0]
    assert isinstance(deep, sj.Cell)
    assert len(deep.layers.parts) == 3 and deep.layers.dropout == 0.25
    bi = from_torch(_module("rnn_tanh", bidirectional=True))[0]
    assert isinstance(bi, sj.SequenceModel) and bi.output_size == 2 * H
    deep_bi, params = from_torch(_module("lstm", num_layers=2, bidirectional=True))
    assert isinstance(deep_bi, sj.SequenceModel) and deep_bi.output_size == 2 * H
    assert params[1].forward.w_i.shape == (2 * H, 4 * H)


def test_dropout_between_bidirectional_layers():
    """PyTorch's inter-layer dropout is carried over: active with an rng (training)."""
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((T, I)).astype(np.float32))
    module = _module("lstm", num_layers=2, bidirectional=True, dropout=0.5).eval()
    model, params = from_torch(module)
    _, dropped = jax.jit(lambda p, x, k: sj.unroll(model, p, x, rng=k))(
        params, xs, jax.random.PRNGKey(0))
    plain, _ = module(torch.tensor(np.asarray(xs)))  # eval mode: no dropout
    assert not np.allclose(np.asarray(dropped), plain.detach().numpy(), **TOL)


def test_missing_torch_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(ImportError, match=r'needs torch, .*: pip install "seqjax\[torch\]"'):
        from_torch(object())


def test_proj_size_rejected():
    with pytest.raises(NotImplementedError, match="proj_size"):
        from_torch(torch.nn.LSTM(I, H, proj_size=2))


def test_unsupported_module_rejected():
    with pytest.raises(TypeError, match="nn.RNN, LSTM or GRU"):
        from_torch(torch.nn.Linear(I, H))


def test_float64_module_needs_x64():
    with pytest.raises(TypeError, match="x64"):
        from_torch(_module("gru").double())


def test_float64_module(x64):
    module = _module("lstm", num_layers=2).double()
    model, params = from_torch(module)
    assert params[0].w_i.dtype == jnp.float64
    x = np.random.default_rng(0).standard_normal((B, T, I))
    out, _ = module(torch.tensor(x).transpose(0, 1))
    _, ys = sj.unroll_batch(model, params, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(ys), out.detach().numpy().transpose(1, 0, 2),
                               atol=1e-12, rtol=1e-12)


def test_bias_false_rejects_nonzero_bias_and_writes_nothing():
    module = _module("gru", num_layers=2, bias=False)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    model, params = from_torch(module)
    changed = (params[0], params[1]._replace(w_i=params[1].w_i + 1.0,
                                              b=params[1].b.at[0].set(0.5)))
    with pytest.raises(ValueError, match="bias=False"):
        to_torch(changed, module)
    for name, value in module.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), before[name].numpy())
    # zero biases are fine
    to_torch(params, module)


def test_to_torch_rejects_mismatched_params():
    module = _module("lstm", num_layers=2, bidirectional=True)
    _, params = from_torch(module)
    with pytest.raises(ValueError, match="BidirectionalParams"):
        to_torch((params[0].forward, params[1].forward), module)
    with pytest.raises(ValueError, match="tuple of 2"):
        to_torch(params[0], module)
    with pytest.raises(ValueError, match="shape"):
        to_torch(params, torch.nn.LSTM(I, H + 1, num_layers=2, bidirectional=True))
    with pytest.raises(ValueError, match="GRUParams"):
        to_torch(params, _module("gru", num_layers=2, bidirectional=True))
    zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
    before_gru = sj.GRUParams(zeros(I, 3 * H), zeros(H, 3 * H), zeros(3 * H), None)
    with pytest.raises(ValueError, match="reset-after"):
        to_torch(before_gru, torch.nn.GRU(I, H))


def test_state_from_torch_checks():
    model, params = from_torch(_module("lstm", num_layers=2))
    h0 = np.zeros((2, B, H), np.float32)
    with pytest.raises(ValueError, match="c_0"):
        state_from_torch(model, params, h0)
    with pytest.raises(ValueError, match=r"\[2, batch, 6\]"):
        state_from_torch(model, params, h0[:1], h0[:1])
    state = state_from_torch(model, params, torch.ones(2, B, H), torch.zeros(2, B, H))
    assert isinstance(state[1], sj.LSTMState) and state[1].h.shape == (B, H)
