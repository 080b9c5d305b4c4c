"""Reading and writing Hugging Face checkpoint directories: config.json and safetensors.

Only numpy and the ``safetensors`` package are used: neither torch nor transformers is
needed to load or save.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Dict, Iterable, Optional

import numpy as np


class HFError(ValueError):
    """A checkpoint directory that seqjax cannot load as it is, with the reason."""


def _safetensors():
    try:
        from safetensors import safe_open
        from safetensors.numpy import save_file
    except ImportError:  # pragma: no cover - the message is the point
        raise ImportError('seqjax.interop.hf needs safetensors: pip install "seqjax[hf]"') from None
    return safe_open, save_file


def _special_floats(value):
    """transformers writes inf/nan as ``{"__float__": "Infinity"}``; older files as a
    bare ``Infinity`` (which ``json`` reads as a float already)."""
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"].replace("Infinity", "inf").replace("NaN", "nan"))
        return {k: _special_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_special_floats(v) for v in value]
    return value


def read_config(path) -> dict:
    """``config.json`` of a ``save_pretrained`` directory, special floats decoded."""
    file = pathlib.Path(path) / "config.json"
    if not file.is_file():
        raise HFError(f"{path}: no config.json; expected a directory written by "
                      "transformers' save_pretrained (config.json and *.safetensors)")
    with open(file) as f:
        return _special_floats(json.load(f))


def _encode_floats(value):
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": "NaN" if math.isnan(value) else
                ("Infinity" if value > 0 else "-Infinity")}
    if isinstance(value, dict):
        return {k: _encode_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_floats(v) for v in value]
    return value


class Tensors:
    """The tensors of a checkpoint, read one at a time; every tensor must be read once.

    :meth:`take` returns a tensor by name as a numpy array after checking its shape;
    :meth:`finish` raises if the file holds tensors nothing read (an unsupported part
    of the model would otherwise be dropped silently).
    """

    def __init__(self, path):
        self.path = pathlib.Path(path)
        safe_open, _ = _safetensors()
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.path.glob("*.safetensors"))
            if not files:
                raise HFError(f"{path}: no *.safetensors file (only safetensors checkpoints "
                              "are read; convert .bin files with transformers first)")
            weight_map = None
        self._where: Dict[str, str] = {}
        self._handles = {}
        for name in files:
            handle = safe_open(str(self.path / name), framework="numpy")
            self._handles[name] = handle
            for key in handle.keys():
                self._where[key] = name
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(self._where))
            if missing:
                raise HFError(f"{path}: the index names tensors that are in no file: "
                              f"{missing[:5]}")
        self._used = set()

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def keys(self) -> Iterable[str]:
        return self._where.keys()

    def take(self, name: str, shape: Optional[tuple] = None) -> np.ndarray:
        """The tensor ``name``, checked to have ``shape`` (when given)."""
        if name not in self._where:
            raise HFError(f"{self.path}: the checkpoint has no tensor {name!r}"
                          + (f" (expected shape {tuple(shape)})" if shape is not None else ""))
        array = self._handles[self._where[name]].get_tensor(name)
        if shape is not None and tuple(array.shape) != tuple(shape):
            raise HFError(f"{self.path}: tensor {name!r} has shape {tuple(array.shape)}, "
                          f"expected {tuple(shape)} from config.json")
        self._used.add(name)
        return array

    def finish(self) -> None:
        """Raises if any tensor of the file was not read."""
        unused = sorted(set(self._where) - self._used)
        if unused:
            shown = ", ".join(unused[:8]) + (f", ... ({len(unused)} in all)" if len(unused) > 8
                                            else "")
            raise HFError(f"{self.path}: tensors the seqjax model has no place for: {shown}")


def write(path, config: dict, tensors: Dict[str, np.ndarray]) -> None:
    """A ``save_pretrained``-style directory: config.json and model.safetensors."""
    _, save_file = _safetensors()
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    tmp = path / "model.safetensors.tmp"
    save_file(arrays, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path / "model.safetensors")
    with open(path / "config.json", "w") as f:
        json.dump(_encode_floats(config), f, indent=2, sort_keys=True)
        f.write("\n")
