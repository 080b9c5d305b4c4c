"""Character-level language model with text generation (one-to-many sampling).

The default text ships with Python itself: the reference documentation that
``help()`` shows for keywords and topics ("The assert statement", "Assignment
statements", ...), stored in the standard library module ``pydoc_data.topics``
(about 465,000 characters of English prose with code samples on Python 3.11; PSF
license; no download). The topics are joined in name order and the last
``test_fraction`` of the characters is held out. ``--text-file`` trains on any
UTF-8 file instead.

A recurrent cell (``--cell``), or a language model of published blocks and their
hybrids (``--cell griffin,griffin,local_attention``, ``--blocks mamba2 --layers 4``:
:func:`seqjax.lm.language_model`), reads random windows of the training text and
predicts each next character. On the held-out text the model's cross-entropy in bits per character
is printed beside the unigram baseline: the cross-entropy of the training
character frequencies (add-one smoothed, so every test character has a
probability) on the same test characters. Then the model continues a prompt by
sampling one character at a time with a temperature.

Run::

    python -m examples.char_lm
    python -m examples.char_lm --cell lstm --steps 3000 --prompt "The while statement"
    python -m examples.char_lm --cell slstm       # or rg_lru, s6, lru, min_gru, mlstm, ...
    python examples/char_lm.py --cell griffin,griffin,local_attention --layers 2
    python examples/char_lm.py --blocks mamba2 --layers 4
    python -m examples.char_lm --text-file some_book.txt

``--cell`` takes a cell name (a one-to-many model around the cell) or block names
separated by commas (a decoder language model of those blocks, the pattern repeated
``--layers`` times; a block name that is not a cell, such as ``griffin``, also works
alone). ``--blocks`` always builds the language model, also from names that are cells
too (``mamba2``, ``mlstm``, ``slstm``: the published blocks around those cells).
"""

from __future__ import annotations

import itertools
import pathlib
import sys

import jax
import numpy as np

# Run as a file (python examples/char_lm.py), the checkout's root is not on the
# path, so `examples` would not be importable: put it first.
if not __package__:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import seqjax  # noqa: E402
from examples import _common  # noqa: E402
from examples._common import losses_of  # noqa: E402
from seqjax import _cli, blocks, lm, losses, models, train  # noqa: E402

# name -> (the cell from the hidden size, whether it reads inputs as wide as its hidden
# state). The last kind (lru, rg_lru, s6: their input gates or skip terms are
# elementwise in x) reads a ``hidden``-wide embedding, so the embedding table is their
# input projection; ``embed_dim`` applies to the others.
CELLS = {name: (make, False) for name, make in _common.CELLS.items()}
CELLS.update({
    "lru": (lambda h: seqjax.lru(h, h), True),
    "slstm": (lambda h: seqjax.slstm(h), False),  # 4 heads: hidden divisible by 4
    "rg_lru": (lambda h: seqjax.rg_lru(h), True),
    "s6": (lambda h: seqjax.s6(h), True),
    # matrix-state cells: heads of 64 channels (hidden 192: 3 heads)
    "mlstm": (lambda h: seqjax.mlstm(h), False),
    "delta_net": (lambda h: seqjax.delta_net(h), False),
    "gated_delta_net": (lambda h: seqjax.gated_delta_net(h), False),
    "mamba2": (lambda h: seqjax.mamba2(h), False),
})


def block_pattern(spec: str):
    """The block names of a ``--cell``/``--blocks`` value, or ``None`` for a cell."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if len(names) == 1 and names[0] in CELLS and "," not in spec:
        return None
    unknown = [n for n in names if n not in blocks.names()]
    if unknown or not names:
        raise ValueError(f"char_lm: unknown cell or block {', '.join(unknown) or spec!r}; cells: "
                         f"{', '.join(sorted(CELLS))}; blocks: {', '.join(blocks.names())}")
    return names

UNK = 0  # id of characters never seen in training


def load_text(path=None) -> str:
    """The training text.

    Args:
      path: a UTF-8 text file; ``None`` gives Python's own help topics
        (``pydoc_data.topics``, standard library), joined in name order.
    """
    if path is not None:
        with open(path, encoding="utf-8") as f:
            return f.read()
    from pydoc_data.topics import topics

    return "\n".join(topics[name] for name in sorted(topics))


class Corpus:
    """A text split in time, with a character vocabulary from the training part.

    Attributes:
      chars: the vocabulary; id ``i + 1`` is ``chars[i]``, id ``0`` is unknown.
      train, test: int32 ids ``[n_train]``, ``[n_test]``.
    """

    def __init__(self, text: str, test_fraction: float = 0.1):
        split = int(len(text) * (1.0 - test_fraction))
        self.chars = sorted(set(text[:split]))
        self._ids = {ch: i + 1 for i, ch in enumerate(self.chars)}
        self.train = self.encode(text[:split])
        self.test = self.encode(text[split:])

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str):
        return np.array([self._ids.get(ch, UNK) for ch in text], np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[i - 1] if i > 0 else "?" for i in np.asarray(ids).tolist())


def unigram_bits_per_char(train_ids, test_ids, vocab_size: int) -> float:
    """Cross-entropy (bits/char) on ``test_ids`` of add-one smoothed train frequencies."""
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log2(counts / counts.sum())
    return float(-log_p[test_ids].mean())


def windows(ids, length: int, batch_size: int, seed: int):
    """Endless batches of random windows ``{"x": [B, length], "y": [B, length]}``;
    ``y`` is ``x`` shifted by one character."""
    rng = np.random.default_rng(seed)
    offsets = np.arange(length + 1)
    for _ in itertools.count():
        starts = rng.integers(0, len(ids) - length - 1, size=batch_size)
        chunk = ids[starts[:, None] + offsets]
        yield {"x": chunk[:, :-1], "y": chunk[:, 1:]}


def chunks(ids, length: int):
    """Cuts ``ids`` into consecutive ``(x, y, lengths)`` chunks for evaluation.

    Every character after the first is predicted exactly once; the last chunk is
    padded (``lengths`` says how much of each chunk is real).
    """
    inputs, targets = ids[:-1], ids[1:]
    n = -(-len(inputs) // length)
    x = np.zeros((n, length), np.int32)
    y = np.zeros((n, length), np.int32)
    lengths = np.zeros(n, np.int32)
    for i in range(n):
        part = slice(i * length, (i + 1) * length)
        k = len(inputs[part])
        x[i, :k], y[i, :k], lengths[i] = inputs[part], targets[part], k
    return x, y, lengths


def run(*, cell: str = "gru", blocks_: str | None = None, layers: int = 1, hidden: int = 192,
        embed_dim: int = 32, steps: int = 1500,
        seq_len: int = 64, batch_size: int = 32, lr: float = 3e-3, test_fraction: float = 0.1,
        prompt: str = "The if statement", sample_steps: int = 300, temperature: float = 0.7,
        eval_len: int = 256, seed: int = 0, progress: bool = True, text: str | None = None,
        text_file=None):
    """Trains the language model, scores it on held-out text and samples from it.

    Args:
      cell: a name from :data:`CELLS`, or block names separated by commas (see the
        module docstring).
      blocks_: block names separated by commas: a language model of those blocks
        (overrides ``cell``).
      layers: how many times the block pattern repeats.
      hidden: the cell's hidden size, or the language model's ``d_model``.
      embed_dim: width of the character embedding; cells whose input must be as
        wide as their state (``lru``, ``rg_lru``, ``s6``) use ``hidden`` instead.
      eval_len: the held-out text is scored in consecutive chunks of this many
        characters, each read from the zero state.
      text: the corpus; ``None`` reads ``text_file`` with :func:`load_text`.
      text_file: a UTF-8 file; ``None`` (default) is Python's help topics.

    Returns:
      A dict with ``bits_per_char`` (model, held-out), ``baseline`` (unigram,
      held-out), ``sample`` (the prompt and its sampled continuation),
      ``vocab_size``, ``n_train``/``n_test`` characters, ``losses`` (training
      loss per step, nats per character) and ``embed_dim`` (the width used).
    """
    pattern = (block_pattern(blocks_ + ",") if blocks_ is not None else block_pattern(cell))
    corpus = Corpus(load_text(text_file) if text is None else text, test_fraction)
    if pattern is None:
        make, square = CELLS[cell]
        embed_dim = hidden if square else embed_dim
        model = models.one_to_many(make(hidden), vocab_size=corpus.vocab_size,
                                   embed_dim=embed_dim)
    else:
        embed_dim = hidden
        model = lm.language_model(vocab_size=corpus.vocab_size, d_model=hidden,
                                  blocks=pattern * layers,
                                  max_length=max(seq_len, eval_len) + len(prompt) + sample_steps)
    key_init, key_sample = jax.random.split(jax.random.PRNGKey(seed))
    params = model.init(key_init)

    def loss_fn(params, batch, rng):
        logits = jax.vmap(lambda x: model.apply(params, x))(batch["x"])
        return losses.softmax_cross_entropy(logits, batch["y"])

    state, history = train.fit(loss_fn, train.default_optimizer(lr), params,
                               windows(corpus.train, seq_len, batch_size, seed), steps=steps,
                               seed=seed, progress=progress)

    # Held-out loss, chunk by chunk (each chunk starts from the zero state). The
    # masked mean is over every predicted character once, so it is the per-character
    # cross-entropy of the whole test text.
    x, y, lengths = chunks(corpus.test, eval_len)

    @jax.jit
    def mean_nats(params, x, y, lengths):
        logits = jax.vmap(lambda x_, n: model.apply(params, x_, length=n))(x, lengths)
        return losses.softmax_cross_entropy(logits, y, losses.sequence_mask(lengths, x.shape[1]))

    bits = float(mean_nats(state.params, x, y, lengths)) / np.log(2.0)
    prompt_ids = corpus.encode(prompt)
    generated = model.generate(state.params, key_sample, prompt_ids, sample_steps,
                               temperature=temperature)
    return {
        "bits_per_char": bits,
        "baseline": unigram_bits_per_char(corpus.train, corpus.test[1:], corpus.vocab_size),
        "sample": prompt + corpus.decode(generated),
        "vocab_size": corpus.vocab_size,
        "n_train": len(corpus.train),
        "n_test": len(corpus.test),
        "losses": losses_of(history),
        "embed_dim": embed_dim,
        "model": repr(model),
    }


def main(argv=None):
    parser = _common.parser_for(__doc__, _cli.ArgumentParser)
    parser.add_argument("--cell", default="gru",
                        help=f"a recurrent cell ({', '.join(sorted(CELLS))}) or block names "
                             f"separated by commas ({', '.join(blocks.names())})")
    parser.add_argument("--blocks", dest="blocks_", default=None,
                        help="block names separated by commas: a language model of them "
                             "(overrides --cell)")
    parser.add_argument("--layers", type=_cli.positive_int, default=1,
                        help="times the block pattern repeats")
    parser.add_argument("--hidden", type=_cli.positive_int, default=192,
                        help="hidden size of the cell")
    parser.add_argument("--embed-dim", type=_cli.positive_int, default=32,
                        help="character embedding width; lru, rg_lru and s6 read a "
                             "hidden-wide embedding instead")
    parser.add_argument("--steps", type=_cli.positive_int, default=1500,
                        help="training steps (minibatches)")
    parser.add_argument("--seq-len", type=_cli.int_at_least(2), default=64,
                        help="characters per training window")
    parser.add_argument("--batch-size", type=_cli.positive_int, default=32,
                        help="windows per training step")
    parser.add_argument("--lr", type=_cli.positive_float, default=3e-3,
                        help="Adam learning rate (gradients clipped at global norm 1)")
    parser.add_argument("--prompt", default="The if statement",
                        help="text the sample continues")
    parser.add_argument("--text-file", default=None,
                        help="UTF-8 text to train on instead of Python's pydoc topics")
    parser.add_argument("--sample-steps", type=_cli.positive_int, default=300,
                        help="characters to generate after the prompt")
    parser.add_argument("--temperature", type=_cli.nonnegative_float, default=0.7,
                        help="sampling temperature (0: always the most likely character)")
    parser.add_argument("--seed", type=_cli.nonnegative_int, default=0,
                        help="PRNG seed (initialisation, data split and order, sampling)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="do not draw the training progress bar")
    args = parser.parse_args(argv)
    try:
        block_pattern(args.cell) if args.blocks_ is None else block_pattern(args.blocks_ + ",")
    except ValueError as error:
        parser.error(str(error))
    metrics = run(**vars(args))
    print(f"sample (temperature {args.temperature}):\n{metrics['sample']}\n")
    print(f"char LM [{metrics['model']}, width {args.hidden}, embedding {metrics['embed_dim']}] held-out "
          f"{metrics['bits_per_char']:.3f} bits/char   unigram baseline "
          f"{metrics['baseline']:.3f} bits/char "
          f"({metrics['n_train']} train / {metrics['n_test']} test characters)")
    return metrics


if __name__ == "__main__":
    main()
