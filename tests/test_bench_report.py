"""What ``seqjax bench`` writes, on synthetic rows shaped like the quick grid's (one
batch size, two lengths, two hidden sizes, two peers, a cell no peer has, a peer that
cannot run here): the markdown table stays narrow, every hidden size is plotted,
forward and forward+backward are told apart, and no figure is drawn against an axis
with a single value. No timing is run here."""

import itertools

import pytest

from seqjax.bench import report

pytest.importorskip("matplotlib")


def _rows():
    rows = []
    for cell, impl, b, t, h, mode in itertools.product(
            ("lstm", "lstm_x2", "min_gru"), ("seqjax", "torch", "jax_rnn"), (16,), (64, 256),
            (64, 128), ("fwd", "fwd+bwd")):
        if impl != "seqjax" and cell == "min_gru":
            continue
        median = 1.0 + t / 64 + h / 64 + (2.0 if mode != "fwd" else 0.0) + (impl == "torch")
        ok = impl != "jax_rnn"
        rows.append(dict(
            impl=impl, cell=cell, what=f"{impl} {cell}", batch=b, length=t, hidden=h,
            input_size=h, dtype="float32", mode=mode,
            options="hoist=off,fused=on" if impl == "seqjax" else "",
            status="ok" if ok else "skipped", reason=None if ok else "needs cuDNN (GPU)",
            median_ms=median if ok else None, min_ms=0.9 * median if ok else None,
            us_per_step=1e3 * median / t if ok else None,
            tokens_per_s=b * t / median * 1e3 if ok else None, gflops_per_s=1.0,
            compile_s=0.2, first_call_s=0.3, memory_bytes=0, xla_temp_bytes=2 ** 20,
            params=100, ratios={}))
    for r in rows:
        if r["impl"] == "seqjax":
            for other in rows:
                if other["impl"] == "torch" and all(
                        other[k] == r[k] for k in ("cell", "batch", "length", "hidden", "mode")):
                    r["ratios"]["torch"] = r["median_ms"] / other["median_ms"]
    return rows


META = dict(date="2026-01-01", grid="quick", warmup=1, repeats=5, wall_s=1.0, device="cpu:0",
            device_kind="cpu", platform="cpu", cpu_count=2, cpu_affinity=2, torch_threads=2,
            xla_flags=None, default_hoist=False, default_fused_max_batch=63,
            versions=dict(python="3.11", seqjax="0.1.0", jax="0.10.2"),
            memory_kind="CPU: process peak RSS - RSS before", peers=["torch", "jax_rnn"])

PARAMS = [dict(cell="lstm_x2", input_size=64, hidden=64, state_size=None, seqjax=66048,
               formula=66048, formula_text="4H(I+H)+4H", torch=66560, torch_formula=66560,
               torch_formula_text="4H(I+H)+8H", peers={"torch": 66560})]


def test_markdown_puts_both_modes_on_one_line_with_few_columns():
    text = report.markdown(META, _rows(), PARAMS)
    table = text.split("## seqjax")[1].split("##")[0].strip().splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    # cell, B, T, H, fwd ms, fwd+bwd ms, ratio vs torch: dtype and options are in the
    # header lines (shared by every row), the cuDNN peer that could not run has no column
    assert header == ["cell", "B", "T", "H", "fwd ms", "fwd+bwd ms", "ratio vs torch"]
    assert len(table) == 2 + 3 * 2 * 2  # header, rule, one line per (cell, T, H)
    lstm = next(l for l in table if l.startswith("| lstm | 16 | 64 | 64 |"))
    fwd, bwd = 1.0 + 1 + 1, 1.0 + 1 + 1 + 2  # the synthetic medians; torch's are 1 more
    assert f"{fwd / (fwd + 1):.2f} / {bwd / (bwd + 1):.2f}" in lstm
    assert "dtype float32, options `hoist=off,fused=on`" in text


def test_markdown_explains_memory_and_counts_stacks_per_layer():
    text = report.markdown(META, _rows(), PARAMS)
    assert "RSS growth MiB" in text and "0 means they reused" in text
    assert "2 layers of 4H(I+H)+8H (I=H from layer 2) = 66560" in text
    assert "needs cuDNN (GPU)" in text  # the skipped peer's reason, as a footnote


def test_plots_every_hidden_size_and_skip_a_single_valued_axis(tmp_path, monkeypatch):
    import matplotlib.figure

    drawn = {}
    save = matplotlib.figure.Figure.savefig

    def spy(fig, path, **kwargs):
        drawn[path.name] = fig
        return save(fig, path, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    paths = report.plot(tmp_path, _rows(), PARAMS)
    assert "throughput_vs_batch" not in paths  # one batch size: nothing to plot against
    assert not (tmp_path / "throughput_vs_batch.png").exists()
    fig = drawn["throughput_vs_length.png"]
    titles = {ax.get_title() for ax in fig.axes if ax.get_title()}
    assert {"lstm, H=64 (B=16, dtype=float32)", "lstm, H=128 (B=16, dtype=float32)",
            "min_gru, H=128 (B=16, dtype=float32)"} <= titles
    panel = next(ax for ax in fig.axes if ax.get_title().startswith("lstm, H=128"))
    colours = {line.get_label(): line.get_color() for line in panel.get_lines()}
    assert colours["seqjax hoist=off,fused=on fwd"] != colours["seqjax hoist=off,fused=on fwd+bwd"]
    assert len(set(colours.values())) == len(colours) == 4
    assert all(ax.get_legend() is None for ax in fig.axes)  # one legend, outside the panels
    assert len(fig.legends) == 1
    assert (tmp_path / "params.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
