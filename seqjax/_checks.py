"""Input validation that runs in Python, before tracing or compilation.

Every message names what was expected, so a user never has to read an XLA trace to
learn that a feature size or a dtype was wrong.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


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
    """Checks lengths when they are concrete; traced lengths pass through unchecked."""
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
    if concrete is not None and concrete.size and (concrete.min() < 0 or concrete.max() > time):
        raise ValueError(
            f"{name} must lie in [0, {time}] (the time axis of xs), got values from "
            f"{concrete.min()} to {concrete.max()}")
    return jnp.asarray(value, jnp.int32)


def state_like(state, reference, name: str = "state") -> None:
    """``state`` has the tree structure, shapes and dtypes of ``reference``."""
    ref_leaves, ref_tree = jax.tree_util.tree_flatten(reference)
    leaves, tree = jax.tree_util.tree_flatten(state)
    if tree != ref_tree:
        raise ValueError(f"{name}: expected a state with structure {ref_tree}, got {tree}")
    for got, want in zip(leaves, ref_leaves):
        if jnp.shape(got) != jnp.shape(want):
            raise ValueError(
                f"{name}: expected shapes {[tuple(jnp.shape(l)) for l in ref_leaves]}, got "
                f"{[tuple(jnp.shape(l)) for l in leaves]}")
