"""What the command line rejects: ``seqjax`` itself, ``seqjax bench`` and the
examples' options. A bad value exits with status 2 and one line on stderr that names
the option and its rule -- no traceback, and nothing is run.

(``seqjax gradnorm``'s own checks are in ``tests/test_gradnorm.py``.)
"""

import argparse

import pytest

from seqjax import _cli, cli
from seqjax.bench import harness


def _exit_line(capsys, call):
    with pytest.raises(SystemExit) as info:
        call()
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("argv, option, rule", [
    (["--batch", "-1"], "--batch", "a comma list of positive integers"),
    (["--batch", "0"], "--batch", "a comma list of positive integers"),
    (["--hidden", "-3"], "--hidden", "a comma list of positive integers"),
    (["--length", "16,,32"], "--length", "a comma list of positive integers"),
    (["--input", "x"], "--input", "a positive integer"),
    (["--repeats", "0"], "--repeats", "a positive integer"),
    (["--warmup", "-1"], "--warmup", "an integer >= 0"),
    (["--unroll", "0"], "--unroll", "a positive integer"),
    (["--cells", ","], "--cells", "a comma list of names"),
])
def test_bench_options_are_validated_by_the_parser(capsys, argv, option, rule):
    line = _exit_line(capsys, lambda: cli.main(["bench", *argv]))
    assert line.startswith(f"seqjax bench: error: argument {option}: expected {rule}"), line
    assert repr(argv[1]) in line and "(see seqjax bench --help)" in line


def test_unknown_command_and_bench_names(capsys, tmp_path):
    assert cli.main(["nosuchcmd"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("seqjax: error: unknown command 'nosuchcmd'; choose from "
                           f"{', '.join(cli.COMMANDS)} (see seqjax --help)")
    assert cli.main(["--help"]) == 0
    assert "commands:" in capsys.readouterr().out
    # names are checked against the grids' tables when the command runs
    assert harness.main(["--cells", "lstn", "--out", str(tmp_path)]) == 2
    assert "unknown cell 'lstn'" in capsys.readouterr().err


def test_example_options_are_validated(capsys):
    from examples import char_lm, seq2seq_addition

    line = _exit_line(capsys, lambda: char_lm.main(["--steps", "0"]))
    assert "argument --steps: expected a positive integer (>= 1), got '0'" in line
    line = _exit_line(capsys, lambda: char_lm.main(["--seq-len", "1"]))
    assert "argument --seq-len: expected an integer >= 2, got '1'" in line
    line = _exit_line(capsys, lambda: char_lm.main(["--temperature", "-1"]))
    assert "argument --temperature: expected a finite number >= 0, got '-1'" in line
    line = _exit_line(capsys, lambda: seq2seq_addition.main(["--lr", "-0.1"]))
    assert "argument --lr: expected a finite number > 0, got '-0.1'" in line


@pytest.mark.parametrize("parse, text, value", [
    (_cli.positive_int, "3", 3),
    (_cli.nonnegative_int, "0", 0),
    (_cli.positive_ints, "8, 16", (8, 16)),
    (_cli.positive_float, "1e-3", 1e-3),
    (_cli.nonnegative_float, "0", 0.0),
    (_cli.unit_interval, "1", 1.0),
    (_cli.probability, "0", 0.0),
    (_cli.int_at_least(2), "2", 2),
    (_cli.ints_at_least(0), "0,3", (0, 3)),
    (_cli.floats_in(0.0, 1.0, high_open=True), "0, 0.5", (0.0, 0.5)),
    (_cli.names(("lstm", "gru"), none="none"), "none", ()),
    (_cli.names(("lstm", "gru")), "gru,lstm", ("gru", "lstm")),
])
def test_validators_accept(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize("parse, text, message", [
    (_cli.positive_int, "0", "expected a positive integer (>= 1), got '0'"),
    (_cli.positive_int, "2.5", "expected a positive integer (>= 1), got '2.5'"),
    (_cli.nonnegative_int, "-1", "expected an integer >= 0, got '-1'"),
    (_cli.positive_ints, "", "expected a comma list of positive integers"),
    (_cli.positive_float, "nan", "expected a finite number > 0, got 'nan'"),
    (_cli.positive_float, "0", "expected a finite number > 0, got '0'"),
    (_cli.nonnegative_float, "-inf", "expected a finite number >= 0"),
    (_cli.unit_interval, "1.5", "expected a number in [0, 1], got '1.5'"),
    (_cli.probability, "1", "expected a number in [0, 1), got '1'"),
    (_cli.int_at_least(2), "1", "expected an integer >= 2, got '1'"),
    (_cli.floats_in(0.0, 1.0, high_open=True), "0.5,1",
     "expected a comma list of numbers in [0, 1), got '0.5,1'"),
    (_cli.names(("lstm", "gru")), "lstm,rnn", "unknown 'rnn'; choose from lstm, gru"),
])
def test_validators_reject_with_the_rule(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        parse(text)
    assert str(info.value).startswith(message), str(info.value)
