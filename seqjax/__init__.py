"""seqjax: functional recurrent sequence models in JAX.

Cells are NamedTuples of pure functions (``init``, ``initial_state``, ``apply``);
:func:`unroll` runs them over sequences with ``lax.scan`` or an associative scan.
"""

from seqjax.cells import Cell
from seqjax.cells import GRUParams
from seqjax.cells import Hoist
from seqjax.cells import LinearRecurrence
from seqjax.cells import LRUParams
from seqjax.cells import LSTMParams
from seqjax.cells import LSTMState
from seqjax.cells import MinParams
from seqjax.cells import RNNParams
from seqjax.cells import Recurrent
from seqjax.cells import SequenceModel
from seqjax.cells import gru
from seqjax.cells import lru
from seqjax.cells import lstm
from seqjax.cells import mgu
from seqjax.cells import min_gru
from seqjax.cells import min_lstm
from seqjax.cells import rnn
# -- modern cells I (sLSTM, RG-LRU, S6)
# -- matrix-state cells (mLSTM, DeltaNet, Gated DeltaNet, Mamba-2)
from seqjax.compose import BidirectionalParams
from seqjax.compose import add
from seqjax.compose import bidirectional
from seqjax.compose import concat
from seqjax.compose import mean
from seqjax.compose import multiply
from seqjax.compose import stack
from seqjax.unroll import default_fused
from seqjax.unroll import default_hoist
from seqjax.unroll import dropout
from seqjax.unroll import unroll
from seqjax.unroll import unroll_batch

# submodules with their own namespaces: seqjax.models.many_to_one, seqjax.train.fit, ...
from seqjax import checkpoint
from seqjax import diagnostics
from seqjax import losses
from seqjax import models
from seqjax import tasks
from seqjax import train

__version__ = "0.1.0"

__all__ = (
    "BidirectionalParams",
    "Cell",
    "GRUParams",
    "Hoist",
    "LRUParams",
    "LSTMParams",
    "LSTMState",
    "LinearRecurrence",
    "MinParams",
    "RNNParams",
    "Recurrent",
    "SequenceModel",
    "add",
    "bidirectional",
    "checkpoint",
    "concat",
    "default_fused",
    "default_hoist",
    "diagnostics",
    "dropout",
    "gru",
    "losses",
    "lru",
    "lstm",
    "mean",
    "mgu",
    "min_gru",
    "min_lstm",
    "models",
    "multiply",
    "rnn",
    # -- modern cells I (sLSTM, RG-LRU, S6)
    # -- matrix-state cells (mLSTM, DeltaNet, Gated DeltaNet, Mamba-2)
    "stack",
    "tasks",
    "train",
    "unroll",
    "unroll_batch",
)
