"""What the layers share: the stateless cell, the linear maps, the inits."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax.cells.contract import Array, Cell

# PyTorch's nn.Linear default, U(+-1/sqrt(fan_in)): what the published models'
# reference code starts its projections from
linear_init = jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class LinearParams(NamedTuple):
    """``y = x @ w + b``: ``w [in, out]`` (PyTorch's ``weight`` transposed), ``b [out]``
    or ``None``."""

    w: Array
    b: Optional[Array]


def linear_init_params(key, size_in: int, size_out: int, *, bias: bool, dtype,
                       init=linear_init) -> LinearParams:
    w = init(key, (size_in, size_out), jnp.float32).astype(dtype)
    return LinearParams(w, jnp.zeros((size_out,), dtype) if bias else None)


def linear(params: LinearParams, x) -> Array:
    """``x @ w (+ b)`` on any leading axes."""
    y = x @ params.w
    if params.b is not None:
        y = y + jnp.broadcast_to(params.b, y.shape)
    return y


def linear_split(params: LinearParams, x, sizes) -> list:
    """``linear(params, x)`` split along its last axis into pieces of ``sizes``, each
    computed from its own columns of ``w``: the values of slicing the output (up to
    the matmuls' summation order), without slicing the activations (whose backward
    pass pads every piece's gradient to the full width and sums them)."""
    pieces, start = [], 0
    for size in sizes:
        part = LinearParams(params.w[:, start:start + size],
                            None if params.b is None else params.b[start:start + size])
        pieces.append(linear(part, x))
        start += size
    return pieces


def work_dtype(dtype):
    """The dtype reductions (norms, softmax) run in: at least float32."""
    return jnp.dtype(jnp.float32) if jnp.dtype(dtype).itemsize < 4 else jnp.dtype(dtype)


def dtype_of(params):
    return jax.tree_util.tree_leaves(params)[0].dtype


def pointwise_cell(init: Callable, fn: Callable, input_size: Callable[..., int],
                   output_size: int) -> Cell:
    """A stateless :class:`~seqjax.Cell`: ``y_t = fn(params, x_t)``, state ``()``.

    ``fn`` works on any leading axes, so the whole-sequence form is ``fn`` of all steps
    at once.
    """

    def initial_state(params):
        return ()

    def apply(params, state, x):
        _checks.step_input(x, input_size(params), "layer")
        return state, fn(params, x.astype(dtype_of(params)))

    def parallel(params, xs, state, valid, options):
        return (() if state is None else state), fn(params, xs)

    return Cell(init, initial_state, apply, input_size, output_size, parallel=parallel)
