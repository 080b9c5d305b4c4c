"""Mask-aware losses for padded sequence batches.

Every loss averages over **valid entries only**:

.. math:: L = \\frac{\\sum_i m_i \\, \\ell_i}{\\max(\\sum_i m_i, 1)}

so padding (``m_i = 0``) changes neither the value nor the gradient (whatever the
padded entries hold, even NaN), and an all-padding batch gives ``0`` rather than
``nan``.

Integer labels must lie in ``[0, V)`` wherever the mask counts them. Concrete labels
(outside ``jit``/``vmap``) are checked and a ``ValueError`` names the range and the
values found. Traced labels cannot be read in Python: a counted label out of range
then makes the loss NaN (never a finite number computed from another class), and
``jax.experimental.checkify.checkify`` turns it into an error with the same message.
Padded entries may hold any label (``-1``, ``-100``, ...).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from seqjax import _checks

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


def _check_mask(mask, shape, name):
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.ndim > len(shape) or tuple(shape[:mask.ndim]) != mask.shape:
        raise ValueError(f"{name}: mask of shape {tuple(mask.shape)} must match the leading axes "
                         f"of the per-entry loss {tuple(shape)}")
    return mask


def _masked_mean(values, mask, name):
    if mask is None:
        return jnp.mean(values)
    mask = _check_mask(mask, values.shape, name)
    mask = mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim))
    mask = jnp.broadcast_to(mask, values.shape).astype(values.dtype)
    zero = jnp.zeros((), values.dtype)
    total = jnp.sum(jnp.where(mask != zero, mask * values, zero))  # NaN in padding stays out
    count = jnp.sum(mask)
    return total / jnp.maximum(count, jnp.ones((), values.dtype))


def _labels(logits, labels, mask, name):
    """Checked ``(logits, labels, valid)``; ``valid`` as in ``_checks.class_labels``."""
    logits = jnp.asarray(logits)
    if logits.ndim < 1 or not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"{name}: logits must be a floating array [..., classes], got "
                        f"{logits.dtype}{list(logits.shape)}")
    labels = jnp.asarray(labels) if not hasattr(labels, "dtype") else labels
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{name}: labels must be integer class ids, got {labels.dtype}")
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"{name}: logits {tuple(logits.shape)} need labels of shape "
                         f"{tuple(logits.shape[:-1])}, got {tuple(labels.shape)}")
    _check_mask(mask, labels.shape, name)
    labels, valid = _checks.class_labels(labels, logits.shape[-1], mask, name)
    return logits, jnp.asarray(labels), valid


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
    logits, labels, valid = _labels(logits, labels, mask, "softmax_cross_entropy")
    if valid is not None:  # traced labels: out of range gives NaN, not another class's loss
        labels = jnp.where(valid, labels, jnp.zeros((), labels.dtype))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    if valid is not None:
        losses = jnp.where(valid, losses, jnp.full((), jnp.nan, losses.dtype))
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
    logits, labels, valid = _labels(logits, labels, mask, "accuracy")
    hits = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    if valid is not None:  # traced labels out of range: NaN, not a silent miss
        hits = jnp.where(valid, hits, jnp.full((), jnp.nan, hits.dtype))
    return _masked_mean(hits, mask, "accuracy")
