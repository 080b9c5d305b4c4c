"""The five examples, each at a tiny configuration through its command line (a few
steps: the loss must go down), and their data code against independent
computations (scikit-learn's DummyClassifier, numpy, the csv module).

And how users start them, in subprocesses: ``python examples/X.py`` (as a file) and
``python -m examples.X`` (as a module, from the checkout's root) both answer
``--help``; one short real run as a file; and an example whose optional dependency is
missing says in one line which extra to install and exits with status 1, without a
traceback."""

import collections
import csv
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples import char_lm, digits, forecast, sentiment, seq2seq_addition  # noqa: E402


def _decreases(losses, k=5):
    losses = np.asarray(losses, np.float64)
    assert np.all(np.isfinite(losses))
    assert losses[-k:].mean() < losses[:k].mean(), (losses[:k], losses[-k:])


# --------------------------------------------------------------------------- digits


def test_digits_runs_and_its_baseline_is_sklearns_dummy(capsys):
    from sklearn.dummy import DummyClassifier

    result = digits.main(["--mode", "rows", "--steps", "30", "--hidden", "16",
                          "--batch-size", "32", "--lr", "1e-2", "--no-progress"])["rows"]
    _decreases(result["losses"])
    x_tr, y_tr, x_te, y_te = digits.load("rows")
    dummy = DummyClassifier(strategy="most_frequent").fit(x_tr.reshape(len(x_tr), -1), y_tr)
    assert result["baseline"] == pytest.approx(dummy.score(x_te.reshape(len(x_te), -1), y_te))
    assert "majority-class baseline" in capsys.readouterr().out


def test_digit_readings_are_the_same_images():
    rows, pixels = digits.load("rows"), digits.load("pixels")
    assert rows[0].shape[1:] == (8, 8) and pixels[0].shape[1:] == (64, 1)
    np.testing.assert_array_equal(rows[0].reshape(-1, 64, 1), pixels[0])
    np.testing.assert_array_equal(rows[1], pixels[1])
    assert rows[0].max() == 1.0 and rows[0].min() == 0.0


# ------------------------------------------------------------------------- forecast


def test_forecast_runs_and_persistence_is_last_value(capsys):
    result = forecast.main(["--steps", "40", "--hidden", "8", "--window", "10",
                            "--lr", "1e-2", "--no-progress"])
    _decreases(result["losses"])
    _, values = forecast.load_series()
    split = int(len(values) * 0.8)
    truth = values[split:].astype(np.float64)
    assert result["baseline"] == pytest.approx(np.mean((values[split - 1:-1] - truth) ** 2))
    assert "persistence baseline" in capsys.readouterr().out


def test_forecast_windows_by_hand():
    values = np.arange(10, dtype=np.float32) ** 2
    data = forecast.make_windows(values, window=3, train_fraction=0.6)
    z = (values - values[:6].mean()) / values[:6].std()
    np.testing.assert_allclose(data["x_train"][:, :, 0], [z[0:3], z[1:4], z[2:5]], rtol=1e-6)
    np.testing.assert_allclose(data["y_train"], z[3:6], rtol=1e-6)
    np.testing.assert_allclose(data["x_test"][0, :, 0], z[3:6], rtol=1e-6)
    np.testing.assert_array_equal(data["t_test"], [6, 7, 8, 9])


# -------------------------------------------------------------------------- seq2seq


def test_seq2seq_addition_runs(capsys):
    result = seq2seq_addition.main(["--steps", "30", "--hidden", "16", "--embed-dim", "8",
                                    "--train-size", "400", "--test-size", "20",
                                    "--batch-size", "32", "--lr", "1e-2", "--show", "2",
                                    "--no-progress"])
    _decreases(result["losses"])
    assert 0.0 <= result["accuracy"] <= 1.0
    assert "exact match" in capsys.readouterr().out


def test_addition_encoding_round_trip():
    pairs = seq2seq_addition.problems(50, seed=3)
    assert len(set(pairs)) == 50
    held_out = seq2seq_addition.problems(20, seed=4, exclude=frozenset(pairs))
    assert not set(held_out) & set(pairs)
    data = seq2seq_addition.encode(pairs, reverse_source=True)
    for i, (a, b) in enumerate(pairs):
        src = seq2seq_addition.decode(data["src"][i], data["src_len"][i])
        assert src == f"{a}+{b}"[::-1]
        assert seq2seq_addition.decode(data["tgt_out"][i], data["tgt_len"][i]) == str(a + b)
        assert data["tgt_in"][i, 0] == seq2seq_addition.START


# -------------------------------------------------------------------------- char LM


def test_char_lm_runs_on_a_small_text(capsys):
    text = "the cat sat on the mat. the dog sat on the log. " * 40
    result = char_lm.run(text=text, steps=40, hidden=32, embed_dim=8, seq_len=16,
                         batch_size=8, lr=1e-2, prompt="the ", sample_steps=12,
                         progress=False)
    _decreases(result["losses"])
    assert result["sample"].startswith("the ") and len(result["sample"]) == 4 + 12
    assert math.isfinite(result["bits_per_char"])


def test_unigram_baseline_by_hand():
    corpus = char_lm.Corpus("abracadabra" * 3 + "zz", test_fraction=0.2)
    counts = collections.Counter(corpus.train.tolist())
    total = sum(counts.values()) + corpus.vocab_size
    want = -np.mean([math.log2((counts[i] + 1) / total) for i in corpus.test.tolist()])
    assert char_lm.unigram_bits_per_char(corpus.train, corpus.test, corpus.vocab_size) == \
        pytest.approx(want)
    assert corpus.decode(corpus.encode("cab")) == "cab"
    assert corpus.encode("z")[0] == char_lm.UNK  # only in the held-out part


def test_chunks_predict_every_character_once():
    ids = np.arange(1, 12, dtype=np.int32)
    x, y, lengths = char_lm.chunks(ids, 4)
    mask = np.arange(4)[None, :] < lengths[:, None]
    np.testing.assert_array_equal(x[mask], ids[:-1])
    np.testing.assert_array_equal(y[mask], ids[1:])


def test_default_text_ships_with_python():
    text = char_lm.load_text()
    assert len(text) > 100_000 and "The \"assert\" statement" in text


# ------------------------------------------------------------------------ sentiment


def test_sentiment_runs(capsys):
    result = sentiment.main(["--folds", "2", "--steps", "30", "--lr", "1e-2",
                             "--weight-decay", "0.01", "--no-progress"])
    for fold_losses in result["losses"]:
        _decreases(fold_losses)
    assert result["n"] == 308 and result["baseline"] == pytest.approx(0.5)
    assert "majority baseline" in capsys.readouterr().out


def test_sentiment_csv_loader(tmp_path):
    path = tmp_path / "reviews.csv"
    rows = [("Great, really great!", "pos"), ('He said "meh".', "neg"), ("fine", "pos")]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "review", "mood"])
        writer.writerows((i, t, l) for i, (t, l) in enumerate(rows))
    texts, labels, names = sentiment.load_csv(path, text_column="review", label_column="mood")
    assert texts == [t for t, _ in rows] and names == ["neg", "pos"]
    np.testing.assert_array_equal(labels, [1, 0, 1])
    with pytest.raises(ValueError, match="expected a column 'text'"):
        sentiment.load_csv(path)
    texts, labels, names = sentiment.load_csv()
    assert names == ["0", "1"] and np.bincount(labels).tolist() == [154, 154]


def test_vocabulary_maps_rare_and_unseen_words_to_unk():
    vocab = sentiment.Vocabulary(["a good film", "a bad film", "a film"], min_count=2)
    assert vocab.words == ["a", "film"]
    ids, lengths = vocab.encode(["A FILM, good!", ""], max_len=4)
    np.testing.assert_array_equal(ids, [[2, 3, sentiment.UNK, sentiment.PAD],
                                        [sentiment.UNK, 0, 0, 0]])
    np.testing.assert_array_equal(lengths, [3, 1])


# ------------------------------------------------------------- how users start them

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ("char_lm", "digits", "forecast", "sentiment", "seq2seq_addition")
NEEDS = {"digits": "sklearn", "sentiment": "sklearn", "forecast": "statsmodels"}


def _start(name, args, *, as_file, cwd, env=None):
    command = ([sys.executable, str(ROOT / "examples" / f"{name}.py")] if as_file
               else [sys.executable, "-m", f"examples.{name}"])
    return subprocess.run(command + list(args), cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("as_file", [True, False], ids=["file", "module"])
@pytest.mark.parametrize("name", EXAMPLES)
def test_help_as_a_file_and_as_a_module(name, as_file, tmp_path):
    """As a file from any directory (here a scratch one), as a module from the root."""
    done = _start(name, ["--help"], as_file=as_file, cwd=tmp_path if as_file else ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:") and "--steps" in done.stdout


def test_a_short_run_as_a_file(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. the dog sat on the log. " * 20)
    done = _start("char_lm", ["--text-file", str(text), "--steps", "3", "--hidden", "8",
                              "--embed-dim", "4", "--seq-len", "8", "--batch-size", "4",
                              "--sample-steps", "4", "--no-progress"],
                  as_file=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "bits/char" in done.stdout and "unigram baseline" in done.stdout


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_a_missing_extra_is_one_line(name, tmp_path):
    """The dependency is hidden by a ``sitecustomize`` that maps it to ``None`` in
    ``sys.modules`` (so importing it raises ``ModuleNotFoundError``); ``--help`` still
    works, a run stops before any work."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(f"import sys\nsys.modules[{NEEDS[name]!r}] = None\n")
    env = {"PYTHONPATH": os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")])}
    assert _start(name, ["--help"], as_file=True, cwd=tmp_path, env=env).returncode == 0
    done = _start(name, ["--steps", "1"], as_file=True, cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line == (f"examples/{name}.py needs "
                    f"{'scikit-learn' if NEEDS[name] == 'sklearn' else 'statsmodels'}, which "
                    f'is not installed: pip install "seqjax[examples]"')
