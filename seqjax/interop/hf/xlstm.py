"""transformers' ``xLSTMForCausalLM`` (``model_type: xlstm``, xLSTM 7B) as
:func:`seqjax.lm.language_model` of :func:`seqjax.blocks.xlstm.mlstm_block` blocks.

Tensors (``{n}`` a block; ``QK = int(D * qk_dim_factor)``, ``VD = int(D *
v_dim_factor)``, ``NH`` heads, ``U = round_up(D * ffn_proj_factor,
ffn_round_up_to_multiple_of)``); every ``.weight [out, in]`` of a Linear is transposed:

================================================================  ==================================
``backbone.embeddings.weight [V, D]``                             ``embed``
``backbone.blocks.{n}.norm_mlstm.weight [D]``                     ``blocks[n].norm.scale``
``backbone.blocks.{n}.mlstm_layer.q.weight [QK, D]``              ``mixer.q.w``
``backbone.blocks.{n}.mlstm_layer.k.weight [QK, D]``              ``mixer.k.w``
``backbone.blocks.{n}.mlstm_layer.v.weight [VD, D]``              ``mixer.v.w``
``backbone.blocks.{n}.mlstm_layer.igate_preact.{weight,bias}``    ``mixer.igate.w``, ``.b``
``backbone.blocks.{n}.mlstm_layer.fgate_preact.{weight,bias}``    ``mixer.fgate.w``, ``.b``
``backbone.blocks.{n}.mlstm_layer.ogate_preact.weight [VD, D]``   ``mixer.ogate.w``
``backbone.blocks.{n}.mlstm_layer.multihead_norm.weight [VD]``    ``mixer.norm.scale``
``backbone.blocks.{n}.mlstm_layer.out_proj.weight [D, VD]``       ``mixer.out_proj.w``
``backbone.blocks.{n}.norm_ffn.weight [D]``                       ``blocks[n].mlp_norm.scale``
``backbone.blocks.{n}.ffn.proj_up_gate.weight [U, D]``            ``mlp.gate.w`` (the SiLU branch)
``backbone.blocks.{n}.ffn.proj_up.weight [U, D]``                 ``mlp.up.w``
``backbone.blocks.{n}.ffn.proj_down.weight [D, U]``               ``mlp.down.w``
``backbone.out_norm.weight [D]``                                  ``norm.scale``
``lm_head.weight [V, D]``                                         ``head``, always (never tied)
================================================================  ==================================

plus, with ``use_bias``, a ``.bias`` on every Linear above except the gates (which always
have one), on ``norm_mlstm``, ``norm_ffn`` and ``multihead_norm`` (never on
``out_norm``).

What transformers does, and seqjax with it: ``out_norm`` always exists (transformers
ignores ``add_out_norm``) and the head is never tied (``xLSTMForCausalLM`` declares no
tied weights, so ``tie_word_embeddings`` changes nothing and ``lm_head.weight`` is
always in the file); the q/k width is ``int(D * qk_dim_factor)`` (the config's rounded
``qk_dim`` property sizes only transformers' cache); ``eps`` is the mLSTM read-out's
epsilon and ``norm_eps`` that of every norm; the gate soft cap applies to the input and
forget pre-activations with their biases, the logit soft cap after the head; the
mLSTM's stabiliser starts at ``m_0 = 0``. ``weight_mode="fused"`` is refused:
transformers 5.25 can neither build nor load such a model.

Differences, none of which changes a float32 model's numbers: seqjax computes every
norm's statistics in float32 at least, also where ``norm_reduction_force_float32`` is
false (transformers then reduces the block norms in the model's dtype); the mLSTM
state is kept in the params' dtype, where transformers keeps it in
``inference_state_dtype``. transformers runs a multi-token forward on a cache by
padding to whole chunks with neutral steps (``f = 25, i = -25``: a ~1e-11 relative
change of the state); seqjax's chunkwise form is exact. ``chunk_size``, ``mode``, the
kernel names and ``max_inference_chunksize`` choose transformers' kernels only.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from seqjax import lm
from seqjax.blocks.residual import ResidualParams
from seqjax.blocks.xlstm import MLSTMLayerParams, mlstm_block, round_up
from seqjax.interop.hf._common import (array, numpy, read_linear, read_norm, write_linear,
                                       write_norm)
from seqjax.interop.hf._io import HFError
from seqjax.layers.mlp import GatedMLPParams
from seqjax.layers.norms import rms_norm

# xLSTMConfig's defaults (transformers 5.25), for keys a config.json leaves out
DEFAULTS = dict(vocab_size=50304, hidden_size=4096, num_hidden_layers=32, num_heads=8,
                qk_dim_factor=0.5, v_dim_factor=1.0, use_bias=False, norm_eps=1e-6, eps=1e-6,
                gate_soft_cap=15.0, output_logit_soft_cap=30.0, ffn_proj_factor=2.667,
                ffn_round_up_to_multiple_of=64, weight_mode="single")


class Sizes(NamedTuple):
    """What the config fixes: ``V, D, L`` (blocks), ``NH`` (heads), ``QK, VD`` (the
    q/k and v widths), ``U`` (the MLP's width) and the options of the math."""

    V: int
    D: int
    L: int
    NH: int
    QK: int
    VD: int
    U: int
    bias: bool
    eps: float
    norm_eps: float
    gate_soft_cap: Optional[float]
    logit_soft_cap: Optional[float]


def _get(config: dict, name: str):
    value = config.get(name)
    return DEFAULTS[name] if value is None and name in DEFAULTS else value


def _alias(config: dict, name: str, alias: str) -> int:
    """``config[alias]`` if set, else ``config[name]``; both set must agree
    (transformers keeps each key's own default when a config sets only one)."""
    value, other = config.get(alias), config.get(name)
    if value is not None and other is not None and int(value) != int(other):
        raise HFError(f"xlstm: config options {alias}={value!r} and {name}={other!r} disagree; "
                      f"transformers would size parts of the model with each")
    return int(value if value is not None else _get(config, name))


def sizes(config: dict) -> Sizes:
    """The sizes and options of ``config``, checked; unsupported options raise
    :class:`~seqjax.interop.hf.HFError` naming them."""
    mode = _get(config, "weight_mode")
    if mode != "single":
        raise HFError(f"xlstm: config option weight_mode={mode!r} is not supported by seqjax: "
                      "only 'single' (transformers 5.25 cannot build or load a 'fused' "
                      "model either)")
    D = _alias(config, "hidden_size", "embedding_dim")
    L = _alias(config, "num_hidden_layers", "num_blocks")
    NH = int(_get(config, "num_heads"))
    QK = int(D * float(_get(config, "qk_dim_factor")))
    VD = int(D * float(_get(config, "v_dim_factor")))
    for name, width in (("qk_dim_factor", QK), ("v_dim_factor", VD)):
        if width < NH or width % NH:
            raise HFError(f"xlstm: config option {name}={_get(config, name)!r} gives a width of "
                          f"{width}, not a positive multiple of num_heads={NH}")
    U = round_up(D * float(_get(config, "ffn_proj_factor")),
                 int(_get(config, "ffn_round_up_to_multiple_of")))
    caps = [config.get(k, DEFAULTS[k]) for k in ("gate_soft_cap", "output_logit_soft_cap")]
    return Sizes(int(_get(config, "vocab_size")), D, L, NH, QK, VD, U,
                 bool(_get(config, "use_bias")), float(_get(config, "eps")),
                 float(_get(config, "norm_eps")),
                 *(None if c is None else float(c) for c in caps))


def build(config: dict, *, dtype, max_length) -> lm.Decoder:
    s = sizes(config)
    # the factors themselves: the block takes int(D * factor), as transformers does
    blocks = [mlstm_block(s.D, num_heads=s.NH,
                          qk_dim_factor=float(_get(config, "qk_dim_factor")),
                          v_dim_factor=float(_get(config, "v_dim_factor")),
                          gate_soft_cap=s.gate_soft_cap, eps=s.eps,
                          norm_eps=s.norm_eps,
                          ffn_proj_factor=float(_get(config, "ffn_proj_factor")),
                          ffn_round_up_to_multiple_of=int(_get(config,
                                                               "ffn_round_up_to_multiple_of")),
                          bias=s.bias, num_blocks=s.L, param_dtype=dtype)
              for _ in range(s.L)]
    # out_norm: always, without a bias; the head: never tied (as transformers)
    return lm.language_model(s.V, s.D, blocks, tie_embeddings=False,
                             final_norm=rms_norm(s.D, eps=s.norm_eps, param_dtype=dtype),
                             logits_soft_cap=s.logit_soft_cap, param_dtype=dtype,
                             source={"hf_config": config})


def _table(s: Sizes):
    """``(name under backbone.blocks.{n}., (part, field), size_in or None for a norm,
    size_out, bias)`` of every tensor group of a block."""
    D, QK, VD, NH, U, b = s.D, s.QK, s.VD, s.NH, s.U, s.bias
    return (
        ("norm_mlstm", ("norm", None), None, D, b),
        ("mlstm_layer.q", ("mixer", "q"), D, QK, b),
        ("mlstm_layer.k", ("mixer", "k"), D, QK, b),
        ("mlstm_layer.v", ("mixer", "v"), D, VD, b),
        ("mlstm_layer.igate_preact", ("mixer", "igate"), D, NH, True),
        ("mlstm_layer.fgate_preact", ("mixer", "fgate"), D, NH, True),
        ("mlstm_layer.ogate_preact", ("mixer", "ogate"), D, VD, b),
        ("mlstm_layer.multihead_norm", ("mixer", "norm"), None, VD, b),
        ("mlstm_layer.out_proj", ("mixer", "out_proj"), VD, D, b),
        ("norm_ffn", ("mlp_norm", None), None, D, b),
        ("ffn.proj_up_gate", ("mlp", "gate"), D, U, b),
        ("ffn.proj_up", ("mlp", "up"), D, U, b),
        ("ffn.proj_down", ("mlp", "down"), U, D, b),
    )


def read(config: dict, model, tensors, dtype) -> lm.DecoderParams:
    s = sizes(config)
    blocks = []
    for n in range(s.L):
        parts = {"mixer": {}, "mlp": {}}
        for name, (part, field), size_in, size_out, bias in _table(s):
            name = f"backbone.blocks.{n}.{name}"
            value = (read_norm(tensors, name, size_out, dtype, bias=bias) if size_in is None
                     else read_linear(tensors, name, size_in, size_out, bias=bias, dtype=dtype))
            if field is None:
                parts[part] = value
            else:
                parts[part][field] = value
        blocks.append(ResidualParams(parts["norm"], MLSTMLayerParams(**parts["mixer"]),
                                     parts["mlp_norm"], GatedMLPParams(**parts["mlp"])))
    return lm.DecoderParams(
        embed=array(tensors.take("backbone.embeddings.weight", (s.V, s.D)), dtype),
        blocks=tuple(blocks),
        norm=read_norm(tensors, "backbone.out_norm", s.D, dtype),
        head=array(tensors.take("lm_head.weight", (s.V, s.D)), dtype).T)


def write(config: dict, model, params: lm.DecoderParams) -> dict:
    s = sizes(config)
    out = {"backbone.embeddings.weight": numpy(params.embed)}
    for n, block in enumerate(params.blocks):
        for name, (part, field), size_in, _, _ in _table(s):
            value = getattr(block, part)
            value = value if field is None else getattr(value, field)
            name = f"backbone.blocks.{n}.{name}"
            (write_norm if size_in is None else write_linear)(out, name, value)
    write_norm(out, "backbone.out_norm", params.norm)
    head = params.embed.T if params.head is None else params.head
    out["lm_head.weight"] = numpy(head).T
    return out


__all__ = ["DEFAULTS", "Sizes", "build", "read", "sizes", "write"]
