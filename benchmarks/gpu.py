"""The one-shot GPU run of issue 13: environment, GPU-only tests, the GPU grid.

``benchmarks/gpu.sh`` runs this file. On one H100/H200 it does, in at most about six
minutes (a time guard stops early and still writes what it has):

1. **environment**: device, driver, jax and its CUDA plugin, flax, equinox, optax,
   torch (and its cuDNN), triton; dm-haiku is expected to be absent; nothing is
   installed.
2. **GPU-only tests**: ``pytest tests/test_pallas.py``, where the Pallas kernels are
   compiled by Triton for real and compared with the plain unroll.
3. **the grid** (``seqjax.bench``'s harness and strategy sweep):
   * LSTM and GRU at B16/T1024/H768 (FlashRNN's point), bfloat16 and float32, forward
     and forward+backward: seqjax (every hoist x fused combination, and unroll=8)
     against PyTorch cuDNN ``nn.LSTM``/``nn.GRU``, ``jax.experimental.rnn`` (cuDNN LSTM,
     float32 only) and Flax ``nn.RNN``, as ratios;
   * the linear-recurrence and chunkwise cells at T = 4,096 (whatever the bench registry
     holds at run time): parallel forms (associative scan, chunkwise, the Pallas scan)
     against step-by-step, interleaved;
   * the fused Pallas kernel for the LSTM at its size limit (H = 64 float32, H = 128
     bfloat16) against the plain scan and cuDNN;
   * XLA command buffers for while loops (``--xla_gpu_enable_command_buffer``), in a
     subprocess since XLA reads its flags once;
   * the Pallas scan's tile sizes for min_gru.

It writes ``gpu.md`` and ``gpu.json`` (device, driver, versions, commands, every
figure) to ``docs/bench/`` (``--out`` to change). ``--dry-run`` runs the same code on
the CPU at tiny shapes, prints why each CUDA-only step is skipped and writes to a
temporary folder; ``tests/test_gpu_script.py`` runs it in CI.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing seqjax
    sys.path.insert(0, str(ROOT))

EXPECTED = {"jax": "0.11.2"}
PACKAGES = (("jax", "jax"), ("jaxlib", "jaxlib"), ("flax", "flax"), ("equinox", "equinox"),
            ("optax", "optax"), ("torch", "torch"), ("triton", "triton"),
            ("numpy", "numpy"), ("dm-haiku", "haiku"))
COMMAND_BUFFER_FLAG = ("--xla_gpu_enable_command_buffer="
                       "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL")


# ----------------------------------------------------------------------------- shapes


def shapes(dry_run: bool) -> dict:
    """Every shape the run uses; ``--dry-run`` shrinks them all."""
    if dry_run:
        return dict(classic=(2, 8, 16), classic_dtypes=("float32",), classic_cells=("lstm",),
                    classic_fused="auto",
                    scan=(2, 16, 16), kernel=((2, 8, 16, "float32"),), warmup=1, repeats=2,
                    tiles=((1, 16),), other_scan_cells=0)
    return dict(classic=(16, 1024, 768), classic_dtypes=("bfloat16", "float32"),
                classic_cells=("lstm", "gru"), classic_fused="both", scan=(16, 4096, 256),
                kernel=((16, 1024, 64, "float32"), (16, 1024, 128, "bfloat16")),
                warmup=3, repeats=10, tiles=((1, 32), (1, 128), (2, 128), (1, 256)),
                other_scan_cells=None)


# ----------------------------------------------------------------------------- report


class Report:
    """Accumulates sections and rewrites ``gpu.json`` / ``gpu.md`` after each one."""

    def __init__(self, out: pathlib.Path, argv, dry_run: bool):
        self.out = out
        self.data = dict(
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            command="benchmarks/gpu.sh " + " ".join(argv), dry_run=dry_run,
            environment=None, tests=None, sections=[], skipped=[], complete=False)

    def skip(self, what: str, why: str):
        print(f"gpu.sh: skipping {what}: {why}", flush=True)
        self.data["skipped"].append(dict(what=what, why=why))

    def add(self, section: dict):
        self.data["sections"].append(section)
        self.write()

    def write(self):
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu.json").write_text(json.dumps(self.data, indent=1, default=str))
        (self.out / "gpu.md").write_text(markdown(self.data))


def _fmt(v, digits=3):
    if v is None:
        return "—"
    return f"{v:,.0f}" if abs(v) >= 10 ** digits else f"{v:.{digits}g}"


def _table(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in body]


def markdown(data) -> str:
    env = data["environment"] or {}
    lines = ["# seqjax on GPU (issue 13)", ""]
    if data["dry_run"]:
        lines += ["**DRY RUN on the CPU at tiny shapes: these numbers say nothing about a "
                  "GPU.**", ""]
    lines += [f"- command: `{data['command']}`", f"- date: {data['date']}",
              f"- complete: {data['complete']} (a time guard may stop the run early; what "
              "ran is below)"]
    if env:
        lines += [f"- device: {env.get('device_kind')} ({env.get('backend')}), "
                  f"{env.get('device_count')} device(s); driver {env.get('driver') or '—'}",
                  "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
                  f"- torch: CUDA {env.get('torch_cuda')}, cuDNN {env.get('torch_cudnn')}",
                  f"- XLA_FLAGS={env.get('xla_flags') or 'unset'}"]
        for problem in env.get("problems", []):
            lines.append(f"- environment problem: {problem}")
    tests = data.get("tests")
    if tests:
        lines += ["", "## GPU-only tests", "", f"`{tests['command']}`: {tests['summary']}"]
    for section in data["sections"]:
        lines += ["", f"## {section['title']}", ""]
        if section.get("note"):
            lines += [section["note"], ""]
        lines += _table(section["header"], section["rows"])
        if section.get("command"):
            lines += ["", f"Reproduce: `{section['command']}`"]
    if data["skipped"]:
        lines += ["", "## not run", ""]
        lines += [f"- {s['what']}: {s['why']}" for s in data["skipped"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- steps


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(dry_run: bool) -> dict:
    """What is installed and which device is there; ``problems`` lists what is off."""
    import jax

    problems = []
    versions = {name: _version(dist) for dist, name in PACKAGES}
    plugins = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()
               if d.metadata["Name"] and d.metadata["Name"].startswith("jax-cuda")}
    versions.update(plugins)
    for dist, name in PACKAGES:
        if versions[name] is None and name != "haiku":
            problems.append(f"{dist} is not installed")
    if not dry_run:
        for name, want in EXPECTED.items():
            if versions.get(name) != want:
                problems.append(f"expected {name} {want}, found {versions.get(name)}")
        if not plugins:
            problems.append("no jax CUDA plugin (jax-cuda*-plugin) is installed")
    dev = jax.devices()[0]
    driver = None
    if shutil.which("nvidia-smi"):
        try:
            driver = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=20,
                check=False).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError) as e:
            driver = f"nvidia-smi failed: {e}"
    torch_cuda = torch_cudnn = None
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch_cuda = torch.version.cuda if torch.cuda.is_available() else "not available"
        torch_cudnn = (torch.backends.cudnn.version()
                       if torch.cuda.is_available() and torch.backends.cudnn.is_available()
                       else None)
    backend = jax.default_backend()
    if not dry_run and backend != "gpu":
        problems.append(f"JAX's backend is {backend}, not gpu")
    return dict(backend=backend, device=str(dev), device_kind=dev.device_kind,
                device_count=jax.device_count(), driver=driver, versions=versions,
                python=platform.python_version(), torch_cuda=torch_cuda,
                torch_cudnn=torch_cudnn, xla_flags=os.environ.get("XLA_FLAGS"),
                problems=problems)


def run_tests(report: Report, timeout: float):
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "tests/test_pallas.py"]
    start = time.perf_counter()
    try:
        out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                             timeout=timeout, check=False)
        lines = (out.stdout or "").strip().splitlines()
        summary = lines[-1] if lines else f"no output (exit {out.returncode})"
        failures = [l for l in lines if l.startswith("FAILED") or l.startswith("ERROR")]
        result = dict(returncode=out.returncode, summary=summary, failures=failures,
                      tail="\n".join(lines[-40:]))
    except subprocess.TimeoutExpired:
        result = dict(returncode=None, summary=f"timed out after {timeout:.0f} s",
                      failures=[], tail="")
    result.update(command=" ".join(command[2:]), wall_s=time.perf_counter() - start)
    print(f"gpu.sh: tests: {result['summary']}", flush=True)
    report.data["tests"] = result
    report.write()


def _ms(row):
    return row.get("median_ms")


def classic(report: Report, s, deadline, dry_run):
    """LSTM and GRU at FlashRNN's point against cuDNN, jax.experimental.rnn and Flax."""
    import jax
    from seqjax.bench import harness
    from seqjax.bench.cells import Case

    B, T, H = s["classic"]
    rows = []
    for cell in s["classic_cells"][1:]:
        report.skip(f"classic {cell}", "dry run: the LSTM only")
    for dtype in s["classic_dtypes"]:
        for cell in s["classic_cells"]:
            if time.perf_counter() > deadline:
                report.skip(f"classic {cell} {dtype}", "time budget spent")
                continue
            peers = ["torch", "flax"]
            if cell == "lstm":
                if dtype != "float32":
                    report.skip(f"jax.experimental.rnn lstm {dtype}",
                                "cuDNN through jax.experimental.rnn is float32 only "
                                "(bfloat16 raises NotImplementedError)")
                elif jax.default_backend() != "gpu":
                    report.skip("jax.experimental.rnn lstm",
                                "cuDNN-only (needs a GPU backend)")
                else:
                    peers.append("jax_rnn")
            case = Case(cell, B, T, H, H, H, dtype, "FlashRNN point (Poeppel et al. 2024)")
            print(f"gpu.sh: {cell} B{B} T{T} H{H} {dtype}", flush=True)
            found = harness.run_case(case, peers=peers, modes=("fwd", "fwd+bwd"),
                                     warmup=s["warmup"], repeats=s["repeats"],
                                     hoist="both", fused=s["classic_fused"])
            found += [r for r in harness.run_case(
                case, peers=(), modes=("fwd", "fwd+bwd"), warmup=s["warmup"],
                repeats=s["repeats"], unroll=8)]
            rows += found
    body = []
    for r in rows:
        peer = [p for p in rows if p["impl"] == "torch" and p["cell"] == r["cell"]
                and p["dtype"] == r["dtype"] and p["mode"] == r["mode"]]
        flax = [p for p in rows if p["impl"] == "flax" and p["cell"] == r["cell"]
                and p["dtype"] == r["dtype"] and p["mode"] == r["mode"]]
        ratio = lambda other: (f"{_ms(r) / _ms(other[0]):.2f}" if other and _ms(r)
                               and _ms(other[0]) else "—")
        label = r["options"] if r["impl"] == "seqjax" else r["what"]
        body.append([r["cell"], r["dtype"], r["mode"], r["impl"], label,
                     _fmt(_ms(r)) if r["status"] == "ok" else f"{r['status']}: {r['reason']}",
                     _fmt(r.get("min_ms")), _fmt(r.get("us_per_step")), ratio(peer),
                     ratio(flax)])
    report.add(dict(
        title=f"LSTM and GRU, B{B} T{T} H{H}", rows=body, raw=rows,
        header=["cell", "dtype", "mode", "impl", "variant", "median ms", "min ms", "µs/step",
                "/ cuDNN (torch)", "/ Flax"],
        note="Ratios are this row's median over the peer's, same run, shapes, dtype and mode "
             "(**< 1: this row is faster**). torch = `torch.nn.LSTM/GRU` on CUDA (cuDNN); "
             "forward under `no_grad`. Targets (issue 13): LSTM bfloat16 forward+backward "
             "<= 1.0x cuDNN and >= 3x faster than Flax.",
        command=f"python -m seqjax.bench --cells lstm,gru --batch {B} --length {T} --hidden "
                f"{H} --dtype {','.join(s['classic_dtypes'])} --hoist both --fused both "
                f"--peers torch,jax_rnn,flax"))


def min_gru_scan(report: Report, s, deadline, dry_run):
    """min_gru's parallel scan against its sequential scan at T = 4,096 (the target), and
    the Pallas scan's tile sizes."""
    _scans(report, s, deadline, ["min_gru"], "min_gru: parallel against sequential scan")


def other_scans(report: Report, s, deadline, dry_run):
    """Every other linear and chunkwise cell of the bench registry at T = 4,096."""
    from seqjax.bench import cells as cells_mod

    B, T, H = s["scan"]
    names = []
    for name in cells_mod.BASES:
        if name == "min_gru":
            continue
        try:
            cell = cells_mod.cell_spec(name).build(H, H, _dtype("float32"))
        except Exception as e:  # a cell that cannot be built at this size: say so
            report.skip(f"scan cell {name}", f"cannot build at H={H}: {e}")
            continue
        if cell.linear is not None or cell.chunkwise is not None:
            names.append(name)
    limit = s["other_scan_cells"]
    if limit is not None:
        for name in names[limit:]:
            report.skip(f"scan cell {name}", "dry run: min_gru stands for the scan cells")
        names = names[:limit]
    if names:
        _scans(report, s, deadline, names, "the other scan cells: parallel forms against "
                                          "stepping")


def _scans(report, s, deadline, names, title):
    from seqjax.bench import strategies

    B, T, H = s["scan"]
    rows = []
    for name in names:
        if time.perf_counter() > deadline:
            report.skip(f"scan cell {name}", "time budget spent")
            continue
        print(f"gpu.sh: {name} B{B} T{T} H{H}", flush=True)
        extra = functools.partial(_tile_variants, tiles=s["tiles"]) if name == "min_gru" \
            else None
        rows += strategies.run_case(name, B, T, H, warmup=s["warmup"], repeats=s["repeats"],
                                    deadline=deadline, extra=extra)
    body = []
    for r in rows:
        by = {e["label"]: e for e in r["variants"]}
        seq = by.get("sequential") or by.get("step")
        for e in r["variants"]:
            speedup = (f"{seq['median_ms'] / e['median_ms']:.1f}" if seq and e.get("median_ms")
                       and seq.get("median_ms") else "—")
            body.append([r["cell"], r["mode"], e["label"],
                         _fmt(e.get("median_ms")) if e["status"] == "ok" else
                         f"error: {e['reason'][:80]}", _fmt(e.get("min_ms")), speedup])
    report.add(dict(
        title=f"{title}, B{B} T{T} H{H}", rows=body, raw=rows,
        header=["cell", "mode", "variant", "median ms", "min ms", "speed-up vs sequential"],
        note="Interleaved timing (`seqjax.bench.strategies`); `default` is what seqjax runs "
             "with no options. sequential = `lax.scan` over the precomputed coefficients "
             "(linear cells) or one step at a time (chunkwise cells, `step`). Target "
             "(issue 13): min_gru's parallel scan >= 50x its sequential scan.",
        command="python -m seqjax.bench.strategies --grid gpu"))


def _dtype(name):
    import jax.numpy as jnp

    return jnp.dtype(name)


def _tile_variants(cell, params, xs, mode, tiles):
    """The Pallas scan under other tile sizes (min_gru only): the unroll's linear path
    with :func:`seqjax.kernels.linear_scan` called directly."""
    import jax
    import jax.numpy as jnp
    from seqjax import kernels
    from seqjax.bench.harness import grad_fn

    if jax.default_backend() != "gpu":
        return []
    out = []
    for bb, bn in tiles:
        for stages in (1, 3):
            def fwd(params, xs, bb=bb, bn=bn, stages=stages):
                x = jnp.swapaxes(xs, 0, 1).astype(params.w.dtype)
                a, b = cell.linear.coefficients(params, x)
                hs = kernels.linear_scan(a, b, jnp.zeros_like(a[0]), block_batch=bb,
                                         block_features=bn, num_stages=stages)
                return jnp.swapaxes(cell.linear.readout(params, hs, x), 0, 1)

            out.append((f"pallas {bb}x{bn}, {stages} stage(s)",
                        fwd if mode == "fwd" else grad_fn(fwd)))
    return out


def kernel(report: Report, s, deadline, dry_run):
    """The fused Pallas LSTM at its size limit against the plain scan and cuDNN."""
    import jax
    from seqjax.bench import harness
    from seqjax.bench.cells import Case

    if jax.default_backend() != "gpu":
        report.skip("fused Pallas LSTM", "compiled Pallas needs CUDA (interpret mode is "
                                         "covered by tests/test_pallas.py)")
        return
    rows = []
    for B, T, H, dtype in s["kernel"]:
        if time.perf_counter() > deadline:
            report.skip(f"fused Pallas LSTM H{H} {dtype}", "time budget spent")
            continue
        case = Case("lstm", B, T, H, H, H, dtype, "fused kernel size limit")
        print(f"gpu.sh: fused kernel lstm B{B} T{T} H{H} {dtype}", flush=True)
        rows += harness.run_case(case, peers=("torch",), modes=("fwd", "fwd+bwd"),
                                 warmup=s["warmup"], repeats=s["repeats"])
        for mode in ("fwd", "fwd+bwd"):
            rows.append(_timed_pallas(case, mode, s))
    body = [[r["hidden"], r["dtype"], r["mode"], r["impl"], r.get("options") or r["what"],
             _fmt(_ms(r)) if r["status"] == "ok" else f"{r['status']}: {r['reason']}",
             _fmt(r.get("min_ms"))] for r in rows]
    report.add(dict(title="fused Pallas LSTM at its size limit", rows=body, raw=rows,
                    header=["H", "dtype", "mode", "impl", "variant", "median ms", "min ms"],
                    note="`pallas=True`: the whole time loop in one launch, W loaded once "
                         "(seqjax.kernels.fused_recurrent; W up to 128 KiB)."))


def _timed_pallas(case, mode, s):
    import jax
    import jax.numpy as jnp
    import seqjax
    from seqjax.bench import harness
    from seqjax.bench.cells import DTYPES
    from seqjax.bench.timing import time_fn

    dtype = DTYPES[case.dtype]
    cell = seqjax.lstm(case.hidden, param_dtype=dtype)
    k_x, k_p = jax.random.split(jax.random.PRNGKey(0))
    params = cell.init(k_p, case.input_size)
    xs = jax.random.normal(k_x, (case.batch, case.length, case.input_size),
                           jnp.float32).astype(dtype)
    fwd = harness.forward_fn(cell, {"pallas": True})
    row = dict(impl="seqjax", what="seqjax.unroll_batch", options="pallas=True",
               cell="lstm", hidden=case.hidden, dtype=case.dtype, mode=mode, status="ok",
               reason=None)
    try:
        t = time_fn(fwd if mode == "fwd" else harness.grad_fn(fwd), (params, xs),
                    warmup=s["warmup"], repeats=s["repeats"])
        row.update(median_ms=1e3 * t.median_s, min_ms=1e3 * t.min_s, compile_s=t.compile_s)
    except Exception as e:  # report the failure on the row
        row.update(status="error", reason=(str(e).strip().splitlines() or [type(e).__name__])
                   [0][:300])
    return row


_CHILD = """
import json, sys
sys.path.insert(0, {root!r})
import jax, jax.numpy as jnp
import seqjax
from seqjax.bench import harness
from seqjax.bench.timing import time_fn
B, T, H = {shape}
out = []
for dtype in {dtypes}:
    dt = jnp.dtype(dtype)
    cell = seqjax.lstm(H, param_dtype=dt)
    params = cell.init(jax.random.PRNGKey(1), H)
    xs = jax.random.normal(jax.random.PRNGKey(0), (B, T, H), jnp.float32).astype(dt)
    for mode in ("fwd", "fwd+bwd"):
        fwd = harness.forward_fn(cell, {{}})
        t = time_fn(fwd if mode == "fwd" else harness.grad_fn(fwd), (params, xs),
                    warmup={warmup}, repeats={repeats})
        out.append(dict(dtype=dtype, mode=mode, median_ms=1e3 * t.median_s,
                        min_ms=1e3 * t.min_s))
print(json.dumps(out))
"""


def command_buffers(report: Report, s, deadline, dry_run):
    """The LSTM's default unroll with and without XLA command buffers for while loops."""
    import jax

    if jax.default_backend() != "gpu":
        report.skip("XLA command buffers", "a GPU-only XLA flag")
        return
    B, T, H = s["classic"]
    code = _CHILD.format(root=str(ROOT), shape=(B, T, H), dtypes=s["classic_dtypes"],
                         warmup=s["warmup"], repeats=s["repeats"])
    rows = []
    for label, flags in (("default flags", ""), ("command buffers incl. WHILE",
                                                  COMMAND_BUFFER_FLAG)):
        remaining = deadline - time.perf_counter()
        if remaining < 20:
            report.skip(f"command buffers: {label}", "time budget spent")
            continue
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
        try:
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                 text=True, timeout=min(remaining, 240), check=False)
            if out.returncode != 0:
                rows.append([label, "—", "—", f"error: {out.stderr.strip()[-200:]}", "—"])
                continue
            for r in json.loads(out.stdout.strip().splitlines()[-1]):
                rows.append([label, r["dtype"], r["mode"], _fmt(r["median_ms"]),
                             _fmt(r["min_ms"])])
        except subprocess.TimeoutExpired:
            rows.append([label, "—", "—", "timed out", "—"])
    report.add(dict(title=f"XLA command buffers, LSTM B{B} T{T} H{H} (seqjax default)",
                    rows=rows, header=["XLA flags", "dtype", "mode", "median ms", "min ms"],
                    note=f"`XLA_FLAGS={COMMAND_BUFFER_FLAG}` in a fresh process against the "
                         "same process without it (jax issue 2491: lax.scan's per-step host "
                         "control)."))


def targets(report: Report, s, deadline, dry_run):
    """Issue 13's GPU targets, read off the sections above."""
    rows = []
    by_title = {sec["title"].split(",")[0]: sec for sec in report.data["sections"]}
    classic_rows = next((sec["raw"] for t, sec in by_title.items() if t.startswith(
        "LSTM and GRU")), [])

    def median(impl, options=None, dtype="bfloat16", mode="fwd+bwd", cell="lstm"):
        found = [r for r in classic_rows if r["impl"] == impl and r["cell"] == cell
                 and r["dtype"] == dtype and r["mode"] == mode and r["status"] == "ok"
                 and (options is None or r["options"] == options)]
        return min((r["median_ms"] for r in found), default=None)

    dtype = s["classic_dtypes"][0]
    default = next((r["options"] for r in classic_rows if r["impl"] == "seqjax"
                    and r["cell"] == "lstm" and r["dtype"] == dtype
                    and "unroll" not in r["options"]
                    and r["options"] == _default_label(r["batch"])), None)
    seq_default = median("seqjax", default, dtype)
    seq_best = median("seqjax", None, dtype)
    cudnn, flax = median("torch", None, dtype), median("flax", None, dtype)

    def check(value, limit, better):
        if value is None or limit is None:
            return "—", "not measured"
        return f"{value:.2f}", "met" if better(value, limit) else "NOT met"

    for label, v in (("default", seq_default), ("best variant", seq_best)):
        ratio = None if v is None or cudnn is None else v / cudnn
        rows.append([f"LSTM {dtype} fwd+bwd, seqjax {label} / cuDNN", "<= 1.0",
                     *check(ratio, 1.0, lambda a, b: a <= b)])
        speed = None if v is None or flax is None else flax / v
        rows.append([f"LSTM {dtype} fwd+bwd, Flax / seqjax {label}", ">= 3",
                     *check(speed, 3.0, lambda a, b: a >= b)])
    scan = next((sec["raw"] for t, sec in by_title.items() if t.startswith("min_gru")), [])
    for r in scan:
        by = {e["label"]: e for e in r["variants"] if e["status"] == "ok"}
        seq = by.get("sequential")
        for label in ("associative", "pallas", "default"):
            if label in by and seq:
                rows.append([f"min_gru T{r['length']} {r['mode']}: sequential / {label}",
                             ">= 50", *check(seq["median_ms"] / by[label]["median_ms"], 50.0,
                                             lambda a, b: a >= b)])
    report.add(dict(title="targets (issue 13)", rows=rows,
                    header=["quantity", "target", "measured", "verdict"],
                    note="From the tables above, same run. 'best variant' is the fastest "
                         "seqjax row (any hoist/fused/unroll option)."))


def _default_label(batch):
    import seqjax

    return (f"hoist={'on' if seqjax.default_hoist() else 'off'},"
            f"fused={'on' if seqjax.default_fused(batch) else 'off'}")


# ----------------------------------------------------------------------------- main


def parser():
    p = argparse.ArgumentParser(
        prog="benchmarks/gpu.sh",
        description="Everything issue 13 needs from a GPU, in one run of at most ~6 minutes: "
                    "environment check, GPU-only tests, the GPU grid; writes gpu.md and "
                    "gpu.json.")
    p.add_argument("--dry-run", action="store_true",
                   help="the same code on the CPU at tiny shapes, CUDA-only steps skipped "
                        "with the reason; writes to a temporary folder unless --out")
    p.add_argument("--out", default=None, help="output folder (default docs/bench)")
    p.add_argument("--budget", type=float, default=300.0,
                   help="seconds after which no new step starts (default 300; the step "
                        "running then finishes, so the whole run stays near 6 minutes)")
    p.add_argument("--no-tests", action="store_true", help="skip the GPU-only tests")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.budget
    if args.out:
        out = pathlib.Path(args.out)
    elif args.dry_run:
        out = pathlib.Path(tempfile.mkdtemp(prefix="seqjax-gpu-dry-run-"))
    else:
        out = ROOT / "docs" / "bench"
    report = Report(out, argv, args.dry_run)
    env = environment(args.dry_run)
    report.data["environment"] = env
    report.write()
    for problem in env["problems"]:
        print(f"gpu.sh: environment: {problem}", flush=True)
    if not args.dry_run and env["backend"] != "gpu":
        print("gpu.sh: no GPU backend; use --dry-run on a CPU", file=sys.stderr)
        return 2
    s = shapes(args.dry_run)
    if args.no_tests:
        report.skip("GPU-only tests", "--no-tests")
    elif args.dry_run:
        report.skip("GPU-only tests", "they need CUDA (CI runs tests/test_pallas.py itself)")
    else:
        run_tests(report, timeout=min(150.0, max(deadline - time.perf_counter(), 10.0)))
    failed = []
    for step in (classic, min_gru_scan, kernel, command_buffers, other_scans, targets):
        if time.perf_counter() > deadline:
            report.skip(step.__name__, "time budget spent")
            continue
        try:
            step(report, s, deadline, args.dry_run)
        except Exception as e:  # keep going: a broken step must not lose the others
            traceback.print_exc()
            failed.append(step.__name__)
            report.skip(step.__name__, f"failed: {type(e).__name__}: {e}")
    report.data["complete"] = not failed and time.perf_counter() <= deadline
    report.data["wall_s"] = time.perf_counter() - start
    report.write()
    print(f"gpu.sh: wrote {out / 'gpu.md'} and gpu.json in {report.data['wall_s']:.0f} s",
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
