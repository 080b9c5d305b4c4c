"""What the attention model types share: their rotary settings as transformers
standardises a config's ``rope_parameters``, and the MLP activations of ``hidden_act``."""

from __future__ import annotations

import functools

import jax

from seqjax.interop.hf._io import HFError
from seqjax.layers.attention import Rotary, rotary
from seqjax.layers.mlp import gelu_tanh

# transformers' ACT2FN names -> the same functions
ACTIVATIONS = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_new": gelu_tanh,
    "relu": jax.nn.relu,
}

ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def activation(config: dict, default: str = "silu"):
    """``hidden_act`` as a function, refused by name when it is not one of
    :data:`ACTIVATIONS`."""
    name = config.get("hidden_act", default)
    if name not in ACTIVATIONS:
        raise HFError(f"{config.get('model_type')}: config option hidden_act={name!r} is not "
                      f"supported by seqjax (supported: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def rope_parameters(config: dict, *, max_position_embeddings: int,
                    partial_rotary_factor=None) -> dict:
    """The config's rotary parameters as transformers 5 standardises them.

    ``rope_scaling`` (older files) takes precedence over ``rope_parameters``; of a
    dict per layer type, the ``full_attention`` one counts; ``rope_theta`` and
    ``partial_rotary_factor`` come from the dict, else from the config's top level,
    else the class defaults (10000; ``partial_rotary_factor`` as given);
    ``rope_type`` from ``rope_type`` or ``type``; llama3 and yarn get
    ``original_max_position_embeddings`` from the top level or
    ``max_position_embeddings``, and yarn's missing ``factor`` is
    ``max_position_embeddings / original_max_position_embeddings``.

    Raises:
      HFError: a ``rope_type`` other than :data:`ROPE_TYPES` (``dynamic``,
        ``longrope``: their frequencies depend on the sequence length), named.
    """
    params = dict(config.get("rope_scaling") or config.get("rope_parameters") or {})
    nested = [key for key in params if key in (config.get("layer_types") or ())]
    if nested:  # one dict per layer type: the attention layers' is the one that rotates
        if "full_attention" not in nested:
            raise HFError(f"{config.get('model_type')}: config option rope_parameters has "
                          f"entries for {nested} but none for 'full_attention'")
        params = dict(params["full_attention"] or {})
    params.setdefault("rope_type", params.get("type", "default"))
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    factor = config.get("partial_rotary_factor", partial_rotary_factor)
    if factor is not None:
        params.setdefault("partial_rotary_factor", factor)
    kind = params["rope_type"]
    if kind not in ROPE_TYPES:
        raise HFError(f"{config.get('model_type')}: config option rope_parameters.rope_type="
                      f"{kind!r} is not supported by seqjax (supported: "
                      f"{', '.join(ROPE_TYPES)})")
    max_pos = config.get("max_position_embeddings", max_position_embeddings)
    if kind in ("llama3", "yarn"):
        if config.get("original_max_position_embeddings") is not None:
            params["original_max_position_embeddings"] = config["original_max_position_embeddings"]
        else:
            params.setdefault("original_max_position_embeddings", max_pos)
    if kind == "yarn":
        if params.get("factor") is None:
            params["factor"] = max_pos / params["original_max_position_embeddings"]
        for key in ("beta_fast", "beta_slow"):  # transformers: `get(key) or default`
            if not params.get(key):
                params.pop(key, None)
    return params


def rope(params: dict, dim: int) -> Rotary:
    """The :class:`~seqjax.layers.Rotary` of :func:`rope_parameters` on ``dim``
    channels."""
    return rotary(dim, theta=float(params["rope_theta"]), scaling=params)
