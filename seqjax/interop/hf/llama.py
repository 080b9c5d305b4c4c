"""``model_type = "llama"``: ``LlamaForCausalLM`` (transformers 5.25).

Every layer is the pre-norm Transformer block: ``x + o(attention(RMSNorm(x)))``, then
``x + down(act(gate(h)) * up(h))`` with ``h = RMSNorm(x)``; RMSNorm multiplies by
``w`` (not ``1 + w``); rotary embeddings on whole heads, in the ``rotate_half``
layout, with the config's scaling (``default``, ``linear``, ``llama3``, ``yarn``);
grouped-query heads; no embedding scale, no soft cap.

Checkpoint keys, per layer ``model.layers.{i}.`` (``W [out, in]``, stored transposed in
seqjax):

==================================  ==========================  =====================
key                                 shape                       seqjax
==================================  ==========================  =====================
``input_layernorm.weight``          ``[D]``                     ``norm.scale``
``self_attn.q_proj.weight`` (bias)  ``[H hd, D]``               ``mixer.q.w.T`` (b)
``self_attn.k_proj.weight`` (bias)  ``[K hd, D]``               ``mixer.k.w.T`` (b)
``self_attn.v_proj.weight`` (bias)  ``[K hd, D]``               ``mixer.v.w.T`` (b)
``self_attn.o_proj.weight`` (bias)  ``[D, H hd]``               ``mixer.o.w.T`` (b)
``post_attention_layernorm.weight`` ``[D]``                     ``mlp_norm.scale``
``mlp.gate_proj.weight`` (bias)     ``[I, D]``                  ``mlp.gate.w.T`` (b)
``mlp.up_proj.weight`` (bias)       ``[I, D]``                  ``mlp.up.w.T`` (b)
``mlp.down_proj.weight`` (bias)     ``[D, I]``                  ``mlp.down.w.T`` (b)
==================================  ==========================  =====================

and ``model.embed_tokens.weight [V, D]``, ``model.norm.weight [D]``,
``lm_head.weight [V, D]`` (absent when ``tie_word_embeddings``). Biases are there with
``attention_bias`` (q, k, v and o) and ``mlp_bias``. Old files may hold the
non-persistent ``self_attn.rotary_emb.inv_freq``: it is read and dropped (the
frequencies come from the config).

Differences from transformers: none in the math. transformers recomputes nothing per
call for these rotary types, so its cached decoding and its full forward agree; seqjax
decodes with a fixed-size cache of ``max_length`` slots.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from seqjax import lm
from seqjax.blocks.residual import ResidualParams, residual
from seqjax.interop.hf._common import (array, numpy, read_head, read_linear, read_norm,
                                       write_linear, write_norm)
from seqjax.interop.hf._io import HFError
from seqjax.interop.hf._transformer import activation, rope, rope_parameters
from seqjax.layers.attention import AttentionParams, attention
from seqjax.layers.mlp import GatedMLPParams, gated_mlp
from seqjax.layers.norms import rms_norm

# the class defaults of LlamaConfig, for keys a config.json leaves out
DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=None, head_dim=None,
                hidden_act="silu", rms_norm_eps=1e-6, max_position_embeddings=2048,
                attention_bias=False, mlp_bias=False, tie_word_embeddings=False)


def _settings(config: dict) -> dict:
    c = {k: config.get(k, v) for k, v in DEFAULTS.items()}
    c["num_key_value_heads"] = c["num_key_value_heads"] or c["num_attention_heads"]
    c["head_dim"] = c["head_dim"] or c["hidden_size"] // c["num_attention_heads"]
    if c["num_attention_heads"] % c["num_key_value_heads"]:
        raise HFError(f"llama: num_key_value_heads={c['num_key_value_heads']} must divide "
                      f"num_attention_heads={c['num_attention_heads']}")
    rp = rope_parameters(config, max_position_embeddings=DEFAULTS["max_position_embeddings"])
    # Llama rotates whole heads; its non-default frequencies cover int(hd * factor)
    # channels, which fails in transformers unless the factor is 1
    factor = rp.get("partial_rotary_factor", 1.0)
    if rp["rope_type"] != "default" and int(c["head_dim"] * factor) != c["head_dim"]:
        raise HFError(f"llama: config option partial_rotary_factor={factor!r} is not "
                      "supported by seqjax: Llama rotates whole heads")
    c["rope"] = rp
    return c


def build(config: dict, *, dtype=jnp.float32, max_length: int = 4096) -> lm.Decoder:
    """The seqjax model of a Llama ``config`` (see the module docstring)."""
    c = _settings(config)
    D, hd = c["hidden_size"], c["head_dim"]
    act = activation(config)
    norm = functools.partial(rms_norm, eps=float(c["rms_norm_eps"]), param_dtype=dtype)
    layer = residual(
        attention(D, c["num_attention_heads"], num_kv_heads=c["num_key_value_heads"],
                  head_dim=hd, max_length=max_length, rope=rope(c["rope"], hd),
                  qkv_bias=bool(c["attention_bias"]), out_bias=bool(c["attention_bias"]),
                  param_dtype=dtype),
        mlp=gated_mlp(D, c["intermediate_size"], activation=act, bias=bool(c["mlp_bias"]),
                      param_dtype=dtype),
        norm=norm)
    return lm.language_model(c["vocab_size"], D, [layer] * c["num_hidden_layers"],
                             tie_embeddings=bool(c["tie_word_embeddings"]), final_norm=norm(D),
                             max_length=max_length, param_dtype=dtype,
                             source={"hf_config": dict(config)})


def _names(i):
    return f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp.", f"model.layers.{i}."


def read(config: dict, model, tensors, dtype) -> lm.DecoderParams:
    """Every tensor of a Llama checkpoint, by name and shape."""
    c = _settings(config)
    V, D, I = c["vocab_size"], c["hidden_size"], c["intermediate_size"]
    H, K, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    ab, mb = bool(c["attention_bias"]), bool(c["mlp_bias"])
    blocks = []
    for i in range(c["num_hidden_layers"]):
        attn, mlp, layer = _names(i)
        if f"{attn}rotary_emb.inv_freq" in tensors:  # a buffer older files saved
            tensors.take(f"{attn}rotary_emb.inv_freq")
        mixer = AttentionParams(
            q=read_linear(tensors, f"{attn}q_proj", D, H * hd, bias=ab, dtype=dtype),
            k=read_linear(tensors, f"{attn}k_proj", D, K * hd, bias=ab, dtype=dtype),
            v=read_linear(tensors, f"{attn}v_proj", D, K * hd, bias=ab, dtype=dtype),
            o=read_linear(tensors, f"{attn}o_proj", H * hd, D, bias=ab, dtype=dtype),
            gate=None, q_norm=None, k_norm=None)
        mlp_params = GatedMLPParams(
            gate=read_linear(tensors, f"{mlp}gate_proj", D, I, bias=mb, dtype=dtype),
            up=read_linear(tensors, f"{mlp}up_proj", D, I, bias=mb, dtype=dtype),
            down=read_linear(tensors, f"{mlp}down_proj", I, D, bias=mb, dtype=dtype))
        blocks.append(ResidualParams(read_norm(tensors, f"{layer}input_layernorm", D, dtype),
                                     mixer,
                                     read_norm(tensors, f"{layer}post_attention_layernorm", D,
                                               dtype),
                                     mlp_params))
    return lm.DecoderParams(
        embed=array(tensors.take("model.embed_tokens.weight", (V, D)), dtype),
        blocks=tuple(blocks),
        norm=read_norm(tensors, "model.norm", D, dtype),
        head=read_head(tensors, "lm_head.weight", V, D, bool(c["tie_word_embeddings"]), dtype))


def write(config: dict, model, params: lm.DecoderParams) -> dict:
    """The inverse of :func:`read`: ``{name: array}`` (a tied head is not written)."""
    out = {"model.embed_tokens.weight": numpy(params.embed)}
    for i, block in enumerate(params.blocks):
        attn, mlp, layer = _names(i)
        write_norm(out, f"{layer}input_layernorm", block.norm)
        for name, p in zip(("q_proj", "k_proj", "v_proj", "o_proj"), block.mixer[:4]):
            write_linear(out, f"{attn}{name}", p)
        write_norm(out, f"{layer}post_attention_layernorm", block.mlp_norm)
        for name, p in zip(("gate_proj", "up_proj", "down_proj"), block.mlp):
            write_linear(out, f"{mlp}{name}", p)
    write_norm(out, "model.norm", params.norm)
    if params.head is not None:
        out["lm_head.weight"] = numpy(params.head).T
    return out
