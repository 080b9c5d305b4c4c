"""Sequence to sequence: learning to add, character by character ("535+61" -> "596").

Random addition problems with 1- to 3-digit operands give variable-length inputs
(3 to 7 characters) and outputs (1 to 4 digits). An encoder reads the problem and
its final state is the context vector that starts a decoder; the decoder is trained
with teacher forcing (it reads ``START`` followed by the true answer and predicts
the answer followed by ``END``), and at test time decodes greedily, feeding back
its own predictions until it emits ``END``.

Problems are generated from a seed; the held-out problems are operand pairs that
never occur in training. The score is exact-match accuracy (the whole answer right)
beside an honest trivial baseline: always answering with the most common answer of
the training set.

Run::

    python -m examples.seq2seq_addition
    python -m examples.seq2seq_addition --batch-size 128          # 0.93 exact match, twice the work
"""

from __future__ import annotations

import collections
import pathlib
import sys

import jax
import numpy as np

# Run as a file (python examples/seq2seq_addition.py), the checkout's root is not on the
# path, so `examples` would not be importable: put it first.
if not __package__:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from examples._common import CELLS, losses_of, minibatches, parser_for  # noqa: E402
from seqjax import _cli, losses, models, train  # noqa: E402

CELLS = {name: CELLS[name] for name in ("lstm", "gru", "mgu", "rnn")}

PAD, START, END = 0, 1, 2
SYMBOLS = "0123456789+"
VOCAB = ("<pad>", "<start>", "<end>") + tuple(SYMBOLS)
TOKEN = {ch: i for i, ch in enumerate(VOCAB)}


def problems(n: int, *, max_digits: int = 3, seed: int = 0, exclude=frozenset()):
    """``n`` distinct random problems ``(a, b)``, operand lengths uniform in 1..max_digits.

    Pairs in ``exclude`` are never drawn.
    """
    rng = np.random.default_rng(seed)
    found, seen = [], set(exclude)
    while len(found) < n:
        da, db = rng.integers(1, max_digits + 1, size=2)
        a = int(rng.integers(0 if da == 1 else 10 ** (da - 1), 10 ** da))
        b = int(rng.integers(0 if db == 1 else 10 ** (db - 1), 10 ** db))
        if (a, b) not in seen:
            seen.add((a, b))
            found.append((a, b))
    return found


def encode(pairs, *, max_digits: int = 3, reverse_source: bool = False):
    """Tokenises problems into padded arrays.

    Args:
      pairs: ``(a, b)`` operand pairs.
      max_digits: operand length bound (fixes the padded widths).
      reverse_source: write the problem backwards ("535+61" as "16+535"), so that
        the encoder reads the leading digits last, nearest to the decoder's first
        outputs (the input reversal of Sutskever et al., 2014).

    Returns:
      A dict of int32 arrays: ``src [n, 2*max_digits+1]`` ("a+b", padded with
      ``PAD``), ``src_len [n]``, ``tgt_in [n, max_digits+2]`` (``START`` + answer),
      ``tgt_out [n, max_digits+2]`` (answer + ``END``) and ``tgt_len [n]``
      (answer length + 1, the number of predicted tokens).
    """
    src_width, tgt_width = 2 * max_digits + 1, max_digits + 2
    n = len(pairs)
    out = {name: np.full((n, width), PAD, np.int32) for name, width in
           (("src", src_width), ("tgt_in", tgt_width), ("tgt_out", tgt_width))}
    out["src_len"] = np.zeros(n, np.int32)
    out["tgt_len"] = np.zeros(n, np.int32)
    for i, (a, b) in enumerate(pairs):
        problem = f"{a}+{b}"
        src = [TOKEN[ch] for ch in (problem[::-1] if reverse_source else problem)]
        answer = [TOKEN[ch] for ch in str(a + b)]
        out["src"][i, :len(src)] = src
        out["src_len"][i] = len(src)
        out["tgt_in"][i, :len(answer) + 1] = [START] + answer
        out["tgt_out"][i, :len(answer) + 1] = answer + [END]
        out["tgt_len"][i] = len(answer) + 1
    return out


def decode(tokens, length) -> str:
    """A decoded answer back to a string: the first ``length`` tokens, less a final END."""
    ids = [int(t) for t in np.asarray(tokens)[:int(length)]]
    if ids and ids[-1] == END:
        ids = ids[:-1]
    return "".join(VOCAB[t] for t in ids)


def run(*, cell: str = "gru", hidden: int = 128, embed_dim: int = 32, steps: int = 3000,
        batch_size: int = 64, lr: float = 3e-3, n_train: int = 20000, n_test: int = 1000,
        max_digits: int = 3, reverse_source: bool = True, seed: int = 0,
        progress: bool = True, show: int = 0):
    """Trains the encoder-decoder and scores greedy decoding on held-out problems.

    Returns:
      A dict with ``accuracy`` (exact match), ``baseline`` (most common training
      answer), ``baseline_answer``, ``examples`` (``show`` decoded test problems as
      ``(problem, truth, prediction)``) and ``losses`` (training loss per step).
    """
    train_pairs = problems(n_train, max_digits=max_digits, seed=seed)
    test_pairs = problems(n_test, max_digits=max_digits, seed=seed + 1,
                          exclude=frozenset(train_pairs))
    train_data = encode(train_pairs, max_digits=max_digits, reverse_source=reverse_source)
    test_data = encode(test_pairs, max_digits=max_digits, reverse_source=reverse_source)

    model = models.seq2seq(CELLS[cell](hidden), CELLS[cell](hidden), src_vocab=len(VOCAB),
                           tgt_vocab=len(VOCAB), embed_dim=embed_dim, start_id=START,
                           end_id=END)
    params = model.init(jax.random.PRNGKey(seed))

    def loss_fn(params, batch, rng):
        logits = jax.vmap(model.apply, in_axes=(None, 0, 0, 0))(
            params, batch["src"], batch["src_len"], batch["tgt_in"])
        mask = losses.sequence_mask(batch["tgt_len"], batch["tgt_out"].shape[1])
        return losses.softmax_cross_entropy(logits, batch["tgt_out"], mask)

    state, history = train.fit(loss_fn, train.default_optimizer(lr), params,
                               minibatches(train_data, batch_size, seed), steps=steps,
                               seed=seed, progress=progress)

    decode_batch = jax.vmap(model.greedy_decode, in_axes=(None, 0, 0, None))
    tokens, lengths = decode_batch(state.params, test_data["src"], test_data["src_len"],
                                   max_digits + 2)
    predictions = [decode(t, n) for t, n in zip(tokens, lengths)]
    truths = [str(a + b) for a, b in test_pairs]
    common = collections.Counter(str(a + b) for a, b in train_pairs).most_common(1)[0][0]
    return {
        "accuracy": float(np.mean([p == t for p, t in zip(predictions, truths)])),
        "baseline": float(np.mean([t == common for t in truths])),
        "baseline_answer": common,
        "examples": [(f"{a}+{b}", t, p) for (a, b), t, p in
                     zip(test_pairs[:show], truths, predictions)],
        "losses": losses_of(history),
    }


def main(argv=None):
    parser = parser_for(__doc__, _cli.ArgumentParser)
    parser.add_argument("--cell", choices=sorted(CELLS), default="gru",
                        help="recurrent cell of the encoder and of the decoder")
    parser.add_argument("--hidden", type=_cli.positive_int, default=128,
                        help="hidden size of the encoder and of the decoder")
    parser.add_argument("--embed-dim", type=_cli.positive_int, default=32,
                        help="character embedding size")
    parser.add_argument("--steps", type=_cli.positive_int, default=3000,
                        help="training steps (minibatches)")
    parser.add_argument("--batch-size", type=_cli.positive_int, default=64,
                        help="problems per training step")
    parser.add_argument("--lr", type=_cli.positive_float, default=3e-3,
                        help="Adam learning rate (gradients clipped at global norm 1)")
    parser.add_argument("--train-size", dest="n_train", type=_cli.positive_int, default=20000,
                        help="training problems")
    parser.add_argument("--test-size", dest="n_test", type=_cli.positive_int, default=1000,
                        help="held-out problems (operand pairs never seen in training)")
    parser.add_argument("--max-digits", type=_cli.positive_int, default=3,
                        help="most digits per operand")
    parser.add_argument("--no-reverse-source", dest="reverse_source", action="store_false",
                        help="let the encoder read the problem left to right")
    parser.add_argument("--seed", type=_cli.nonnegative_int, default=0,
                        help="PRNG seed (initialisation, data split and order, sampling)")
    parser.add_argument("--show", type=_cli.nonnegative_int, default=8,
                        help="decoded test problems to print")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="do not draw the training progress bar")
    args = parser.parse_args(argv)
    metrics = run(**{k: v for k, v in vars(args).items()})
    for problem, truth, prediction in metrics["examples"]:
        mark = "ok" if truth == prediction else "wrong"
        print(f"  {problem:>9} = {truth:<5} model: {prediction:<5} {mark}")
    print(f"addition [{args.cell}] held-out exact match {metrics['accuracy']:.3f}   "
          f"baseline (always answer {metrics['baseline_answer']!r}, the most common "
          f"training answer) {metrics['baseline']:.3f}")
    return metrics


if __name__ == "__main__":
    main()
