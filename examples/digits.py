"""Sequential digits: classify 8x8 handwritten digits read as a sequence (many-to-one).

scikit-learn ships 1,797 8x8 digit images (``sklearn.datasets.load_digits``, no
download). Each image is read by a recurrent cell either row by row (8 steps of 8
pixels) or pixel by pixel (64 steps of 1 pixel, a harder memory task), and the
output at the last step goes through a dense layer to 10 classes.

Run::

    python -m examples.digits                      # both readings, GRU
    python -m examples.digits --mode pixels --cell lstm --steps 3000

The test accuracy is printed beside the majority-class baseline (always predicting
the most frequent training label).
"""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

# Run as a file (python examples/digits.py), the checkout's root is not on the
# path, so `examples` would not be importable: put it first.
if not __package__:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from examples._common import CELLS, losses_of, minibatches, parser_for, require  # noqa: E402
from seqjax import _cli, losses, models, train  # noqa: E402

MODES = ("rows", "pixels")


def load(mode: str = "rows", *, test_size: float = 0.25, seed: int = 0):
    """Loads the bundled digits as sequences, with a fixed stratified split.

    Args:
      mode: ``"rows"`` (8 steps of 8 pixels) or ``"pixels"`` (64 steps of 1 pixel).
      test_size: fraction of the images held out.
      seed: seed of the split.

    Returns:
      ``(x_train, y_train, x_test, y_test)``: float32 ``[n, 8, 8]`` or ``[n, 64, 1]``
      images scaled to ``[0, 1]`` and int32 labels ``[n]``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # [n, 8, 8], pixel values 0..16
    xs = images if mode == "rows" else images.reshape(len(images), 64, 1)
    labels = digits.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(xs, labels, test_size=test_size,
                                              random_state=seed, stratify=labels)
    return x_tr, y_tr, x_te, y_te


def run(mode: str = "rows", *, cell: str = "gru", hidden: int = 64, steps: int = 1500,
        batch_size: int = 64, lr: float = 3e-3, seed: int = 0, progress: bool = True):
    """Trains a many-to-one classifier on one reading of the digits.

    Returns:
      A dict with ``accuracy`` and ``baseline`` (majority class of the training
      split) on the test split, and ``losses``, the training loss at every step.
    """
    x_tr, y_tr, x_te, y_te = load(mode, seed=seed)
    model = models.many_to_one(CELLS[cell](hidden), 10, input_size=x_tr.shape[-1])
    params = model.init(jax.random.PRNGKey(seed))

    def logits_fn(params, x):
        return jax.vmap(lambda xs: model.apply(params, xs))(x)

    def loss_fn(params, batch, rng):
        return losses.softmax_cross_entropy(logits_fn(params, batch["x"]), batch["y"])

    state, history = train.fit(loss_fn, train.default_optimizer(lr), params,
                               minibatches({"x": x_tr, "y": y_tr}, batch_size, seed),
                               steps=steps, seed=seed, progress=progress)
    predicted = np.asarray(jnp.argmax(jax.jit(logits_fn)(state.params, x_te), axis=-1))
    majority = np.bincount(y_tr).argmax()
    return {
        "accuracy": float(np.mean(predicted == y_te)),
        "baseline": float(np.mean(y_te == majority)),
        "losses": losses_of(history),
    }


def main(argv=None):
    parser = parser_for(__doc__, _cli.ArgumentParser)
    parser.add_argument("--mode", choices=MODES + ("both",), default="both",
                        help="read each image by rows (8 steps of 8 pixels), by pixels "
                             "(64 steps of 1), or both in turn")
    parser.add_argument("--cell", choices=sorted(CELLS), default="gru",
                        help="recurrent cell (seqjax constructor of that name)")
    parser.add_argument("--hidden", type=_cli.positive_int, default=64,
                        help="hidden size of the cell")
    parser.add_argument("--steps", type=_cli.positive_int, default=1500,
                        help="training steps (minibatches)")
    parser.add_argument("--batch-size", type=_cli.positive_int, default=64,
                        help="images per training step")
    parser.add_argument("--lr", type=_cli.positive_float, default=3e-3,
                        help="Adam learning rate (gradients clipped at global norm 1)")
    parser.add_argument("--seed", type=_cli.nonnegative_int, default=0,
                        help="PRNG seed (initialisation, data split and order, sampling)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="do not draw the training progress bar")
    args = parser.parse_args(argv)
    require("examples/digits.py", "sklearn")
    modes = MODES if args.mode == "both" else (args.mode,)
    results = {}
    for mode in modes:
        metrics = run(mode, cell=args.cell, hidden=args.hidden, steps=args.steps,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      progress=args.progress)
        results[mode] = metrics
        print(f"digits [{mode}, {args.cell}] test accuracy {metrics['accuracy']:.3f}   "
              f"majority-class baseline {metrics['baseline']:.3f}")
    return results


if __name__ == "__main__":
    main()
