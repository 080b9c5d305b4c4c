"""Hugging Face checkpoints in and out of seqjax's language models.

``model, params = hf.load(path)`` reads a directory written by transformers'
``save_pretrained`` (``config.json`` and one or more ``*.safetensors``, sharded or
not) into a :func:`seqjax.lm.language_model` and its params; ``hf.save(model, params,
path)`` writes one that ``transformers.AutoModelForCausalLM.from_pretrained`` opens.
Reading needs numpy and ``safetensors`` only (``pip install "seqjax[hf]"``), never
torch or transformers.

One module per ``model_type`` holds its table of tensor names, shapes and the
transposes it needs: :mod:`~seqjax.interop.hf.mamba`, :mod:`~seqjax.interop.hf.mamba2`,
:mod:`~seqjax.interop.hf.recurrent_gemma`, :mod:`~seqjax.interop.hf.xlstm`,
:mod:`~seqjax.interop.hf.llama`, :mod:`~seqjax.interop.hf.qwen3_next`. Each defines

* ``build(config, *, dtype, max_length) -> Decoder``: the model, refusing by name
  every config option it does not reproduce;
* ``read(config, model, tensors, dtype) -> DecoderParams``: every tensor, by name
  and shape (:class:`~seqjax.interop.hf._io.Tensors`);
* ``write(config, model, params) -> {name: array}``: the inverse.

A tensor the model has no place for is an error, not silently dropped.
"""

from __future__ import annotations

import importlib
from typing import Optional

import jax.numpy as jnp

from seqjax.interop.hf._io import HFError, Tensors, _special_floats, read_config, write as _write

SUPPORTED = ("mamba", "mamba2", "recurrent_gemma", "xlstm", "llama", "qwen3_next")

# KV-cache slots a global attention block gets when neither the caller nor a smaller
# max_position_embeddings says otherwise (see load's max_length)
DEFAULT_MAX_LENGTH = 4096


def _module(model_type):
    if model_type not in SUPPORTED:
        raise HFError(f"model_type {model_type!r} is not supported; seqjax.interop.hf reads "
                      f"{', '.join(SUPPORTED)}")
    return importlib.import_module(f"seqjax.interop.hf.{model_type}")


def _max_length(config: dict, max_length: Optional[int]) -> int:
    if max_length is not None:
        return int(max_length)
    limit = config.get("max_position_embeddings")
    return int(min(limit, DEFAULT_MAX_LENGTH)) if limit else DEFAULT_MAX_LENGTH


def build(config: dict, *, dtype=jnp.float32, max_length: Optional[int] = None):
    """The seqjax model for a Hugging Face ``config`` (a dict, as config.json), without
    weights: ``model.init(key)`` gives fresh params that :func:`save` writes in the
    checkpoint's layout.

    Args:
      config: the model's configuration; ``model_type`` picks the module.
      dtype: the params' dtype.
      max_length: KV-cache slots of global attention layers (the longest sequence
        ``generate`` can reach); default ``min(max_position_embeddings, 4096)``.

    Returns:
      A :class:`seqjax.lm.Decoder`.
    """
    config = _special_floats(dict(config))  # as config.json has them: {"__float__": ...}
    return _module(config.get("model_type")).build(config, dtype=dtype,
                                                   max_length=_max_length(config, max_length))


def load(path, *, dtype=jnp.float32, max_length: Optional[int] = None):
    """Loads a ``save_pretrained`` directory.

    Download a checkpoint once (``huggingface-cli download state-spaces/mamba-130m-hf
    --local-dir DIR``, or ``save_pretrained(DIR)``) and pass ``DIR``; nothing is
    fetched here.

    Args:
      path: the directory (``config.json`` and ``*.safetensors``, or a sharded
        ``model.safetensors.index.json``).
      dtype: the params' dtype (``jnp.float32`` or ``jnp.bfloat16``); tensors are
        cast.
      max_length: as for :func:`build`.

    Returns:
      ``(model, params)``: a :class:`seqjax.lm.Decoder` and its
      :class:`seqjax.lm.DecoderParams`.

    Raises:
      HFError: an unsupported ``model_type`` or option (named), a missing or
        misshapen tensor (named, with both shapes), or a tensor the model has no
        place for.
    """
    config = read_config(path)
    module = _module(config.get("model_type"))
    model = module.build(config, dtype=dtype, max_length=_max_length(config, max_length))
    tensors = Tensors(path)
    params = module.read(config, model, tensors, dtype)
    tensors.finish()
    return model, params


def save(model, params, path) -> None:
    """Writes ``params`` as a ``save_pretrained`` directory (config.json and
    model.safetensors) that transformers loads.

    Args:
      model: a model from :func:`load` or :func:`build` (it keeps its Hugging Face
        config).
      params: its params (trained or changed in seqjax).
      path: the directory (created if needed).
    """
    config = (getattr(model, "source", None) or {}).get("hf_config")
    if config is None:
        raise HFError("hf.save needs a model from seqjax.interop.hf.load or build: it "
                      "writes the Hugging Face config that model was built from")
    _write(path, config, _module(config["model_type"]).write(config, model, params))


__all__ = ["HFError", "SUPPORTED", "build", "load", "save"]
