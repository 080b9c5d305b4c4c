"""Mask-aware losses against PyTorch's and numpy computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

from seqjax import losses


def _data(seed=0, batch=4, time=6, vocab=5):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, time, vocab)).astype(np.float32)
    labels = rng.integers(0, vocab, size=(batch, time)).astype(np.int32)
    lengths = np.array([6, 3, 1, 0][:batch], np.int32)
    return logits, labels, lengths


def test_sequence_mask_matches_numpy():
    lengths = np.array([0, 2, 5], np.int32)
    want = np.arange(5)[None, :] < lengths[:, None]
    np.testing.assert_array_equal(losses.sequence_mask(lengths, 5), want)


def test_cross_entropy_matches_torch_ignore_index():
    logits, labels, lengths = _data()
    mask = np.arange(6)[None, :] < lengths[:, None]
    got = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                       losses.sequence_mask(lengths, 6))
    # PyTorch averages over the targets that are not ignore_index
    target = torch.tensor(np.where(mask, labels, -100), dtype=torch.long)
    want = torch.nn.functional.cross_entropy(torch.tensor(logits).reshape(-1, 5),
                                             target.reshape(-1), ignore_index=-100)
    np.testing.assert_allclose(got, want.item(), rtol=1e-6)


def test_cross_entropy_by_hand_and_unmasked():
    logits, labels, _ = _data(1)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    per_entry = -np.take_along_axis(log_p, labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels), per_entry.mean(),
                               rtol=1e-6)


def test_mse_matches_torch_on_valid_steps():
    rng = np.random.default_rng(2)
    pred = rng.normal(size=(3, 5, 2)).astype(np.float32)
    target = rng.normal(size=(3, 5, 2)).astype(np.float32)
    lengths = np.array([5, 2, 4], np.int32)
    mask = np.arange(5)[None, :] < lengths[:, None]
    got = losses.mse(pred, target, losses.sequence_mask(lengths, 5))
    want = torch.nn.functional.mse_loss(torch.tensor(pred[mask]), torch.tensor(target[mask]))
    np.testing.assert_allclose(got, want.item(), rtol=1e-6)
    np.testing.assert_allclose(losses.mse(pred, target), np.mean((pred - target) ** 2), rtol=1e-6)


def test_padding_changes_neither_value_nor_gradient():
    logits, labels, lengths = _data(3)
    mask = losses.sequence_mask(lengths, 6)
    garbage = np.where(np.asarray(mask)[..., None], logits, 1e3).astype(np.float32)

    def loss(z):
        return losses.softmax_cross_entropy(z, jnp.asarray(labels), mask)

    np.testing.assert_allclose(loss(jnp.asarray(garbage)), loss(jnp.asarray(logits)), rtol=1e-6)
    grad = np.asarray(jax.grad(loss)(jnp.asarray(logits)))
    assert np.all(grad[~np.asarray(mask)] == 0)
    assert np.any(grad[np.asarray(mask)] != 0)


def test_all_padding_gives_zero_not_nan():
    logits, labels, _ = _data(4)
    mask = np.zeros(labels.shape, bool)
    assert float(losses.softmax_cross_entropy(logits, labels, mask)) == 0.0
    assert float(losses.mse(logits, logits + 1, mask)) == 0.0


def test_accuracy_counts_valid_entries_only():
    logits, labels, lengths = _data(5)
    mask = np.arange(6)[None, :] < lengths[:, None]
    want = (logits.argmax(-1) == labels)[mask].mean()
    np.testing.assert_allclose(losses.accuracy(logits, labels, mask), want, rtol=1e-6)
