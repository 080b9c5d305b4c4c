"""Recurrent cells as bundles of pure functions, one module per family.

* :mod:`seqjax.cells.contract` -- what a cell is (:class:`Cell`) and the forms it may
  state about itself (:class:`Hoist`, :class:`Recurrent`, :class:`LinearRecurrence`).
* :mod:`seqjax.cells.classic` -- Elman, LSTM, GRU (both forms), MGU.
* :mod:`seqjax.cells.minimal` -- minGRU and minLSTM (Feng et al. 2024).
* :mod:`seqjax.cells.diagonal` -- the LRU (Orvieto et al. 2023).
* :mod:`seqjax.cells.xlstm` (mLSTM), :mod:`seqjax.cells.delta` (DeltaNet, Gated
  DeltaNet), :mod:`seqjax.cells.mamba` (Mamba-2) -- matrix-state cells with a
  chunkwise-parallel form (:class:`Chunkwise`, :mod:`seqjax.chunkwise`).

Every name is re-exported from :mod:`seqjax`.
"""

from seqjax.cells.contract import Cell
from seqjax.cells.contract import Hoist
from seqjax.cells.contract import Layers
from seqjax.cells.contract import LinearRecurrence
from seqjax.cells.contract import Recurrent
from seqjax.cells.contract import SequenceModel
from seqjax.cells._constructor import constructor
from seqjax.cells.classic import GRUParams
from seqjax.cells.classic import LSTMParams
from seqjax.cells.classic import LSTMState
from seqjax.cells.classic import RNNParams
from seqjax.cells.classic import ChronoInit
from seqjax.cells.classic import chrono_init
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
from seqjax.cells.xlstm import SLSTMParams
from seqjax.cells.xlstm import SLSTMState
from seqjax.cells.xlstm import slstm
from seqjax.cells.diagonal import RGLRUParams
from seqjax.cells.diagonal import rg_lru
from seqjax.cells.mamba import S6Params
from seqjax.cells.mamba import s6
# -- matrix-state cells (mLSTM, DeltaNet, Gated DeltaNet, Mamba-2)
from seqjax.cells.contract import Chunkwise
from seqjax.cells.xlstm import MLSTMParams
from seqjax.cells.xlstm import MLSTMState
from seqjax.cells.xlstm import mlstm
from seqjax.cells.delta import DeltaNetParams
from seqjax.cells.delta import GatedDeltaNetParams
from seqjax.cells.delta import delta_net
from seqjax.cells.delta import gated_delta_net
from seqjax.cells.mamba import Mamba2Params
from seqjax.cells.mamba import mamba2
