"""What the parity tests share to reach code nobody here wrote: reference files loaded by
path, the promotion rules those references are written for, and Mamba-2's minimal SSD
listing transcribed in ``jax.numpy``."""

import contextlib
import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp


@functools.lru_cache(maxsize=None)
def load(package, relative):
    """A reference module by file path, without importing its package (``mlstm_kernels``'
    and ``fla``'s package ``__init__``s import ``jax_triton`` / ``triton``, which are not
    installed)."""
    path = pathlib.Path(importlib.util.find_spec(package).submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location(
        f"_reference_{package}_{relative.replace('/', '_')[:-3]}", path / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_numerics():
    """JAX's default promotion rules, under which references written elsewhere run
    (recurrentgemma, mlstm_kernels and the listings broadcast implicitly; this suite's
    conftest makes both rules strict)."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.numpy_rank_promotion("allow"))
    stack.enter_context(jax.numpy_dtype_promotion("standard"))
    return stack


def segsum(x):
    """Dao & Gu 2024, Listing 1's stable ``segsum``: ``[..., T] -> [..., T, T]``."""
    T = x.shape[-1]
    x = jnp.repeat(x[..., None], T, axis=-1)  # "... d -> ... d e"
    x = jnp.where(jnp.tril(jnp.ones((T, T), bool), -1), x, jnp.zeros((), x.dtype))
    x_segsum = jnp.cumsum(x, axis=-2)
    return jnp.where(jnp.tril(jnp.ones((T, T), bool), 0), x_segsum,
                     jnp.full((), -jnp.inf, x.dtype))


def ssd_minimal_discrete(X, A, B, C, block_len, initial_states=None):
    """Dao & Gu 2024, Listing 1 (``mamba_ssm/modules/ssd_minimal.py``), line by line:
    ``X [b, l, h, p]``, ``A [b, l, h]``, ``B, C [b, l, h, n]``, ``initial_states [b, 1,
    h, p, n]``; returns ``Y [b, l, h, p]`` and the final state ``[b, h, p, n]``."""
    assert X.dtype == A.dtype == B.dtype == C.dtype
    assert X.shape[1] % block_len == 0
    b, l = X.shape[:2]
    # rearrange into blocks/chunks: "b (c l) ... -> b c l ..."
    X, A, B, C = (x.reshape((b, l // block_len, block_len) + x.shape[2:]) for x in (X, A, B, C))
    A = jnp.moveaxis(A, -1, 1)  # "b c l h -> b h c l"
    A_cumsum = jnp.cumsum(A, axis=-1)
    # 1. the output of each intra-chunk (diagonal blocks)
    L = jnp.exp(segsum(A))
    Y_diag = jnp.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, L, X)
    # 2. the state of each intra-chunk
    decay_states = jnp.exp(A_cumsum[:, :, :, -1:] - A_cumsum)
    states = jnp.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_states, X)
    # 3. the inter-chunk SSM recurrence
    if initial_states is None:
        initial_states = jnp.zeros_like(states[:, :1])
    states = jnp.concatenate([initial_states, states], axis=1)
    decay_chunk = jnp.exp(segsum(jnp.pad(A_cumsum[:, :, :, -1], [(0, 0), (0, 0), (1, 0)])))
    new_states = jnp.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final_state = new_states[:, :-1], new_states[:, -1]
    # 4. state -> output conversion per chunk
    state_decay_out = jnp.exp(A_cumsum)
    Y_off = jnp.einsum("bclhn,bchpn,bhcl->bclhp", C, states, state_decay_out)
    Y = (Y_diag + Y_off).reshape((b, l) + Y_diag.shape[3:])  # "b c l h p -> b (c l) h p"
    return Y, final_state
