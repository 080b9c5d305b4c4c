"""Sequence parallelism against one device: ``seqjax.parallel.unroll_batch`` on 4 forced
host devices (``--xla_force_host_platform_device_count=4``, in a subprocess so that this
process keeps its single device) equals ``seqjax.unroll_batch``, values and gradients."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

import seqjax as sj
from seqjax import parallel

_SEQUENCE_PARALLEL = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    import seqjax as sj
    from seqjax import parallel

    assert jax.device_count() == 4, jax.devices()
    leaves = jax.tree_util.tree_leaves
    B, T, I = 4, 10, 4  # T = 10 over 4 devices: padded to 12 with masked steps
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, I))
    lengths = jnp.array([10, 7, 3, 0], jnp.int32)
    cases = {
        # name: (cell, reverse, lengths, mesh axes, batch_axis)
        "min_gru": (sj.min_gru(4), False, lengths, (4,), None),
        "lru_reverse": (sj.lru(4, 3), True, lengths, (4,), None),
        "stack_2x2": (sj.stack(sj.min_lstm(4), sj.min_gru(4), residual=True), False, None,
                      (2, 2), "data"),
    }
    result = {}
    for name, (cell, reverse, ln, shape, batch_axis) in cases.items():
        names = ("data", "time") if len(shape) == 2 else ("time",)
        mesh = jax.make_mesh(shape, names)
        params = cell.init(jax.random.PRNGKey(0), I)
        state = jax.tree_util.tree_map(
            lambda s: jnp.ones((B,) + s.shape, s.dtype) * 0.5, cell.initial_state(params))

        def one(p, xs, s):
            return sj.unroll_batch(cell, p, xs, s, lengths=ln, reverse=reverse)

        def many(p, xs, s):
            return parallel.unroll_batch(cell, p, xs, s, mesh=mesh, batch_axis=batch_axis,
                                         lengths=ln, reverse=reverse)

        def run(fn):
            def value(p, xs, s):
                out = fn(p, xs, s)
                weights = [1.0 + jnp.arange(l.size).reshape(l.shape) / l.size
                           for l in leaves(out)]
                return sum(jnp.sum(jnp.abs(l) ** 2 * w)
                           for l, w in zip(leaves(out), weights)), out
            return jax.jit(jax.value_and_grad(value, argnums=(0, 1, 2), has_aux=True))(
                params, xs, state)

        (_, o1), g1 = run(one)
        (_, o4), g4 = run(many)
        diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                                for x, y in zip(leaves(a), leaves(b), strict=True))
        result[name] = {"out": diff(o1, o4), "grad": diff(g1, g4),
                        "devices": len(o4[1].sharding.device_set),
                        "scale": max(float(np.max(np.abs(np.asarray(l)))) for l in leaves(g1))}
    print(json.dumps(result))
""")


def test_sequence_parallel_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _SEQUENCE_PARALLEL], env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result) == {"min_gru", "lru_reverse", "stack_2x2"}
    for name, r in result.items():
        assert r["devices"] == 4, (name, r)  # ys really is spread over the devices
        assert r["scale"] > 1e-2, (name, r)  # the gradients are not trivially zero
        assert r["out"] < 1e-5 and r["grad"] < 1e-4 * max(1.0, r["scale"]), (name, r)


def test_sequence_parallel_refuses_what_it_cannot_split():
    mesh = parallel.make_mesh(jax.devices()[:1])
    cell = sj.lstm(4)
    params = cell.init(jax.random.PRNGKey(0), 3)
    with pytest.raises(TypeError, match=r"needs a linear-recurrence cell .* got lstm\(hidden"):
        parallel.unroll_batch(cell, params, jnp.ones((1, 4, 3)), mesh=mesh)
    mixed = sj.stack(sj.min_gru(4), sj.gru(4))
    with pytest.raises(TypeError, match="linear-recurrence cell"):
        parallel.unroll_batch(mixed, mixed.init(jax.random.PRNGKey(0), 3), jnp.ones((1, 4, 3)),
                              mesh=mesh)
    cell = sj.min_gru(4)
    params = cell.init(jax.random.PRNGKey(0), 3)
    with pytest.raises(ValueError, match=r"has axes \('time',\), not 'seq'"):
        parallel.unroll_batch(cell, params, jnp.ones((1, 4, 3)), mesh=mesh, axis="seq")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['fast'\]"):
        parallel.unroll_batch(cell, params, jnp.ones((1, 4, 3)), mesh=mesh, fast=True)
    with pytest.raises(ValueError, match=r"expected xs of shape \[batch, time, 3\]"):
        parallel.unroll_batch(cell, params, jnp.ones((4, 3)), mesh=mesh)
