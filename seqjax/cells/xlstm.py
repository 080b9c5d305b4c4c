"""xLSTM's cells (Beck et al. 2024, arXiv:2405.04517): the sLSTM, with scalar memory,
exponential gating and per-head recurrent mixing, and the mLSTM, with a matrix memory
and a chunkwise-parallel form."""

from __future__ import annotations

# -- sLSTM (modern cells I): imports, params, state and constructor

# -- mLSTM (matrix-state cells): imports, params, state and constructor
