"""``jax.vmap(unroll)`` against ``unroll_batch`` and Flax's ``nn.RNN``, same process.

The idiom a JAX user writes first, ``jax.vmap(lambda x: seqjax.unroll(cell, p, x))``,
must cost what ``seqjax.unroll_batch`` costs. Each round times every implementation
once (compiled on its own, warmed up, ``repeats`` calls); the table reports the best
round's median, so a slow moment of a shared machine hits all implementations alike.

    python benchmarks/vmap.py                       # LSTM and GRU, B 8 and 64, T 256, H 256
    python benchmarks/vmap.py --batch 8 --length 32 --hidden 16 --rounds 1 --out /tmp/v

Writes ``vmap.json`` and ``vmap.md`` to ``--out`` (default ``docs/bench``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import sys

import jax
import jax.numpy as jnp

import seqjax
from seqjax import _cli
from seqjax.bench import peers
from seqjax.bench.cells import Case
from seqjax.bench.harness import grad_fn
from seqjax.bench.timing import time_fn


def implementations(cell_name, batch, length, hidden):
    """``{name: (fwd(params, xs[B, T, H]) -> ys, params)}`` for one shape."""
    cell = {"lstm": seqjax.lstm, "gru": seqjax.gru}[cell_name](hidden)
    params = cell.init(jax.random.PRNGKey(1), hidden)
    out = {
        "unroll_batch": (lambda p, xs: seqjax.unroll_batch(cell, p, xs)[1], params),
        "vmap(unroll)": (lambda p, xs: jax.vmap(lambda x: seqjax.unroll(cell, p, x)[1])(xs),
                         params),
    }
    case = Case(cell_name, batch, length, hidden, hidden, hidden, "float32")
    xs = jnp.zeros((batch, length, hidden))
    try:
        fwd, p, _ = peers.build_jax("flax", cell_name, 1, case, jnp.float32,
                                    jax.random.PRNGKey(1), xs)
        out["flax nn.RNN"] = (fwd, p)
    except peers.Skip as e:
        print(f"flax skipped: {e}", file=sys.stderr)
    return out


def measure(cells, batches, length, hidden, rounds, repeats):
    rows = []
    for cell_name in cells:
        for batch in batches:
            xs = jax.random.normal(jax.random.PRNGKey(0), (batch, length, hidden))
            impls = implementations(cell_name, batch, length, hidden)
            for mode in ("fwd", "fwd+bwd"):
                best = {}
                for _ in range(rounds):
                    for name, (fwd, params) in impls.items():
                        fn = fwd if mode == "fwd" else grad_fn(fwd)
                        t = time_fn(fn, (params, xs), warmup=2, repeats=repeats)
                        best[name] = min(best.get(name, float("inf")), t.median_s)
                base = best["unroll_batch"]
                for name, seconds in best.items():
                    rows.append(dict(cell=cell_name, batch=batch, length=length, hidden=hidden,
                                     mode=mode, impl=name, median_ms=1e3 * seconds,
                                     vs_unroll_batch=seconds / base))
                    print(f"{cell_name} B{batch} {mode:8s} {name:14s} {1e3 * seconds:8.2f} ms "
                          f"{seconds / base:5.2f}x", flush=True)
    return rows


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def table(rows, meta) -> str:
    lines = [
        "# `jax.vmap(unroll)` against `unroll_batch` and Flax",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['device_kind']} ({meta['cpu_count']} CPUs), {meta['date']}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v),
        "",
        "float32, input size = hidden size; the best round's median per implementation, "
        "ratio to `unroll_batch` in the same run.",
        "",
        "| cell | B | T | H | mode | unroll_batch | vmap(unroll) | Flax nn.RNN |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["cell"], r["batch"], r["length"], r["hidden"], r["mode"]) for r in rows})
    for key in keys:
        got = {r["impl"]: r for r in rows
               if (r["cell"], r["batch"], r["length"], r["hidden"], r["mode"]) == key}
        cells = []
        for impl in ("unroll_batch", "vmap(unroll)", "flax nn.RNN"):
            r = got.get(impl)
            cells.append("—" if r is None else f"{r['median_ms']:.1f} ms ({r['vs_unroll_batch']:.2f}×)")
        lines.append("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cells", type=_cli.names(("lstm", "gru")), default=("lstm", "gru"),
                   help="comma list of lstm, gru")
    p.add_argument("--batch", type=_cli.positive_ints, default=(8, 64), help="batch sizes")
    p.add_argument("--length", type=_cli.positive_int, default=256, help="sequence length T")
    p.add_argument("--hidden", type=_cli.positive_int, default=256, help="hidden size H (= input)")
    p.add_argument("--rounds", type=_cli.positive_int, default=3, help="interleaved rounds")
    p.add_argument("--repeats", type=_cli.positive_int, default=5, help="timed calls per round")
    p.add_argument("--out", default="docs/bench", help="output directory")
    args = p.parse_args(argv)
    rows = measure(args.cells, args.batch, args.length, args.hidden, args.rounds, args.repeats)
    dev = jax.devices()[0]
    meta = dict(
        command="python benchmarks/vmap.py " + " ".join(argv),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device_kind=dev.device_kind, platform=dev.platform, cpu_count=os.cpu_count(),
        machine=platform.machine(),
        versions={k: _version(k) for k in ("jax", "jaxlib", "flax")} | {
            "python": platform.python_version()})
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vmap.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    (out / "vmap.md").write_text(table(rows, meta))
    print(f"wrote {out / 'vmap.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
