"""seqjax.interop.hf.qwen3_next against transformers' Qwen3NextForCausalLM: tiny random
models built and saved locally (float32, CPU, eager attention, transformers' torch
Gated DeltaNet and causal-conv fallbacks), loaded into seqjax; logits, greedy
generation, prefill + step, saving back, and the errors.

Every 1-D parameter (the (1 + w) norm weights, which start at 0, the gated norm's,
``dt_bias``, ``A_log``, q/k norms, biases) gets N(0, 0.1) noise, so none is left at a
constant a loader could get wrong unnoticed. The tiny model is the one of
/work/shared/hf_tiny_configs.md (Gated DeltaNet, gated attention, Gated DeltaNet; two
key heads over four value heads; dense MLPs); a second one has attention biases, rope
theta 1e6 on half of each head, as many value heads as key heads, keys narrower than
values, a convolution of 3 taps, a gelu activation, eps 1e-5, a tied head and the
attention layer first.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, Qwen3NextConfig, Qwen3NextForCausalLM

import seqjax
from seqjax.interop import hf
from seqjax.interop.hf import HFError
from _hf import _copy, _edit_tensors, _logits, _relative, _tokens, _torch_logits

TINY = dict(layer_types=["linear_attention", "full_attention", "linear_attention"],
            num_hidden_layers=3, mlp_only_layers=[0, 1, 2], linear_conv_kernel_dim=4,
            linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
            linear_num_value_heads=4, head_dim=16, hidden_size=64, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=128, vocab_size=64)
VARIANT = dict(TINY, layer_types=["full_attention", "linear_attention", "linear_attention"],
               attention_bias=True, rope_parameters=dict(rope_type="default", rope_theta=1e6,
                                                         partial_rotary_factor=0.5),
               linear_num_value_heads=2, linear_key_head_dim=8, linear_conv_kernel_dim=3,
               hidden_act="gelu", rms_norm_eps=1e-5, tie_word_embeddings=True)
T, PROMPT, NEW = 40, 24, 16  # PROMPT + NEW = T: the margins reuse apply's compilation


def _save(path, config, seed=0):
    torch.manual_seed(seed)
    model = Qwen3NextForCausalLM._from_config(Qwen3NextConfig(**config),
                                              attn_implementation="eager",
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
    path = tmp_path_factory.mktemp("qwen3_next") / "tiny"
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
    delta_layer = params.blocks[0].mixer
    assert delta_layer.q.w.shape == (64, 32) and delta_layer.v.w.shape == (64, 64)
    assert delta_layer.conv.w.shape == (4, 128) and delta_layer.rule.a_log.shape == (4,)
    assert model.blocks[1].mixer.rope.dim == 4  # int(16 * 0.25)
    error = _relative(_logits(model, params, ids), ref)
    print(f"tiny qwen3_next: max |logit diff| / max |logit| = {error:.2e}, "
          f"max |logit| = {np.max(np.abs(ref)):.2f}")
    assert error <= 1e-4
    # the chunkwise form of the delta rule (what the accelerators run forward; on CPU
    # apply scans), chunks of 16 over T = 40
    chunked = _relative(_chunkwise_logits(model, params, ids[0]), ref[0])
    print(f"tiny qwen3_next, chunkwise: max |logit diff| / max |logit| = {chunked:.2e}")
    assert chunked <= 1e-4


def _chunkwise_hidden(blocks, params, x):
    for cell, p in zip(blocks, params):
        x = seqjax.unroll(cell, p, x, chunkwise=True, chunk_size=16)[1]
    return x


def _chunkwise_logits(model, params, tokens):
    """The model's logits, every block unrolled with ``chunkwise=True``."""
    x = jnp.take(params.embed, jnp.asarray(tokens), axis=0)
    x = jax.jit(_chunkwise_hidden, static_argnums=0)(model.blocks, params.blocks, x)
    x = model.final_norm.parallel(params.norm, x, (), None, None)[1]
    return np.asarray(x @ params.head, np.float64)


def test_options_match_transformers(tmp_path):
    """Biases (the query projection's holds the gate's), partial rotary 0.5 at theta
    1e6, Hv == Hk, dk != dv, 3 taps, gelu, eps, tied; load -> save -> load exactly."""
    torch_model = _save(tmp_path / "variant", VARIANT, seed=3)
    ids = _tokens(1, (2, 37))
    model, params = hf.load(tmp_path / "variant")
    attn, delta_layer = params.blocks[0].mixer, params.blocks[1].mixer
    assert params.head is None and attn.gate.b is not None and attn.o.b is not None
    assert model.blocks[0].mixer.rope.dim == 8
    assert delta_layer.q.w.shape == (64, 16) and delta_layer.rule.norm.scale.shape == (16,)
    ref = _torch_logits(torch_model, ids)
    error = _relative(_logits(model, params, ids), ref)
    print(f"variant qwen3_next: max |logit diff| / max |logit| = {error:.2e}, "
          f"max |logit| = {np.max(np.abs(ref)):.2f}")
    assert error <= 1e-4
    hf.save(model, params, tmp_path / "again")
    assert "lm_head.weight" not in load_file(str(tmp_path / "again" / "model.safetensors"))
    _, again = hf.load(tmp_path / "again")
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


def test_greedy_generation_matches_transformers(tiny, loaded):
    """16 new tokens after a 24-token prompt: transformers' cached generate (the chunked
    gated delta rule on the prompt, then its recurrent step per token) against
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
        print(f"qwen3_next row {b}: smallest top-1 / top-2 margin on the greedy path "
              f"{np.min(top[b, :, -1] - top[b, :, -2]):.3e}")
        np.testing.assert_array_equal(np.asarray(ours), ref[b])


def test_prefill_then_step_equals_apply(tiny, loaded):
    """Prefill 21 tokens, then 19 steps (convolution histories, delta-rule states and
    the KV cache)."""
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
    assert isinstance(reopened, Qwen3NextForCausalLM)
    assert _relative(_torch_logits(reopened, ids), ref) <= 1e-6
    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    original = load_file(str(tiny[1] / "model.safetensors"))
    assert set(saved) == set(original)
    for name in saved:  # the interleaved projections written back exactly
        np.testing.assert_array_equal(saved[name], original[name], err_msg=name)
    _, again = hf.load(tmp_path / "saved")
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


def test_mixture_of_experts_layers_are_refused_by_name(tiny, tmp_path):
    """A layer is MoE unless it is in mlp_only_layers, num_experts is 0, or
    decoder_sparse_step skips it; such configs are refused before any tensor is read,
    and the dense ones load."""
    for i, (edit, layers) in enumerate([
            (dict(mlp_only_layers=[0, 2]), r"\[1\]"),
            (dict(mlp_only_layers=[]), r"\[0, 1, 2\]"),
            (dict(mlp_only_layers=[], decoder_sparse_step=2), r"\[1\]")]):
        with pytest.raises(HFError, match=rf"mixture-of-experts layers {layers}.*num_experts"):
            hf.load(_copy(tiny, tmp_path / str(i), lambda c: c.update(edit)))
    hf.load(_copy(tiny, tmp_path / "dense", lambda c: c.update(mlp_only_layers=[],
                                                                num_experts=0)))
    hf.load(_copy(tiny, tmp_path / "sparse", lambda c: c.update(
        mlp_only_layers=[1], decoder_sparse_step=2)))


def test_unsupported_options_are_named(tiny, tmp_path):
    with pytest.raises(HFError, match="rope_type='dynamic'"):
        hf.load(_copy(tiny, tmp_path / "rope", lambda c: c.update(
            rope_parameters=dict(rope_type="dynamic", rope_theta=1e4, factor=2.0))))
    with pytest.raises(HFError, match="hidden_act='laplace'"):
        hf.load(_copy(tiny, tmp_path / "act", lambda c: c.update(hidden_act="laplace")))
    with pytest.raises(HFError, match=r"layer_types\[1\]='sliding_attention'"):
        hf.load(_copy(tiny, tmp_path / "kind", lambda c: c["layer_types"].__setitem__(
            1, "sliding_attention")))


def test_tensor_errors_are_named(tiny, tmp_path):
    path = _copy(tiny, tmp_path / "missing")
    name = "model.layers.2.linear_attn.dt_bias"
    _edit_tensors(path, lambda t: t.pop(name))
    with pytest.raises(HFError, match=f"no tensor '{name}'"):
        hf.load(path)

    path = _copy(tiny, tmp_path / "shape")
    name = "model.layers.0.linear_attn.in_proj_qkvz.weight"
    _edit_tensors(path, lambda t: t.update({name: np.zeros((128, 64), np.float32)}))
    with pytest.raises(HFError, match=rf"'{name}' has shape \(128, 64\), expected \(192, 64\)"):
        hf.load(path)

    path = _copy(tiny, tmp_path / "extra")
    name = "mtp.fc.weight"
    _edit_tensors(path, lambda t: t.update({name: np.zeros((64, 128), np.float32)}))
    with pytest.raises(HFError, match=f"no place for: {name}"):
        hf.load(path)

    path = _copy(tiny, tmp_path / "untied")
    _edit_tensors(path, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(HFError, match="no tensor 'lm_head.weight'"):
        hf.load(path)
