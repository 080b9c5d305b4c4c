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
    option: str = ""  # "hoist", "associative" or "chunkwise": the unroll option that matters
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
    # Counts below use the constructors' defaults: sLSTM 4 heads (xlstm's), RG-LRU 1 head,
    # S6 N = 16 and R = ceil(H / 16) = -(-H // 16) (Mamba's).
    # sLSTM: input matmul 2 I 4H, per-head recurrent matmul
    # 2 H 4H / heads (the fused backward multiplies by the dense [H, 4H] matrix; the count
    # is the block-diagonal product); elementwise 25H: bias 4H, u + r 4H, log sigmoid,
    # log f + m, max, where (m 3H), two exp with their subtractions 4H, tanh, c 3H, n 2H,
    # sigmoid, h = o c / n 2H.
    "slstm": Base(
        "slstm", lambda H, N, dt: seqjax.slstm(H, param_dtype=dt),
        lambda I, H, N: 2 * I * 4 * H + 2 * H * 4 * H // 4,
        lambda I, H, N: 25 * H,
        lambda I, H, N: 4 * H * I + 4 * H * H // 4 + 4 * H,
        "4HI+4H^2/heads+4H (4 heads)", option="hoist", fusable=True),
    # RG-LRU, 1 head (dense gates; I = H): two gate matmuls 2 * 2 I H / heads;
    # elementwise 17H: 2 biases, 2 sigmoids, softplus(-Lambda) 2H, c r softplus 2H,
    # exp(log a), exp(2 log a) 2H, 1 - a^2, sqrt, i x, scale * (i x), a h + b 2H.
    "rg_lru": Base(
        "rg_lru", lambda H, N, dt: seqjax.rg_lru(H, param_dtype=dt),
        lambda I, H, N: 2 * 2 * I * H, lambda I, H, N: 17 * H,
        lambda I, H, N: 2 * I * H + 3 * H, "2H^2/heads+3H (1 head)",
        option="associative"),
    # S6 with Mamba's N = 16 per channel (the bench's N, --lru-state, is not used) and
    # R = ceil(H / 16): Delta's low-rank projection 2HR + 2RH, B and C 2 * 2HN, readout
    # h C 2HN; elementwise 5HN + 5H: Delta A, exp, (Delta x) B, a h + b 2HN; b_Delta,
    # softplus, Delta x, D x, + D x.
    "s6": Base(
        "s6", lambda H, N, dt: seqjax.s6(H, param_dtype=dt),
        lambda I, H, N: 4 * H * -(-H // 16) + 6 * H * 16,
        lambda I, H, N: 5 * H * 16 + 5 * H,
        lambda I, H, N: 3 * H * 16 + 2 * H * -(-H // 16) + 2 * H,
        "3HN+2HR+2H (N=16, R=ceil(H/16))", option="associative"),
    # -- matrix-state cells (mLSTM, DeltaNet, Gated DeltaNet, Mamba-2)
    # The constructors' defaults: h = max(1, H // 64) heads of d = H / h channels (d_k =
    # d_v = d, so h d^2 = H^2 / h and h d = H); Mamba-2 with N = 64 (its own state size;
    # --lru-state is not used). Counted per step of the sequential recurrence (the
    # chunkwise form does more: the masked [L, L] products inside each chunk).
    # mLSTM: projections q, k, v, o 4 * 2IH, gates 2 * 2Ih; reads C^T q, n^T q 2H^2/h + 2H.
    # Elementwise 4H^2/h + 16H + 10h: C update (f C, i k v^T, the outer product, add),
    # n 4H, gates ~10 per head, q scale H, head norm 7H, output gate 4H.
    "mlstm": Base(
        "mlstm", lambda H, N, dt: seqjax.mlstm(H, param_dtype=dt),
        lambda I, H, N: (8 * I * H + 4 * I * max(1, H // 64) + 2 * H * H // max(1, H // 64)
                         + 2 * H),
        lambda I, H, N: 4 * H * H // max(1, H // 64) + 16 * H + 10 * max(1, H // 64),
        lambda I, H, N: 4 * I * H + 2 * I * max(1, H // 64) + 2 * max(1, H // 64) + 2 * H,
        "4IH+2Ih+2h+2H (h=max(1,H//64) heads)", option="chunkwise"),
    # DeltaNet: projections q, k, v, g 4 * 2IH, beta 2Ih; S^T k and S^T q 2 * 2H^2/h.
    # Elementwise 2H^2/h + 19H + h: outer product and add, v - S^T k and beta 2H, silu
    # 3H, two L2 norms 6H, q scale H, RMSNorm 5H, silu gate 2H, beta's sigmoid.
    "delta_net": Base(
        "delta_net", lambda H, N, dt: seqjax.delta_net(H, param_dtype=dt),
        lambda I, H, N: 8 * I * H + 2 * I * max(1, H // 64) + 4 * H * H // max(1, H // 64),
        lambda I, H, N: 2 * H * H // max(1, H // 64) + 19 * H + max(1, H // 64),
        lambda I, H, N: 4 * I * H + I * max(1, H // 64) + H // max(1, H // 64),
        "4IH+Ih+H/h (h=max(1,H//64) heads)", option="chunkwise"),
    # Gated DeltaNet: DeltaNet plus alpha: 2Ih matmul; alpha S H^2/h and the gate (bias,
    # softplus, exp(a_log), product, exp) 5 per head.
    "gated_delta_net": Base(
        "gated_delta_net", lambda H, N, dt: seqjax.gated_delta_net(H, param_dtype=dt),
        lambda I, H, N: 8 * I * H + 4 * I * max(1, H // 64) + 4 * H * H // max(1, H // 64),
        lambda I, H, N: 3 * H * H // max(1, H // 64) + 19 * H + 6 * max(1, H // 64),
        lambda I, H, N: (4 * I * H + 2 * I * max(1, H // 64) + 2 * max(1, H // 64)
                         + H // max(1, H // 64)),
        "4IH+2Ih+2h+H/h (h=max(1,H//64) heads)", option="chunkwise"),
    # Mamba-2 (N = 64, P = H/h): projections x, z 2 * 2IH, B, C 2 * 2IN, Delta 2Ih; read
    # C^T S 2NH. Elementwise 3NH + 11H + 2N + 4h: decay, outer product, add 3NH; silu x,
    # B, C; softplus, Delta A, exp; Delta x; D x and add; silu z and product; RMSNorm.
    "mamba2": Base(
        "mamba2", lambda H, N, dt: seqjax.mamba2(H, param_dtype=dt),
        lambda I, H, N: 4 * I * H + 4 * I * 64 + 2 * I * max(1, H // 64) + 2 * 64 * H,
        lambda I, H, N: 3 * 64 * H + 11 * H + 2 * 64 + 4 * max(1, H // 64),
        lambda I, H, N: 2 * I * H + 2 * I * 64 + I * max(1, H // 64) + 3 * max(1, H // 64) + H,
        "2IH+2IN+Ih+3h+H (N=64, h=max(1,H//64) heads)", option="chunkwise"),
}

MATRIX_CELLS = ("mlstm", "delta_net", "gated_delta_net", "mamba2")

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
    "slstm": "sLSTM (xLSTM), 4 heads, fused backward",
    "rg_lru": "RG-LRU (Griffin), associative scan; input = hidden",
    "s6": "S6 (Mamba), state [H, 16], associative scan; input = hidden",
    # -- matrix-state cells (mLSTM, DeltaNet, Gated DeltaNet, Mamba-2)
    "mlstm": "mLSTM (xLSTM), heads of 64, chunkwise-parallel form",
    "delta_net": "DeltaNet, heads of 64, chunkwise-parallel form (WY / UT transform)",
    "gated_delta_net": "Gated DeltaNet, heads of 64, chunkwise-parallel form",
    "mamba2": "Mamba-2 SSD core, heads of 64, N = 64, chunkwise-parallel form",
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
    # about 4.5 minutes on 2 idle CPU cores, compilation included (266 s, 2026-12-07)
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
    # the matrix-state cells' sweep (issue 12): run with --chunkwise both to time the
    # chunkwise form beside the plain scan over apply
    "matrix": dict(parts=(GridPart(MATRIX_CELLS, (8,), (512, 1024, 2048, 4096, 8192), (64,),
                                   ("float32",), "matrix-state cells, T = 512 ... 8192"),),
                   warmup=1, repeats=5),
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
