"""A cell is a value a user can print: its repr is the call that built it, and its
configuration reads back as attributes."""

import jax
import jax.numpy as jnp
import pytest

import seqjax as sj


def test_repr_is_the_constructor_call():
    assert repr(sj.lstm(128)) == "lstm(hidden_size=128, forget_bias=1.0)"
    assert repr(sj.rnn(8, activation=jax.nn.relu)) == "rnn(hidden_size=8, activation=relu)"
    assert repr(sj.gru(8, param_dtype=jnp.bfloat16)) == (
        "gru(hidden_size=8, reset_after=True, param_dtype=bfloat16)")
    assert repr(sj.stack(sj.lstm(4), sj.min_gru(4), residual=True)) == (
        "stack(lstm(hidden_size=4, forget_bias=1.0), min_gru(hidden_size=4), "
        "residual=True, dropout=0.0)")
    assert repr(sj.bidirectional(sj.rnn(3), sj.rnn(3), merge=sj.add)) == (
        "bidirectional(forward=rnn(hidden_size=3), backward=rnn(hidden_size=3), merge=add)")


def test_configuration_reads_back_as_attributes():
    cell = sj.lru(16, 8, r_min=0.5)
    assert (cell.name, cell.hidden_size, cell.state_size, cell.r_min) == ("lru", 16, 8, 0.5)
    assert sj.stack(sj.lstm(4), sj.gru(4)).parts[1].reset_after is True
    with pytest.raises(AttributeError, match="no_such_option"):
        sj.lstm(4).no_such_option


def test_cells_stay_hashable_values():
    assert hash(sj.lstm(4)) is not None
    assert sj.lstm(4).config == sj.lstm(4).config
