"""Peak memory of one forward+backward pass, with and without ``remat``.

Each configuration runs in a fresh process (so one cannot inherit another's peak),
which reports its peak resident set size during the call (Linux ``VmHWM``, reset
just before it) beside the process's size before the call (Python, JAX, the inputs
and the compiled program) and, on a GPU, the device's ``peak_bytes_in_use``. The work is ``jax.grad`` of ``sum(ys)`` w.r.t. the
params and the inputs, as in ``seqjax bench``'s fwd+bwd rows.

    python benchmarks/memory.py                      # LSTM H256 B8 T=65,536, remat on/off
    python benchmarks/memory.py --cell gru --length 16384 --remat on
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CELLS = ("rnn", "lstm", "gru", "mgu", "min_gru", "min_lstm")


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def child(args):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import seqjax

    cell = getattr(seqjax, args.cell)(args.hidden)
    params = cell.init(jax.random.PRNGKey(0), args.hidden)
    rng = np.random.default_rng(1)
    xs = jnp.asarray(rng.standard_normal((args.batch, args.length, args.hidden), np.float32))
    xs.block_until_ready()
    del rng

    @jax.jit
    def grads(params, xs):
        def loss(params, xs):
            return jnp.sum(seqjax.unroll_batch(cell, params, xs, remat=args.remat == "on")[1])

        return jax.grad(loss, argnums=(0, 1))(params, xs)

    compiled = grads.lower(params, xs).compile()
    analysis = compiled.memory_analysis()
    with open("/proc/self/clear_refs", "w") as f:  # restart VmHWM from the current RSS
        f.write("5")
    baseline = _status("VmRSS")
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, xs))
    seconds = time.perf_counter() - start
    device = jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    print(json.dumps(dict(
        cell=args.cell, hidden=args.hidden, batch=args.batch, length=args.length,
        remat=args.remat, peak_rss_bytes=_status("VmHWM"), baseline_rss_bytes=baseline,
        inputs_bytes=int(xs.size * xs.dtype.itemsize),
        xla_temp_bytes=None if analysis is None else int(analysis.temp_size_in_bytes),
        device_peak_bytes=None if not stats else stats.get("peak_bytes_in_use"),
        seconds=seconds, device=str(device), jax=jax.__version__)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", choices=CELLS, default="lstm")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=65536)
    p.add_argument("--remat", choices=("on", "off", "both"), default="both")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    results = []
    for remat in (("on", "off") if args.remat == "both" else (args.remat,)):
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--cell", args.cell,
               "--hidden", str(args.hidden), "--batch", str(args.batch), "--length",
               str(args.length), "--remat", remat]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"remat={remat}: failed (exit {done.returncode}): "
                  f"{done.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(r)
        gib = 2.0 ** 30
        print(f"{r['cell']} H{r['hidden']} B{r['batch']} T{r['length']} remat={remat}: "
              f"peak RSS {r['peak_rss_bytes'] / gib:.2f} GiB (process before the call "
              f"{r['baseline_rss_bytes'] / gib:.2f} GiB, inputs {r['inputs_bytes'] / gib:.2f} "
              f"GiB; XLA temp {r['xla_temp_bytes'] / gib:.2f} GiB), {r['seconds']:.1f} s "
              f"on {r['device']}, jax {r['jax']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
