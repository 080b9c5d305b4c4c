"""``model_type = "qwen3_next"``: ``Qwen3NextForCausalLM`` (transformers 5.25), dense
MLP layers only.

A hybrid of Gated DeltaNet layers (``"linear_attention"``,
:func:`seqjax.blocks.delta.gated_deltanet_layer`) and gated softmax attention
(``"full_attention"``, :func:`seqjax.layers.attention` with per-head ``(1 + w)``
RMSNorms on queries and keys, rotary embeddings on the first ``int(hd *
partial_rotary_factor)`` channels and the output gate ``sigmoid``), each in a pre-norm
residual block with a SwiGLU MLP. The decoder norms and the final norm multiply by
``1 + w``; the Gated DeltaNet's output norm by ``w``. All norms use ``rms_norm_eps``.

Checkpoint keys, per layer ``model.layers.{i}.`` (``W [out, in]``, transposed in
seqjax; ``Hk, Hv`` key and value heads of ``dk, dv`` channels, ``r = Hv / Hk``, ``W =
2 dk + 2 r dv``, ``C = 2 Hk dk + Hv dv``), and where seqjax keeps them:

* ``input_layernorm.weight [D]``, ``post_attention_layernorm.weight [D]``: ``norm``,
  ``mlp_norm``;
* ``mlp.{gate,up,down}_proj.weight`` ``[I, D], [I, D], [D, I]``: ``mlp.{gate,up,down}``;
* linear attention (:class:`~seqjax.blocks.delta.DeltaLayerParams`):
  ``linear_attn.in_proj_qkvz.weight [Hk W, D]``: ``mixer.q, k, v`` and
  ``mixer.rule.gate``; ``linear_attn.in_proj_ba.weight [2 Hv, D]``:
  ``mixer.rule.beta, alpha``; ``linear_attn.conv1d.weight [C, 1, k]``:
  ``mixer.conv.w [k, C]``; ``linear_attn.A_log, dt_bias [Hv]``: ``mixer.rule.a_log,
  dt_bias``; ``linear_attn.norm.weight [dv]``: ``mixer.rule.norm``;
  ``linear_attn.out_proj.weight [D, Hv dv]``: ``mixer.out``;
* full attention (:class:`~seqjax.layers.AttentionParams`):
  ``self_attn.q_proj.weight [2 H hd, D]`` (and ``bias``): ``mixer.q`` and
  ``mixer.gate``; ``self_attn.{k,v}_proj.weight [K hd, D]``, ``self_attn.o_proj.weight
  [D, H hd]`` (and biases with ``attention_bias``): ``mixer.k, v, o``;
  ``self_attn.{q,k}_norm.weight [hd]``: ``mixer.q_norm, k_norm``;

and ``model.embed_tokens.weight [V, D]``, ``model.norm.weight [D]``,
``lm_head.weight [V, D]`` (absent when ``tie_word_embeddings``). The two packed
projections are split by rows: ``in_proj_qkvz`` is ``[q_g | k_g | v_g | z_g]`` for each
key-head group ``g`` (``v_g, z_g`` the ``r`` value heads of the group), ``in_proj_ba``
``[b_g | a_g]`` likewise, and ``q_proj`` ``[query_n | gate_n]`` for each head ``n``;
the convolution's channels are ``[all q | all k | all v]`` as stored.

Refused, by name: mixture-of-experts layers (any layer not in ``mlp_only_layers`` while
``num_experts > 0`` and ``(i + 1) % decoder_sparse_step == 0``), ``rope_type``
``dynamic`` and ``longrope``, a ``hidden_act`` seqjax does not have, and layer types
other than the two. Multi-token-prediction weights (``mtp.*``) are not read (an error,
as any unread tensor).

Differences from transformers: none in the math. transformers runs the delta rule in
chunks of 64 with one triangular solve; seqjax in chunks of 32 (CPU) with the UT
transform: the same function, different float32 rounding. Its decoding state (a conv
history of ``k`` inputs, one more than is read) holds ``k - 1`` inputs here.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from seqjax import lm
from seqjax.blocks.delta import DeltaLayerParams, DeltaRuleParams, gated_deltanet_layer
from seqjax.blocks.residual import ResidualParams, residual
from seqjax.interop.hf._common import (array, numpy, read_conv, read_head, read_linear,
                                       read_norm, write_conv, write_linear, write_norm)
from seqjax.interop.hf._io import HFError
from seqjax.interop.hf._transformer import activation, rope, rope_parameters
from seqjax.layers._common import LinearParams
from seqjax.layers.attention import AttentionParams, attention
from seqjax.layers.mlp import GatedMLPParams, gated_mlp
from seqjax.layers.norms import rms_norm

# the class defaults of Qwen3NextConfig, for keys a config.json leaves out
DEFAULTS = dict(vocab_size=151936, hidden_size=2048, intermediate_size=5632,
                num_hidden_layers=48, num_attention_heads=16, num_key_value_heads=2,
                head_dim=256, hidden_act="silu", rms_norm_eps=1e-6,
                max_position_embeddings=32768, attention_bias=False, tie_word_embeddings=False,
                linear_conv_kernel_dim=4, linear_key_head_dim=128, linear_value_head_dim=128,
                linear_num_key_heads=16, linear_num_value_heads=32, decoder_sparse_step=1,
                num_experts=512, mlp_only_layers=None, layer_types=None)

LINEAR, FULL = "linear_attention", "full_attention"


def _settings(config: dict) -> dict:
    c = {k: config.get(k, v) for k, v in DEFAULTS.items()}
    N = c["num_hidden_layers"]
    if c["layer_types"] is None:
        every = config.get("full_attention_interval", 4)
        c["layer_types"] = [FULL if (i + 1) % every == 0 else LINEAR for i in range(N)]
    if len(c["layer_types"]) != N:
        raise HFError(f"qwen3_next: layer_types has {len(c['layer_types'])} entries for "
                      f"num_hidden_layers={N}")
    for i, kind in enumerate(c["layer_types"]):
        if kind not in (LINEAR, FULL):
            raise HFError(f"qwen3_next: config option layer_types[{i}]={kind!r} is not "
                          f"supported by seqjax (supported: {LINEAR!r}, {FULL!r})")
    dense = set(c["mlp_only_layers"] or [])
    experts, step = c["num_experts"], c["decoder_sparse_step"]
    moe = [i for i in range(N) if i not in dense and experts > 0
           and (step == 0 or (i + 1) % step == 0)]
    if moe:
        raise HFError(f"qwen3_next: mixture-of-experts layers {moe} are not supported by "
                      f"seqjax (config options num_experts={experts}, mlp_only_layers="
                      f"{c['mlp_only_layers']}, decoder_sparse_step={step}); only dense MLP "
                      "layers are")
    Hk, Hv = c["linear_num_key_heads"], c["linear_num_value_heads"]
    if Hv % Hk:
        raise HFError(f"qwen3_next: linear_num_value_heads={Hv} must be a multiple of "
                      f"linear_num_key_heads={Hk}")
    if c["num_attention_heads"] % c["num_key_value_heads"]:
        raise HFError(f"qwen3_next: num_key_value_heads={c['num_key_value_heads']} must "
                      f"divide num_attention_heads={c['num_attention_heads']}")
    c["rope"] = rope_parameters(config, max_position_embeddings=DEFAULTS["max_position_embeddings"],
                                partial_rotary_factor=0.25)
    c["rotary_dim"] = int(c["head_dim"] * c["rope"].get("partial_rotary_factor", 1.0))
    return c


def build(config: dict, *, dtype=jnp.float32, max_length: int = 4096) -> lm.Decoder:
    """The seqjax model of a Qwen3-Next ``config`` (see the module docstring)."""
    c = _settings(config)
    D, eps, act = c["hidden_size"], float(c["rms_norm_eps"]), activation(config)
    dk, dv = c["linear_key_head_dim"], c["linear_value_head_dim"]
    ab = bool(c["attention_bias"])
    norm = functools.partial(rms_norm, eps=eps, offset=1.0, param_dtype=dtype)
    mlp = gated_mlp(D, c["intermediate_size"], activation=act, param_dtype=dtype)
    mixers = {
        LINEAR: gated_deltanet_layer(
            D, num_heads=c["linear_num_key_heads"], num_v_heads=c["linear_num_value_heads"],
            head_dim=dk, expand_v=dv / dk, use_gate=True, conv_size=c["linear_conv_kernel_dim"],
            activation=act, norm_eps=eps, param_dtype=dtype),
        FULL: attention(
            D, c["num_attention_heads"], num_kv_heads=c["num_key_value_heads"],
            head_dim=c["head_dim"], max_length=max_length, rope=rope(c["rope"], c["rotary_dim"]),
            qk_norm=eps, qk_norm_offset=1.0, qkv_bias=ab, out_bias=ab, output_gate=True,
            gate_bias=ab, param_dtype=dtype),
    }
    blocks = {kind: residual(mixer, mlp=mlp, norm=norm) for kind, mixer in mixers.items()}
    return lm.language_model(c["vocab_size"], D, [blocks[kind] for kind in c["layer_types"]],
                             tie_embeddings=bool(c["tie_word_embeddings"]), final_norm=norm(D),
                             max_length=max_length, param_dtype=dtype,
                             source={"hf_config": dict(config)})


def _sizes(c):
    Hk, Hv = c["linear_num_key_heads"], c["linear_num_value_heads"]
    dk, dv = c["linear_key_head_dim"], c["linear_value_head_dim"]
    return Hk, Hv, dk, dv, Hv // Hk


def _read_linear_attention(t, name, c, dtype) -> DeltaLayerParams:
    D = c["hidden_size"]
    Hk, Hv, dk, dv, r = _sizes(c)
    conv_dim = 2 * Hk * dk + Hv * dv
    qkvz = array(t.take(f"{name}.in_proj_qkvz.weight", (Hk * (2 * dk + 2 * r * dv), D)), dtype)
    qkvz = qkvz.reshape(Hk, 2 * dk + 2 * r * dv, D)  # per key-head group [q | k | v | z]
    ba = array(t.take(f"{name}.in_proj_ba.weight", (2 * Hv, D)), dtype).reshape(Hk, 2 * r, D)
    ends = np.cumsum([dk, dk, r * dv, r * dv])

    def rows(part, group_rows):
        return LinearParams(part.reshape(group_rows, D).T, None)

    q, k, v, z = (qkvz[:, a:b] for a, b in zip([0, *ends[:-1]], ends))
    rule = DeltaRuleParams(
        beta=rows(ba[:, :r], Hv), alpha=rows(ba[:, r:], Hv),
        a_log=array(t.take(f"{name}.A_log", (Hv,)), dtype),
        dt_bias=array(t.take(f"{name}.dt_bias", (Hv,)), dtype),
        gate=rows(z, Hv * dv),
        norm=read_norm(t, f"{name}.norm", dv, dtype))
    return DeltaLayerParams(
        q=rows(q, Hk * dk), k=rows(k, Hk * dk), v=rows(v, Hv * dv),
        conv=read_conv(t, f"{name}.conv1d", conv_dim, c["linear_conv_kernel_dim"], bias=False,
                       dtype=dtype),
        rule=rule,
        out=read_linear(t, f"{name}.out_proj", Hv * dv, D, bias=False, dtype=dtype))


def _write_linear_attention(out, name, p: DeltaLayerParams, c):
    D = c["hidden_size"]
    Hk, Hv, dk, dv, r = _sizes(c)

    def groups(lin):  # w [D, Hk * n] -> [Hk, n, D]
        return numpy(lin.w).T.reshape(Hk, -1, D)

    out[f"{name}.in_proj_qkvz.weight"] = np.concatenate(
        [groups(p.q), groups(p.k), groups(p.v), groups(p.rule.gate)], axis=1).reshape(-1, D)
    out[f"{name}.in_proj_ba.weight"] = np.concatenate(
        [groups(p.rule.beta), groups(p.rule.alpha)], axis=1).reshape(-1, D)
    write_conv(out, f"{name}.conv1d", p.conv)
    out[f"{name}.A_log"] = numpy(p.rule.a_log)
    out[f"{name}.dt_bias"] = numpy(p.rule.dt_bias)
    write_norm(out, f"{name}.norm", p.rule.norm)
    write_linear(out, f"{name}.out_proj", p.out)


def _read_full_attention(t, name, c, dtype) -> AttentionParams:
    D, H, K, hd = (c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"],
                   c["head_dim"])
    ab = bool(c["attention_bias"])
    # q_proj: [query_n | gate_n] for each head n
    qg = array(t.take(f"{name}.q_proj.weight", (2 * H * hd, D)), dtype).reshape(H, 2, hd, D)
    qg_b = (array(t.take(f"{name}.q_proj.bias", (2 * H * hd,)), dtype).reshape(H, 2, hd)
            if ab else None)

    def half(j):
        return LinearParams(qg[:, j].reshape(H * hd, D).T,
                            None if qg_b is None else qg_b[:, j].reshape(H * hd))

    return AttentionParams(
        q=half(0),
        k=read_linear(t, f"{name}.k_proj", D, K * hd, bias=ab, dtype=dtype),
        v=read_linear(t, f"{name}.v_proj", D, K * hd, bias=ab, dtype=dtype),
        o=read_linear(t, f"{name}.o_proj", H * hd, D, bias=ab, dtype=dtype),
        gate=half(1),
        q_norm=array(t.take(f"{name}.q_norm.weight", (hd,)), dtype),
        k_norm=array(t.take(f"{name}.k_norm.weight", (hd,)), dtype))


def _write_full_attention(out, name, p: AttentionParams, c):
    D, H, hd = c["hidden_size"], c["num_attention_heads"], c["head_dim"]
    out[f"{name}.q_proj.weight"] = np.stack(
        [numpy(p.q.w).T.reshape(H, hd, D), numpy(p.gate.w).T.reshape(H, hd, D)],
        axis=1).reshape(2 * H * hd, D)
    if p.q.b is not None:
        out[f"{name}.q_proj.bias"] = np.stack(
            [numpy(p.q.b).reshape(H, hd), numpy(p.gate.b).reshape(H, hd)],
            axis=1).reshape(2 * H * hd)
    for proj, lin in (("k_proj", p.k), ("v_proj", p.v), ("o_proj", p.o)):
        write_linear(out, f"{name}.{proj}", lin)
    out[f"{name}.q_norm.weight"] = numpy(p.q_norm)
    out[f"{name}.k_norm.weight"] = numpy(p.k_norm)


def read(config: dict, model, tensors, dtype) -> lm.DecoderParams:
    """Every tensor of a (dense) Qwen3-Next checkpoint, by name and shape."""
    c = _settings(config)
    V, D, I = c["vocab_size"], c["hidden_size"], c["intermediate_size"]
    blocks = []
    for i, kind in enumerate(c["layer_types"]):
        layer = f"model.layers.{i}"
        mixer = (_read_linear_attention(tensors, f"{layer}.linear_attn", c, dtype)
                 if kind == LINEAR else
                 _read_full_attention(tensors, f"{layer}.self_attn", c, dtype))
        mlp = GatedMLPParams(*(read_linear(tensors, f"{layer}.mlp.{proj}", *sizes, bias=False,
                                           dtype=dtype)
                               for proj, sizes in (("gate_proj", (D, I)), ("up_proj", (D, I)),
                                                   ("down_proj", (I, D)))))
        blocks.append(ResidualParams(read_norm(tensors, f"{layer}.input_layernorm", D, dtype),
                                     mixer,
                                     read_norm(tensors, f"{layer}.post_attention_layernorm", D,
                                               dtype),
                                     mlp))
    return lm.DecoderParams(
        embed=array(tensors.take("model.embed_tokens.weight", (V, D)), dtype),
        blocks=tuple(blocks),
        norm=read_norm(tensors, "model.norm", D, dtype),
        head=read_head(tensors, "lm_head.weight", V, D, bool(c["tie_word_embeddings"]), dtype))


def write(config: dict, model, params: lm.DecoderParams) -> dict:
    """The inverse of :func:`read`: ``{name: array}`` (a tied head is not written)."""
    c = _settings(config)
    out = {"model.embed_tokens.weight": numpy(params.embed)}
    for i, (kind, block) in enumerate(zip(c["layer_types"], params.blocks)):
        layer = f"model.layers.{i}"
        write_norm(out, f"{layer}.input_layernorm", block.norm)
        if kind == LINEAR:
            _write_linear_attention(out, f"{layer}.linear_attn", block.mixer, c)
        else:
            _write_full_attention(out, f"{layer}.self_attn", block.mixer, c)
        write_norm(out, f"{layer}.post_attention_layernorm", block.mlp_norm)
        for proj, lin in zip(("gate_proj", "up_proj", "down_proj"), block.mlp):
            write_linear(out, f"{layer}.mlp.{proj}", lin)
    write_norm(out, "model.norm", params.norm)
    if params.head is not None:
        out["lm_head.weight"] = numpy(params.head).T
    return out
