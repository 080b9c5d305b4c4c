"""seqjax.interop.hf.xlstm against transformers' xLSTMForCausalLM (xLSTM 7B's
architecture): tiny random models built and saved locally (float32, CPU), loaded into
seqjax; logits, greedy generation, prefill + step, saving back, and the errors.

Every 1-D parameter gets N(0, 0.1) noise and every weight a fresh init leaves at zero
(the input, forget and output gates and the MLP's SiLU branch, all zeroed by
transformers' init) is filled with N(0, 0.1^2), so that no part of the model is a
constant a loader could get wrong unnoticed. A second model has biases, narrow q/k
(``qk_dim_factor=0.5``), 2 heads, 3 blocks and large gate pre-activations (weights
N(0, 1), input-gate bias +10): the gate soft cap binds and the read-out's denominator
takes both branches of its maximum.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, xLSTMConfig, xLSTMForCausalLM

from seqjax.interop import hf
from seqjax.interop.hf import HFError
from _hf import _copy, _edit_tensors, _logits, _relative, _tokens, _torch_logits

TINY = dict(hidden_size=64, num_heads=4, qk_dim_factor=1.0, v_dim_factor=1.0, chunk_size=16,
            mode="inference", autocast_kernel_dtype="float32", inference_state_dtype="float32",
            weight_mode="single", num_hidden_layers=2, vocab_size=64)
WIDE_GATES = dict(TINY, use_bias=True, qk_dim_factor=0.5, num_heads=2, num_hidden_layers=3)
T, NEW = 40, 16


def _randomise(model, seed, gate_std=0.1, igate_shift=0.0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
                if "igate" in name:
                    p.add_(igate_shift)
            elif p.abs().max() == 0:  # igate, fgate, ogate_preact, ffn.proj_up_gate
                p.copy_(gate_std * torch.randn(p.shape, generator=g))


def _save(path, config, seed=0, **noise):
    torch.manual_seed(seed)
    model = xLSTMForCausalLM._from_config(xLSTMConfig(**config), attn_implementation="eager",
                                          dtype=torch.float32).eval()
    _randomise(model, seed + 1, **noise)
    model.save_pretrained(path, safe_serialization=True)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The brief's tiny model, saved, with reference logits at T = 40 for two sequences."""
    path = tmp_path_factory.mktemp("xlstm") / "tiny"
    torch_model = _save(path, TINY)
    ids = _tokens(0, (2, T))
    return torch_model, path, ids, _torch_logits(torch_model, ids)


@pytest.fixture(scope="module")
def loaded(tiny):
    return hf.load(tiny[1])


def test_logits_match_transformers(tiny, loaded):
    """T = 40 crosses transformers' chunks of 16 and seqjax's chunked/step forms."""
    _, _, ids, ref = tiny
    model, params = loaded
    assert params.head is not None  # never tied
    error = _relative(_logits(model, params, ids), ref)
    print(f"tiny xlstm: max |logit diff| / max |logit| = {error:.2e}, "
          f"max |logit| = {np.max(np.abs(ref)):.2f}")
    assert error <= 1e-4


def test_wide_gates_biases_and_narrow_qk(tmp_path):
    """Biases everywhere, q/k of int(64 * 0.5) = 32 channels (transformers' cache would
    round it to 64: use_cache=False), large gates: soft caps and both denominator
    branches; then load -> save -> load is exact."""
    torch_model = _save(tmp_path / "wide", WIDE_GATES, seed=5, gate_std=1.0, igate_shift=10.0)
    ids = _tokens(1, (2, 37))
    model, params = hf.load(tmp_path / "wide")
    assert params.blocks[0].mixer.q.w.shape == (64, 32)
    assert params.blocks[0].norm.bias is not None and params.norm.bias is None
    ref = _torch_logits(torch_model, ids)
    error = _relative(_logits(model, params, ids), ref)
    print(f"wide-gate xlstm: max |logit diff| / max |logit| = {error:.2e}, "
          f"max |logit| = {np.max(np.abs(ref)):.2f}")
    assert error <= 1e-4
    hf.save(model, params, tmp_path / "again")
    _, again = hf.load(tmp_path / "again")
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


def test_greedy_generation_matches_transformers(tiny, loaded):
    """16 new tokens after a 12-token prompt: transformers' cached generate (a 12-token
    forward, then one step per token) against seqjax's prefill and step loop."""
    torch_model, _, ids, _ = tiny
    model, params = loaded
    prompt = ids[:, :12]
    with torch.no_grad():
        ref = torch_model.generate(torch.tensor(prompt), attention_mask=torch.ones(prompt.shape,
                                   dtype=torch.long), max_new_tokens=NEW, do_sample=False,
                                   num_beams=1, eos_token_id=None, pad_token_id=0)
    ref = ref[:, 12:].numpy()
    for b in range(prompt.shape[0]):
        ours = model.generate(params, jax.random.PRNGKey(0), jnp.asarray(prompt[b]), NEW,
                              greedy=True)
        full = np.concatenate([prompt[b], ref[b]])
        top = np.sort(_logits(model, params, full[None])[0, 11:-1], axis=-1)
        print(f"row {b}: smallest top-1 / top-2 margin on the greedy path "
              f"{np.min(top[:, -1] - top[:, -2]):.3e}")
        np.testing.assert_array_equal(np.asarray(ours), ref[b])


def test_prefill_then_step_equals_apply(loaded, tiny):
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
    reopened = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32).eval()
    assert _relative(_torch_logits(reopened, ids), ref) <= 1e-6
    _, again = hf.load(tmp_path / "saved")
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


def test_tie_word_embeddings_and_add_out_norm_change_nothing(tiny, loaded, tmp_path):
    """transformers never ties xLSTM's head and always builds out_norm: a config that
    says otherwise loads to the same logits (in seqjax and in transformers)."""
    _, _, ids, ref = tiny
    path = _copy(tiny, tmp_path, lambda c: c.update(tie_word_embeddings=True,
                                                    add_out_norm=False))
    model, params = hf.load(path)
    assert params.head is not None and params.norm is not None
    np.testing.assert_array_equal(_logits(model, params, ids), _logits(*loaded, ids))
    reopened = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    np.testing.assert_array_equal(_torch_logits(reopened, ids), ref)


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(weight_mode="fused"), "weight_mode='fused'"),
    (lambda c: c.update(embedding_dim=32), "embedding_dim=32 and hidden_size=64"),
    (lambda c: c.update(num_heads=3), "qk_dim_factor=1.0 .* num_heads=3"),
])
def test_unsupported_options_are_named(tiny, tmp_path, edit, match):
    with pytest.raises(HFError, match=match):
        hf.load(_copy(tiny, tmp_path, edit))


def test_tensor_errors_are_named(tiny, tmp_path):
    path = _copy(tiny, tmp_path)
    name = "backbone.blocks.1.mlstm_layer.fgate_preact.bias"
    _edit_tensors(path, lambda t: t.pop(name))
    with pytest.raises(HFError, match=f"no tensor '{name}'"):
        hf.load(path)

    path = _copy(tiny, tmp_path / "shape")
    name = "backbone.blocks.0.mlstm_layer.q.weight"
    _edit_tensors(path, lambda t: t.update({name: np.zeros((64, 32), np.float32)}))
    with pytest.raises(HFError, match=rf"'{name}' has shape \(64, 32\), expected \(64, 64\)"):
        hf.load(path)

    path = _copy(tiny, tmp_path / "extra")
    name = "backbone.blocks.0.mlstm_layer.extra.weight"
    _edit_tensors(path, lambda t: t.update({name: np.zeros((4,), np.float32)}))
    with pytest.raises(HFError, match=f"no place for: {name}"):
        hf.load(path)
