"""seqjax.interop.hf.llama against transformers' LlamaForCausalLM: tiny random models
built and saved locally (float32, CPU, eager attention), loaded into seqjax; logits,
greedy generation, prefill + step, saving back, and the errors.

Every 1-D parameter (norm scales, biases) gets N(0, 0.1) noise, so none is left at a
constant a loader could get wrong unnoticed. The tiny model is the one of
/work/shared/hf_tiny_configs.md (grouped-query heads, untied head, default rotary); a
second one is tied, has attention and MLP biases, a head_dim other than D / H, a gelu
MLP, eps 1e-5 and llama3 rotary scaling (original length 256, so that all three
frequency bands occur); a third has yarn scaling.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from seqjax.interop import hf
from seqjax.interop.hf import HFError
from _hf import _copy, _edit_tensors, _logits, _relative, _tokens, _torch_logits

TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            num_hidden_layers=2, vocab_size=64, rms_norm_eps=1e-6)
VARIANT = dict(TINY, tie_word_embeddings=True, attention_bias=True, mlp_bias=True, head_dim=32,
               hidden_act="gelu", rms_norm_eps=1e-5, num_key_value_heads=1,
               rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                    low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=256))
YARN = dict(TINY, rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                                       original_max_position_embeddings=2048))
T, PROMPT, NEW = 40, 24, 16  # PROMPT + NEW = T: the margins reuse apply's compilation


def _save(path, config, seed=0):
    torch.manual_seed(seed)
    model = LlamaForCausalLM._from_config(LlamaConfig(**config), attn_implementation="eager",
                                          dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1 or p.abs().max() == 0:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    model.save_pretrained(path, safe_serialization=True)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model, saved, with reference logits at T = 40 for two sequences."""
    path = tmp_path_factory.mktemp("llama") / "tiny"
    torch_model = _save(path, TINY)
    ids = _tokens(0, (2, T))
    return torch_model, path, ids, _torch_logits(torch_model, ids)


@pytest.fixture(scope="module")
def loaded(tiny):
    return hf.load(tiny[1])


def test_logits_match_transformers(tiny, loaded):
    _, path, ids, ref = tiny
    model, params = loaded
    assert params.head is not None  # untied
    error = _relative(_logits(model, params, ids), ref)
    print(f"tiny llama: max |logit diff| / max |logit| = {error:.2e}, "
          f"max |logit| = {np.max(np.abs(ref)):.2f}")
    assert error <= 1e-4


@pytest.mark.parametrize("name", ["variant", "yarn"])
def test_options_match_transformers(name, tmp_path):
    """Tied head, biases, head_dim, gelu, eps, llama3 rotary; and yarn rotary (whose
    attention factor scales cos and sin); load -> save -> load exactly."""
    config = {"variant": VARIANT, "yarn": YARN}[name]
    torch_model = _save(tmp_path / name, config, seed=3)
    ids = _tokens(1, (2, 37))
    model, params = hf.load(tmp_path / name)
    if name == "variant":
        attn = params.blocks[0].mixer
        assert params.head is None and attn.o.b is not None and attn.k.w.shape == (64, 32)
        assert params.blocks[1].mlp.down.b is not None
    else:
        assert model.blocks[0].mixer.rope.scale == pytest.approx(0.1 * np.log(4.0) + 1)
    ref = _torch_logits(torch_model, ids)
    error = _relative(_logits(model, params, ids), ref)
    print(f"{name} llama: max |logit diff| / max |logit| = {error:.2e}, "
          f"max |logit| = {np.max(np.abs(ref)):.2f}")
    assert error <= 1e-4
    hf.save(model, params, tmp_path / "again")
    _, again = hf.load(tmp_path / "again")
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


def test_greedy_generation_matches_transformers(tiny, loaded):
    """16 new tokens after a 24-token prompt: transformers' cached generate against
    seqjax's prefill and step loop."""
    torch_model, _, ids, _ = tiny
    model, params = loaded
    prompt = ids[:, :PROMPT]
    with torch.no_grad():
        ref = torch_model.generate(torch.tensor(prompt), attention_mask=torch.ones(
            prompt.shape, dtype=torch.long), max_new_tokens=NEW, do_sample=False, num_beams=1,
            eos_token_id=None, pad_token_id=0)
    ref = ref[:, PROMPT:].numpy()
    full = np.concatenate([prompt, ref], axis=1)
    top = np.sort(_logits(model, params, full)[:, PROMPT - 1:-1], axis=-1)
    for b in range(prompt.shape[0]):
        ours = model.generate(params, jax.random.PRNGKey(0), jnp.asarray(prompt[b]), NEW,
                              greedy=True)
        print(f"llama row {b}: smallest top-1 / top-2 margin on the greedy path "
              f"{np.min(top[b, :, -1] - top[b, :, -2]):.3e}")
        np.testing.assert_array_equal(np.asarray(ours), ref[b])


def test_prefill_then_step_equals_apply(tiny, loaded):
    """Prefill 21 tokens, then 19 steps through the KV cache."""
    model, params = loaded
    tokens = jnp.asarray(tiny[2][0])
    full = jax.jit(model.apply)(params, tokens)
    logits, state = jax.jit(model.prefill)(params, tokens[:21])
    out = [logits]
    step = jax.jit(model.step)
    for t in tokens[21:]:
        logit, state = step(params, t, state)
        out.append(logit[None])
    assert _relative(np.asarray(jnp.concatenate(out), np.float64),
                     np.asarray(full, np.float64)) <= 1e-5


def test_save_opens_in_transformers_and_round_trips(tiny, loaded, tmp_path):
    _, _, ids, ref = tiny
    model, params = loaded
    hf.save(model, params, tmp_path / "saved")
    reopened = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32,
                                                    attn_implementation="eager").eval()
    assert isinstance(reopened, LlamaForCausalLM)
    assert _relative(_torch_logits(reopened, ids), ref) <= 1e-6
    assert set(load_file(str(tmp_path / "saved" / "model.safetensors"))) == set(
        load_file(str(tiny[1] / "model.safetensors")))
    _, again = hf.load(tmp_path / "saved")
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


def test_old_files_inv_freq_buffer_and_rope_scaling_are_read(tiny, loaded, tmp_path):
    """Older files: a saved ``rotary_emb.inv_freq`` buffer (read and dropped) and the
    legacy ``rope_scaling`` / top-level ``rope_theta`` keys."""
    path = _copy(tiny, tmp_path)
    name = "model.layers.0.self_attn.rotary_emb.inv_freq"
    _edit_tensors(path, lambda t: t.update({name: np.ones((8,), np.float32)}))
    _, params = hf.load(path)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, loaded[1])

    def legacy(c):
        del c["rope_parameters"]
        c.update(rope_theta=5000.0, rope_scaling={"type": "linear", "factor": 2.0})

    model, _ = hf.load(_copy(tiny, tmp_path / "legacy", legacy))
    reference = hf.build(dict(json.loads((tiny[1] / "config.json").read_text()),
                              rope_parameters=dict(rope_type="linear", rope_theta=5000.0,
                                                   factor=2.0)))
    assert model.blocks[0].mixer.rope == reference.blocks[0].mixer.rope


def test_unsupported_options_are_named(tiny, tmp_path):
    for i, rope in enumerate([dict(rope_type="dynamic", rope_theta=1e4, factor=2.0),
                              dict(rope_type="longrope", rope_theta=1e4, short_factor=[1.0] * 8,
                                   long_factor=[1.0] * 8)]):
        with pytest.raises(HFError, match=f"rope_type='{rope['rope_type']}'"):
            hf.load(_copy(tiny, tmp_path / str(i), lambda c: c.update(rope_parameters=rope)))
    with pytest.raises(HFError, match="hidden_act='laplace'"):
        hf.load(_copy(tiny, tmp_path / "act", lambda c: c.update(hidden_act="laplace")))
    with pytest.raises(HFError, match="partial_rotary_factor=0.5"):
        hf.build(dict(TINY, model_type="llama", rope_parameters=dict(
            YARN["rope_parameters"], partial_rotary_factor=0.5)))


def test_tensor_errors_are_named(tiny, tmp_path):
    path = _copy(tiny, tmp_path / "missing")
    name = "model.layers.1.post_attention_layernorm.weight"
    _edit_tensors(path, lambda t: t.pop(name))
    with pytest.raises(HFError, match=f"no tensor '{name}'"):
        hf.load(path)

    path = _copy(tiny, tmp_path / "shape")
    name = "model.layers.0.self_attn.k_proj.weight"
    _edit_tensors(path, lambda t: t.update({name: np.zeros((64, 64), np.float32)}))
    with pytest.raises(HFError, match=rf"'{name}' has shape \(64, 64\), expected \(32, 64\)"):
        hf.load(path)

    path = _copy(tiny, tmp_path / "extra")
    name = "model.layers.0.self_attn.q_norm.weight"
    _edit_tensors(path, lambda t: t.update({name: np.zeros((16,), np.float32)}))
    with pytest.raises(HFError, match=f"no place for: {name}"):
        hf.load(path)

    path = _copy(tiny, tmp_path / "untied")
    _edit_tensors(path, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(HFError, match="no tensor 'lm_head.weight'"):
        hf.load(path)
