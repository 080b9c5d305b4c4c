"""What is benchmarked: the cells, their closed-form FLOP and parameter counts, the grids.

FLOP convention (forward pass, per example and time step; ``I`` input size, ``H``
hidden size, ``N`` LRU state size). A multiply-add in a matmul counts 2 FLOPs; every
elementwise operation (add, multiply, divide, ``sigmoid``, ``tanh``, ``1 - z``) counts 1.
The input projection is counted for every step whether or not the unroll hoists it.

=========  ===========================  =================================================
cell       matmul                       elementwise
=========  ===========================  =================================================
rnn        2 H (I + H)                  3H   (bias, recurrent add, tanh)
lstm       2 (I + H) 4H                 17H  (bias 4H, add 4H, 3 sigmoid + 2 tanh, c 3H, h H)
gru        2 (I + H) 3H                 15H  (reset after: bias 3H, add 2H, 2 sigmoid,
                                              +b_hn, r*, add, tanh, update 4H)
gru_rb     2 (I + H) 3H                 14H  (reset before: as gru without the b_hn add)
mgu        2 (I + H) 2H                 12H
min_gru    2 I 2H                       7H   (bias 2H, sigmoid, 1-z, z*h~, a*h+b 2H)
min_lstm   2 I 3H                       11H  (bias 3H, 2 sigmoid, f+i, 2 divides, i'*h~,
                                              a*h+b 2H)
lru        4 N (I + H)                  10N + 3H (gamma 2N, complex a*h+b 8N, readout 3H)
=========  ===========================  =================================================

A layer's forward cost is ``B * T * (matmul + elementwise)``; a stack sums its layers
(layer ``l > 0`` reads ``H`` features). Forward + backward is counted as 3x the
forward (the backward of ``x @ W`` is two matmuls of the same size, one for ``dx`` and
one for ``dW``; elementwise backward is about twice its forward). The linear cells'
associative scan does up to about twice the sequential recurrence's work; the formula
counts the sequential recurrence (the algorithm's minimal work), so GFLOP/s is
comparable across strategies.

Parameter counts (one layer): seqjax and Flax/Haiku/Keras use one bias, PyTorch two.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Optional

import jax.numpy as jnp

import seqjax


@dataclasses.dataclass(frozen=True)
class Base:
    """One kind of layer: how to build it and its closed-form counts."""

    name: str
    make: Callable[..., seqjax.Cell]  # (H, N, param_dtype) -> Cell
    matmul: Callable[[int, int, int], int]  # (I, H, N) -> matmul FLOPs per example-step
    elementwise: Callable[[int, int, int], int]  # (I, H, N) -> elementwise FLOPs
    params: Callable[[int, int, int], int]  # (I, H, N) -> parameter count
    params_text: str
    torch_params: Optional[Callable[[int, int], int]] = None  # (I, H) -> PyTorch count
    torch_text: str = ""
    torch_module: str = ""  # nn.RNN / nn.LSTM / nn.GRU
    option: str = ""  # "hoist" or "associative": the unroll option that matters
    fusable: bool = False  # has seqjax's fused backward (fused=True/False both exist)


BASES = {
    "rnn": Base(
        "rnn", lambda H, N, dt: seqjax.rnn(H, param_dtype=dt),
        lambda I, H, N: 2 * H * (I + H), lambda I, H, N: 3 * H,
        lambda I, H, N: H * (I + H) + H, "H(I+H)+H",
        lambda I, H: H * (I + H) + 2 * H, "H(I+H)+2H", "RNN", "hoist", True),
    "lstm": Base(
        "lstm", lambda H, N, dt: seqjax.lstm(H, param_dtype=dt),
        lambda I, H, N: 2 * (I + H) * 4 * H, lambda I, H, N: 17 * H,
        lambda I, H, N: 4 * H * (I + H) + 4 * H, "4H(I+H)+4H",
        lambda I, H: 4 * H * (I + H) + 8 * H, "4H(I+H)+8H", "LSTM", "hoist", True),
    "gru": Base(
        "gru", lambda H, N, dt: seqjax.gru(H, reset_after=True, param_dtype=dt),
        lambda I, H, N: 2 * (I + H) * 3 * H, lambda I, H, N: 15 * H,
        lambda I, H, N: 3 * H * (I + H) + 4 * H, "3H(I+H)+3H+H (b_hn)",
        lambda I, H: 3 * H * (I + H) + 6 * H, "3H(I+H)+6H", "GRU", "hoist", True),
    "gru_rb": Base(
        "gru_rb", lambda H, N, dt: seqjax.gru(H, reset_after=False, param_dtype=dt),
        lambda I, H, N: 2 * (I + H) * 3 * H, lambda I, H, N: 14 * H,
        lambda I, H, N: 3 * H * (I + H) + 3 * H, "3H(I+H)+3H", option="hoist"),
    "mgu": Base(
        "mgu", lambda H, N, dt: seqjax.mgu(H, param_dtype=dt),
        lambda I, H, N: 2 * (I + H) * 2 * H, lambda I, H, N: 12 * H,
        lambda I, H, N: 2 * H * (I + H) + 2 * H, "2H(I+H)+2H", option="hoist"),
    "min_gru": Base(
        "min_gru", lambda H, N, dt: seqjax.min_gru(H, param_dtype=dt),
        lambda I, H, N: 2 * I * 2 * H, lambda I, H, N: 7 * H,
        lambda I, H, N: 2 * H * I + 2 * H, "2HI+2H", option="associative"),
    "min_lstm": Base(
        "min_lstm", lambda H, N, dt: seqjax.min_lstm(H, param_dtype=dt),
        lambda I, H, N: 2 * I * 3 * H, lambda I, H, N: 11 * H,
        lambda I, H, N: 3 * H * I + 3 * H, "3HI+3H", option="associative"),
    "lru": Base(
        "lru", lambda H, N, dt: seqjax.lru(H, N, param_dtype=dt),
        lambda I, H, N: 4 * N * (I + H), lambda I, H, N: 10 * N + 3 * H,
        lambda I, H, N: 2 * N * I + 2 * H * N + H + 3 * N, "2NI+2HN+H+3N",
        option="associative"),
    # -- modern cells I (sLSTM, RG-LRU, S6)
    # -- matrix-state cells (mLSTM, DeltaNet, Gated DeltaNet, Mamba-2)
}

DEFAULT_CELLS = ("rnn", "lstm", "gru", "gru_rb", "mgu", "min_gru", "min_lstm", "lru", "lstm_x2")

CELL_HELP = {
    "rnn": "Elman, tanh",
    "lstm": "LSTM (i, f, g, o)",
    "gru": "GRU, reset after (cuDNN/PyTorch/Flax form, b_hn)",
    "gru_rb": "GRU, reset before (Cho et al. 2014; Haiku's form)",
    "mgu": "minimal gated unit (paper form)",
    "min_gru": "minGRU (associative scan)",
    "min_lstm": "minLSTM (associative scan)",
    "lru": "linear recurrent unit, state N = H unless --lru-state",
    # -- modern cells I (sLSTM, RG-LRU, S6)
    # -- matrix-state cells (mLSTM, DeltaNet, Gated DeltaNet, Mamba-2)
}


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """A benchmarked model: one base kind, ``layers`` deep (``lstm_x2`` is 2 LSTMs)."""

    name: str
    base: Base
    layers: int

    def build(self, hidden: int, state: int, dtype) -> seqjax.Cell:
        parts = [self.base.make(hidden, state, dtype) for _ in range(self.layers)]
        return parts[0] if self.layers == 1 else seqjax.stack(*parts)

    def sizes(self, input_size: int, hidden: int):
        """``(I_l, H)`` per layer."""
        return [(input_size if l == 0 else hidden, hidden) for l in range(self.layers)]

    def flops(self, batch, length, input_size, hidden, state, backward=False) -> int:
        """Closed-form FLOPs of one call (see the module docstring)."""
        per_step = sum(self.base.matmul(i, h, state) + self.base.elementwise(i, h, state)
                       for i, h in self.sizes(input_size, hidden))
        return (3 if backward else 1) * batch * length * per_step

    def param_formula(self, input_size, hidden, state) -> int:
        return sum(self.base.params(i, h, state) for i, h in self.sizes(input_size, hidden))

    def torch_formula(self, input_size, hidden) -> Optional[int]:
        if self.base.torch_params is None:
            return None
        return sum(self.base.torch_params(i, h) for i, h in self.sizes(input_size, hidden))

    def formula_text(self) -> str:
        text = self.base.params_text
        return text if self.layers == 1 else f"{self.layers} layers of {text} (I=H from layer 2)"


def cell_spec(name: str) -> CellSpec:
    """Parses ``lstm``, ``gru_rb``, ``lstm_x2`` (a 2-layer stack), ..."""
    match = re.fullmatch(r"(.+?)(?:_x(\d+))?", name)
    base, layers = match.group(1), int(match.group(2) or 1)
    if base not in BASES or layers < 1:
        raise ValueError(f"unknown cell {name!r}; choose from {', '.join(BASES)}, optionally "
                         "with _xL for an L-layer stack (e.g. lstm_x2)")
    return CellSpec(name, BASES[base], layers)


# ----------------------------------------------------------------------------- grids


@dataclasses.dataclass(frozen=True)
class GridPart:
    """A cartesian product of cells x batch x length x hidden x dtype."""

    cells: tuple
    batch: tuple
    length: tuple
    hidden: tuple
    dtypes: tuple = ("float32",)
    note: str = ""


SCAN_CELLS = ("min_gru", "min_lstm", "lru")

TARGETS = (
    GridPart(("lstm", "gru"), (64,), (256,), (256,), ("float32",), "CPU target"),
    GridPart(("lstm", "gru"), (16,), (512,), (128,), ("float32",), "CPU target"),
    GridPart(("lstm", "gru"), (1,), (1024,), (64,), ("float32",), "CPU target"),
)

GRIDS = {
    "tiny": dict(parts=(GridPart(DEFAULT_CELLS, (2,), (8,), (8,)),), warmup=1, repeats=2),
    # about 2 minutes on 2 CPU cores, compilation included
    "quick": dict(parts=(GridPart(DEFAULT_CELLS, (16,), (64, 256), (64, 128)),),
                  warmup=1, repeats=5),
    "full": dict(
        parts=(
            GridPart(DEFAULT_CELLS, (16, 64), (128, 512, 1024), (128, 256),
                     ("float32", "bfloat16"), "general sweep"),
            GridPart(("lstm", "gru", "lstm_x2"), (16,), (1024,), (768,),
                     ("float32", "bfloat16"), "FlashRNN (Poeppel et al. 2024) H100 point"),
            GridPart(("lstm", "gru", "min_gru", "min_lstm"), (64,), (512, 4096), (128,),
                     ("float32",), "minGRU paper (Feng et al. 2024) lengths"),
            GridPart(SCAN_CELLS, (16,), (16384,), (128,), ("float32",), "long sequences"),
            *TARGETS,
        ),
        warmup=3, repeats=20),
    # the CPU comparison points of the README's performance table
    "targets": dict(parts=TARGETS, warmup=2, repeats=10),
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmarked shape: a cell at ``[B, T, I] -> [B, T, H]`` in ``dtype``."""

    cell: str
    batch: int
    length: int
    hidden: int
    input_size: int
    state: int  # LRU state size N (equals hidden for other cells; unused there)
    dtype: str
    note: str = ""


def expand(grid: str, *, cells=None, batch=None, length=None, hidden=None, dtypes=None,
           input_size=None, lru_state=None):
    """The cases of ``grid``, each given axis (a tuple) replacing the grid's own."""
    cases, seen = [], set()
    for part in GRIDS[grid]["parts"]:
        for c in cells or part.cells:
            spec = cell_spec(c)
            for dt in dtypes or part.dtypes:
                if dt not in DTYPES:
                    raise ValueError(f"unknown dtype {dt!r}; choose from {', '.join(DTYPES)}")
                for h in hidden or part.hidden:
                    for t in length or part.length:
                        for b in batch or part.batch:
                            i = input_size or h
                            n = lru_state or h
                            key = (spec.name, b, t, h, i, n, dt)
                            if key not in seen:
                                seen.add(key)
                                cases.append(Case(spec.name, b, t, h, i, n, dt, part.note))
    return cases
