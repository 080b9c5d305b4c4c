"""Recurrent cells as bundles of pure functions, one module per family.

* :mod:`seqjax.cells.contract` -- what a cell is (:class:`Cell`) and the forms it may
  state about itself (:class:`Hoist`, :class:`Recurrent`, :class:`LinearRecurrence`).
* :mod:`seqjax.cells.classic` -- Elman, LSTM, GRU (both forms), MGU.
* :mod:`seqjax.cells.minimal` -- minGRU and minLSTM (Feng et al. 2024).
* :mod:`seqjax.cells.diagonal` -- the LRU (Orvieto et al. 2023).

Every name is re-exported from :mod:`seqjax`.
"""

from seqjax.cells.contract import Cell
from seqjax.cells.contract import Hoist
from seqjax.cells.contract import Layers
from seqjax.cells.contract import LinearRecurrence
from seqjax.cells.contract import Recurrent
from seqjax.cells.contract import SequenceModel
from seqjax.cells.contract import constructor
from seqjax.cells.classic import GRUParams
from seqjax.cells.classic import LSTMParams
from seqjax.cells.classic import LSTMState
from seqjax.cells.classic import RNNParams
from seqjax.cells.classic import gru
from seqjax.cells.classic import lstm
from seqjax.cells.classic import mgu
from seqjax.cells.classic import rnn
from seqjax.cells.minimal import MinParams
from seqjax.cells.minimal import min_gru
from seqjax.cells.minimal import min_lstm
from seqjax.cells.diagonal import LRUParams
from seqjax.cells.diagonal import lru
# -- modern cells I (sLSTM, RG-LRU, S6)
# -- matrix-state cells (mLSTM, DeltaNet, Gated DeltaNet, Mamba-2)
