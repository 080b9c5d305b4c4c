"""The benchmark harness on tiny shapes: it runs, writes its files, and its parameter
counts equal the closed forms and what PyTorch and JAX count themselves.

No test here asserts a time: timings are only checked for being measured (positive,
finite) and for the ratio being the quotient of the two medians it reports.
"""

import json
import math

import jax
import numpy as np
import pytest

import seqjax
from seqjax import cli
from seqjax.bench import cells as bench_cells
from seqjax.bench import harness

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = harness.main(["--grid", "tiny", "--cells", "lstm,gru_rb,min_gru,lstm_x2",
                         "--peers", "flax,equinox,haiku,torch,jax_rnn", "--repeats", "2",
                         "--warmup", "1", "--fused", "both", "--out", str(out),
                         "--no-progress"])
    return code, out, json.loads((out / "bench.json").read_text())


def test_runs_and_writes_every_file(tiny_run):
    code, out, data = tiny_run
    assert code == 0
    for name in ("bench.json", "bench.md", "params.png"):
        assert (out / name).stat().st_size > 0, name
    # the tiny grid has one T and one B: no throughput figure against either
    # (tests/test_bench_report.py draws them from a grid that has two)
    assert not list(out.glob("throughput_vs_*.png"))
    with open(out / "params.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    meta = data["meta"]
    assert meta["versions"]["jax"] == jax.__version__
    assert meta["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert meta["platform"] == jax.default_backend() and meta["device"]
    text = (out / "bench.md").read_text()
    assert "ratio vs torch" in text and "## parameter counts" in text
    assert f"jax {jax.__version__}" in text


def test_every_seqjax_and_peer_row_is_measured(tiny_run):
    _, _, data = tiny_run
    rows = data["rows"]
    seq = [r for r in rows if r["impl"] == "seqjax"]
    assert {r["cell"] for r in seq} == {"lstm", "gru_rb", "min_gru", "lstm_x2"}
    assert {r["mode"] for r in seq} == {"fwd", "fwd+bwd"}
    hoist = "on" if seqjax.default_hoist() else "off"
    assert {r["options"] for r in seq if r["cell"] == "lstm"} == {
        f"hoist={hoist},fused=on", f"hoist={hoist},fused=off"}
    measured = [r for r in rows if r["status"] == "ok"]
    # every row is either measured or says why not; only the cuDNN peer may skip on CPU
    for r in rows:
        if r["status"] != "ok":
            assert r["impl"] == "jax_rnn" and jax.default_backend() != "gpu", r
            assert "cuDNN" in r["reason"]
    for r in measured:
        assert len(r["times_ms"]) == 2
        assert 0 < r["min_ms"] <= r["median_ms"] and math.isfinite(r["median_ms"])
        np.testing.assert_allclose(r["median_ms"], np.median(r["times_ms"]))
        np.testing.assert_allclose(r["tokens_per_s"],
                                   r["batch"] * r["length"] / (r["median_ms"] / 1e3))
        np.testing.assert_allclose(r["us_per_step"], 1e3 * r["median_ms"] / r["length"])
    peers = {(r["impl"], r["cell"]) for r in measured if r["impl"] != "seqjax"}
    assert {("flax", "lstm"), ("equinox", "lstm"), ("haiku", "gru_rb"), ("torch", "lstm"),
            ("torch", "lstm_x2"), ("haiku", "lstm_x2")} <= peers
    # ratio = seqjax median / peer median, same cell, shape and mode
    lstm_fwd = next(r for r in seq if r["cell"] == "lstm" and r["mode"] == "fwd")
    torch_fwd = next(r for r in rows if r["impl"] == "torch" and r["cell"] == "lstm"
                     and r["mode"] == "fwd")
    np.testing.assert_allclose(lstm_fwd["ratios"]["torch"],
                               lstm_fwd["median_ms"] / torch_fwd["median_ms"])


def test_peers_compute_the_same_function_size(tiny_run):
    """Each JAX peer's own parameter count equals seqjax's one-bias closed form: the
    peers are the same models, not smaller ones."""
    _, _, data = tiny_run
    formula = {(p["cell"], p["hidden"]): p["formula"] for p in data["params"]}
    for r in data["rows"]:
        if r["status"] == "ok" and r["impl"] in ("flax", "equinox", "haiku"):
            # (Flax's GRUCell and Equinox's GRUCell keep a b_hn as seqjax's gru does)
            assert r["params"] == formula[(r["cell"], r["hidden"])], (r["impl"], r["cell"])


def _torch_count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name,I,H,module", [
    ("rnn", 3, 5, lambda: torch.nn.RNN(3, 5)),
    ("lstm", 7, 5, lambda: torch.nn.LSTM(7, 5)),
    ("gru", 4, 6, lambda: torch.nn.GRU(4, 6)),
    ("lstm_x2", 4, 6, lambda: torch.nn.LSTM(4, 6, num_layers=2)),
])
def test_parameter_counts_match_formula_seqjax_and_torch(name, I, H, module):
    spec = bench_cells.cell_spec(name)
    case = bench_cells.Case(name, 1, 1, H, I, H, "float32")
    (row,) = harness.param_table([case], [])
    params = spec.build(H, H, jax.numpy.float32).init(jax.random.PRNGKey(0), I)
    ours = sum(np.size(a) for a in jax.tree_util.tree_leaves(params))
    assert row["seqjax"] == row["formula"] == ours
    assert row["torch"] == row["torch_formula"] == _torch_count(module())


def test_lstm_counts_match_jax_experimental_rnn():
    """jax.experimental.rnn counts cuDNN's (two-bias) LSTM weights on its own."""
    from jax.experimental import rnn

    spec = bench_cells.cell_spec("lstm")
    assert spec.torch_formula(7, 5) == rnn.get_num_params_in_lstm(7, 5, 1, False) == 280
    assert bench_cells.cell_spec("lstm_x2").torch_formula(7, 5) == \
        rnn.get_num_params_in_lstm(7, 5, 2, False)


@pytest.mark.parametrize("name,I,H,N", [("mgu", 3, 4, 4), ("min_gru", 3, 4, 4),
                                        ("min_lstm", 5, 2, 2), ("lru", 6, 6, 3),
                                        ("gru_rb", 2, 3, 3)])
def test_parameter_counts_of_cells_without_a_torch_module(name, I, H, N):
    case = bench_cells.Case(name, 1, 1, H, I, N, "float32")
    (row,) = harness.param_table([case], [])
    params = bench_cells.cell_spec(name).build(H, N, jax.numpy.float32).init(
        jax.random.PRNGKey(0), I)
    assert row["seqjax"] == sum(np.size(a) for a in jax.tree_util.tree_leaves(params))
    assert row["seqjax"] == row["formula"] and row["torch"] is None
    if name == "lru":  # REFERENCES: 2NI + 2HN + H + 3N
        assert row["formula"] == 2 * N * I + 2 * H * N + H + 3 * N


def test_grids_and_bad_options(capsys, tmp_path):
    quick = bench_cells.expand("quick")
    assert {c.cell for c in quick} == set(bench_cells.DEFAULT_CELLS)
    full = bench_cells.expand("full")
    assert any((c.batch, c.length, c.hidden, c.dtype) == (16, 1024, 768, "bfloat16")
               and c.cell == "lstm" for c in full)  # FlashRNN's point
    assert any(c.length == 16384 and c.cell == "min_gru" for c in full)
    assert {c.length for c in full if c.batch == 64 and c.cell == "min_gru"} >= {512, 4096}
    assert harness.main(["--cells", "lstn", "--out", str(tmp_path)]) == 2
    assert "unknown cell 'lstn'" in capsys.readouterr().err
    assert harness.main(["--peers", "keras", "--out", str(tmp_path)]) == 2
    assert "unknown peer" in capsys.readouterr().err
    assert harness.main(["--dtype", "float8", "--out", str(tmp_path)]) == 2
    assert "unknown dtype" in capsys.readouterr().err


def test_console_command_dispatches(capsys):
    assert cli.main([]) == 2
    assert "bench" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--help"])
    assert exit_.value.code == 0
    assert "--grid" in capsys.readouterr().out
