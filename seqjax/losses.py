"""Mask-aware losses for padded sequence batches.

Every loss averages over **valid entries only**:

.. math:: L = \\frac{\\sum_i m_i \\, \\ell_i}{\\max(\\sum_i m_i, 1)}

so padding (``m_i = 0``) changes neither the value nor the gradient, and an all-padding
batch gives ``0`` rather than ``nan``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def sequence_mask(lengths, time: int) -> Array:
    """``mask[..., t] = t < lengths[...]``.

    Args:
      lengths: integer lengths of any shape, e.g. ``[B]``.
      time: size of the time axis ``T``.

    Returns:
      ``bool[..., T]``, e.g. ``[B, T]``.
    """
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"sequence_mask: lengths must be integers, got {lengths.dtype}")
    steps = jnp.arange(time, dtype=lengths.dtype).reshape((1,) * lengths.ndim + (time,))
    return steps < lengths[..., None]


def _masked_mean(values, mask, name):
    if mask is None:
        return jnp.mean(values)
    mask = jnp.asarray(mask)
    if mask.ndim > values.ndim or values.shape[:mask.ndim] != mask.shape:
        raise ValueError(f"{name}: mask of shape {tuple(mask.shape)} must match the leading axes "
                         f"of the per-entry loss {tuple(values.shape)}")
    mask = mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim))
    mask = jnp.broadcast_to(mask, values.shape).astype(values.dtype)
    total = jnp.sum(mask * values)
    return total / jnp.maximum(jnp.sum(mask), jnp.ones((), values.dtype))


def mse(pred, target, mask=None) -> Array:
    """Mean squared error over valid entries.

    .. math:: L = \\frac{\\sum m \\odot (\\hat y - y)^2}{\\max(\\sum m, 1)}

    Args:
      pred: ``[..., F]`` (any shape) predictions.
      target: same shape as ``pred``.
      mask: ``None`` or a boolean/0-1 array matching the leading axes of ``pred``
        (e.g. ``[B, T]`` for ``[B, T, F]``); trailing axes are broadcast, so a valid
        step counts all its ``F`` features.

    Returns:
      Scalar.
    """
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"mse: pred {tuple(pred.shape)} and target {tuple(target.shape)} "
                         "must have the same shape")
    return _masked_mean(jnp.square(pred - target.astype(pred.dtype)), mask, "mse")


def softmax_cross_entropy(logits, labels, mask=None) -> Array:
    """Cross-entropy of integer labels under ``softmax(logits)``, over valid entries.

    .. math:: \\ell_i = -\\log \\mathrm{softmax}(z_i)_{y_i}

    Uses ``optax.softmax_cross_entropy_with_integer_labels``.

    Args:
      logits: ``[..., V]``.
      labels: ``[...]`` integer class ids in ``[0, V)``.
      mask: ``None`` or ``[...]`` (or a prefix of it), true where the entry counts.

    Returns:
      Scalar.
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"softmax_cross_entropy: labels must be integer class ids, got "
                        f"{labels.dtype}")
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"softmax_cross_entropy: logits {tuple(logits.shape)} need labels of "
                         f"shape {tuple(logits.shape[:-1])}, got {tuple(labels.shape)}")
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return _masked_mean(losses, mask, "softmax_cross_entropy")


def accuracy(logits, labels, mask=None) -> Array:
    """Fraction of valid entries whose argmax equals the label.

    Args:
      logits: ``[..., V]``.
      labels: ``[...]`` integer ids.
      mask: as for :func:`softmax_cross_entropy`.

    Returns:
      Scalar in ``[0, 1]`` (float32).
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"accuracy: logits {tuple(logits.shape)} need labels of shape "
                         f"{tuple(logits.shape[:-1])}, got {tuple(labels.shape)}")
    hits = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return _masked_mean(hits, mask, "accuracy")
