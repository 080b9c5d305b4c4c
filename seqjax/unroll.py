"""Unrolling cells over sequences: ``lax.scan``, associative scans, lengths, batches.

:func:`unroll` runs a cell over one sequence and :func:`unroll_batch` over a batch;
both are the same computation, which runs one ``lax.scan`` over time for the whole
batch (the cell, which sees one example, is ``jax.vmap``-ed inside the step). How a
cell is evaluated is chosen here, from what the cell states about itself:

* linear-recurrence cells (``cell.linear``) run as ``jax.lax.associative_scan``, a
  sequential ``lax.scan`` over their coefficients, or (``pallas=True``, opt-in until
  measured on a GPU) the Pallas kernel :func:`seqjax.kernels.linear_scan`, by
  :func:`default_associative` and :func:`default_pallas`; a sequential scan takes the
  coefficients computed for all steps at once, or (:func:`default_linear_hoist`: when
  they are much larger than the input, as S6's ``[H, N]``) forms them inside the loop
  from the input's ``cell.linear.features``, computed for all steps before it;
* matrix-state cells (``cell.chunkwise``) run in their chunkwise-parallel form
  (``chunkwise``, ``chunk_size``): matmuls inside chunks, a scan across chunks;
* gated cells (``cell.hoist``) may compute their input projection for all steps in
  one matmul before the loop (``hoist``), and those whose recurrent weight enters
  through one product (``cell.hoist.recurrent``) get a fused backward pass
  (``fused``): only ``dr @ W_h.T`` stays in the backward loop, and the weight and
  input gradients are single matmuls over all ``(t, b)`` afterwards, as in cuDNN;
* everything else steps through ``cell.apply``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from seqjax import _checks
from seqjax.cells import Cell, Hoist, SequenceModel
from seqjax.cells.contract import combine_facts
from seqjax.chunkwise import default_chunk_size

_tree_map = jax.tree_util.tree_map

# Whether gated cells compute their input projection for all steps before the loop
# (one [T, I] @ [I, G] matmul) instead of inside it, by backend. Chosen by measurement
# with `seqjax bench --hoist both` (see README, "Performance"): on XLA:CPU the
# per-step matmul was faster; on GPU/TPU hoisting is the standard win (cuDNN does it).
HOIST_BY_BACKEND = {"cpu": False, "gpu": True, "cuda": True, "rocm": True, "tpu": True}


def default_hoist(backend: Optional[str] = None) -> bool:
    """The hoisting strategy :func:`unroll` uses on ``backend`` (default: JAX's)."""
    return HOIST_BY_BACKEND.get(backend or jax.default_backend(), True)


# Up to which batch size the fused backward pass is the default, by backend. Measured
# with `seqjax bench --fused both` (README, "Performance"): on XLA:CPU, fused/plain
# forward+backward time is 0.59-0.66 at B = 8 and 0.95-0.96 at B = 32 (LSTM and GRU,
# H = 256), where the per-step weight-gradient matmuls have few rows; at B >= 64 they are
# efficient, the LSTM breaks even and the GRU (whose fused pass saves u and r apart)
# takes 1.10-1.18x. No limit elsewhere: cuDNN's own backward has this structure.
# With a 16-bit compute dtype (mixed precision: the cell's `dtype=`) the fused pass won
# at every batch measured: `python benchmarks/mixed_precision.py`
# (docs/bench/mixed_precision.md; LSTM and GRU, B16/T512/H128 and B64/T256/H256), at
# B = 64 fused/plain 0.78 (LSTM) and 0.76 (GRU), since JAX's own transpose then rounds
# and converts every step's weight-gradient matmul.
FUSED_MAX_BATCH_BY_BACKEND = {"cpu": 63}
FUSED_MAX_BATCH_16BIT_COMPUTE_BY_BACKEND = {"cpu": None}


def default_fused(batch: int, backend: Optional[str] = None, compute_dtype=None) -> bool:
    """Whether :func:`unroll_batch` uses the fused backward pass for ``batch`` examples
    of a cell whose matmuls run in ``compute_dtype`` (``None``: the params' dtype)."""
    backend = backend or jax.default_backend()
    table = FUSED_MAX_BATCH_BY_BACKEND
    if compute_dtype is not None and jnp.dtype(compute_dtype).itemsize == 2:
        table = FUSED_MAX_BATCH_16BIT_COMPUTE_BY_BACKEND
    limit = table.get(backend)
    return limit is None or batch <= limit


# From which length linear-recurrence cells (min_gru, min_lstm, lru, rg_lru, s6) take the
# associative scan instead of a sequential one, by backend; None: never. XLA:CPU: never --
# `python -m seqjax.bench.strategies --grid cpu` (docs/bench/strategies_cpu.md; B16, T 64
# to 4096) found a sequential scan faster than the associative one for every cell, length
# and mode (forward+backward 0.1x to 0.9x its time). GPU and TPU: UNMEASURED -- the
# associative scan is the standard choice there (log depth instead of T host-driven loop
# steps); `benchmarks/gpu.sh` measures it.
ASSOCIATIVE_MIN_LENGTH_BY_BACKEND = {"cpu": None}


def default_associative(length: int, backend: Optional[str] = None) -> bool:
    """Whether :func:`unroll` evaluates a linear-recurrence cell over ``length`` steps
    with ``jax.lax.associative_scan`` on ``backend`` (default: JAX's)."""
    limit = ASSOCIATIVE_MIN_LENGTH_BY_BACKEND.get(backend or jax.default_backend(), 0)
    return limit is not None and length >= limit


# A linear-recurrence cell run sequentially computes its coefficients a, b for all steps
# first (then lax.scan over them) while they hold at most this many real numbers per step
# per input feature ("growth"), by backend; above it, it forms them inside the loop (from
# the cell's `linear.features`, computed before it, or by stepping its apply). XLA:CPU
# (docs/bench/strategies_cpu.md, B16, T 64 to 4,096, forward + backward, as ratios to
# forming them inside the loop, in the same rounds):
# precomputing won for min_gru, min_lstm and rg_lru (growth 2 at I = H: 0.55-0.73) and
# for lru (growth 4, complex a, b: 0.56-0.85), and lost for s6 (growth 32, an [H, 16]
# state: 1.8-2.1, against stepping apply; the loop over its features that replaced that
# took 0.53-1.14 of apply's time, `seqjax bench --cells s6 --batch 16,64 --length 32,512
# --hidden 64` at both commits, so the choice stands). An earlier run on a machine
# loaded 4-6x more had lru losing; the quieter run of 2026-11-26 14:14 decides. GPU and
# TPU: UNMEASURED; always (there the associative scan or the Pallas kernel is the default
# anyway).
LINEAR_HOIST_MAX_GROWTH_BY_BACKEND = {"cpu": 4.0}


def default_linear_hoist(growth: float, backend: Optional[str] = None) -> bool:
    """Whether a sequential linear recurrence precomputes its coefficients, given their
    size per step over the input's (``growth``), on ``backend``."""
    limit = LINEAR_HOIST_MAX_GROWTH_BY_BACKEND.get(backend or jax.default_backend())
    return limit is None or growth <= limit


# Whether linear-recurrence cells run as the Pallas kernel `seqjax.kernels.linear_scan`
# by default, by backend. Nowhere yet: the kernel has only been run in Pallas interpret
# mode (CPU); on a GPU it has never been compiled, checked or timed. It is opt-in
# (`pallas=True`) until `benchmarks/gpu.sh` has compiled it on a GPU, checked it
# against the plain unroll and measured it faster there; then this table gets
# {"gpu": True} with the committed docs/bench/gpu.md as its source.
PALLAS_BY_BACKEND: dict = {}


def default_pallas(backend: Optional[str] = None) -> bool:
    """Whether :func:`unroll` runs linear-recurrence cells with the Pallas kernel."""
    return PALLAS_BY_BACKEND.get(backend or jax.default_backend(), False)


class _Options(NamedTuple):
    """Static unroll options, passed down unchanged through stacks."""

    reverse: bool = False
    unroll: int = 1
    remat: bool = False
    hoist: Optional[bool] = None
    associative: Optional[bool] = None
    fused: Optional[bool] = None
    pallas: Optional[bool] = None
    chunkwise: Optional[bool] = None
    chunk_size: Optional[int] = None


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
    fused: Optional[bool] = None,
    rng=None,
    pallas: Optional[bool] = None,
    chunkwise: Optional[bool] = None,
    chunk_size: Optional[int] = None,
    perturbation=None,
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
        w.r.t. padded inputs are exactly zero. A concrete length outside
        ``[0, time]`` raises; a traced one (under ``jit``/``vmap``) acts as if
        clipped to ``[0, time]``, and raises only under
        ``jax.experimental.checkify.checkify``.
      unroll: steps per loop iteration, passed to ``lax.scan``.
      remat: for long sequences: keep the state only every ``k = ceil(sqrt(T))``
        steps and recompute each chunk of ``k`` steps in the backward pass
        (``jax.checkpoint`` per chunk). The recurrence then holds ``O(sqrt(T))``
        states and activations instead of ``O(T)``, for one more forward pass.
      hoist: compute gated cells' input projection for all steps before the loop.
        ``None`` picks :func:`default_hoist` for the current backend.
      associative: evaluate linear-recurrence cells (min_gru, min_lstm, lru, ...) with
        ``jax.lax.associative_scan`` (log depth). ``False`` steps through time:
        ``lax.scan`` over the coefficients ``a, b`` computed for all steps at once
        (``hoist=True``), or forming them inside the loop (``hoist=False``: from the
        cell's ``linear.features`` of every step, computed before the loop, or by its
        ``apply``), same numbers;
        ``hoist=None`` picks :func:`default_linear_hoist`. ``None`` picks
        :func:`default_associative` for the length and backend.
      fused: give cells with a :class:`~seqjax.Recurrent` form (rnn, lstm, the
        reset-after gru and mgu) the fused backward pass described in the module
        docstring. ``None`` picks :func:`default_fused` for the batch size and
        backend (always, for one sequence; with ``remat``, inside each chunk). It
        is a ``jax.custom_vjp``, so forward-mode differentiation of the unroll
        (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``) needs ``fused=False``;
        reverse mode of any order works, and so does forward over reverse
        (``jax.hessian``). Outside ``jit`` a forward-mode pass raises a ``TypeError``
        that says so; inside ``jit`` JAX raises its own "can't apply forward-mode
        autodiff (jvp) to a custom_vjp function" while compiling, and its traceback
        points at the line that names ``fused=False``.
      rng: PRNG key for the dropout between stacked layers; ``None`` disables
        dropout (inference).
      pallas: run linear-recurrence cells with the Pallas kernel
        :func:`seqjax.kernels.linear_scan` (the time loop inside one kernel; in
        Pallas interpret mode off GPU, which is slow and meant for tests), and gated
        cells with a :class:`~seqjax.Recurrent` form with
        :func:`seqjax.kernels.fused_recurrent` (the recurrent weight loaded once per
        launch; small hidden sizes only). ``None`` picks :func:`default_pallas` for
        linear cells, unless ``associative`` is given, and never the gated kernel.
        Both kernels are ``jax.custom_vjp``s (reverse mode only) and are unverified
        on a real GPU.
      chunkwise: evaluate cells that have a whole-sequence form in it: the layers and
        blocks of :mod:`seqjax.layers` and :mod:`seqjax.blocks` (``cell.parallel``;
        ``False`` steps them through ``apply``), and the matrix-state cells (mlstm,
        delta_net, gated_delta_net, mamba2: those with ``cell.chunkwise``) in their
        chunkwise-parallel form:
        dense matmuls inside chunks of ``chunk_size`` steps and a scan over chunks
        carrying the state (:mod:`seqjax.chunkwise`); the backward pass stores one
        ``[d_k, d_v]`` state per chunk and head, not per step. ``True``: always.
        ``False``: step through time with the cell's ``apply`` (same numbers, one
        state per step in the backward pass). ``None``: differentiate the chunkwise
        form always; on CPU, run an unroll that nothing differentiates (inference)
        as the step-by-step scan, measured faster there forward only
        (docs/bench/chunkwise.md; a ``jax.custom_jvp`` whose value is the scan's and
        whose derivatives are the chunkwise form's).
      chunk_size: steps per chunk of the chunkwise form, a positive int (cut to the
        sequence length when longer; an uneven last chunk is padded with steps that
        leave the state unchanged). ``None`` picks
        :func:`seqjax.chunkwise.default_chunk_size` for the backend.
      perturbation: ``None``, or ``eps`` shaped like the state with a leading axis
        ``time + 1``: ``eps[0]`` is added to the initial state and ``eps[1 + t]`` to
        the state produced by reading ``xs[t]``, and each output is read from the
        perturbed state,

        .. math::
            \\tilde h_0 = h_0 + \\epsilon_0, \\quad
            \\tilde h_t = f(\\tilde h_{t-1}, x_t) + \\epsilon_t, \\quad
            y_t = g(\\tilde h_t, x_t),

        so that the gradient of a loss w.r.t. ``eps`` at zero is ``dL/dh_t`` for
        every step at once (what :mod:`seqjax.diagnostics` measures). ``g`` is the
        linear cells' readout, the matrix cells' read-out of the new state, and the
        hidden state (``state.h`` or the state) for the others. Linear-recurrence
        cells keep their associative, sequential or Pallas scan (``eps_t`` joins
        their ``b_t``); every other cell steps through its ``apply`` (or its hoisted
        step), since the fused backward pass and the chunkwise form never hold
        every step's state: ``fused=True``, ``chunkwise=True`` and the gated Pallas
        kernel raise with a perturbation, and ``None`` picks the plain scan.
        Padded steps (``length``) ignore their perturbation.

    Returns:
      ``(final_state, ys)`` with ``ys [time, output_size]``.
    """
    options = _Options(reverse, unroll, remat, hoist, associative, fused, pallas=pallas,
                       chunkwise=chunkwise, chunk_size=chunk_size)
    if isinstance(cell, SequenceModel):
        if reverse:
            raise ValueError("reverse=True is not defined for a SequenceModel (a "
                             "bidirectional model already runs both ways)")
        _checks.params(cell, params, "unroll")
        if state is not None:
            _checks.state(cell, params, state, "unroll")
        if not _vmapped_here((params, xs, state, length, rng)):
            return cell.apply(params, xs, state, length=length, rng=rng,
                              **options._replace(reverse=False)._asdict())
        _checks.sequence(xs, cell.input_size(params), cell.name or "unroll")
        length = _checks.length(length, xs.shape[0])
        state = cell.initial_state(params) if state is None else state
        return _batch_when_vmapped(cell, options, params, xs, state, length, rng)
    if not isinstance(cell, Cell):
        raise TypeError(f"unroll expects a seqjax Cell or SequenceModel, got {type(cell).__name__}")
    _checks.sequence(xs, _checks.params(cell, params, "unroll"))
    length = _checks.length(length, xs.shape[0])
    initial = cell.initial_state(params)
    if state is not None:  # None stays None: a whole-sequence form may skip an empty state
        _checks.state_like(state, initial, "unroll")
    if perturbation is not None:
        _check_perturbation(cell, options, perturbation, initial, xs.shape[0])
    return _batch_when_vmapped(cell, options, params, xs, state, length, rng, perturbation)


def _check_perturbation(cell, options: _Options, perturbation, initial, time: int,
                        batch: Optional[int] = None):
    """A perturbation shaped like the state with a leading ``time + 1`` (after a
    ``batch`` axis), and options that can take it (see :func:`unroll`)."""
    lead = (time + 1,) if batch is None else (batch, time + 1)
    want, tree = jax.tree_util.tree_flatten(initial)
    got, got_tree = jax.tree_util.tree_flatten(perturbation)
    if got_tree != tree or any(jnp.shape(g) != lead + w.shape for g, w in zip(got, want)):
        raise ValueError(
            f"unroll: perturbation must be shaped like the state with a leading axis "
            f"{'batch, ' if batch is not None else ''}T + 1 = {time + 1}: expected "
            f"{[lead + w.shape for w in want]} in {tree}, got "
            f"{[tuple(jnp.shape(g)) for g in got]} in {got_tree} "
            "(seqjax.diagnostics.zero_perturbation(cell, params, T) builds one)")
    for name in ("fused", "chunkwise"):
        if getattr(options, name):
            raise ValueError(
                f"unroll: {name}=True cannot take a perturbation: it never holds every "
                f"step's state; pass {name}=None or False (same numbers, the plain scan)")
    if options.pallas and not _has_linear(cell):
        raise ValueError("unroll: pallas=True with a perturbation works for linear-recurrence "
                         "cells only; the gated kernel never holds every step's state")


def _has_linear(cell) -> bool:
    if cell.layers is not None:
        return all(_has_linear(part) for part in cell.layers.parts)
    return cell.linear is not None


def _one_example(cell, options, params, xs, state, length, rng, perturbation=None):
    """The unroll of one checked example: :func:`run` on a batch of one."""
    if isinstance(cell, SequenceModel):
        return cell.apply(params, xs, state, length=length, rng=rng, **options._asdict())
    final, ys = run(cell, params, xs[:, None],
                    None if state is None else _tree_map(lambda s: s[None], state),
                    lengths=None if length is None else length[None],
                    keys=None if rng is None else rng[None], options=options,
                    perturbation=(None if perturbation is None else
                                  _tree_map(lambda e: e[:, None], perturbation)))
    return _tree_map(lambda s: s[0], final), ys[:, 0]


def _vmapped_here(args) -> bool:
    """Whether the innermost transformation now running is a ``jax.vmap`` that batches
    one of ``args``.

    Only then is the unroll wrapped in a ``custom_vmap`` (see :func:`_batch_when_vmapped`):
    the vmap consumes the wrapper at once, so no transformation ever sees it.
    ``custom_vmap`` supports no reverse-mode differentiation of its own, so it must not
    meet ``grad`` first (``jax.vmap(jax.grad(...))``) or be staged out under a ``jit``
    inside the vmap; those take the per-example path, which is always correct. This
    reads JAX's current trace, an internal; if the internals differ, every call takes the
    per-example path.
    """
    try:
        from jax._src import core as jax_core
        from jax._src.interpreters import batching
        trace = jax_core.unsafe_get_current_trace()
        if not isinstance(trace, batching.BatchTrace):
            return False
        return any(isinstance(leaf, batching.BatchTracer) and leaf._trace.tag is trace.tag
                   for leaf in jax.tree_util.tree_leaves(args))
    except (ImportError, AttributeError):
        return False


def _batch_when_vmapped(cell, options, params, xs, state, length, rng, perturbation=None):
    """:func:`_one_example`, except that under ``jax.vmap`` the whole batch runs as the
    one time-major scan of :func:`unroll_batch`.

    Without this, ``jax.vmap(unroll)`` batches every operation of the one-example unroll,
    which is correct but slower: the fused backward pass (a ``custom_vjp``) is vmapped
    as written for one example, so it forms one weight gradient per example and sums
    them, instead of one matmul over all ``(t, b)``.
    """
    args = (params, xs, state, length, rng, perturbation)
    if not _vmapped_here(args):
        return _one_example(cell, options, *args)

    def one(params, xs, state, length, rng, perturbation):
        return _one_example(cell, options, params, xs, state, length, rng, perturbation)

    @jax.custom_batching.custom_vmap
    def wrapped(params, xs, state, length, rng, perturbation):
        return one(params, xs, state, length, rng, perturbation)

    @wrapped.def_vmap

    def batched(axis_size, in_batched, params, xs, state, length, rng, perturbation):
        if any(jax.tree_util.tree_leaves(in_batched[0])):
            # an ensemble: every example has its own params, so there is no shared
            # weight whose gradient a single scan could form; map the examples
            in_axes = tuple(_tree_map(lambda b: 0 if b else None, flags)
                            for flags in in_batched)
            out = jax.vmap(one, in_axes=in_axes)(*(params, xs, state, length, rng,
                                                   perturbation))
            return out, _tree_map(lambda _: True, out)

        def spread(value, is_batched):
            return value if is_batched else jnp.broadcast_to(value, (axis_size,) + value.shape)

        _, xs_b, state_b, length_b, rng_b, eps_b = in_batched
        xs = spread(xs, xs_b)
        state = None if state is None else _tree_map(spread, state, state_b)
        lengths = None if length is None else spread(length, length_b)
        keys = None if rng is None else spread(rng, rng_b)
        eps = (None if perturbation is None else
               _tree_map(lambda e, b: jnp.swapaxes(spread(e, b), 0, 1), perturbation, eps_b))
        final, ys = run(cell, params, jnp.swapaxes(xs, 0, 1), state, lengths=lengths,
                        keys=keys, options=options, perturbation=eps)
        out = (final, jnp.swapaxes(ys, 0, 1))
        return out, _tree_map(lambda _: True, out)

    return wrapped(*args)


def unroll_batch(cell, params, xs, state=None, *, lengths=None, rng=None, perturbation=None,
                 **options):
    """:func:`unroll` over a batch: ``jax.vmap(unroll)``, computed as one scan.

    Equals ``jax.vmap(lambda x, s, n, k: unroll(cell, params, x, s, length=n, rng=k))``
    over ``(xs, state, lengths, jax.random.split(rng, batch))``, but runs a single
    ``lax.scan`` over time for the whole batch, so the fused backward pass forms the
    weight gradients as one matmul over all ``(t, b)``.

    Args:
      cell: a :class:`~seqjax.Cell` or :class:`~seqjax.SequenceModel`.
      params: shared by every example.
      xs: ``[batch, time, input_size]``.
      state: ``None`` (every example starts from ``cell.initial_state``) or a state
        with a leading batch axis.
      lengths: ``None`` or ``[batch]`` integer valid lengths (checked as ``length``
        in :func:`unroll`).
      rng: dropout key, split across the batch.
      perturbation: ``None`` or ``[batch, time + 1, ...]`` perturbations of the state
        (see :func:`unroll`).
      **options: forwarded to :func:`unroll` (``reverse``, ``unroll``, ``remat``,
        ``hoist``, ``associative``, ``fused``, ``chunkwise``, ``chunk_size``).

    Returns:
      ``(final_state, ys)``: states with a leading batch axis and
      ``ys [batch, time, output_size]``.
    """
    if not isinstance(cell, (Cell, SequenceModel)):
        raise TypeError(f"unroll_batch expects a seqjax Cell or SequenceModel, got "
                        f"{type(cell).__name__}")
    unknown = set(options) - set(_Options._fields)
    if unknown:
        raise TypeError(f"unroll_batch: unknown option(s) {sorted(unknown)}; expected "
                        f"{list(_Options._fields)}")
    options = _Options(**options)
    if isinstance(cell, SequenceModel) and options.reverse:
        raise ValueError("reverse=True is not defined for a SequenceModel (a bidirectional "
                         "model already runs both ways)")
    _checks.batch(xs, _checks.params(cell, params, "unroll_batch"))
    batch, time = xs.shape[:2]
    lengths = _checks.length(lengths, time, shape=(batch,), name="lengths")
    initial = cell.initial_state(params)
    if state is not None:  # None stays None: a whole-sequence form may skip an empty state
        _checks.state_like(state, initial, "unroll_batch", batch=batch)
    if perturbation is not None:
        if isinstance(cell, SequenceModel):
            raise TypeError("unroll_batch: a SequenceModel (bidirectional) has no single state "
                            "per step to perturb")
        _check_perturbation(cell, options, perturbation, initial, time, batch)
        perturbation = _tree_map(lambda e: jnp.swapaxes(e, 0, 1), perturbation)
    keys = None if rng is None else jax.random.split(rng, batch)
    final, ys = run(cell, params, jnp.swapaxes(xs, 0, 1), state, lengths=lengths, keys=keys,
                    options=options, perturbation=perturbation)
    return final, jnp.swapaxes(ys, 0, 1)


# ------------------------------------------------------------------ time-major core


def run(cell, params, xs, state, *, lengths, keys, options: _Options, perturbation=None):
    """The unroll of a batch, time-major: the implementation behind everything above.

    Args:
      cell: a :class:`~seqjax.Cell` or :class:`~seqjax.SequenceModel`.
      params: the cell's params (shared over the batch).
      xs: ``[time, batch, input_size]``, already checked.
      state: state with a leading ``[batch]`` axis, or ``None``: every example's
        initial state.
      lengths: ``None`` or int32 ``[batch]``.
      keys: ``None`` or ``[batch]`` PRNG keys, one per example (dropout).
      options: :class:`_Options`.
      perturbation: ``None`` or the state's perturbations, leaves ``[time + 1, batch,
        ...]`` (see :func:`unroll`).

    Returns:
      ``(final_state [batch, ...], ys [time, batch, output_size])``.
    """
    if options.chunk_size is not None:
        _checks.positive_int(options.chunk_size, "chunk_size")
    if isinstance(cell, SequenceModel):
        if state is None:
            state = _initial_batch(cell, params, xs.shape[1])
        return cell.batched(params, xs, state, lengths=lengths, keys=keys, **options._asdict())
    if cell.layers is not None:
        return _run_layers(cell.layers, params, xs, state, lengths, keys, options, perturbation)
    return _run_cell(cell, params, xs, state, lengths, options, perturbation)


def _initial_batch(cell, params, batch: int):
    """``cell.initial_state(params)`` for every example: leaves ``[batch, ...]``."""
    return _tree_map(lambda s: jnp.broadcast_to(s, (batch,) + s.shape),
                     cell.initial_state(params))


def _valid(lengths, time):
    """``[time, batch]`` booleans, ``t < lengths[b]``; ``None`` without lengths."""
    if lengths is None:
        return None
    return jnp.arange(time, dtype=jnp.int32)[:, None] < lengths[None, :]


def _where_batch(ok, new, old):
    """``new`` where ``ok [batch]`` is true, else ``old``, leaf by leaf."""
    return _tree_map(lambda n, o: jnp.where(ok.reshape(ok.shape + (1,) * (n.ndim - 1)), n, o),
                     new, old)


def _zero_where_not(ok, y):
    return jnp.where(ok.reshape(ok.shape + (1,) * (y.ndim - 1)), y, jnp.zeros((), y.dtype))


def _run_cell(cell: Cell, params, xs, state, lengths, options: _Options, perturbation=None):
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    xs = xs.astype(dtype)
    valid = _valid(lengths, xs.shape[0])
    if valid is not None:
        xs = jnp.where(valid[..., None], xs, jnp.zeros((), dtype))
    fresh = state is None and perturbation is None
    if state is None:
        state = _initial_batch(cell, params, xs.shape[1])
    eps = None
    if perturbation is not None:
        state = _tree_map(lambda s, e: s + e[0].astype(s.dtype), state, perturbation)
        eps = _tree_map(lambda e: e[1:], perturbation)

    def evaluate(xs, state, valid, eps=None, fresh=False):
        return _evaluate(cell, params, xs, state, valid, options, fresh, eps)

    try:
        if options.remat and xs.shape[0] > 1:
            return _checkpointed_chunks(evaluate, xs, state, valid, options.reverse, eps)
        return evaluate(xs, state, valid, eps, fresh)
    except TypeError as error:
        if _FORWARD_MODE_ERROR not in str(error):
            raise
        raise TypeError(_forward_mode_message(cell, xs.shape[1], options)) from None


# What JAX says when forward-mode autodiff meets a ``jax.custom_vjp`` (the fused backward
# pass, the Pallas kernels). Under ``jit`` JAX raises it while compiling, after unroll has
# returned, so only the eager case can be renamed here; the line that calls the custom_vjp
# (in ``_fused``) carries the same advice, which JAX's traceback shows.
_FORWARD_MODE_ERROR = "can't apply forward-mode autodiff (jvp) to a custom_vjp function"


def _forward_mode_message(cell, batch: int, options: _Options) -> str:
    name = getattr(cell, "name", "") or "the cell"
    if options.pallas or getattr(cell, "linear", None) is not None:
        how = (("pallas=True runs" if options.pallas else "pallas=None (seqjax.default_pallas "
                "on this backend) runs") + " it as a Pallas kernel whose backward pass is a "
               "jax.custom_vjp; pass pallas=False")
    else:
        picked = ("fused=True" if options.fused else
                  f"fused=None picked it by default for a batch of {batch} "
                  "(seqjax.default_fused)")
        how = (f"{picked}: its cuDNN-style backward pass is a jax.custom_vjp; pass "
               "fused=False")
    return (f"unroll: forward-mode differentiation (jax.jvp, jax.jacfwd, jax.linearize) "
            f"cannot go through {name}'s unroll: {how} to unroll/unroll_batch for forward "
            "mode (same numbers; reverse mode works either way)")


def _checkpointed_chunks(evaluate, xs, state, valid, reverse, eps=None):
    """``evaluate`` over chunks of ``k = ceil(sqrt(T))`` steps, each a ``jax.checkpoint``.

    The forward pass keeps only the state between chunks; the backward pass reruns
    one chunk at a time. Memory for the recurrence is ``O(sqrt(T))`` states and
    activations instead of ``O(T)``, for one extra forward pass. A ragged last chunk
    is padded with masked steps, which leave the state as it is.
    """
    time, batch = xs.shape[:2]
    k = math.isqrt(max(time, 1) - 1) + 1
    n = -(-time // k)
    pad = n * k - time
    if pad:
        xs = jnp.concatenate([xs, jnp.zeros((pad,) + xs.shape[1:], xs.dtype)])
        valid = jnp.ones((time, batch), bool) if valid is None else valid
        valid = jnp.concatenate([valid, jnp.zeros((pad, batch), bool)])
        if eps is not None:
            eps = _tree_map(lambda e: jnp.concatenate([e, jnp.zeros((pad,) + e.shape[1:],
                                                                    e.dtype)]), eps)
    chunks = (xs.reshape((n, k) + xs.shape[1:]),
              None if valid is None else valid.reshape((n, k, batch)),
              None if eps is None else _tree_map(lambda e: e.reshape((n, k) + e.shape[1:]),
                                                 eps))

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def chunk(carry, inp):
        return evaluate(inp[0], carry, inp[1], inp[2])

    final, ys = lax.scan(chunk, state, chunks, reverse=reverse)
    return final, ys.reshape((n * k,) + ys.shape[2:])[:time]


def _evaluate(cell: Cell, params, xs, state, valid, options: _Options, fresh: bool = False,
              eps=None):
    """One unroll of ``cell`` over masked ``xs [T, B, F]``, by the cell's best strategy.

    ``fresh``: ``state`` is every example's initial state (a whole-sequence form is
    then given ``None``). ``eps``: the perturbation of every step's state, leaves ``[T,
    B, ...]`` (see :func:`unroll`).
    """
    if eps is not None:
        return _perturbed(cell, params, xs, state, valid, options, eps)
    if cell.parallel is not None and options.chunkwise is not False:
        return _parallel(cell, params, xs, None if fresh else state, valid, options)
    if cell.chunkwise is not None and options.chunkwise is not False:
        if options.chunkwise is None and not _chunkwise_forward(state):
            return _scan_unless_differentiated(cell, params, xs, state, valid, options)
        return _chunkwise(cell.chunkwise, params, xs, state, valid, options)
    if cell.linear is not None:
        scan = _linear_scan(options, xs.shape[0], lambda: _growth(cell.linear, params, xs))
        if scan is not None:
            return _associative(cell.linear, params, xs, state, options.reverse, valid, scan)

    hoist = cell.hoist is not None and (default_hoist() if options.hoist is None
                                        else options.hoist)
    if options.pallas and cell.hoist is not None and cell.hoist.recurrent is not None:
        return _pallas_recurrent(cell.hoist, params, xs, state, valid, options.reverse)
    recurrent = None if cell.hoist is None else cell.hoist.recurrent
    fused = (default_fused(xs.shape[1], compute_dtype=getattr(recurrent, "dtype", None))
             if options.fused is None else options.fused)
    if recurrent is not None and fused:
        return _fused(cell.hoist, params, xs, state, valid, options.reverse, options.unroll,
                      hoist)

    step, inputs = _stepper(cell, params, xs, hoist)
    step = jax.vmap(step, in_axes=(None, 0, 0))

    if valid is None:

        def body(carry, x):
            return step(params, carry, x)

        return lax.scan(body, state, inputs, reverse=options.reverse, unroll=options.unroll)

    def masked_body(carry, inp):
        x, ok = inp
        new, y = step(params, carry, x)
        return _where_batch(ok, new, carry), _zero_where_not(ok, y)

    return lax.scan(masked_body, state, (inputs, valid), reverse=options.reverse,
                    unroll=options.unroll)


def _parallel(cell: Cell, params, xs, state, valid, options: _Options):
    """A layer's or block's whole-sequence form (``cell.parallel``), forward; ``reverse``
    runs it on each example's valid prefix reversed in place, so the padded steps stay
    at the end, where the form expects them."""
    if xs.shape[0] == 0:
        if state is None:
            state = _initial_batch(cell, params, xs.shape[1])
        return state, jnp.zeros((0, xs.shape[1], cell.output_size), xs.dtype)
    if options.reverse:
        xs = _reverse_valid(xs, valid)
    final, ys = cell.parallel(params, xs, state, valid, options._replace(reverse=False))
    if options.reverse:
        ys = _reverse_valid(ys, valid)
    if valid is not None:
        ys = jnp.where(valid[..., None], ys, jnp.zeros((), ys.dtype))
    return final, ys


def _reverse_valid(xs, valid):
    """``xs [T, B, ...]`` with each example's valid prefix reversed in place (its own
    inverse); the whole of ``xs`` reversed without ``valid``."""
    if valid is None:
        return xs[::-1]
    time = xs.shape[0]
    lengths = jnp.sum(valid, axis=0, dtype=jnp.int32)
    t = jnp.arange(time, dtype=jnp.int32)[:, None]
    index = jnp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # [T, B]
    return jnp.take_along_axis(xs, index.reshape(index.shape + (1,) * (xs.ndim - 2)), axis=0)


def _perturbed(cell: Cell, params, xs, state, valid, options: _Options, eps):
    """The unroll with ``eps[t]`` added to the state after step ``t`` (see
    :func:`unroll`): linear cells keep their scan, the others step."""
    if cell.linear is not None:
        scan = _linear_scan(options, xs.shape[0], lambda: _growth(cell.linear, params, xs))
        if scan is not None:
            return _associative(cell.linear, params, xs, state, options.reverse, valid, scan,
                                eps)
    read = jax.vmap(_output_fn(cell, params, state), in_axes=(None, 0, 0))
    hoist = cell.hoist is not None and (default_hoist() if options.hoist is None
                                        else options.hoist)
    step, inputs = _stepper(cell, params, xs, hoist)
    step = jax.vmap(step, in_axes=(None, 0, 0))

    def body(carry, inp):
        u, x, e, ok = inp
        new, _ = step(params, carry, u)
        new = _tree_map(lambda n, d: n + d.astype(n.dtype), new, e)
        if ok is not None:
            new = _where_batch(ok, new, carry)
        y = read(params, new, x)
        if ok is not None:
            y = _zero_where_not(ok, y)
        return new, y

    return lax.scan(body, state, (inputs, xs, eps, valid), reverse=options.reverse,
                    unroll=options.unroll)


def _output_fn(cell: Cell, params, state):
    """``g(params, state, x) -> y`` for one example: the output read off a (perturbed)
    state (see :func:`unroll`'s ``perturbation``)."""
    if cell.linear is not None:
        linear = cell.linear
        return lambda p, s, x: linear.readout(p, s, _linear_features(linear, p, x))
    if cell.chunkwise is not None:  # matrix-state cells: read the state, then the readout
        form = cell.chunkwise
        return lambda p, s, x: form.readout(p, form.read(s, form.features(p, x)), x)
    example = _tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), state)
    hidden = example.h if hasattr(example, "h") else example
    x = jax.ShapeDtypeStruct((cell.input_size(params),), jax.tree_util.tree_leaves(params)[0].dtype)
    y = jax.eval_shape(cell.apply, params, example, x)[1]
    if cell.parallel is not None or not isinstance(hidden, jax.ShapeDtypeStruct) \
            or hidden.shape != y.shape:
        raise TypeError(
            f"unroll: a perturbation needs a cell whose output is its hidden state "
            f"(state.h or the state), a linear cell's readout or a matrix cell's read-out; "
            f"{cell.name or 'this cell'}'s output {y.shape} is not. For the blocks of a "
            f"language model, seqjax.lm measures gradients of the residual stream instead")
    return (lambda p, s, x_: s.h) if hasattr(example, "h") else (lambda p, s, x_: s)


# Whether a matrix-state cell's unroll that nothing differentiates (inference) also runs
# the chunkwise form, by backend. XLA:CPU: no -- docs/bench/chunkwise.md (B 8, H 64, T
# 512 to 8,192) measured the chunked forward pass at 0.99-2.35x the time of a plain scan
# over `apply` for T >= 1,024 (a forward scan keeps only the current state), while the
# chunked forward+backward took 0.10-0.48x the scan's. So on CPU `chunkwise=None` runs
# the scan and differentiates the chunkwise form (a custom_jvp, below). Elsewhere:
# unmeasured, chunked. 16-bit states always run chunked: the chunkwise form computes in
# float32 inside, where a step-by-step scan rounds the state at every step.
CHUNKWISE_FORWARD_BY_BACKEND = {"cpu": False}


def _chunkwise_forward(state, backend: Optional[str] = None) -> bool:
    if any(jnp.dtype(l.dtype).itemsize < 4 for l in jax.tree_util.tree_leaves(state)):
        return True
    return CHUNKWISE_FORWARD_BY_BACKEND.get(backend or jax.default_backend(), True)


def _scan_unless_differentiated(cell: Cell, params, xs, state, valid, options: _Options):
    """The plain scan over ``apply`` as the value, the chunkwise form's derivative as
    its derivative: what nothing differentiates runs as the scan; ``jax.grad``,
    ``jax.jvp`` and the rest trace the ``jax.custom_jvp`` rule, so they see, and store
    residuals of, the chunkwise form only. The two compute the same function (tested to
    1e-10 in float64)."""

    def stepped(params, xs, state, valid):
        return _evaluate(cell, params, xs, state, valid, options._replace(chunkwise=False))

    def chunked(params, xs, state, valid):
        return _chunkwise(cell.chunkwise, params, xs, state, valid, options)

    run = jax.custom_jvp(stepped)
    run.defjvp(lambda primals, tangents: jax.jvp(chunked, primals, tangents))
    return run(params, xs, state, valid)


def _chunkwise(form, params, xs, state, valid, options: _Options):
    """A matrix-state cell's chunkwise-parallel unroll (:mod:`seqjax.chunkwise`).

    ``reverse`` runs the flipped sequence forward: padded steps, then at the front,
    leave the state as it is, so only the valid prefix is read, from its end.
    """
    chunk_size = default_chunk_size() if options.chunk_size is None else options.chunk_size
    if options.reverse:
        xs = xs[::-1]
        valid = None if valid is None else valid[::-1]
    final, o = form.chunked(state, form.features(params, xs), valid, chunk_size)
    ys = form.readout(params, o, xs)
    if valid is not None:
        ys = jnp.where(valid[..., None], ys, jnp.zeros((), ys.dtype))
    return final, ys[::-1] if options.reverse else ys


def _linear_features(linear, params, xs):
    """What a linear cell's ``coefficients`` and ``readout`` take: ``xs`` itself, or
    its ``features`` (see :class:`~seqjax.LinearRecurrence`)."""
    return xs if linear.features is None else linear.features(params, xs)


def _stepper(cell: Cell, params, xs, hoist: bool):
    """``(step, inputs)`` of a loop over time: ``step(p, state, u) -> (state, y)`` for
    one example, and the per-step inputs ``u [T, B, ...]``. The hoisted form's step
    over the input projections; a linear cell with ``features``: its
    ``LinearRecurrence.step`` over the features of every step, computed here (the
    input projections, and their weight gradients, one matmul over all steps instead of
    one per step); else ``apply`` over ``xs``."""
    if hoist:
        return cell.hoist.step, cell.hoist.input_map(params, xs)
    if cell.linear is not None and cell.linear.features is not None:
        return cell.linear.step, cell.linear.features(params, xs)
    return cell.apply, xs


def _associative(linear, params, xs, h0, reverse, valid, scan=None, eps=None):
    xs = _linear_features(linear, params, xs)
    a, b = linear.coefficients(params, xs)  # [T, B, *state]
    if eps is not None:  # a perturbation of every state: h_t = a_t h_{t-1} + (b_t + eps_t)
        b = b + eps.astype(b.dtype)
    if a.shape[0] == 0:  # no steps: no outputs, and the state as it came in
        return h0, linear.readout(params, jnp.zeros(b.shape, h0.dtype), xs)
    if valid is not None:
        # padded steps leave the state as it is: h = 1 * h + 0
        ok = valid.reshape(valid.shape + (1,) * (a.ndim - 2))
        a = jnp.where(ok, a, jnp.ones((), a.dtype))
        b = jnp.where(ok, b, jnp.zeros((), b.dtype))
    hs = (scan or _associative_scan)(a, b, h0, reverse)
    ys = linear.readout(params, hs, xs)
    if valid is not None:
        ys = jnp.where(valid[..., None], ys, jnp.zeros((), ys.dtype))
    return hs[0 if reverse else -1], ys


def _linear_scan(options: _Options, time: int, growth=None):
    """How a linear-recurrence cell runs over ``time`` steps: a function
    ``(a, b, h0, reverse) -> hs``, or ``None`` to step through ``cell.apply``.
    ``growth()`` gives the coefficients' size over the inputs' (see
    :func:`default_linear_hoist`); ``None``: precompute them."""
    if options.pallas or (options.pallas is None and options.associative is None
                          and default_pallas()):
        return _pallas_scan
    if default_associative(time) if options.associative is None else options.associative:
        return _associative_scan
    hoist = options.hoist
    if hoist is None:
        hoist = growth is None or default_linear_hoist(growth())
    return functools.partial(_sequential_scan, unroll=options.unroll) if hoist else None


def _growth(linear, params, xs) -> float:
    """Real numbers in one step's coefficients ``a, b`` per input feature (traced only)."""
    def real(s):
        return math.prod(s.shape) * (2 if jnp.issubdtype(s.dtype, jnp.complexfloating) else 1)

    a, b = jax.eval_shape(lambda p, x: linear.coefficients(p, _linear_features(linear, p, x)),
                          params, xs[:1, :1])
    return (real(a) + real(b)) / max(1, math.prod(xs.shape[2:]))


def _associative_scan(a, b, h0, reverse):
    """``h_t = a_t * h_{t-1} + b_t`` by ``lax.associative_scan`` (log depth)."""
    if a.shape[0] == 0:  # no steps to combine (and no first step to seed with h0)
        return b
    first = -1 if reverse else 0
    b = b.at[first].add(a[first] * h0)

    def combine(earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return a1 * a2, a2 * b1 + b2

    return lax.associative_scan(combine, (a, b), reverse=reverse)[1]


def _sequential_scan(a, b, h0, reverse, unroll=1):
    """The same recurrence by ``lax.scan`` over the precomputed coefficients."""

    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    return lax.scan(step, h0, (a, b), reverse=reverse, unroll=unroll)[1]


def _pallas_recurrent(hoist: Hoist, params, xs, state, valid, reverse):
    from seqjax.kernels import fused_recurrent

    return fused_recurrent(hoist.recurrent, params, hoist.input_map(params, xs), state,
                           valid=valid, reverse=reverse)


def _pallas_scan(a, b, h0, reverse):
    from seqjax.kernels import linear_scan

    return linear_scan(a, b, h0, reverse=reverse)


# ------------------------------------------------------------------- fused backward


def _fused(hoist: Hoist, params, xs, state, valid, reverse: bool, unroll: int,
           hoisted: bool):
    """A gated cell's unroll with a cuDNN-style backward pass (``jax.custom_vjp``).

    Forward: the ordinary scan, saving each step's previous state, input projection
    ``u_t`` and recurrent product ``r_t`` (only ``g_t = u_t + r_t`` when the cell adds
    them, as the LSTM does, and no copy of a state that is also the output).
    Backward: one reverse scan whose only matmul is ``dr_t @ W.T`` (the gradient
    flowing to ``h_{t-1}``), emitting ``du_t`` and ``dr_t``; then
    ``dW = sum_t hidden(s_{t-1}).T @ dr_t`` and the input map's gradients (``dW_i``,
    ``db``, ``dx``) are each one matmul over all ``(t, b)``, instead of ``T`` small
    matmuls accumulated inside the loop.

    With a compute dtype (``rec.dtype``, mixed precision) every one of these matmuls
    -- the forward ``hidden(s) @ W``, the backward ``dr_t @ W.T`` and ``dW`` -- casts
    its operands to it and accumulates in the state's dtype (:meth:`Recurrent.product`).
    """
    rec = hoist.recurrent
    input_map = hoist.input_map
    combine = jax.vmap(rec.combine, in_axes=(None, 0, 0, 0))
    hidden = jax.vmap(rec.hidden)
    weight = rec.weight(params)
    facts = combine_facts(rec.combine, rec.extras(params), state, weight.shape[-1],
                           weight.dtype)
    derive = facts.y_leaf if valid is None else None  # that state leaf = the last output

    def forward(params, xs, state, valid, save):
        weight, extras = rec.weight(params), rec.extras(params)
        if rec.dtype is not None:  # cast once, not every step
            weight = weight.astype(rec.dtype)
        inputs = input_map(params, xs) if hoisted else xs

        def body(s, inp):
            x, ok = inp
            u = x if hoisted else input_map(params, x)
            r = rec.product(hidden(s), weight)
            new, y = combine(extras, s, u, r)
            if ok is not None:
                new, y = _where_batch(ok, new, s), _zero_where_not(ok, y)
            if not save:
                return new, y
            leaves = jax.tree_util.tree_leaves(s)
            kept = [l for i, l in enumerate(leaves) if i != derive]
            return new, (y, kept, (u + r,) if facts.adds else (u, r))

        return lax.scan(body, state, (inputs, valid), reverse=reverse, unroll=unroll)

    @jax.custom_vjp
    def fused_scan(params, xs, state, valid):
        return forward(params, xs, state, valid, save=False)

    def fused_fwd(params, xs, state, valid):
        final, (ys, kept, pre) = forward(params, xs, state, valid, save=True)
        return (final, ys), (params, xs, state, ys if derive is not None else None, kept, pre,
                             valid)

    def previous_states(state, ys, kept):
        """The state before every step, ``[T, B, ...]`` leaves, rebuilt from residuals."""
        leaves, tree = jax.tree_util.tree_flatten(state)
        kept = list(kept)
        if derive is not None:  # s_{t-1} of that leaf is y_{t-1}; s_0 the initial state
            first = leaves[derive][None].astype(ys.dtype)
            shifted = (jnp.concatenate([ys[1:], first]) if reverse
                       else jnp.concatenate([first, ys[:-1]]))[:ys.shape[0]]  # T = 0: none
            kept.insert(derive, shifted)
        return jax.tree_util.tree_unflatten(tree, kept)

    def fused_bwd(residuals, cotangents):
        params, xs, state, ys, kept, pre, valid = residuals
        d_final, d_ys = cotangents
        weight, extras = rec.weight(params), rec.extras(params)
        weight_t = weight.T if rec.dtype is None else weight.T.astype(rec.dtype)
        states = previous_states(state, ys, kept)
        if facts.adds:
            def step(e, s, g):
                return combine(e, s, g, jnp.zeros_like(g))
        else:
            step = combine

        def body(carry, inp):
            ds, d_extras = carry
            s, pre, dy, ok = inp
            _, vjp = jax.vjp(step, extras, s, *pre)
            if ok is not None:
                ds_step = _tree_map(lambda d: _zero_where_not(ok, d), ds)
                dy = _zero_where_not(ok, dy)
            else:
                ds_step = ds
            de, ds_prev, *d_pre = vjp((ds_step, dy))
            _, hidden_vjp = jax.vjp(hidden, s)
            (dh,) = hidden_vjp(rec.product(d_pre[-1], weight_t))  # d_pre[-1]: dr (or dg)
            ds_prev = _tree_map(jnp.add, ds_prev, dh)
            if ok is not None:  # a padded step passes the state (and its gradient) through
                ds_prev = _tree_map(lambda a, d: a + _zero_where_not(~ok, d), ds_prev, ds)
            return (ds_prev, _tree_map(jnp.add, d_extras, de)), tuple(d_pre)

        zero_extras = _tree_map(jnp.zeros_like, extras)
        (d_state, d_extras), d_pre = lax.scan(
            body, (d_final, zero_extras), (states, pre, d_ys, valid),
            reverse=not reverse, unroll=unroll)
        dus, drs = d_pre[0], d_pre[-1]
        hs = hidden(_tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), states))  # [T*B, H]
        d_weight = rec.product(hs.T, drs.reshape(-1, drs.shape[-1]))
        _, rec_vjp = jax.vjp(lambda p: (rec.weight(p), rec.extras(p)), params)
        (d_params_rec,) = rec_vjp((d_weight.astype(weight.dtype), d_extras))
        _, in_vjp = jax.vjp(input_map, params, xs)
        d_params_in, d_xs = in_vjp(dus)
        return _tree_map(jnp.add, d_params_in, d_params_rec), d_xs, d_state, None

    fused_scan.defvjp(fused_fwd, fused_bwd)
    return fused_scan(params, xs, state, valid)  # forward mode (jax.jvp): fused=False


# ------------------------------------------------------------------------- layers


def _split_keys(keys, n):
    """Per-example keys ``[B]`` -> ``n`` arrays of per-example keys ``[B]``."""
    if keys is None:
        return [None] * n
    split = jax.vmap(lambda k: jax.random.split(k, n))(keys)
    return [split[:, i] for i in range(n)]


def _run_layers(layers, params, xs, state, lengths, keys, options: _Options, perturbation=None):
    parts = layers.parts
    if len(params) != len(parts):
        raise ValueError(f"stack of {len(parts)} layers got params for {len(params)}")
    states = (None,) * len(parts) if state is None else state
    eps = (None,) * len(parts) if perturbation is None else perturbation
    finals = []
    for i, (part, p, s, e, key) in enumerate(zip(parts, params, states, eps,
                                                 _split_keys(keys, len(parts)))):
        sub_keys, drop_keys = _split_keys(key, 2)
        final, ys = run(part, p, xs, s, lengths=lengths, keys=sub_keys, options=options,
                        perturbation=e)
        if layers.residual and i > 0:
            ys = ys + xs.astype(ys.dtype)
        if i < len(parts) - 1 and drop_keys is not None and layers.dropout > 0.0:
            ys = jnp.swapaxes(jax.vmap(lambda y, k: dropout(y, layers.dropout, k), (1, 0))(
                ys, drop_keys), 0, 1)
        finals.append(final)
        xs = ys
    return tuple(finals), xs


def dropout(x, rate: float, rng):
    """Inverted dropout; identity when ``rng`` is ``None`` or ``rate == 0``."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))
