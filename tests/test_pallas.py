"""The Pallas kernels against the plain unroll, in Pallas interpret mode on CPU.

* ``seqjax.kernels.linear_scan`` against ``lax.scan`` of ``h = a * h + b`` (real and
  complex, forward and reverse, several feature axes, tiles that do not divide the
  sizes): values and gradients w.r.t. ``a``, ``b`` and ``h0``;
* every linear-recurrence cell with ``pallas=True`` against ``lax.scan`` over its
  coefficients, and the gated cells with ``pallas=True`` (the fused kernel) against
  the plain scan, with ragged lengths, a given initial state and ``reverse``:
  outputs, final states and gradients w.r.t. params, inputs and the initial state;
* the kernels lower to Triton IR for CUDA (``jax.export`` with ``platforms=["cuda"]``,
  which runs the Pallas Triton lowering without a GPU); compiling that IR needs one;
* on a GPU backend only (``benchmarks/gpu.sh``): the compiled kernels at realistic
  sizes against the plain unroll.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import seqjax as sj
from seqjax import kernels
from seqjax.bench import cells as bench_cells
from seqjax.kernels import pallas_scan

ON_GPU = jax.default_backend() == "gpu"
_leaves = jax.tree_util.tree_leaves


def _close(a, b, atol=2e-5, rtol=2e-5):
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


def _reference_scan(a, b, h0, *, reverse):
    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    return lax.scan(step, h0, (a, b), reverse=reverse)[1]


def _outputs_and_grads(fn, args, seed=1):
    """``fn(*args)`` and the gradient w.r.t. every argument of a real loss that weighs
    each output element differently (real and imaginary parts), in one ``jax.jit``."""
    shapes = jax.eval_shape(fn, *args)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(_leaves(shapes)))
    weights = [jax.random.normal(k, l.shape) for k, l in zip(keys, _leaves(shapes))]

    def loss(*args):
        out = fn(*args)
        total = sum(jnp.sum(jnp.real(o).astype(jnp.float32) * w)
                    + jnp.sum(jnp.imag(o).astype(jnp.float32) * w)
                    for o, w in zip(_leaves(out), weights))
        return total, out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(args))),
                                                 has_aux=True))(*args)
    return out, grads


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_linear_scan_matches_lax_scan(complex_):
    T, B, F = 5, 3, (2, 3)  # 6 features in tiles of 4 and 3 rows in tiles of 2: padded
    k = jax.random.split(jax.random.PRNGKey(0), 6)
    a = jax.random.uniform(k[0], (T, B) + F, minval=-1.0, maxval=1.0)
    b = jax.random.normal(k[1], (T, B) + F)
    h0 = jax.random.normal(k[2], (B,) + F)
    if complex_:
        a = lax.complex(a, 0.5 * jax.random.normal(k[3], a.shape))
        b = lax.complex(b, jax.random.normal(k[4], b.shape))
        h0 = lax.complex(h0, jax.random.normal(k[5], h0.shape))

    def both_ways(scan):
        return lambda a, b, h0: (scan(a, b, h0, reverse=False), scan(a, b, h0, reverse=True))

    kernel = functools.partial(kernels.linear_scan, interpret=not ON_GPU, block_batch=2,
                               block_features=4)
    _close(_outputs_and_grads(both_ways(kernel), (a, b, h0)),
           _outputs_and_grads(both_ways(_reference_scan), (a, b, h0)))


def test_linear_scan_checks_its_inputs():
    a = jnp.ones((4, 2, 3))
    with pytest.raises(ValueError, match=r"expected h0 of shape \(2, 3\)"):
        kernels.linear_scan(a, a, jnp.ones((3,)))
    with pytest.raises(ValueError, match="same shape"):
        kernels.linear_scan(a, a[:, :1], jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="power of 2.*got 3"):
        kernels.linear_scan(a, a, jnp.ones((2, 3)), block_features=3)


def _linear_cells():
    return sorted(n for n, base in bench_cells.BASES.items() if base.option == "associative")


def _batch_setup(cell, input_size, batch=3, time=5, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = cell.init(k[0], input_size)
    xs = jax.random.normal(k[1], (batch, time, input_size))
    state = jax.tree_util.tree_map(
        lambda s: (jax.random.normal(k[2], (batch,) + s.shape) * 0.5).astype(s.dtype)
        if not jnp.iscomplexobj(s) else lax.complex(
            jax.random.normal(k[2], (batch,) + s.shape),
            jax.random.normal(k[3], (batch,) + s.shape)).astype(s.dtype),
        cell.initial_state(params))
    lengths = jnp.array([time, 2, 0][:batch], jnp.int32)
    return params, xs, state, lengths


def _compare_unrolls(cell, params, xs, state, lengths, reverse, plain_opts, atol=2e-5):
    def run(opts):
        return lambda p, x, s: sj.unroll_batch(cell, p, x, s, lengths=lengths,
                                               reverse=reverse, **opts)

    _close(_outputs_and_grads(run({"pallas": True}), (params, xs, state)),
           _outputs_and_grads(run(plain_opts), (params, xs, state)), atol=atol, rtol=atol)


@pytest.mark.parametrize("name", _linear_cells())
def test_linear_cells_with_the_kernel_equal_the_sequential_scan(name):
    H = 4
    cell = bench_cells.cell_spec(name).build(H, 3, jnp.float32)
    params, xs, state, lengths = _batch_setup(cell, H)
    # the reference: lax.scan over the same coefficients (the associative scan is
    # checked against loops over apply in test_unroll.py)
    _compare_unrolls(cell, params, xs, state, lengths, reverse=(name != "min_gru"),
                     plain_opts={"associative": False, "hoist": True, "pallas": False},
                     atol=5e-5)


@pytest.mark.skipif(ON_GPU, reason="H = 4 is below Triton's dot minimum of 16; the "
                    "GPU-only test below runs the compiled kernel")
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_gated_cells_with_the_fused_kernel_equal_the_plain_scan(name):
    # the LSTM: a two-leaf state, gates split in four (the backward's blocked dr), g = u + r;
    # the GRU: extras (b_hn), u and r apart, sliced gates
    cell = {"lstm": sj.lstm(4), "gru": sj.gru(4)}[name]
    params, xs, state, lengths = _batch_setup(cell, 3)
    _compare_unrolls(cell, params, xs, state, lengths, reverse=(name == "lstm"),
                     plain_opts={"fused": False, "hoist": True})


def test_unroll_selects_the_kernel_only_where_asked():
    # opt-in everywhere until benchmarks/gpu.sh has compiled and timed it on a GPU
    assert not sj.default_pallas("cpu") and not sj.default_pallas("gpu")
    assert pallas_scan.default_interpret("cpu") and not pallas_scan.default_interpret("gpu")
    cell = sj.min_gru(4)
    params = cell.init(jax.random.PRNGKey(0), 4)
    xs = jnp.ones((1, 5, 4))

    def calls(**opts):
        text = str(jax.make_jaxpr(lambda x: sj.unroll_batch(cell, params, x, **opts))(xs))
        return text.count("pallas_call")

    assert calls() == (1 if sj.default_pallas() else 0)
    assert calls(pallas=True) == 1
    assert calls(pallas=True, associative=False) == 1  # pallas=True wins
    assert calls(associative=True) == 0  # an explicit strategy overrides the default


def test_fused_kernel_states_its_limits():
    big = sj.lstm(512)  # W [512, 2048] float32: 4 MiB
    params = jax.eval_shape(lambda k: big.init(k, 8), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"\(512, 2048\) float32 \(4096 KiB\) exceeds the "
                                         r"kernel's on-chip limit of 128 KiB"):
        jax.eval_shape(lambda p: sj.unroll_batch(big, p, jnp.ones((1, 2, 8)), pallas=True),
                       params)
    assert kernels.fits_on_chip((64, 256), jnp.float32)
    assert kernels.fits_on_chip((128, 512), jnp.bfloat16)
    assert not kernels.fits_on_chip((128, 512), jnp.float32)
    gru = sj.gru(64)
    params = jax.eval_shape(lambda k: gru.init(k, 16), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="Triton needs power-of-2 sizes"):
        jax.eval_shape(lambda p: kernels.fused_recurrent(
            gru.hoist.recurrent, p, jnp.ones((2, 16, 192)), jnp.zeros((16, 64)),
            interpret=False), params)


# ------------------------------------------------------------- Triton IR (no GPU)


def _triton_calls(fn, *args):
    """How many Triton kernels ``fn`` lowers to for CUDA (lowering only, no compile)."""
    from jax import export

    exported = export.export(
        jax.jit(fn), platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(*args)
    return exported.mlir_module().count("__gpu$xla.gpu.triton")


def _needs_triton_lowering():
    try:
        from jax._src.lib import triton  # noqa: F401  (jaxlib's Triton dialect bindings)
    except ImportError as e:
        pytest.skip(f"this jaxlib cannot lower Pallas to Triton: {e}")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "complex64"])
def test_linear_scan_lowers_to_triton(dtype):
    _needs_triton_lowering()
    a = jax.ShapeDtypeStruct((64, 16, 256), jnp.dtype(dtype))
    h0 = jax.ShapeDtypeStruct((16, 256), jnp.dtype(dtype))
    scan = functools.partial(kernels.linear_scan, interpret=False)
    assert _triton_calls(scan, a, a, h0) == 1
    loss = lambda a, b, h: jnp.sum(jnp.abs(scan(a, b, h)).astype(jnp.float32))
    assert _triton_calls(jax.grad(loss, argnums=(0, 1, 2)), a, a, h0) == 2


@pytest.mark.parametrize("name, dtype", [("rnn", "float32"), ("lstm", "float32"),
                                         ("lstm", "bfloat16")])
def test_fused_kernel_lowers_to_triton(name, dtype):
    _needs_triton_lowering()
    H = 64
    cell = {"rnn": sj.rnn, "lstm": sj.lstm}[name](H, param_dtype=jnp.dtype(dtype))
    params = jax.eval_shape(lambda k: cell.init(k, 32), jax.random.PRNGKey(0))
    xs = jax.ShapeDtypeStruct((32, 16, 32), jnp.dtype(dtype))

    def forward(p, xs):
        state = jax.tree_util.tree_map(lambda s: jnp.zeros((16,) + s.shape, s.dtype),
                                       cell.initial_state(p))
        return kernels.fused_recurrent(cell.hoist.recurrent, p, cell.hoist.input_map(p, xs),
                                       state, interpret=False)[1]

    assert _triton_calls(forward, params, xs) == 1
    loss = lambda p, xs: jnp.sum(forward(p, xs).astype(jnp.float32))
    assert _triton_calls(jax.grad(loss, argnums=(0, 1)), params, xs) == 2


# ------------------------------------------------------------------- GPU only


@pytest.mark.skipif(not ON_GPU, reason="compiled Pallas kernels need a GPU backend")
@pytest.mark.parametrize("name", ["min_gru", "lru", "lstm", "rnn"])
def test_compiled_kernels_on_gpu_equal_the_plain_unroll(name):
    H = 64
    cell = {"min_gru": sj.min_gru(256), "lru": sj.lru(128, 128), "lstm": sj.lstm(H),
            "rnn": sj.rnn(H)}[name]
    size = 256 if name == "min_gru" else (128 if name == "lru" else 32)
    params, xs, state, _ = _batch_setup(cell, size, batch=16, time=256)
    lengths = jnp.arange(16, dtype=jnp.int32) * 16
    plain = ({"associative": True, "pallas": False} if cell.linear is not None
             else {"fused": False, "hoist": True})
    # TF32 matmuls in the plain path on GPU: compare at 1e-2
    _compare_unrolls(cell, params, xs, state, lengths, False, plain, atol=1e-2)
