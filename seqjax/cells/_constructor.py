"""``@constructor``: what makes a function that builds a cell a seqjax constructor.

It sits one floor above the contract (:mod:`seqjax.cells.contract`, which defines
what a cell is) and the checks (:mod:`seqjax._checks`, which compare params and
states with what a cell's own ``init`` builds): it records the call that built a
cell, for its ``repr`` and attributes, and wraps the cell's entry points in those
checks.
"""

from __future__ import annotations

import functools
import inspect

from seqjax import _checks
from seqjax.cells.contract import _SIGNATURES, Cell


def constructor(fn):
    """Marks a function that builds a :class:`Cell` or :class:`SequenceModel`.

    The result records the constructor's name and arguments (``cell.name``,
    ``cell.config``, and each argument as an attribute), so that it prints as the
    call that made it.

    It also checks its params at every entry: ``input_size``, ``initial_state`` and
    ``apply`` first compare the params' tree structure, shapes and dtypes with what
    the model's own ``init`` builds (``jax.eval_shape``, cached), and ``apply``
    compares a given state with ``initial_state(params)``; a mismatch raises a
    message naming the cell (the layer of a stack, the direction of a bidirectional
    model), the field and both shapes (see ``seqjax._checks``). The checks read
    shapes and dtypes only, so they run the same on tracers and cost nothing in
    compiled code.
    """
    signature = inspect.signature(fn)
    _SIGNATURES[fn.__name__] = signature

    @functools.wraps(fn)
    def build(*args, **kwargs):
        model = fn(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return _checking(model._replace(name=fn.__name__,
                                        config=tuple(bound.arguments.items())))

    return build


def _checking(model):
    """``model`` whose ``input_size``, ``initial_state`` (and a cell's ``apply``) check
    the params (and state) they are given before doing anything else."""
    raw_input_size, raw_initial_state, raw_apply = (model.input_size, model.initial_state,
                                                    model.apply)
    this = []  # the finished model, which the checks compare against

    def input_size(params):
        return _checks.cell_params(this[0], params, raw_input_size)

    setattr(input_size, _checks.CHECKED, True)

    def initial_state(params):
        _checks.params(this[0], params, "initial_state")
        return raw_initial_state(params)

    def apply(params, state, x):
        _checks.params(this[0], params, "apply")
        _checks.state(this[0], params, state, "apply")
        return raw_apply(params, state, x)

    def apply_sequence(params, xs, state=None, **options):
        _checks.params(this[0], params, "apply")
        if state is not None:
            _checks.state(this[0], params, state, "apply")
        return raw_apply(params, xs, state, **options)

    this.append(model._replace(
        input_size=input_size, initial_state=initial_state,
        apply=apply if isinstance(model, Cell) else apply_sequence))
    return this[0]
