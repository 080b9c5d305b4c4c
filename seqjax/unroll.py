"""Unrolling cells over sequences: ``lax.scan``, associative scans, lengths, batches."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from seqjax import _checks
from seqjax.cells import Cell, SequenceModel

# Whether gated cells compute their input projection for all steps before the loop
# (one [T, I] @ [I, G] matmul) instead of inside it, by backend. Chosen by measurement
# with `seqjax bench` (see README, "Performance"): on XLA:CPU the per-step matmul was
# faster; on GPU/TPU hoisting is the standard win (it is what cuDNN does).
HOIST_BY_BACKEND = {"cpu": False, "gpu": True, "cuda": True, "rocm": True, "tpu": True}


def default_hoist(backend: Optional[str] = None) -> bool:
    """The hoisting strategy :func:`unroll` uses on ``backend`` (default: JAX's)."""
    return HOIST_BY_BACKEND.get(backend or jax.default_backend(), True)


def unroll(
    cell,
    params,
    xs,
    state=None,
    *,
    reverse: bool = False,
    length=None,
    unroll: int = 1,
    remat: bool = False,
    hoist: Optional[bool] = None,
    associative: Optional[bool] = None,
    rng=None,
):
    """Runs ``cell`` over one sequence.

    Args:
      cell: a :class:`~seqjax.Cell` (or a :class:`~seqjax.SequenceModel`, whose own
        ``apply`` is called).
      params: the cell's params.
      xs: ``[time, input_size]`` floating inputs, one example.
      state: initial state; ``None`` means ``cell.initial_state(params)``.
      reverse: run from the last valid step to the first. With ``length`` only the
        valid prefix ``xs[:length]`` is read, in reverse.
      length: number of valid steps (int or int scalar array, ``0 <= length <= time``).
        Outputs at padded steps are zero; the final state is the state after the
        last valid step (carried, not gathered from every step's state); gradients
        w.r.t. padded inputs are exactly zero.
      unroll: steps per loop iteration, passed to ``lax.scan``.
      remat: recompute each step's activations in the backward pass instead of
        storing them (``jax.checkpoint`` around the step): memory ``O(T * state)``
        instead of ``O(T * activations)`` for long sequences.
      hoist: compute gated cells' input projection for all steps before the loop.
        ``None`` picks :func:`default_hoist` for the current backend.
      associative: evaluate linear-recurrence cells (min_gru, min_lstm, lru) with
        ``jax.lax.associative_scan`` (log depth). ``None`` means yes; ``False``
        steps through time with the cell's ``apply`` (same numbers).
      rng: PRNG key for the dropout between stacked layers; ``None`` disables
        dropout (inference).

    Returns:
      ``(final_state, ys)`` with ``ys [time, output_size]``.
    """
    if isinstance(cell, SequenceModel):
        if reverse:
            raise ValueError("reverse=True is not defined for a SequenceModel (a "
                             "bidirectional model already runs both ways)")
        return cell.apply(params, xs, state, length=length, rng=rng, unroll=unroll,
                          remat=remat, hoist=hoist, associative=associative)
    if not isinstance(cell, Cell):
        raise TypeError(f"unroll expects a seqjax Cell or SequenceModel, got {type(cell).__name__}")
    _checks.sequence(xs, cell.input_size(params))
    time = xs.shape[0]
    length = _checks.length(length, time)
    initial = cell.initial_state(params)
    if state is None:
        state = initial
    else:
        _checks.state_like(state, initial)
    options = dict(reverse=reverse, length=length, unroll=unroll, remat=remat, hoist=hoist,
                   associative=associative)
    if cell.layers is not None:
        return _unroll_layers(cell, params, xs, state, rng=rng, **options)
    return _unroll_cell(cell, params, xs, state, **options)


def _unroll_cell(cell, params, xs, state, *, reverse, length, unroll, remat, hoist,
                 associative):
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    xs = xs.astype(dtype)
    time = xs.shape[0]
    valid = None if length is None else jnp.arange(time, dtype=jnp.int32) < length
    if valid is not None:
        xs = jnp.where(valid[:, None], xs, jnp.zeros((), dtype))
    if cell.linear is not None and (associative is None or associative):
        return _associative(cell.linear, params, xs, state, reverse, valid)

    if cell.hoist is not None and (default_hoist() if hoist is None else hoist):
        step, inputs = cell.hoist.step, cell.hoist.input_map(params, xs)
    else:
        step, inputs = cell.apply, xs
    if remat:
        step = jax.checkpoint(step, prevent_cse=False)

    if valid is None:

        def body(carry, x):
            return step(params, carry, x)

        return lax.scan(body, state, inputs, reverse=reverse, unroll=unroll)

    def masked_body(carry, inp):
        x, ok = inp
        new, y = step(params, carry, x)
        new = jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, carry)
        return new, jnp.where(ok, y, jnp.zeros((), y.dtype))

    return lax.scan(masked_body, state, (inputs, valid), reverse=reverse, unroll=unroll)


def _associative(linear, params, xs, h0, reverse, valid):
    a, b = linear.coefficients(params, xs)
    if valid is not None:
        # padded steps leave the state as it is: h = 1 * h + 0
        a = jnp.where(valid[:, None], a, jnp.ones((), a.dtype))
        b = jnp.where(valid[:, None], b, jnp.zeros((), b.dtype))
    first = -1 if reverse else 0
    b = b.at[first].add(a[first] * h0)

    def combine(earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return a1 * a2, a2 * b1 + b2

    _, hs = lax.associative_scan(combine, (a, b), reverse=reverse)
    ys = linear.readout(params, hs, xs)
    if valid is not None:
        ys = jnp.where(valid[:, None], ys, jnp.zeros((), ys.dtype))
    return hs[0 if reverse else -1], ys


def _unroll_layers(cell, params, xs, state, *, rng, **options):
    layers = cell.layers
    if len(params) != len(layers.parts):
        raise ValueError(f"stack of {len(layers.parts)} layers got params for {len(params)}")
    keys = [None] * len(layers.parts) if rng is None else list(jax.random.split(rng, len(layers.parts)))
    finals = []
    for i, (part, p, s, key) in enumerate(zip(layers.parts, params, state, keys)):
        sub_key, drop_key = (None, None) if key is None else jax.random.split(key)
        final, ys = unroll(part, p, xs, s, rng=sub_key, **options)
        if layers.residual and i > 0:
            ys = ys + xs.astype(ys.dtype)
        if i < len(layers.parts) - 1:
            ys = dropout(ys, layers.dropout, drop_key)
        finals.append(final)
        xs = ys
    return tuple(finals), xs


def dropout(x, rate: float, rng):
    """Inverted dropout; identity when ``rng`` is ``None`` or ``rate == 0``."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


def unroll_batch(cell, params, xs, state=None, *, lengths=None, rng=None, **options):
    """:func:`unroll` over a batch, built with ``jax.vmap``.

    Args:
      cell: a :class:`~seqjax.Cell` or :class:`~seqjax.SequenceModel`.
      params: shared by every example.
      xs: ``[batch, time, input_size]``.
      state: ``None`` (every example starts from ``cell.initial_state``) or a state
        with a leading batch axis.
      lengths: ``None`` or ``[batch]`` integer valid lengths.
      rng: dropout key, split across the batch.
      **options: forwarded to :func:`unroll` (``reverse``, ``unroll``, ``remat``,
        ``hoist``, ``associative``).

    Returns:
      ``(final_state, ys)``: states with a leading batch axis and
      ``ys [batch, time, output_size]``.
    """
    _checks.batch(xs, cell.input_size(params))
    batch, time = xs.shape[:2]
    lengths = _checks.length(lengths, time, shape=(batch,), name="lengths")
    if state is not None:
        initial = cell.initial_state(params)
        _checks.state_like(jax.tree_util.tree_map(lambda s: s[0], state), initial)
        for leaf in jax.tree_util.tree_leaves(state):
            if leaf.shape[0] != batch:
                raise ValueError(f"unroll_batch: state needs a leading batch axis of {batch}, "
                                 f"got shape {tuple(leaf.shape)}")
    keys = None if rng is None else jax.random.split(rng, batch)

    def one(x, s, n, k):
        return unroll(cell, params, x, s, length=n, rng=k, **options)

    in_axes = (0, None if state is None else 0, None if lengths is None else 0,
               None if keys is None else 0)
    return jax.vmap(one, in_axes=in_axes)(xs, state, lengths, keys)
