"""Pieces shared by the examples: the cells they offer, a minibatch iterator and the
``--help`` layout."""

from __future__ import annotations

import argparse
import importlib
import itertools
import sys

import numpy as np

import seqjax

# what `pip install "seqjax[examples]"` installs, by import name
EXTRA = {"sklearn": "scikit-learn", "statsmodels": "statsmodels"}

CELLS = {
    "lstm": seqjax.lstm,
    "gru": seqjax.gru,
    "mgu": seqjax.mgu,
    "rnn": seqjax.rnn,
    "min_gru": seqjax.min_gru,
    "min_lstm": seqjax.min_lstm,
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
    """``--help`` shows each option's default after its description (on/off switches
    and options without a default say what they do instead) and keeps the
    description's line breaks."""

    def _get_help_string(self, action):
        if action.nargs == 0 or action.default is None:
            return action.help
        return super()._get_help_string(action)


def parser_for(doc: str, argument_parser):
    """The example's parser: its docstring's first paragraph above the options, the
    ``Run::`` lines below them."""
    head, _, rest = doc.partition("\n\n")
    run = rest.partition("Run::")[2].split("\n\n")[1] if "Run::" in rest else ""
    epilog = ("examples:\n" + run) if run.strip() else None
    return argument_parser(description=head.strip(), epilog=epilog,
                           formatter_class=HelpFormatter)


def minibatches(arrays: dict, batch_size: int, seed: int):
    """Endless shuffled minibatches: each epoch is a fresh permutation of the rows.

    Args:
      arrays: equal-length numpy arrays, e.g. ``{"x": [n, T, F], "y": [n]}``.
      batch_size: rows per batch (an epoch's last incomplete batch is dropped, so
        every batch has the same shape and the train step compiles once).
      seed: seed of the shuffling.

    Yields:
      Dicts with the same keys, each array ``[batch_size, ...]``.
    """
    sizes = {name: len(a) for name, a in arrays.items()}
    n = min(sizes.values())
    if len(set(sizes.values())) != 1:
        raise ValueError(f"minibatches: arrays must have equal lengths, got {sizes}")
    if not 0 < batch_size <= n:
        raise ValueError(f"minibatches: batch_size must lie in [1, {n}] (the number of "
                         f"rows), got {batch_size}")
    rng = np.random.default_rng(seed)
    for _ in itertools.count():
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            yield {name: a[idx] for name, a in arrays.items()}


def losses_of(history) -> list:
    """The training loss of every step from :func:`seqjax.train.fit`'s history."""
    return [entry["loss"] for entry in history]


def require(example: str, *modules: str) -> None:
    """Exits with status 1 and one line saying what to install when one of ``modules``
    (top-level import names of the ``examples`` extra) is not installed: no traceback.

    The examples import these packages inside the functions that use them, so that
    ``--help`` works without them; ``main`` calls this once its arguments are parsed.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if (error.name or "").split(".")[0] != module:  # a module *it* imports
                raise
            sys.exit(f"{example} needs {EXTRA.get(module, module)}, which is not "
                     f'installed: pip install "seqjax[examples]"')
