"""transformers' ``MambaForCausalLM`` (``model_type: mamba``) as :func:`seqjax.lm.language_model`
of :func:`seqjax.blocks.mamba.mamba_block` blocks.

Tensors (``{n}`` a layer; ``E`` the inner width, ``R`` the ``Delta`` rank, ``N`` the
state size, ``k`` the kernel):

=====================================================  ==========================================
``backbone.embeddings.weight [V, D]``                  ``embed`` (``backbone.embedding.weight``,
                                                       the original checkpoints' name, is read too)
``backbone.layers.{n}.norm.weight [D]``                ``blocks[n].norm.scale``
``backbone.layers.{n}.mixer.in_proj.weight [2E, D]``   ``mixer.in_proj.w`` (transposed; ``x``, then ``z``)
``backbone.layers.{n}.mixer.conv1d.weight [E, 1, k]``  ``mixer.conv.w [k, E]``
``backbone.layers.{n}.mixer.x_proj.weight [R+2N, E]``  rows ``:R``, ``R:R+N``, ``R+N:``:
                                                       ``ssm.w_delta_down``, ``ssm.w_b``, ``ssm.w_c``
                                                       (each transposed)
``backbone.layers.{n}.mixer.dt_proj.weight [E, R]``    ``ssm.w_delta_up`` (transposed)
``backbone.layers.{n}.mixer.dt_proj.bias [E]``         ``ssm.b_delta``
``backbone.layers.{n}.mixer.A_log [E, N]``             ``ssm.a_log``
``backbone.layers.{n}.mixer.D [E]``                    ``ssm.d``
``backbone.layers.{n}.mixer.out_proj.weight [D, E]``   ``mixer.out_proj.w`` (transposed)
``backbone.norm_f.weight [D]``                         ``norm.scale``
``lm_head.weight [V, D]``                              ``head`` (transposed), absent when tied
=====================================================  ==========================================

plus ``in_proj.bias``, ``out_proj.bias`` (``use_bias``) and ``conv1d.bias``
(``use_conv_bias``).

Where seqjax and transformers differ:

* transformers' multi-token forward on a non-empty cache restarts the SSM from a zero
  state (a TODO in its source; 3e-3 off its own full forward); seqjax's
  ``prefill(tokens, state)`` continues from the state. One-token steps agree.
* ``backbone.embedding.weight`` is read as the embedding; transformers 5.25's rename
  hook no longer applies and leaves that model's embedding random.
* ``residual_in_fp32`` is not reproduced: seqjax keeps the residual stream, and the S6
  state, in the params' dtype (transformers keeps both in float32); a no-op in float32.
* ``use_mambapy`` and ``use_associative_scan`` choose transformers' training kernels
  only (rounding).
"""

from __future__ import annotations

import math

import numpy as np

from seqjax import lm
from seqjax.blocks.mamba import MambaParams, mamba_block
from seqjax.blocks.residual import ResidualParams
from seqjax.cells.mamba import S6Params
from seqjax.interop.hf._common import (activation, array, numpy, read_conv, read_head, read_linear,
                                       read_norm, write_conv, write_linear, write_norm)
from seqjax.layers.norms import rms_norm


def _sizes(config: dict):
    D = int(config["hidden_size"])
    E = int(config.get("intermediate_size") or int(config.get("expand", 2) * D))
    rank = config.get("time_step_rank", "auto")
    R = math.ceil(D / 16) if rank == "auto" else int(rank)
    return D, E, int(config.get("state_size", 16)), R, int(config.get("conv_kernel", 4))


def build(config: dict, *, dtype, max_length) -> lm.Decoder:
    D, E, N, R, k = _sizes(config)
    eps = float(config.get("layer_norm_epsilon", 1e-5))
    act = activation(config)
    blocks = [mamba_block(D, state_size=N, intermediate_size=E, conv_kernel=k, delta_rank=R,
                          conv_bias=bool(config.get("use_conv_bias", True)),
                          bias=bool(config.get("use_bias", False)), activation=act,
                          norm_eps=eps, param_dtype=dtype)
              for _ in range(int(config["num_hidden_layers"]))]
    return lm.language_model(int(config["vocab_size"]), D, blocks,
                             tie_embeddings=bool(config.get("tie_word_embeddings", True)),
                             final_norm=rms_norm(D, eps=eps, param_dtype=dtype),
                             param_dtype=dtype, source={"hf_config": config})


def read(config: dict, model, tensors, dtype) -> lm.DecoderParams:
    D, E, N, R, k = _sizes(config)
    V = int(config["vocab_size"])
    bias = bool(config.get("use_bias", False))
    conv_bias = bool(config.get("use_conv_bias", True))
    take = lambda name, shape: array(tensors.take(name, shape), dtype)
    embed_name = "backbone.embeddings.weight"
    if embed_name not in tensors and "backbone.embedding.weight" in tensors:
        embed_name = "backbone.embedding.weight"
    blocks = []
    for n in range(int(config["num_hidden_layers"])):
        p = f"backbone.layers.{n}."
        x_proj = take(p + "mixer.x_proj.weight", (R + 2 * N, E)).T  # [E, R + 2N]
        ssm = S6Params(a_log=take(p + "mixer.A_log", (E, N)),
                       w_b=x_proj[:, R:R + N], w_c=x_proj[:, R + N:],
                       w_delta_down=x_proj[:, :R],
                       w_delta_up=take(p + "mixer.dt_proj.weight", (E, R)).T,
                       b_delta=take(p + "mixer.dt_proj.bias", (E,)),
                       d=take(p + "mixer.D", (E,)))
        mixer = MambaParams(
            in_proj=read_linear(tensors, p + "mixer.in_proj", D, 2 * E, bias=bias, dtype=dtype),
            conv=read_conv(tensors, p + "mixer.conv1d", E, k, bias=conv_bias, dtype=dtype),
            ssm=ssm,
            out_proj=read_linear(tensors, p + "mixer.out_proj", E, D, bias=bias, dtype=dtype))
        blocks.append(ResidualParams(read_norm(tensors, p + "norm", D, dtype), mixer, None, None))
    return lm.DecoderParams(
        embed=take(embed_name, (V, D)), blocks=tuple(blocks),
        norm=read_norm(tensors, "backbone.norm_f", D, dtype),
        head=read_head(tensors, "lm_head.weight", V, D,
                       bool(config.get("tie_word_embeddings", True)), dtype))


def write(config: dict, model, params: lm.DecoderParams) -> dict:
    out = {"backbone.embeddings.weight": numpy(params.embed)}
    for n, block in enumerate(params.blocks):
        p, mixer = f"backbone.layers.{n}.", block.mixer
        ssm = mixer.ssm
        write_norm(out, p + "norm", block.norm)
        write_linear(out, p + "mixer.in_proj", mixer.in_proj)
        write_conv(out, p + "mixer.conv1d", mixer.conv)
        out[p + "mixer.x_proj.weight"] = np.concatenate(
            [numpy(ssm.w_delta_down), numpy(ssm.w_b), numpy(ssm.w_c)], axis=1).T
        out[p + "mixer.dt_proj.weight"] = numpy(ssm.w_delta_up).T
        out[p + "mixer.dt_proj.bias"] = numpy(ssm.b_delta)
        out[p + "mixer.A_log"] = numpy(ssm.a_log)
        out[p + "mixer.D"] = numpy(ssm.d)
        write_linear(out, p + "mixer.out_proj", mixer.out_proj)
    write_norm(out, "backbone.norm_f", params.norm)
    if params.head is not None:
        out["lm_head.weight"] = numpy(params.head).T
    return out


__all__ = ["build", "read", "write"]
