"""Pallas kernels for the accelerator path.

* :func:`linear_scan` -- the diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t``
  with the time loop inside one kernel launch and a reverse-scan backward pass, for the
  cells with a :class:`~seqjax.LinearRecurrence` (min_gru, min_lstm, lru, ...).
* :func:`fused_recurrent` -- a gated cell's (rnn, lstm, gru, mgu) whole time loop in one
  launch with the recurrent weight loaded once, and its fused backward.

The kernels are written for Pallas' Triton lowering (GPU). On any other backend they
run in Pallas interpret mode: the same kernel body evaluated by XLA, slow, which is
what the CPU tests use. **Neither kernel has been compiled or timed on a real GPU
yet**: CI lowers them to Triton IR for CUDA (``tests/test_pallas.py``) but cannot
compile that IR; ``benchmarks/gpu.sh`` does, when a GPU is lent.

:func:`seqjax.unroll` selects them through its ``pallas`` option (see
:func:`seqjax.default_pallas`).
"""

from seqjax.kernels.pallas_recurrent import MAX_ON_CHIP_BYTES
from seqjax.kernels.pallas_recurrent import fused_recurrent
from seqjax.kernels.pallas_recurrent import fits_on_chip
from seqjax.kernels.pallas_scan import linear_scan

__all__ = ("MAX_ON_CHIP_BYTES", "fits_on_chip", "fused_recurrent", "linear_scan")
