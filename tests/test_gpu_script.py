"""``benchmarks/gpu.sh --dry-run``: the one-shot GPU script runs its own code on the CPU
at tiny shapes, says why each CUDA-only step is skipped, and writes ``gpu.md`` and
``gpu.json``; its time guard still writes what ran. No time is asserted."""

import json
import pathlib
import subprocess

import jax

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.sh"


def _run(tmp_path, *args):
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    return out, json.loads((tmp_path / "gpu.json").read_text()), (tmp_path / "gpu.md").read_text()


def test_dry_run_writes_every_section(tmp_path):
    out, data, text = _run(tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert data["dry_run"] and data["complete"]
    env = data["environment"]
    assert env["backend"] == jax.default_backend() == "cpu"
    assert env["versions"]["jax"] == jax.__version__
    titles = [s["title"] for s in data["sections"]]
    assert titles[0].startswith("LSTM and GRU") and titles[-1] == "targets (issue 13)"
    assert any(t.startswith("min_gru: parallel") for t in titles)
    classic = data["sections"][0]["raw"]
    impls = {r["impl"] for r in classic}
    assert {"seqjax", "torch", "flax"} <= impls
    measured = [r for r in classic if r["status"] == "ok"]
    assert len(measured) == len(classic) and all(r["median_ms"] > 0 for r in measured)
    options = {r["options"] for r in classic if r["impl"] == "seqjax"}
    assert {o.split(",")[0] for o in options} == {"hoist=on", "hoist=off"}
    assert any("unroll=8" in o for o in options)
    scan = next(s for s in data["sections"] if s["title"].startswith("min_gru"))["raw"]
    labels = {e["label"] for r in scan for e in r["variants"] if e["status"] == "ok"}
    assert {"default", "associative", "sequential"} <= labels
    skipped = {s["what"]: s["why"] for s in data["skipped"]}
    assert "CUDA" in skipped["GPU-only tests"]
    assert "cuDNN-only" in skipped["jax.experimental.rnn lstm"]
    assert "CUDA" in skipped["fused Pallas LSTM"]
    assert "GPU-only" in skipped["XLA command buffers"]
    assert "DRY RUN" in text and "## targets (issue 13)" in text and "## not run" in text
    assert "skipping fused Pallas LSTM: compiled Pallas needs CUDA" in out.stdout


def test_time_guard_still_writes_what_ran(tmp_path):
    out, data, text = _run(tmp_path, "--budget", "0")
    assert out.returncode == 0, out.stderr[-3000:]
    assert not data["complete"] and data["sections"] == []
    assert data["environment"]["versions"]["jax"] == jax.__version__
    spent = [s["what"] for s in data["skipped"] if s["why"] == "time budget spent"]
    assert spent == ["classic", "min_gru_scan", "kernel", "command_buffers", "other_scans",
                     "targets"]
    assert "complete: False" in text
