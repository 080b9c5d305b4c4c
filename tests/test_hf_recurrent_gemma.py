"""RecurrentGemma checkpoints (seqjax.interop.hf.recurrent_gemma) against transformers.

A tiny random ``RecurrentGemmaForCausalLM`` (two recurrent layers and one local
attention layer with a window of 16, multi-query, partial rotary), N(0, 0.1) noise on
every vector and on the RG-LRU gate biases (which a fresh init leaves at zero), saved
with ``save_pretrained``: its logits, its greedy generation, prefill + step, the way
back (``hf.save`` opened by transformers), a second configuration with the options the
first leaves at their defaults, and the loader's errors.
"""

import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM, RecurrentGemmaConfig, RecurrentGemmaForCausalLM

from seqjax.interop import hf
from seqjax.interop.hf import HFError
from seqjax.interop.hf.recurrent_gemma import bfloat16_round

# /work/shared/hf_tiny_configs.md
TINY = dict(vocab_size=64, hidden_size=48, intermediate_size=96, num_attention_heads=4,
            num_key_value_heads=1, attention_window_size=16,
            block_types=["recurrent", "recurrent", "attention"], num_hidden_layers=3,
            conv1d_width=4, logits_soft_cap=30.0)
T = 40  # crosses the window of 16 twice


def _torch_model(config, seed=0):
    torch.manual_seed(seed)
    model = RecurrentGemmaForCausalLM._from_config(config, attn_implementation="eager",
                                                   dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1 or not bool(p.any()):  # vectors, and the zero gate biases
                p.add_(0.1 * torch.randn(p.shape))
    return model


def _logits(torch_model, ids):
    with torch.no_grad():
        return torch_model(torch.tensor(np.asarray(ids)), use_cache=False).logits.numpy()


def _ids(shape, vocab=64, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, shape)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``(torch model, directory)``: the tiny model, saved once."""
    model = _torch_model(RecurrentGemmaConfig(**TINY))
    path = tmp_path_factory.mktemp("recurrent_gemma")
    model.save_pretrained(path, safe_serialization=True)
    return model, path


@pytest.fixture(scope="module")
def loaded(saved):
    return hf.load(saved[1])


def _batched_apply(model):
    return jax.jit(jax.vmap(model.apply, in_axes=(None, 0)))


def _within(ours, ref, rtol=1e-4):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    diff, scale = np.abs(ours - ref).max(), np.abs(ref).max()
    print(f"max |diff| = {diff:.3g}, max |logits| = {scale:.3g}, ratio {diff / scale:.3g}")
    assert diff <= rtol * scale


def test_logits_equal_transformers(saved, loaded):
    torch_model, _ = saved
    model, params = loaded
    ids = _ids((2, T))
    _within(_batched_apply(model)(params, jnp.asarray(ids)), _logits(torch_model, ids))


def _greedy(model, params, prompt, steps):
    """Greedy continuation by ``prefill`` and ``step`` (argmax of each step's logits)."""
    logits, state = jax.jit(model.prefill)(params, prompt)
    step = jax.jit(model.step)
    token, out = jnp.argmax(logits[-1]).astype(jnp.int32), []
    for _ in range(steps):
        out.append(int(token))
        logits_, state = step(params, token, state)
        token = jnp.argmax(logits_).astype(jnp.int32)
    return np.array(out)


def _hf_generate(torch_model, prompts, steps):
    with torch.no_grad():
        out = torch_model.generate(torch.tensor(prompts), attention_mask=torch.ones(prompts.shape,
                                   dtype=torch.long), max_new_tokens=steps, do_sample=False,
                                   num_beams=1, eos_token_id=None, pad_token_id=0,
                                   output_logits=True, return_dict_in_generate=True)
    top2 = torch.stack(out.logits, 1).topk(2, dim=-1).values  # [B, steps, 2]
    print(f"smallest top-1 / top-2 margin of transformers' greedy steps: "
          f"{float((top2[..., 0] - top2[..., 1]).min()):.3g}")
    return out.sequences[:, prompts.shape[1]:].numpy()


def test_greedy_generation_equals_transformers(saved, loaded):
    """20-token prompts and 17 new tokens (positions 20 ... 36, past the window), by
    prefill + step, the same tokens as transformers' ``generate``."""
    torch_model, _ = saved
    model, params = loaded
    prompts = _ids((2, 20), seed=1)
    reference = _hf_generate(torch_model, prompts, 17)
    for prompt, ref in zip(prompts, reference):
        np.testing.assert_array_equal(_greedy(model, params, jnp.asarray(prompt), 17), ref)


def test_generate_equals_transformers(saved, loaded):
    torch_model, _ = saved
    model, params = loaded
    prompts = _ids((1, 20), seed=1)
    reference = _hf_generate(torch_model, prompts, 17)
    ours = model.generate(params, jax.random.PRNGKey(0), jnp.asarray(prompts[0]), 17,
                          greedy=True)
    np.testing.assert_array_equal(ours, reference[0])


def test_prefill_then_step_equals_apply(loaded):
    model, params = loaded
    ids = jnp.asarray(_ids((T,), seed=2))
    full = jax.jit(model.apply)(params, ids)
    logits, state = jax.jit(model.prefill)(params, ids[:13])
    step = jax.jit(model.step)
    out = [logits]
    for token in ids[13:]:
        logit, state = step(params, token, state)
        out.append(logit[None])
    np.testing.assert_allclose(jnp.concatenate(out), full, rtol=0,
                               atol=1e-5 * float(jnp.abs(full).max()))


def test_save_opens_in_transformers_and_round_trips(saved, loaded, tmp_path):
    """``hf.save`` writes the same tensors (no ``lm_head``: tied) and config;
    transformers opens it to the same logits; loading it again gives the same params."""
    torch_model, path = saved
    model, params = loaded
    hf.save(model, params, tmp_path)
    original, written = load_file(path / "model.safetensors"), load_file(
        tmp_path / "model.safetensors")
    assert sorted(written) == sorted(original) and "lm_head.weight" not in written
    for name in original:
        np.testing.assert_array_equal(written[name], original[name], err_msg=name)
    reopened = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager",
                                                    dtype=torch.float32).eval()
    ids = _ids((1, T), seed=3)
    np.testing.assert_array_equal(_logits(reopened, ids), _logits(torch_model, ids))
    _, again = hf.load(tmp_path)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def _draw_params(shapes, seed=0):
    """Random params in the layout ``shapes`` (numpy; the RG-LRU's ``Lambda`` on [2, 6])."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if getattr(path[-1], "name", None) == "lam":
            return jnp.asarray(rng.uniform(2.0, 6.0, leaf.shape), leaf.dtype)
        scale = 0.1 if len(leaf.shape) == 1 else 1 / math.sqrt(leaf.shape[-2])
        return jnp.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def test_every_option_of_the_config(tmp_path):
    """What the tiny config leaves at its defaults: grouped key/value heads (K = 2), a
    head_dim that is not D / H, rotary on a quarter of each head at theta 500, biases on
    q, k, v, an RG-LRU wider than D, a conv of 3 taps, attention first, an untied head,
    a window of 8, a soft cap of 10, eps 1e-5, an odd MLP width (51 // 2) and the erf
    GeLU. seqjax builds it, draws params, saves; transformers opens it to the same
    logits."""
    config = dict(model_type="recurrent_gemma", vocab_size=50, hidden_size=32,
                  intermediate_size=51, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, lru_width=40, conv1d_width=3,
                  block_types=["attention", "recurrent"], attention_window_size=8,
                  attention_bias=True, tie_word_embeddings=False, logits_soft_cap=10.0,
                  rms_norm_eps=1e-5, hidden_activation="gelu",
                  rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                                   "partial_rotary_factor": 0.25})
    model = hf.build(config)
    params = _draw_params(jax.eval_shape(model.init, jax.random.PRNGKey(0)))
    assert params.head is not None and params.blocks[0].mixer.q.b is not None
    assert params.blocks[0].mlp.gate.w.shape == (32, 25)
    hf.save(model, params, tmp_path)
    reopened, info = AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager", dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched
    assert reopened.config.head_dim == 16
    ids = _ids((2, 30), vocab=50, seed=4)
    _within(_batched_apply(model)(params, jnp.asarray(ids)), _logits(reopened.eval(), ids))


def test_embedding_scale_is_rounded_to_bfloat16():
    """transformers' ``normalizer``: ``torch.tensor(sqrt(D), dtype=bfloat16)``."""
    assert bfloat16_round(math.sqrt(48)) == 6.9375
    assert bfloat16_round(math.sqrt(2560)) == 50.5
    for d in range(1, 4097):
        assert bfloat16_round(d ** 0.5) == float(torch.tensor(d ** 0.5, dtype=torch.bfloat16)), d


# ---------------------------------------------------------------- errors


def _copy(saved, tmp_path):
    shutil.copytree(saved[1], tmp_path / "m")
    return tmp_path / "m"


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def _edit_tensors(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("changes, named", [
    ({"hidden_activation": "relu"}, "hidden_activation"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0}}, "rope_type"),
    ({"block_types": ["recurrent", "mlp"]}, "block_types"),
    ({"logits_soft_cap": 0.0}, "logits_soft_cap"),
])
def test_unsupported_option_is_named(saved, tmp_path, changes, named):
    path = _copy(saved, tmp_path)
    _edit_config(path, **changes)
    with pytest.raises(HFError, match=named):
        hf.load(path)


def test_missing_misshapen_and_extra_tensors_are_named(saved, tmp_path):
    name = "model.layers.1.temporal_block.rg_lru.input_gate_weight"
    path = _copy(saved, tmp_path)
    _edit_tensors(path, lambda t: t.pop(name))
    with pytest.raises(HFError, match=f"no tensor '{name}'"):
        hf.load(path)

    path = _copy(saved, tmp_path / "b")
    _edit_tensors(path, lambda t: t.update({name: np.zeros((4, 12, 11), np.float32)}))
    with pytest.raises(HFError, match=r"input_gate_weight' has shape \(4, 12, 11\), "
                                      r"expected \(4, 12, 12\)"):
        hf.load(path)

    path = _copy(saved, tmp_path / "c")
    _edit_tensors(path, lambda t: t.update({"model.layers.0.extra.weight":
                                            np.zeros(3, np.float32)}))
    with pytest.raises(HFError, match="model.layers.0.extra.weight"):
        hf.load(path)
