"""Transparent huge pages for glibc's malloc, and the time of a training step on XLA:CPU.

XLA:CPU allocates fresh buffers for every call of a compiled function; glibc serves the
large ones with ``mmap`` and returns them with ``munmap``, so every step the kernel
faults the same memory in again, one 4 KiB page at a time. With the glibc tunable
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35, on a kernel whose
``/sys/kernel/mm/transparent_hugepage/enabled`` is ``madvise`` or ``always``) malloc
asks for transparent huge pages for those blocks: 2 MiB per fault. glibc reads its
tunables once, when a process starts, so each configuration runs in its own process.

This script times the training step of ``seqjax bench recall``'s models (the step
``seqjax.train.make_train_step`` compiles: forward, backward and the AdamW update, one
thread, batch 64 of MQAR, V = 128, T = 32, N = 4) in a child process with the tunable
and in one without, ``--rounds`` times in alternation, and prints each configuration's
median over rounds of its median step time, and the median over rounds of the ratio
(with / without) within the round, with the user and system CPU seconds of the
children (page faults are system time). It chose ``seqjax bench recall``'s default of
starting its worker processes with the tunable.

    python benchmarks/hugepages.py                                  # five blocks, D = 32
    python benchmarks/hugepages.py --blocks mamba,mamba2 --d-model 64 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

TUNABLE = "glibc.malloc.hugetlb=1"


def _child(block, d_model, steps):
    """One process: compile the recall model's train step, time ``steps`` calls."""
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false").strip()
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    import seqjax
    from seqjax.bench.recall import optimizer, recall_model

    model = recall_model(block, 128, d_model, length=32, window=16)
    params = model.init(jax.random.PRNGKey(0))
    task = seqjax.tasks.mqar(128, 32, 4)

    def loss_fn(p, batch, rng):
        logits = jax.vmap(model.apply, in_axes=(None, 0))(p, batch.tokens)
        return jnp.mean(jax.vmap(task.loss)(logits, batch))

    opt = optimizer(3e-3, steps)
    key = jax.random.PRNGKey(1)
    batch = jax.vmap(task.sample)(jax.random.split(key, 64))
    state = opt.init(params)
    step = seqjax.train.make_train_step(loss_fn, opt).lower(params, state, batch,
                                                            key).compile()
    for _ in range(3):
        params, state, _ = jax.block_until_ready(step(params, state, batch, key))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        params, state, _ = jax.block_until_ready(step(params, state, batch, key))
        times.append(time.perf_counter() - t0)
    print(json.dumps({"ms": float(np.median(times)) * 1e3}))


def _run(block, d_model, steps, huge):
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if huge:
        env["GLIBC_TUNABLES"] = TUNABLE
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, __file__, "--child", block, "--d-model",
                           str(d_model), "--steps", str(steps)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"hugepages.py: the {block} process failed:\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ms = json.loads(done.stdout.strip().splitlines()[-1])["ms"]
    return ms, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", default="attention,mamba,mamba2,gated_deltanet,lstm")
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--steps", type=int, default=30, help="timed steps per process")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(args.child, args.d_model, args.steps)

    import platform

    import numpy as np

    thp = "/sys/kernel/mm/transparent_hugepage/enabled"
    try:
        with open(thp) as f:
            thp = f"{thp}: {f.read().strip()}"
    except OSError:
        thp = f"{thp}: unreadable"
    print(f"# {platform.platform()}; glibc {platform.libc_ver()[1] or 'unknown'}; {thp}")
    print(f"# recall model train step, B = 64, T = 32, V = 128, D = {args.d_model}, "
          f"1 thread; {args.steps} steps per process, {args.rounds} rounds\n")
    print("| block | without (ms) | with (ms) | with / without | CPU user+sys s, without "
          "| with |")
    print("|---|---|---|---|---|---|")
    for block in args.blocks.split(","):
        off, on, ratios, cpu_off, cpu_on = [], [], [], [], []
        for r in range(args.rounds):
            first = r % 2 == 0  # alternate which configuration runs first
            for huge in ((False, True) if first else (True, False)):
                ms, user, sys_ = _run(block, args.d_model, args.steps, huge)
                (on if huge else off).append(ms)
                (cpu_on if huge else cpu_off).append((user, sys_))
            ratios.append(on[-1] / off[-1])
        u0, s0 = np.sum(cpu_off, axis=0)
        u1, s1 = np.sum(cpu_on, axis=0)
        print(f"| {block} | {np.median(off):.1f} | {np.median(on):.1f} | "
              f"{np.median(ratios):.2f} | {u0:.0f} + {s0:.0f} | {u1:.0f} + {s1:.0f} |",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
