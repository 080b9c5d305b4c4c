"""seqjax: functional recurrent sequence models in JAX.

Cells are NamedTuples of pure functions (``init``, ``initial_state``, ``apply``);
:func:`unroll` runs them over sequences with ``lax.scan``, an associative scan or a
chunkwise-parallel form.

``import seqjax`` needs only the core dependencies (jax, numpy, optax). The modules
that need more are imported on their own and name the extra they need when it is
missing: :mod:`seqjax.flax` (``flax``), :mod:`seqjax.interop.torch` (``torch``), the
``seqjax bench`` and ``seqjax gradnorm`` commands (``plots``).
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
from seqjax.cells import chrono_init
from seqjax.cells import gru
from seqjax.cells import lru
from seqjax.cells import lstm
from seqjax.cells import mgu
from seqjax.cells import min_gru
from seqjax.cells import min_lstm
from seqjax.cells import rnn
# -- modern cells I (sLSTM, RG-LRU, S6)
from seqjax.cells import RGLRUParams
from seqjax.cells import S6Params
from seqjax.cells import SLSTMParams
from seqjax.cells import SLSTMState
from seqjax.cells import rg_lru
from seqjax.cells import s6
from seqjax.cells import slstm
# -- matrix-state cells (mLSTM, DeltaNet, Gated DeltaNet, Mamba-2)
from seqjax.cells import Chunkwise
from seqjax.cells import DeltaNetParams
from seqjax.cells import GatedDeltaNetParams
from seqjax.cells import MLSTMParams
from seqjax.cells import MLSTMState
from seqjax.cells import Mamba2Params
from seqjax.cells import delta_net
from seqjax.cells import gated_delta_net
from seqjax.cells import mamba2
from seqjax.cells import mlstm
from seqjax.chunkwise import default_chunk_size
from seqjax.compose import BidirectionalParams
from seqjax.compose import add
from seqjax.compose import bidirectional
from seqjax.compose import concat
from seqjax.compose import mean
from seqjax.compose import multiply
from seqjax.compose import stack
from seqjax.unroll import default_associative
from seqjax.unroll import default_fused
from seqjax.unroll import default_hoist
from seqjax.unroll import default_pallas
from seqjax.unroll import dropout
from seqjax.unroll import unroll
from seqjax.unroll import unroll_batch

# submodules with their own namespaces: seqjax.models.many_to_one, seqjax.train.fit, ...
from seqjax import blocks
from seqjax import checkpoint
from seqjax import chunkwise
from seqjax import diagnostics
from seqjax import experiments
from seqjax import layers
from seqjax import lm
from seqjax import losses
from seqjax import models
from seqjax import tasks
from seqjax import train

# the single source of the version: pyproject.toml reads it (tool.setuptools.dynamic)
__version__ = "0.2.0"

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
    "blocks",
    "chrono_init",
    "checkpoint",
    "concat",
    "default_associative",
    "default_fused",
    "default_hoist",
    "default_pallas",
    "diagnostics",
    "experiments",
    "dropout",
    "gru",
    "layers",
    "lm",
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
    "RGLRUParams",
    "S6Params",
    "SLSTMParams",
    "SLSTMState",
    "rg_lru",
    "s6",
    "slstm",
    # -- matrix-state cells (mLSTM, DeltaNet, Gated DeltaNet, Mamba-2)
    "Chunkwise",
    "DeltaNetParams",
    "GatedDeltaNetParams",
    "MLSTMParams",
    "MLSTMState",
    "Mamba2Params",
    "chunkwise",
    "default_chunk_size",
    "delta_net",
    "gated_delta_net",
    "mamba2",
    "mlstm",
    "stack",
    "tasks",
    "train",
    "unroll",
    "unroll_batch",
)
