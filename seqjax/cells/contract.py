"""The cell contract: what a cell is, and the forms a cell may state about itself.

A :class:`Cell` is a NamedTuple of pure functions in the style of optax's
``GradientTransformation``. It sees one example and one time step; batch it with
``jax.vmap`` and unroll it with :func:`seqjax.unroll`. Besides its step, a cell may
state *what it is* -- a gated cell whose input projection leaves the loop
(:class:`Hoist`, :class:`Recurrent`), a diagonal linear recurrence
(:class:`LinearRecurrence`), a chunkwise-parallel matrix recurrence
(:class:`Chunkwise`) -- and the unroll decides *how to run it*.

Conventions shared by all cells:

* Kernels are stored ``[in, out]`` so a step is ``x @ w_i + h @ w_h + b``.
* Static configuration (sizes, activations, initialisers) lives in the closure and
  in ``cell.config``; the params pytree holds arrays only.
* A cell is a value a user can print: ``repr(seqjax.lstm(128))`` is
  ``lstm(hidden_size=128, forget_bias=1.0)``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

Array = jax.Array
Params = Any
State = Any
Initializer = Callable[..., Array]

InitFn = Callable[[Array, int], Params]
StateFn = Callable[[Params], State]
ApplyFn = Callable[[Params, State, Array], tuple]


class Recurrent(NamedTuple):
    """The sequential part of a gated cell as one matmul followed by elementwise maths.

    ``step(p, s, u) == combine(extras(p), s, u, hidden(s) @ weight(p))``: the
    recurrent weight enters only through the product ``r = hidden(s) @ weight(p)``.
    That lets the unroll's backward pass keep only ``dr @ weight(p).T`` inside the
    loop and form ``d weight = sum_t hidden(s_t).T dr_t`` as one matmul over all
    steps afterwards (what cuDNN does), instead of accumulating it step by step.

    Attributes:
      weight: ``(params) -> W [H_in, G]``.
      extras: ``(params) -> pytree`` of the other (small) params ``combine`` reads,
        e.g. the GRU's ``b_hn``; ``()`` when there are none.
      hidden: ``(state) -> h [H_in]``, the part of the state ``W`` multiplies.
      combine: ``(extras, state, u [G], r [G]) -> (state, y)``, elementwise in the
        gates; one example.
      dtype: the compute dtype of the product (mixed precision): both operands are
        cast to it and the product accumulates in ``hidden(s)``'s dtype (the
        state's), see :meth:`product`; ``None`` (default): a plain ``@``. Every
        unroll path (the step, the fused backward's ``dr @ W.T`` and ``dW``, the
        Pallas kernel) follows it.
    """

    weight: Callable[[Params], Array]
    extras: Callable[[Params], Any]
    hidden: Callable[[State], Array]
    combine: Callable[..., tuple]
    dtype: Optional[Any] = None

    def product(self, a: Array, b: Array) -> Array:
        """``a @ b`` in the compute dtype: with ``dtype`` set, both operands are cast to
        it and the products are accumulated in ``a``'s dtype
        (``preferred_element_type``); the result has ``a``'s dtype. Without it, plain
        ``a @ b``."""
        return _matmul(a, b, self.dtype)


def _matmul(a: Array, b: Array, dtype=None) -> Array:
    """``a @ b`` with ``a`` and ``b`` cast to the compute ``dtype`` and the products
    accumulated in ``a``'s dtype (``preferred_element_type``); plain ``a @ b`` for
    ``dtype=None``. The mixed-precision product of every classic cell."""
    if dtype is None:
        return a @ b
    return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=a.dtype)


class CombineFacts(NamedTuple):
    """What the fused pass reads off a cell's ``combine`` (only to save memory traffic)."""

    adds: bool  # u and r enter only as u + r: save and differentiate g = u + r once
    y_leaf: Optional[int]  # y is this leaf of the new state: don't save that leaf


def combine_facts(combine, extras, state, gates: int, dtype) -> CombineFacts:
    """Reads :class:`CombineFacts` off the jaxpr of one example's ``combine`` (what
    the unroll's fused backward pass and the Pallas recurrent kernel need to know)."""
    one = jax.ShapeDtypeStruct((gates,), dtype)
    example = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), state)
    jaxpr = jax.make_jaxpr(combine)(extras, example, one, one).jaxpr
    u, r = jaxpr.invars[-2:]
    uses = [e for e in jaxpr.eqns if any(v is u or v is r for v in e.invars)]
    adds = (len(uses) == 1 and uses[0].primitive.name == "add"
            and {id(v) for v in uses[0].invars} == {id(u), id(r)}
            and not any(v is u or v is r for v in jaxpr.outvars))
    *state_out, y = jaxpr.outvars
    y_leaf = next((i for i, v in enumerate(state_out) if v is y), None)
    return CombineFacts(adds, y_leaf)


class Hoist(NamedTuple):
    """A gated cell split into its time-parallel and its sequential part.

    ``apply(p, s, x) == step(p, s, input_map(p, x))``. ``input_map`` is affine in
    ``x`` and works on any leading axes, so the unroll may evaluate it for all time
    steps at once (one large matmul) before the sequential loop. ``recurrent``, when
    set, says how ``step`` uses the recurrent weight (see :class:`Recurrent`).
    """

    input_map: Callable[[Params, Array], Array]
    step: Callable[[Params, State, Array], tuple]
    recurrent: Optional[Recurrent] = None


class LinearRecurrence(NamedTuple):
    """A cell whose state obeys ``h_t = a_t * h_{t-1} + b_t`` (elementwise).

    ``coefficients(p, xs) -> (a, b)`` and ``readout(p, hs, xs) -> ys`` work on any
    leading axes, so the whole sequence can be evaluated with
    ``jax.lax.associative_scan`` in ``O(log T)`` depth.

    ``features``, when set, is the part of both that needs only the step's input
    (its projections): ``features(p, xs) -> fs`` on any leading axes, and
    ``coefficients`` and ``readout`` then take ``fs`` in place of ``xs``. A cell
    whose ``a, b`` are much larger than its input (S6: ``[H, N]`` per step from
    ``H`` inputs) sets it, so that a sequential unroll projects every step's input
    before the loop and forms only ``a, b`` inside it.
    """

    coefficients: Callable[[Params, Any], tuple]
    readout: Callable[[Params, Array, Any], Array]
    features: Optional[Callable[[Params, Array], Any]] = None

    def step(self, params, h, f):
        """One step from what ``coefficients`` takes (``f``: the input, or its
        ``features``): ``(h_t, y_t)``."""
        a, b = self.coefficients(params, f)
        h = a * h + b
        return h, self.readout(params, h, f)


class Chunkwise(NamedTuple):
    """A matrix-state cell whose recurrence has a chunkwise-parallel form.

    The cell is ``features -> recurrence -> readout``. ``features`` (queries, keys,
    values and gates of every step) and ``readout`` (output gate, normalisation) are
    time-parallel; the recurrence over a matrix state ``S_t [heads, d_k, d_v]`` has
    two forms that compute the same numbers: ``update``/``read``, one step (what
    ``apply`` streams), and ``chunked``, the whole sequence at once, dense matmuls
    inside chunks of ``chunk_size`` steps and a short scan carrying the state across
    chunks (see :mod:`seqjax.chunkwise`). ``apply(p, s, x)`` is
    ``s' = update(s, f)``, ``y = readout(p, read(s', f), x)`` with ``f = features(p, x)``.

    Attributes:
      features: ``(params, xs [..., I]) -> f``, a pytree of per-step arrays; any
        leading axes.
      update: ``(state, f) -> state``, one step of one example.
      read: ``(state, f) -> o [heads, d_v]``, what a step reads from the state it
        produced (``S_t^T q_t`` and its normaliser).
      chunked: ``(state [B, ...], f [T, B, ...], valid [T, B] or None, chunk_size)
        -> (state [B, ...], o [T, B, heads, d_v])``; a step where ``valid`` is false
        leaves the state unchanged.
      readout: ``(params, o [..., heads, d_v], xs [..., I]) -> ys [..., H]``; any
        leading axes.
    """

    features: Callable[[Params, Array], Any]
    update: Callable[[State, Any], State]
    read: Callable[[State, Any], Array]
    chunked: Callable[..., tuple]
    readout: Callable[[Params, Array, Array], Array]


class Cell(NamedTuple):
    """A recurrent cell: pure functions over one example and one time step.

    Attributes:
      init: ``(key, input_size) -> params``.
      initial_state: ``(params) -> state`` (zeros; no batch axis).
      apply: ``(params, state, x[input_size]) -> (state, y[output_size])``, scan's
        argument order.
      input_size: ``(params) -> int``, the feature size ``params`` expect.
      output_size: size of ``y``.
      hoist: set for gated cells whose input projection can leave the loop.
      linear: set for linear-recurrence cells (associative scan).
      layers: set by :func:`seqjax.stack`; the parts and how they are joined.
      chunkwise: set for matrix-state cells whose recurrence has a
        chunkwise-parallel form (:class:`Chunkwise`).
      parallel: set for layers and blocks (:mod:`seqjax.layers`,
        :mod:`seqjax.blocks`) that compute a whole sequence at once, in the
        signature of :data:`ParallelFn`; it computes what stepping ``apply``
        computes, and :func:`seqjax.unroll` uses it unless ``chunkwise=False``.
      name: the constructor's name (``"lstm"``); set by :func:`constructor`.
      config: the constructor's arguments as ``(name, value)`` pairs. Each is also
        readable as an attribute: ``seqjax.lstm(128).hidden_size == 128``.
    """

    init: InitFn
    initial_state: StateFn
    apply: ApplyFn
    input_size: Callable[[Params], int]
    output_size: int
    hoist: Optional[Hoist] = None
    linear: Optional[LinearRecurrence] = None
    layers: Optional["Layers"] = None
    chunkwise: Optional[Chunkwise] = None
    parallel: Optional["ParallelFn"] = None
    name: str = ""
    config: tuple = ()


ParallelFn = Callable[..., tuple]
"""A cell's whole-sequence form: ``(params, xs [T, B, I], state, valid, options) ->
(final_state [B, ...], ys [T, B, O])``, time-major over a batch.

``state`` is the state of every example with a leading ``[B]`` axis, or ``None`` for
the cell's initial state (a form may then skip work that reads an empty state, such as
attention over an empty cache). ``valid`` is ``None`` or ``[T, B]`` booleans that are
true on a prefix of each example (``t < length``): outputs at the other steps may be
anything (the unroll zeroes them) and the final state is the state after the last
valid step. ``options`` are the unroll's static options, to be passed on unchanged to
:func:`seqjax.unroll.run` for the cells inside a block (the form runs forward:
:func:`seqjax.unroll` reverses the valid prefix of each example around it).
"""


class Layers(NamedTuple):
    """How :func:`seqjax.stack` joins its parts (static configuration)."""

    parts: tuple
    residual: bool
    dropout: float


class SequenceModel(NamedTuple):
    """A model over whole sequences (what :func:`seqjax.bidirectional` returns).

    Attributes:
      init: ``(key, input_size) -> params``.
      initial_state: ``(params) -> state``.
      apply: ``(params, xs[time, input_size], state=None, *, length=None, rng=None,
        **unroll_options) -> (final_state, ys[time, output_size])``, one example.
      input_size: ``(params) -> int``.
      output_size: size of each ``y``.
      batched: the same over a time-major batch, what :func:`seqjax.unroll_batch`
        and :func:`seqjax.stack` call: ``(params, xs[time, batch, input_size],
        state[batch, ...], *, lengths[batch] or None, keys[batch] or None,
        **unroll_options) -> (final_state[batch, ...], ys[time, batch, output_size])``
        with one dropout key per example.
    """

    init: InitFn
    initial_state: StateFn
    apply: Callable[..., tuple]
    input_size: Callable[[Params], int]
    output_size: int
    batched: Callable[..., tuple]
    name: str = ""
    config: tuple = ()




# ------------------------------------------------------------- readable configuration

_SIGNATURES: dict = {}


def _is_default(value, default) -> bool:
    if value is default:
        return True
    try:
        return bool(type(value) is type(default) and value == default)
    except Exception:  # arrays and other values without a plain ==
        return False


def _dtype_name(value):
    try:
        if isinstance(value, type) or isinstance(value, jnp.dtype) or hasattr(value, "dtype"):
            return jnp.dtype(value).name
    except TypeError:
        pass
    return None


def _show(value) -> str:
    if isinstance(value, (Cell, SequenceModel)):
        return repr(value)
    dtype = _dtype_name(value) if not isinstance(value, (bool, int, float, str)) else None
    if dtype is not None:
        return dtype
    if callable(value):
        name = getattr(value, "__name__", None)
        return name if name and name != "<lambda>" else "<function>"
    return repr(value)


def _repr(self) -> str:
    name = self.name or type(self).__name__
    signature = _SIGNATURES.get(self.name)
    if signature is None:
        return f"{name}(...)"
    parts = []
    for key, value in self.config:
        parameter = signature.parameters[key]
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            parts.extend(_show(v) for v in value)
            continue
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            parts.extend(f"{k}={_show(v)}" for k, v in value.items())
            continue
        default = parameter.default
        # None is shown (it often means "derived from the rest"), except for a compute
        # dtype, where it means "as the params" and would only add noise
        plain = (isinstance(value, (bool, int, float, str))
                 or (value is None and not key.endswith("dtype")))
        if default is inspect.Parameter.empty or plain or not _is_default(value, default):
            parts.append(f"{key}={_show(value)}")
    return f"{name}({', '.join(parts)})"


def _getattr(self, attr):
    for key, value in tuple.__getitem__(self, -1):  # config, the last field
        if key == attr:
            return value
    raise AttributeError(f"{type(self).__name__} {self.name or ''!s} has no attribute {attr!r}")


for _kind in (Cell, SequenceModel):
    _kind.__repr__ = _repr
    _kind.__getattr__ = _getattr
