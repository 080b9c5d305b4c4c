"""transformers' ``Mamba2ForCausalLM`` (``model_type: mamba2``) as
:func:`seqjax.lm.language_model` of :func:`seqjax.blocks.mamba.mamba2_block` blocks.

Tensors (``{n}`` a layer; ``E = expand * D = H P`` the inner width, ``H`` heads, ``G``
groups, ``N`` the state size, ``k`` the kernel, ``CD = E + 2 G N``):

=========================================================  ===================================
``backbone.embeddings.weight [V, D]``                      ``embed``
``backbone.layers.{n}.norm.weight [D]``                    ``blocks[n].norm.scale``
``backbone.layers.{n}.mixer.in_proj.weight [E+CD+H, D]``   ``mixer.in_proj.w`` (transposed;
                                                           ``z, x, B, C, dt``)
``backbone.layers.{n}.mixer.conv1d.weight [CD, 1, k]``     ``mixer.conv.w [k, CD]``
``backbone.layers.{n}.mixer.dt_bias [H]``                  ``mixer.ssd.dt_bias``
``backbone.layers.{n}.mixer.A_log [H]``                    ``mixer.ssd.a_log``
``backbone.layers.{n}.mixer.D [H]``                        ``mixer.ssd.d``
``backbone.layers.{n}.mixer.norm.weight [E]``              ``mixer.norm.scale`` (the gated norm)
``backbone.layers.{n}.mixer.out_proj.weight [D, E]``       ``mixer.out_proj.w`` (transposed)
``backbone.norm_f.weight [D]``                             ``norm.scale``
``lm_head.weight [V, D]``                                  ``head`` (transposed), absent when tied
=========================================================  ===================================

plus ``in_proj.bias``, ``out_proj.bias`` (``use_bias``) and ``conv1d.bias``
(``use_conv_bias``).

Where seqjax and transformers differ:

* ``time_step_limit`` clips ``Delta`` in seqjax's whole-sequence form *and* in its
  one-token ``step``; transformers clips only in its full-sequence (chunked) path and
  skips the clip in its cached one-token step, so with a limit other than the default
  ``(0, inf)`` transformers' cached ``generate`` differs from its own full forward
  (measured 9e-3 in the logits with ``(0, 0.05)``). seqjax matches the full forward
  everywhere, as ``mamba_ssm`` does. With the default limit the two agree.
* ``chunk_size`` is the chunk length of transformers' SSD algorithm; it does not change
  the results (seqjax's unroll has its own ``chunk_size``).
* ``rms_norm`` and ``norm_before_gate``, present in some hub configs, are ignored, as
  transformers ignores them: the gated norm is always an RMSNorm of ``y * silu(z)``.
* ``residual_in_fp32`` is not reproduced: seqjax keeps the residual stream in the
  params' dtype, and the SSM state too (its chunkwise form computes in float32 inside;
  transformers keeps stream and state in float32); a no-op in float32.
* ``intermediate_size`` and ``time_step_rank`` are unused, as in transformers.
"""

from __future__ import annotations

import math

from seqjax import lm
from seqjax.blocks.mamba import Mamba2Params, SSDParams, mamba2_block
from seqjax.blocks.residual import ResidualParams
from seqjax.interop.hf._common import (activation, array, numpy, read_conv, read_head, read_linear,
                                       read_norm, write_conv, write_linear, write_norm)
from seqjax.interop.hf._io import HFError
from seqjax.layers.norms import rms_norm


def _sizes(config: dict):
    D = int(config["hidden_size"])
    E = int(config.get("expand", 2) * D)
    H, P = int(config.get("num_heads", 128)), int(config.get("head_dim", 64))
    N, G = int(config.get("state_size", 128)), int(config.get("n_groups", 8))
    if H * P != E:
        raise HFError(f"mamba2: config options num_heads * head_dim ({H} * {P}) must equal "
                      f"expand * hidden_size ({E})")
    if H % G or E % G:
        raise HFError(f"mamba2: config option n_groups={G} must divide num_heads ({H}) and "
                      f"expand * hidden_size ({E})")
    return D, E, H, P, N, G, int(config.get("conv_kernel", 4))


def _time_step_limit(config: dict) -> tuple:
    # transformers writes inf as {"__float__": "Infinity"}; a config dict given to
    # hf.build straight from json.load still holds it
    limit = config.get("time_step_limit", (0.0, math.inf))
    try:
        low, high = (float(v) for v in limit)
        ok = 0.0 <= low <= high
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise HFError(f"mamba2: config option time_step_limit={limit!r} is not supported by "
                      "seqjax: expected [low, high] with 0 <= low <= high")
    return low, high


def build(config: dict, *, dtype, max_length) -> lm.Decoder:
    D, E, H, P, N, G, k = _sizes(config)
    eps = float(config.get("layer_norm_epsilon", 1e-5))
    act = activation(config)
    limit = _time_step_limit(config)
    blocks = [mamba2_block(D, state_size=N, expand=config.get("expand", 2),
                           head_dim=P, num_heads=H, n_groups=G, conv_kernel=k,
                           conv_bias=bool(config.get("use_conv_bias", True)),
                           bias=bool(config.get("use_bias", False)), activation=act,
                           time_step_limit=limit, norm_eps=eps, param_dtype=dtype)
              for _ in range(int(config["num_hidden_layers"]))]
    return lm.language_model(int(config["vocab_size"]), D, blocks,
                             tie_embeddings=bool(config.get("tie_word_embeddings", False)),
                             final_norm=rms_norm(D, eps=eps, param_dtype=dtype),
                             param_dtype=dtype, source={"hf_config": config})


def read(config: dict, model, tensors, dtype) -> lm.DecoderParams:
    D, E, H, P, N, G, k = _sizes(config)
    V, CD = int(config["vocab_size"]), E + 2 * G * N
    bias = bool(config.get("use_bias", False))
    take = lambda name, shape: array(tensors.take(name, shape), dtype)
    blocks = []
    for n in range(int(config["num_hidden_layers"])):
        p = f"backbone.layers.{n}.mixer."
        mixer = Mamba2Params(
            in_proj=read_linear(tensors, p + "in_proj", D, E + CD + H, bias=bias, dtype=dtype),
            conv=read_conv(tensors, p + "conv1d", CD, k,
                           bias=bool(config.get("use_conv_bias", True)), dtype=dtype),
            ssd=SSDParams(dt_bias=take(p + "dt_bias", (H,)), a_log=take(p + "A_log", (H,)),
                          d=take(p + "D", (H,))),
            norm=read_norm(tensors, p + "norm", E, dtype),
            out_proj=read_linear(tensors, p + "out_proj", E, D, bias=bias, dtype=dtype))
        blocks.append(ResidualParams(read_norm(tensors, f"backbone.layers.{n}.norm", D, dtype),
                                     mixer, None, None))
    return lm.DecoderParams(
        embed=take("backbone.embeddings.weight", (V, D)), blocks=tuple(blocks),
        norm=read_norm(tensors, "backbone.norm_f", D, dtype),
        head=read_head(tensors, "lm_head.weight", V, D,
                       bool(config.get("tie_word_embeddings", False)), dtype))


def write(config: dict, model, params: lm.DecoderParams) -> dict:
    out = {"backbone.embeddings.weight": numpy(params.embed)}
    for n, block in enumerate(params.blocks):
        p, mixer = f"backbone.layers.{n}.mixer.", block.mixer
        write_norm(out, f"backbone.layers.{n}.norm", block.norm)
        write_linear(out, p + "in_proj", mixer.in_proj)
        write_conv(out, p + "conv1d", mixer.conv)
        out[p + "dt_bias"] = numpy(mixer.ssd.dt_bias)
        out[p + "A_log"] = numpy(mixer.ssd.a_log)
        out[p + "D"] = numpy(mixer.ssd.d)
        write_norm(out, p + "norm", mixer.norm)
        write_linear(out, p + "out_proj", mixer.out_proj)
    write_norm(out, "backbone.norm_f", params.norm)
    if params.head is not None:
        out["lm_head.weight"] = numpy(params.head).T
    return out


__all__ = ["build", "read", "write"]
