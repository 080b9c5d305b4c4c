"""Forecasting yearly sunspot numbers one year ahead (many-to-one regression).

The series is statsmodels' bundled ``sunspots`` data set (yearly mean sunspot
activity, 1700-2008, 309 values; no download). A window of the last ``window``
years is read by a recurrent cell and a dense layer predicts the next year.

The split is chronological: the first ``train_fraction`` of the years are for
training, the forecasts of the later years are the test set (their input windows
may reach back into the training years, as a real forecast would). Values are
normalised with the mean and standard deviation of the training years only.
The test MSE is reported in the original units (sunspot number squared) beside the
persistence forecast, which predicts that next year equals this year.

Run::

    python -m examples.forecast
    python -m examples.forecast --cell lstm --window 12 --steps 2000
"""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np

# Run as a file (python examples/forecast.py), the checkout's root is not on the
# path, so `examples` would not be importable: put it first.
if not __package__:
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from examples._common import CELLS, losses_of, minibatches, parser_for, require  # noqa: E402
from seqjax import _cli, losses, models, train  # noqa: E402


def load_series():
    """The bundled yearly sunspot series.

    Returns:
      ``(years, values)``: int ``[309]`` years 1700..2008 and float32 ``[309]`` values.
    """
    import statsmodels.api as sm

    frame = sm.datasets.sunspots.load_pandas().data
    years = frame["YEAR"].to_numpy().astype(np.int64)
    return years, frame["SUNACTIVITY"].to_numpy().astype(np.float32)


def make_windows(values, window: int, train_fraction: float = 0.8):
    """Cuts a series into (window -> next value) pairs with a chronological split.

    Args:
      values: ``[n]`` series in original units.
      window: number of past values each forecast reads.
      train_fraction: fraction of the series (in time) whose values may be targets
        of training pairs.

    Returns:
      A dict with normalised ``x_train [m, window, 1]``, ``y_train [m]``,
      ``x_test [k, window, 1]``, ``y_test [k]`` (float32), the normalisation
      ``mean`` and ``std`` (training values only), ``split``, the index of the
      first test target in ``values``, and ``t_test [k]``, the index in ``values``
      of every test target.
    """
    values = np.asarray(values, np.float32)
    split = int(len(values) * train_fraction)
    if not window < split < len(values):
        raise ValueError(f"need window < split < len(values), got window={window}, "
                         f"split={split}, len={len(values)}")
    mean, std = values[:split].mean(), values[:split].std()
    z = (values - mean) / std
    targets = np.arange(window, len(values))
    xs = np.stack([z[t - window:t] for t in targets])[..., None]
    ys = z[targets]
    train_part = targets < split
    return {
        "x_train": xs[train_part], "y_train": ys[train_part],
        "x_test": xs[~train_part], "y_test": ys[~train_part],
        "mean": np.float32(mean), "std": np.float32(std), "split": split,
        "t_test": targets[~train_part],
    }


def run(*, cell: str = "gru", hidden: int = 32, window: int = 20, steps: int = 1500,
        batch_size: int = 32, lr: float = 3e-3, seed: int = 0, progress: bool = True):
    """Trains the forecaster and scores it against persistence on the test years.

    Returns:
      A dict with ``mse`` (model) and ``baseline`` (persistence) on the test
      targets in original units, ``test_years`` and ``losses`` (training loss per
      step, normalised units).
    """
    years, values = load_series()
    data = make_windows(values, window)
    model = models.many_to_one(CELLS[cell](hidden), 1, input_size=1)
    params = model.init(jax.random.PRNGKey(seed))

    def predict(params, x):
        return jax.vmap(lambda xs: model.apply(params, xs))(x)[:, 0]

    def loss_fn(params, batch, rng):
        return losses.mse(predict(params, batch["x"]), batch["y"])

    state, history = train.fit(loss_fn, train.default_optimizer(lr), params,
                               minibatches({"x": data["x_train"], "y": data["y_train"]},
                                           batch_size, seed),
                               steps=steps, seed=seed, progress=progress)
    truth = values[data["t_test"]].astype(np.float64)
    persistence = values[data["t_test"] - 1].astype(np.float64)
    normalised = np.asarray(jax.jit(predict)(state.params, data["x_test"]), np.float64)
    forecast = normalised * data["std"] + data["mean"]
    return {
        "mse": float(np.mean((forecast - truth) ** 2)),
        "baseline": float(np.mean((persistence - truth) ** 2)),
        "test_years": (int(years[data["split"]]), int(years[-1])),
        "losses": losses_of(history),
    }


def main(argv=None):
    parser = parser_for(__doc__, _cli.ArgumentParser)
    parser.add_argument("--cell", choices=sorted(CELLS), default="gru",
                        help="recurrent cell (seqjax constructor of that name)")
    parser.add_argument("--hidden", type=_cli.positive_int, default=32,
                        help="hidden size of the cell")
    parser.add_argument("--window", type=_cli.positive_int, default=20,
                        help="years of history the model reads to forecast the next one")
    parser.add_argument("--steps", type=_cli.positive_int, default=1500,
                        help="training steps (minibatches)")
    parser.add_argument("--batch-size", type=_cli.positive_int, default=32,
                        help="windows per training step")
    parser.add_argument("--lr", type=_cli.positive_float, default=3e-3,
                        help="Adam learning rate (gradients clipped at global norm 1)")
    parser.add_argument("--seed", type=_cli.nonnegative_int, default=0,
                        help="PRNG seed (initialisation, data split and order, sampling)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="do not draw the training progress bar")
    args = parser.parse_args(argv)
    require("examples/forecast.py", "statsmodels")
    metrics = run(cell=args.cell, hidden=args.hidden, window=args.window, steps=args.steps,
                  batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  progress=args.progress)
    first, last = metrics["test_years"]
    print(f"sunspots [{args.cell}] test MSE {metrics['mse']:.1f} ({first}-{last}, original "
          f"units)   persistence baseline {metrics['baseline']:.1f}")
    return metrics


if __name__ == "__main__":
    main()
