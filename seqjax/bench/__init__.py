"""Benchmarks: seqjax cells against Flax, Equinox, Haiku, PyTorch and cuDNN.

``seqjax bench`` (or ``python -m seqjax.bench``) times every cell's forward and
forward+backward pass over a grid of batch, length, hidden size and dtype, next to the
peers that implement the same cell, in the same process and with the same shapes, and
writes ``bench.json``, ``bench.md`` and PNG plots. See ``seqjax bench --help``.

Public pieces: :func:`main` (the command), :func:`time_fn` (compile-then-time in
diffrax's discipline), :class:`Case`, :func:`cell_spec` (closed-form FLOP and parameter
counts per cell) and :func:`run_case`.
"""

from seqjax.bench.cells import Case
from seqjax.bench.cells import cell_spec
from seqjax.bench.harness import main
from seqjax.bench.harness import run_case
from seqjax.bench.timing import Timing
from seqjax.bench.timing import time_fn

__all__ = ("Case", "Timing", "cell_spec", "main", "run_case", "time_fn")
