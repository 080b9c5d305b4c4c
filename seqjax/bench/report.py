"""Writing the results: ``bench.json``, ``bench.md`` and PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import collections
import json
import os
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


def markdown(meta, rows, params):
    """The ``bench.md`` text: a header, the seqjax table with ratios, peers, params."""
    seq = [r for r in rows if r["impl"] == "seqjax"]
    peer_rows = [r for r in rows if r["impl"] != "seqjax"]
    peers = list(dict.fromkeys(meta["peers"]))
    show_input = any(r["input_size"] != r["hidden"] for r in rows)
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
        f"for batches up to {meta.get('default_fused_max_batch') or 'any size'}",
        "- times: median and minimum over the repeats, each call ended by "
        "`block_until_ready` (torch: `cuda.synchronize` on GPU); fwd = jit(forward), "
        "fwd+bwd = jit(grad of sum(outputs) w.r.t. params and inputs); torch forward under "
        "`no_grad`, fwd+bwd = forward + `.sum().backward()`. compile s = trace + lower + "
        "compile, timed on its own.",
        f"- peak MiB: {meta['memory_kind']}. XLA temp MiB: the compiled function's temporary "
        "buffers (`compiled.memory_analysis()`).",
        "- GFLOP/s from the closed-form FLOP counts in `seqjax/bench/cells.py` "
        "(matmul multiply-add = 2, elementwise = 1; fwd+bwd = 3x fwd).",
        "- ratio vs P = seqjax median / P median, same shapes, dtype and mode: "
        "**< 1 means seqjax is faster**; — means P has no such cell.",
        "- timings are noisy on a shared machine; compare within one run.",
        "",
        "## seqjax",
        "",
    ]
    header = (["cell", "B", "T", "H"] + (["I"] if show_input else [])
              + ["dtype", "mode", "options", "median ms", "min ms", "µs/step", "tokens/s",
                 "GFLOP/s", "compile s", "peak MiB", "XLA temp MiB"]
              + [f"ratio vs {p}" for p in peers])
    body = []
    for r in seq:
        line = [r["cell"], r["batch"], r["length"], r["hidden"]] + (
            [r["input_size"]] if show_input else []) + [r["dtype"], r["mode"], r["options"]]
        if r["status"] != "ok":
            line += [notes.mark(r)] + ["—"] * 8
        else:
            line += [_num(r["median_ms"]), _num(r["min_ms"]), _num(r["us_per_step"]),
                     _num(r["tokens_per_s"]), _num(r["gflops_per_s"]), _num(r["compile_s"]),
                     _mib(r["memory_bytes"]), _mib(r["xla_temp_bytes"])]
        for p in peers:
            other = _match(peer_rows, r, p)
            if other is None:
                line.append("—")
            elif other["status"] != "ok":
                line.append(notes.mark(other))
            else:
                ratio = r["ratios"].get(p)
                line.append("—" if ratio is None else f"{ratio:.2f}")
        body.append(line)
    lines.append(_table(header, body))

    if peer_rows:
        lines += ["", "## peers", ""]
        header = (["peer", "implementation", "cell", "B", "T", "H"]
                  + (["I"] if show_input else [])
                  + ["dtype", "mode", "median ms", "min ms", "µs/step", "tokens/s", "GFLOP/s",
                     "compile s", "first call s", "peak MiB", "params"])
        body = []
        for r in peer_rows:
            line = [r["impl"], r["what"], r["cell"], r["batch"], r["length"], r["hidden"]] + (
                [r["input_size"]] if show_input else []) + [r["dtype"], r["mode"]]
            if r["status"] != "ok":
                line += [notes.mark(r)] + ["—"] * 8
            else:
                line += [_num(r["median_ms"]), _num(r["min_ms"]), _num(r["us_per_step"]),
                         _num(r["tokens_per_s"]), _num(r["gflops_per_s"]),
                         _num(r["compile_s"]), _num(r["first_call_s"]),
                         _mib(r["memory_bytes"]), r["params"]]
            body.append(line)
        lines.append(_table(header, body))

    lines += ["", "## parameter counts", "",
              "seqjax counts its params pytree; the formula is the closed form (one bias per "
              "gate, + H for the reset-after GRU's b_hn); PyTorch's count comes from "
              "instantiating `torch.nn.RNN/LSTM/GRU` (two biases per gate).", ""]
    header = ["cell", "I", "H", "N", "seqjax", "formula", "formula value", "PyTorch",
              "PyTorch formula", "peers (their own params)"]
    body = []
    for p in params:
        peer_text = ", ".join(f"{k} {v}" for k, v in p["peers"].items()) or "—"
        body.append([p["cell"], p["input_size"], p["hidden"],
                     "—" if p["state_size"] is None else p["state_size"],
                     "—" if p["seqjax"] is None else p["seqjax"], p["formula_text"],
                     p["formula"], "—" if p["torch"] is None else p["torch"],
                     "—" if p["torch_formula"] is None else
                     f"{p['torch_formula_text']} = {p['torch_formula']}", peer_text])
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


def plot(out, rows, params):
    """Throughput vs T and vs B per cell; parameter counts per cell. Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    ok = [r for r in rows if r["status"] == "ok"]
    for axis, other, name in (("length", "batch", "throughput_vs_length"),
                              ("batch", "length", "throughput_vs_batch")):
        cells = list(dict.fromkeys(r["cell"] for r in ok))
        ncols = min(3, max(len(cells), 1))
        nrows = max(1, -(-len(cells) // ncols))
        fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
        for ax, cell in zip(axes.flat, cells):
            mine = [r for r in ok if r["cell"] == cell]
            # fix the other axes at their most frequent value (largest on ties)
            fixed = {}
            for key in (other, "hidden", "dtype"):
                counts = collections.Counter(r[key] for r in mine)
                fixed[key] = max(counts, key=lambda k: (counts[k], str(k)))
            mine = [r for r in mine if all(r[k] == v for k, v in fixed.items())]
            series = collections.defaultdict(list)
            for r in mine:
                label = r["impl"] + (f" {r['options']}" if r["options"] else "") + f" {r['mode']}"
                series[label].append((r[axis], r["tokens_per_s"], r["impl"], r["mode"]))
            impls = list(dict.fromkeys(r["impl"] for r in ok))
            for label, pts in series.items():
                pts.sort()
                color = f"C{impls.index(pts[0][2]) % 10}"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color,
                        linestyle="-" if pts[0][3] == "fwd" else "--", label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel({"length": "T (steps)", "batch": "B (batch)"}[axis])
            ax.set_ylabel("tokens/s (B·T / median)")
            fixed_text = ", ".join(f"{ {'batch': 'B', 'length': 'T', 'hidden': 'H'}.get(k, k)}={v}"
                                   for k, v in fixed.items())
            ax.set_title(f"{cell} ({fixed_text})", fontsize=9)
            ax.legend(fontsize=6)
            ax.grid(True, which="both", alpha=0.3)
        for ax in list(axes.flat)[len(cells):]:
            ax.axis("off")
        fig.suptitle(f"throughput vs {axis} (solid fwd, dashed fwd+bwd)")
        fig.tight_layout()
        paths[name] = out / f"{name}.png"
        fig.savefig(paths[name], dpi=110)
        plt.close(fig)

    # parameter counts at the largest H of each cell
    best = {}
    for p in params:
        if p["seqjax"] is not None and (p["cell"] not in best
                                        or p["hidden"] > best[p["cell"]]["hidden"]):
            best[p["cell"]] = p
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(best)), 4))
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
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths["params_plot"] = out / "params.png"
    fig.savefig(paths["params_plot"], dpi=110)
    plt.close(fig)
    return paths
