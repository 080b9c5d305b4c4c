"""Helpers shared by the cell families: initialisers, fused gate blocks, input checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqjax import _checks
from seqjax.cells.contract import Array, Cell, Hoist, Initializer, LinearRecurrence, Recurrent

# ------------------------------------------------------------------------ initialisers

lecun_normal = jax.nn.initializers.lecun_normal
orthogonal = jax.nn.initializers.orthogonal
zeros = jax.nn.initializers.zeros


def _blocks(init: Initializer, key: Array, rows: int, hidden: int, gates: int, dtype) -> Array:
    """Initialise ``gates`` blocks of ``[rows, hidden]`` independently and fuse them.

    Matches Flax/Keras, which initialise each gate's kernel on its own (an orthogonal
    ``[H, 4H]`` matrix is not four orthogonal ``[H, H]`` blocks).
    """
    keys = jax.random.split(key, gates)
    return jnp.concatenate([_draw(init, k, (rows, hidden), dtype) for k in keys], axis=-1)


def _draw(init: Initializer, key, shape, dtype) -> Array:
    """``init(key, shape, dtype)``, drawn in float32 for 16-bit dtypes and then cast:
    the QR behind ``orthogonal`` has no bfloat16/float16 kernel on CPU."""
    work = jnp.float32 if jnp.dtype(dtype).itemsize < 4 else dtype
    return init(key, shape, work).astype(dtype)


def _gated_init(hidden_size, gates, kernel_init, recurrent_init, bias_init, dtype, bias_fix=None):
    def init(key, input_size):
        input_size = _checks.positive_int(input_size, "input_size")
        k_i, k_h, k_b = jax.random.split(key, 3)
        w_i = _blocks(kernel_init, k_i, input_size, hidden_size, gates, dtype)
        w_h = _blocks(recurrent_init, k_h, hidden_size, hidden_size, gates, dtype)
        b = _draw(bias_init, k_b, (gates * hidden_size,), dtype)
        if bias_fix is not None:
            b = bias_fix(b)
        return w_i, w_h, b

    return init


def _affine(x, w, b):
    """``x @ w + b`` for ``x`` with any leading axes (explicit broadcast of ``b``)."""
    y = x @ w
    return y + jnp.broadcast_to(b, y.shape)


def _input_size_from(w_name):
    return lambda params: getattr(params, w_name).shape[0]


def _zeros_state(hidden_size):
    def initial_state(params):
        return jnp.zeros((hidden_size,), params[0].dtype)

    return initial_state


def _no_extras(params):
    return ()


def _state_is_hidden(state):
    return state


def _lstm_hidden(state):
    return state.h


def _weight_h(params):
    return params.w_h


def _b_hn(params):
    return params.b_hn


def _hoist(input_map, recurrent: Recurrent) -> Hoist:
    """``Hoist`` whose ``step`` is ``recurrent``'s matmul followed by its ``combine``."""

    def step(params, state, u):
        r = recurrent.product(recurrent.hidden(state), recurrent.weight(params))
        return recurrent.combine(recurrent.extras(params), state, u, r)

    return Hoist(input_map, step, recurrent)


def _as_input(params, x, input_size, name):
    """Checks one step's input and casts it to the parameter dtype."""
    _checks.step_input(x, input_size(params), name)
    return x.astype(jax.tree_util.tree_leaves(params)[0].dtype)


def _linear_cell(name, hidden_size, state_shape_dtype, init, coefficients, readout, input_size,
                 features=None):
    """A :class:`Cell` for ``h_t = a_t * h_{t-1} + b_t`` with the given readout (and
    ``features``: see :class:`LinearRecurrence`); its ``apply`` is the same recurrence
    one step at a time."""
    def initial_state(params):
        shape, dtype = state_shape_dtype(params)
        return jnp.zeros(shape, dtype)

    linear = LinearRecurrence(coefficients, readout, features)

    def apply(params, h, x):
        x = _as_input(params, x, input_size, name)
        return linear.step(params, h, x if features is None else features(params, x))

    return Cell(init, initial_state, apply, input_size, hidden_size, linear=linear)

