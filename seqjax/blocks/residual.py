"""The pre-norm residual block that every published model here is a stack of."""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax.cells._constructor import constructor
from seqjax.cells.contract import Cell
from seqjax.layers.norms import NormParams, rms_norm
from seqjax.unroll import run


class ResidualParams(NamedTuple):
    """``norm`` before the mixer, ``mixer``, and ``mlp_norm``, ``mlp`` (``None``
    without an MLP)."""

    norm: NormParams
    mixer: Any
    mlp_norm: Optional[NormParams]
    mlp: Any


def _lengths(valid):
    return None if valid is None else jnp.sum(valid, axis=0, dtype=jnp.int32)


@constructor
def residual(mixer: Cell, *, mlp: Optional[Cell] = None,
             norm: Optional[Callable[[int], Cell]] = None) -> Cell:
    """Pre-norm residual block (the Transformer's, as in GPT-2 and Llama):

    .. math::
        h_t = x_t + \\mathrm{mixer}(\\mathrm{norm}(x)_t), \\qquad
        y_t = h_t + \\mathrm{mlp}(\\mathrm{norm}'(h_t))

    (without ``mlp``: ``y_t = h_t``). The mixer is any cell from ``D`` to ``D`` features
    -- attention, a recurrent block, or a plain cell such as ``seqjax.lstm(D)`` -- and
    its state is the block's state; norms and MLP are stateless. Stepping ``apply`` one
    token at a time equals the whole-sequence form, which runs the mixer's own
    whole-sequence form (chunkwise, associative, parallel) through
    :func:`seqjax.unroll.run`.

    Args:
      mixer: a :class:`~seqjax.Cell` with ``input_size == output_size == D``.
      mlp: a stateless cell from ``D`` to ``D`` (:func:`seqjax.layers.gated_mlp`,
        :func:`seqjax.layers.mlp`), or ``None``.
      norm: ``(D) -> Cell``, the norm constructor; ``None``: RMSNorm (eps 1e-6) with
        params in the mixer's dtype.

    Returns:
      A :class:`~seqjax.Cell` with params :class:`ResidualParams` and the mixer's
      state.
    """
    if not isinstance(mixer, Cell):
        raise TypeError(f"residual: mixer must be a seqjax Cell, got {type(mixer).__name__}")
    D = mixer.output_size
    if mlp is not None and (not isinstance(mlp, Cell) or mlp.output_size != D):
        raise ValueError(f"residual: mlp must be a Cell with output_size {D}, got {mlp!r}")
    if norm is None:
        key = jax.ShapeDtypeStruct((2,), jnp.uint32)
        shapes = jax.eval_shape(lambda k: mixer.init(k, D), key)
        dtype = jax.tree_util.tree_leaves(shapes)[0].dtype
        norm = functools.partial(rms_norm, eps=1e-6, param_dtype=dtype)
    norm1 = norm(D)
    norm2 = None if mlp is None else norm(D)

    def init(key, input_size):
        size = _checks.positive_int(input_size, "input_size")
        if size != D:
            raise ValueError(f"residual: input_size ({size}) must equal the mixer's output "
                             f"size ({D}): the block adds its output to its input")
        k1, k2, k3, k4 = jax.random.split(key, 4)
        return ResidualParams(norm1.init(k1, D), mixer.init(k2, D),
                              None if mlp is None else norm2.init(k3, D),
                              None if mlp is None else mlp.init(k4, D))

    def initial_state(params):
        return mixer.initial_state(params.mixer)

    def finish(params, h):
        """``h + mlp(norm'(h))`` on any leading axes (both stateless)."""
        if mlp is None:
            return h
        u = norm2.parallel(params.mlp_norm, h, (), None, None)[1]
        return h + mlp.parallel(params.mlp, u, (), None, None)[1]

    def apply(params, state, x):
        _checks.step_input(x, D, "residual")
        x = x.astype(jax.tree_util.tree_leaves(params)[0].dtype)
        u = norm1.parallel(params.norm, x, (), None, None)[1]
        state, y = mixer.apply(params.mixer, state, u)
        return state, finish(params, x + y.astype(x.dtype))

    def parallel(params, xs, state, valid, options):
        u = norm1.parallel(params.norm, xs, (), None, None)[1]
        final, ys = run(mixer, params.mixer, u, state, lengths=_lengths(valid), keys=None,
                        options=options)
        return final, finish(params, xs + ys.astype(xs.dtype))

    return Cell(init, initial_state, apply, lambda p: p.norm.scale.shape[0], D,
                parallel=parallel)
