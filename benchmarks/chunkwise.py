"""The matrix-state cells' chunkwise form against a plain ``lax.scan`` over ``apply``.

Two measurements, both of ``jax.grad`` of ``sum(ys)`` w.r.t. the params and the inputs
through :func:`seqjax.unroll_batch` (the fwd+bwd rows of ``seqjax bench``):

* ``speed``: the scan (``chunkwise=False``) and the chunkwise form at each chunk size,
  jitted and warmed up, then called in turn, ``--repeats`` rounds. It prints each
  configuration's median and minimum wall time and the median over rounds of its
  time divided by the scan's time *in the same round* (interleaved ratios stay
  meaningful on a busy machine, where absolute times drift), and the same ratio of
  process CPU times. This chose ``seqjax.chunkwise.CHUNK_SIZE_BY_BACKEND``.
* ``memory``: what the backward pass keeps. The residuals that ``jax.vjp`` saves
  (``jax.eval_shape``, nothing is run), their total beside the size of one
  ``[d_k, d_v]`` state per step and head, and XLA's temporary buffers for the
  compiled fwd+bwd (``compiled.memory_analysis()``).

    python benchmarks/chunkwise.py speed                       # T=2048 H=64 B=8
    python benchmarks/chunkwise.py speed --length 512,8192 --chunk-size 64
    python benchmarks/chunkwise.py memory --length 8192
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import seqjax

CELLS = ("mlstm", "delta_net", "gated_delta_net", "mamba2")


def _ints(text):
    return tuple(int(v) for v in text.split(",") if v)


def _setup(name, hidden, batch, length, heads):
    cell = getattr(seqjax, name)(hidden, num_heads=heads)
    params = cell.init(jax.random.PRNGKey(0), hidden)
    xs = jax.random.normal(jax.random.PRNGKey(1), (batch, length, hidden), jnp.float32)
    return cell, params, xs


def _grad(cell, **options):
    def loss(params, xs):
        return jnp.sum(seqjax.unroll_batch(cell, params, xs, **options)[1])

    return jax.grad(loss, argnums=(0, 1))


def speed(args):
    for name in args.cells:
        for length in args.length:
            cell, params, xs = _setup(name, args.hidden, args.batch, length, args.heads)
            fns = {"scan": jax.jit(_grad(cell, chunkwise=False))}
            for size in args.chunk_size:
                fns[f"chunk={size}"] = jax.jit(_grad(cell, chunk_size=size))
            for fn in fns.values():
                jax.block_until_ready(fn(params, xs))
            wall = {k: [] for k in fns}
            cpu = {k: [] for k in fns}
            for _ in range(args.repeats):
                for key, fn in fns.items():
                    c, w = time.process_time(), time.perf_counter()
                    jax.block_until_ready(fn(params, xs))
                    wall[key].append(time.perf_counter() - w)
                    cpu[key].append(time.process_time() - c)
            base_w, base_c = np.array(wall["scan"]), np.array(cpu["scan"])
            print(f"{name} B={args.batch} T={length} H={args.hidden} ({cell!r}): "
                  f"scan fwd+bwd median {1e3 * np.median(base_w):.1f} ms, min "
                  f"{1e3 * base_w.min():.1f} ms", flush=True)
            for key in fns:
                if key == "scan":
                    continue
                w, c = np.array(wall[key]), np.array(cpu[key])
                print(f"  {key:>10}: median {1e3 * np.median(w):7.1f} ms, min "
                      f"{1e3 * w.min():7.1f} ms; / scan: {np.median(w / base_w):.3f} "
                      f"(median of interleaved), {w.min() / base_w.min():.3f} (mins), "
                      f"{np.median(c / base_c):.3f} (CPU time)", flush=True)
    print(f"device {jax.devices()[0]}, jax {jax.__version__}, "
          f"default chunk {seqjax.default_chunk_size()}")


def memory(args):
    gib = 2.0 ** 30
    for name in args.cells:
        for length in args.length:
            cell, params, xs = _setup(name, args.hidden, args.batch, length, args.heads)
            state = cell.initial_state(params)
            leaves = jax.tree_util.tree_leaves(state)
            per_step = args.batch * length * leaves[0].size * 4  # the [heads, d_k, d_v] leaf
            print(f"{name} B={args.batch} T={length} H={args.hidden}: one state per step "
                  f"would be {per_step / gib:.3f} GiB", flush=True)
            for label, options in (("chunkwise", {}), ("scan", {"chunkwise": False})):
                def loss(params, xs, options=options):
                    return jnp.sum(seqjax.unroll_batch(cell, params, xs, **options)[1])

                residuals = jax.eval_shape(lambda p, x: jax.vjp(loss, p, x)[1], params, xs)
                saved = sum(np.prod(r.shape) * r.dtype.itemsize
                            for r in jax.tree_util.tree_leaves(residuals))
                biggest = max(jax.tree_util.tree_leaves(residuals), key=lambda r: r.size)
                compiled = jax.jit(_grad(cell, **options)).lower(params, xs).compile()
                analysis = compiled.memory_analysis()
                temp = None if analysis is None else analysis.temp_size_in_bytes
                print(f"  {label:>9}: vjp residuals {saved / gib:.3f} GiB (largest "
                      f"{tuple(biggest.shape)}), XLA temp for fwd+bwd "
                      f"{'?' if temp is None else f'{temp / gib:.3f}'} GiB", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("speed", "memory"))
    p.add_argument("--cells", type=lambda t: tuple(t.split(",")), default=CELLS)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=None,
                   help="num_heads (default: the cells' own, one per 64 channels)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=_ints, default=(2048,))
    p.add_argument("--chunk-size", type=_ints, default=(16, 32, 64, 128))
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    unknown = [c for c in args.cells if c not in CELLS]
    if unknown:
        p.error(f"unknown cells {unknown}; choose from {', '.join(CELLS)}")
    (speed if args.what == "speed" else memory)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
