"""Strategy sweep: every way :func:`seqjax.unroll_batch` can run a cell, timed side by side.

``python -m seqjax.bench.strategies`` measures, per backend, the levers behind seqjax's
strategy defaults (``default_associative``, ``default_pallas``, ``default_hoist``,
``default_fused``, ``unroll=k``, ``chunk_size``) and writes ``strategies_<backend>.json``
and ``strategies_<backend>.md``; the policy functions in :mod:`seqjax.unroll` cite the
committed tables in ``docs/bench/``.

* linear-recurrence cells (``cell.linear``): ``associative`` scan, ``sequential``
  (coefficients for all steps, then ``lax.scan`` over ``a, b``), ``sequential, in loop``
  (``a, b`` formed inside the ``lax.scan``: from the cell's ``linear.features``, computed
  for all steps before it, or by stepping its ``apply``; tables before 2026-12-07 call
  it ``sequential, apply``), ``sequential, unroll=8``, and on GPU the Pallas kernel;
* gated cells (``cell.hoist``): ``unroll`` 1, 4, 8 (hoist and fused have their own
  tables, ``hoist.md`` and ``fused_sweep.md``);
* chunkwise cells (``cell.chunkwise``): ``chunk_size`` 16 to 128, and stepping.

Timing is *interleaved*: every variant of a case is compiled first (timed on its own),
warmed up, and then timed in rounds, each round calling every variant once in a rotated
order. The table gives each variant's median and the median over rounds of its time
divided by the reference variant's time in the same round, a ratio that survives the
slow drifts of a shared machine far better than two medians taken minutes apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from seqjax.bench import cells as cells_mod
from seqjax.bench.harness import _version, forward_fn, grad_fn
from seqjax.unroll import (_growth, default_associative, default_fused, default_hoist,
                           default_linear_hoist, default_pallas)

MODES = ("fwd", "fwd+bwd")


@dataclasses.dataclass(frozen=True)
class Part:
    """Cells x shapes: ``cells`` at every ``(batch, length, hidden)`` in ``shapes``."""

    cells: tuple
    shapes: tuple
    note: str = ""


def _linear_cells():
    return tuple(n for n, b in cells_mod.BASES.items() if b.option == "associative")


def grids():
    """The preset grids (built on call: the bench registry grows as cells are added)."""
    linear = _linear_cells()
    return {
        # CI and `benchmarks/gpu.sh --dry-run`: seconds
        "tiny": dict(parts=(Part(("min_gru", "lstm"), ((2, 8, 8),)),), warmup=1, repeats=2),
        # sets the CPU defaults: associative vs sequential over T, unroll=k for gated cells
        "cpu": dict(parts=(
            Part(tuple(c for c in linear if c != "s6"),
                 ((16, 64, 256), (16, 512, 256), (16, 4096, 256)),
                 "linear cells over T (issue 13: B16 H256, T 512 and 4096)"),
            # S6's state is [H, 16]: at H = 256, T = 4096 one [T, B, H, 16] array is 1 GiB
            Part(("s6",), ((16, 64, 64), (16, 512, 64), (16, 4096, 64)),
                 "S6 at H = 64 (state [64, 16]: 1024 numbers per example)"),
            Part(("lstm", "gru"), ((16, 512, 128), (1, 1024, 64), (64, 256, 256)),
                 "gated cells: unroll=k at the CPU target points"),
        ), warmup=1, repeats=5),
        # the GPU levers at the points (benchmarks/gpu.sh)
        "gpu": dict(parts=(
            Part(linear, ((16, 4096, 256),), "linear cells at T = 4,096"),
            Part(("min_gru",), ((16, 512, 256), (16, 1024, 256)), "min_gru over T"),
            Part(("lstm", "gru"), ((16, 1024, 768),), "FlashRNN's point: unroll=k"),
        ), warmup=3, repeats=10),
    }


def variants(cell, backend: Optional[str] = None):
    """``[(label, unroll options), ...]`` for ``cell``; the first is the default."""
    backend = backend or jax.default_backend()
    out = [("default", {})]
    if cell.linear is not None:
        out += [("associative", {"associative": True}),
                ("sequential", {"associative": False, "hoist": True}),
                ("sequential, in loop", {"associative": False, "hoist": False}),
                ("sequential, unroll=8", {"associative": False, "hoist": True, "unroll": 8})]
        if backend in ("gpu", "cuda"):
            out.append(("pallas", {"pallas": True}))
    elif cell.chunkwise is not None:
        out += [(f"chunk_size={c}", {"chunkwise": True, "chunk_size": c})
                for c in (16, 32, 64, 128)]
        out.append(("step", {"chunkwise": False}))
    elif cell.hoist is not None:
        out += [(f"unroll={k}", {"unroll": k}) for k in (1, 4, 8)]
    return out


def resolved_default(cell, params, xs) -> str:
    """What the ``default`` variant runs on ``xs [B, T, I]``, in :func:`variants`' labels."""
    batch, length = xs.shape[:2]
    if cell.linear is not None:
        if default_pallas():
            return "pallas"
        if default_associative(length):
            return "associative"
        growth = _growth(cell.linear, params, jnp.swapaxes(xs, 0, 1))
        return "sequential" if default_linear_hoist(growth) else "sequential, in loop"
    if cell.hoist is not None:
        return (f"unroll=1, hoist={'on' if default_hoist() else 'off'}, "
                f"fused={'on' if default_fused(batch) else 'off'}")
    return "default"


def interleaved(fns, args, *, warmup: int, repeats: int, deadline: Optional[float] = None):
    """Times ``fns`` (each jitted for ``args``) in rotated rounds.

    Returns:
      ``[(compile_s, [seconds per round]) or (None, error text), ...]`` per function.
    """
    compiled = []
    for fn in fns:
        start = time.perf_counter()
        try:
            c = jax.jit(fn).lower(*args).compile()
            jax.block_until_ready(c(*args))
            for _ in range(max(warmup - 1, 0)):
                jax.block_until_ready(c(*args))
            compiled.append((c, time.perf_counter() - start))
        except Exception as e:  # report on the row, keep going
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            compiled.append((None, text[:300]))
    times = [[] for _ in fns]
    live = [i for i, (c, _) in enumerate(compiled) if c is not None]
    for r in range(repeats):
        if deadline is not None and r > 0 and time.perf_counter() > deadline:
            break
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for i in order:
            c = compiled[i][0]
            start = time.perf_counter()
            jax.block_until_ready(c(*args))
            times[i].append(time.perf_counter() - start)
    # a failed compile left (None, error text) in `compiled`
    return [(None, second) if c is None else (second, t)
            for (c, second), t in zip(compiled, times)]


def run_case(name, batch, length, hidden, *, dtype="float32", modes=MODES, warmup=2,
             repeats=7, note="", deadline=None, extra: Callable = None):
    """Times every variant of one cell and shape; returns one row per mode.

    ``extra(cell, params, xs, mode) -> [(label, fn(params, xs)), ...]`` adds
    functions outside :func:`variants` (peers, kernels under other settings).
    """
    spec = cells_mod.cell_spec(name)
    dt = cells_mod.DTYPES[dtype]
    k_x, k_p = jax.random.split(jax.random.PRNGKey(0))
    xs = jax.random.normal(k_x, (batch, length, hidden), jnp.float32).astype(dt)
    cell = spec.build(hidden, hidden, dt)
    params = cell.init(k_p, hidden)
    rows = []
    for mode in modes:
        labelled = []
        for label, opts in variants(cell):
            fwd = forward_fn(cell, opts)
            labelled.append((label, opts, fwd if mode == "fwd" else grad_fn(fwd)))
        for label, fn in (extra(cell, params, xs, mode) if extra else ()):
            labelled.append((label, None, fn))
        results = interleaved([f for _, _, f in labelled], (params, xs), warmup=warmup,
                              repeats=repeats, deadline=deadline)
        ref = results[0][1] if results[0][0] is not None else None
        entries = []
        for (label, opts, _), (compile_s, t) in zip(labelled, results):
            if compile_s is None:
                entries.append(dict(label=label, options=opts, status="error", reason=t))
                continue
            ratios = [a / b for a, b in zip(t, ref)] if ref else []
            entries.append(dict(
                label=label, options=opts, status="ok", median_ms=1e3 * statistics.median(t),
                min_ms=1e3 * min(t), times_ms=[1e3 * s for s in t], compile_s=compile_s,
                ratio=statistics.median(ratios) if ratios else None,
                us_per_step=1e6 * statistics.median(t) / length))
        ok = [e for e in entries if e["status"] == "ok" and e["label"] != "default"]
        best = min(ok, key=lambda e: e["median_ms"])["label"] if ok else None
        rows.append(dict(cell=name, batch=batch, length=length, hidden=hidden, dtype=dtype,
                         mode=mode, note=note, default=resolved_default(cell, params, xs),
                         fastest=best, variants=entries))
    return rows


# ----------------------------------------------------------------------------- output


def metadata(argv, grid, warmup, repeats):
    dev = jax.devices()[0]
    versions = {k: _version(d) for k, d in (("seqjax", "seqjax"), ("jax", "jax"),
                                            ("jaxlib", "jaxlib"), ("numpy", "numpy"))}
    versions["python"] = platform.python_version()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        backend=jax.default_backend(), device=str(dev), device_kind=dev.device_kind,
        cpu_count=os.cpu_count(), cpu_affinity=affinity, xla_flags=os.environ.get("XLA_FLAGS"),
        versions=versions, grid=grid, warmup=warmup, repeats=repeats, argv=list(argv),
        command="python -m seqjax.bench.strategies " + " ".join(argv))


def _fmt(v, digits=3):
    if v is None:
        return "—"
    return f"{v:,.0f}" if abs(v) >= 10 ** digits else f"{v:.{digits}g}"


def markdown(meta, rows) -> str:
    v = meta["versions"]
    lines = [
        f"# seqjax strategy sweep ({meta['backend']})",
        "",
        f"- command: `{meta['command']}`",
        f"- date: {meta['date']}; device: {meta['device']} ({meta['device_kind']}); "
        f"{meta['cpu_count']} CPUs (affinity {meta['cpu_affinity']}); "
        f"XLA_FLAGS={meta['xla_flags'] or 'unset'}",
        f"- versions: python {v['python']}, seqjax {v['seqjax']}, jax {v['jax']}, "
        f"jaxlib {v['jaxlib']}",
        f"- {meta['warmup']} warm-up call(s), then {meta['repeats']} interleaved rounds "
        "(every variant once per round, rotated order). fwd = jit(forward), fwd+bwd = "
        "jit(grad of sum(outputs) w.r.t. params and inputs), float32 unless stated.",
        "- each cell: median ms, and in brackets the median over rounds of (variant time "
        "/ default time in the same round): **< 1 means faster than the default**. "
        "`default` is what seqjax runs with no options; the column says what it "
        "resolved to.",
        "",
    ]
    groups = {}
    for r in rows:
        key = tuple(e["label"] for e in r["variants"])
        groups.setdefault(key, []).append(r)
    for labels, group in groups.items():
        header = ["cell", "B", "T", "H", "dtype", "mode", "default is"] + list(labels) + [
            "fastest"]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for r in group:
            cells = []
            for e in r["variants"]:
                if e["status"] != "ok":
                    cells.append(f"error: {e['reason'][:60]}")
                elif e["label"] == "default":
                    cells.append(_fmt(e["median_ms"]))
                else:
                    cells.append(f"{_fmt(e['median_ms'])} ({e['ratio']:.2f})")
            lines.append("| " + " | ".join(
                [r["cell"], str(r["batch"]), str(r["length"]), str(r["hidden"]), r["dtype"],
                 r["mode"], r["default"]] + cells + [r["fastest"] or "—"]) + " |")
        lines.append("")
    return "\n".join(lines)


def write(out, meta, rows):
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"strategies_{meta['backend']}"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = markdown(meta, rows)
    (out / f"{stem}.md").write_text(text)
    return out / f"{stem}.md", text


def parser():
    p = argparse.ArgumentParser(
        prog="python -m seqjax.bench.strategies",
        description="Time every unroll strategy of seqjax (associative vs sequential scans, "
                    "unroll=k, chunk sizes, the Pallas kernel on GPU) side by side, "
                    "interleaved, and write strategies_<backend>.md/.json.")
    p.add_argument("--grid", default=None, help="tiny, cpu or gpu (default: the backend's)")
    p.add_argument("--cells", default=None, help="comma list restricting the grid's cells")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per variant")
    p.add_argument("--modes", default="fwd,fwd+bwd", help="fwd, fwd+bwd or both")
    p.add_argument("--out", default=os.path.join("results", "strategies"), help="output folder")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    table = grids()
    grid = args.grid or ("gpu" if jax.default_backend() == "gpu" else "cpu")
    if grid not in table:
        print(f"strategies: unknown grid {grid!r}; choose from {', '.join(table)}",
              file=sys.stderr)
        return 2
    spec = table[grid]
    warmup = spec["warmup"] if args.warmup is None else args.warmup
    repeats = spec["repeats"] if args.repeats is None else args.repeats
    modes = tuple(m for m in args.modes.split(",") if m)
    keep = None if args.cells is None else set(args.cells.split(","))
    rows = []
    start = time.perf_counter()
    for part in spec["parts"]:
        for name in part.cells:
            if keep is not None and name not in keep:
                continue
            for batch, length, hidden in part.shapes:
                print(f"strategies: {name} B{batch} T{length} H{hidden}", file=sys.stderr,
                      flush=True)
                rows += run_case(name, batch, length, hidden, modes=modes, warmup=warmup,
                                 repeats=repeats, note=part.note)
                meta = metadata(argv, grid, warmup, repeats)
                write(args.out, meta, rows)  # partial results survive an interruption
    meta = metadata(argv, grid, warmup, repeats)
    meta["wall_s"] = time.perf_counter() - start
    path, text = write(args.out, meta, rows)
    print(text)
    print(f"wrote {path} and its .json in {meta['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
