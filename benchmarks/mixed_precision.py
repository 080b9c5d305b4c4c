"""Mixed precision for the classic cells: the compute ``dtype`` against float32, same process.

Three variants of each cell, same shapes, same inputs (float32 ``[B, T, H]``, input
size = hidden size), seqjax's default unroll options for the backend:

* ``float32``: float32 params and computation (the baseline);
* ``dtype=bfloat16``: float32 params; both matmuls take bfloat16 operands and
  accumulate in float32; gates and state float32 (``seqjax.lstm(H, dtype=jnp.bfloat16)``);
* ``param_dtype=bfloat16``: bfloat16 params, so everything runs in bfloat16 (the matmuls
  accumulate as XLA chooses, the state is bfloat16).

Each round times every variant once (compiled on its own, warmed up, ``repeats`` calls,
``block_until_ready``); the table reports the median over all rounds' calls and the
ratio to float32 in the same run, so a slow moment of a shared machine hits all variants
alike. ``fwd`` is ``jit(unroll_batch)``; ``fwd+bwd`` is ``jit(grad)`` of the summed
outputs w.r.t. params and inputs (``seqjax.bench.harness.grad_fn``), with the fused
backward as seqjax's default for the batch (``auto``) and forced on (``on``; skipped
where ``auto`` is on), every variant alike (``--fused``). Beside the times:
how far each variant's forward outputs are from float32's (max abs difference over max
abs value), the accuracy the speed is bought with.

    python benchmarks/mixed_precision.py                 # LSTM, GRU; B16/T512/H128, B64/T256/H256
    python benchmarks/mixed_precision.py --shapes 4x32x16 --rounds 1 --repeats 2 --out /tmp/mp

Writes ``mixed_precision.json`` and ``mixed_precision.md`` to ``--out`` (default
``docs/bench``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

import seqjax
from seqjax import _cli
from seqjax.bench.harness import forward_fn, grad_fn
from seqjax.bench.timing import time_fn

VARIANTS = {
    "float32": {},
    "dtype=bfloat16": {"dtype": jnp.bfloat16},
    "param_dtype=bfloat16": {"param_dtype": jnp.bfloat16},
}
MODES = ("fwd", "fwd+bwd")
CELLS = {"lstm": seqjax.lstm, "gru": seqjax.gru}
FUSED = {"auto": {}, "on": {"fused": True}, "off": {"fused": False}}


def _shape(text: str):
    parts = text.lower().split("x")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"a shape is BxTxH, e.g. 16x512x128, got {text!r}")
    return tuple(_cli.positive_int(p) for p in parts)


def shapes(text: str) -> tuple:
    """``"16x512x128,64x256x256"`` -> ``((16, 512, 128), (64, 256, 256))``."""
    return tuple(_shape(t) for t in text.split(",") if t)


def build(cell_name, hidden, variant, key, options):
    """``(fwd(params, xs) -> ys, params)`` of one variant."""
    cell = CELLS[cell_name](hidden, **VARIANTS[variant])
    return forward_fn(cell, options), cell.init(key, hidden)


def deviations(built, xs):
    """Per variant: max |y - y_float32| / max |y_float32| of the forward outputs, all
    variants given the float32 params (cast to bfloat16 for ``param_dtype``)."""
    fwd32, params32 = built["float32"]
    reference = np.asarray(jax.jit(fwd32)(params32, xs), np.float64)
    out = {}
    for variant, (fwd, params) in built.items():
        same = jax.tree_util.tree_map(lambda a, b: a.astype(b.dtype), params32, params)
        ys = np.asarray(jax.jit(fwd)(same, xs).astype(jnp.float32), np.float64)
        out[variant] = float(np.max(np.abs(ys - reference)) / np.max(np.abs(reference)))
    return out


def measure(cells, grid, rounds, repeats, fused=("auto",)):
    rows = []
    for cell_name in cells:
        for batch, length, hidden in grid:
            xs = jax.random.normal(jax.random.PRNGKey(1), (batch, length, hidden))
            deviation = None
            for how in fused:
                if how != "auto" and "auto" in fused and _fused_label("auto", batch) == (
                        f"auto ({how})"):
                    continue  # what auto measured already
                built = {v: build(cell_name, hidden, v, jax.random.PRNGKey(0), FUSED[how])
                         for v in VARIANTS}
                if deviation is None:
                    deviation = deviations(built, xs)
                # the forward pass is the same whatever the backward: time it once
                for mode in MODES if how == fused[0] else MODES[1:]:
                    times = {v: [] for v in VARIANTS}
                    compile_s = {}
                    for _ in range(rounds):
                        for v, (fwd, params) in built.items():
                            fn = fwd if mode == "fwd" else grad_fn(fwd)
                            t = time_fn(fn, (params, xs), warmup=2, repeats=repeats)
                            times[v].extend(t.times_s)
                            compile_s.setdefault(v, t.compile_s)
                    base = statistics.median(times["float32"])
                    for v in VARIANTS:
                        median = statistics.median(times[v])
                        rows.append(dict(
                            cell=cell_name, batch=batch, length=length, hidden=hidden,
                            mode=mode, fused=how, variant=v, median_ms=1e3 * median,
                            min_ms=1e3 * min(times[v]), calls=len(times[v]),
                            vs_float32=median / base, compile_s=compile_s[v],
                            fwd_deviation_from_float32=deviation[v]))
                        print(f"{cell_name} B{batch} T{length} H{hidden} {mode:8s} "
                              f"fused={how:4s} {v:21s} {1e3 * median:9.2f} ms "
                              f"{median / base:5.2f}x  dev {deviation[v]:.1e}", flush=True)
    return rows


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_info():
    """``(model name, flags that decide bfloat16 speed)`` from ``/proc/cpuinfo`` (Linux)."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, None
    model, flags = None, set()
    for line in text.splitlines():
        if line.startswith("model name") and model is None:
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags.update(line.split(":", 1)[1].split())
    return model, sorted(f for f in flags
                         if "bf16" in f or f in ("avx512f", "avx2", "amx_tile"))


def table(rows, meta) -> str:
    lines = [
        "# Mixed precision: compute `dtype` against float32",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['device_kind']} ({meta['platform']}), processor "
        f"`{meta['cpu_model'] or meta['processor'] or meta['machine']}`, "
        f"{meta['cpu_count']} CPUs, "
        f"bf16-related CPU flags: {', '.join(meta['cpu_flags'] or []) or 'none'}; "
        f"{meta['date']}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v),
        "",
        f"Median over {meta['rounds']} interleaved round(s) of {meta['repeats']} calls "
        "(after 2 warm-ups) per variant, ms; in brackets the ratio to float32 in the same "
        "run (**< 1: faster than float32**). `deviation`: max |y - y_float32| / max "
        "|y_float32| of the forward outputs, same (rounded) params. seqjax's default unroll "
        "options for this backend, except `fused`: the backward pass of every variant, "
        "`auto` = `seqjax.default_fused(B)` (what it resolved to in brackets).",
        "",
        "| cell | B | T | H | mode | fused | float32 | dtype=bfloat16 | param_dtype=bfloat16 "
        "| deviation dtype=bf16 | deviation param_dtype=bf16 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def key_of(r):
        return (r["cell"], r["batch"], r["length"], r["hidden"], r["mode"],
                "—" if r["mode"] == "fwd" else _fused_label(r["fused"], r["batch"]))

    keys = []
    for r in rows:
        if key_of(r) not in keys:
            keys.append(key_of(r))
    for key in keys:
        got = {r["variant"]: r for r in rows if key_of(r) == key}
        cells = [f"{_ms(got[v]['median_ms'])} ({got[v]['vs_float32']:.2f}×)" for v in VARIANTS]
        dev = [f"{got[v]['fwd_deviation_from_float32']:.1e}"
               for v in ("dtype=bfloat16", "param_dtype=bfloat16")]
        lines.append("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(cells + dev)
                     + " |")
    return "\n".join(lines) + "\n"


def _ms(value):
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def _fused_label(how, batch):
    if how != "auto":
        return how
    return f"auto ({'on' if seqjax.default_fused(batch) else 'off'})"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cells", type=_cli.names(tuple(CELLS)), default=tuple(CELLS),
                   help="comma list of lstm, gru")
    p.add_argument("--shapes", type=shapes, default=((16, 512, 128), (64, 256, 256)),
                   help="comma list of BxTxH (input size = H)")
    p.add_argument("--fused", type=_cli.names(tuple(FUSED)), default=("auto", "on"),
                   help="comma list of auto (seqjax.default_fused for the batch), on, off: "
                        "the backward pass of every variant")
    p.add_argument("--rounds", type=_cli.positive_int, default=3, help="interleaved rounds")
    p.add_argument("--repeats", type=_cli.positive_int, default=5,
                   help="timed calls per variant and round")
    p.add_argument("--out", default="docs/bench", help="output directory")
    args = p.parse_args(argv)
    rows = measure(args.cells, args.shapes, args.rounds, args.repeats, args.fused)
    dev = jax.devices()[0]
    cpu_model, cpu_flags = _cpu_info()
    meta = dict(
        command="python benchmarks/mixed_precision.py " + " ".join(argv),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device_kind=dev.device_kind, platform=dev.platform, processor=platform.processor(),
        machine=platform.machine(), cpu_model=cpu_model, cpu_count=os.cpu_count(),
        cpu_flags=cpu_flags,
        xla_flags=os.environ.get("XLA_FLAGS"), rounds=args.rounds, repeats=args.repeats,
        defaults=dict(hoist=seqjax.default_hoist(),
                      fused={f"B{b}": seqjax.default_fused(b) for b, _, _ in args.shapes}),
        versions={k: _version(k) for k in ("seqjax", "jax", "jaxlib", "numpy", "ml_dtypes")}
        | {"python": platform.python_version()})
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mixed_precision.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1)
                                              + "\n")
    (out / "mixed_precision.md").write_text(table(rows, meta))
    print(f"wrote {out / 'mixed_precision.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
