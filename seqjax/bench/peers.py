"""Peer implementations of the same models, built for the same shapes and dtype.

Each JAX builder returns ``(fwd, params)`` with ``fwd(params, xs[B, T, I]) -> ys[B, T, H]``;
the harness jits ``fwd`` and ``jax.grad`` of ``sum(fwd)`` w.r.t. ``(params, xs)``
separately, exactly as for seqjax. The PyTorch builder returns eager callables.
A builder raises :class:`Skip` with a reason when the peer cannot run the case.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np


class Skip(Exception):
    """The peer cannot run this case; the message says why."""


# peer -> {base cell: what it is compared with}
PEERS = {
    "flax": {"rnn": "nn.RNN(SimpleCell)", "lstm": "nn.RNN(OptimizedLSTMCell)",
             "gru": "nn.RNN(GRUCell)"},
    "flax_lstmcell": {"lstm": "nn.RNN(LSTMCell)"},
    "equinox": {"lstm": "eqx.nn.LSTMCell, lax.scan + vmap",
                "gru": "eqx.nn.GRUCell, lax.scan + vmap"},
    "haiku": {"lstm": "hk.dynamic_unroll(hk.LSTM)", "gru_rb": "hk.dynamic_unroll(hk.GRU)"},
    "torch": {"rnn": "torch.nn.RNN", "lstm": "torch.nn.LSTM", "gru": "torch.nn.GRU"},
    "jax_rnn": {"lstm": "jax.experimental.rnn.lstm (cuDNN)"},
    # memax (Equinox): its cells at the definitions closest to seqjax's; where a cell
    # computes something else, "what" says so (it is printed beside each peer row)
    "memax": {"lstm": "memax LSTM (h = o*c, no tanh(c)), lax.scan + vmap",
              "gru_rb": "memax GRU (reset before), lax.scan + vmap",
              "mgu": "memax MGU, lax.scan + vmap",
              "lru": "memax LRU, associative scan + vmap",
              "s6": "memax S6: state [H] (Delta, B, C per channel, ZOH B), not Mamba's "
                    "[H, N]; associative scan + vmap",
              "delta_net": "memax DeltaNet, associative scan over [H, H] products"},
    # the authors' code, where it runs on this backend
    "xlstm": {"slstm": "xlstm sLSTMCell (vanilla backend: PyTorch loop) after x @ W"},
    "recurrentgemma": {"rg_lru": "recurrentgemma RGLRU (lax.scan; resets at position 0)"},
}

DEFAULT_PEERS = ("flax", "equinox", "haiku", "torch", "jax_rnn", "memax", "xlstm",
                 "recurrentgemma")

# peers that run eagerly in PyTorch (timed with time_eager, like "torch")
EAGER = ("torch", "xlstm")

_MODULES = {"flax": "flax", "flax_lstmcell": "flax", "equinox": "equinox", "haiku": "haiku",
            "torch": "torch", "jax_rnn": "jax", "memax": "memax", "xlstm": "xlstm",
            "recurrentgemma": "recurrentgemma"}

NOT_APPLICABLE = {
    ("haiku", "gru"): "hk.GRU is reset-before; compared on gru_rb",
    ("haiku", "rnn"): "hk.VanillaRNN uses ReLU, not tanh",
    ("equinox", "rnn"): "Equinox has no Elman cell",
    ("torch", "gru_rb"): "torch.nn.GRU is reset-after only",
    ("flax", "gru_rb"): "flax GRUCell is reset-after only",
    ("equinox", "gru_rb"): "eqx.nn.GRUCell is reset-after only",
    ("memax", "rnn"): "memax's Elman adds an output projection W_y",
    ("memax", "gru"): "memax's GRU is reset-before; compared on gru_rb",
}


def applies(peer: str, base: str) -> bool:
    return base in PEERS[peer]


def installed(peer: str) -> bool:
    return importlib.util.find_spec(_MODULES[peer]) is not None


def _count(tree) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)
                   if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)))


def _cast(tree, dtype):
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.inexact) else x, tree)


def build_jax(peer, base, layers, case, dtype, key, xs):
    """``(fwd, params, param_count, what)`` for a JAX peer."""
    if not installed(peer):
        raise Skip(f"{_MODULES[peer]} is not installed")
    builder = {"flax": _flax, "flax_lstmcell": _flax, "equinox": _equinox, "haiku": _haiku,
               "jax_rnn": _jax_rnn, "memax": _memax, "recurrentgemma": _recurrentgemma}[peer]
    fwd, params = builder(peer, base, layers, case, dtype, key, xs)
    return fwd, params, _count(params)


def _flax(peer, base, layers, case, dtype, key, xs):
    import flax.linen as nn

    cls = {"rnn": nn.SimpleCell, "gru": nn.GRUCell,
           "lstm": nn.LSTMCell if peer == "flax_lstmcell" else nn.OptimizedLSTMCell}[base]
    def build(param_dtype):
        rnns = [nn.RNN(cls(case.hidden, dtype=dtype, param_dtype=param_dtype))
                for _ in range(layers)]
        return rnns[0] if layers == 1 else nn.Sequential(rnns)

    # initialised in float32 and cast (Flax's orthogonal init has no bfloat16 QR on CPU)
    params = _cast(build(jnp.float32).init(key, xs.astype(jnp.float32)), dtype)
    return build(dtype).apply, params


def _equinox(peer, base, layers, case, dtype, key, xs):
    import equinox as eqx

    cls = {"lstm": eqx.nn.LSTMCell, "gru": eqx.nn.GRUCell}[base]
    keys = jax.random.split(key, layers)
    cells = [cls(case.input_size if l == 0 else case.hidden, case.hidden, dtype=dtype,
                 key=keys[l]) for l in range(layers)]
    params, static = eqx.partition(cells, eqx.is_inexact_array)
    H = case.hidden

    def one(cell, x):  # x [T, I]
        zero = jnp.zeros((H,), dtype)
        carry = (zero, zero) if base == "lstm" else zero

        def body(c, x_t):
            c = cell(x_t, c)
            return c, (c[0] if base == "lstm" else c)

        return jax.lax.scan(body, carry, x)[1]

    def fwd(params, xs):
        for cell in eqx.combine(params, static):
            xs = jax.vmap(lambda x, cell=cell: one(cell, x))(xs)
        return xs

    return fwd, params


def _haiku(peer, base, layers, case, dtype, key, xs):
    import haiku as hk

    cls = {"lstm": hk.LSTM, "gru_rb": hk.GRU}[base]
    batch = case.batch

    def forward(xs):
        cores = [cls(case.hidden) for _ in range(layers)]
        core = cores[0] if layers == 1 else hk.DeepRNN(cores)
        state = _cast(core.initial_state(batch), dtype)
        return hk.dynamic_unroll(core, xs, state, time_major=False)[0]

    model = hk.without_apply_rng(hk.transform(forward))
    params = _cast(model.init(key, xs), dtype)
    return model.apply, params


def _jax_rnn(peer, base, layers, case, dtype, key, xs):
    if jax.default_backend() != "gpu":
        raise Skip("jax.experimental.rnn.lstm is cuDNN-only (needs a GPU backend, got "
                   f"{jax.default_backend()})")
    from jax.experimental import rnn

    B, I, H = case.batch, case.input_size, case.hidden
    weights = rnn.init_lstm_weight(key, I, H, layers, False).astype(dtype)
    h0 = jnp.zeros((layers, B, H), dtype)
    lengths = jnp.full((B,), case.length, jnp.int32)

    def fwd(weights, xs):
        return rnn.lstm(xs, h0, h0, weights, lengths, I, H, layers, 0.0, False)[0]

    return fwd, weights


def _memax(peer, base, layers, case, dtype, key, xs):
    import equinox as eqx
    from memax.equinox.semigroups.delta import DeltaNet
    from memax.equinox.semigroups.lru import LRU
    from memax.equinox.semigroups.s6 import S6
    from memax.equinox.set_actions.gru import GRU
    from memax.equinox.set_actions.lstm import LSTM
    from memax.equinox.set_actions.mgu import MGU

    H = case.hidden
    if case.input_size != H:
        raise Skip(f"memax's {base} maps [H] to [H]: needs input_size == hidden ({H}), "
                   f"got {case.input_size}")
    if base == "lru" and case.state != H:
        raise Skip(f"memax's LRU types its output as [state size]: runs only with N = H "
                   f"({H}), got N = {case.state}")
    make = {"lstm": lambda k: LSTM(H, k), "gru_rb": lambda k: GRU(H, k),
            "mgu": lambda k: MGU(H, k), "lru": lambda k: LRU(case.state, H, k),
            "s6": lambda k: S6(H, H, k), "delta_net": lambda k: DeltaNet(H, H, k)}[base]
    models = [make(k) for k in jax.random.split(key, layers)]
    params, static = eqx.partition(models, eqx.is_inexact_array)
    params = _cast(params, dtype)

    def fwd(params, xs):
        for model in eqx.combine(params, static):
            h0 = model.initialize_carry()

            def one(x, model=model, h0=h0):  # x [T, H]; no resets inside the sequence
                return model(h0, (x, jnp.zeros((x.shape[0],), bool)))[1]

            xs = jax.vmap(one)(xs).astype(dtype)
        return xs

    return fwd, params


def _recurrentgemma(peer, base, layers, case, dtype, key, xs):
    import seqjax
    from recurrentgemma.jax import layers as rg_layers

    H = case.hidden
    if case.input_size != H:
        raise Skip(f"RGLRU maps [H] to [H]: needs input_size == hidden ({H}), got "
                   f"{case.input_size}")
    heads = seqjax.rg_lru(H).num_heads  # the same blocks as the seqjax row
    modules = [rg_layers.RGLRU(width=H, num_heads=heads, param_dtype=dtype)
               for _ in range(layers)]
    positions = jnp.broadcast_to(jnp.arange(case.length, dtype=jnp.int32),
                                 (case.batch, case.length))
    keys = jax.random.split(key, layers)
    params = [_cast(m.init(k, xs.astype(dtype), positions), dtype)
              for m, k in zip(modules, keys)]

    def fwd(params, xs):
        for m, p in zip(modules, params):
            xs = m.apply(p, xs, positions)[0]
        return xs

    return fwd, params


# ----------------------------------------------------------------------------- torch


def torch_module(base, input_size, hidden, layers):
    """The PyTorch module for ``base`` (``nn.RNN``/``nn.LSTM``/``nn.GRU``), batch first."""
    import torch

    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[base]
    return cls(input_size, hidden, num_layers=layers, batch_first=True)


def torch_param_count(base, input_size, hidden, layers):
    """PyTorch's parameter count, by instantiating the module (``None`` if no module)."""
    if not installed("torch") or base not in PEERS["torch"]:
        return None
    module = torch_module(base, input_size, hidden, layers)
    return int(sum(p.numel() for p in module.parameters()))


def torch_device():
    import torch

    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def build_torch(base, layers, case, dtype_name, xs):
    """``(fwd_call, fwdbwd_call, sync, memory_kind, param_count)`` for PyTorch."""
    if not installed("torch"):
        raise Skip("torch is not installed")
    import torch

    device = torch_device()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16}[dtype_name]
    torch.manual_seed(0)
    module = torch_module(base, case.input_size, case.hidden, layers).to(device, dtype)
    x = torch.from_numpy(np.array(xs, np.float32)).to(device, dtype)  # a writable copy
    x_grad = x.clone().requires_grad_(True)

    def fwd():
        with torch.no_grad():
            return module(x)[0]

    def fwdbwd():
        module.zero_grad(set_to_none=True)
        x_grad.grad = None
        module(x_grad)[0].sum().backward()
        return x_grad.grad

    if device == "cuda":
        sync = lambda _: torch.cuda.synchronize()
    else:
        sync = lambda _: None
    count = int(sum(p.numel() for p in module.parameters()))
    return fwd, fwdbwd, sync, ("torch-cuda" if device == "cuda" else "cpu"), count


def build_xlstm(base, layers, case, dtype_name, xs):
    """``(fwd_call, fwdbwd_call, sync, memory_kind, param_count)`` for xlstm's sLSTM.

    xlstm's cell takes the gates' pre-activations ``[B, T, 4H]``; the input projection
    ``x @ W`` (``nn.Linear(I, 4H, bias=False)``) is put in front so that the peer
    computes what seqjax's ``slstm`` does, with the same number of parameters.
    """
    if not installed("xlstm"):
        raise Skip("xlstm is not installed")
    import torch
    from xlstm.blocks.slstm.cell import sLSTMCell, sLSTMCellConfig

    import seqjax

    device = torch_device()  # the vanilla backend is plain PyTorch on either device
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16}[dtype_name]
    H, heads = case.hidden, seqjax.slstm(case.hidden).num_heads
    torch.manual_seed(0)
    mods = []
    for l in range(layers):
        config = sLSTMCellConfig(hidden_size=H, num_heads=heads, backend="vanilla",
                                 dtype=dtype_name, enable_automatic_mixed_precision=False)
        proj = torch.nn.Linear(case.input_size if l == 0 else H, 4 * H, bias=False)
        mods.append(torch.nn.ModuleList([proj, sLSTMCell(config)]).to(device, dtype))
    model = torch.nn.ModuleList(mods)
    x = torch.from_numpy(np.array(xs, np.float32)).to(device, dtype)
    x_grad = x.clone().requires_grad_(True)
    B, T = x.shape[:2]

    def run(x):
        for proj, cell in model:
            y = cell(proj(x))[0]  # [B, heads, T, H / heads]
            x = y.permute(0, 2, 1, 3).reshape(B, T, H)
        return x

    def fwd():
        with torch.no_grad():
            return run(x)

    def fwdbwd():
        model.zero_grad(set_to_none=True)
        x_grad.grad = None
        run(x_grad).sum().backward()
        return x_grad.grad

    sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)
    count = int(sum(p.numel() for p in model.parameters()))
    return fwd, fwdbwd, sync, ("torch-cuda" if device == "cuda" else "cpu"), count


def build_eager(peer, base, layers, case, dtype_name, xs):
    """The eager (PyTorch) peers: ``build_torch`` or ``build_xlstm``."""
    if peer == "xlstm":
        return build_xlstm(base, layers, case, dtype_name, xs)
    return build_torch(base, layers, case, dtype_name, xs)
