"""``seqjax bench lm`` (seqjax/bench/lm.py): the tiny grid runs end to end with its
transformers peer and writes its files; every Hugging Face config the benchmark builds
gives transformers the same model as seqjax (same weights, same logits); Google's
recurrentgemma reads the mapped tensors to the same logits; the decoding state grows
with the generated length for global attention only; the targets are judged from the
numbers they quote.

No test asserts a time: timings are only checked for being measured and for each
ratio being the quotient of the two medians.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import cli
from seqjax.bench import lm

pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("lm")
    code = lm.main(["--grid", "tiny", "--peers", "transformers", "--out", str(out),
                    "--no-progress"])
    return code, out, json.loads((out / "lm.json").read_text())


def test_tiny_grid_runs_and_writes_every_file(tiny_run):
    code, out, data = tiny_run
    assert code == 0
    for name in ("lm.json", "lm.md", "lm_prefill.png"):
        assert (out / name).stat().st_size > 0, name
    grid = lm.GRIDS["tiny"]
    seq = [r for r in data["rows"] if r["impl"] == "seqjax"]
    expected = {(b, m) for b in grid.blocks for m in ("train", "prefill", "decode")}
    assert {(r["block"], r["mode"]) for r in seq} == expected
    for r in seq:
        assert r["status"] == "ok", r["reason"]
        assert r["median_s"] > 0 and r["min_s"] <= r["median_s"] and r["compile_s"] > 0
        assert math.isclose(r["tokens_per_s"], r["batch"] * r["length"] / r["median_s"])
    text = (out / "lm.md").read_text()
    assert "## Targets" in text and "ratio vs transformers" in text
    assert data["meta"]["versions"]["jax"] == jax.__version__


def test_transformers_peer_runs_the_same_weights_and_ratios_are_quotients(tiny_run):
    _, _, data = tiny_run
    check = data["checks"]["attention tiny"]["transformers"]
    assert check["status"] == "ok" and "LlamaForCausalLM" in check["what"]
    assert check["max_abs_diff"] < 1e-4 * check["scale"]
    rows = data["rows"]
    peer = [r for r in rows if r["impl"] == "transformers"]
    assert {r["mode"] for r in peer} == {"train", "prefill", "decode"}
    assert all(r["status"] == "ok" for r in peer), [r["reason"] for r in peer]
    for r in rows:
        if r["impl"] == "seqjax" and "transformers" in r["ratios"]:
            other = next(o for o in peer if all(o[k] == r[k] for k in
                                                ("block", "mode", "batch", "length")))
            assert math.isclose(r["ratios"]["transformers"], r["median_s"] / other["median_s"])
    assert not any("transformers" in r["ratios"] for r in rows if r["block"] == "gru")


def test_decoding_memory_grows_for_global_attention_only(tiny_run):
    _, _, data = tiny_run
    dec = {r["block"]: r for r in data["rows"] if r["impl"] == "seqjax" and r["mode"] == "decode"}
    short, long_ = lm.GRIDS["tiny"].memory_steps
    att, gru = dec["attention"]["decode_memory"], dec["gru"]["decode_memory"]
    # attention: a cache slot per position (prompt + generated), K and V, per layer
    size = lm.SIZES["tiny"]
    grown = att[str(long_)]["state_bytes"] - att[str(short)]["state_bytes"]
    assert grown == size.layers * 2 * (long_ - short) * size.d_model * 4
    assert gru[str(long_)]["state_bytes"] == gru[str(short)]["state_bytes"]
    assert lm.decode_growth({"decode_memory": {int(k): v for k, v in gru.items()}}) <= 1.01
    assert lm.decode_growth({"decode_memory": {int(k): v for k, v in att.items()}}) > 1.01


@pytest.mark.parametrize("name", ["attention", "mamba", "mamba2", "mlstm", "gated_deltanet",
                                  "griffin+griffin+local_attention"])
def test_every_hf_config_gives_transformers_the_same_model(tmp_path, name):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from seqjax.interop import hf

    entry, size = lm.ENTRIES[name], lm.Size("t", 64, 3)
    config = lm.hf_config(entry, size, 128)
    assert config is not None and config["model_type"] == entry.hf_type
    model = lm.build(entry, size, 128, max_length=64)
    params = model.init(jax.random.PRNGKey(1))
    hf.save(model, params, tmp_path)
    ids = np.random.default_rng(0).integers(0, 128, (1, 24))
    mine = np.asarray(jax.jit(lm.prefill_fn(model))(params, jnp.asarray(ids))[0])
    theirs = lm.TorchPeer(str(tmp_path), config["model_type"]).logits(ids)
    assert np.max(np.abs(theirs - mine)) < 1e-4 * np.max(np.abs(mine))


def test_recurrentgemma_reads_the_same_griffin(tmp_path):
    pytest.importorskip("recurrentgemma")
    from seqjax.interop import hf

    entry, size = lm.ENTRIES["griffin+griffin+local_attention"], lm.Size("t", 64, 3)
    model = lm.build(entry, size, 128, max_length=64)
    params = model.init(jax.random.PRNGKey(2))
    hf.save(model, params, tmp_path)
    peer = lm.GooglePeer(str(tmp_path), lm.hf_config(entry, size, 128))
    ids = np.random.default_rng(1).integers(0, 128, (1, 24))
    mine = np.asarray(jax.jit(lm.prefill_fn(model))(params, jnp.asarray(ids))[0])
    assert np.max(np.abs(peer.logits(ids) - mine)) < 1e-4 * np.max(np.abs(mine))


def _row(block, mode, median, ratios, batch=1, length=512, size="small", **extra):
    row = dict(block=block, size=size, mode=mode, batch=batch, length=length, impl="seqjax",
               status="ok", median_s=median, ratios=ratios)
    row.update(extra)
    return row


def _mem(arg, temp):
    return dict(xla=dict(argument=arg, temp=temp, output=0, alias=0))


def test_targets_are_judged_from_the_quoted_ratios():
    rows = [
        _row("attention", "prefill", 1.0, {"transformers": 0.4}),
        _row("mamba", "prefill", 1.0, {"transformers": 0.7}),
        _row("attention", "train", 1.0, {"transformers": 0.3}),
        _row("attention", "decode", 1.0, {"transformers": 0.1}, length=256,
             decode_memory={256: _mem(100, 50), 1024: _mem(100, 90)}),
        _row("mamba", "decode", 1.0, {"transformers": 0.25}, length=256,
             decode_memory={256: _mem(100, 50), 1024: _mem(100, 50)}),
        _row("griffin", "prefill", 1.0, {"recurrentgemma": 0.9}),
        _row("griffin", "decode", 1.0, {"recurrentgemma": 1.3}, length=256,
             decode_memory={256: _mem(10, 5), 1024: _mem(10, 5)}),
    ] + [_row("mamba2", "prefill", 0.001 * t ** 1.05, {}, length=t) for t in (1024, 4096)] + [
        _row("deltanet", "prefill", 1e-6 * t ** 2, {}, length=t) for t in (1024, 4096)]
    checks = {"attention small": {"transformers": dict(status="ok", max_abs_diff=1e-6,
                                                       scale=5.0)}}
    by = {g["target"]: g for g in lm.targets(rows, checks)}
    prefill = by["forward (prefill) >= 2x faster than transformers"]
    assert prefill["held"] is False and "0.70" in prefill["detail"] and "mamba" in prefill["detail"]
    assert by["training step >= 2x faster than transformers"]["held"] is True
    decode = by["decode tokens/s >= 5x transformers' generate"]
    assert decode["held"] is False and "0.25" in decode["detail"]
    griffin = by["Griffin <= 1.0x the time of recurrentgemma's JAX model"]
    assert griffin["held"] is False and "1.30" in griffin["detail"]
    # attention's cache may grow; mamba's and griffin's state may not
    flat = by["decode memory flat in the generated length for every recurrent block"]
    assert flat["held"] is True and "2 flat" in flat["detail"]
    linear = by["prefill of matrix-state blocks linear in T"]
    assert linear["held"] is False and "mamba2 small 1.05" in linear["detail"]
    assert "deltanet small 2.00" in linear["detail"]
    assert by["peers run the same weights (logits within 1e-3 relative)"]["held"] is True


def test_options_are_validated(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "lm", "--batch", "0"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "seqjax bench lm: error: argument --batch" in err
    with pytest.raises(SystemExit):
        cli.main(["bench", "lm", "--peers", "pytorch"])
    assert "unknown 'pytorch'" in capsys.readouterr().err
    assert lm.main(["--blocks", "attention,nosuch", "--out", str(tmp_path)]) == 2
    assert "unknown block 'nosuch'" in capsys.readouterr().err
