"""Writing the results: ``bench.json``, ``bench.md`` and PNG plots (matplotlib, Agg;
the ``plots`` extra)."""

from __future__ import annotations

import collections
import json
import pathlib

MiB = 2.0 ** 20


def write(out, meta, rows, params, *, plots=True):
    """Writes everything under ``out``; returns the paths and the markdown text."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    data = {"meta": meta, "rows": rows, "params": params}
    paths["json"] = out / "bench.json"
    paths["json"].write_text(json.dumps(data, indent=1, default=_json_default, allow_nan=False))
    text = markdown(meta, rows, params)
    paths["markdown"] = out / "bench.md"
    paths["markdown"].write_text(text)
    if plots:
        paths.update(plot(out, rows, params))
    paths["markdown_text"] = text
    return paths


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


# ----------------------------------------------------------------------------- markdown


def _num(v, digits=3):
    if v is None:
        return "—"
    if v == 0:
        return "0"
    if abs(v) >= 10 ** digits:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def _mib(v):
    return "—" if v is None else f"{v / MiB:.1f}"


def _table(header, body):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in line) + " |" for line in body]
    return "\n".join(lines)


class _Notes:
    """Numbered footnotes for skip/error reasons."""

    def __init__(self):
        self.reasons = {}

    def mark(self, row):
        key = f"{row['impl']}: {row['reason']}"
        n = self.reasons.setdefault(key, len(self.reasons) + 1)
        return f"{'skip' if row['status'] == 'skipped' else 'error'} [{n}]"

    def text(self):
        return "\n".join(f"[{n}] {key}" for key, n in self.reasons.items())


def _common(rows, key):
    """The one value of ``key`` shared by all ``rows``, or ``None`` when they differ."""
    values = {r[key] for r in rows}
    return values.pop() if len(values) == 1 else None


def _layered(text, cell):
    """A one-layer formula text made to read as the ``_xL`` stack it counts."""
    layers = cell.rpartition("_x")[2] if "_x" in cell else ""
    if not layers.isdigit() or text.startswith(f"{layers} layers"):
        return text
    return f"{layers} layers of {text} (I=H from layer 2)"


def markdown(meta, rows, params):
    """The ``bench.md`` text: a header, the seqjax table (one line per shape, forward
    and forward+backward side by side, with the ratios to each peer), a details table
    (minimum, per step, throughput, GFLOP/s, compilation, memory), the peers' own
    rows and the parameter counts."""
    seq = [r for r in rows if r["impl"] == "seqjax"]
    peer_rows = [r for r in rows if r["impl"] != "seqjax"]
    # a peer none of whose rows ran (cuDNN on a CPU) gets no column, only a note
    peers = [p for p in dict.fromkeys(meta["peers"])
             if any(r["impl"] == p and r["status"] == "ok" for r in peer_rows)]
    show_input = any(r["input_size"] != r["hidden"] for r in rows)
    dtype = _common(seq, "dtype") if seq else None
    options = _common(seq, "options") if seq else None
    by_scan = any("scan" in r["ratios"] for r in seq)  # matrix cells, --chunkwise both
    notes = _Notes()
    v = meta["versions"]
    vers = ", ".join(f"{k} {v[k]}" for k in ("jax", "jaxlib", "flax", "optax", "torch",
                                              "equinox", "haiku", "numpy") if v.get(k))
    lines = [
        "# seqjax benchmark",
        "",
        f"- date: {meta['date']}; grid `{meta['grid']}`; {meta['warmup']} warm-up call(s), "
        f"{meta['repeats']} timed repeats; whole run {meta.get('wall_s', 0):.0f} s",
        f"- device: {meta['device']} ({meta['device_kind']}, platform {meta['platform']}); "
        f"{meta['cpu_count']} CPUs (affinity {meta['cpu_affinity']}); torch threads "
        f"{meta['torch_threads']}; XLA_FLAGS={meta['xla_flags'] or 'unset'}",
        f"- versions: python {v['python']}, seqjax {v.get('seqjax')}, {vers}",
        f"- seqjax defaults on this backend: hoist {meta['default_hoist']}; fused backward "
        f"for batches up to {meta.get('default_fused_max_batch') or 'any size'}"
        + (f"; every row below: dtype {dtype}" if dtype else "")
        + (f", options `{options}`" if options else ""),
        "- times: median over the repeats, each call ended by `block_until_ready` (torch: "
        "`cuda.synchronize` on GPU); fwd = jit(forward), fwd+bwd = jit(grad of "
        "sum(outputs) w.r.t. params and inputs); torch forward under `no_grad`, fwd+bwd = "
        "forward + `.sum().backward()`. Compilation is timed on its own (details table).",
        "- ratio vs P = seqjax median / P median, same shapes, dtype and mode, written "
        "`fwd / fwd+bwd`: **< 1 means seqjax is faster**; — means P has no such cell.",
        "- timings are noisy on a shared machine; compare within one run.",
        "",
        "## seqjax",
        "",
    ]

    def key(r):
        return (r["cell"], r["batch"], r["length"], r["hidden"], r["input_size"], r["dtype"],
                r["options"])

    def timed(r):
        return notes.mark(r) if r["status"] != "ok" else _num(r["median_ms"])

    def ratio(r, p):
        if r is None:
            return "—"
        if p == "scan":
            value = r["ratios"].get("scan")
            return "—" if value is None else f"{value:.2f}"
        other = _match(peer_rows, r, p)
        if other is None:
            return "—"
        if other["status"] != "ok":
            return notes.mark(other)
        value = r["ratios"].get(p)
        return "—" if value is None or r["status"] != "ok" else f"{value:.2f}"

    groups = {}
    for r in seq:
        groups.setdefault(key(r), {})[r["mode"]] = r
    header = (["cell", "B", "T", "H"] + (["I"] if show_input else [])
              + ([] if dtype else ["dtype"]) + ([] if options is not None else ["options"])
              + ["fwd ms", "fwd+bwd ms"] + [f"ratio vs {p}" for p in peers]
              + (["ratio vs scan"] if by_scan else []))
    body = []
    for (cell, b, t, h, i, dt, opts), modes in groups.items():
        fwd, bwd = modes.get("fwd"), modes.get("fwd+bwd")
        line = [cell, b, t, h] + ([i] if show_input else []) + ([] if dtype else [dt]) + (
            [] if options is not None else [opts or "—"])
        line += [timed(fwd) if fwd else "—", timed(bwd) if bwd else "—"]
        for p in peers + (["scan"] if by_scan else []):
            line.append(f"{ratio(fwd, p)} / {ratio(bwd, p)}")
        body.append(line)
    lines.append(_table(header, body))

    lines += ["", "## details", "",
              "min ms: the fastest repeat. tokens/s = B·T / median. GFLOP/s from the "
              "closed-form FLOP counts in `seqjax/bench/cells.py` (matmul multiply-add = 2, "
              "elementwise = 1; fwd+bwd = 3× fwd). compile s = trace + lower + compile. "
              f"XLA temp MiB: the compiled function's temporary buffers "
              "(`compiled.memory_analysis()`), the memory a call needs beyond its inputs "
              f"and outputs. RSS growth MiB ({meta['memory_kind']}): how far the timed calls "
              "raised the process's memory above what it held before them; 0 means they "
              "reused what the warm-up call had already allocated, not that they need none.",
              ""]
    header = (["cell", "B", "T", "H", "mode"] + ([] if options is not None else ["options"])
              + ["min ms", "µs/step", "tokens/s", "GFLOP/s", "compile s", "XLA temp MiB",
                 "RSS growth MiB"])
    body = []
    for r in seq:
        line = [r["cell"], r["batch"], r["length"], r["hidden"], r["mode"]] + (
            [] if options is not None else [r["options"] or "—"])
        if r["status"] != "ok":
            line += [notes.mark(r)] + ["—"] * 6
        else:
            line += [_num(r["min_ms"]), _num(r["us_per_step"]), _num(r["tokens_per_s"]),
                     _num(r["gflops_per_s"]), _num(r["compile_s"]),
                     _mib(r["xla_temp_bytes"]), _mib(r["memory_bytes"])]
        body.append(line)
    lines.append(_table(header, body))

    if peer_rows:
        lines += ["", "## peers", ""]
        header = (["peer", "implementation", "cell", "B", "T", "H"]
                  + (["I"] if show_input else []) + ([] if dtype else ["dtype"])
                  + ["mode", "median ms", "min ms", "tokens/s", "compile s", "params"])
        body = []
        for r in peer_rows:
            line = [r["impl"], r["what"], r["cell"], r["batch"], r["length"], r["hidden"]] + (
                [r["input_size"]] if show_input else []) + ([] if dtype else [r["dtype"]]) + [
                r["mode"]]
            if r["status"] != "ok":
                line += [notes.mark(r)] + ["—"] * 4
            else:
                line += [_num(r["median_ms"]), _num(r["min_ms"]), _num(r["tokens_per_s"]),
                         _num(r["compile_s"]), r["params"]]
            body.append(line)
        lines.append(_table(header, body))

    lines += ["", "## parameter counts", "",
              "seqjax counts its params pytree; the formula is the closed form (one bias per "
              "gate, + H for the reset-after GRU's b_hn); PyTorch's count comes from "
              "instantiating `torch.nn.RNN/LSTM/GRU` (two biases per gate).", ""]
    header = ["cell", "I", "H", "N", "seqjax", "formula", "PyTorch", "PyTorch formula",
              "peers (their own params)"]
    body = []
    for p in params:
        peer_text = ", ".join(f"{k} {v}" for k, v in p["peers"].items()) or "—"
        body.append([p["cell"], p["input_size"], p["hidden"],
                     "—" if p["state_size"] is None else p["state_size"],
                     "—" if p["seqjax"] is None else p["seqjax"],
                     f"{_layered(p['formula_text'], p['cell'])} = {p['formula']}",
                     "—" if p["torch"] is None else p["torch"],
                     "—" if p["torch_formula"] is None else
                     f"{_layered(p['torch_formula_text'], p['cell'])} = {p['torch_formula']}",
                     peer_text])
    lines.append(_table(header, body))
    if notes.reasons:
        lines += ["", "## skipped or failed", "", notes.text().replace("\n", "  \n")]
    return "\n".join(lines) + "\n"


def _match(peer_rows, row, peer):
    for other in peer_rows:
        if (other["impl"] == peer and other["cell"] == row["cell"]
                and other["mode"] == row["mode"] and other["dtype"] == row["dtype"]
                and (other["batch"], other["length"], other["hidden"], other["input_size"])
                == (row["batch"], row["length"], row["hidden"], row["input_size"])):
            return other
    return None


# ----------------------------------------------------------------------------- plots


def _series_style(impls, impl, mode):
    """One colour per (implementation, mode): a dark and a light shade of the
    implementation's hue (tab20's pairs), solid for fwd, dashed for fwd+bwd."""
    import matplotlib

    i = impls.index(impl) % 10
    shade = 0 if mode == "fwd+bwd" else 1
    return dict(color=matplotlib.colormaps["tab20"](2 * i + shade),
                linestyle="-" if mode == "fwd" else "--",
                marker="o" if mode == "fwd" else "s")


def _throughput_figure(ok, axis, other):
    """Tokens/s against ``axis`` ("length" or "batch"): one panel per (cell, H), the
    ``other`` axis and the dtype fixed at their most frequent value; ``None`` when no
    panel has two points to join."""
    import matplotlib.pyplot as plt

    impls = list(dict.fromkeys(r["impl"] for r in ok))
    cells = list(dict.fromkeys(r["cell"] for r in ok))
    hiddens = sorted({r["hidden"] for r in ok})
    panels = {}
    for cell in cells:
        mine = [r for r in ok if r["cell"] == cell]
        fixed = {}
        for k in (other, "dtype"):
            counts = collections.Counter(r[k] for r in mine)
            fixed[k] = max(counts, key=lambda v: (counts[v], str(v)))
        for h in hiddens:
            sel = [r for r in mine if r["hidden"] == h
                   and all(r[k] == v for k, v in fixed.items())]
            if len({r[axis] for r in sel}) >= 2:
                panels[(cell, h)] = (sel, fixed)
    if not panels:
        return None
    rows_ = [c for c in cells if any((c, h) in panels for h in hiddens)]
    cols = [h for h in hiddens if any((c, h) in panels for c in cells)]
    fig, axes = plt.subplots(len(rows_), len(cols), squeeze=False, layout="constrained",
                             figsize=(4.2 * len(cols), 2.8 * len(rows_) + 1.2))
    handles = {}
    short = {"batch": "B", "length": "T", "hidden": "H"}
    for ax, (cell, h) in zip(axes.flat, [(c, h) for c in rows_ for h in cols]):
        if (cell, h) not in panels:
            ax.axis("off")
            continue
        sel, fixed = panels[(cell, h)]
        series = collections.defaultdict(list)
        for r in sel:
            label = r["impl"] + (f" {r['options']}" if r["options"] else "") + f" {r['mode']}"
            series[(label, r["impl"], r["mode"])].append((r[axis], r["tokens_per_s"]))
        for (label, impl, mode), pts in series.items():
            pts.sort()
            (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label,
                              markersize=4, **_series_style(impls, impl, mode))
            handles.setdefault(label, line)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"{short[axis]} ({'steps' if axis == 'length' else 'batch'})")
        ax.set_ylabel("tokens/s")
        fixed_text = ", ".join(f"{short.get(k, k)}={v}" for k, v in fixed.items())
        ax.set_title(f"{cell}, H={h} ({fixed_text})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center",
               ncol=min(4, len(handles)), fontsize=7, frameon=False)
    fig.suptitle(f"throughput (B·T / median) against {short[axis]}; light solid: fwd, "
                 "dark dashed: fwd+bwd", fontsize=10)
    return fig


def plot(out, rows, params):
    """Throughput against T and against B (each only when the run has two or more
    values of that axis), and the parameter counts per cell. Returns the paths."""
    from seqjax._extras import require

    matplotlib = require("matplotlib", "seqjax bench's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    ok = [r for r in rows if r["status"] == "ok"]
    for axis, other, name in (("length", "batch", "throughput_vs_length"),
                              ("batch", "length", "throughput_vs_batch")):
        fig = _throughput_figure(ok, axis, other)
        if fig is None:  # one value of the axis: nothing to plot against
            continue
        paths[name] = out / f"{name}.png"
        fig.savefig(paths[name], dpi=110)
        plt.close(fig)

    # parameter counts at the largest H of each cell
    best = {}
    for p in params:
        if p["seqjax"] is not None and (p["cell"] not in best
                                        or p["hidden"] > best[p["cell"]]["hidden"]):
            best[p["cell"]] = p
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(best)), 4), layout="constrained")
    names = list(best)
    width = 0.4
    xs = range(len(names))
    ax.bar([x - width / 2 for x in xs], [best[n]["seqjax"] for n in names], width,
           label="seqjax (= one-bias formula)")
    ax.bar([x + width / 2 for x in xs], [best[n]["torch"] or 0 for n in names], width,
           label="PyTorch (two biases)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([f"{n}\nI={best[n]['input_size']} H={best[n]['hidden']}" for n in names],
                       fontsize=7)
    ax.set_ylabel("parameters")
    ax.set_title("parameter count per cell (PyTorch bar absent: no torch module)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    paths["params_plot"] = out / "params.png"
    fig.savefig(paths["params_plot"], dpi=110)
    plt.close(fig)
    return paths
