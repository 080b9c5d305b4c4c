"""The published blocks of recurrent and hybrid language models, each a cell.

One module per family, named after the paper: :mod:`~seqjax.blocks.mamba` (Mamba,
Mamba-2), :mod:`~seqjax.blocks.griffin` (Griffin's recurrent and local-attention
blocks), :mod:`~seqjax.blocks.xlstm` (mLSTM and sLSTM blocks),
:mod:`~seqjax.blocks.delta` (DeltaNet, Gated DeltaNet), :mod:`~seqjax.blocks.attention`
(the Transformer block), and :func:`residual`, the pre-norm residual wrapper they
share. Every block maps ``D`` features to ``D`` features, keeps its state (convolution
history, recurrent state, KV cache) as a cell does, and has a whole-sequence form, so
:func:`seqjax.unroll` trains it in parallel and ``apply`` decodes it a token at a time.

:func:`block` builds one by name (what ``seqjax.lm.language_model(blocks=[...])``
reads); any cell constructor of :mod:`seqjax` is also a name (``"lstm"``: a residual
block around ``seqjax.lstm(D)``).
"""

from __future__ import annotations

import importlib
import inspect

from seqjax.blocks.residual import ResidualParams
from seqjax.blocks.residual import residual
from seqjax.cells.contract import Cell

# name -> (module, constructor): each constructor takes d_model first and keyword
# options (max_length, param_dtype, ...); imported when first used
BLOCKS = {
    "attention": ("seqjax.blocks.attention", "attention_block"),
    "mamba": ("seqjax.blocks.mamba", "mamba_block"),
    "mamba2": ("seqjax.blocks.mamba", "mamba2_block"),
    "griffin": ("seqjax.blocks.griffin", "griffin_block"),
    "local_attention": ("seqjax.blocks.griffin", "local_attention_block"),
    "mlstm": ("seqjax.blocks.xlstm", "mlstm_block"),
    "slstm": ("seqjax.blocks.xlstm", "slstm_block"),
    "deltanet": ("seqjax.blocks.delta", "deltanet_block"),
    "gated_deltanet": ("seqjax.blocks.delta", "gated_deltanet_block"),
}

# the seqjax cells a name may also refer to (wrapped in residual(cell(D)))
CELLS = ("rnn", "lstm", "gru", "mgu", "min_gru", "min_lstm", "lru", "rg_lru", "s6", "slstm",
         "mlstm", "delta_net", "gated_delta_net", "mamba2")


def names() -> tuple:
    """Every name :func:`block` accepts."""
    return tuple(BLOCKS) + tuple(c for c in CELLS if c not in BLOCKS)


def block(name: str, d_model: int, **options) -> Cell:
    """The block called ``name`` at width ``d_model``.

    Args:
      name: a key of :data:`BLOCKS` (a published block with its paper's defaults), or
        a seqjax cell (``"lstm"``, ``"delta_net"``, ...: a pre-norm residual block
        around the cell, without an MLP).
      d_model: ``D``.
      **options: passed to the block's constructor where it takes them (e.g.
        ``max_length`` for attention, ``param_dtype`` for all); options a constructor
        does not take are ignored, so one set serves a hybrid.

    Returns:
      A :class:`~seqjax.Cell` from ``D`` to ``D`` features.
    """
    if name in BLOCKS:
        module, attr = BLOCKS[name]
        build = getattr(importlib.import_module(module), attr)
        accepted = inspect.signature(getattr(build, "__wrapped__", build)).parameters
    elif name in CELLS:
        cell_fn = getattr(importlib.import_module("seqjax.cells"), name)

        def build(d_model, **kw):
            sizes = (d_model, d_model) if name == "lru" else (d_model,)  # lru(H, N): N = H
            return residual(cell_fn(*sizes, **kw))

        accepted = inspect.signature(getattr(cell_fn, "__wrapped__", cell_fn)).parameters
    else:
        raise ValueError(f"unknown block {name!r}; choose from {', '.join(names())}")
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        options = {k: v for k, v in options.items() if k in accepted}
    return build(d_model, **options)


__all__ = ["BLOCKS", "ResidualParams", "block", "names", "residual"]
