"""Strict JAX numerics for every test, in equinox's style: no implicit dtype or rank
promotion, so a silent broadcast or an f32/f64 mix fails loudly."""

import gc
import os

# The tests' programs are small and each is compiled once or twice, so compiling costs
# far more than running: the suite takes about half the time with XLA's CPU backend set
# to compile quickly. One thread per worker (pytest -n 2 runs two). The older
# elemental emitters instead of the MLIR fusion emitters (same HLO, same fusions; the
# fusion emitters compile slowly). An XLA flag that a future jaxlib no longer knows
# aborts at the first compilation with "Unknown flag in XLA_FLAGS": loud, never silent
# (known to jaxlib 0.8.0 through 0.10.2). Set in the environment, so that the
# subprocesses the tests start (examples, `seqjax bench`, multi-process runs) inherit
# them.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                                   "--xla_cpu_use_fusion_emitters=false")
# and the backend's LLVM optimisation level 0 (JAX's own switch for this)
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

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


def _memory_maps() -> int:
    """The process's memory mappings (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


@pytest.fixture(autouse=True)
def _free_compiled_programs():
    """Drops JAX's caches of compiled programs once a worker holds many of them.

    Every program XLA compiles for the CPU keeps about 18 memory mappings of its own
    until it is dropped; a worker that runs half the suite compiles thousands, and at
    Linux's default limit of 65,530 mappings the next compilation's ``mmap`` fails and
    the worker dies of a segmentation fault inside XLA (seen in CI in
    tests/test_unroll.py, late in a worker's run)."""
    yield
    if _memory_maps() > 20_000:
        jax.clear_caches()
        gc.collect()
