"""A fused Pallas kernel for gated cells: the whole time loop in one launch.

For a cell with a :class:`~seqjax.Recurrent` form (rnn, lstm, the reset-after gru,
mgu, ...) the step is ``s_t, y_t = combine(e, s_{t-1}, u_t, hidden(s_{t-1}) @ W)`` with
``u_t`` the hoisted input projection. The forward kernel loads the recurrent weight
``W [H_in, G]`` once, before its ``fori_loop`` over time, so that the loop reads only
``u_t`` and writes only ``y_t`` (and, for training, the step's state and gate
pre-activations); every instance of the grid handles ``block_batch`` rows of the batch.
The backward kernel runs the transposed loop in the same way, keeping only
``dr_t @ W^T`` inside it, as seqjax's fused backward pass does; the weight gradient
``dW = sum_t hidden(s_{t-1})^T dr_t`` is one matmul over all ``(t, b)`` afterwards
(cuDNN's structure).

The kernels call the cell's own ``combine`` and ``hidden`` (``jax.vmap``-ed over the
rows) and differentiate them with ``jax.vjp`` inside the kernel, so they compute
exactly the cell's equations and need no per-cell code.

**Size limit.** "On chip" means the weight stays in the registers (and shared memory)
of one streaming multiprocessor for the whole loop: the kernel refuses weights larger
than :data:`MAX_ON_CHIP_BYTES` (128 KiB: half of an H100 SM's 256 KiB register file,
leaving room for the step's working set). That admits an LSTM up to ``H = 64`` in
float32 (``[64, 256]``, 64 KiB) and ``H = 128`` in bfloat16 (``[128, 512]``, 128 KiB); the
FlashRNN point ``H = 768`` (``[768, 3072]``, 4.5 MiB in bfloat16) is far beyond it, as it
was for FlashRNN's own Triton kernel (out of shared memory at one 768-wide head; it
splits the recurrence into heads of 64, i.e. a block-diagonal ``W``, which changes the
model). A grid that split ``W``'s columns over several SMs would need a grid-wide
barrier every step, which Pallas' Triton lowering does not offer.

**Triton's constraints** (Pallas' Triton lowering): every tensor has a power-of-2 size,
``dot`` needs each dimension >= 16 (so ``block_batch >= 16``; batches are padded), a
split must be into a power-of-2 number of equal parts, and there is no ``slice``. The
Elman RNN and the LSTM (``G = 4H``, split in four) lower for power-of-2 ``H >= 16``; the
GRU and MGU combines slice their ``3H`` and ``2H`` gate vectors and do not: compiled
(non-interpret) calls raise a ValueError for them before compiling. In interpret mode
(CPU tests) every cell with a ``Recurrent`` form runs.

Unverified on GPU: the forward and backward kernels lower to Triton IR for CUDA
(checked in CI by ``jax.export``) but have not been compiled by Triton or timed on a real
GPU; ``benchmarks/gpu.sh`` does both when a GPU is lent.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from seqjax.cells.contract import combine_facts
from seqjax.kernels.pallas_scan import _accumulator, _next_pow2, default_interpret

MAX_ON_CHIP_BYTES = 128 * 1024

_tree = jax.tree_util


def fits_on_chip(weight_shape, dtype) -> bool:
    """Whether a recurrent weight of this shape and dtype fits the kernel's on-chip limit."""
    return math.prod(weight_shape) * jnp.dtype(dtype).itemsize <= MAX_ON_CHIP_BYTES


class _Config(NamedTuple):
    """Static configuration of one fused call (hashable: functions by identity)."""

    hidden: Callable
    combine: Callable
    state_tree: Any
    state_shapes: tuple  # per-example shape of each state leaf
    extras_tree: Any
    extras_shapes: tuple
    y_leaf: Optional[int]  # the state leaf that equals y (not saved), or None
    adds: bool  # combine reads u + r only: save g = u + r
    reverse: bool
    masked: bool
    block_batch: int
    num_warps: int
    num_stages: int
    interpret: bool


def fused_recurrent(recurrent, params, us, state, *, valid=None, reverse: bool = False,
                    interpret: Optional[bool] = None, block_batch: Optional[int] = None,
                    num_warps: int = 8, num_stages: int = 1):
    """A gated cell's unroll over hoisted inputs as one fused Pallas kernel per direction.

    .. math::
        r_t = \\mathrm{hidden}(s_{t-1}) W, \\qquad
        (s_t, y_t) = \\mathrm{combine}(e, s_{t-1}, u_t, r_t)

    Differentiable in reverse mode (``jax.custom_vjp``) w.r.t. ``params``, ``us`` and
    ``state``; the backward kernel keeps only ``dr_t W^T`` in its loop, and
    ``dW = \\sum_t \\mathrm{hidden}(s_{t-1})^T dr_t`` is one matmul afterwards.

    Args:
      recurrent: the cell's :class:`~seqjax.Recurrent` (``cell.hoist.recurrent``).
      params: the cell's params.
      us: ``[time, batch, G]`` input projections, ``cell.hoist.input_map(params, xs)``.
      state: the initial state, leaves ``[batch, ...]``.
      valid: ``None`` or ``[time, batch]`` booleans; a step where it is false leaves the
        state as it is and outputs zeros (as :func:`seqjax.unroll` with lengths).
      reverse: run from the last step to the first.
      interpret: Pallas interpret mode; ``None`` picks
        :func:`seqjax.kernels.pallas_scan.default_interpret` (compiled on GPU only).
      block_batch: batch rows per kernel instance, a power of 2 (default 16, the
        smallest ``dot`` Triton accepts; in interpret mode the batch rounded up to a
        power of 2, at most 16).
      num_warps, num_stages: Triton launch parameters.

    Returns:
      ``(final_state, ys [time, batch, output_size])``.

    Raises:
      ValueError: the weight exceeds :data:`MAX_ON_CHIP_BYTES`, or (compiled) the
        cell's shapes or ``combine`` are outside what Triton lowers, or the cell's
        compute dtype (``recurrent.dtype``, mixed precision) is not a 16-bit one over
        float32 params (the kernel holds ``W`` in the compute dtype, accumulates in
        float32 and keeps the state in float32; with ``dtype=bfloat16`` an LSTM up to
        ``H = 128`` fits on chip).
    """
    weight, extras = recurrent.weight(params), recurrent.extras(params)
    if recurrent.dtype is not None:
        # mixed precision: the kernel multiplies in the weight's dtype and accumulates in
        # _accumulator(weight dtype); that must be the state's dtype (16-bit compute of
        # float32 state), or the kernel would run the gates in another precision
        if _accumulator(recurrent.dtype) != jnp.dtype(us.dtype):
            raise ValueError(
                f"fused_recurrent: compute dtype {jnp.dtype(recurrent.dtype).name} with "
                f"{jnp.dtype(us.dtype).name} params: the kernel accumulates "
                f"{jnp.dtype(recurrent.dtype).name} products in "
                f"{jnp.dtype(_accumulator(recurrent.dtype)).name} only; run this cell with "
                f"pallas=False or dtype=None")
        weight = weight.astype(recurrent.dtype)  # on chip in the compute dtype
    if not fits_on_chip(weight.shape, weight.dtype):
        size = math.prod(weight.shape) * jnp.dtype(weight.dtype).itemsize
        raise ValueError(
            f"fused_recurrent: the recurrent weight {tuple(weight.shape)} {weight.dtype} "
            f"({size / 1024:.0f} KiB) exceeds the kernel's on-chip limit of "
            f"{MAX_ON_CHIP_BYTES // 1024} KiB (seqjax.kernels.MAX_ON_CHIP_BYTES); run this "
            f"cell with pallas=False")
    time, batch, gates = us.shape
    interpret = default_interpret() if interpret is None else bool(interpret)
    if block_batch is None:
        block_batch = min(_next_pow2(batch), 16) if interpret else 16
    if block_batch < 1 or block_batch & (block_batch - 1):
        raise ValueError(f"fused_recurrent: block_batch must be a power of 2, got {block_batch}")
    leaves, state_tree = _tree.tree_flatten(state)
    extras_leaves, extras_tree = _tree.tree_flatten(extras)
    facts = combine_facts(recurrent.combine, extras, state, gates, us.dtype)
    config = _Config(
        recurrent.hidden, recurrent.combine, state_tree,
        tuple(l.shape[1:] for l in leaves), extras_tree,
        tuple(e.shape for e in extras_leaves),
        facts.y_leaf if valid is None else None, facts.adds, bool(reverse),
        valid is not None, block_batch, num_warps, num_stages, interpret)
    if not interpret:
        _check_triton(config, weight, us, leaves)
    if time == 0:
        return state, jnp.zeros((0, batch, _output_size(config, extras, us, state)), us.dtype)

    pad = -batch % block_batch
    if pad:
        us = jnp.pad(us, ((0, 0), (0, pad), (0, 0)))
        leaves = [jnp.pad(l, ((0, pad),) + ((0, 0),) * (l.ndim - 1)) for l in leaves]
        if valid is not None:
            valid = jnp.pad(valid, ((0, 0), (0, pad)))
    flat = [l.reshape(l.shape[0], -1) for l in leaves]
    mask = None if valid is None else valid.astype(jnp.int32)
    final, ys = _fused(weight, tuple(e.reshape(1, -1) for e in extras_leaves), us,
                       tuple(flat), mask, config)
    final = [f[:batch].reshape((batch,) + s) for f, s in zip(final, config.state_shapes)]
    return _tree.tree_unflatten(state_tree, final), ys[:, :batch]


def _output_size(config, extras, us, state):
    one = _tree.tree_map(lambda l: jax.ShapeDtypeStruct(l.shape[1:], l.dtype), state)
    u = jax.ShapeDtypeStruct(us.shape[2:], us.dtype)
    return jax.eval_shape(config.combine, extras, one, u, u)[1].shape[-1]


def _check_triton(config, weight, us, leaves):
    """Raises, before compiling, where Pallas' Triton lowering cannot follow the cell."""
    sizes = {"hidden input size": weight.shape[0], "gate width G": weight.shape[1]}
    sizes.update({f"state leaf {i}": math.prod(s) for i, s in enumerate(config.state_shapes)})
    bad = {k: v for k, v in sizes.items() if v < 16 or v & (v - 1)}
    if bad:
        raise ValueError(f"fused_recurrent: Triton needs power-of-2 sizes >= 16 for dot and "
                         f"every tensor, got {bad}; run this cell with pallas=False")
    one = _tree.tree_map(lambda l: jax.ShapeDtypeStruct(l.shape[1:], l.dtype), leaves)
    state = _tree.tree_unflatten(config.state_tree, one)
    extras = _tree.tree_unflatten(config.extras_tree, [
        jax.ShapeDtypeStruct(s, us.dtype) for s in config.extras_shapes])
    g = jax.ShapeDtypeStruct((weight.shape[1],), us.dtype)
    jaxpr = jax.make_jaxpr(config.combine)(extras, state, g, g)
    names = {e.primitive.name for e in jaxpr.jaxpr.eqns}
    if "slice" in names or "dynamic_slice" in names:
        raise ValueError(
            "fused_recurrent: this cell's combine slices its gate vector (the GRU's and "
            "MGU's 3H / 2H gates do), which Pallas' Triton lowering cannot express (no "
            "slice; only equal power-of-2 splits); run it with pallas=False")


# ------------------------------------------------------------------------- helpers


def _rows(fn, *in_axes):
    return jax.vmap(fn, in_axes=in_axes) if in_axes else jax.vmap(fn)


def _unflat(config, flat, rows: int):
    shaped = [v.reshape((rows,) + s) for v, s in zip(flat, config.state_shapes)]
    return _tree.tree_unflatten(config.state_tree, shaped)


def _flat(tree, rows: int):
    return [v.reshape(rows, -1) for v in _tree.tree_leaves(tree)]


def _extras(config, refs, dtype):
    values = [r[...].reshape(s).astype(dtype) for r, s in zip(refs, config.extras_shapes)]
    return _tree.tree_unflatten(config.extras_tree, values)


def _where_rows(ok, new, old):
    return [jnp.where(ok[:, None], n, o) for n, o in zip(new, old)]


def _dot(a, b, acc):
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=acc)


def _step_index(i, time, reverse):
    return time - 1 - i if reverse else i


# ------------------------------------------------------------------------- kernels


def _forward_kernel(*refs, config: _Config, n_extras: int, n_state: int, save: bool):
    it = iter(refs)
    w_ref = next(it)
    extras_refs = [next(it) for _ in range(n_extras)]
    us_ref = next(it)
    s0_refs = [next(it) for _ in range(n_state)]
    valid_ref = next(it) if config.masked else None
    ys_ref = next(it)
    final_refs = [next(it) for _ in range(n_state)]
    kept = [i for i in range(n_state) if i != config.y_leaf]
    saved_refs = [next(it) for _ in kept] if save else []
    pre_ref = next(it) if save else None

    rows = us_ref.shape[1]
    time = us_ref.shape[0]
    weight = w_ref[...]  # loaded once: the whole loop reads it from registers
    acc = _accumulator(weight.dtype)  # gates and state in float32 for 16-bit params
    extras = _extras(config, extras_refs, acc)
    combine = _rows(config.combine, None, 0, 0, 0)
    hidden = _rows(config.hidden)

    def body(i, flat):
        t = _step_index(i, time, config.reverse)
        s = _unflat(config, flat, rows)
        u = us_ref[t].astype(acc)
        r = _dot(hidden(s).astype(weight.dtype), weight, acc)
        new, y = combine(extras, s, u, r)
        new = _flat(new, rows)
        if config.masked:
            ok = valid_ref[t] != 0
            new = _where_rows(ok, new, flat)
            y = jnp.where(ok[:, None], y, jnp.zeros((), y.dtype))
        ys_ref[t] = y.astype(ys_ref.dtype)
        if save:
            for ref, i_leaf in zip(saved_refs, kept):
                ref[t] = new[i_leaf].astype(ref.dtype)
            pre_ref[t] = (u + r if config.adds else r).astype(pre_ref.dtype)
        return new

    flat = lax.fori_loop(0, time, body, [r[...].astype(acc) for r in s0_refs])
    for ref, v in zip(final_refs, flat):
        ref[...] = v.astype(ref.dtype)


def _backward_kernel(*refs, config: _Config, n_extras: int, n_state: int, widths: tuple):
    it = iter(refs)
    w_ref = next(it)
    extras_refs = [next(it) for _ in range(n_extras)]
    us_ref = next(it)
    s0_refs = [next(it) for _ in range(n_state)]
    valid_ref = next(it) if config.masked else None
    ys_ref = next(it)
    kept = [i for i in range(n_state) if i != config.y_leaf]
    saved_refs = dict(zip(kept, [next(it) for _ in kept]))
    pre_ref = next(it)
    dys_ref = next(it)
    dfinal_refs = [next(it) for _ in range(n_state)]
    du_ref = next(it)
    dr_ref = None if config.adds else next(it)
    ds0_refs = [next(it) for _ in range(n_state)]
    dextras_refs = [next(it) for _ in range(n_extras)]

    time, rows, gates = us_ref.shape
    # W's column blocks, loaded once: dr @ W^T = sum_j dr_j @ W_j^T over dr's blocks
    offsets = [sum(widths[:j]) for j in range(len(widths))]
    weights = [w_ref[:, o:o + w] for o, w in zip(offsets, widths)]
    acc = _accumulator(weights[0].dtype)
    extras = _extras(config, extras_refs, acc)
    combine = _rows(config.combine, None, 0, 0, 0)
    hidden = _rows(config.hidden)
    start = [r[...].astype(acc) for r in s0_refs]

    if config.adds:
        def step(e, s, g):
            return combine(e, s, g, jnp.zeros_like(g))
    else:
        step = combine

    def body(i, carry):
        ds, d_extras = carry
        t = i if config.reverse else time - 1 - i
        first = t == (time - 1 if config.reverse else 0)
        before = jnp.minimum(t + 1, time - 1) if config.reverse else jnp.maximum(t - 1, 0)
        prev = []
        for k in range(n_state):
            ref = ys_ref if k == config.y_leaf else saved_refs[k]
            prev.append(jnp.where(first, start[k], ref[before].astype(start[k].dtype)))
        s_prev = _unflat(config, prev, rows)
        pre = (pre_ref[t].astype(acc),) if config.adds else (us_ref[t].astype(acc),
                                                              pre_ref[t].astype(acc))
        dy = dys_ref[t].astype(acc)
        ds_step = ds
        if config.masked:
            ok = valid_ref[t] != 0
            ds_step = _where_rows(ok, ds, [jnp.zeros_like(d) for d in ds])
            dy = jnp.where(ok[:, None], dy, jnp.zeros((), dy.dtype))
        cotangent = (_unflat(config, ds_step, rows), dy)
        de, ds_prev, *d_pre = _vjp_in_blocks(step, (extras, s_prev) + pre, cotangent,
                                             blocked=range(2, 2 + len(pre)))
        dr = d_pre[-1]
        low = weights[0].dtype
        dh = _dot(dr[0].astype(low), weights[0].T, acc)
        for j in range(1, len(dr)):
            dh = dh + _dot(dr[j].astype(low), weights[j].T, acc)
        _, hidden_vjp = jax.vjp(hidden, s_prev)
        (ds_h,) = hidden_vjp(dh)
        ds_prev = [a + b.astype(a.dtype) for a, b in zip(_flat(ds_prev, rows),
                                                        _flat(ds_h, rows))]
        if config.masked:  # a padded step passes the state (and its gradient) through
            ds_prev = [a + jnp.where(ok[:, None], jnp.zeros_like(d), d)
                       for a, d in zip(ds_prev, ds)]
        for ref, pieces in zip((du_ref, dr_ref) if not config.adds else (du_ref,), d_pre):
            _store_blocks(ref, t, pieces)
        d_extras = [a + b.astype(a.dtype) for a, b in zip(d_extras, _tree.tree_leaves(de))]
        return ds_prev, d_extras

    ds = [r[...].astype(acc) for r in dfinal_refs]
    zeros = [jnp.zeros(r.shape, acc) for r in extras_refs]
    ds, d_extras = lax.fori_loop(0, time, body, (ds, [z.reshape(s) for z, s in
                                                      zip(zeros, config.extras_shapes)]))
    for ref, v in zip(ds0_refs, ds):
        ref[...] = v.astype(ref.dtype)
    for ref, v in zip(dextras_refs, d_extras):
        ref[...] = v.reshape(ref.shape).astype(ref.dtype)


def _store_blocks(ref, t, pieces):
    """``ref[t] = concatenate(pieces, -1)``, one block at a time (Triton has no concat)."""
    if len(pieces) == 1:
        ref[t] = pieces[0].astype(ref.dtype)
        return
    width = pieces[0].shape[-1]
    for j, piece in enumerate(pieces):
        ref[t, :, j * width:(j + 1) * width] = piece.astype(ref.dtype)


def _vjp_in_blocks(fn, primals, cotangent, blocked):
    """``jax.vjp(fn, *primals)[1](cotangent)``, except that each input cotangent in
    ``blocked`` comes back as a list of blocks along its last axis.

    The VJP of a ``jnp.split`` is a ``concatenate`` of the blocks' cotangents, which
    Pallas' Triton lowering cannot express; so the VJP is traced to a jaxpr and
    evaluated here without those final concatenations.
    """
    from jax.extend import core as jcore

    _, vjp = jax.vjp(fn, *primals)
    ct_flat, ct_tree = _tree.tree_flatten(cotangent)
    out_tree = []

    def flat_vjp(*cts):
        out = vjp(_tree.tree_unflatten(ct_tree, list(cts)))
        leaves, tree = _tree.tree_flatten(out)
        out_tree.append(tree)
        return leaves

    closed = jax.make_jaxpr(flat_vjp)(*ct_flat)
    jaxpr = closed.jaxpr
    firsts = []  # flat index of the first leaf of each primal argument
    count = 0
    for p in primals:
        firsts.append(count)
        count += len(_tree.tree_leaves(p))
    want = {firsts[i]: i for i in blocked}
    used = {id(v) for e in jaxpr.eqns for v in e.invars if not isinstance(v, jcore.Literal)}
    targets = {id(jaxpr.outvars[k]) for k in want
               if not isinstance(jaxpr.outvars[k], jcore.Literal)}
    env, pieces = {}, {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[id(v)]

    for v, c in zip(jaxpr.constvars, closed.consts):
        env[id(v)] = c
    for v, c in zip(jaxpr.invars, ct_flat):
        env[id(v)] = c
    for eqn in jaxpr.eqns:
        out = eqn.outvars[0]
        if (eqn.primitive.name == "concatenate" and id(out) in targets and id(out) not in used
                and eqn.params["dimension"] == out.aval.ndim - 1
                and len({v.aval.shape for v in eqn.invars}) == 1):
            pieces[id(out)] = [read(v) for v in eqn.invars]
            continue
        params = eqn.primitive.get_bind_params(eqn.params)
        subfuns = ()
        if isinstance(params, tuple):  # older JAX: (subfuns, params)
            subfuns, params = params
        result = eqn.primitive.bind(*subfuns, *[read(v) for v in eqn.invars], **params)
        for v, r in zip(eqn.outvars, result if eqn.primitive.multiple_results else [result]):
            env[id(v)] = r
    flat = []
    for k, v in enumerate(jaxpr.outvars):
        value = pieces.get(id(v)) or [read(v)] if k in want else read(v)
        flat.append(value)
    # rebuild the primals' structure; blocked arguments (single leaves) stay lists
    out = []
    for i, p in enumerate(primals):
        leaves = flat[firsts[i]:firsts[i] + len(_tree.tree_leaves(p))]
        if i in blocked:
            out.append(leaves[0])
        else:
            out.append(_tree.tree_unflatten(_tree.tree_structure(p), leaves))
    return out


# ------------------------------------------------------------------- pallas calls


def _specs(arrays, block_batch):
    from jax.experimental import pallas as pl

    def spec(x, kind):
        if kind == "full":
            return pl.BlockSpec(x.shape, lambda i, n=x.ndim: (0,) * n)
        if kind == "tiles":  # [n_tiles, ...]: one row per instance
            return pl.BlockSpec((1,) + x.shape[1:], lambda i, n=x.ndim: (i,) + (0,) * (n - 1))
        if x.ndim == 2 and kind == "rows":  # [B, n]
            return pl.BlockSpec((block_batch, x.shape[1]), lambda i: (i, 0))
        if x.ndim == 2:  # [T, B] masks
            return pl.BlockSpec((x.shape[0], block_batch), lambda i: (0, i))
        return pl.BlockSpec((x.shape[0], block_batch, x.shape[2]), lambda i: (0, i, 0))

    return [spec(x, kind) for x, kind in arrays]


def _launch(kernel, inputs, outputs, config: _Config, batch: int):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plt

    return pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype) for x, _ in outputs],
        grid=(batch // config.block_batch,),
        in_specs=_specs(inputs, config.block_batch),
        out_specs=_specs(outputs, config.block_batch),
        interpret=config.interpret,
        compiler_params=plt.CompilerParams(num_warps=config.num_warps,
                                           num_stages=config.num_stages),
        name="seqjax_fused_recurrent",
    )(*[x for x, _ in inputs])


def _inputs(weight, extras, us, state, mask):
    ins = [(weight, "full")] + [(e, "full") for e in extras] + [(us, "seq")]
    ins += [(s, "rows") for s in state]
    if mask is not None:
        ins.append((mask, "mask"))
    return ins


def _forward(weight, extras, us, state, mask, config, save):
    time, batch, gates = us.shape
    y_size = _output_size(config, _tree.tree_unflatten(config.extras_tree, [
        e.reshape(s) for e, s in zip(extras, config.extras_shapes)]), us,
        _unflat(config, list(state), batch))
    outs = [(jax.ShapeDtypeStruct((time, batch, y_size), us.dtype), "seq")]
    outs += [(jax.ShapeDtypeStruct(s.shape, s.dtype), "rows") for s in state]
    kept = [i for i in range(len(state)) if i != config.y_leaf]
    if save:
        outs += [(jax.ShapeDtypeStruct((time,) + state[i].shape, state[i].dtype), "seq")
                 for i in kept]
        outs.append((jax.ShapeDtypeStruct(us.shape, us.dtype), "seq"))
    kernel = functools.partial(_forward_kernel, config=config, n_extras=len(extras),
                               n_state=len(state), save=save)
    result = _launch(kernel, _inputs(weight, extras, us, state, mask), outs, config, batch)
    ys, final = result[0], tuple(result[1:1 + len(state)])
    saved = tuple(result[1 + len(state):1 + len(state) + len(kept)]) if save else ()
    pre = result[-1] if save else None
    return ys, final, saved, pre


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _fused(weight, extras, us, state, mask, config):
    ys, final, _, _ = _forward(weight, extras, us, state, mask, config, save=False)
    return final, ys


def _fused_fwd(weight, extras, us, state, mask, config):
    ys, final, saved, pre = _forward(weight, extras, us, state, mask, config, save=True)
    return (final, ys), (weight, extras, us, state, mask, ys, saved, pre)


def _gate_widths(config, extras, us, state) -> tuple:
    """The widths of the blocks in which the backward kernel gets ``dr`` (see
    :func:`_vjp_in_blocks`), found by tracing one step on abstract values."""
    rows = config.block_batch
    one = [jax.ShapeDtypeStruct((rows,) + s.shape[1:], s.dtype) for s in state]
    e = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in extras]
    g = jax.ShapeDtypeStruct((rows,) + us.shape[2:], us.dtype)

    def blocks(e, flat, g):
        ex = _tree.tree_unflatten(config.extras_tree, [
            x.reshape(s) for x, s in zip(e, config.extras_shapes)])
        s_prev = _unflat(config, flat, rows)
        combine = _rows(config.combine, None, 0, 0, 0)
        pre = (g,) if config.adds else (g, g)
        step = (lambda e_, s_, g_: combine(e_, s_, g_, jnp.zeros_like(g_))) if config.adds \
            else combine
        out = jax.eval_shape(step, ex, s_prev, *pre)
        _, _, *d_pre = _vjp_in_blocks(step, (ex, s_prev) + pre, out,
                                      blocked=range(2, 2 + len(pre)))
        return d_pre[-1]

    return tuple(b.shape[-1] for b in jax.eval_shape(blocks, e, one, g))


def _fused_bwd(config, residuals, cotangents):
    weight, extras, us, state, mask, ys, saved, pre = residuals
    d_final, d_ys = cotangents
    time, batch, gates = us.shape
    n_state = len(state)
    widths = _gate_widths(config, extras, us, state)
    tiles = batch // config.block_batch
    acc = _accumulator(weight.dtype)
    ins = _inputs(weight, extras, us, state, mask) + [(ys, "seq")]
    ins += [(s, "seq") for s in saved] + [(pre, "seq"), (d_ys.astype(ys.dtype), "seq")]
    ins += [(d.astype(s.dtype), "rows") for d, s in zip(d_final, state)]
    outs = [(jax.ShapeDtypeStruct(us.shape, us.dtype), "seq")]
    if not config.adds:
        outs.append((jax.ShapeDtypeStruct(us.shape, us.dtype), "seq"))
    outs += [(jax.ShapeDtypeStruct(s.shape, s.dtype), "rows") for s in state]
    outs += [(jax.ShapeDtypeStruct((tiles,) + e.shape, acc), "tiles") for e in extras]
    kernel = functools.partial(_backward_kernel, config=config, n_extras=len(extras),
                               n_state=n_state, widths=widths)
    result = _launch(kernel, ins, outs, config, batch)
    du = result[0]
    dr = du if config.adds else result[1]
    k = 1 if config.adds else 2
    d_state = tuple(result[k:k + n_state])
    d_extras = tuple(r.sum(0).astype(e.dtype) for r, e in zip(result[k + n_state:], extras))
    # dW = sum_t hidden(s_{t-1})^T dr_t: one matmul over all (t, b)
    kept = [i for i in range(n_state) if i != config.y_leaf]
    after = dict(zip(kept, saved))
    prev = []
    for i in range(n_state):
        steps = ys if i == config.y_leaf else after[i]
        first = state[i][None].astype(steps.dtype)
        prev.append(jnp.concatenate([steps[1:], first]) if config.reverse
                    else jnp.concatenate([first, steps[:-1]]))
    flat = [p.reshape(time * batch, -1) for p in prev]
    hs = _rows(config.hidden)(_unflat(config, flat, time * batch))
    d_weight = lax.dot_general(hs, dr.reshape(time * batch, gates), (((0,), (0,)), ((), ())),
                               preferred_element_type=acc).astype(weight.dtype)
    return d_weight, d_extras, du, d_state, None


_fused.defvjp(_fused_fwd, _fused_bwd)
