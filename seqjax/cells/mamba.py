"""Mamba's state-space cells: the selective SSM S6 (Gu & Dao 2023, arXiv:2312.00752) and
Mamba-2's SSD core (Dao & Gu 2024, arXiv:2405.21060)."""

from __future__ import annotations

# -- S6 (modern cells I): imports, params, state and constructor

# -- Mamba-2 (matrix-state cells): imports, params, state and constructor
