"""``seqjax bench lm``: language models' training, prefill and decode speed and memory,
next to transformers (PyTorch) and Google's recurrentgemma (JAX) with the same weights.

For every block and a hybrid, at each model size (``d_model`` x layers) and batch:

* **train**: tokens/s of one optimisation step (forward, backward, AdamW update) at
  the training length;
* **prefill**: tokens/s of the forward pass over a prompt of ``T`` tokens that also
  returns the decoding state (``Decoder.prefill``; transformers: ``model(ids,
  use_cache=True)``), for ``T = 512 ... 8192``, and its memory;
* **decode**: tokens/s of greedy generation of ``n`` tokens after a short prompt
  (seqjax: one compiled prefill and a ``lax.scan`` of ``step``; transformers:
  ``generate(max_new_tokens=n)``), and how the decoding memory changes with ``n``.

Peers, in the same process, same shapes, float32 and the **same weights**: the seqjax
model of a block that transformers implements is built from a Hugging Face config by
:func:`seqjax.interop.hf.build`, initialised, written with :func:`seqjax.interop.hf.save`
and opened by ``transformers.AutoModelForCausalLM.from_pretrained`` (llama for
attention, mamba, mamba2, recurrent_gemma for Griffin and its hybrid, xlstm for the
mLSTM, qwen3_next with only linear-attention layers for Gated DeltaNet); Google's
``recurrentgemma`` JAX model runs Griffin with the same tensors mapped to its names.
Each peer's logits are compared with seqjax's on a short sequence before anything is
timed (the "same weights" table). The other blocks (local attention, sLSTM, DeltaNet,
LSTM, GRU) are built from names by :func:`seqjax.lm.language_model` and have no peer.

Timing follows ``seqjax bench``: compilation timed on its own, warm-up calls, then
``repeats`` timed calls each ended by ``block_until_ready`` (PyTorch on CPU is
synchronous); the median and the minimum are reported, and ratios are seqjax's median
over the peer's (< 1: seqjax is faster).

Memory, on a CPU where JAX has no allocator statistics: for seqjax the compiled
function's own buffer plan (``compiled.memory_analysis()``: arguments + outputs +
temporaries, the peak the function needs), and for every implementation the growth
of the process's peak resident set during the calls (``seqjax.bench.timing.Memory``).
Decoding memory against the generated length is the buffer plan of the compiled
decode loop for each length (arguments + temporaries; the generated tokens are left
out), with the state's own bytes from ``model.initial_state``.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import seqjax
from seqjax import _cli
from seqjax.bench import _common, timing
from seqjax.bench._common import layer_names

MiB = 2.0 ** 20

# ----------------------------------------------------------------------------- what


@dataclasses.dataclass(frozen=True)
class Entry:
    """One model family: its layer pattern (:func:`seqjax.bench.recall.layer_names`),
    the Hugging Face ``model_type`` that implements it (or ``None``) and whether
    Google's recurrentgemma runs it."""

    name: str
    hf_type: Optional[str] = None
    google: bool = False
    matrix_state: bool = False  # a matrix-valued state: prefill should be linear in T


ENTRIES = {e.name: e for e in (
    Entry("attention", "llama"),
    Entry("local_attention"),
    Entry("mamba", "mamba"),
    Entry("mamba2", "mamba2", matrix_state=True),
    Entry("griffin", "recurrent_gemma", google=True),
    Entry("mlstm", "xlstm", matrix_state=True),
    Entry("slstm"),
    Entry("deltanet", matrix_state=True),
    Entry("gated_deltanet", "qwen3_next", matrix_state=True),
    Entry("lstm"),
    Entry("gru"),
    # RecurrentGemma's pattern: two recurrent blocks, then local attention
    Entry("griffin+griffin+local_attention", "recurrent_gemma", google=True),
)}

# the blocks without global attention: their decoding state must not grow
GLOBAL_ATTENTION = ("attention",)


@dataclasses.dataclass(frozen=True)
class Size:
    name: str
    d_model: int
    layers: int


SIZES = {"tiny": Size("tiny", 64, 2), "small": Size("small", 256, 4),
         "medium": Size("medium", 768, 12)}


@dataclasses.dataclass(frozen=True)
class Grid:
    sizes: tuple
    batches: tuple
    vocab: int
    train_length: int
    prefill_lengths: tuple
    max_prefill_tokens: int  # B * T cap of a prefill call
    prompt: int  # decode: prompt length
    decode_steps: int  # decode: tokens generated (timed)
    memory_steps: tuple  # decode: generated lengths whose memory is compared
    blocks: tuple
    warmup: int
    repeats: int
    note: str = ""


GRIDS = {
    "tiny": Grid(("tiny",), (2,), 256, 64, (32, 64), 128, 8, 16, (16, 48),
                 ("attention", "gru"), 1, 2, "smoke run (CI)"),
    "default": Grid(("small",), (1, 8), 8192, 512, (512, 1024, 2048, 4096, 8192), 16384, 16,
                    256, (256, 1024), tuple(ENTRIES), 1, 3,
                    "d_model 256 x 4 layers; prefill at B*T <= 16384"),
    "full": Grid(("small", "medium"), (1, 8), 8192, 512, (512, 1024, 2048, 4096, 8192), 65536,
                 16, 256, (256, 1024, 4096), tuple(ENTRIES), 1, 3,
                 "d_model 256 x 4 and 768 x 12 layers; prefill at B*T <= 65536"),
}

# --------------------------------------------------------------------------- models


def _ceil(x, m):
    return -(-int(x) // m) * m


def hf_config(entry: Entry, size: Size, vocab: int) -> Optional[dict]:
    """The Hugging Face config of ``entry`` at ``size`` (``None``: no such model type).
    Each names its options explicitly, so seqjax's loader and transformers read the
    same model."""
    d, L, V = size.d_model, size.layers, vocab
    mlp = _ceil(8 * d / 3, 64)
    if entry.hf_type == "llama":
        heads = max(1, d // 64)
        return dict(model_type="llama", vocab_size=V, hidden_size=d, intermediate_size=mlp,
                    num_hidden_layers=L, num_attention_heads=heads, num_key_value_heads=heads,
                    hidden_act="silu", rms_norm_eps=1e-6, max_position_embeddings=65536,
                    tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
    if entry.hf_type == "mamba":
        return dict(model_type="mamba", vocab_size=V, hidden_size=d, state_size=16, expand=2,
                    conv_kernel=4, num_hidden_layers=L, time_step_rank="auto", use_bias=False,
                    use_conv_bias=True, hidden_act="silu", layer_norm_epsilon=1e-5,
                    use_mambapy=False, tie_word_embeddings=True)
    if entry.hf_type == "mamba2":
        return dict(model_type="mamba2", vocab_size=V, hidden_size=d, expand=2, head_dim=64,
                    num_heads=2 * d // 64, state_size=128, n_groups=1, chunk_size=256,
                    conv_kernel=4, num_hidden_layers=L, use_bias=False, use_conv_bias=True,
                    hidden_act="silu", layer_norm_epsilon=1e-5, tie_word_embeddings=False)
    if entry.hf_type == "recurrent_gemma":
        kinds = ["attention" if n == "local_attention" else "recurrent"
                 for n in layer_names(entry.name, L)]
        return dict(model_type="recurrent_gemma", vocab_size=V, hidden_size=d,
                    intermediate_size=6 * d, num_attention_heads=max(1, d // 256),
                    num_key_value_heads=1, lru_width=d, attention_window_size=2048,
                    block_types=kinds, num_hidden_layers=L, conv1d_width=4,
                    logits_soft_cap=30.0, rms_norm_eps=1e-6,
                    hidden_activation="gelu_pytorch_tanh", partial_rotary_factor=0.5,
                    tie_word_embeddings=True)
    if entry.hf_type == "xlstm":
        return dict(model_type="xlstm", vocab_size=V, hidden_size=d, num_heads=max(1, d // 128),
                    num_blocks=L, num_hidden_layers=L, qk_dim_factor=0.5, v_dim_factor=1.0,
                    ffn_proj_factor=2.667, ffn_round_up_to_multiple_of=64, gate_soft_cap=15.0,
                    output_logit_soft_cap=30.0, use_bias=False, norm_eps=1e-6, chunk_size=64,
                    mode="inference", autocast_kernel_dtype="float32",
                    inference_state_dtype="float32", weight_mode="single",
                    tie_word_embeddings=False)
    if entry.hf_type == "qwen3_next":
        heads = max(1, d // 128)
        return dict(model_type="qwen3_next", vocab_size=V, hidden_size=d, intermediate_size=mlp,
                    num_hidden_layers=L, layer_types=["linear_attention"] * L,
                    mlp_only_layers=list(range(L)), linear_conv_kernel_dim=4,
                    linear_key_head_dim=64, linear_value_head_dim=64,
                    linear_num_key_heads=heads, linear_num_value_heads=2 * heads,
                    num_attention_heads=max(1, d // 64), num_key_value_heads=1, head_dim=64,
                    hidden_act="silu", rms_norm_eps=1e-6, max_position_embeddings=65536,
                    tie_word_embeddings=False)
    return None


def build(entry: Entry, size: Size, vocab: int, max_length: int):
    """The seqjax model of ``entry`` whose global attention keeps ``max_length`` slots
    (the params do not depend on it)."""
    config = hf_config(entry, size, vocab)
    if config is not None:
        from seqjax.interop import hf

        return hf.build(config, max_length=max_length)
    from seqjax.blocks import block

    blocks = [block(n, size.d_model, max_length=max_length)
              for n in layer_names(entry.name, size.layers)]
    return seqjax.lm.language_model(vocab, size.d_model, blocks, max_length=max_length)


def state_bytes(model, params) -> int:
    state = jax.eval_shape(model.initial_state, params)
    return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize
                   for x in jax.tree_util.tree_leaves(state)))


# --------------------------------------------------------------------------- functions


def train_step(model, lr: float = 1e-4):
    """``(params, opt_state, tokens [B, T]) -> (params, opt_state, metrics)``: mean
    next-token cross-entropy, AdamW (:func:`seqjax.train.make_train_step`)."""
    optimizer = optax.adamw(lr)

    def loss_fn(params, tokens, rng):
        return jnp.mean(jax.vmap(model.loss, in_axes=(None, 0))(params, tokens))

    step = seqjax.train.make_train_step(loss_fn, optimizer)
    return (lambda params, opt_state, tokens: step(params, opt_state, tokens, None)), optimizer


def prefill_fn(model):
    """``(params, tokens [B, T]) -> (logits [B, T, V], state)``."""
    return jax.vmap(model.prefill, in_axes=(None, 0))


def decode_fn(model, steps: int):
    """``(params, prompt [B, P]) -> tokens [B, steps]``: greedy, one prefill then
    ``steps - 1`` steps in one ``lax.scan`` (what transformers' ``generate`` runs:
    the first new token comes from the prefill)."""
    prefill = jax.vmap(model.prefill, in_axes=(None, 0))
    step = jax.vmap(model.step, in_axes=(None, 0, 0))

    def run(params, prompt):
        logits, state = prefill(params, prompt)
        first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

        def body(carry, _):
            token, state = carry
            logits, state = step(params, token, state)
            nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            return (nxt, state), nxt

        _, rest = lax.scan(body, (first, state), None, length=steps - 1)
        return jnp.concatenate([first[:, None], rest.T], axis=1)

    return run


# --------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Measured:
    timing: timing.Timing
    xla: Optional[dict] = None  # argument, output, temp bytes of the compiled function


def _xla_bytes(compiled) -> Optional[dict]:
    try:
        s = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if s is None:
        return None
    return dict(argument=int(s.argument_size_in_bytes), output=int(s.output_size_in_bytes),
                temp=int(s.temp_size_in_bytes), alias=int(s.alias_size_in_bytes),
                code=int(getattr(s, "generated_code_size_in_bytes", 0)))


def time_jax(fn, args, *, warmup: int, repeats: int) -> Measured:
    """:func:`seqjax.bench.time_fn`'s discipline (compile timed apart, warm up,
    ``block_until_ready``, median and minimum) keeping the compiled function's buffer
    plan."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    memory = timing.Memory("jax")
    first, times, mem = timing.measure(lambda: compiled(*args), jax.block_until_ready,
                                       warmup=warmup, repeats=repeats, memory=memory)
    xla = _xla_bytes(compiled)
    return Measured(timing.Timing(statistics.median(times), min(times), times, compile_s, first,
                                  mem, memory.describe(),
                                  None if xla is None else xla["temp"]), xla)


def compiled_bytes(fn, args) -> Optional[dict]:
    """The buffer plan of ``jax.jit(fn)`` for ``args`` (compiled, not run)."""
    return _xla_bytes(jax.jit(fn).lower(*args).compile())


# a peer call slower than this is timed once: its first call is the figure (transformers'
# pure-PyTorch Mamba and RecurrentGemma loop over time in Python on CPU, and a training
# step of them at B=8 takes minutes)
SLOW_S = 20.0
# a peer call estimated (from its previous call in the same mode, scaled by the tokens)
# to take longer than this is not run; the row says so
PEER_CALL_BUDGET_S = 60.0


def time_torch(call, *, warmup: int, repeats: int, slow_s: float = SLOW_S) -> Measured:
    """:func:`seqjax.bench.timing.time_eager`, except that a first call slower than
    ``slow_s`` seconds is the one measurement (``times_s`` has one entry, memory is
    not measured)."""
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    if first > slow_s:
        return Measured(timing.Timing(first, first, [first], None, first, None,
                                      f"not measured (timed once: first call > {slow_s:g} s)"))
    t = timing.time_eager(call, lambda out: out, warmup=max(warmup - 1, 0),
                          repeats=repeats, memory=timing.Memory("torch"))
    return Measured(t)


# --------------------------------------------------------------------------- peers


class Skip(Exception):
    """A peer cannot run here; the message says why."""


def _installed(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


class TorchPeer:
    """transformers' ``AutoModelForCausalLM`` from the directory seqjax saved."""

    impl = "transformers"

    def __init__(self, path, hf_type):
        if not (_installed("torch") and _installed("transformers")):
            raise Skip("torch and transformers are not installed")
        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        self.torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32).eval()
        self.hf_type = hf_type
        self.what = (f"transformers {transformers.__version__} {type(self.model).__name__} "
                     f"({self.model.config._attn_implementation})")

    def ids(self, ids):
        return self.torch.tensor(np.asarray(ids, np.int64))

    def logits(self, ids):
        with self.torch.inference_mode():
            return self.model(self.ids(ids), use_cache=False).logits.float().numpy()

    def prefill(self, ids):
        x = self.ids(ids)

        def call():
            with self.torch.inference_mode():
                return self.model(input_ids=x, use_cache=True).logits

        return call

    def train(self, ids, lr=1e-4):
        torch = self.torch
        x = self.ids(ids)
        opt = torch.optim.AdamW(self.model.parameters(), lr=lr)

        def call():
            self.model.train()
            if self.hf_type == "xlstm":  # its training kernels (the config says inference)
                self.model.config.mode = "train"
            try:
                loss = self.model(input_ids=x, labels=x, use_cache=False).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            finally:
                self.model.eval()
                if self.hf_type == "xlstm":
                    self.model.config.mode = "inference"
            return loss

        return call

    def decode(self, ids, steps):
        torch = self.torch
        x = self.ids(ids)

        def call():
            with torch.inference_mode():
                return self.model.generate(x, attention_mask=torch.ones_like(x),
                                           max_new_tokens=steps, min_new_tokens=steps,
                                           do_sample=False, num_beams=1, eos_token_id=None,
                                           pad_token_id=0)

        return call

    def close(self):
        del self.model


def google_params(tensors: dict, block_types) -> dict:
    """Google's ``recurrentgemma.jax.Griffin`` params from transformers'
    ``RecurrentGemmaForCausalLM`` tensors (numpy, by name): the table of
    /tmp/spec/recurrent_gemma.md section 5.1."""
    f32 = lambda a: jnp.asarray(np.asarray(a, np.float32))  # noqa: E731
    params = {"embedder": {"input_embedding": f32(tensors["model.embed_tokens.weight"])},
              "final_norm": {"scale": f32(tensors["model.final_norm.weight"])}}
    for i, kind in enumerate(block_types):
        p, t, m = f"model.layers.{i}.", f"model.layers.{i}.temporal_block.", \
            f"model.layers.{i}.mlp_block."
        dense = lambda name: {"kernel": f32(tensors[t + name + ".weight"].T),  # noqa: E731
                              "bias": f32(tensors[t + name + ".bias"])}
        block = {
            "temporal_pre_norm": {"scale": f32(tensors[p + "temporal_pre_norm.weight"])},
            "channel_pre_norm": {"scale": f32(tensors[p + "channel_pre_norm.weight"])},
            "mlp_block": {
                "ffw_up": {"w": f32(np.stack([tensors[m + "gate_proj.weight"].T,
                                              tensors[m + "up_proj.weight"].T])),
                           "b": f32(np.stack([tensors[m + "gate_proj.bias"],
                                              tensors[m + "up_proj.bias"]])[:, None, None, :])},
                "ffw_down": {"kernel": f32(tensors[m + "down_proj.weight"].T),
                             "bias": f32(tensors[m + "down_proj.bias"])}},
        }
        if kind == "recurrent":
            block["recurrent_block"] = {
                "linear_x": dense("linear_x"), "linear_y": dense("linear_y"),
                "linear_out": dense("linear_out"),
                "conv_1d": {"w": f32(tensors[t + "conv_1d.weight"][:, 0, :].T),
                            "b": f32(tensors[t + "conv_1d.bias"])},
                "rg_lru": {
                    "a_param": f32(tensors[t + "rg_lru.recurrent_param"]),
                    "input_gate": {"w": f32(tensors[t + "rg_lru.input_gate_weight"]),
                                   "b": f32(tensors[t + "rg_lru.input_gate_bias"])},
                    "a_gate": {"w": f32(tensors[t + "rg_lru.recurrent_gate_weight"]),
                               "b": f32(tensors[t + "rg_lru.recurrent_gate_bias"])}}}
        else:
            block["attention_block"] = {
                "proj_q": {"kernel": f32(tensors[t + "q_proj.weight"].T)},
                "proj_k": {"kernel": f32(tensors[t + "k_proj.weight"].T)},
                "proj_v": {"kernel": f32(tensors[t + "v_proj.weight"].T)},
                "proj_final": {"kernel": f32(tensors[t + "o_proj.weight"].T),
                               "bias": f32(tensors[t + "o_proj.bias"])}}
        params[f"blocks.{i}"] = block
    return params


class GooglePeer:
    """Google's ``recurrentgemma.jax.Griffin`` with the tensors seqjax saved."""

    impl = "recurrentgemma"

    def __init__(self, path, config):
        if not _installed("recurrentgemma"):
            raise Skip("recurrentgemma is not installed")
        from recurrentgemma import common
        from recurrentgemma import jax as rg
        from safetensors.numpy import load_file

        tensors = {}
        for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
            tensors.update(load_file(f))
        kinds = tuple(common.TemporalBlockType.ATTENTION if k == "attention" else
                      common.TemporalBlockType.RECURRENT for k in config["block_types"])
        self.config = rg.GriffinConfig(
            vocab_size=config["vocab_size"], width=config["hidden_size"],
            mlp_expanded_width=config["intermediate_size"] // 2,
            num_heads=config["num_attention_heads"], block_types=kinds,
            embeddings_scale_by_sqrt_dim=True,
            # Google attends to window + 1 keys: its W - 1 is transformers' (and seqjax's) W
            attention_window_size=config["attention_window_size"] - 1,
            logits_soft_cap=config["logits_soft_cap"], lru_width=config["lru_width"])
        self.model = rg.Griffin(self.config, dtype=jnp.float32)
        self.params = google_params(tensors, config["block_types"])
        import recurrentgemma

        self.what = (f"recurrentgemma {getattr(recurrentgemma, '__version__', '')} "
                     f"jax Griffin (scan {self.config.scan_type.name})").replace("  ", " ")

    def _apply(self, params, tokens, positions, cache=None, return_cache=True):
        # Google's code relies on implicit dtype and rank promotion, which a caller's
        # strict settings (seqjax's tests) would reject
        with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
            return self.model.apply({"params": params}, tokens, positions, cache=cache,
                                    return_cache=return_cache)

    def logits(self, ids):
        ids = jnp.asarray(ids)
        pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        return np.asarray(jax.jit(self._apply)(self.params, ids, pos)[0])

    def prefill_fn(self):
        def run(params, tokens):
            pos = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
            return self._apply(params, tokens, pos)

        return run

    def train_step(self, lr=1e-4):
        optimizer = optax.adamw(lr)

        def loss_fn(params, tokens, rng):
            pos = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
            logits = self._apply(params, tokens, pos, return_cache=False)[0]
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
                logits[:, :-1].astype(jnp.float32), tokens[:, 1:]))

        step = seqjax.train.make_train_step(loss_fn, optimizer)
        return (lambda params, opt_state, tokens: step(params, opt_state, tokens, None)), optimizer

    def decode_fn(self, steps):
        def run(params, prompt):
            B, P = prompt.shape
            pos = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), prompt.shape)
            logits, cache = self._apply(params, prompt, pos)
            first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

            def body(carry, i):
                token, cache = carry
                where = jnp.full((B, 1), P + i, jnp.int32)
                logits, cache = self._apply(params, token[:, None], where, cache)
                nxt = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
                return (nxt, cache), nxt

            _, rest = lax.scan(body, (first, cache), jnp.arange(steps - 1, dtype=jnp.int32))
            return jnp.concatenate([first[:, None], rest.T], axis=1)

        return run

    def close(self):
        pass


# --------------------------------------------------------------------------- rows


def _row(entry, size, impl, what, mode, batch, length, **extra):
    row = dict(block=entry.name, size=size.name, d_model=size.d_model, layers=size.layers,
               impl=impl, what=what, mode=mode, batch=batch, length=length, status="ok",
               reason=None, median_s=None, min_s=None, tokens_per_s=None, compile_s=None,
               first_call_s=None, repeats=None, rss_growth_bytes=None, memory_kind=None,
               xla=None, state_bytes=None, ratios={})
    row.update(extra)
    return row


def _fill(row, measured: Measured, tokens: int):
    t = measured.timing
    row.update(median_s=t.median_s, min_s=t.min_s, tokens_per_s=tokens / t.median_s,
               compile_s=t.compile_s, first_call_s=t.first_call_s, repeats=len(t.times_s),
               rss_growth_bytes=t.memory_bytes, memory_kind=t.memory_kind, xla=measured.xla)


def _fail(row, status, error):
    row.update(status=status, reason=f"{type(error).__name__}: {error}"[:400])


def _tokens(seed, shape, vocab):
    return np.random.default_rng(seed).integers(0, vocab, size=shape).astype(np.int32)


def _measure(rows, row, fn, tokens):
    """Runs ``fn() -> Measured`` into ``row`` (appended), recording a failure instead
    of raising."""
    rows.append(row)
    try:
        _fill(row, fn(), tokens)
    except Skip as e:
        _fail(row, "skipped", e)
    except Exception as e:  # report, keep going
        _fail(row, "error", e)
    return row


def _open_peers(entry, size, grid, base, params, peers, seed, step):
    """Saves ``params``, opens each wanted peer on the saved files and compares its
    logits with seqjax's. Returns ``(live peers, check, temporary directory)``."""
    config = hf_config(entry, size, grid.vocab)
    wanted = [p for p in peers if (p == "transformers" and config is not None)
              or (p == "recurrentgemma" and entry.google)]
    if not wanted:
        return [], {}, None
    from seqjax.interop import hf

    tmp = tempfile.TemporaryDirectory(prefix="seqjax-bench-lm-")
    hf.save(base, params, tmp.name)
    probe = _tokens(seed + 7, (1, 32), grid.vocab)
    mine = np.asarray(jax.jit(prefill_fn(base))(params, jnp.asarray(probe))[0])
    live, check = [], {}
    for p in wanted:
        step(f"{entry.name} {size.name}: {p}")
        try:
            peer = (TorchPeer(tmp.name, config["model_type"]) if p == "transformers"
                    else GooglePeer(tmp.name, config))
            theirs = peer.logits(probe)
            check[p] = dict(what=peer.what, max_abs_diff=float(np.max(np.abs(theirs - mine))),
                            scale=float(np.max(np.abs(mine))), status="ok")
            live.append(peer)
        except Skip as e:
            check[p] = dict(status="skipped", reason=str(e))
        except Exception as e:
            check[p] = dict(status="error", reason=f"{type(e).__name__}: {e}"[:400])
    return live, check, tmp


def _peer_call(peer, mode, ids, grid, steps=None):
    """``() -> Measured`` for ``peer`` in ``mode`` on token ids ``ids``."""
    warm, reps = grid.warmup, grid.repeats
    if peer.impl == "transformers":
        call = {"train": lambda: peer.train(ids), "prefill": lambda: peer.prefill(ids),
                "decode": lambda: peer.decode(ids, steps)}[mode]()
        return lambda: time_torch(call, warmup=warm, repeats=reps)
    tokens = jnp.asarray(ids)
    if mode == "train":
        fn, opt = peer.train_step()
        return lambda: time_jax(fn, (peer.params, opt.init(peer.params), tokens), warmup=warm,
                                repeats=reps)
    fn = peer.prefill_fn() if mode == "prefill" else peer.decode_fn(steps)
    return lambda: time_jax(fn, (peer.params, tokens), warmup=warm, repeats=reps)


def _decode_memory(entry, size, grid, params, prompt, timed) -> dict:
    """The decode loop's buffer plan and state bytes for every generated length of
    ``grid.memory_steps`` (compiled, not run; ``timed``: the row of the timed one)."""
    out = {}
    for m in grid.memory_steps:
        try:
            model = build(entry, size, grid.vocab, max_length=grid.prompt + m)
            xla = (timed["xla"] if m == grid.decode_steps and timed["xla"] is not None else
                   compiled_bytes(decode_fn(model, m), (params, jnp.asarray(prompt))))
            out[m] = dict(xla=xla, state_bytes=state_bytes(model, params))
        except Exception as e:
            out[m] = dict(error=f"{type(e).__name__}: {e}"[:300])
    return out


def run_entry(entry: Entry, size: Size, grid: Grid, *, peers=("transformers", "recurrentgemma"),
              seed: int = 0, step=None) -> tuple:
    """Every measurement of one model at one size, seqjax and its peers.

    Returns:
      ``(rows, check)``: the measurement rows and the same-weights check (per peer:
      the largest absolute logit difference from seqjax, and the logits' scale).
    """
    step = step or (lambda text: None)
    V, warm, reps = grid.vocab, grid.warmup, grid.repeats
    step(f"{entry.name} {size.name}: build")
    base = build(entry, size, V, max_length=max(grid.prefill_lengths + (grid.train_length,)))
    params = base.init(jax.random.PRNGKey(seed))
    live, check, tmp = _open_peers(entry, size, grid, base, params, peers, seed, step)
    rows = []

    def measure(impl, what, mode, B, length, run, tokens, **extra):
        return _measure(rows, _row(entry, size, impl, what, mode, B, length, **extra), run,
                        tokens)

    last = {}  # (peer, mode) -> (seconds per call, tokens per call) of its last run

    def measure_peer(peer, mode, B, length, run, tokens):
        """A peer's measurement, skipped when its previous call in this mode, scaled by
        the tokens, says this one would take longer than ``PEER_CALL_BUDGET_S``."""
        seen = last.get((peer.impl, mode))
        if seen is not None and seen[0] * tokens / seen[1] > PEER_CALL_BUDGET_S:
            row = _row(entry, size, peer.impl, peer.what, mode, B, length)
            rows.append(row)
            _fail(row, "skipped", Skip(
                f"estimated {seen[0] * tokens / seen[1]:.0f} s per call ({seen[0]:.1f} s at "
                f"{seen[1]} tokens, scaled to {tokens}); over the {PEER_CALL_BUDGET_S:g} s "
                "budget of one call"))
            return row
        row = measure(peer.impl, peer.what, mode, B, length, run, tokens)
        if row["median_s"] is not None:
            last[(peer.impl, mode)] = (row["median_s"], tokens)
        return row

    try:
        for B in grid.batches:
            step(f"{entry.name} {size.name} B{B}: train")
            ids = _tokens(seed + 1, (B, grid.train_length), V)
            fn, opt = train_step(base)
            measure("seqjax", "seqjax.train.make_train_step (AdamW)", "train", B,
                    grid.train_length, lambda: time_jax(
                        fn, (params, opt.init(params), jnp.asarray(ids)), warmup=warm,
                        repeats=reps), B * grid.train_length)
            for peer in live:
                measure_peer(peer, "train", B, grid.train_length,
                             _peer_call(peer, "train", ids, grid), B * grid.train_length)

            for T in [T for T in grid.prefill_lengths if B * T <= grid.max_prefill_tokens]:
                step(f"{entry.name} {size.name} B{B}: prefill T{T}")
                model = build(entry, size, V, max_length=T)
                ids = _tokens(seed + 2, (B, T), V)
                measure("seqjax", "Decoder.prefill", "prefill", B, T,
                        lambda: time_jax(prefill_fn(model), (params, jnp.asarray(ids)),
                                         warmup=warm, repeats=reps), B * T,
                        state_bytes=state_bytes(model, params))
                for peer in live:
                    measure_peer(peer, "prefill", B, T, _peer_call(peer, "prefill", ids, grid),
                                 B * T)

            n = grid.decode_steps
            step(f"{entry.name} {size.name} B{B}: decode")
            prompt = _tokens(seed + 3, (B, grid.prompt), V)
            model = build(entry, size, V, max_length=grid.prompt + n)
            row = measure("seqjax", "prefill + lax.scan(step), greedy", "decode", B, n,
                          lambda: time_jax(decode_fn(model, n), (params, jnp.asarray(prompt)),
                                           warmup=warm, repeats=reps), B * n,
                          state_bytes=state_bytes(model, params))
            row["decode_memory"] = _decode_memory(entry, size, grid, params, prompt, row)
            for peer in live:
                measure_peer(peer, "decode", B, n, _peer_call(peer, "decode", prompt, grid, n),
                             B * n)
    finally:
        for peer in live:
            peer.close()
        if tmp is not None:
            tmp.cleanup()
    ratios(rows)
    return rows, check


def ratios(rows):
    """``ratios[peer] = seqjax median / peer median`` on every seqjax row that a peer
    measured at the same block, size, mode, batch and length."""
    for row in rows:
        if row["impl"] != "seqjax" or row["median_s"] is None:
            continue
        for other in rows:
            if (other["impl"] != "seqjax" and other["median_s"] is not None
                    and all(other[k] == row[k] for k in ("block", "size", "mode", "batch",
                                                          "length"))):
                row["ratios"][other["impl"]] = row["median_s"] / other["median_s"]


# --------------------------------------------------------------------------- targets


def _slope(points):
    """The least-squares slope of log(time) against log(T)."""
    if len(points) < 2:
        return None
    x = np.log([p[0] for p in points])
    y = np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def decode_growth(row) -> Optional[float]:
    """Bytes the decoding loop needs (arguments + temporaries) at the longest
    generated length over the shortest; ``None`` when not measured."""
    mem = {m: v for m, v in (row.get("decode_memory") or {}).items() if v.get("xla")}
    if len(mem) < 2:
        return None
    lo, hi = mem[min(mem)]["xla"], mem[max(mem)]["xla"]
    return (hi["argument"] + hi["temp"]) / max(lo["argument"] + lo["temp"], 1)


def targets(rows, checks) -> list:
    """The issue's targets, each ``dict(target, held, detail)`` (``held`` ``None``: not
    measured in this run)."""
    out = []
    seq = [r for r in rows if r["impl"] == "seqjax" and r["status"] == "ok"]

    def worst(mode, peer):
        vals = [(r["ratios"][peer], r) for r in seq if r["mode"] == mode and peer in r["ratios"]]
        return max(vals, key=lambda v: v[0]) if vals else None

    def where(r):
        return f"{r['block']} {r['size']} B{r['batch']} " + (
            f"T{r['length']}" if r["mode"] != "decode" else f"{r['length']} tokens")

    for mode, bound, text in (("prefill", 0.5, "forward (prefill) >= 2x faster than transformers"),
                              ("train", 0.5, "training step >= 2x faster than transformers"),
                              ("decode", 0.2, "decode tokens/s >= 5x transformers' generate")):
        w = worst(mode, "transformers")
        if w is None:
            out.append(dict(target=text, held=None, detail="no transformers peer ran"))
            continue
        bad = sorted({r["block"] for r in seq if r["mode"] == mode
                      and r["ratios"].get("transformers", 0) > bound})
        out.append(dict(target=text, held=w[0] <= bound,
                        detail=f"worst seqjax/transformers time ratio {w[0]:.2f} ({where(w[1])}; "
                               f"needs <= {bound})" + (f"; above it: {', '.join(bad)}" if bad
                                                       else "")))
    g = [(r["ratios"]["recurrentgemma"], r) for r in seq if "recurrentgemma" in r["ratios"]]
    if g:
        w = max(g, key=lambda v: v[0])
        bad = sorted({f"{r['block']} {r['mode']}" for v, r in g if v > 1.0})
        out.append(dict(target="Griffin <= 1.0x the time of recurrentgemma's JAX model",
                        held=w[0] <= 1.0,
                        detail=f"worst ratio {w[0]:.2f} ({where(w[1])}, {w[1]['mode']})"
                               + (f"; above 1: {', '.join(bad)}" if bad else "")))
    else:
        out.append(dict(target="Griffin <= 1.0x the time of recurrentgemma's JAX model",
                        held=None, detail="recurrentgemma did not run"))
    flat, grew, unknown = [], [], []
    for r in seq:
        if r["mode"] != "decode" or any(n in GLOBAL_ATTENTION for n in r["block"].split("+")):
            continue
        g = decode_growth(r)
        (unknown if g is None else flat if g <= 1.01 else grew).append(
            (r["block"], r["size"], r["batch"], g))
    if flat or grew:
        text = "decode memory flat in the generated length for every recurrent block"
        grown = ", ".join(f"{b} {s} B{B} x{g:.2f}" for b, s, B, g in grew)
        detail = f"{len({b for b, *_ in flat})} flat" + (f"; grew: {grown}" if grew else "")
        out.append(dict(target=text, held=not grew, detail=detail))
    slopes = []
    for name in dict.fromkeys(r["block"] for r in seq):
        if not ENTRIES.get(name, Entry(name)).matrix_state:
            continue
        for size in dict.fromkeys(r["size"] for r in seq):
            pre = [r for r in seq if r["block"] == name and r["size"] == size
                   and r["mode"] == "prefill"]
            pts = sorted((r["length"], r["median_s"]) for r in pre
                         if r["batch"] == min(q["batch"] for q in pre))
            pts = [p for p in pts if p[0] >= 1024] if sum(p[0] >= 1024 for p in pts) >= 2 else pts
            s = _slope(pts)
            if s is not None:
                slopes.append((name, size, s))
    if slopes:
        bad = [(n, s, v) for n, s, v in slopes if v > 1.15]
        out.append(dict(target="prefill of matrix-state blocks linear in T",
                        held=not bad,
                        detail="log-log slope of prefill time against T (smallest B; "
                               "T >= 1024 where measured): "
                               + ", ".join(f"{n} {s} {v:.2f}" for n, s, v in slopes)
                               + " (held: <= 1.15)"))
    bad_checks = [f"{b} {p}: {c.get('max_abs_diff', c.get('reason'))}"
                  for b, per in checks.items() for p, c in per.items()
                  if c["status"] != "ok" or c["max_abs_diff"] > 1e-3 * max(c["scale"], 1.0)]
    out.append(dict(target="peers run the same weights (logits within 1e-3 relative)",
                    held=not bad_checks if checks else None,
                    detail="; ".join(bad_checks) if bad_checks else
                    f"{sum(len(v) for v in checks.values())} peer model(s) checked"))
    return out


# --------------------------------------------------------------------------- report


def _num(v, digits=3):
    if v is None:
        return "—"
    if abs(v) >= 10 ** digits:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def _mib(v):
    return "—" if v is None else f"{v / MiB:.1f}"


_table = _common.table


def _xla_total(xla):
    return None if not xla else xla["argument"] + xla["output"] + xla["temp"] - xla["alias"]


def markdown(meta, rows, checks, goals) -> str:
    v = meta["versions"]
    vers = ", ".join(f"{k} {v[k]}" for k in ("jax", "jaxlib", "optax", "torch", "transformers",
                                              "recurrentgemma", "flax", "numpy") if v.get(k))
    g = meta["grid_settings"]
    lines = [
        "# Language models: train, prefill and decode against transformers and recurrentgemma",
        "",
        f"- date: {meta['date']}; grid `{meta['grid']}` ({g['note']}); {g['warmup']} warm-up "
        f"call(s), {g['repeats']} timed repeats; whole run {meta.get('wall_s', 0):.0f} s",
        f"- device: {meta['device']} ({meta['platform']}); {meta['cpu_count']} CPUs (affinity "
        f"{meta['cpu_affinity']}); torch threads {meta['torch_threads']}; "
        f"XLA_FLAGS={meta['xla_flags'] or 'unset'}",
        f"- versions: python {v['python']}, seqjax {v.get('seqjax')}, {vers}",
        f"- command: `seqjax bench lm {' '.join(meta['argv'])}`",
        f"- models: vocabulary {g['vocab']}, float32; sizes "
        + ", ".join(f"{s} (d_model {SIZES[s].d_model} x {SIZES[s].layers} layers)"
                    for s in g["sizes"]) + "; blocks with the published MLPs",
        f"- train: one AdamW step on B x {g['train_length']} tokens; prefill: forward over B x T "
        f"tokens returning the logits and the decoding state; decode: greedy, "
        f"{g['decode_steps']} new tokens after a {g['prompt']}-token prompt (tokens/s = B x new "
        "tokens / time, prefill of the prompt included)",
        "- ratio = seqjax median time / peer median time, same weights, shapes and dtype: "
        "**< 1 means seqjax is faster**",
        f"- memory: {meta['memory_note']}",
        "- timings are noisy on a shared machine; compare within one run. A peer call "
        f"slower than {SLOW_S:g} s is timed once (its first call) and its memory is not "
        f"measured; one estimated from its previous call to take over "
        f"{PEER_CALL_BUDGET_S:g} s is skipped (the row says so).",
        "",
        "## Targets",
        "",
        _table(["target", "held", "detail"],
               [[t["target"], {True: "**held**", False: "**not held**", None: "not measured"}[
                   t["held"]], t["detail"]] for t in goals]),
        "",
    ]
    seq = [r for r in rows if r["impl"] == "seqjax"]
    peers = [p for p in ("transformers", "recurrentgemma") if any(r["impl"] == p for r in rows)]
    for mode, title in (("train", "Training step"), ("prefill", "Prefill"),
                        ("decode", "Decode")):
        mine = [r for r in seq if r["mode"] == mode]
        if not mine:
            continue
        lines += [f"## {title}", ""]
        header = ["block", "size", "B", "T" if mode != "decode" else "new tokens",
                  "seqjax tokens/s", "median s", "min s", "compile s"]
        header += [f"{p} tokens/s" for p in peers] + [f"ratio vs {p}" for p in peers]
        if mode == "prefill":
            header += ["XLA MiB", "state MiB"]
        body = []
        for r in mine:
            line = [r["block"], r["size"], r["batch"], r["length"]]
            if r["status"] != "ok":
                line += [f"{r['status']}: {r['reason']}", "—", "—", "—"]
            else:
                line += [_num(r["tokens_per_s"]), _num(r["median_s"]), _num(r["min_s"]),
                         _num(r["compile_s"])]
            for p in peers:
                o = next((o for o in rows if o["impl"] == p and all(
                    o[k] == r[k] for k in ("block", "size", "mode", "batch", "length"))), None)
                line.append("—" if o is None else (_num(o["tokens_per_s"]) if o["status"] == "ok"
                                                   else o["status"]))
            for p in peers:
                line.append("—" if p not in r["ratios"] else f"{r['ratios'][p]:.2f}")
            if mode == "prefill":
                line += [_mib(_xla_total(r["xla"])), _mib(r["state_bytes"])]
            body.append(line)
        lines += [_table(header, body), ""]

    dec = [r for r in seq if r["mode"] == "decode" and r.get("decode_memory")]
    if dec:
        lengths = sorted({int(m) for r in dec for m in r["decode_memory"]})
        lines += ["## Decoding memory against the generated length", "",
                  "XLA buffer plan of the compiled decode loop (arguments + temporaries, the "
                  "generated tokens left out), MiB; state: `initial_state` bytes for that "
                  "length. Global attention keeps a slot per position, so it grows; every "
                  "other block keeps a fixed state.", ""]
        header = ["block", "size", "B"] + [f"n={m} MiB" for m in lengths] + [
            f"state n={m} MiB" for m in lengths] + ["growth"]
        body = []
        for r in dec:
            mem = {int(k): v for k, v in r["decode_memory"].items()}
            line = [r["block"], r["size"], r["batch"]]
            line += [_mib(mem[m]["xla"]["argument"] + mem[m]["xla"]["temp"])
                     if m in mem and mem[m].get("xla") else "—" for m in lengths]
            line += [_mib(mem[m].get("state_bytes")) if m in mem else "—" for m in lengths]
            gr = decode_growth(r)
            line.append("—" if gr is None else f"x{gr:.2f}")
            body.append(line)
        lines += [_table(header, body), ""]

    lines += ["## Same weights", "",
              "Before timing, each peer's logits on one 32-token sequence are compared with "
              "seqjax's prefill logits.", ""]
    body = [[b, p, c.get("what", "—"), _num(c.get("max_abs_diff"), 2),
             _num(c.get("scale")), c["status"] if c["status"] == "ok" else c.get("reason")]
            for b, per in checks.items() for p, c in per.items()]
    lines += [_table(["block", "peer", "implementation", "max abs logit diff", "logit scale",
                      "status"], body) if body else "(no peers ran)", ""]
    peer_rows = [r for r in rows if r["impl"] != "seqjax"]
    if peer_rows:
        lines += ["## Peers' rows", ""]
        body = [[r["impl"], r["block"], r["size"], r["mode"], r["batch"], r["length"],
                 _num(r["tokens_per_s"]) if r["status"] == "ok"
                 else f"{r['status']}: {r['reason']}",
                 _num(r["median_s"]), _num(r["min_s"]), _num(r["compile_s"]),
                 _mib(r["rss_growth_bytes"])] for r in peer_rows]
        lines += [_table(["peer", "block", "size", "mode", "B", "T / new", "tokens/s", "median s",
                          "min s", "compile s", "RSS growth MiB"], body), ""]
    return "\n".join(lines) + "\n"


def plot(out, rows):
    """``lm_prefill.png``: prefill time and memory against T (smallest batch), one line per
    implementation and block, one column per size. Returns the paths."""
    from seqjax._extras import require

    matplotlib = require("matplotlib", "seqjax bench lm's figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pre = [r for r in rows if r["mode"] == "prefill" and r["status"] == "ok"]
    smallest = min((r["batch"] for r in pre), default=None)
    pre = [r for r in pre if r["batch"] == smallest]
    sizes = list(dict.fromkeys(r["size"] for r in pre))
    if not pre or len({r["length"] for r in pre}) < 2:
        return {}
    series = list(dict.fromkeys((r["block"], r["impl"]) for r in pre))
    blocks = list(dict.fromkeys(b for b, _ in series))
    cmap = matplotlib.colormaps["tab20"]
    fig, axes = plt.subplots(2, len(sizes), squeeze=False, layout="constrained",
                             figsize=(5.5 * len(sizes) + 2.5, 7))
    handles = {}
    styles = {"seqjax": "-", "transformers": "--", "recurrentgemma": ":"}
    for col, size in enumerate(sizes):
        for block, impl in series:
            pts = sorted((r["length"], r) for r in pre if r["size"] == size
                         and r["block"] == block and r["impl"] == impl)
            if not pts:
                continue
            label = f"{block} ({impl})"
            kw = dict(color=cmap(blocks.index(block) % 20), linestyle=styles.get(impl, "-"),
                      marker="o", markersize=3, label=label)
            (line,) = axes[0, col].plot([p[0] for p in pts], [p[1]["median_s"] for p in pts],
                                        **kw)
            handles.setdefault(label, line)
            mem = [(t, (_xla_total(r["xla"]) if impl != "transformers" else r["rss_growth_bytes"]))
                   for t, r in pts]
            mem = [(t, m) for t, m in mem if m]
            if mem:
                axes[1, col].plot([p[0] for p in mem], [p[1] / MiB for p in mem], **kw)
        for row, ylabel in ((0, f"prefill time (s), B={smallest}"),
                            (1, "memory (MiB): XLA plan (JAX), RSS growth (torch)")):
            ax = axes[row, col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("T (tokens)")
            ax.set_ylabel(ylabel, fontsize=8)
            ax.set_title(f"{size}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
        ts = sorted({r["length"] for r in pre})
        ref = min(r["median_s"] for r in pre if r["size"] == size and r["length"] == ts[0])
        axes[0, col].plot(ts, [ref * t / ts[0] for t in ts], color="black", linewidth=0.8,
                          linestyle="-.", label="linear in T")
    fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=6,
               frameon=False)
    fig.suptitle("prefill against T (solid: seqjax, dashed: transformers, dotted: "
                 "recurrentgemma; dash-dot: linear)", fontsize=9)
    path = pathlib.Path(out) / "lm_prefill.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"figure": path}


def write(out, meta, rows, checks, goals, *, plots=True) -> dict:
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "lm.json", "markdown": out / "lm.md"}
    paths["json"].write_text(json.dumps(dict(meta=meta, rows=rows, checks=checks, targets=goals),
                                        indent=1, default=str, allow_nan=False))
    text = markdown(meta, rows, checks, goals)
    paths["markdown"].write_text(text)
    if plots:
        paths.update(plot(out, rows))
    paths["markdown_text"] = text
    return paths


# --------------------------------------------------------------------------- CLI


def metadata(args, argv, grid) -> dict:
    meta = _common.machine(("seqjax", "jax", "jaxlib", "optax", "torch", "transformers",
                            "recurrentgemma", "flax", "numpy", "safetensors"))
    threads = None
    if _installed("torch"):
        import torch

        threads = torch.get_num_threads()
    meta.update(
        torch_threads=threads, argv=list(argv), grid=args.grid,
        grid_settings=dataclasses.asdict(grid), peers=list(args.peers),
        memory_note=("seqjax and recurrentgemma: the compiled function's buffer plan "
                     "(`compiled.memory_analysis()`: arguments + outputs + temporaries - "
                     "aliased); every implementation: growth of the process's peak RSS "
                     f"during the calls ({timing.Memory('jax').describe()})"))
    return meta


PEERS = ("transformers", "recurrentgemma")


def parser():
    p = _cli.ArgumentParser(
        prog="seqjax bench lm",
        description="Time language models of every block (train step, prefill, decode) and "
                    "their memory, next to transformers' PyTorch models and Google's "
                    "recurrentgemma with the same weights; check the issue's targets; write "
                    "lm.json, lm.md and a figure.")
    p.add_argument("--grid", choices=sorted(GRIDS), default="default",
                   help="default: small size (256 x 4), B 1 and 8; full: also 768 x 12; "
                        "tiny: a smoke run")
    p.add_argument("--blocks", type=_cli.choice_list, default=None,
                   help="comma list of " + ", ".join(ENTRIES) + " (default: the grid's)")
    p.add_argument("--sizes", type=_cli.names(SIZES), default=None,
                   help="comma list of " + ", ".join(f"{k} ({s.d_model}x{s.layers})"
                                                     for k, s in SIZES.items()))
    p.add_argument("--batch", type=_cli.positive_ints, default=None, help="comma list of B")
    p.add_argument("--prefill-length", type=_cli.positive_ints, default=None,
                   help="comma list of prefill lengths T")
    p.add_argument("--train-length", type=_cli.positive_int, default=None,
                   help="training length")
    p.add_argument("--decode-steps", type=_cli.positive_int, default=None,
                   help="tokens generated in the timed decode")
    p.add_argument("--vocab", type=_cli.int_at_least(2), default=None, help="vocabulary size")
    p.add_argument("--peers", type=_cli.names(PEERS, none="none"), default=PEERS,
                   help="comma list of " + ", ".join(PEERS) + ", or none")
    p.add_argument("--repeats", type=_cli.positive_int, default=None, help="timed calls")
    p.add_argument("--warmup", type=_cli.nonnegative_int, default=None, help="untimed calls")
    p.add_argument("--out", default=os.path.join("results", "bench"),
                   help="output folder (default results/bench)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="write the figure (default: yes)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar (default: yes)")
    return p


def resolve(args) -> Grid:
    g = GRIDS[args.grid]
    grid = dataclasses.replace(
        g, blocks=args.blocks or g.blocks, sizes=args.sizes or g.sizes,
        batches=args.batch or g.batches, prefill_lengths=args.prefill_length or g.prefill_lengths,
        train_length=args.train_length or g.train_length,
        decode_steps=args.decode_steps or g.decode_steps, vocab=args.vocab or g.vocab,
        repeats=args.repeats or g.repeats,
        warmup=g.warmup if args.warmup is None else args.warmup)
    if args.prefill_length is not None or args.batch is not None:
        grid = dataclasses.replace(grid, max_prefill_tokens=max(
            grid.max_prefill_tokens, min(grid.batches) * max(grid.prefill_lengths)))
    if args.decode_steps is not None:
        grid = dataclasses.replace(grid, memory_steps=tuple(sorted(
            {grid.decode_steps, 4 * grid.decode_steps})))
    unknown = [b for b in grid.blocks if b not in ENTRIES]
    if unknown:
        raise ValueError(f"unknown block {unknown[0]!r}; choose from {', '.join(ENTRIES)}")
    return grid


def main(argv=None) -> int:
    """Runs the benchmark; returns 0, or 1 if a seqjax measurement failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        grid = resolve(args)
    except ValueError as e:
        print(f"seqjax bench lm: {e}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    work = [(ENTRIES[b], SIZES[s]) for s in grid.sizes for b in grid.blocks]
    start = time.perf_counter()
    rows, checks = [], {}
    bar = tqdm(work, desc="seqjax bench lm", unit="model", disable=not args.progress,
               dynamic_ncols=True)
    for entry, size in bar:
        def step(text):
            bar.set_postfix_str(text, refresh=True)

        try:
            r, c = run_entry(entry, size, grid, peers=args.peers, step=step)
        except Exception as e:  # the model itself failed to build
            r = [_row(entry, size, "seqjax", "", "build", None, None)]
            _fail(r[0], "error", e)
            c = {}
        rows.extend(r)
        if c:
            checks[f"{entry.name} {size.name}"] = c
    bar.close()
    goals = targets(rows, checks)
    meta = metadata(args, argv, grid)
    meta["wall_s"] = time.perf_counter() - start
    paths = write(args.out, meta, rows, checks, goals, plots=args.plots)
    print(paths["markdown_text"])
    print(f"\nwrote {', '.join(str(p) for k, p in paths.items() if k != 'markdown_text')} "
          f"in {meta['wall_s']:.1f} s")
    bad = [r for r in rows if r["impl"] == "seqjax" and r["status"] == "error"]
    for r in bad:
        print(f"seqjax bench lm: error in {r['block']} {r['size']} {r['mode']}: {r['reason']}",
              file=sys.stderr)
    return 1 if bad else 0
