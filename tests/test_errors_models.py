"""What :mod:`seqjax.models` and :mod:`seqjax.losses` reject: token ids, labels,
lengths, sizes and configurations, and the messages they give.

Concrete values are checked in Python before anything is compiled. Traced values
(under ``jit``/``vmap``) cannot be: for them the tests check the documented
behaviour -- an out-of-range id or label gives NaN, never a plausible number -- and
that ``jax.experimental.checkify`` turns it into an error with the same message.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import seqjax
from seqjax import losses, models

KEY = jax.random.PRNGKey(0)


def _logits_labels(batch=4, time=6, vocab=5):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(batch, time, vocab)).astype(np.float32)
    labels = rng.integers(0, vocab, size=(batch, time)).astype(np.int32)
    return logits, labels


# ------------------------------------------------------------------- token ids


def test_embed_rejects_bad_ids():
    table = models.embedding_init(KEY, 7, 3)
    with pytest.raises(ValueError, match=r"in \[0, 6\]"):
        models.embed(table, np.array([1, 7], np.int32))
    with pytest.raises(ValueError, match=r"in \[0, 6\].*got values from -1 to 1"):
        models.embed(table, np.array([1, -1], np.int32))
    with pytest.raises(TypeError, match="integer dtype"):
        models.embed(table, np.array([1.0, 2.0], np.float32))
    with pytest.raises(TypeError, match="table must be floating"):
        models.embed(jnp.zeros((7, 3), jnp.int32), np.array([1], np.int32))


def test_traced_out_of_range_ids_give_nan_and_checkify_names_them():
    """Issue 10's silent case: under vmap, id -1 used to read the last embedding row."""
    model = models.many_to_one(seqjax.rnn(4), 2, vocab_size=10, embed_dim=3)
    params = jax.tree_util.tree_map(lambda a: jnp.linspace(-1, 1, a.size).reshape(a.shape),
                                    jax.eval_shape(model.init, KEY))
    ids = jnp.array([[1, 2, 3], [1, -1, 3], [1, 10, 3]], jnp.int32)
    batched = jax.jit(jax.vmap(model.apply, (None, 0)))
    out = np.asarray(batched(params, ids))
    assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1:])), out
    table = params.embedding
    rows = jax.jit(models.embed)(table, jnp.array([-1, 10, 9], jnp.int32))
    assert np.all(np.isnan(rows[:2])) and np.all(rows[2] == table[9])
    err, _ = checkify.checkify(batched)(params, ids)
    with pytest.raises(checkify.JaxRuntimeError,
                       match=r"many_to_one: xs: token ids must lie in \[0, 9\] "
                             r"\(vocab_size=10\), got values from (-1 to 3|1 to 10)"):
        err.throw()
    with pytest.raises(ValueError, match=r"many_to_one: xs: token ids must lie in \[0, 9\]"):
        model.apply(params, np.array([1, -1, 3], np.int32))  # concrete: before compiling


def test_model_input_errors_are_named():
    with pytest.raises(ValueError, match="leave input_size unset"):
        models.many_to_one(seqjax.gru(4), 2, input_size=3, vocab_size=9, embed_dim=5)
    with pytest.raises(ValueError, match="pass input_size"):
        models.many_to_one(seqjax.gru(4), 2)
    model = models.many_to_one(seqjax.gru(4), 2, input_size=3)
    params = jax.eval_shape(model.init, KEY)
    with pytest.raises(ValueError, match=r"expected xs of shape \[time, 3\]"):
        model.apply(params, jnp.ones((5, 4)))
    with pytest.raises(ValueError, match=r"unroll: gru\(hidden_size=4.*got LSTMParams"):
        model.apply(params._replace(encoder=jax.eval_shape(
            lambda k: seqjax.lstm(4).init(k, 3), KEY)), jnp.ones((5, 3)))
    tokens = models.many_to_one(seqjax.gru(4), 2, vocab_size=9, embed_dim=5)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 8\]"):
        tokens.apply(jax.eval_shape(tokens.init, KEY), np.array([1, 9], np.int32))


def test_readout_and_generation_errors():
    ys = np.zeros((6, 3), np.float32)
    with pytest.raises(ValueError, match=r"length must lie in \[0, 6\]"):
        models.last_valid(ys, 7)
    model = models.one_to_many(seqjax.lstm(6), 5, 4)
    params = jax.eval_shape(model.init, KEY)
    with pytest.raises(ValueError, match="context_size"):
        model.generate(params, KEY, np.ones(3, np.float32), 3)
    with pytest.raises(ValueError, match=r"prompt: token ids must lie in \[0, 4\]"):
        model.generate(params, KEY, np.array([5], np.int32), 3)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        model.generate(params, KEY, np.array([1], np.int32), 3, temperature=-1.0)


def test_seq2seq_configuration_errors():
    with pytest.raises(ValueError, match="bridge=False"):
        models.seq2seq(seqjax.gru(3), seqjax.lstm(3), src_vocab=5, tgt_vocab=5, embed_dim=2,
                       start_id=1, end_id=2, bridge=False)
    with pytest.raises(TypeError, match="decoder must be a seqjax Cell"):
        models.seq2seq(seqjax.gru(3), seqjax.bidirectional(seqjax.gru(3), seqjax.gru(3)),
                       src_vocab=5, tgt_vocab=5, embed_dim=2, start_id=1, end_id=2)
    with pytest.raises(ValueError, match=r"end_id must be a token id in \[0, 4\]"):
        models.seq2seq(seqjax.gru(3), seqjax.gru(3), src_vocab=5, tgt_vocab=5, embed_dim=2,
                       start_id=1, end_id=5)


# ------------------------------------------------------------------- losses


def test_bad_loss_inputs_are_named():
    logits, labels = _logits_labels()
    with pytest.raises(TypeError, match="integer class ids"):
        losses.softmax_cross_entropy(logits, labels.astype(np.float32))
    with pytest.raises(ValueError, match=r"need labels of shape \(4, 6\)"):
        losses.softmax_cross_entropy(logits, labels[:, :5])
    with pytest.raises(ValueError, match="mask of shape"):
        losses.softmax_cross_entropy(logits, labels, np.ones((4, 5), bool))
    with pytest.raises(TypeError, match="logits must be a floating array"):
        losses.accuracy(labels, labels[:, 0])
    with pytest.raises(ValueError, match="same shape"):
        losses.mse(logits, logits[:, :5])
    with pytest.raises(ValueError, match="mask of shape"):
        losses.mse(logits, logits, np.ones((4, 5), bool))


def test_out_of_range_labels_raise_or_give_nan():
    """Issue 10's silent cases: label -1 gave a finite loss, label 5 of 3 classes NaN
    without a word. Concrete labels now raise; masked-out entries may hold anything;
    traced labels give NaN and checkify names them."""
    logits = jnp.zeros((2, 3))
    for bad in ([0, -1], [0, 5]):
        with pytest.raises(ValueError, match=r"softmax_cross_entropy: labels must lie in "
                                             r"\[0, 2\] \(logits have 3 classes\)"):
            losses.softmax_cross_entropy(logits, jnp.array(bad))
        with pytest.raises(ValueError, match=r"accuracy: labels must lie in \[0, 2\]"):
            losses.accuracy(logits, jnp.array(bad))
    # padding marked by the mask may hold any label (here PyTorch's ignore index)
    masked = losses.softmax_cross_entropy(logits, jnp.array([0, -100]), jnp.array([True, False]))
    np.testing.assert_allclose(masked, np.log(3.0), rtol=1e-6)
    with pytest.raises(ValueError, match="where the mask is true, got values from 0 to 7"):
        losses.softmax_cross_entropy(logits, jnp.array([0, 7]), jnp.array([True, True]))

    loss = jax.jit(losses.softmax_cross_entropy)
    assert np.isnan(loss(logits, jnp.array([0, -1])))
    np.testing.assert_allclose(loss(logits, jnp.array([0, 1])), np.log(3.0), rtol=1e-6)
    masked = jax.jit(losses.softmax_cross_entropy)(logits, jnp.array([0, -1]),
                                                   jnp.array([True, False]))
    np.testing.assert_allclose(masked, np.log(3.0), rtol=1e-6)
    err, _ = checkify.checkify(loss)(logits, jnp.array([0, 7]))
    with pytest.raises(checkify.JaxRuntimeError, match=r"labels must lie in \[0, 2\].*got 7"):
        err.throw()
