"""RecurrentGemma (``model_type = "recurrent_gemma"``): Griffin's recurrent and local
attention blocks (:mod:`seqjax.blocks.griffin`) as transformers lays them out.

Layer ``i`` is ``block_types[i % len(block_types)]``: ``"recurrent"`` (a
:func:`~seqjax.blocks.griffin.griffin_block`) or ``"attention"`` (a
:func:`~seqjax.blocks.griffin.local_attention_block`). What the model does, as
transformers 5.25 computes it:

* embeddings scaled by ``sqrt(hidden_size)`` rounded to bfloat16 (6.9375 for 48, 50.5
  for 2560), whatever the model's dtype;
* Gemma's RMSNorm ``(1 + w) x / sqrt(mean(x^2) + rms_norm_eps)`` everywhere;
* a GeGLU MLP of width ``intermediate_size // 2``, all three maps with biases;
* the recurrent block: ``gelu(linear_y(u)) * RG-LRU(conv_1d(linear_x(u)))`` through
  ``linear_out``, the RG-LRU's gates block-diagonal with ``num_attention_heads``
  blocks, and position 0 a document start (no ``h_{-1}``, no ``sqrt(1 - a^2)``);
* local attention with ``num_key_value_heads`` key/value heads, ``head_dim`` (from
  config.json when given, else ``hidden_size / num_attention_heads``), rotary
  embeddings on the first ``int(head_dim * partial_rotary_factor)`` channels of each
  head, ``attention_window_size`` keys per query (itself included), biases on
  ``q, k, v`` only with ``attention_bias``, and always on ``o_proj``;
* ``logits = cap * tanh(logits / cap)``, ``cap = logits_soft_cap``.

Where transformers' step path differs from its full forward: its cached decoding
reads the position from ``position_ids`` (a manual ``model(token, cache=...)`` without
them restarts the recurrence), and a second multi-token call ignores the convolution
state. seqjax follows the full forward: the state counts positions, and ``prefill``
continues from any state. Left-padded batches are not modelled (transformers'
recurrent layers ignore the attention mask there).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax import lm
from seqjax.blocks.griffin import RecurrentBlockParams, griffin_block, local_attention_block
from seqjax.blocks.residual import ResidualParams
from seqjax.cells.diagonal import RGLRUParams
from seqjax.interop.hf._common import (array, numpy, option, read_conv, read_head,
                                       read_linear, read_norm, write_conv, write_linear,
                                       write_norm)
from seqjax.interop.hf._io import HFError
from seqjax.layers.attention import AttentionParams
from seqjax.layers.mlp import GatedMLPParams, gelu_tanh
from seqjax.layers.norms import rms_norm

def gelu_erf(x):
    """The exact GeLU ``x Phi(x)`` (transformers' ``"gelu"``)."""
    return jax.nn.gelu(x, approximate=False)


# transformers' ACT2FN names that seqjax reproduces
_ACTIVATIONS = {
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_new": gelu_tanh,
    "gelu": gelu_erf,
}


class _Sizes(NamedTuple):
    """The config, read and checked once."""

    vocab: int
    d_model: int
    layers: tuple  # "recurrent" or "attention", one per layer
    mlp: int  # F = intermediate_size // 2
    lru: int
    heads: int
    kv_heads: int
    head_dim: int
    rotary_fraction: float
    rope_theta: float
    window: int
    conv: int
    qkv_bias: bool
    eps: float
    activation: str
    soft_cap: float
    tied: bool


def bfloat16_round(x: float) -> float:
    """``x`` rounded to float32 and then to the nearest bfloat16 (8 significant bits,
    ties to even), as ``torch.tensor(x, dtype=torch.bfloat16)`` does from a Python
    float and Google's ``jnp.sqrt(d).astype(jnp.bfloat16)`` from a float32."""
    x = float(np.float32(x))
    if x == 0 or not math.isfinite(x):
        return x
    mantissa, exponent = math.frexp(x)  # x = mantissa * 2^exponent, 0.5 <= |mantissa| < 1
    return math.ldexp(round(mantissa * 256), exponent - 8)


def _rope(config):
    """``(theta, partial_rotary_factor)``: ``rope_parameters`` (or the legacy
    ``rope_scaling``) first, then the legacy top-level keys, then transformers'
    defaults (10000, 0.5)."""
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise HFError(f"recurrent_gemma: config option rope_parameters.rope_type={kind!r} is "
                      "not supported by seqjax (transformers supports only 'default' here)")
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    fraction = rope.get("partial_rotary_factor", config.get("partial_rotary_factor", 0.5))
    return float(theta), float(fraction)


# transformers' RecurrentGemmaConfig defaults, for keys a config.json leaves out
_DEFAULTS = dict(vocab_size=256000, hidden_size=2560, intermediate_size=3 * 2560,
                 num_hidden_layers=26, num_attention_heads=10, rms_norm_eps=1e-6,
                 hidden_activation="gelu_pytorch_tanh", attention_window_size=2048,
                 conv1d_width=4, logits_soft_cap=30.0, attention_bias=False,
                 tie_word_embeddings=True, block_types=["recurrent", "recurrent", "attention"])


def _sizes(config: dict) -> _Sizes:
    config = {**_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    positive = lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0  # noqa: E731
    D = option(config, "hidden_size", positive, "a positive int")
    V = option(config, "vocab_size", positive, "a positive int")
    N = option(config, "num_hidden_layers", positive, "a positive int")
    H = option(config, "num_attention_heads", positive, "a positive int")
    kinds = config["block_types"]
    if not kinds or any(k not in ("recurrent", "attention") for k in kinds):
        raise HFError(f"recurrent_gemma: config option block_types={kinds!r} is not supported "
                      "by seqjax: expected a non-empty list of 'recurrent' and 'attention'")
    K = config.get("num_key_value_heads") or H
    if not positive(K) or H % K:
        raise HFError(f"recurrent_gemma: config option num_key_value_heads={K!r} is not "
                      f"supported by seqjax: it must divide num_attention_heads ({H})")
    L = config.get("lru_width") or D
    if not positive(L) or L % H:
        raise HFError(f"recurrent_gemma: config option lru_width={L!r} is not supported by "
                      f"seqjax: num_attention_heads ({H}) must divide it")
    hd = config.get("head_dim") or D // H
    theta, fraction = _rope(config)
    rotated = int(hd * fraction)
    if rotated % 2 or rotated > hd:
        raise HFError(f"recurrent_gemma: config option partial_rotary_factor={fraction!r} is "
                      f"not supported by seqjax: int(head_dim * factor) = {rotated} must be "
                      f"even and at most head_dim ({hd})")
    act = option(config, "hidden_activation", tuple(_ACTIVATIONS),
                 f"supported: {', '.join(_ACTIVATIONS)}")
    cap = option(config, "logits_soft_cap",
                 lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
                 "transformers always applies the cap, so it must be positive")
    window = option(config, "attention_window_size", positive, "a positive int")
    conv = option(config, "conv1d_width", positive, "a positive int")
    F = option(config, "intermediate_size", lambda v: positive(v) and v >= 2,
               "at least 2 (the MLP is intermediate_size // 2 wide)") // 2
    eps = option(config, "rms_norm_eps",
                 lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
                 "a positive number")
    return _Sizes(V, D, tuple(kinds[i % len(kinds)] for i in range(N)), F, L, H, K, hd,
                  fraction, theta, window, conv, bool(config.get("attention_bias", False)),
                  float(eps), act, float(cap), bool(config.get("tie_word_embeddings", True)))


def _blocks(s: _Sizes, dtype, max_length: int):
    act = _ACTIVATIONS[s.activation]
    made = {
        "recurrent": lambda: griffin_block(
            s.d_model, lru_width=s.lru, num_heads=s.heads, conv_width=s.conv, mlp_hidden=s.mlp,
            activation=act, norm_eps=s.eps, param_dtype=dtype),
        "attention": lambda: local_attention_block(
            s.d_model, num_heads=s.heads, num_kv_heads=s.kv_heads, head_dim=s.head_dim,
            window=s.window, max_length=max_length, rotary_fraction=s.rotary_fraction,
            rope_theta=s.rope_theta, qkv_bias=s.qkv_bias, mlp_hidden=s.mlp, activation=act,
            norm_eps=s.eps, param_dtype=dtype),
    }
    return [made[kind]() for kind in s.layers]


def build(config: dict, *, dtype=jnp.float32, max_length: int = 4096) -> lm.Decoder:
    """The seqjax decoder of a RecurrentGemma config (see the module docstring)."""
    s = _sizes(config)
    return lm.language_model(
        s.vocab, s.d_model, _blocks(s, dtype, max_length), tie_embeddings=s.tied,
        final_norm=rms_norm(s.d_model, eps=s.eps, offset=1.0, param_dtype=dtype),
        embed_scale=bfloat16_round(math.sqrt(s.d_model)), logits_soft_cap=s.soft_cap,
        max_length=max_length, param_dtype=dtype, source={"hf_config": dict(config)})


# ---------------------------------------------------------------- the tensor table
# model.embed_tokens.weight [V, D]                  DecoderParams.embed
# model.final_norm.weight [D]                       DecoderParams.norm.scale
# lm_head.weight [V, D] (untied only)               DecoderParams.head (transposed)
# model.layers.{i}.:
#   temporal_pre_norm.weight, channel_pre_norm.weight [D]  ResidualParams.norm, .mlp_norm
#   mlp_block.{gate,up}_proj.{weight [F, D], bias}, down_proj.{weight [D, F], bias}
#   recurrent layers, temporal_block.:
#     linear_y, linear_x .{weight [L, D], bias}; linear_out.{weight [D, L], bias}
#     conv_1d.weight [L, 1, k] (w [k, L] transposed), conv_1d.bias [L]
#     rg_lru.recurrent_param [L]                        -lam
#     rg_lru.input_gate_{weight [H, bw, bw], bias [H, bw]}     w_x, b_x (flattened)
#     rg_lru.recurrent_gate_{weight, bias}                     w_a, b_a (flattened)
#   attention layers, temporal_block.:
#     q_proj [H hd, D], k_proj, v_proj [K hd, D] (biases with attention_bias),
#     o_proj.{weight [D, H hd], bias}


def _read_recurrent(t, p, s: _Sizes, dtype) -> RecurrentBlockParams:
    L, H = s.lru, s.heads
    bw = L // H

    def gate(name):  # block-diagonal [head, in, out] as stored; the bias flattened
        return (array(t.take(f"{p}rg_lru.{name}_weight", (H, bw, bw)), dtype),
                array(t.take(f"{p}rg_lru.{name}_bias", (H, bw)), dtype).reshape(L))

    w_x, b_x = gate("input_gate")
    w_a, b_a = gate("recurrent_gate")
    lam = -array(t.take(f"{p}rg_lru.recurrent_param", (L,)), dtype)
    return RecurrentBlockParams(
        read_linear(t, p + "linear_y", s.d_model, L, bias=True, dtype=dtype),
        read_linear(t, p + "linear_x", s.d_model, L, bias=True, dtype=dtype),
        read_conv(t, p + "conv_1d", L, s.conv, bias=True, dtype=dtype),
        RGLRUParams(w_a, b_a, w_x, b_x, lam),
        read_linear(t, p + "linear_out", L, s.d_model, bias=True, dtype=dtype))


def _write_recurrent(out, p, m: RecurrentBlockParams, s: _Sizes) -> None:
    bw = s.lru // s.heads
    write_linear(out, p + "linear_y", m.linear_y)
    write_linear(out, p + "linear_x", m.linear_x)
    write_conv(out, p + "conv_1d", m.conv)
    out[p + "rg_lru.recurrent_param"] = -numpy(m.rg_lru.lam)
    out[p + "rg_lru.input_gate_weight"] = numpy(m.rg_lru.w_x)
    out[p + "rg_lru.input_gate_bias"] = numpy(m.rg_lru.b_x).reshape(s.heads, bw)
    out[p + "rg_lru.recurrent_gate_weight"] = numpy(m.rg_lru.w_a)
    out[p + "rg_lru.recurrent_gate_bias"] = numpy(m.rg_lru.b_a).reshape(s.heads, bw)
    write_linear(out, p + "linear_out", m.linear_out)


def _read_attention(t, p, s: _Sizes, dtype) -> AttentionParams:
    D, q, kv = s.d_model, s.heads * s.head_dim, s.kv_heads * s.head_dim
    return AttentionParams(
        read_linear(t, p + "q_proj", D, q, bias=s.qkv_bias, dtype=dtype),
        read_linear(t, p + "k_proj", D, kv, bias=s.qkv_bias, dtype=dtype),
        read_linear(t, p + "v_proj", D, kv, bias=s.qkv_bias, dtype=dtype),
        read_linear(t, p + "o_proj", q, D, bias=True, dtype=dtype), None, None, None)


def _write_attention(out, p, m: AttentionParams, s: _Sizes) -> None:
    for name, part in (("q_proj", m.q), ("k_proj", m.k), ("v_proj", m.v), ("o_proj", m.o)):
        write_linear(out, p + name, part)


def read(config: dict, model: lm.Decoder, tensors, dtype) -> lm.DecoderParams:
    """Every tensor of a RecurrentGemma checkpoint, by name and shape."""
    s = _sizes(config)
    t, D = tensors, s.d_model
    blocks = []
    for i, kind in enumerate(s.layers):
        p = f"model.layers.{i}."
        mixer = (_read_recurrent if kind == "recurrent" else _read_attention)(
            t, p + "temporal_block.", s, dtype)
        mlp = GatedMLPParams(
            read_linear(t, p + "mlp_block.gate_proj", D, s.mlp, bias=True, dtype=dtype),
            read_linear(t, p + "mlp_block.up_proj", D, s.mlp, bias=True, dtype=dtype),
            read_linear(t, p + "mlp_block.down_proj", s.mlp, D, bias=True, dtype=dtype))
        blocks.append(ResidualParams(read_norm(t, p + "temporal_pre_norm", D, dtype), mixer,
                                     read_norm(t, p + "channel_pre_norm", D, dtype), mlp))
    embed = array(t.take("model.embed_tokens.weight", (s.vocab, D)), dtype)
    norm = read_norm(t, "model.final_norm", D, dtype)
    head = read_head(t, "lm_head.weight", s.vocab, D, s.tied, dtype)
    return lm.DecoderParams(embed, tuple(blocks), norm, head)


def write(config: dict, model: lm.Decoder, params: lm.DecoderParams) -> dict:
    """The inverse of :func:`read` (a tied head is not written)."""
    s = _sizes(config)
    out = {"model.embed_tokens.weight": numpy(params.embed)}
    for i, (kind, b) in enumerate(zip(s.layers, params.blocks)):
        p = f"model.layers.{i}."
        write_norm(out, p + "temporal_pre_norm", b.norm)
        write_norm(out, p + "channel_pre_norm", b.mlp_norm)
        (_write_recurrent if kind == "recurrent" else _write_attention)(
            out, p + "temporal_block.", b.mixer, s)
        write_linear(out, p + "mlp_block.gate_proj", b.mlp.gate)
        write_linear(out, p + "mlp_block.up_proj", b.mlp.up)
        write_linear(out, p + "mlp_block.down_proj", b.mlp.down)
    write_norm(out, "model.final_norm", params.norm)
    if params.head is not None:
        out["lm_head.weight"] = numpy(params.head).T
    return out


__all__ = ["bfloat16_round", "build", "read", "write"]
