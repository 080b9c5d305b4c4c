"""Layers as cells: the short causal convolution, norms, MLPs and softmax attention.

Each follows the cell contract (``init``, ``initial_state``, ``apply`` on one example
and one step) and states a whole-sequence form (``cell.parallel``) that
:func:`seqjax.unroll` runs, so that blocks built from them (:mod:`seqjax.blocks`)
unroll, stack, take lengths and step one token at a time like any cell.
"""

from seqjax.layers.attention import AttentionParams
from seqjax.layers.attention import KVCache
from seqjax.layers.attention import Rotary
from seqjax.layers.attention import WindowCache
from seqjax.layers.attention import attention
from seqjax.layers.attention import rotary
from seqjax.layers.conv import ConvParams
from seqjax.layers.conv import short_conv
from seqjax.layers.mlp import GatedMLPParams
from seqjax.layers.mlp import MLPParams
from seqjax.layers.mlp import gated_mlp
from seqjax.layers.mlp import gelu_tanh
from seqjax.layers.mlp import mlp
from seqjax.layers.norms import NormParams
from seqjax.layers.norms import layer_norm
from seqjax.layers.norms import rms_norm
from seqjax.layers._common import LinearParams

__all__ = [
    "AttentionParams",
    "ConvParams",
    "GatedMLPParams",
    "KVCache",
    "LinearParams",
    "MLPParams",
    "NormParams",
    "Rotary",
    "WindowCache",
    "attention",
    "gated_mlp",
    "gelu_tanh",
    "layer_norm",
    "mlp",
    "rms_norm",
    "rotary",
    "short_conv",
]
