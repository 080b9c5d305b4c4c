"""seqjax.interop.hf.mamba2 against transformers' Mamba2ForCausalLM: tiny random models
built and saved locally (float32, CPU, transformers' chunked torch SSD), loaded into
seqjax; logits, greedy generation, prefill + step, saving back, and the errors.

Every 1-D parameter (norm scales, the gated norm's scale, conv bias, ``dt_bias``,
``A_log``, ``D``, biases) gets N(0, 0.1) noise, so none of them is left at a constant a
loader could get wrong unnoticed. A second model is tied, has ``in_proj``/``out_proj``
biases and no conv bias, 4 groups, a gelu conv activation, kernel 3, and a
``time_step_limit`` of (0, 0.05) that binds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, Mamba2Config, Mamba2ForCausalLM

from seqjax.interop import hf
from seqjax.interop.hf import HFError
from _hf import _copy, _edit_tensors, _logits, _relative, _tokens, _torch_logits

TINY = dict(hidden_size=32, expand=2, num_heads=8, head_dim=8, state_size=16, n_groups=2,
            chunk_size=16, num_hidden_layers=2, vocab_size=64)
VARIANT = dict(TINY, tie_word_embeddings=True, use_bias=True, use_conv_bias=False, n_groups=4,
               hidden_act="gelu", conv_kernel=3, layer_norm_epsilon=1e-3,
               time_step_limit=(0.0, 0.05))
T, PROMPT, NEW = 40, 24, 16  # PROMPT + NEW = T: the margins reuse apply's compilation


def _save(path, config, seed=0):
    torch.manual_seed(seed)
    model = Mamba2ForCausalLM._from_config(Mamba2Config(**config), attn_implementation="eager",
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
    """The tiny model of /work/shared/hf_tiny_configs.md (untied), saved, with reference
    logits at T = 40 for two sequences."""
    path = tmp_path_factory.mktemp("mamba2") / "tiny"
    torch_model = _save(path, TINY)
    ids = _tokens(0, (2, T))
    return torch_model, path, ids, _torch_logits(torch_model, ids)


@pytest.fixture(scope="module")
def loaded(tiny):
    return hf.load(tiny[1])


def test_logits_match_transformers(tiny, loaded):
    _, path, ids, ref = tiny
    model, params = loaded
    assert params.head is not None  # untied: Mamba-2's default
    error = _relative(_logits(model, params, ids), ref)
    print(f"tiny mamba2: max |logit diff| / max |logit| = {error:.2e}, "
          f"max |logit| = {np.max(np.abs(ref)):.2f}")
    assert error <= 1e-4


def test_tied_biases_groups_gelu_and_time_step_limit(tmp_path):
    """The options that change shapes or maths; with a binding time_step_limit seqjax's
    prefill + step equals transformers' full forward (transformers' own cached step
    skips the clip); load -> save -> load is exact."""
    torch_model = _save(tmp_path / "variant", VARIANT, seed=3)
    ids = _tokens(1, (2, 37))
    model, params = hf.load(tmp_path / "variant")
    mixer = params.blocks[0].mixer
    assert params.head is None and mixer.in_proj.b is not None and mixer.conv.b is None
    assert mixer.conv.w.shape == (3, 64 + 2 * 4 * 16)
    ref = _torch_logits(torch_model, ids)
    error = _relative(_logits(model, params, ids), ref)
    print(f"variant mamba2: max |logit diff| / max |logit| = {error:.2e}, "
          f"max |logit| = {np.max(np.abs(ref)):.2f}")
    assert error <= 1e-4
    logits, state = jax.jit(model.prefill)(params, jnp.asarray(ids[0, :20]))
    out = [np.asarray(logits, np.float64)]
    step = jax.jit(model.step)
    for t in ids[0, 20:]:
        logit, state = step(params, jnp.asarray(t), state)
        out.append(np.asarray(logit, np.float64)[None])
    error = _relative(np.concatenate(out), ref[0])
    print(f"variant mamba2, prefill 20 + 17 steps vs transformers' full forward: {error:.2e}")
    assert error <= 1e-4
    hf.save(model, params, tmp_path / "again")
    _, again = hf.load(tmp_path / "again")
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


def test_greedy_generation_matches_transformers(tiny, loaded):
    """16 new tokens after a 24-token prompt: transformers' cached generate (a prompt
    forward, then one cached step per token) against seqjax's prefill and step loop."""
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
        print(f"mamba2 row {b}: smallest top-1 / top-2 margin on the greedy path "
              f"{np.min(top[b, :, -1] - top[b, :, -2]):.3e}")
        np.testing.assert_array_equal(np.asarray(ours), ref[b])


def test_prefill_then_step_equals_apply(tiny, loaded):
    """Prefill 21 tokens (a chunk of 16 and a partial one), then 19 steps; and a prefill
    continued from its state in a second chunk."""
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
    second, _ = jax.jit(model.prefill)(params, tokens[21:], state=jax.jit(model.prefill)(
        params, tokens[:21])[1])
    assert _relative(np.asarray(second, np.float64), np.asarray(full[21:], np.float64)) <= 1e-5


def test_save_opens_in_transformers_and_round_trips(tiny, loaded, tmp_path):
    _, _, ids, ref = tiny
    model, params = loaded
    hf.save(model, params, tmp_path / "saved")
    reopened = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32).eval()
    assert isinstance(reopened, Mamba2ForCausalLM)
    assert _relative(_torch_logits(reopened, ids), ref) <= 1e-6
    assert "lm_head.weight" in load_file(str(tmp_path / "saved" / "model.safetensors"))
    _, again = hf.load(tmp_path / "saved")
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(hidden_act="laplace"), "hidden_act='laplace'"),
    (lambda c: c.update(num_heads=4), r"num_heads \* head_dim \(4 \* 8\) must equal"),
    (lambda c: c.update(time_step_limit=[0.1, 0.01]), r"time_step_limit=\[0.1, 0.01\]"),
])
def test_unsupported_options_are_named(tiny, tmp_path, edit, match):
    with pytest.raises(HFError, match=match):
        hf.load(_copy(tiny, tmp_path, edit))


def test_tensor_errors_are_named(tiny, tmp_path):
    path = _copy(tiny, tmp_path / "missing")
    name = "backbone.layers.1.mixer.dt_bias"
    _edit_tensors(path, lambda t: t.pop(name))
    with pytest.raises(HFError, match=f"no tensor '{name}'"):
        hf.load(path)

    path = _copy(tiny, tmp_path / "shape")
    name = "backbone.layers.0.mixer.in_proj.weight"
    _edit_tensors(path, lambda t: t.update({name: np.zeros((192, 32), np.float32)}))
    with pytest.raises(HFError, match=rf"'{name}' has shape \(192, 32\), expected \(200, 32\)"):
        hf.load(path)

    path = _copy(tiny, tmp_path / "extra")
    name = "backbone.layers.0.mixer.extra.weight"
    _edit_tensors(path, lambda t: t.update({name: np.zeros((4,), np.float32)}))
    with pytest.raises(HFError, match=f"no place for: {name}"):
        hf.load(path)

    path = _copy(tiny, tmp_path / "head")
    _edit_tensors(path, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(HFError, match="no tensor 'lm_head.weight'"):  # untied: needed
        hf.load(path)
