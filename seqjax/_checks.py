"""Input validation that runs in Python, before tracing or compilation.

Every message names what was expected and what was given, so a user never has to read
an XLA trace to learn that a feature size, a dtype or a set of params was wrong.

What is checked where:

* **Params** (:func:`params`): every cell checks the tree structure, shapes and dtypes
  of its params against what its own ``init`` builds for the input size the params
  carry (``jax.eval_shape(cell.init, key, cell.input_size(params))``, cached per cell
  and input size). Stacks name the layer, bidirectional models the direction. The
  check reads only shapes and dtypes, so it runs the same on arrays and on tracers
  (under ``jit``, ``vmap`` -- where a cell sees one member of an ensemble -- and
  ``grad``). **Dtype rule:** params may be cast as a whole (every array that ``init``
  builds in one dtype must share one dtype of the same kind, e.g. all float32 built
  with ``param_dtype=float32`` cast to float64 for ``check_grads``); the computation
  then runs in that dtype. Params that mix dtypes where ``init`` built one are
  rejected, naming both fields; a cast the cell cannot compute in (an LRU, whose
  state is complex, in float16) is refused by name, found by tracing ``apply`` once
  abstractly per cell and dtype.
* **State** (:func:`state`): the structure, shapes and dtypes of
  ``cell.initial_state(params)`` exactly (with a leading batch axis for
  :func:`seqjax.unroll_batch`); a float16 state for float32 params is an error, not a
  silent promotion.
* **Values** (lengths, token ids, class labels): checked when they are concrete.
  Traced values (inside ``jit`` or ``vmap``) cannot be read in Python. What they do
  then is documented where they are used (a length acts as if clipped to ``[0, T]``;
  an id or a counted label out of range gives NaN, never another entry's number),
  and seqjax inserts ``jax.experimental.checkify.debug_check`` calls, which XLA
  removes from a plain compiled function and which raise, with the message a
  concrete value gets, when the caller is wrapped in ``checkify.checkify`` (the
  checked mode)::

      from jax.experimental import checkify
      err, out = checkify.checkify(jax.jit(loss))(params, batch)
      err.throw()   # checkify.JaxRuntimeError: "... token ids must lie in [0, 9] ..."
"""

from __future__ import annotations

import collections
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from seqjax.cells.contract import Cell, SequenceModel


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def real(value, name: str, owner: str, *, above=None, at_least=None, below=None,
         why: str = "") -> float:
    """A constructor's numeric argument, checked: a finite real number (never a bool),
    ``> above``, ``>= at_least`` and ``< below`` where given. Otherwise a ``ValueError``
    that names ``owner`` (the constructor), the argument, the allowed range, ``why``
    (what the range guards) and the value given."""
    bounds = ([f"> {above:g}"] if above is not None else []) + (
        [f">= {at_least:g}"] if at_least is not None else []) + (
        [f"< {below:g}"] if below is not None else [])
    if len(bounds) == 2:
        low = f"({above:g}" if above is not None else f"[{at_least:g}"
        bounds = [f"in {low}, {below:g})"]
    allowed = " ".join(["a finite number"] + bounds)
    ok = not isinstance(value, (bool, str)) and np.ndim(value) == 0
    if ok:
        try:
            number = float(value)
        except (TypeError, ValueError):  # a complex number, an object
            ok = False
    if ok:
        ok = bool(np.isfinite(number) and (above is None or number > above)
                  and (at_least is None or number >= at_least)
                  and (below is None or number < below))
    if not ok:
        reason = f" ({why})" if why else ""
        raise ValueError(f"{owner}: {name} must be {allowed}{reason}, got {name}={value!r}")
    return number


def _floating(x, what: str):
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        raise TypeError(f"{what} must be an array, got {type(x).__name__}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{what} must have a floating dtype (float32, bfloat16, float64, ...), got "
            f"{dtype}; integer token ids need an embedding first")


def step_input(x, features: int, name: str) -> None:
    """One time step of one example: ``[features]``."""
    _floating(x, f"{name} input")
    if x.ndim != 1 or x.shape[0] != features:
        raise ValueError(
            f"{name}: expected one step of one example with shape [{features}], got "
            f"{tuple(x.shape)}; batch with jax.vmap or seqjax.unroll_batch")


def sequence(xs, features: int, name: str = "unroll") -> None:
    """One sequence: ``[time, features]``."""
    _floating(xs, f"{name} xs")
    if xs.ndim != 2:
        raise ValueError(
            f"{name}: expected xs of shape [time, {features}], got rank {xs.ndim} shape "
            f"{tuple(xs.shape)}; for [batch, time, features] use seqjax.unroll_batch")
    if xs.shape[1] != features:
        raise ValueError(
            f"{name}: expected xs of shape [time, {features}] (the params were built for "
            f"{features} input features), got {tuple(xs.shape)}")


def batch(xs, features: int, name: str = "unroll_batch") -> None:
    """A batch of sequences: ``[batch, time, features]``."""
    _floating(xs, f"{name} xs")
    if xs.ndim != 3 or xs.shape[2] != features:
        raise ValueError(
            f"{name}: expected xs of shape [batch, time, {features}], got {tuple(xs.shape)}")


def _concrete(x):
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def length(value, time: int, shape=(), name: str = "length"):
    """Checks lengths: concrete values here, traced ones under ``checkify``.

    A traced length outside ``[0, time]`` is not an error in a plain compiled run: the
    unroll then acts as if it were clipped to ``[0, time]`` (``-2`` reads nothing,
    ``time + 2`` reads everything). Under ``checkify.checkify`` it raises.
    """
    if value is None:
        return None
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer or an integer array, got {value!r}")
        value = np.asarray(value, np.int32)
    elif not jnp.issubdtype(value.dtype, jnp.integer):
        raise TypeError(f"{name} must have an integer dtype, got {value.dtype}")
    if tuple(np.shape(value)) != tuple(shape):
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(np.shape(value))}")
    concrete = _concrete(value)
    if concrete is not None:
        if concrete.size and (concrete.min() < 0 or concrete.max() > time):
            raise ValueError(
                f"{name} must lie in [0, {time}] (the time axis of xs), got values from "
                f"{concrete.min()} to {concrete.max()}")
    elif np.size(value):
        value = jnp.asarray(value)
        checkify.debug_check(
            jnp.all((value >= 0) & (value <= time)),
            f"{name} must lie in [0, {time}] (the time axis of xs), got values from "
            "{low} to {high}", low=jnp.min(value), high=jnp.max(value))
    return jnp.asarray(value, jnp.int32)


# ------------------------------------------------------------- token ids and labels


def token_ids(ids, vocab_size: int, name: str):
    """Integer ids in ``[0, vocab_size)``; concrete ids are checked here.

    Traced ids get a ``checkify.debug_check``; outside ``checkify`` a lookup with
    :func:`seqjax.models.embed` turns an out-of-range id into a row of NaN.
    """
    dtype = getattr(ids, "dtype", None)
    if dtype is None:
        if isinstance(ids, bool) or not isinstance(ids, (numbers.Integral, list, tuple)):
            raise TypeError(f"{name} must be integer token ids, got {type(ids).__name__}")
        ids = np.asarray(ids)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"{name} must be integer token ids, got {ids.dtype}")
        ids = ids.astype(np.int32)
    elif not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{name} must have an integer dtype (token ids), got {dtype}; float "
                        "features go to a model built without vocab_size")
    concrete = _concrete(ids)
    rule = f"{name}: token ids must lie in [0, {vocab_size - 1}] (vocab_size={vocab_size})"
    if concrete is not None:
        if concrete.size and (concrete.min() < 0 or concrete.max() >= vocab_size):
            raise ValueError(f"{rule}, got values from {concrete.min()} to {concrete.max()}")
    elif np.size(ids):
        checkify.debug_check(jnp.all((ids >= 0) & (ids < vocab_size)),
                             rule + ", got values from {low} to {high}",
                             low=jnp.min(ids), high=jnp.max(ids))
    return jnp.asarray(ids)


def class_labels(labels, classes: int, mask, name: str):
    """Checks integer labels against ``[0, classes)`` where ``mask`` counts them.

    Returns ``(labels, valid)``: ``valid`` is ``None`` when the labels were checked
    here (concrete), else a boolean array, true where a traced label is in range;
    the caller makes the other entries NaN so that a wrong label is never a finite
    loss.
    """
    labels = jnp.asarray(labels) if not hasattr(labels, "dtype") else labels
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{name}: labels must be integer class ids, got {labels.dtype}")
    counted = None if mask is None else _concrete(mask)
    values = _concrete(labels)
    rule = f"{name}: labels must lie in [0, {classes - 1}] (logits have {classes} classes)"
    if values is not None and (mask is None or counted is not None):
        if counted is not None:
            counted = np.broadcast_to(counted.reshape(counted.shape + (1,) * (
                values.ndim - counted.ndim)), values.shape).astype(bool)
            values = values[counted]
            rule += " where the mask is true"
        if values.size and (values.min() < 0 or values.max() >= classes):
            raise ValueError(f"{rule}, got values from {values.min()} to {values.max()}")
        return labels, None
    valid = (labels >= 0) & (labels < classes)
    if mask is not None:
        m = jnp.asarray(mask).astype(bool)
        m = jnp.broadcast_to(m.reshape(m.shape + (1,) * (labels.ndim - m.ndim)), labels.shape)
        checked = valid | ~m
    else:
        checked = valid
    if not labels.size:
        return labels, valid
    bad = jnp.where(checked, jnp.zeros((), labels.dtype), labels)
    checkify.debug_check(jnp.all(checked), rule + ", got {label}",
                         label=bad.ravel()[jnp.argmin(checked.ravel())])
    return labels, valid


# ------------------------------------------------------------------ params and state

_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)
_CACHE_SIZE = 1024
_REFERENCES: "collections.OrderedDict" = collections.OrderedDict()
_STATES: "collections.OrderedDict" = collections.OrderedDict()
_CASTS: "collections.OrderedDict" = collections.OrderedDict()
CHECKED = "_seqjax_checks_params"  # marks an input_size that runs :func:`cell_params`


def _x64() -> bool:
    return jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.dtype(jnp.float64)


def _cached(table, key, owner, compute):
    """``compute()``, remembered under ``key`` while ``owner`` (kept alive by the entry,
    so that its ``id`` is not reused) is the object it was computed for; least
    recently used entries beyond ``_CACHE_SIZE`` are dropped."""
    hit = table.get(key)
    if hit is not None and hit[0] is owner:
        try:
            table.move_to_end(key)
        except KeyError:  # dropped meanwhile by another thread
            pass
        return hit[1]
    value = compute()
    table[key] = (owner, value)
    while len(table) > _CACHE_SIZE:
        try:
            table.popitem(last=False)
        except KeyError:
            break
    return value


def _struct(x):
    return jax.ShapeDtypeStruct(np.shape(x), jax.dtypes.canonicalize_dtype(x.dtype))


def reference_params(cell, input_size: int):
    """What ``cell.init(key, input_size)`` builds, as ``jax.ShapeDtypeStruct`` leaves.

    ``jax.eval_shape`` of ``init`` (no computation), cached per cell, input size and
    x64 mode; an ``init`` that needs concrete values is run once instead.
    """
    def compute():
        try:
            return jax.eval_shape(lambda k: cell.init(k, input_size), _KEY)
        except Exception:  # noqa: BLE001 -- an init that reads concrete values
            with jax.ensure_compile_time_eval():
                built = cell.init(jax.random.PRNGKey(0), input_size)
            return jax.tree_util.tree_map(_struct, built)

    return _cached(_REFERENCES, (id(cell), input_size, _x64()), cell, compute)


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, type)


def _leaf(x) -> str:
    if x is None:
        return "None"
    if _is_array(x):
        return f"{jnp.dtype(x.dtype).name}[{', '.join(str(d) for d in np.shape(x))}]"
    return f"{type(x).__name__} {x!r}" if isinstance(x, (bool, int, float, str)) else \
        type(x).__name__


def _is_namedtuple(x) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def describe(x) -> str:
    """A short description of a params/state tree's top level."""
    if _is_namedtuple(x):
        return f"{type(x).__name__}({', '.join(type(x)._fields)})"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)}"
    if isinstance(x, dict):
        return f"a dict with keys {sorted(map(str, x))}"
    if x is None or _is_array(x):
        return _leaf(x)
    return type(x).__name__


def _children(x):
    """``[(key, child)]`` of a container, or ``None`` for a leaf / unknown node."""
    if _is_namedtuple(x):
        return [(f".{f}", getattr(x, f)) for f in type(x)._fields]
    if isinstance(x, (tuple, list)):
        return [(f"[{i}]", c) for i, c in enumerate(x)]
    if isinstance(x, dict):
        try:
            return [(f"[{k!r}]", x[k]) for k in sorted(x)]
        except TypeError:
            return [(f"[{k!r}]", v) for k, v in x.items()]
    return None


def _structure_mismatch(want, got, where):
    """The first place where ``got``'s tree differs from ``want``'s, or ``None``."""
    if want is None or got is None:
        if (want is None) == (got is None):
            return None
        if want is None:
            return f"{where}: expected None, got {describe(got)}"
        return f"{where}: expected {describe(want)}, got None"
    if _is_array(want):
        return None if _is_array(got) else f"{where}: expected an array {_leaf(want)}, got " \
                                            f"{describe(got)}"
    w, g = _children(want), _children(got)
    if w is None:  # a pytree node seqjax does not know: compare the treedefs
        tw, tg = jax.tree_util.tree_structure(want), jax.tree_util.tree_structure(got)
        return None if tw == tg else f"{where}: expected {tw}, got {tg}"
    if g is None or type(want) is not type(got) or [k for k, _ in w] != [k for k, _ in g]:
        return f"{where}: expected {describe(want)}, got {describe(got)}"
    for (k, a), (_, b) in zip(w, g):
        found = _structure_mismatch(a, b, where + k)
        if found:
            return found
    return None


def _leaves_with_paths(tree, root):
    out = []

    def walk(x, where):
        kids = _children(x)
        if kids is None or x is None or _is_array(x):
            if kids is None and not (x is None or _is_array(x)):
                paths, _ = jax.tree_util.tree_flatten_with_path(x)
                out.extend((where + jax.tree_util.keystr(p), l) for p, l in paths)
            elif x is not None:
                out.append((where, x))
            return
        for k, c in kids:
            walk(c, where + k)

    walk(tree, root)
    return out


def _kind(dtype) -> str:
    dtype = jnp.dtype(dtype)
    for kind in ("complexfloating", "floating", "signedinteger", "unsignedinteger"):
        if jnp.issubdtype(dtype, getattr(jnp, kind)):
            return kind
    return dtype.name


def _root(tree, default):
    return type(tree).__name__ if _is_namedtuple(tree) else default


def compare_params(reference, params, label: str, built: str) -> None:
    """Raises unless ``params`` has ``reference``'s structure and shapes, and dtypes
    that are ``reference``'s up to one cast of all the leaves built in one dtype.

    Args:
      reference: ``jax.ShapeDtypeStruct`` tree, what ``init`` builds.
      params: the params given.
      label: the cell, for the message (``repr(cell)``).
      built: the call that builds ``reference``, for the message (``lstm.init(key, 4)``).
    """
    root = _root(reference, "params")
    found = _structure_mismatch(reference, params, root)
    if found:
        raise ValueError(f"{label}: params do not match what {built} builds: {found}")
    want_leaves = _leaves_with_paths(reference, root)
    got_leaves = _leaves_with_paths(params, root)
    shapes, kinds, groups = [], [], {}
    for (where, want), (_, got) in zip(want_leaves, got_leaves):
        got_dtype = jax.dtypes.canonicalize_dtype(got.dtype)
        if tuple(np.shape(got)) != tuple(want.shape):
            shapes.append(f"{where}: expected {_leaf(want)}, got {_leaf(got)}")
        elif _kind(got_dtype) != _kind(want.dtype):
            kinds.append(f"{where}: expected {_leaf(want)}, got {_leaf(got)}")
        else:
            groups.setdefault(jnp.dtype(want.dtype), []).append((where, jnp.dtype(got_dtype)))
    if shapes:
        more = "" if len(shapes) <= 4 else f"\n  ... and {len(shapes) - 4} more"
        raise ValueError(f"{label}: params do not match what {built} builds:\n  "
                         + "\n  ".join(shapes[:4]) + more)
    if kinds:
        raise TypeError(f"{label}: params do not match what {built} builds:\n  "
                        + "\n  ".join(kinds[:4]))
    cast = False
    for want_dtype, members in groups.items():
        first_where, first = members[0]
        cast = cast or first != want_dtype
        for where, dtype in members[1:]:
            if dtype != first:
                raise TypeError(
                    f"{label}: params mix dtypes: {first_where} is {first.name} but {where} "
                    f"is {dtype.name}; {built} builds both as {want_dtype.name}. Cast all "
                    "params together (jax.tree_util.tree_map(lambda a: a.astype(dtype), "
                    "params)) or rebuild the cell with param_dtype=dtype")
    return cast


class _Repr:
    """``repr(value)``, computed when formatted (messages are built only on failure)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __str__(self):
        return repr(self.value)

    __format__ = lambda self, spec: format(str(self), spec)  # noqa: E731


def cell_params(cell, params, input_size_fn) -> int:
    """Checks the params of one cell (or stack, or bidirectional model); returns the
    input size they carry. ``input_size_fn`` reads it without checking."""
    label = _Repr(cell)  # formatted only if a message is
    init_name = f"{cell.name}.init" if cell.name else "cell.init"
    if isinstance(cell, Cell) and cell.layers is not None:
        return _layers(cell.layers.parts, params, label)
    if isinstance(cell, SequenceModel) and cell.name == "stack":
        return _layers(cell.parts, params, label)
    if isinstance(cell, SequenceModel) and cell.name == "bidirectional":
        return _directions(cell, params, label)
    error = None
    try:
        size = input_size_fn(params)
    except Exception as e:  # noqa: BLE001 -- e.g. foreign params without that field
        size, error = None, e
    if isinstance(size, bool) or not isinstance(size, (numbers.Integral, np.integer)) \
            or size < 1:
        reason = (f"{type(error).__name__}: {error}" if error is not None
                  else f"it gave {size!r}")
        try:
            probe = reference_params(cell, cell.output_size)
        except Exception:  # noqa: BLE001
            probe = None
        want = f"expected {describe(probe)}, " if probe is not None else ""
        raise ValueError(f"{label}: params do not belong to this cell: {want}got "
                         f"{describe(params)} (their input size cannot be read: {reason})")
    size = int(size)
    try:
        reference = reference_params(cell, size)
    except (ValueError, TypeError) as e:
        _reraise(e, f"{label}: the params have {size} input features, which "
                    f"{init_name} rejects")
    try:
        cast = compare_params(reference, params, label, f"{init_name}(key, {size})")
    except ValueError as e:
        hint = _ensemble_hint(cell, params, input_size_fn)
        if hint is None:
            raise
        raise ValueError(f"{e}\n{hint}") from None
    if cast and isinstance(cell, Cell):
        _check_cast_runs(cell, params, size, label)
    return size


def _check_cast_runs(cell, params, size, label):
    """Params cast to another dtype than ``init`` builds: the cell must still trace
    in it (an LRU, whose state is complex, does not in float16). Checked once per
    cell and dtypes, abstractly."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    structs = jax.tree_util.tree_unflatten(tree, [_struct(l) for l in leaves])
    dtypes = tuple(sorted({s.dtype.name for s in jax.tree_util.tree_leaves(structs)}))

    def compute():
        try:
            state = jax.eval_shape(cell.initial_state, structs)
            jax.eval_shape(cell.apply, structs, state,
                           jax.ShapeDtypeStruct((size,), structs_dtype(structs)))
        except Exception as e:  # noqa: BLE001 -- reported below
            return f"{type(e).__name__}: {e}"
        return None

    key = (id(cell), size, dtypes, _x64())
    hit = _CASTS.get(key)
    if hit is not None and hit[0] is cell:  # known, or being computed (the trace below
        problem = hit[1]                    # re-enters the checks): no second trace
    else:
        _CASTS[key] = (cell, None)
        problem = compute()
        _CASTS[key] = (cell, problem)
        while len(_CASTS) > _CACHE_SIZE:
            _CASTS.popitem(last=False)
    if problem is not None:
        raise TypeError(f"{label}: does not run with its params cast to {', '.join(dtypes)} "
                        f"({problem.splitlines()[0]}); rebuild the cell with "
                        "param_dtype=... instead, for a dtype it supports")


def structs_dtype(tree):
    """The dtype of ``tree``'s first leaf (what a cell casts its inputs to)."""
    return jax.tree_util.tree_leaves(tree)[0].dtype


def _ensemble_hint(cell, params, input_size_fn):
    """A note when ``params`` are right but for one extra leading axis on every array
    (an ensemble, or params stacked for ``jax.vmap``), else ``None``."""
    try:
        leaves = jax.tree_util.tree_leaves(params)
        counts = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
        if len(counts) != 1 or None in counts:
            return None
        inner = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(np.shape(a)[1:], a.dtype), params)
        compare_params(reference_params(cell, int(input_size_fn(inner))), inner, "", "")
    except Exception:  # noqa: BLE001 -- no hint then
        return None
    return (f"  Every array has one extra leading axis of {counts.pop()}: params of an "
            "ensemble? Map over it: jax.vmap(lambda p: unroll(cell, p, xs))(params)")


def _reraise(error, prefix):
    """Raises ``error`` again with ``prefix`` in front of its message (plain
    ValueError/TypeError only; other types are raised unchanged)."""
    if type(error) not in (ValueError, TypeError):
        raise error
    raise type(error)(f"{prefix}: {error}") from None


def _prefixed(part, params, label, what) -> int:
    try:
        return part.input_size(params)
    except (ValueError, TypeError) as e:
        _reraise(e, f"{label} {what}")


def _layers(parts, params, label) -> int:
    n = len(parts)
    if not isinstance(params, (tuple, list)) or len(params) != n:
        got = type(params).__name__ + (f" of length {len(params)}"
                                       if isinstance(params, (tuple, list)) else "")
        raise ValueError(f"{label}: a stack of {n} layers expects a tuple of {n} params, "
                         f"got {got}")
    size = None
    for i, (part, p) in enumerate(zip(parts, params)):
        got = _prefixed(part, p, label, f"layer {i}")
        if i == 0:
            size = got
        elif got != parts[i - 1].output_size:
            raise ValueError(f"{label}: layer {i} params expect {got} input features but "
                             f"layer {i - 1} outputs {parts[i - 1].output_size}")
    return size


def _directions(model, params, label) -> int:
    if not (isinstance(params, tuple) and hasattr(params, "forward")
            and hasattr(params, "backward")):
        raise ValueError(f"{label}: params must be BidirectionalParams(forward, backward), "
                         f"got {describe(params)}")
    size = _prefixed(model.forward, params.forward, label, "forward direction")
    other = _prefixed(model.backward, params.backward, label, "backward direction")
    if size != other:
        raise ValueError(f"{label}: forward params expect {size} input features, backward "
                         f"{other}")
    return size


def params(model, params_, where: str) -> int:
    """Checks ``params_`` against ``model``; returns their input size.

    Args:
      model: a :class:`~seqjax.Cell` or :class:`~seqjax.SequenceModel`.
      params_: the params given by the user.
      where: the entry point, for the message (``"unroll"``).

    Raises:
      ValueError: structure or shapes differ from what ``model.init`` builds.
      TypeError: a dtype of another kind, or params that mix dtypes.
    """
    checked = getattr(model.input_size, CHECKED, False)
    try:
        if checked:
            return model.input_size(params_)
        return cell_params(model, params_, model.input_size)
    except (ValueError, TypeError) as e:
        _reraise(e, where)


def reference_state(cell, params_):
    """``cell.initial_state(params)`` as ``jax.ShapeDtypeStruct`` leaves (cached)."""
    leaves, tree = jax.tree_util.tree_flatten(params_)
    signature = (tree, tuple((tuple(np.shape(l)), jnp.dtype(l.dtype)) if _is_array(l)
                             else type(l) for l in leaves))
    structs = jax.tree_util.tree_unflatten(
        tree, [_struct(l) if _is_array(l) else l for l in leaves])

    def compute():
        return jax.eval_shape(cell.initial_state, structs)

    try:
        return _cached(_STATES, (id(cell), signature, _x64()), cell, compute)
    except TypeError:  # unhashable leaves
        return compute()


def state_like(state_, reference, name: str = "state", batch: int = None) -> None:
    """``state_`` has the tree structure, shapes and dtypes of ``reference`` (with a
    leading axis of ``batch`` on every leaf, when given).

    Args:
      state_: the state given by the user.
      reference: ``initial_state(params)`` (arrays or ``jax.ShapeDtypeStruct``).
      name: the entry point, for the message.
      batch: the batch size, for states of :func:`seqjax.unroll_batch`.
    """
    label = "" if name == "state" else f"{name}: "
    found = _structure_mismatch(reference, state_, "state")
    if found:
        raise ValueError(f"{label}{found} (the structure of initial_state(params))")
    pairs = list(zip(_leaves_with_paths(reference, "state"),
                     _leaves_with_paths(state_, "state")))
    lead = () if batch is None else (batch,)
    wants = [lead + tuple(np.shape(w)) for (_, w), _ in pairs]
    gots = [tuple(np.shape(g)) for _, (_, g) in pairs]
    if wants != gots:
        if batch is not None and gots == [tuple(np.shape(w)) for (_, w), _ in pairs]:
            raise ValueError(
                f"{label}the state is missing its leading batch axis of {batch}: expected "
                f"shapes {wants}, got {gots}; pass state=None to start every example from "
                "initial_state(params), or stack one state per example")
        raise ValueError(f"{label}expected state shapes {wants}"
                         + (f" (with a leading batch axis of {batch})" if batch is not None
                            else "") + f", got {gots}")
    for (where, want), (_, got) in pairs:
        want_dtype = jnp.dtype(want.dtype)
        got_dtype = jnp.dtype(jax.dtypes.canonicalize_dtype(got.dtype))
        if want_dtype != got_dtype:
            raise TypeError(
                f"{label}{where} must have dtype {want_dtype.name}, the dtype of "
                f"initial_state(params) (which follows the params), got {got_dtype.name}; "
                f"cast the state with .astype(jnp.{want_dtype.name})")


def state(model, params_, state_, where: str, batch: int = None) -> None:
    """Checks ``state_`` against ``model.initial_state(params_)`` (see :func:`state_like`)."""
    state_like(state_, reference_state(model, params_), where, batch)
