"""``seqjax bench recall`` (seqjax/bench/recall.py): the tiny grid runs end to end and
writes its files; the state-size accounting equals bytes counted by hand from each
block's definition; the training loop teaches attention an easy MQAR setting; the
command line rejects bad values in one line.

No test asserts a time: the harness's numbers are accuracies and byte counts.
"""

import json
import os

import jax
import pytest

from seqjax import cli
from seqjax.bench import recall

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

F32 = 4  # bytes
I32 = 4


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("recall")
    code = recall.main(["--grid", "tiny", "--jobs", "1", "--out", str(out), "--no-progress"])
    return code, out, json.loads((out / "recall.json").read_text())


def test_tiny_grid_runs_and_writes_every_file(tiny_run):
    code, out, data = tiny_run
    assert code == 0
    for name in ("recall.json", "recall.md", "recall.png", "recall_state.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "recall.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    grid = recall.GRIDS["tiny"]
    rows = data["rows"]
    assert len(rows) == len(grid.blocks) * len(grid.d_models) * len(grid.settings)
    assert {(r["block"], r["d_model"]) for r in rows} == {
        (b, d) for b in grid.blocks for d in grid.d_models}
    for r in rows:
        assert r["status"] == "ok", r["reason"]
        assert r["layers"] == [r["block"]] * 2 and r["mlp"] is False
        assert [run["lr"] for run in r["runs"]] == list(grid.lrs)
        scored = [run for run in r["runs"] if run["accuracy"] is not None]
        assert scored and all(0.0 <= run["accuracy"] <= 1.0 for run in scored)
        assert r["accuracy"] == max(run["accuracy"] for run in scored)
        assert r["state_bytes"] == sum(r["state_bytes_by_layer"]) > 0
        assert r["compile_s"] > 0
    meta = data["meta"]
    assert meta["versions"]["jax"] == jax.__version__ and meta["grid"] == "tiny"
    text = (out / "recall.md").read_text()
    assert "## T = 16, N = 2" in text and "Beside Zoology" in text and "| attention |" in text


def test_worker_processes_give_the_rows_of_one_process(tiny_run, tmp_path):
    """--jobs 2 trains the points in two spawned processes; the rows come back in the
    grid's order with the same numbers (same seed, same batches)."""
    _, _, data = tiny_run
    code = recall.main(["--grid", "tiny", "--blocks", "gru", "--jobs", "2", "--out",
                        str(tmp_path), "--no-progress", "--no-plots"])
    assert code == 0
    rows = json.loads((tmp_path / "recall.json").read_text())["rows"]
    assert [r["d_model"] for r in rows] == list(recall.GRIDS["tiny"].d_models)
    meta = json.loads((tmp_path / "recall.json").read_text())["meta"]
    assert meta["jobs"] == 2 and meta["worker_env"] == recall.worker_environment()
    alone = [r for r in data["rows"] if r["block"] == "gru"]
    for a, b in zip(rows, alone):
        assert a["state_bytes"] == b["state_bytes"] and a["params"] == b["params"]
        assert [run["steps"] for run in a["runs"]] == [run["steps"] for run in b["runs"]]
        for x, y in zip(a["runs"], b["runs"]):
            assert x["accuracy"] == pytest.approx(y["accuracy"], abs=0.05)


def test_worker_environment_adds_huge_pages_once_and_is_undone(monkeypatch):
    """The workers start with glibc's huge-page tunable added to the caller's
    GLIBC_TUNABLES (never a second setting of it, never off Linux); the parent's own
    environment is as it was once the workers have started."""
    monkeypatch.setattr(recall.sys, "platform", "linux")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert recall.worker_environment() == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert recall.worker_environment(huge_pages=False) == {}
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert recall.worker_environment() == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")
    assert recall.worker_environment() == {}
    monkeypatch.setattr(recall.sys, "platform", "darwin")
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert recall.worker_environment() == {}

    monkeypatch.setenv("SEQJAX_TEST_KEPT", "before")
    with recall._environment({"SEQJAX_TEST_KEPT": "during", "SEQJAX_TEST_NEW": "x"}):
        assert os.environ["SEQJAX_TEST_KEPT"] == "during" and os.environ["SEQJAX_TEST_NEW"]
    assert os.environ["SEQJAX_TEST_KEPT"] == "before" and "SEQJAX_TEST_NEW" not in os.environ


def _state(spec, d, length, window=16):
    model = recall.recall_model(spec, 64, d, length=length, window=window)
    return recall.state_bytes(model, model.init(jax.random.PRNGKey(0)))


def test_state_bytes_equal_hand_counts():
    D, T, W = 64, 64, 16
    # LSTM: h and c, D floats each, per layer
    assert _state("lstm", D, T) == [2 * D * F32] * 2
    # GRU: h
    assert _state("gru", D, T) == [D * F32] * 2
    # attention, one head of D channels: K and V caches of T slots, and the position
    kv = 2 * T * D * F32 + I32
    assert _state("attention", D, T) == [kv] * 2
    assert sum(_state("attention", D, 2 * T)) == 2 * (2 * 2 * T * D * F32 + I32)
    # local attention keeps its window, whatever T
    local = 2 * W * D * F32 + I32
    assert _state("local_attention", D, T, W) == [local] * 2
    assert _state("local_attention", D, 4 * T, W) == [local] * 2
    # Mamba: E = 2D inner channels, N = 16 states each, k - 1 = 3 convolution inputs
    E, N = 2 * D, 16
    assert _state("mamba", D, T) == [(3 * E + E * N) * F32] * 2
    # Griffin's recurrent block: 3 convolution inputs and h of width D, and the position
    griffin = (3 * D + D) * F32 + I32
    # a hybrid alternates its parts
    assert _state("griffin+local_attention", D, T, W) == [griffin, local]


def test_layer_names_and_model_specs():
    assert recall.layer_names("mamba") == ["mamba", "mamba"]
    assert recall.layer_names("griffin+local_attention", 4) == [
        "griffin", "local_attention", "griffin", "local_attention"]
    with pytest.raises(ValueError, match="bad block spec"):
        recall.layer_names("griffin+")
    with pytest.raises(ValueError, match="unknown block 'nosuch'"):
        recall.recall_block("nosuch", 32, length=16, window=8)
    # Zoology's figure 2 has no MLP; --mlp takes the published block with its MLP
    bare = recall.recall_model("attention", 64, 32, length=16, window=8)
    full = recall.recall_model("attention", 64, 32, length=16, window=8, mlp=True)
    p_bare = bare.init(jax.random.PRNGKey(0))
    p_full = full.init(jax.random.PRNGKey(0))
    assert p_bare.blocks[0].mlp is None and p_full.blocks[0].mlp is not None
    assert recall.param_count(p_full) > recall.param_count(p_bare)


def test_optimizer_is_one_compilation_for_every_learning_rate():
    """The peak learning rate is optimizer state, not a constant of the step."""
    params = {"w": jax.numpy.ones((3,))}
    a = recall.optimizer(1e-3, 10).init(params)
    b = recall.optimizer(1e-2, 10).init(params)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert [x.shape for x in leaves_a] == [x.shape for x in leaves_b]
    assert any(float(x) != float(y) for x, y in zip(leaves_a, leaves_b) if x.shape == ())


def test_training_loop_teaches_attention_an_easy_recall():
    """A harness test, not a benchmark: 2-layer attention, d_model 64, on MQAR with 2
    pairs in 16 tokens (V = 32) leaves the 1/N plateau within 300 steps at lr 3e-3
    (about 125 steps when measured), and the sweep then skips the next rate."""
    setting = recall.Setting(length=16, pairs=2, batch=64, steps=300)
    row = recall.train_cell("attention", 64, setting, vocab=32, lrs=(3e-3, 1e-4), window=8,
                            eval_examples=256, valid_examples=128, eval_every=25)
    assert row["status"] == "ok", row["reason"]
    first, second = row["runs"]
    assert first["stopped"] == "accuracy" and first["steps"] < 300
    assert first["accuracy"] >= 0.95 > 0.5 + 0.1  # chance is 1/N = 0.5
    assert second["stopped"] == "skipped" and second["accuracy"] is None
    assert row["accuracy"] == first["accuracy"] and row["best_lr"] == 3e-3


def _exit_line(capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "recall", *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("argv, option, rule", [
    (["--steps", "0"], "--steps", "a positive integer"),
    (["--d-model", "16,,32"], "--d-model", "a comma list of positive integers"),
    (["--settings", "64"], "--settings", "a comma list of T:N pairs"),
    (["--lrs", "0"], "--lrs", "a comma list of numbers in (0, 1]"),
    (["--stop-accuracy", "2"], "--stop-accuracy", "a number in [0, 1]"),
])
def test_options_are_validated_by_the_parser(capsys, argv, option, rule):
    line = _exit_line(capsys, argv)
    assert line.startswith(f"seqjax bench recall: error: argument {option}: expected {rule}"), line


def test_bad_names_and_sizes_stop_before_training(capsys, tmp_path):
    assert recall.main(["--blocks", "attention,nosuch", "--out", str(tmp_path)]) == 2
    assert "unknown block 'nosuch'" in capsys.readouterr().err
    # mqar's own rule: 4 N <= T
    assert recall.main(["--settings", "16:8", "--out", str(tmp_path)]) == 2
    assert "need length >= 32" in capsys.readouterr().err
    assert not (tmp_path / "recall.json").exists()
