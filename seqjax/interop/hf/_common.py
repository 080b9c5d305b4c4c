"""Helpers the per-``model_type`` modules share: the layouts of a linear map, a norm, a
convolution and an embedding in a PyTorch checkpoint against seqjax's."""

from __future__ import annotations

from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.interop.hf._io import HFError, Tensors
from seqjax.layers.conv import ConvParams
from seqjax.layers._common import LinearParams
from seqjax.layers.mlp import gelu_tanh
from seqjax.layers.norms import NormParams


def array(x, dtype):
    """A numpy tensor as a jax array of ``dtype`` (bfloat16 files become float32 first)."""
    x = np.asarray(x)
    if x.dtype.kind not in "fc" and x.dtype.name != "bfloat16":
        raise HFError(f"expected a floating tensor, got {x.dtype}")
    return jnp.asarray(x.astype(np.float32) if x.dtype.itemsize < 4 else x).astype(dtype)


def numpy(x) -> np.ndarray:
    """A param as a float32 (or wider) numpy array for the file."""
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def read_linear(t: Tensors, name: str, size_in: int, size_out: int, *, bias: bool,
                dtype) -> LinearParams:
    """``name.weight [out, in]`` (and ``name.bias [out]``) as ``w [in, out]``, ``b``."""
    w = array(t.take(f"{name}.weight", (size_out, size_in)), dtype).T
    b = array(t.take(f"{name}.bias", (size_out,)), dtype) if bias else None
    return LinearParams(w, b)


def write_linear(out: Dict[str, np.ndarray], name: str, p: LinearParams) -> None:
    out[f"{name}.weight"] = numpy(p.w).T
    if p.b is not None:
        out[f"{name}.bias"] = numpy(p.b)


def read_norm(t: Tensors, name: str, size: int, dtype, *, bias: bool = False) -> NormParams:
    """``name.weight [size]`` (and ``name.bias``), stored as the checkpoint stores them
    (the seqjax norm adds its ``offset``)."""
    return NormParams(array(t.take(f"{name}.weight", (size,)), dtype),
                      array(t.take(f"{name}.bias", (size,)), dtype) if bias else None)


def write_norm(out, name: str, p: NormParams) -> None:
    out[f"{name}.weight"] = numpy(p.scale)
    if p.bias is not None:
        out[f"{name}.bias"] = numpy(p.bias)


def read_conv(t: Tensors, name: str, channels: int, kernel: int, *, bias: bool,
              dtype) -> ConvParams:
    """PyTorch's depthwise ``Conv1d`` ``name.weight [C, 1, k]`` as ``w [k, C]`` (tap
    ``k - 1`` on the current input, as PyTorch's causal padding has it)."""
    w = array(t.take(f"{name}.weight", (channels, 1, kernel)), dtype)[:, 0, :].T
    b = array(t.take(f"{name}.bias", (channels,)), dtype) if bias else None
    return ConvParams(w, b)


def write_conv(out, name: str, p: ConvParams) -> None:
    out[f"{name}.weight"] = numpy(p.w).T[:, None, :]
    if p.b is not None:
        out[f"{name}.bias"] = numpy(p.b)


def read_head(t: Tensors, name: str, vocab: int, d_model: int, tied: bool,
              dtype) -> Optional[jnp.ndarray]:
    """The output head ``[D, V]``, or ``None`` when it is the embedding.

    As transformers does: a tied config whose file still holds a head uses the file's
    head (so a tied model's file has no ``name``, and an untied one must).
    """
    if name in t:
        return array(t.take(name, (vocab, d_model)), dtype).T
    if not tied:
        t.take(name, (vocab, d_model))  # raises: the untied head is missing
    return None


def option(config: dict, name: str, supported, what: str = ""):
    """``config[name]``, raising :class:`HFError` naming it unless it is supported."""
    value = config.get(name)
    ok = supported(value) if callable(supported) else value in supported
    if not ok:
        raise HFError(f"{config.get('model_type')}: config option {name}={value!r} is not "
                      f"supported by seqjax{': ' + what if what else ''}")
    return value


def gelu(x):
    """The exact GELU, ``x * Phi(x)`` (transformers' ``"gelu"``)."""
    return jax.nn.gelu(x, approximate=False)


# transformers' ACT2FN names of the activations seqjax reproduces exactly
ACTIVATIONS = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "relu": jax.nn.relu,
}


def activation(config: dict, default: str = "silu"):
    """``config["hidden_act"]`` as a function; an unsupported name is an error."""
    name = config.get("hidden_act", default)
    if name not in ACTIVATIONS:
        raise HFError(f"{config.get('model_type')}: config option hidden_act={name!r} is not "
                      f"supported by seqjax: the activations are {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]
