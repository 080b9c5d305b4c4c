"""Sentiment classification: a recurrent model reads a review word by word (many-to-one).

The loader reads any CSV file with a text column and a label column (header row
``text,label`` by default; labels may be any strings, e.g. ``0/1`` or
``neg/pos``). The default data is the small labelled sample shipped in this
repository, ``examples/data/sentiment.csv``: 308 short English reviews of films,
books and products, 154 positive (``1``) and 154 negative (``0``), written for
the repository (no download).

Words are lower-cased and split on letters, digits and apostrophes; the
vocabulary comes from the training part only (words seen there fewer than
``--min-count`` times, and words it never saw, map to ``<unk>``).
A bidirectional GRU reads the word embeddings, the mean of its outputs over the
real words goes through a dense layer to the classes.

The sample is small, so the score is k-fold cross-validated (stratified,
``--folds 5``): every review is classified once, by a model that never saw it,
and the accuracy over all reviews is printed beside the majority baseline
(always predicting the most frequent label of the training folds) and, for
reference, a bag-of-words logistic regression (scikit-learn) on the same folds.

The sample is hard for its size: it comes in contrast pairs that share most
words and differ in sentiment ("The acting was superb ..." / "The acting was
wooden ..."), so when one half of a pair is in training the shared words point
the wrong way for the other half.

Run::

    python -m examples.sentiment
    python -m examples.sentiment --csv my_reviews.csv --text-column review --label-column stars
"""

from __future__ import annotations

import collections
import csv
import os
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Run as a file (python examples/sentiment.py), the checkout's root is not on the
# path, so `examples` would not be importable: put it first.
if not __package__:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import seqjax  # noqa: E402
from examples._common import CELLS, losses_of, minibatches, parser_for, require  # noqa: E402
from seqjax import _cli, losses, models, train  # noqa: E402

DEFAULT_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "sentiment.csv")
PAD, UNK = 0, 1
_WORD = re.compile(r"[a-z0-9']+")


def load_csv(path=DEFAULT_CSV, *, text_column: str = "text", label_column: str = "label"):
    """Reads ``text,label`` rows from a CSV file with a header.

    Args:
      path: the CSV file (UTF-8; quoted fields may contain commas).
      text_column: header of the column holding the text.
      label_column: header of the column holding the label.

    Returns:
      ``(texts, labels, label_names)``: a list of strings, int32 ``[n]`` class ids
      and the label strings in class-id order (sorted; numerically if they are all
      integers, so ``0, 1`` stay ``0, 1``).

    Raises:
      ValueError: a column is missing, a label is empty, or the file has no rows.
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for name in (text_column, label_column):
            if name not in columns:
                raise ValueError(f"{path}: expected a column {name!r} in the header, found "
                                 f"{columns}")
        texts, raw = [], []
        for line, row in enumerate(reader, start=2):
            label = (row[label_column] or "").strip()
            if not label:
                raise ValueError(f"{path}, line {line}: empty label in column {label_column!r}")
            texts.append(row[text_column] or "")
            raw.append(label)
    if not texts:
        raise ValueError(f"{path}: no data rows")
    names = sorted(set(raw), key=lambda v: (int(v), v) if _is_int(v) else (float("inf"), v))
    index = {name: i for i, name in enumerate(names)}
    return texts, np.array([index[v] for v in raw], np.int32), names


def _is_int(value: str) -> bool:
    return value.lstrip("+-").isdigit()


def tokenize(text: str) -> list:
    """Lower-cased words: runs of letters, digits and apostrophes."""
    return _WORD.findall(text.lower())


class Vocabulary:
    """Word ids from a list of training texts: ``0`` is padding, ``1`` unknown.

    Attributes:
      words: the known words; id ``i + 2`` is ``words[i]`` (most frequent first).
    """

    def __init__(self, texts, min_count: int = 1):
        counts = collections.Counter(w for t in texts for w in tokenize(t))
        self.words = [w for w, c in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))
                      if c >= min_count]
        self._ids = {w: i + 2 for i, w in enumerate(self.words)}

    @property
    def size(self) -> int:
        return len(self.words) + 2

    def encode(self, texts, max_len: int):
        """Padded ids ``int32 [n, max_len]`` and lengths ``int32 [n]`` (at least 1:
        an empty text is read as one ``<unk>``); longer texts are cut."""
        ids = np.full((len(texts), max_len), PAD, np.int32)
        lengths = np.ones(len(texts), np.int32)
        for i, text in enumerate(texts):
            words = [self._ids.get(w, UNK) for w in tokenize(text)][:max_len] or [UNK]
            ids[i, :len(words)] = words
            lengths[i] = len(words)
        return ids, lengths


def train_and_predict(train_texts, train_labels, test_texts, n_classes: int, *,
                      cell: str = "gru", hidden: int = 16, embed_dim: int = 16,
                      min_count: int = 2, steps: int = 300, batch_size: int = 32,
                      lr: float = 3e-3, weight_decay: float = 1.0, seed: int = 0,
                      progress: bool = True):
    """Trains a bidirectional many-to-one classifier and predicts ``test_texts``.

    Words seen fewer than ``min_count`` times in ``train_texts`` are read as
    ``<unk>``, like the words of the test texts that training never saw. The
    optimizer is AdamW (decoupled weight decay ``weight_decay``) behind gradient
    clipping; the strong decay is what keeps a model this size from memorising a
    few hundred sentences.

    Returns:
      ``(predicted int [n_test], losses)``: the predicted classes and the
      training loss per step.
    """
    vocab = Vocabulary(train_texts, min_count)
    max_len = max(max(len(tokenize(t)) for t in train_texts), 1)
    x_train, len_train = vocab.encode(train_texts, max_len)
    x_test, len_test = vocab.encode(test_texts, max([len(tokenize(t)) for t in test_texts] + [1]))
    encoder = seqjax.bidirectional(CELLS[cell](hidden), CELLS[cell](hidden))
    model = models.many_to_one(encoder, n_classes, vocab_size=vocab.size, embed_dim=embed_dim,
                               readout=models.masked_mean)
    params = model.init(jax.random.PRNGKey(seed))

    def logits_fn(params, x, lengths):
        return jax.vmap(model.apply, in_axes=(None, 0, 0))(params, x, lengths)

    def loss_fn(params, batch, rng):
        return losses.softmax_cross_entropy(logits_fn(params, batch["x"], batch["length"]),
                                            batch["y"])

    optimizer = train.clipped(optax.adamw(lr, weight_decay=weight_decay))
    state, history = train.fit(
        loss_fn, optimizer, params,
        minibatches({"x": x_train, "length": len_train, "y": train_labels},
                    min(batch_size, len(train_texts)), seed),
        steps=steps, seed=seed, progress=progress)
    logits = jax.jit(logits_fn)(state.params, x_test, len_test)
    return np.asarray(jnp.argmax(logits, axis=-1)), losses_of(history)


def run(*, csv_path=DEFAULT_CSV, text_column: str = "text", label_column: str = "label",
        folds: int = 5, cell: str = "gru", hidden: int = 16, embed_dim: int = 16,
        min_count: int = 2, steps: int = 300, batch_size: int = 32, lr: float = 3e-3,
        weight_decay: float = 1.0, seed: int = 0, progress: bool = True):
    """Cross-validated accuracy of the classifier and of the majority baseline.

    Returns:
      A dict with ``accuracy`` and ``baseline`` over all rows (each predicted by
      the model of the fold that held it out), ``bag_of_words`` (the logistic
      regression's accuracy on the same folds), ``fold_accuracy`` (one per fold),
      ``n``, ``label_names`` and ``losses`` (training loss per step, per fold).
    """
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    texts, labels, names = load_csv(csv_path, text_column=text_column,
                                    label_column=label_column)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    predicted = np.zeros_like(labels)
    baseline = np.zeros_like(labels)
    bag_of_words = np.zeros_like(labels)
    fold_accuracy, fold_losses = [], []
    for fold, (tr, te) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        pred, fold_loss = train_and_predict(
            [texts[i] for i in tr], labels[tr], [texts[i] for i in te], len(names),
            cell=cell, hidden=hidden, embed_dim=embed_dim, min_count=min_count, steps=steps,
            batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed + fold,
            progress=progress)
        predicted[te] = pred
        counts = CountVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None)
        regression = LogisticRegression(max_iter=1000).fit(
            counts.fit_transform([texts[i] for i in tr]), labels[tr])
        bag_of_words[te] = regression.predict(counts.transform([texts[i] for i in te]))
        baseline[te] = np.bincount(labels[tr], minlength=len(names)).argmax()
        fold_accuracy.append(float(np.mean(pred == labels[te])))
        fold_losses.append(fold_loss)
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "baseline": float(np.mean(baseline == labels)),
        "bag_of_words": float(np.mean(bag_of_words == labels)),
        "fold_accuracy": fold_accuracy,
        "n": len(labels),
        "label_names": names,
        "losses": fold_losses,
    }


def main(argv=None):
    parser = parser_for(__doc__, _cli.ArgumentParser)
    parser.add_argument("--csv", dest="csv_path", default=DEFAULT_CSV,
                        help="CSV file with a header row, one review per row")
    parser.add_argument("--text-column", default="text", help="column holding the text")
    parser.add_argument("--label-column", default="label",
                        help="column holding the label (any strings)")
    parser.add_argument("--folds", type=_cli.int_at_least(2), default=5,
                        help="folds of the stratified cross-validation")
    parser.add_argument("--cell", choices=sorted(CELLS), default="gru",
                        help="recurrent cell of each direction of the bidirectional encoder")
    parser.add_argument("--hidden", type=_cli.positive_int, default=16,
                        help="hidden size of each direction")
    parser.add_argument("--embed-dim", type=_cli.positive_int, default=16,
                        help="word embedding size")
    parser.add_argument("--min-count", type=_cli.positive_int, default=2,
                        help="words seen fewer times in the training folds map to <unk>")
    parser.add_argument("--steps", type=_cli.positive_int, default=300,
                        help="training steps per fold")
    parser.add_argument("--batch-size", type=_cli.positive_int, default=32,
                        help="reviews per training step")
    parser.add_argument("--lr", type=_cli.positive_float, default=3e-3,
                        help="AdamW learning rate (gradients clipped at global norm 1)")
    parser.add_argument("--weight-decay", type=_cli.nonnegative_float, default=1.0,
                        help="AdamW's decoupled weight decay")
    parser.add_argument("--seed", type=_cli.nonnegative_int, default=0,
                        help="PRNG seed (initialisation, data split and order, sampling)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="do not draw the training progress bar")
    args = parser.parse_args(argv)
    require("examples/sentiment.py", "sklearn")
    metrics = run(**vars(args))
    folds = ", ".join(f"{a:.3f}" for a in metrics["fold_accuracy"])
    print(f"sentiment [bidirectional {args.cell}] {args.folds}-fold cross-validated accuracy "
          f"{metrics['accuracy']:.3f} over {metrics['n']} texts (folds: {folds})   "
          f"majority baseline {metrics['baseline']:.3f}   (for reference: bag-of-words "
          f"logistic regression {metrics['bag_of_words']:.3f})")
    return metrics


if __name__ == "__main__":
    main()
