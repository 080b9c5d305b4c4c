"""Sequence parallelism: one sequence's time axis split over devices.

A linear-recurrence cell (min_gru, min_lstm, lru, ...) computes
``h_t = a_t * h_{t-1} + b_t``. Split time into ``n`` contiguous shards, one per device
along a mesh axis. Each device scans its shard from a zero state and also forms the
cumulative product of its coefficients; then the shards exchange two small arrays (their
last state and their total product, ``[batch, *state]`` each), every device computes the
state entering its shard by the same recurrence over shards, and corrects its local
states at once:

.. math::
    h_t = \\hat h_t + \\Big(\\prod_{s = t_0}^{t} a_s\\Big) \\, c_k, \\qquad
    c_{k+1} = A_k c_k + \\hat h^{(k)}_{\\text{last}}, \\quad c_0 = h_0

where ``hat h`` is the local scan from zero, ``t_0`` the shard's first step and
``A_k`` its total product. Memory and work per device are ``1/n`` of the sequence's; the
communication is one ``all_gather`` of ``2 * batch * state`` numbers per layer. This is
recurrentgemma's ``multi_shard_correction`` (``recurrentgemma/jax/pallas.py``) as a
``jax.shard_map``.

Only linear cells (and stacks of them) can be split this way: a gated cell's state
enters its next step through a nonlinearity, so a shard cannot start before the previous
one has finished.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from seqjax import _checks
from seqjax.unroll import (_Options, _associative_scan, _linear_features, _linear_scan,
                           _sequential_scan)
from seqjax.cells import Cell

TIME_AXIS = "time"

_tree_map = jax.tree_util.tree_map


def make_mesh(devices=None, axis: str = TIME_AXIS) -> Mesh:
    """A one-axis mesh named ``axis`` (default ``"time"``) over ``devices`` (default all)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (axis,))


def _linear_parts(cell) -> tuple:
    """The linear cells of ``cell`` (itself, or the parts of a stack), or a clear error."""
    if isinstance(cell, Cell) and cell.linear is not None:
        return (cell,)
    if isinstance(cell, Cell) and cell.layers is not None:
        parts = tuple(p for part in cell.layers.parts for p in _linear_parts(part))
        if len(parts) == len(cell.layers.parts):
            return parts
    raise TypeError(
        f"sequence parallelism needs a linear-recurrence cell (one with cell.linear: min_gru, "
        f"min_lstm, lru, ...) or a stack of them, got {cell!r}: its state passes through a "
        f"nonlinearity every step, so a shard of time cannot start before the one before it "
        f"has finished; use seqjax.unroll_batch (data parallelism splits the batch instead)")


def unroll_batch(cell, params, xs, state=None, *, mesh: Mesh, axis: str = TIME_AXIS,
                 batch_axis: Optional[str] = None, lengths=None, reverse: bool = False,
                 **options):
    """:func:`seqjax.unroll_batch` with the time axis split over the devices of ``axis``.

    Each device holds ``T / n`` steps of every sequence; the result equals
    :func:`seqjax.unroll_batch` on one device (up to floating-point reassociation), and
    so do its gradients (``jax.grad`` through the ``shard_map``).

    Args:
      cell: a linear-recurrence cell (min_gru, min_lstm, lru, ...) or a
        :func:`seqjax.stack` of them (residual connections allowed; dropout is
        inactive, as without an ``rng``).
      params: the cell's params (replicated on every device).
      xs: ``[batch, time, input_size]``. A length that ``n`` does not divide is padded
        with masked steps, which leave the state as it is.
      state: initial state with a leading batch axis, or ``None`` for zeros.
      mesh: a :class:`jax.sharding.Mesh` with an axis named ``axis``.
      axis: the mesh axis that splits time.
      batch_axis: optionally, a second mesh axis that splits the batch (data and
        sequence parallelism together); ``None`` replicates the batch.
      lengths: ``[batch]`` valid lengths, as in :func:`seqjax.unroll_batch`.
      reverse: run each sequence from its last valid step to its first.
      **options: unroll options for each device's local scan (``associative``,
        ``pallas``, ``hoist``, ``unroll``), as in :func:`seqjax.unroll`.

    Returns:
      ``(final_state, ys)``: ``final_state`` with a leading batch axis (the same on
      every device of ``axis``) and ``ys [batch, time, output_size]`` split over
      ``axis`` like ``xs``.

    References:
      Martin & Cundy, "Parallelizing linear recurrent neural nets over sequence
      length", ICLR 2018; De et al., "Griffin", arXiv:2402.19427, 2024 (recurrentgemma's
      sequence-sharded scan).
    """
    parts = _linear_parts(cell)
    if not isinstance(mesh, Mesh):
        raise TypeError(f"unroll_batch: mesh must be a jax.sharding.Mesh, got "
                        f"{type(mesh).__name__}; build one with seqjax.parallel.make_mesh()")
    for name in (axis,) + (() if batch_axis is None else (batch_axis,)):
        if name not in mesh.axis_names:
            raise ValueError(f"unroll_batch: the mesh has axes {mesh.axis_names}, not {name!r}")
    unknown = set(options) - set(_Options._fields)
    if unknown or "reverse" in options:
        raise TypeError(f"unroll_batch: unknown option(s) {sorted(unknown or {'reverse'})}; "
                        f"expected reverse= or one of {list(_Options._fields[1:])}")
    options = _Options(reverse=bool(reverse), **options)
    _checks.batch(xs, cell.input_size(params), "parallel.unroll_batch")
    batch, time = xs.shape[:2]
    n = mesh.shape[axis]
    if batch_axis is not None and batch % mesh.shape[batch_axis]:
        raise ValueError(f"unroll_batch: batch {batch} is not divisible by the "
                         f"{mesh.shape[batch_axis]} devices of mesh axis {batch_axis!r}")
    lengths = _checks.length(lengths, time, shape=(batch,), name="lengths")
    initial = cell.initial_state(params)
    if state is None:
        state = _tree_map(lambda s: jnp.broadcast_to(s, (batch,) + s.shape), initial)
    else:
        for leaf, like in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(initial)):
            if leaf.shape != (batch,) + like.shape:
                raise ValueError(f"unroll_batch: expected state leaves of shape "
                                 f"{(batch,) + like.shape}, got {tuple(leaf.shape)}")
    padded = -(-time // n) * n
    if padded != time:
        xs = jnp.concatenate([xs, jnp.zeros((batch, padded - time) + xs.shape[2:], xs.dtype)], 1)
        if lengths is None:
            lengths = jnp.full((batch,), time, jnp.int32)

    one_layer = len(parts) == 1 and cell.layers is None
    states = (state,) if one_layer else tuple(state)
    batch_spec = P(batch_axis)
    state_specs = _tree_map(lambda _: batch_spec, states)

    def local(params, xs, states, lengths):
        layer_params = (params,) if one_layer else tuple(params)
        xs = jnp.swapaxes(xs, 0, 1)  # [T/n, B, F]
        steps = xs.shape[0]
        valid = None
        if lengths is not None:
            t = lax.axis_index(axis) * steps + jnp.arange(steps, dtype=jnp.int32)
            valid = t[:, None] < lengths[None, :]
        finals = []
        for i, (part, p, h0) in enumerate(zip(parts, layer_params, states)):
            final, ys = _shard(part.linear, p, xs, h0, valid, axis, n, options)
            if cell.layers is not None and cell.layers.residual and i > 0:
                ys = ys + xs.astype(ys.dtype)
            finals.append(final)
            xs = ys
        return tuple(finals), jnp.swapaxes(xs, 0, 1)

    params_spec = _tree_map(lambda _: P(), params)
    lengths_spec = None if lengths is None else batch_spec
    in_specs = (params_spec, P(batch_axis, axis), state_specs, lengths_spec)
    args = (params, xs, states, lengths)
    explicit = any(t == jax.sharding.AxisType.Explicit for t in getattr(mesh, "axis_types", ()))
    if explicit:
        # an explicit-sharding mesh (jax.make_mesh's default): put the inputs where the
        # shard_map expects them
        args = jax.tree_util.tree_map(
            lambda x, spec: x if x is None else jax.reshard(
                x, jax.sharding.NamedSharding(mesh, spec)),
            args, in_specs, is_leaf=lambda x: x is None)
    finals, ys = jax.shard_map(
        local, mesh=mesh, in_specs=in_specs, out_specs=(state_specs, P(batch_axis, axis)),
    )(*args)
    if padded != time and explicit:  # drop the padding: time can no longer be split evenly
        ys = jax.reshard(ys, jax.sharding.NamedSharding(mesh, P(batch_axis)))
    return (finals[0] if one_layer else finals), ys[:, :time]


def _shard(linear, params, xs, h0, valid, axis, n, options):
    """One layer on one device's shard ``xs [T/n, B, F]``: local scan, then correction."""
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    xs = xs.astype(dtype)
    if valid is not None:
        xs = jnp.where(valid[..., None], xs, jnp.zeros((), dtype))
    fs = _linear_features(linear, params, xs)
    a, b = linear.coefficients(params, fs)  # [T/n, B, *state]
    if valid is not None:
        ok = valid.reshape(valid.shape + (1,) * (a.ndim - 2))
        a = jnp.where(ok, a, jnp.ones((), a.dtype))
        b = jnp.where(ok, b, jnp.zeros((), b.dtype))
    reverse = options.reverse
    h0 = h0.astype(a.dtype)
    scan = _linear_scan(options, a.shape[0]) or _sequential_scan
    zero = lax.pcast(jnp.zeros_like(h0), (axis,), to="varying")  # one per shard
    local = scan(a, b, zero, reverse)  # every shard from a zero state
    products = lax.associative_scan(jnp.multiply, a, reverse=reverse)
    last = 0 if reverse else -1
    # the state entering each shard: the recurrence over shards, from h0
    totals, ends = _gather((products[last], local[last]), axis, n)  # [n, B, *state]
    after = _associative_scan(totals, ends, h0, reverse)  # state after shard k
    before = (jnp.concatenate([after[1:], h0[None]]) if reverse
              else jnp.concatenate([h0[None], after[:-1]]))
    carry = before[lax.axis_index(axis)]
    hs = local + products * carry[None]
    ys = linear.readout(params, hs, fs)
    if valid is not None:
        ys = jnp.where(valid[..., None], ys, jnp.zeros((), ys.dtype))
    return after[last], ys


def _gather(values, axis, n):
    """Every device's ``values`` stacked along a new leading axis of size ``n``, the same
    on every device (an ``all_gather`` written as a ``psum`` of one-hot slots, so that
    ``shard_map`` knows the result is replicated)."""
    index = lax.axis_index(axis)

    def one(x):
        slots = jnp.zeros((n,) + x.shape, x.dtype)
        return lax.psum(lax.dynamic_update_index_in_dim(slots, x, index, 0), axis)

    return _tree_map(one, values)
