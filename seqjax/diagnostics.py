"""Gradient diagnostics for recurrent cells: how far back does the loss reach?

Everything here is a pure function of ``(cell, params, xs, ...)``: it runs inside
``jax.jit`` and under ``jax.vmap`` (e.g. over seeds), and works for every seqjax
cell and for stacks of them.

Notation. For a sequence ``x_1 .. x_T`` the states are ``h_0`` (the initial state)
and ``h_t`` (the state after reading ``x_t``), ``t = 1 .. T``; arrays indexed by
``t`` therefore have ``T + 1`` entries and entry ``0`` is the initial state.

The perturbation formulation. :func:`perturbed_unroll` runs the cell with a
perturbation ``eps_t`` added to every state,

.. math::
    \\tilde h_0 = h_0 + \\epsilon_0, \\qquad
    \\tilde h_t = f(\\tilde h_{t-1}, x_t) + \\epsilon_t, \\qquad
    y_t = g(\\tilde h_t, x_t),

so at ``eps = 0`` it is the ordinary unroll, and one reverse-mode pass gives
``dL/d eps_t = dL/dh_t`` for every ``t`` at once. The output ``y_t`` is read from the
perturbed state, so ``dL/dh_t`` counts every path from ``h_t`` to the loss: through
later states, through ``y_t`` itself and, in a stack, through the layers above.
``g`` is the cell's own readout for linear-recurrence cells (``lru``:
``Re(C h) + D x``; ``min_gru``/``min_lstm``: ``h``), the read-out of the new state
for the matrix-state cells (``mlstm``, ``delta_net``, ``gated_delta_net``,
``mamba2``: ``cell.chunkwise``'s ``readout(read(S_t, features(x_t)), x_t)``) and the
hidden state for the other cells (``lstm``: ``state.h``; ``rnn``, ``gru``, ``mgu``:
the state itself).

Linear-recurrence cells keep their associative scan: ``h_t = a_t h_{t-1} + b_t``
becomes ``h_t = a_t h_{t-1} + (b_t + eps_t)``, which is again a linear recurrence,
so ``associative=True`` (the default for those cells) and ``associative=False``
(sequential ``apply``) give the same gradients. ``length`` masking is honoured:
padded steps keep the state, their ``eps_t`` is ignored and their gradients are
exactly zero.

Norms. A state's norm is the Euclidean norm of all its entries; a complex entry
(the LRU state) counts as its real and imaginary parts, so the norm of a complex
gradient is ``sqrt(sum |g|^2)``. Norms are scaled by the largest entry before
squaring (as LAPACK's ``nrm2``), so a vanishing gradient's norm is exact down to the
smallest normal number of its dtype rather than underflowing at its square root.
The LSTM's gradient is reported for the whole state ``(h, c)`` and for ``h`` and ``c``
separately (:class:`GradientNorms` ``.parts``), a stack's per layer
(``.parts[layer]``).

Functions. :func:`state_gradients` / :func:`batch_state_gradients` (``dL/dh_t`` and
``dL/dtheta`` in one backward pass) and their norms (:func:`gradient_norms`,
:func:`state_gradient_norms`, :func:`batch_state_gradient_norms`);
:func:`state_jacobians` and :func:`jacobian_norms` (``dh_T/dh_t``, materialised) and
:func:`jacobian_spectral_norm` (matrix-free power iteration);
:func:`recurrent_spectrum` (spectral radius and largest singular value of the
recurrent matrices); :func:`global_norm`; :func:`memory_moments`, the stationary
variances of a linear recurrence's state and of its sensitivity to its eigenvalue
(Zucchet & Orvieto 2024's curse of memory).

References:
  Bengio, Simard & Frasconi, "Learning long-term dependencies with gradient descent
  is difficult", IEEE TNN 1994.
  Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural
  networks", ICML 2013.
  Arjovsky, Shah & Bengio, "Unitary evolution recurrent neural networks", ICML 2016
  (the ``||dC/dh_t||`` against ``t`` figure).
  Zucchet & Orvieto, "Recurrent neural networks: vanishing and exploding gradients
  are not the end of the story", NeurIPS 2024 (the curse of memory).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from seqjax import _checks
from seqjax.cells import (Cell, GRUParams, LRUParams, LSTMParams, MinParams, RNNParams,
                          SequenceModel)
from seqjax.cells import RGLRUParams, S6Params, SLSTMParams
from seqjax.cells import DeltaNetParams, GatedDeltaNetParams, Mamba2Params, MLSTMParams
from seqjax.cells.xlstm import _slstm_dense
from seqjax.models import state_to_vector, vector_to_state
from seqjax.unroll import unroll

Array = jax.Array

_tree_map = jax.tree_util.tree_map
_leaves = jax.tree_util.tree_leaves


# ----------------------------------------------------------------------------- results


class StateGradients(NamedTuple):
    """Gradients of a scalar loss w.r.t. every state and the parameters.

    Attributes:
      loss: the loss, a scalar.
      states: ``dL/dh_t``, a pytree shaped like the cell's state with a leading time
        axis of ``T + 1`` (batch functions: ``[batch, T + 1, ...]``); entry ``0`` is the
        initial state. Complex states have complex gradients (JAX's convention,
        ``dL/dRe - i dL/dIm``; its modulus is what the norms use).
      params: ``dL/dtheta``, shaped like the cell's params.
    """

    loss: Array
    states: Any
    params: Any


class GradientNorms(NamedTuple):
    """Norms of the gradients in a :class:`StateGradients`.

    Attributes:
      loss: the loss, a scalar.
      states: ``[T + 1]``, ``||dL/dh_t||`` over the whole state (all layers of a
        stack, and for the LSTM both ``h`` and ``c``; for a batch, over the batch
        too, i.e. the Frobenius norm of the ``[batch, state]`` gradient).
      parts: the state's pytree with one ``[T + 1]`` norm per leaf:
        ``LSTMState(h, c)`` for an LSTM, a tuple with one entry per layer for a
        stack, a bare ``[T + 1]`` array for the other cells.
      params: ``||dL/dtheta||``, the global norm over the cell's parameters.
    """

    loss: Array
    states: Array
    parts: Any
    params: Array


class JacobianNorms(NamedTuple):
    """Norms of the Jacobians ``dh_T/dh_t``, ``t = 0 .. T`` (each ``[T + 1]``).

    Attributes:
      frobenius: ``||dh_T/dh_t||_F``.
      spectral: ``||dh_T/dh_t||_2``, the largest singular value.
    """

    frobenius: Array
    spectral: Array


# ------------------------------------------------------------------------ helpers


def global_norm(tree) -> Array:
    """Euclidean norm of all entries of a pytree; complex entries count ``|z|^2``.

    Computed as ``m * sqrt(sum (|x| / m)^2)`` with ``m = max |x|`` (as LAPACK's
    ``nrm2``), so that norms of vanishing gradients stay exact down to the smallest
    normal number instead of underflowing where ``|x|^2`` does (below ``1e-19`` in
    float32, ``1e-154`` in float64).

    Args:
      tree: any pytree of arrays.

    Returns:
      A scalar, ``sqrt(sum |leaf|^2)`` (0 for an empty tree).
    """
    leaves = _leaves(tree)
    if not leaves:
        return jnp.zeros(())
    return _norm(_stack([_norm(leaf) for leaf in leaves]))


def _stack(norms):
    """``jnp.stack`` of real norms in the widest of their dtypes (mixed-precision trees)."""
    dtype = max((n.dtype for n in norms), key=lambda d: jnp.dtype(d).itemsize)
    return jnp.stack([n.astype(dtype) for n in norms])


def _norm(x, axis=None):
    """Euclidean norm over ``axis`` (all axes for ``None``), scaled to avoid underflow."""
    a = jnp.abs(x)
    m = jnp.max(a, axis=axis, keepdims=True)
    scale = jnp.where(m > 0, m, jnp.ones((), a.dtype))
    n = jnp.where(jnp.isinf(m), m, m * jnp.sqrt(jnp.sum((a / scale) ** 2, axis=axis,
                                                        keepdims=True)))
    return n.reshape(()) if axis is None else jnp.squeeze(n, axis)


def _norm_over(x, keep: int):
    """Norm of ``x`` over all axes except the one at ``keep``."""
    return _norm(x, tuple(a for a in range(x.ndim) if a != keep))


def state_size(cell: Cell, params) -> int:
    """Number of real coordinates of the cell's state (complex entries count two).

    Args:
      cell: a seqjax cell or stack.
      params: its params.

    Returns:
      ``S``, the side of the square Jacobians of :func:`state_jacobians`.
    """
    state = jax.eval_shape(cell.initial_state, params)
    return sum(int(np.prod(s.shape)) * (2 if jnp.issubdtype(s.dtype, jnp.complexfloating) else 1)
               for s in _leaves(state))


# --------------------------------------------------------------- perturbed unroll


def zero_perturbation(cell: Cell, params, time: int):
    """Zeros shaped like the cell's state with a leading axis of ``time + 1``.

    Args:
      cell: a seqjax cell or stack.
      params: its params.
      time: ``T``, the number of steps of the sequence.

    Returns:
      The neutral ``perturbation`` argument of :func:`perturbed_unroll`.
    """
    _check_cell(cell, "zero_perturbation")
    return _tree_map(lambda s: jnp.zeros((time + 1,) + s.shape, s.dtype),
                     cell.initial_state(params))


def perturbed_unroll(
    cell: Cell,
    params,
    xs,
    perturbation,
    state=None,
    *,
    length=None,
    **unroll_options,
):
    """Unrolls ``cell`` with ``perturbation[t]`` added to the state ``h_t``.

    .. math::
        \\tilde h_0 = h_0 + \\epsilon_0, \\quad
        \\tilde h_t = f(\\tilde h_{t-1}, x_t) + \\epsilon_t, \\quad
        y_t = g(\\tilde h_t, x_t)

    :func:`seqjax.unroll` with its ``perturbation`` hook, so the strategies measured
    are the unroll's own (see there for ``g`` and for which strategies take a
    perturbation). With zero ``perturbation`` this equals :func:`seqjax.unroll`; its
    gradient w.r.t. ``perturbation[t]`` is ``dL/dh_t``.

    Args:
      cell: a seqjax :class:`~seqjax.Cell` or a stack of cells (not a
        :class:`~seqjax.SequenceModel`).
      params: the cell's params.
      xs: ``[T, input_size]``, one example.
      perturbation: the state's pytree with a leading axis ``T + 1``
        (:func:`zero_perturbation`); stacks: one entry per layer.
      state: initial state ``h_0``; ``None`` means ``cell.initial_state(params)``.
      length: valid steps, as in :func:`seqjax.unroll`; padded steps ignore their
        perturbation and keep the state.
      **unroll_options: options of :func:`seqjax.unroll` (``associative``,
        ``hoist``, ``unroll``, ``remat``, ...).

    Returns:
      ``(final_state, ys)`` with ``ys [T, output_size]``.
    """
    _check_cell(cell, "perturbed_unroll")
    return unroll(cell, params, xs, state, length=length, perturbation=perturbation,
                  **unroll_options)


def _check_cell(cell, name):
    if isinstance(cell, SequenceModel):
        raise TypeError(f"{name}: a SequenceModel (bidirectional) has no single state h_t "
                        "per step; pass a Cell or a stack of Cells")
    if not isinstance(cell, Cell):
        raise TypeError(f"{name} expects a seqjax Cell, got {type(cell).__name__}")


# ---------------------------------------------------------------- state gradients


def state_gradients(cell: Cell, params, xs, loss_fn: Callable, state=None, *, length=None,
                    **unroll_options) -> StateGradients:
    """``dL/dh_t`` for every ``t`` (and ``dL/dtheta``) in one backward pass.

    Args:
      cell: a seqjax cell or stack.
      params: its params.
      xs: ``[T, input_size]``, one example.
      loss_fn: ``(final_state, ys [T, output_size]) -> scalar``; a many-to-one loss
        reads ``ys[-1]`` (or ``final_state``) through its own head.
      state: initial state (default ``cell.initial_state(params)``).
      length: valid steps; gradients at padded steps are zero.
      **unroll_options: ``associative``, ``hoist``, ``unroll``, ``remat`` (see
        :func:`perturbed_unroll`).

    Returns:
      :class:`StateGradients` with ``states`` shaped ``[T + 1, *state]``.
    """
    _check_cell(cell, "state_gradients")
    _checks.sequence(xs, cell.input_size(params), "state_gradients")
    eps = zero_perturbation(cell, params, xs.shape[0])

    def loss(p, e):
        return loss_fn(*perturbed_unroll(cell, p, xs, e, state, length=length, **unroll_options))

    value, (g_params, g_states) = jax.value_and_grad(loss, argnums=(0, 1))(params, eps)
    return StateGradients(value, g_states, g_params)


def batch_state_gradients(cell: Cell, params, xs, loss_fn: Callable, state=None, *,
                          lengths=None, **unroll_options) -> StateGradients:
    """:func:`state_gradients` for a loss over a whole batch (built with vmap).

    Args:
      cell: a seqjax cell or stack.
      params: its params, shared by the batch.
      xs: ``[batch, T, input_size]``.
      loss_fn: ``(final_states, ys [batch, T, output_size]) -> scalar`` (states with a
        leading batch axis), e.g. a mean over the batch.
      state: ``None`` or initial states with a leading batch axis.
      lengths: ``None`` or ``[batch]`` valid lengths.
      **unroll_options: as for :func:`state_gradients`.

    Returns:
      :class:`StateGradients` with ``states`` shaped ``[batch, T + 1, *state]``:
      ``dL/dh_t`` of every example for the batch loss.
    """
    _check_cell(cell, "batch_state_gradients")
    _checks.batch(xs, cell.input_size(params), "batch_state_gradients")
    batch, time = xs.shape[:2]
    lengths = _checks.length(lengths, time, shape=(batch,), name="lengths")
    eps = _tree_map(lambda e: jnp.zeros((batch,) + e.shape, e.dtype),
                    zero_perturbation(cell, params, time))

    def one(p, x, e, s, n):
        return perturbed_unroll(cell, p, x, e, s, length=n, **unroll_options)

    axes = (None, 0, 0, None if state is None else 0, None if lengths is None else 0)

    def loss(p, e):
        return loss_fn(*jax.vmap(one, in_axes=axes)(p, xs, e, state, lengths))

    value, (g_params, g_states) = jax.value_and_grad(loss, argnums=(0, 1))(params, eps)
    return StateGradients(value, g_states, g_params)


def gradient_norms(grads: StateGradients, *, time_axis: int = 0) -> GradientNorms:
    """Per-step norms of :class:`StateGradients`.

    Args:
      grads: from :func:`state_gradients` (``time_axis=0``) or
        :func:`batch_state_gradients` (``time_axis=1``; norms then run over the batch
        too).
      time_axis: the axis of ``t`` in every gradient leaf.

    Returns:
      :class:`GradientNorms` with ``[T + 1]`` arrays.
    """
    parts = _tree_map(lambda g: _norm_over(g, time_axis), grads.states)
    states = _norm(_stack(_leaves(parts)), axis=0)
    return GradientNorms(grads.loss, states, parts, global_norm(grads.params))


def state_gradient_norms(cell: Cell, params, xs, loss_fn: Callable, state=None, *,
                         length=None, **unroll_options) -> GradientNorms:
    """``||dL/dh_t||`` for ``t = 0 .. T`` of one sequence, in one backward pass.

    Args:
      cell, params, xs, loss_fn, state, length, **unroll_options: as for
        :func:`state_gradients`.

    Returns:
      :class:`GradientNorms`: ``states [T + 1]``, per state part (LSTM ``h`` and
      ``c``; a stack's layers), and ``||dL/dtheta||``.
    """
    grads = state_gradients(cell, params, xs, loss_fn, state, length=length, **unroll_options)
    return gradient_norms(grads)


def batch_state_gradient_norms(cell: Cell, params, xs, loss_fn: Callable, state=None, *,
                               lengths=None, **unroll_options) -> GradientNorms:
    """``||dL/dh_t||`` over a batch: the Frobenius norm of the ``[batch, state]``
    gradient at each step, as in Arjovsky et al. 2016's figure (``C`` the batch cost).

    Args:
      cell, params, xs, loss_fn, state, lengths, **unroll_options: as for
        :func:`batch_state_gradients`.

    Returns:
      :class:`GradientNorms` with ``[T + 1]`` arrays.
    """
    grads = batch_state_gradients(cell, params, xs, loss_fn, state, lengths=lengths,
                                  **unroll_options)
    return gradient_norms(grads, time_axis=1)


# --------------------------------------------------------------------- Jacobians


def _final_state_map(cell, params, xs, state, length, unroll_options):
    """``E [T + 1, S] -> h_T [S]``: the final state (real view) as a function of real
    perturbations of every state."""
    time = xs.shape[0]
    like = cell.initial_state(params)

    def f(e):
        eps = jax.vmap(lambda v: vector_to_state(v, like))(e)
        final, _ = perturbed_unroll(cell, params, xs, eps, state, length=length,
                                    **unroll_options)
        return state_to_vector(final)

    dtype = state_to_vector(like).dtype
    return f, jnp.zeros((time + 1, state_size(cell, params)), dtype)


def state_jacobians(cell: Cell, params, xs, state=None, *, length=None,
                    **unroll_options) -> Array:
    """All Jacobians ``J_t = dh_T/dh_t``, ``t = 0 .. T``, in ``S`` backward passes.

    States are taken in their real view (:func:`state_size`: a complex entry is two
    coordinates, real then imaginary part; an LSTM state is ``h`` then ``c``; a
    stack's layers in order). The ``S`` cotangents are batched with ``vmap``, one
    reverse pass each over the perturbed unroll.

    Args:
      cell, params, xs, state, length, **unroll_options: as for
        :func:`state_gradients`. With ``length``, ``h_T`` is the state after the last
        valid step and ``J_t = 0`` for padded ``t``.

    Returns:
      ``[T + 1, S, S]``, ``J[t, i, j] = d h_T[i] / d h_t[j]`` (``J[T]`` is the
      identity).
    """
    _check_cell(cell, "state_jacobians")
    f, zero = _final_state_map(cell, params, xs, state, length, unroll_options)
    out, vjp = jax.vjp(f, zero)
    eye = jnp.eye(out.shape[0], dtype=out.dtype)
    (rows,) = jax.vmap(vjp)(eye)  # [S_out, T + 1, S_in]
    return jnp.transpose(rows, (1, 0, 2))


def jacobian_norms(cell: Cell, params, xs, state=None, *, length=None,
                   **unroll_options) -> JacobianNorms:
    """Frobenius and spectral norms of ``dh_T/dh_t`` for ``t = 0 .. T``.

    .. math:: \\frac{\\partial h_T}{\\partial h_t}
              = \\prod_{k=t+1}^{T} \\frac{\\partial h_k}{\\partial h_{k-1}}

    Materialises the Jacobians (:func:`state_jacobians`, memory ``(T + 1) S^2``) and
    takes exact norms (the spectral one by SVD); for large states use the
    matrix-free :func:`jacobian_spectral_norm`.

    Args:
      cell, params, xs, state, length, **unroll_options: as for
        :func:`state_jacobians`.

    Returns:
      :class:`JacobianNorms` of ``[T + 1]`` arrays; the last entries are ``sqrt(S)``
      and ``1`` (the identity). An LRU's complex coordinate counts as a real 2x2
      block, so its Frobenius norm is ``sqrt(2)`` times that of its complex diagonal
      Jacobian and its spectral norm is the same.
    """
    jac = state_jacobians(cell, params, xs, state, length=length, **unroll_options)
    return JacobianNorms(_norm(jac, axis=(1, 2)),
                         jnp.linalg.norm(jac, ord=2, axis=(1, 2)))


def jacobian_spectral_norm(cell: Cell, params, xs, key, state=None, *, step=0,
                           num_iters: int = 30, length=None, **unroll_options) -> Array:
    """Estimate of ``||dh_T/dh_step||_2`` by power iteration on ``J^T J``.

    Matrix-free: ``J v`` is a ``jax.jvp`` through the perturbed unroll (after one
    ``jax.linearize``) and ``J^T u`` its ``jax.linear_transpose``; the estimate
    ``||J v_k||`` after ``num_iters`` iterations is a lower bound that converges to
    the largest singular value at the rate ``(sigma_2 / sigma_1)^(2k)``.

    Args:
      cell, params, xs, state, length, **unroll_options: as for
        :func:`state_jacobians`.
      key: PRNG key of the random start vector.
      step: ``t`` in ``0 .. T`` (may be traced, e.g. vmapped over).
      num_iters: power iterations (static).

    Returns:
      A scalar, the estimated largest singular value (real view, as
      :func:`state_jacobians`).

    References:
      Golub & Van Loan, "Matrix computations", section 8.2 (power method).
    """
    _check_cell(cell, "jacobian_spectral_norm")
    f, zero = _final_state_map(cell, params, xs, state, length, unroll_options)
    S = zero.shape[1]

    def g(v):
        return f(lax.dynamic_update_index_in_dim(zero, v, step, 0))

    _, jvp = jax.linearize(g, zero[0])
    vjp = jax.linear_transpose(jvp, zero[0])

    def normalise(v):  # after J and after J^T, so that tiny sigma^2 cannot underflow
        n = _norm(v)
        return v / jnp.where(n > 0, n, jnp.ones((), n.dtype))

    def body(_, v):
        (w,) = vjp(normalise(jvp(v)))
        return normalise(w)

    v = lax.fori_loop(0, num_iters, body, normalise(jax.random.normal(key, (S,), zero.dtype)))
    return _norm(jvp(v))


# ------------------------------------------------------------- recurrent matrices


class Spectrum(NamedTuple):
    """Spectral radius and largest singular value of a recurrent matrix.

    ``spectral_radius`` is NaN for a non-square matrix (the fused ``w_h`` of a
    gated cell).
    """

    spectral_radius: Array
    max_singular_value: Array


_GATES = {3: ("r", "z", "n"), 2: ("f", "n")}


def _square(w):
    return Spectrum(jnp.max(jnp.abs(jnp.linalg.eigvals(w))), jnp.linalg.norm(w, ord=2))


def recurrent_spectrum(params) -> Any:
    """Spectra of the recurrent matrices of a cell's params.

    * :class:`~seqjax.RNNParams`: ``{"w_h": ...}`` for ``W_hh [H, H]``.
    * :class:`~seqjax.LSTMParams`: one entry per gate block ``"i", "f", "g", "o"``
      (each ``[H, H]``) and ``"w_h"`` for the fused ``[H, 4H]`` matrix (its largest
      singular value bounds every block's; spectral radius NaN).
    * :class:`~seqjax.GRUParams`: blocks ``"r", "z", "n"`` (GRU) or ``"f", "n"``
      (MGU), and ``"w_h"``.
    * :class:`~seqjax.LRUParams`: ``{"lambda": ...}``; the recurrence is diagonal,
      so both numbers are ``max |lambda|``.
    * :class:`~seqjax.MinParams`: ``{}`` -- minGRU/minLSTM have no recurrent matrix
      (their decay ``a_t`` depends on the input only).
    * :class:`~seqjax.SLSTMParams`: blocks ``"i", "f", "z", "o"`` of the dense
      block-diagonal ``R`` (each ``[H, H]``) and ``"r"`` for ``[H, 4H]``, as the LSTM.
    * :class:`~seqjax.RGLRUParams`: ``{"a": ...}``, both numbers ``max sigmoid(Lambda)``;
      the decay ``a_t = a^{c r_t}`` lies in ``[a^c, 1)`` depending on the input.
    * :class:`~seqjax.S6Params`: ``{}`` -- S6's decay ``exp(Delta_t A)`` depends on the
      input.
    * :class:`~seqjax.MLSTMParams`, :class:`~seqjax.DeltaNetParams`,
      :class:`~seqjax.GatedDeltaNetParams`, :class:`~seqjax.Mamba2Params`: ``{}`` --
      the matrix-state cells' transitions (gates, ``I - beta k k^T``) depend on the
      input only.
    * a stack's params (tuple): a tuple of these.

    The spectral radius uses ``jnp.linalg.eigvals`` (CPU only in some JAX versions).

    Args:
      params: a cell's params.

    Returns:
      A dict ``name -> Spectrum`` of scalars (a pytree: jit- and vmap-friendly).

    References:
      Pascanu, Mikolov & Bengio 2013: gradients vanish when the largest singular value
      of ``W_hh`` is below ``1 / gamma`` (``gamma = 1`` for tanh).
    """
    if isinstance(params, RNNParams):
        return {"w_h": _square(params.w_h)}
    if isinstance(params, (LSTMParams, GRUParams)):
        hidden = params.w_h.shape[0]
        gates = params.w_h.shape[1] // hidden
        names = ("i", "f", "g", "o") if isinstance(params, LSTMParams) else _GATES[gates]
        out = {n: _square(params.w_h[:, k * hidden:(k + 1) * hidden])
               for k, n in enumerate(names)}
        out["w_h"] = Spectrum(jnp.full((), jnp.nan, params.w_h.dtype),
                              jnp.linalg.norm(params.w_h, ord=2))
        return out
    if isinstance(params, LRUParams):
        modulus = jnp.max(jnp.exp(-jnp.exp(params.nu_log)))
        return {"lambda": Spectrum(modulus, modulus)}
    if isinstance(params, (MinParams, S6Params, MLSTMParams, DeltaNetParams,
                           GatedDeltaNetParams, Mamba2Params)):
        return {}
    if isinstance(params, SLSTMParams):
        dense = _slstm_dense(params.r)  # [H, 4H]
        hidden = dense.shape[0]
        out = {n: _square(dense[:, k * hidden:(k + 1) * hidden]) for k, n in enumerate("ifzo")}
        out["r"] = Spectrum(jnp.full((), jnp.nan, dense.dtype), jnp.linalg.norm(dense, ord=2))
        return out
    if isinstance(params, RGLRUParams):
        base = jnp.max(jax.nn.sigmoid(params.lam))
        return {"a": Spectrum(base, base)}
    if isinstance(params, (tuple, list)):
        return tuple(recurrent_spectrum(p) for p in params)
    raise TypeError(f"recurrent_spectrum: unknown params type {type(params).__name__}")


# ------------------------------------------------------------- the curse of memory


class MemoryMoments(NamedTuple):
    """Second moments of a stationary linear recurrence (see :func:`memory_moments`).

    Attributes:
      var_h: ``E[h_t^2]``, the variance of the state.
      var_dh: ``E[(dh_t/dw)^2]``, the variance of its sensitivity to the recurrence
        parameter ``w`` (``lambda`` itself, or ``nu`` in ``lambda = exp(-exp(nu))``).
    """

    var_h: Array
    var_dh: Array


def memory_moments(lam, rho, *, normalised: bool = False,
                   exponential: bool = False) -> MemoryMoments:
    """Closed-form stationary variances of ``h_t`` and ``dh_t/dw`` for a scalar
    linear recurrence driven by unit-variance inputs of autocorrelation ``rho``.

    .. math::
        h_{t+1} &= \\lambda h_t + \\gamma\\, x_{t+1}, \\qquad
            E[x_t x_{t+k}] = \\rho^{|k|} \\\\
        \\mathrm{Var}\\, h &= \\gamma^2\\, \\frac{1 + \\rho\\lambda}
            {(1 - \\rho\\lambda)(1 - \\lambda^2)} \\\\
        \\mathrm{Var}\\, \\frac{dh}{d\\lambda} &= \\gamma^2\\,
            \\frac{(1 + \\lambda^2)(1 - \\lambda^2\\rho^2) + 2(1 - \\lambda^2)\\lambda\\rho}
                 {(1 - \\lambda^2)^3 (1 - \\lambda\\rho)^2}

    Without normalisation ``gamma = 1``: both variances diverge as ``lambda -> 1``,
    the sensitivity faster (``(1 - lambda)^-3`` against ``(1 - lambda)^-1`` at
    ``rho = 0``), which is Zucchet & Orvieto's curse of memory. The LRU's
    normalisation ``gamma = sqrt(1 - lambda^2)`` (a separate parameter, held fixed
    when differentiating, as in the LRU) keeps ``Var h`` bounded; the exponential
    parametrisation ``lambda = exp(-exp(nu))`` multiplies the sensitivity by
    ``(d lambda / d nu)^2 = (lambda log lambda)^2``, which vanishes as
    ``lambda -> 1``.

    Args:
      lam: ``lambda`` in ``[0, 1)`` (array or float; ``(0, 1)`` with
        ``exponential``).
      rho: the input autocorrelation in ``[0, 1)`` (broadcasts with ``lam``).
      normalised: multiply the input by ``gamma = sqrt(1 - lambda^2)``.
      exponential: differentiate w.r.t. ``nu`` in ``lambda = exp(-exp(nu))``
        instead of ``lambda``.

    Returns:
      :class:`MemoryMoments` shaped like ``lam`` and ``rho`` broadcast together.

    References:
      Zucchet & Orvieto, "Recurrent neural networks: vanishing and exploding
      gradients are not the end of the story", NeurIPS 2024, section 2 and
      Figures 1-2 (their code: ``figures/1D-case.ipynb``).
    """
    lam, rho = np.asarray(lam, np.float64), np.asarray(rho, np.float64)
    one = 1.0 - lam ** 2
    var_h = (1 + rho * lam) / ((1 - rho * lam) * one)
    var_dh = (((1 + lam ** 2) * (1 - lam ** 2 * rho ** 2) + 2 * one * lam * rho)
              / (one ** 3 * (1 - lam * rho) ** 2))
    if normalised:
        var_h, var_dh = var_h * one, var_dh * one
    if exponential:
        var_dh = var_dh * (lam * np.log(lam)) ** 2
    return MemoryMoments(var_h, var_dh)
