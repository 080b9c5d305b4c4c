"""What the transformers-parity tests of every ``model_type`` share: token ids, both
sides' logits, the relative error, and copies of a saved checkpoint with an edited
config or edited tensors."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import torch
from safetensors.numpy import load_file, save_file


def _tokens(seed, shape, vocab=64):
    return np.random.default_rng(seed).integers(0, vocab, size=shape)


def _torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids), use_cache=False).logits.double().numpy()


def _logits(model, params, ids):
    return np.asarray(jax.jit(jax.vmap(model.apply, in_axes=(None, 0)))(params, jnp.asarray(ids)),
                      np.float64)


def _relative(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _copy(tiny, tmp_path, edit_config=None):
    path = tmp_path / "copy"
    shutil.copytree(tiny[1], path)
    if edit_config is not None:
        config = json.loads((path / "config.json").read_text())
        edit_config(config)
        (path / "config.json").write_text(json.dumps(config))
    return path


def _edit_tensors(path, edit):
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})

