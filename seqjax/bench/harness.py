"""The benchmark loop and the ``seqjax bench`` command line."""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import seqjax
from seqjax import _cli
from seqjax.bench import cells as cells_mod
from seqjax.bench import peers as peers_mod
from seqjax.bench import report
from seqjax.bench.cells import DTYPES, Case, cell_spec
from seqjax.bench.timing import Memory, Timing, time_eager, time_fn
from seqjax.unroll import FUSED_MAX_BATCH_BY_BACKEND

MODES = ("fwd", "fwd+bwd")

# ``seqjax bench NAME ...``: benchmarks of whole models, each its own command line
SUBCOMMANDS = {
    "recall": ("seqjax.bench.recall", "MQAR recall by block and state size (Zoology)"),
    "lm": ("seqjax.bench.lm", "language models: train, prefill, decode speed and memory "
                              "against transformers and recurrentgemma"),
}


# ----------------------------------------------------------------------------- functions


def forward_fn(cell, options):
    """``fwd(params, xs[B, T, I]) -> ys[B, T, H]`` through :func:`seqjax.unroll_batch`."""

    def fwd(params, xs):
        return seqjax.unroll_batch(cell, params, xs, **options)[1]

    return fwd


def grad_fn(fwd):
    """Gradient of ``sum(fwd(params, xs))`` w.r.t. params and inputs (summed in float32)."""

    def loss(params, xs):
        return jnp.sum(fwd(params, xs).astype(jnp.float32))

    return jax.grad(loss, argnums=(0, 1))


_CHOICES = {"auto": [None], "on": [True], "off": [False], "both": [True, False]}


def variants(spec, hoist: str, associative: str, unroll: int, fused: str = "auto",
             batch: int = 1, chunkwise: str = "auto", chunk_sizes=None, length: int = 0):
    """The unroll options to measure for ``spec``: ``[(label, options), ...]``.

    Gated cells vary ``hoist`` (and, where the cell has a fused backward, ``fused``);
    linear-recurrence cells vary ``associative``; matrix-state cells vary
    ``chunkwise`` (and, when on, every size in ``chunk_sizes``). ``"auto"`` leaves an
    option to seqjax's default and labels the row with what that default resolved to.
    """
    if spec.base.option == "chunkwise":
        out = []
        for v in _CHOICES[chunkwise]:
            if v is False:
                out.append(("chunkwise=off (scan)", {"chunkwise": False}))
                continue
            for size in chunk_sizes or (None,):
                opts = {} if v is None else {"chunkwise": True}
                if size is not None:
                    opts["chunk_size"] = size
                shown = seqjax.default_chunk_size() if size is None else size
                # auto: the default, which on CPU runs a forward pass that nothing
                # differentiates as the scan and differentiates the chunkwise form
                out.append((f"chunkwise={'auto' if v is None else 'on'},chunk={shown}", opts))
    elif spec.base.option != "hoist":
        out = []
        for v in _CHOICES[associative]:
            opts = {} if v is None else {"associative": v}
            on = seqjax.default_associative(length) if v is None else v
            label = ("pallas" if v is None and seqjax.default_pallas()
                     else f"assoc={'on' if on else 'off'}")
            out.append((label, opts))
    else:
        can_fuse = spec.base.fusable
        out = []
        for h in _CHOICES[hoist]:
            for f in (_CHOICES[fused] if can_fuse else [None]):
                opts = {k: v for k, v in (("hoist", h), ("fused", f)) if v is not None}
                resolved = seqjax.default_hoist() if h is None else h
                label = f"hoist={'on' if resolved else 'off'}"
                if can_fuse:
                    on = seqjax.default_fused(batch) if f is None else f
                    label += f",fused={'on' if on else 'off'}"
                out.append((label, opts))
    if unroll != 1:
        out = [(label + f",unroll={unroll}", dict(opts, unroll=unroll)) for label, opts in out]
    return out


# ----------------------------------------------------------------------------- rows


def _device_info():
    dev = jax.devices()[0]
    return {"device": str(dev), "device_kind": dev.device_kind, "platform": dev.platform}


def _row(case, spec, impl, mode, options, what, device):
    return dict(
        impl=impl, cell=case.cell, base=spec.base.name, layers=spec.layers, what=what,
        batch=case.batch, length=case.length, hidden=case.hidden, input_size=case.input_size,
        state_size=case.state if spec.base.name == "lru" else None, dtype=case.dtype,
        mode=mode, options=options, note=case.note, status="ok", reason=None,
        median_ms=None, min_ms=None, times_ms=None, us_per_step=None, tokens_per_s=None,
        flops=spec.flops(case.batch, case.length, case.input_size, case.hidden, case.state,
                         backward=(mode != "fwd")),
        gflops_per_s=None, compile_s=None, first_call_s=None, memory_bytes=None,
        memory_kind=None, xla_temp_bytes=None, params=None, ratios={},
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **device)


def _fill(row, timing: Timing, warmup, repeats):
    t = timing.median_s
    row.update(
        median_ms=1e3 * t, min_ms=1e3 * timing.min_s,
        times_ms=[1e3 * s for s in timing.times_s],
        us_per_step=1e6 * t / row["length"],
        tokens_per_s=row["batch"] * row["length"] / t,
        gflops_per_s=row["flops"] / t / 1e9,
        compile_s=timing.compile_s, first_call_s=timing.first_call_s,
        memory_bytes=timing.memory_bytes, memory_kind=timing.memory_kind,
        xla_temp_bytes=timing.xla_temp_bytes, warmup=warmup, repeats=repeats)
    return row


def _fail(row, status, error):
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    row.update(status=status, reason=reason[:300])
    return row


def run_case(case: Case, *, peers, modes, warmup, repeats, hoist="auto", associative="auto",
             unroll=1, fused="auto", chunkwise="auto", chunk_sizes=None, on_step=None):
    """Measures seqjax and every applicable peer on one case; returns the rows."""
    spec = cell_spec(case.cell)
    dtype = DTYPES[case.dtype]
    device = _device_info()
    k_x, k_p = jax.random.split(jax.random.PRNGKey(0))
    xs = jax.random.normal(k_x, (case.batch, case.length, case.input_size), jnp.float32)
    xs = xs.astype(dtype)
    rows = []
    step = on_step or (lambda label: None)

    # seqjax
    try:
        cell = spec.build(case.hidden, case.state, dtype)
        params = cell.init(k_p, case.input_size)
        count = peers_mod._count(params)
        build_error = None
    except Exception as e:  # e.g. an unsupported dtype: report it on the row, keep going
        build_error = e
    for label, opts in variants(spec, hoist, associative, unroll, fused, case.batch,
                                chunkwise, chunk_sizes, length=case.length):
        for mode in modes:
            step(f"{case.cell} seqjax {mode}")
            row = _row(case, spec, "seqjax", mode, label, "seqjax.unroll_batch", device)
            rows.append(row)
            if build_error is not None:
                _fail(row, "skipped", build_error)
                continue
            fwd = forward_fn(cell, opts)
            fn = fwd if mode == "fwd" else grad_fn(fwd)
            try:
                _fill(row, time_fn(fn, (params, xs), warmup=warmup, repeats=repeats),
                      warmup, repeats)
                row["params"] = count
            except Exception as e:  # report, keep going
                _fail(row, "error", e)

    # peers
    for peer in peers:
        if not peers_mod.applies(peer, spec.base.name):
            continue
        what = peers_mod.PEERS[peer][spec.base.name]
        peer_rows = [_row(case, spec, peer, mode, "", what, device) for mode in modes]
        rows.extend(peer_rows)
        step(f"{case.cell} {peer}")
        try:
            if peer in peers_mod.EAGER:
                fwd_call, fwdbwd_call, sync, mem_kind, count = peers_mod.build_eager(
                    peer, spec.base.name, spec.layers, case, case.dtype, np.asarray(
                        xs.astype(jnp.float32)))
                for row, mode in zip(peer_rows, modes):
                    call = fwd_call if mode == "fwd" else fwdbwd_call
                    try:
                        _fill(row, time_eager(call, sync, warmup=warmup, repeats=repeats,
                                              memory=Memory(mem_kind)), warmup, repeats)
                        row["params"] = count
                    except Exception as e:
                        _fail(row, "error", e)
            else:
                fwd, p_params, count = peers_mod.build_jax(
                    peer, spec.base.name, spec.layers, case, dtype, k_p, xs)
                for row, mode in zip(peer_rows, modes):
                    fn = fwd if mode == "fwd" else grad_fn(fwd)
                    try:
                        _fill(row, time_fn(fn, (p_params, xs), warmup=warmup,
                                           repeats=repeats), warmup, repeats)
                        row["params"] = count
                    except Exception as e:
                        _fail(row, "error", e)
        except peers_mod.Skip as e:
            for row in peer_rows:
                _fail(row, "skipped", e)
        except Exception as e:
            for row in peer_rows:
                _fail(row, "error", e)

    # seqjax time / peer time, same mode
    for row in rows:
        if row["impl"] != "seqjax":
            continue
        for other in rows:
            if other["impl"] != "seqjax" and other["mode"] == row["mode"]:
                ok = row["median_ms"] is not None and other["median_ms"] is not None
                row["ratios"][other["impl"]] = (row["median_ms"] / other["median_ms"]
                                                if ok else None)
    # matrix-state cells: the chunkwise form's time / the plain scan's, same mode
    scans = {r["mode"]: r for r in rows
             if r["impl"] == "seqjax" and r["options"].startswith("chunkwise=off")}
    for row in rows:
        scan = scans.get(row["mode"])
        if scan is not None and row["impl"] == "seqjax" and row is not scan:
            ok = row["median_ms"] is not None and scan["median_ms"] is not None
            row["ratios"]["scan"] = row["median_ms"] / scan["median_ms"] if ok else None
    return rows


def param_table(cases, peer_rows):
    """Parameter counts per distinct (cell, I, H, N): seqjax, formula, PyTorch."""
    out, seen = [], set()
    for case in cases:
        spec = cell_spec(case.cell)
        n = case.state if spec.base.name == "lru" else None
        key = (case.cell, case.input_size, case.hidden, n)
        if key in seen:
            continue
        seen.add(key)
        try:
            cell = spec.build(case.hidden, case.state, jnp.float32)
            shapes = jax.eval_shape(lambda k: cell.init(k, case.input_size),
                                    jax.random.PRNGKey(0))
            count = int(sum(np.prod(s.shape, dtype=np.int64)
                            for s in jax.tree_util.tree_leaves(shapes)))
        except (TypeError, ValueError) as e:
            count, error = None, str(e)
        else:
            error = None
        torch_count = None
        if spec.base.name in peers_mod.PEERS["torch"] and peers_mod.installed("torch"):
            torch_count = peers_mod.torch_param_count(spec.base.name, case.input_size,
                                                      case.hidden, spec.layers)
        peers = {}
        for r in peer_rows:
            if (r["cell"], r["input_size"], r["hidden"]) == key[:3] and r["params"] is not None:
                peers.setdefault(r["impl"], r["params"])
        out.append(dict(
            cell=case.cell, input_size=case.input_size, hidden=case.hidden, state_size=n,
            layers=spec.layers, seqjax=count, error=error,
            formula=spec.param_formula(case.input_size, case.hidden, case.state),
            formula_text=spec.formula_text(),
            torch=torch_count, torch_formula=spec.torch_formula(case.input_size, case.hidden),
            torch_formula_text=spec.base.torch_text, peers=peers))
    return out


# ----------------------------------------------------------------------------- metadata


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def metadata(args, argv, memory_kind):
    dev = jax.devices()[0]
    torch_threads = None
    if "torch" in args.peers and peers_mod.installed("torch"):
        import torch

        torch_threads = torch.get_num_threads()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    versions = {name: _version(dist) for name, dist in (
        ("seqjax", "seqjax"), ("jax", "jax"), ("jaxlib", "jaxlib"), ("flax", "flax"),
        ("optax", "optax"), ("torch", "torch"), ("equinox", "equinox"),
        ("haiku", "dm-haiku"), ("numpy", "numpy"), ("matplotlib", "matplotlib"),
        ("memax", "memax"), ("xlstm", "xlstm"), ("recurrentgemma", "recurrentgemma"))}
    versions["python"] = platform.python_version()
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=str(dev), device_kind=dev.device_kind, platform=dev.platform,
        backend=jax.default_backend(), device_count=jax.device_count(),
        machine=platform.machine(), system=platform.system(),
        cpu_count=os.cpu_count(), cpu_affinity=affinity, torch_threads=torch_threads,
        xla_flags=os.environ.get("XLA_FLAGS"), versions=versions, memory_kind=memory_kind,
        default_hoist=seqjax.default_hoist(),
        default_fused_max_batch=FUSED_MAX_BATCH_BY_BACKEND.get(jax.default_backend()),
        default_chunk_size=seqjax.default_chunk_size(),
        argv=list(argv), grid=args.grid,
        warmup=args.warmup, repeats=args.repeats, peers=list(args.peers), modes=list(args.modes),
        flop_convention=cells_mod.__doc__.split("\n\n", 1)[1].strip())


# ----------------------------------------------------------------------------- CLI


def _ints(text):
    return tuple(int(v) for v in text.split(",") if v)


def _names(text):
    return tuple(v.strip() for v in text.split(",") if v.strip())


def parser():
    p = _cli.ArgumentParser(
        prog="seqjax bench",
        description="Time seqjax cells (forward and forward+backward) against Flax, Equinox, "
                    "Haiku, PyTorch and jax.experimental.rnn; write JSON, a markdown table "
                    "and plots.",
        epilog="whole-model benchmarks (each with its own --help): "
               + "; ".join(f"seqjax bench {name}: {what}"
                           for name, (_, what) in SUBCOMMANDS.items()))
    p.add_argument("--grid", choices=sorted(cells_mod.GRIDS), default="quick",
                   help="preset grid (default quick: about 4.5 minutes on 2 idle CPU cores)")
    p.add_argument("--cells", type=_cli.choice_list, default=None,
                   help="comma list of " + ", ".join(cells_mod.BASES)
                        + "; _xL makes an L-layer stack (lstm_x2). Default: the grid's")
    p.add_argument("--batch", type=_cli.positive_ints, default=None,
                   help="comma list of batch sizes B")
    p.add_argument("--length", type=_cli.positive_ints, default=None,
                   help="comma list of lengths T")
    p.add_argument("--hidden", type=_cli.positive_ints, default=None,
                   help="comma list of hidden sizes H")
    p.add_argument("--input", type=_cli.positive_int, default=None,
                   help="input size I (default: I = H)")
    p.add_argument("--lru-state", type=_cli.positive_int, default=None,
                   help="LRU state size N (default H)")
    p.add_argument("--dtype", type=_cli.choice_list, default=None,
                   help="comma list of float32, bfloat16, float16")
    p.add_argument("--peers", type=_cli.choice_list, default=None,
                   help="comma list of " + ", ".join(peers_mod.PEERS)
                        + "; 'none' to skip peers. Default: " + ",".join(peers_mod.DEFAULT_PEERS))
    p.add_argument("--repeats", type=_cli.positive_int, default=None,
                   help="timed calls (default: the grid's)")
    p.add_argument("--warmup", type=_cli.nonnegative_int, default=None,
                   help="untimed calls (default: the grid's)")
    p.add_argument("--grad", action=argparse.BooleanOptionalAction, default=True,
                   help="also time forward+backward (default: yes)")
    p.add_argument("--hoist", choices=("auto", "on", "off", "both"), default="auto",
                   help="gated cells' input projection before the loop (auto: "
                        "seqjax.default_hoist)")
    p.add_argument("--fused", choices=("auto", "on", "off", "both"), default="auto",
                   help="the fused backward pass of rnn/lstm/gru/mgu (auto: "
                        "seqjax.default_fused for the batch size)")
    p.add_argument("--associative", choices=("auto", "on", "off", "both"), default="auto",
                   help="linear cells by associative scan (auto: "
                        "seqjax.default_associative for the length)")
    p.add_argument("--unroll", type=_cli.positive_int, default=1,
                   help="lax.scan unroll for seqjax")
    p.add_argument("--chunkwise", choices=("auto", "on", "off", "both"), default="auto",
                   help="matrix-state cells (mlstm, delta_net, gated_delta_net, mamba2) in "
                        "their chunkwise-parallel form; off: a plain lax.scan over apply; "
                        "both: the two in one run, with their ratio (auto: on)")
    p.add_argument("--chunk-size", type=_cli.positive_ints, default=None,
                   help="comma list of chunk sizes for the chunkwise form (default: "
                        "seqjax.default_chunk_size)")
    p.add_argument("--out", default=os.path.join("results", "bench"),
                   help="output folder (default results/bench)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="write PNG plots (default: yes)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar (default: yes)")
    return p


def main(argv=None) -> int:
    """Runs the benchmark; returns the exit code (0, or 1 if any seqjax row errored)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return importlib.import_module(SUBCOMMANDS[argv[0]][0]).main(argv[1:])
    args = parser().parse_args(argv)
    grid = cells_mod.GRIDS[args.grid]
    args.warmup = grid["warmup"] if args.warmup is None else args.warmup
    args.repeats = grid["repeats"] if args.repeats is None else args.repeats
    if args.repeats < 1 or args.warmup < 0:
        print("seqjax bench: --repeats must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    peers = peers_mod.DEFAULT_PEERS if args.peers is None else args.peers
    if peers in (("none",), ()):
        peers = ()
    unknown = [p for p in peers if p not in peers_mod.PEERS]
    if unknown:
        print(f"seqjax bench: unknown peer(s) {unknown}; choose from "
              f"{', '.join(peers_mod.PEERS)} or none", file=sys.stderr)
        return 2
    args.peers = peers
    args.modes = MODES if args.grad else MODES[:1]
    try:
        cases = cells_mod.expand(args.grid, cells=args.cells, batch=args.batch,
                                 length=args.length, hidden=args.hidden, dtypes=args.dtype,
                                 input_size=args.input, lru_state=args.lru_state)
    except ValueError as e:
        print(f"seqjax bench: {e}", file=sys.stderr)
        return 2

    from tqdm.auto import tqdm

    start = time.perf_counter()
    rows = []
    bar = tqdm(cases, desc="seqjax bench", unit="case", disable=not args.progress,
               dynamic_ncols=True)
    for case in bar:
        bar.set_postfix_str(f"{case.cell} B{case.batch} T{case.length} H{case.hidden} "
                            f"{case.dtype}", refresh=True)
        rows.extend(run_case(case, peers=peers, modes=args.modes, warmup=args.warmup,
                             repeats=args.repeats, hoist=args.hoist, fused=args.fused,
                             associative=args.associative, unroll=args.unroll,
                             chunkwise=args.chunkwise, chunk_sizes=args.chunk_size))
    bar.close()
    elapsed = time.perf_counter() - start

    meta = metadata(args, argv, Memory("jax").describe())
    meta["wall_s"] = elapsed
    params = param_table(cases, [r for r in rows if r["impl"] != "seqjax"])
    paths = report.write(args.out, meta, rows, params, plots=args.plots)
    print(paths["markdown_text"])
    print(f"\nwrote {', '.join(str(p) for k, p in paths.items() if k != 'markdown_text')} "
          f"in {elapsed:.1f} s")
    bad = [r for r in rows if r["impl"] == "seqjax" and r["status"] == "error"]
    for r in bad:
        print(f"seqjax bench: error in {r['cell']} {r['mode']}: {r['reason']}", file=sys.stderr)
    return 1 if bad else 0
