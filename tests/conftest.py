"""Strict JAX numerics for every test, in equinox's style: no implicit dtype or rank
promotion, so a silent broadcast or an f32/f64 mix fails loudly."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)


@pytest.fixture
def x64():
    """Runs the test with 64-bit types (for check_grads)."""
    with jax.enable_x64(True):
        yield
