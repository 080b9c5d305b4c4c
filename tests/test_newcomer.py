"""What a new user meets first (issue 15): a lean import, a version, one-line errors
naming the extra to install, `fit` saying when it resumes, a forward-mode error that
names the fix, readable models, and `--help` texts that show defaults.

Everything here needs only the core (jax, numpy, optax) and pytest, so CI also runs it
under the minimum versions; the examples' `--help` test skips where scikit-learn is
missing.
"""

import importlib
import importlib.metadata
import importlib.resources
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import optax
import pytest

import seqjax
from seqjax import _extras, checkpoint, cli, models, train

HEAVY = ("flax", "matplotlib", "torch", "tqdm", "equinox", "haiku", "orbax", "tensorstore")


def _python(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)


def test_import_is_lean_and_missing_extras_are_named():
    """One fresh interpreter: `import seqjax` and an unroll load none of the heavy
    packages; with flax hidden, `import seqjax.flax` fails in one line naming the extra."""
    out = _python(f"""
        import sys
        import jax, jax.numpy as jnp, seqjax
        cell = seqjax.gru(4)
        seqjax.unroll(cell, cell.init(jax.random.PRNGKey(0), 3), jnp.ones((5, 3)))
        print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))
        sys.modules['flax'] = None          # as if flax were not installed
        import seqjax.flax
    """)
    lines = out.stdout.strip().splitlines()
    assert lines and lines[-1] == "[]", out.stdout + out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last == ('ModuleNotFoundError: seqjax.flax needs flax, which is not installed: '
                    'pip install "seqjax[flax]"'), out.stderr


def test_require_passes_other_import_errors_through(monkeypatch):
    with pytest.raises(ModuleNotFoundError, match=r'pip install "seqjax\[plots\]"'):
        monkeypatch.setitem(sys.modules, "matplotlib", None)
        _extras.require("matplotlib", "seqjax bench's plots")
    assert _extras.require("optax", "anything") is optax


def test_version_is_the_installed_one(capsys):
    assert seqjax.__version__ == importlib.metadata.version("seqjax")
    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"seqjax {seqjax.__version__} (jax {jax.__version__}")
    assert (importlib.resources.files("seqjax") / "py.typed").is_file()


def test_commands_name_the_plots_extra(monkeypatch, capsys):
    monkeypatch.setattr(_extras, "missing", lambda *names: ["matplotlib"])
    assert cli.main(["bench", "--grid", "tiny"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ('seqjax bench: needs matplotlib, which is not installed: '
                           'pip install "seqjax[plots]"')


# ----------------------------------------------------------------------------- fit


def _fit(tmp_path, steps, **kwargs):
    def loss_fn(p, batch, rng):
        return jnp.sum((p - batch) ** 2)

    return train.fit(loss_fn, optax.sgd(0.1), jnp.zeros(2), lambda step, rng: jnp.ones(2),
                     steps=steps, progress=False, checkpoint_dir=tmp_path, **kwargs)


def test_fit_says_when_it_resumes(tmp_path, capsys):
    _fit(tmp_path, 3)
    assert capsys.readouterr().err == ""          # a fresh run says nothing
    state, history = _fit(tmp_path, 5)
    assert [h["step"] for h in history] == [4, 5] and state.step == 5
    err = capsys.readouterr().err
    assert err == (f"fit: resuming from {checkpoint.step_path(tmp_path, 3)} (step 3): "
                   "2 of 5 steps to go; to start over, give fit a new or empty "
                   "checkpoint_dir\n")
    state, history = _fit(tmp_path, 5)            # the README's snippet, run twice
    assert history == [] and state.step == 5
    assert "the run of 5 steps is already complete: no step runs and the history is " \
           "empty" in capsys.readouterr().err


def test_fit_resume_is_an_explicit_choice(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match=r"resume=True.*no checkpoint"):
        _fit(tmp_path, 2, resume=True)
    _fit(tmp_path, 2, resume=False)               # empty directory: a fresh run
    with pytest.raises(FileExistsError, match=r"already holds checkpoints.*resume=True"):
        _fit(tmp_path, 4, resume=False)
    state, history = _fit(tmp_path, 4, resume=True)
    assert [h["step"] for h in history] == [3, 4]
    assert "to start over" not in capsys.readouterr().err   # asked for: no advice
    with pytest.raises(ValueError, match="resume=True needs a checkpoint_dir"):
        train.fit(lambda p, b, r: jnp.sum(p), optax.sgd(0.1), jnp.zeros(2),
                  lambda s, r: None, steps=1, resume=True, progress=False)
    with pytest.raises(ValueError, match="resume must be None, True or False"):
        _fit(tmp_path, 4, resume="yes")


def test_fit_runs_without_tqdm(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    state, history = train.fit(lambda p, b, r: jnp.sum(p ** 2), optax.sgd(0.1), jnp.ones(2),
                               lambda s, r: None, steps=2, progress=True)
    assert len(history) == 2


# ------------------------------------------------------------------ forward mode


def test_forward_mode_error_names_fused_false():
    cell = seqjax.lstm(3)
    params = cell.init(jax.random.PRNGKey(0), 2)
    xs = jnp.ones((4, 2))
    for fn in (lambda x: seqjax.unroll(cell, params, x)[1],
               lambda x: seqjax.unroll_batch(cell, params, x[None], fused=True)[1]):
        with pytest.raises(TypeError) as info:
            jax.jvp(fn, (xs,), (xs,))
        message = str(info.value)
        assert "fused=False" in message and "custom_vjp" in message and "lstm" in message
    jax.jvp(lambda x: seqjax.unroll(cell, params, x, fused=False)[1], (xs,), (xs,))


# ------------------------------------------------------------------------- models


def test_models_print_as_the_call_that_built_them():
    gru = seqjax.gru(4)
    model = models.many_to_one(gru, 3, input_size=2)
    assert repr(model) == ("many_to_one(encoder=gru(hidden_size=4, reset_after=True), "
                           "output_size=3, input_size=2)")
    assert (model.encoder, model.output_size, model.input_size, model.vocab_size) == (
        gru, 3, 2, None)
    assert repr(models.many_to_many(gru, 2, vocab_size=9, embed_dim=3)) == (
        "many_to_many(encoder=gru(hidden_size=4, reset_after=True), output_size=2, "
        "vocab_size=9, embed_dim=3)")
    assert repr(models.many_to_one(gru, 2, input_size=3, readout=models.masked_mean)).endswith(
        "readout=masked_mean)")
    lm = models.one_to_many(seqjax.lstm(4), 7, 3, start_id=1)
    assert repr(lm) == ("one_to_many(cell=lstm(hidden_size=4, forget_bias=1.0), "
                        "vocab_size=7, embed_dim=3, start_id=1)")
    s2s = models.seq2seq(gru, gru, src_vocab=5, tgt_vocab=6, embed_dim=3, start_id=1, end_id=2)
    assert s2s.tgt_vocab == 6 and s2s.name == "seq2seq" and "bridge" not in repr(s2s)
    with pytest.raises(AttributeError, match="no_such_option"):
        model.no_such_option
    init, apply = model.init, model.apply       # the functions are where they were
    assert apply(init(jax.random.PRNGKey(0)), jnp.ones((5, 2))).shape == (3,)


# ----------------------------------------------------------------------- examples


@pytest.mark.parametrize("name", ["digits", "forecast", "seq2seq_addition", "char_lm",
                                  "sentiment"])
def test_example_help_shows_every_default(name, monkeypatch):
    pytest.importorskip("sklearn")
    pytest.importorskip("statsmodels")
    example = importlib.import_module(f"examples.{name}")
    seen = []

    def capture(self, args=None, namespace=None):
        seen.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(seqjax._cli.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        example.main([])
    (parser,) = seen
    text = parser.format_help()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, f"{name}: {action.option_strings} has no description"
        if action.nargs != 0 and action.default is not None:
            assert f"(default: {action.default})" in " ".join(text.split()), \
                (name, action.option_strings)
