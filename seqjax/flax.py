"""Flax NNX adapter: any seqjax cell or sequence model as an ``nnx.Module``.

The module owns the cell's params (one ``nnx.Param`` per array, in the cell's own
params structure) and runs :func:`seqjax.unroll_batch` on ``[batch, time, features]``
inputs, so it composes with ``nnx.Linear``, ``nnx.Optimizer``, ``nnx.jit``,
``nnx.split``/``nnx.merge`` and ``nnx.state`` like any NNX layer::

    from flax import nnx
    import optax, seqjax, seqjax.flax

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.rnn = seqjax.flax.RNN(seqjax.lstm(32), 8, rngs=rngs)
            self.head = nnx.Linear(32, 1, rngs=rngs)

        def __call__(self, xs):
            return self.head(self.rnn(xs)[:, -1])

    model = Model(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

Needs the ``flax`` extra (``pip install "seqjax[flax]"``). This file is
``seqjax/flax.py``; the import of ``flax.nnx`` below is absolute and always finds the
real Flax package, never this module.
"""

from __future__ import annotations

from typing import Optional, Union

import jax
import jax.numpy as jnp

from seqjax._extras import require
from seqjax.cells import Cell, SequenceModel
from seqjax.unroll import unroll_batch

nnx = require("flax.nnx", "seqjax.flax")

__all__ = ("RNN",)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _declares_dropout(cell) -> Optional[bool]:
    """Whether ``cell`` drops out between stacked layers (``None``: cannot tell)."""
    if isinstance(cell, SequenceModel):
        return None
    if cell.layers is None:
        return False
    if cell.layers.dropout > 0.0:
        return True
    flags = [_declares_dropout(part) for part in cell.layers.parts]
    if any(flags):
        return True
    return None if None in flags else False


class RNN(nnx.Module):
    """A seqjax cell (or sequence model) unrolled over a batch, as an NNX layer.

    .. math:: (s_T, y_{1..T}) = \\mathrm{unroll}(\\mathrm{cell}, \\theta, x_{1..T}, s_0)

    ``self.params`` holds ``cell.init(rngs.params(), input_size)`` with every array
    wrapped in an ``nnx.Param``, in the cell's own structure (an ``LSTMParams`` of
    ``Param``, a tuple of them for a stack, a ``BidirectionalParams``, ...), so
    ``nnx.state(model, nnx.Param)`` names them ``rnn/params/w_i`` and so on, and
    ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` trains them. :meth:`cell_params`
    returns the plain seqjax params pytree, for :func:`seqjax.unroll` and friends.

    Dropout (only meaningful for :func:`seqjax.stack` with ``dropout > 0``, also
    inside a bidirectional or stacked sequence model) follows ``nnx.Dropout``:

    * it is applied when the module is in training mode (``deterministic=False``,
      the default, or after ``model.train()``) and switched off by
      ``model.eval()`` or ``deterministic=True`` in the constructor or the call;
    * its key comes from ``rngs`` passed to ``__call__`` (an ``nnx.Rngs``, whose
      ``"dropout"`` stream is used, an ``nnx.RngStream`` or a PRNG key array), or
      else from the ``"dropout"`` stream of the constructor's ``rngs``, forked at
      construction when that ``nnx.Rngs`` has one (``nnx.Rngs(0, dropout=1)``);
    * with neither, the unroll runs without dropout, except that a stack which
      declares ``dropout > 0`` raises a ``ValueError`` rather than silently
      training without it.

    Args:
      cell: a :class:`~seqjax.Cell` (``seqjax.lstm(...)``, ``seqjax.stack(...)``)
        or a :class:`~seqjax.SequenceModel` (``seqjax.bidirectional(...)``).
      input_size: ``I``, the number of input features.
      rngs: ``nnx.Rngs``; its ``params`` stream initialises the cell.
      reverse: run each sequence from its last valid step to its first (cells
        only; a bidirectional model already runs both ways).
      deterministic: ``True`` disables dropout (see above); default ``False``.
      unroll: steps per ``lax.scan`` iteration.
      remat: recompute activations in the backward pass (``jax.checkpoint``).
      hoist: compute the input projection of gated cells before the loop
        (``None``: the backend's default).
      associative: evaluate linear-recurrence cells with an associative scan
        (``None``: yes).

    Raises:
      TypeError: ``cell`` is not a seqjax ``Cell`` or ``SequenceModel``.
      ValueError: ``reverse=True`` with a ``SequenceModel``.
    """

    def __init__(
        self,
        cell: Union[Cell, SequenceModel],
        input_size: int,
        *,
        rngs: nnx.Rngs,
        reverse: bool = False,
        deterministic: bool = False,
        unroll: int = 1,
        remat: bool = False,
        hoist: Optional[bool] = None,
        associative: Optional[bool] = None,
    ):
        if not isinstance(cell, (Cell, SequenceModel)):
            raise TypeError(f"seqjax.flax.RNN expects a seqjax Cell or SequenceModel, got "
                            f"{type(cell).__name__}")
        if reverse and isinstance(cell, SequenceModel):
            raise ValueError("seqjax.flax.RNN: reverse=True is not defined for a SequenceModel "
                             "(a bidirectional model already runs both ways)")
        self.cell = cell
        self.input_size = int(input_size)
        self.reverse = bool(reverse)
        self.deterministic = bool(deterministic)
        self.options = (("unroll", unroll), ("remat", bool(remat)), ("hoist", hoist),
                        ("associative", associative))
        params = cell.init(rngs.params(), input_size)
        self.params = nnx.data(jax.tree_util.tree_map(nnx.Param, params))
        self.rngs = nnx.data(rngs["dropout"].fork() if "dropout" in rngs else None)

    def cell_params(self):
        """The params as a plain seqjax pytree (arrays, no ``nnx.Param``)."""
        return jax.tree_util.tree_map(lambda v: v.get_value(), self.params, is_leaf=_is_variable)

    def initial_state(self, batch_size: int):
        """The cell's initial state repeated over a leading ``[batch_size]`` axis."""
        state = self.cell.initial_state(self.cell_params())
        return jax.tree_util.tree_map(
            lambda s: jnp.broadcast_to(s, (batch_size,) + s.shape), state)

    def _dropout_key(self, deterministic, rngs):
        if deterministic is None:
            deterministic = self.deterministic
        if deterministic:
            return None
        if rngs is None:
            rngs = self.rngs
        if rngs is None:
            if _declares_dropout(self.cell):
                raise ValueError(
                    "seqjax.flax.RNN: the stack uses dropout and the module is in training "
                    "mode (deterministic=False), but no dropout key is available; pass "
                    "rngs=nnx.Rngs(..., dropout=...) to the constructor or to the call, or "
                    "call model.eval() / pass deterministic=True")
            return None
        if isinstance(rngs, nnx.Rngs):
            return rngs["dropout"]()
        if isinstance(rngs, nnx.RngStream):
            return rngs()
        if isinstance(rngs, jax.Array):
            return rngs
        raise TypeError(f"seqjax.flax.RNN: rngs must be an nnx.Rngs, nnx.RngStream or a PRNG "
                        f"key array, got {type(rngs).__name__}")

    def __call__(
        self,
        xs: jax.Array,
        *,
        lengths: Optional[jax.Array] = None,
        initial_state=None,
        return_state: bool = False,
        deterministic: Optional[bool] = None,
        rngs: Union[nnx.Rngs, nnx.RngStream, jax.Array, None] = None,
    ):
        """Runs the cell over a batch of sequences with :func:`seqjax.unroll_batch`.

        Args:
          xs: ``[batch, time, input_size]`` floating inputs.
          lengths: ``None`` or ``[batch]`` integer valid lengths; padded outputs
            are zero and the final state is the state after the last valid step.
          initial_state: ``None`` (the cell's zero state) or a state with a
            leading batch axis (see :meth:`initial_state`).
          return_state: also return the final state.
          deterministic: overrides ``self.deterministic`` for this call.
          rngs: dropout key source for this call (see the class docstring).

        Returns:
          ``ys [batch, time, output_size]``, or ``(final_state, ys)`` with
          ``return_state=True`` (states with a leading batch axis).
        """
        key = self._dropout_key(deterministic, rngs)
        options = dict(self.options)
        if self.reverse:
            options["reverse"] = True
        final, ys = unroll_batch(self.cell, self.cell_params(), xs, initial_state,
                                 lengths=lengths, rng=key, **options)
        return (final, ys) if return_state else ys
