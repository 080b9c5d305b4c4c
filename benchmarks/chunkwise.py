"""The matrix-state cells' chunkwise form against a plain ``lax.scan`` over ``apply``.

Two measurements, both of ``jax.grad`` of ``sum(ys)`` w.r.t. the params and the inputs
through :func:`seqjax.unroll_batch` (the fwd+bwd rows of ``seqjax bench``):

* ``speed``: the scan (``chunkwise=False``) and the chunkwise form at each chunk size,
  jitted and warmed up, then called in turn, ``--repeats`` rounds (each call timed
  right after an untimed call of the same function, so that no configuration pays for
  the memory its predecessor left behind). It prints each
  configuration's median and minimum wall time and the median over rounds of its
  time divided by the scan's time *in the same round* (interleaved ratios stay
  meaningful on a busy machine, where absolute times drift), and the same ratio of
  process CPU times. This chose ``seqjax.chunkwise.CHUNK_SIZE_BY_BACKEND``.
* ``memory``: what the backward pass keeps. The residuals that ``jax.vjp`` saves
  (``jax.eval_shape``, nothing is run), their total beside the size of one
  ``[d_k, d_v]`` state per step and head, and XLA's temporary buffers for the
  compiled fwd+bwd (``compiled.memory_analysis()``).

* ``accuracy``: the float32 error of the chunkwise form and of the step form, each
  against a float64 step-form reference on the same params and inputs (``max|a - b| /
  max|b|`` of the outputs, of every leaf of the final state, and of the gradient of a
  random linear functional of both w.r.t. every param leaf and the inputs), at default
  init and with strong decay (log-decay per step from about -45 to -2; delta_net:
  inputs x4). The bound of ``tests/test_chunkwise_numerics.py``: chunkwise error <=
  max(1e-5, 10 x the step form's).
* ``--baseline DIR`` (with ``speed``): also times the chunkwise form of another
  checkout's ``seqjax/chunkwise.py`` (e.g. a ``git worktree`` of an older commit), run
  on the same cells and interleaved with this one, and prints this/baseline ratios.

    python benchmarks/chunkwise.py speed                       # T=2048 H=64 B=8
    python benchmarks/chunkwise.py speed --length 512,8192 --chunk-size 64
    python benchmarks/chunkwise.py speed --chunk-size 32 --baseline /tmp/base
    python benchmarks/chunkwise.py memory --length 8192
    python benchmarks/chunkwise.py accuracy --length 256,4096
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
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


def _baseline_cell(cell, path):
    """``cell`` with its chunkwise recurrence taken from the ``seqjax/chunkwise.py`` of
    the checkout at ``path`` (same features, readout and params)."""
    spec = importlib.util.spec_from_file_location("baseline_chunkwise",
                                                  f"{path}/seqjax/chunkwise.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    chunked = cell.chunkwise.chunked
    name = getattr(chunked, "func", chunked).__name__
    old = getattr(module, name)
    if hasattr(chunked, "keywords"):
        old = functools.partial(old, **chunked.keywords)
    return cell._replace(chunkwise=cell.chunkwise._replace(chunked=old))


def speed(args):
    for name in args.cells:
        for length in args.length:
            cell, params, xs = _setup(name, args.hidden, args.batch, length, args.heads)
            fns = {"scan": jax.jit(_grad(cell, chunkwise=False))}
            for size in args.chunk_size:
                fns[f"chunk={size}"] = jax.jit(_grad(cell, chunk_size=size))
                if args.baseline:
                    fns[f"base chunk={size}"] = jax.jit(_grad(_baseline_cell(cell, args.baseline),
                                                              chunk_size=size))
            for fn in fns.values():
                jax.block_until_ready(fn(params, xs))
            wall = {k: [] for k in fns}
            cpu = {k: [] for k in fns}
            for _ in range(args.repeats):
                for key, fn in fns.items():
                    # an untimed call first: whatever ran before (the scan's large
                    # buffers) leaves the allocator to fault pages in again, a cost that
                    # would fall on the configuration that happens to run next
                    jax.block_until_ready(fn(params, xs))
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
                print(f"  {key:>15}: median {1e3 * np.median(w):7.1f} ms, min "
                      f"{1e3 * w.min():7.1f} ms; / scan: {np.median(w / base_w):.3f} "
                      f"(median of interleaved), {w.min() / base_w.min():.3f} (mins), "
                      f"{np.median(c / base_c):.3f} (CPU time)", flush=True)
                if key.startswith("chunk=") and f"base {key}" in fns:
                    b, bc = np.array(wall[f"base {key}"]), np.array(cpu[f"base {key}"])
                    print(f"  {'this / base':>15}: {np.median(w / b):.3f} (median of "
                          f"interleaved), {w.min() / b.min():.3f} (mins), "
                          f"{np.median(c / bc):.3f} (CPU time)", flush=True)
    print(f"device {jax.devices()[0]}, jax {jax.__version__}, "
          f"default chunk {seqjax.default_chunk_size()}")


def _strong(name, params, key):
    """Params whose log-decay per step lies between about -45 and -2."""
    k1, k2 = jax.random.split(key)
    if name in ("mamba2", "gated_delta_net"):
        a_log = jnp.log(jax.random.uniform(k1, params.a_log.shape, jnp.float32, 3.0, 20.0))
        field = "b_delta" if name == "mamba2" else "b_alpha"
        return params._replace(a_log=a_log, **{field: jnp.ones_like(getattr(params, field))})
    if name == "mlstm":
        size = params.w_f.shape[0]
        return params._replace(
            b_f=jnp.full_like(params.b_f, -25.0),
            w_f=10.0 / np.sqrt(size) * jax.random.normal(k1, params.w_f.shape),
            w_i=3.0 / np.sqrt(size) * jax.random.normal(k2, params.w_i.shape))
    return params


def _relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def accuracy(args):
    print("error = max|a - b| / max|b| against the float64 step form; step / chunkwise")
    print("| cell | T | regime | outputs | final state (worst leaf) | gradient (worst leaf) "
          "| bound held |")
    print("|---|---|---|---|---|---|---|")
    for name in args.cells:
        for length in args.length:
            for regime in ("init", "strong"):
                make = lambda dtype: getattr(seqjax, name)(args.hidden, num_heads=args.heads or 2,  # noqa: E731
                                                           param_dtype=dtype)
                cell = make(jnp.float32)
                params = cell.init(jax.random.PRNGKey(0), args.hidden)
                if regime == "strong":
                    params = _strong(name, params, jax.random.PRNGKey(1))
                scale = 4.0 if (name == "delta_net" and regime == "strong") else 1.0
                xs = scale * jax.random.normal(jax.random.PRNGKey(2), (length, args.hidden))
                leaves = jax.tree_util.tree_leaves(cell.initial_state(params))
                keys = jax.random.split(jax.random.PRNGKey(3), len(leaves) + 1)
                r_y = jax.random.normal(keys[0], (length, args.hidden))
                r_s = [jax.random.normal(k, l.shape) for k, l in zip(keys[1:], leaves)]

                def measure(cell, params, xs, r_y, r_s, **options):
                    def loss(p, x):
                        final, ys = seqjax.unroll(cell, p, x, **options)
                        total = jnp.sum(ys * r_y)
                        for leaf, r in zip(jax.tree_util.tree_leaves(final), r_s):
                            total = total + jnp.sum(leaf * r)
                        return total, (final, ys)

                    g, (final, ys) = jax.jit(jax.grad(loss, (0, 1), has_aux=True))(params, xs)
                    return ([np.asarray(ys)], [np.asarray(l) for l in jax.tree_util.tree_leaves(final)],
                            [np.asarray(l) for l in jax.tree_util.tree_leaves(g)])

                step = measure(cell, params, xs, r_y, r_s, chunkwise=False)
                chunk = measure(cell, params, xs, r_y, r_s, chunkwise=True)
                with jax.enable_x64(True):
                    f64 = lambda a: jnp.asarray(np.asarray(a, np.float64))  # noqa: E731
                    ref = measure(make(jnp.float64), jax.tree_util.tree_map(f64, params), f64(xs),
                                  f64(r_y), [f64(r) for r in r_s], chunkwise=False)
                cols, held = [], True
                for part in range(3):
                    s = max(_relative(a, b) for a, b in zip(step[part], ref[part]))
                    c = max(_relative(a, b) for a, b in zip(chunk[part], ref[part]))
                    held = held and c <= max(1e-5, 10 * s)
                    cols.append(f"{s:.1e} / {c:.1e}")
                print(f"| {name} | {length} | {regime} | " + " | ".join(cols)
                      + f" | {'yes' if held else 'NO'} |", flush=True)
    print(f"\nH={args.hidden}, {args.heads or 2} heads, chunk {seqjax.default_chunk_size()}; "
          f"device {jax.devices()[0]}, jax {jax.__version__}")


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
    p.add_argument("what", choices=("speed", "memory", "accuracy"))
    p.add_argument("--cells", type=lambda t: tuple(t.split(",")), default=CELLS)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--heads", type=int, default=None,
                   help="num_heads (default: the cells' own, one per 64 channels)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=_ints, default=(2048,))
    p.add_argument("--chunk-size", type=_ints, default=(16, 32, 64, 128))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--baseline", default=None,
                   help="speed: another checkout whose seqjax/chunkwise.py is timed beside")
    args = p.parse_args(argv)
    unknown = [c for c in args.cells if c not in CELLS]
    if unknown:
        p.error(f"unknown cells {unknown}; choose from {', '.join(CELLS)}")
    {"speed": speed, "memory": memory, "accuracy": accuracy}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
