"""Composition: deep (stacked) cells and bidirectional sequence models."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax.cells import Cell, Layers, SequenceModel, constructor
from seqjax.unroll import _Options, _run_layers, _split_keys, run


@constructor
def stack(*parts, residual: bool = False, dropout: float = 0.0):
    """Deep RNN: each part reads the outputs of the one before.

    .. math:: h^{(l)}_t = \\mathrm{cell}_l(h^{(l)}_{t-1}, y^{(l-1)}_t), \\quad
              y^{(0)}_t = x_t

    Args:
      *parts: cells (then the result is a :class:`~seqjax.Cell`) or, if any of them
        is a :class:`~seqjax.SequenceModel` (e.g. a bidirectional layer), a
        :class:`~seqjax.SequenceModel`.
      residual: add each layer's input to its output from the second layer on,
        ``y_l = cell_l(y_{l-1}) + y_{l-1}``; needs equal sizes.
      dropout: rate of the dropout applied to every layer's outputs except the last
        (as ``torch.nn.LSTM(dropout=...)``). Active only when an ``rng`` is passed to
        :func:`~seqjax.unroll`; the one-step ``apply`` never drops.

    Returns:
      A cell whose params and state are tuples with one entry per part. Unrolled
      layer by layer when the whole sequence is there, so every layer gets its own
      hoisting or associative scan.
    """
    if not parts:
        raise ValueError("stack needs at least one cell")
    for i, part in enumerate(parts):
        if not isinstance(part, (Cell, SequenceModel)):
            raise TypeError(f"stack: part {i} is a {type(part).__name__}, expected a seqjax "
                            "Cell or SequenceModel")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"stack: dropout must lie in [0, 1), got {dropout}")
    if residual:
        for i in range(1, len(parts)):
            if parts[i].output_size != parts[i - 1].output_size:
                raise ValueError(
                    f"stack(residual=True): layer {i} maps {parts[i - 1].output_size} "
                    f"features to {parts[i].output_size}; a residual connection needs equal "
                    "sizes")
    parts = tuple(parts)
    layers = Layers(parts, residual, float(dropout))

    def init(key, input_size):
        input_size = _checks.positive_int(input_size, "input_size")
        keys = jax.random.split(key, len(parts))
        params, size = [], input_size
        for part, k in zip(parts, keys):
            params.append(part.init(k, size))
            size = part.output_size
        return tuple(params)

    # `constructor` makes both check the params first, layer by layer (seqjax._checks)
    def initial_state(params):
        return tuple(part.initial_state(p) for part, p in zip(parts, params))

    def input_size(params):
        return parts[0].input_size(params[0])

    out = parts[-1].output_size
    if all(isinstance(p, Cell) for p in parts):

        def apply(params, state, x):
            new_states = []
            for i, (part, p, s) in enumerate(zip(parts, params, state)):
                s, y = part.apply(p, s, x)
                if residual and i > 0:
                    y = y + x.astype(y.dtype)
                new_states.append(s)
                x = y
            return tuple(new_states), x

        return Cell(init, initial_state, apply, input_size, out, layers=layers)

    def batched(params, xs, state, *, lengths=None, keys=None, **options):
        return _run_layers(layers, params, xs, state, lengths, keys, _Options(**options))

    return _sequence_model(init, initial_state, input_size, out, batched, "stack")


def _sequence_model(init, initial_state, input_size, out, batched, name) -> SequenceModel:
    """A :class:`~seqjax.SequenceModel` whose one-example ``apply`` is its ``batched``
    form on a batch of one."""

    def apply(params, xs, state=None, *, length=None, rng=None, **options):
        # params and state are checked first (the `constructor` wrapper)
        _checks.sequence(xs, input_size(params), name)
        length = _checks.length(length, xs.shape[0])
        if state is None:
            state = initial_state(params)
        final, ys = batched(params, xs[:, None], jax.tree_util.tree_map(lambda s: s[None], state),
                            lengths=None if length is None else length[None],
                            keys=None if rng is None else rng[None], **options)
        return jax.tree_util.tree_map(lambda s: s[0], final), ys[:, 0]

    return SequenceModel(init, initial_state, apply, input_size, out, batched)


class BidirectionalParams(NamedTuple):
    forward: object
    backward: object


def concat(y_forward, y_backward):
    """Merge by concatenating features (``2H``), as PyTorch's bidirectional RNNs."""
    return jnp.concatenate([y_forward, y_backward], axis=-1)


def add(y_forward, y_backward):
    """Merge by summing the two directions."""
    return y_forward + y_backward


def mean(y_forward, y_backward):
    """Merge by averaging the two directions."""
    return (y_forward + y_backward) / 2


def multiply(y_forward, y_backward):
    """Merge by elementwise product."""
    return y_forward * y_backward


@constructor
def bidirectional(forward, backward, *, merge: Callable = concat) -> SequenceModel:
    """Runs ``forward`` left to right and ``backward`` right to left, then merges.

    .. math:: y_t = \\mathrm{merge}(\\overrightarrow{h}_t, \\overleftarrow{h}_t)

    Length-aware: with ``length`` the backward cell reads only the valid prefix, in
    reverse (as PyTorch's packed sequences), and padded outputs are zero.

    Args:
      forward: a :class:`~seqjax.Cell` (or stack) for the forward direction.
      backward: a cell for the backward direction.
      merge: ``(y_forward [T, Hf], y_backward [T, Hb]) -> y [T, H']``: :func:`concat`
        (default), :func:`add`, :func:`mean`, :func:`multiply` or any function.

    Returns:
      A :class:`~seqjax.SequenceModel` with params :class:`BidirectionalParams`,
      state ``(forward_state, backward_state)``; ``apply`` returns the final
      states of both directions (the backward one is its state after step 0).
    """
    for name, c in (("forward", forward), ("backward", backward)):
        if not isinstance(c, Cell):
            raise TypeError(f"bidirectional: {name} must be a seqjax Cell, got {type(c).__name__}")
    if not callable(merge):
        raise TypeError(f"bidirectional: merge must be a function (y_forward, y_backward) -> y, "
                        f"e.g. seqjax.concat, got {type(merge).__name__}")
    merge_name = getattr(merge, "__name__", "the merge function")
    try:
        probe = jax.eval_shape(merge,
                               jax.ShapeDtypeStruct((1, forward.output_size), jnp.float32),
                               jax.ShapeDtypeStruct((1, backward.output_size), jnp.float32))
    except Exception as e:  # noqa: BLE001 -- any failure of the user's merge
        raise ValueError(
            f"bidirectional: merge={merge_name} cannot combine the forward outputs "
            f"[T, {forward.output_size}] with the backward outputs [T, "
            f"{backward.output_size}] ({type(e).__name__}: {e}); use merge=seqjax.concat, or "
            "cells of equal output sizes") from None
    if getattr(probe, "ndim", None) != 2 or probe.shape[0] != 1:
        raise ValueError(f"bidirectional: merge={merge_name} must keep the time axis: [1, H] "
                         f"inputs gave {getattr(probe, 'shape', type(probe).__name__)}")
    out = probe.shape[1]

    def init(key, input_size):
        kf, kb = jax.random.split(key)
        return BidirectionalParams(forward.init(kf, input_size), backward.init(kb, input_size))

    def initial_state(params):
        return (forward.initial_state(params.forward), backward.initial_state(params.backward))

    def input_size(params):  # `constructor` checks both directions first
        return forward.input_size(params.forward)

    def batched(params, xs, state, *, lengths=None, keys=None, **options):
        options = _Options(**options)
        if options.reverse:
            raise ValueError("bidirectional: reverse=True is not defined (the model already "
                             "runs both ways)")
        sf, sb = state
        kf, kb = _split_keys(keys, 2)
        final_f, yf = run(forward, params.forward, xs, sf, lengths=lengths, keys=kf,
                          options=options)
        final_b, yb = run(backward, params.backward, xs, sb, lengths=lengths, keys=kb,
                          options=options._replace(reverse=True))
        ys = jax.vmap(merge, in_axes=(1, 1), out_axes=1)(yf, yb)  # merge sees one example
        return (final_f, final_b), ys

    return _sequence_model(init, initial_state, input_size, out, batched, "bidirectional")
