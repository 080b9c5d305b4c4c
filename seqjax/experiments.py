"""Gradient-norm science: the curse of memory, signal propagation at initialisation,
and which cell learns a dependency of which length.

Three experiments, each a pure function of its configuration that returns plain
records (dicts of numbers); ``seqjax gradnorm memory | propagation | learnability``
wires them to files and figures.

* :func:`memory_monte_carlo` -- Zucchet & Orvieto 2024's curse of memory, measured:
  the stationary variances of a linear recurrence's state ``h_t`` and of its
  sensitivity ``dh_t / dw`` to the recurrence parameter, estimated by Monte Carlo
  through a seqjax diagonal linear cell (:func:`diagonal_linear`) and forward-mode
  ``jax.jvp``, to compare with the closed forms of
  :func:`seqjax.diagnostics.memory_moments`, with and without the LRU's
  normalisation ``gamma`` and exponential parametrisation.
* :func:`signal_propagation` -- their Figure 5: a 4-layer residual network without
  normalisation at initialisation, its recurrent layers' eigenvalues set to a
  characteristic time ``t``; the mean ``h_t^2`` per layer and the mean squared
  gradient of the eigenvalue parameters against the others, as ``t`` grows.
* :func:`learnability` -- train a cell on a long-dependency task at length ``T``
  (Arjovsky et al. 2016's setup, scaled down) and report its final loss against the
  task's baseline next to ``||dL/dh_0||`` at initialisation.

References:
  Zucchet & Orvieto, "Recurrent neural networks: vanishing and exploding gradients are
  not the end of the story", NeurIPS 2024 (code: the public repository
  NicolasZucchet/Vanishing-and-exploding-gradients-are-not-the-end-of-the-story).
  Arjovsky, Shah & Bengio, "Unitary evolution recurrent neural networks", ICML 2016.
  Hochreiter & Schmidhuber, "Long short-term memory", Neural Computation 1997.
  Tallec & Ollivier, "Can recurrent neural networks warp time?", ICLR 2018.
"""

from __future__ import annotations

import math
import time as _time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from seqjax import _checks, diagnostics, tasks
from seqjax.cells import Cell, LinearRecurrence, chrono_init, constructor, gru, lru, lstm
from seqjax.train import default_optimizer as train_default
from seqjax.unroll import unroll

Array = jax.Array


# ================================================================ the curse of memory


class Parametrisation(NamedTuple):
    """How a diagonal recurrence's eigenvalue ``lambda`` is computed from its
    parameter ``w``: ``lam(w)`` and the inverse ``param(lambda)``."""

    name: str
    lam: Callable[[Array], Array]
    param: Callable[[Array], Array]

    def __repr__(self):
        return self.name.upper()


DIRECT = Parametrisation("direct", lambda w: w, lambda lam: lam)
"""``lambda = w``."""

EXPONENTIAL = Parametrisation("exponential", lambda w: jnp.exp(-jnp.exp(w)),
                              lambda lam: jnp.log(-jnp.log(lam)))
"""``lambda = exp(-exp(nu))``, the LRU's parametrisation of the modulus."""


class DiagonalParams(NamedTuple):
    """Parameters of :func:`diagonal_linear`: ``w [N]`` (``lambda = lam(w)``) and
    ``gamma [N]``, the input scale."""

    w: Array
    gamma: Array


@constructor
def diagonal_linear(size: int, *, parametrisation: Parametrisation = DIRECT,
                    r_min: float = 0.9, r_max: float = 0.999,
                    normalised: bool = True, param_dtype=jnp.float32) -> Cell:
    """A real diagonal linear recurrence, one independent channel per feature.

    .. math:: h_t = \\lambda \\odot h_{t-1} + \\gamma \\odot x_t, \\qquad y_t = h_t,
              \\qquad \\lambda = \\lambda(w)

    The scalar model of Zucchet & Orvieto 2024's analysis, ``size`` copies side by
    side. ``gamma`` is a separate parameter, as in the LRU: differentiating w.r.t.
    ``w`` holds it fixed.

    Args:
      size: ``N``, the number of channels (input size = state size = output size).
      parametrisation: :data:`DIRECT` (``lambda = w``) or :data:`EXPONENTIAL`
        (``lambda = exp(-exp(w))``).
      r_min, r_max: ``init`` draws ``lambda ~ U[r_min, r_max]``.
      normalised: ``init`` sets ``gamma = sqrt(1 - lambda^2)`` (the LRU's
        normalisation) instead of 1.
      param_dtype: dtype of the parameters.

    Returns:
      A :class:`~seqjax.Cell` with params :class:`DiagonalParams`, state ``h [N]``
      and a :class:`~seqjax.LinearRecurrence` (associative scan).

    References:
      Zucchet & Orvieto, NeurIPS 2024, section 2.
    """
    N = _checks.positive_int(size, "size")
    if not 0.0 <= r_min <= r_max < 1.0:
        raise ValueError(f"diagonal_linear needs 0 <= r_min <= r_max < 1, got "
                         f"r_min={r_min}, r_max={r_max}")

    def init(key, input_size):
        if _checks.positive_int(input_size, "input_size") != N:
            raise ValueError(f"diagonal_linear: input_size must equal size ({N}), "
                             f"got {input_size}")
        lam = jax.random.uniform(key, (N,), param_dtype, r_min, r_max)
        gamma = jnp.sqrt(1 - lam ** 2) if normalised else jnp.ones((N,), param_dtype)
        return DiagonalParams(parametrisation.param(lam), gamma)

    def initial_state(params):
        return jnp.zeros((N,), params.w.dtype)

    def coefficients(params, xs):
        xs = xs.astype(params.w.dtype)
        lam = parametrisation.lam(params.w)
        return jnp.broadcast_to(lam, xs.shape), jnp.broadcast_to(params.gamma, xs.shape) * xs

    def readout(params, hs, xs):
        return hs

    def apply(params, h, x):
        _checks.step_input(x, N, "diagonal_linear")
        a, b = coefficients(params, x)
        h = a * h + b
        return h, h

    return Cell(init, initial_state, apply, lambda p: p.w.shape[0], N,
                linear=LinearRecurrence(coefficients, readout))


class MemoryVariant(NamedTuple):
    """One curve of the curse-of-memory figure: a parametrisation, with or without
    the normalisation ``gamma = sqrt(1 - lambda^2)``."""

    name: str
    parametrisation: Parametrisation
    normalised: bool


MEMORY_VARIANTS = (
    MemoryVariant("lambda", DIRECT, False),
    MemoryVariant("gamma", DIRECT, True),
    MemoryVariant("exp", EXPONENTIAL, False),
    MemoryVariant("gamma+exp", EXPONENTIAL, True),
)
"""The four models: plain, normalised, exponential, both (the LRU's choice)."""


def memory_steps(lam: float, rho: float, *, horizon: float = 8.0, minimum: int = 64) -> int:
    """Steps after which the recurrence is stationary to within ``~e^(-2 horizon)``:
    ``horizon / (1 - max(lambda, rho))`` (at least ``minimum``)."""
    slowest = max(float(lam), float(rho))
    return max(int(minimum), int(math.ceil(horizon / (1.0 - slowest))))


def memory_monte_carlo(key, lam: float, rho: float, *, samples: int, steps: int,
                       chunk: int = 512, variants=MEMORY_VARIANTS,
                       associative: bool = False) -> dict:
    """Monte Carlo estimates of ``Var h_T`` and ``Var dh_T/dw`` after ``steps`` steps.

    ``samples`` independent sequences of unit-variance AR(1) inputs
    (:func:`seqjax.tasks.ar1_inputs`, drawn stationary) drive one
    :func:`diagonal_linear` channel per variant from ``h_0 = 0``; the sequence is
    unrolled by :func:`seqjax.unroll` in pieces of ``chunk`` steps inside a
    ``lax.fori_loop`` (memory independent of ``steps``), and the sensitivity of the
    final state to ``w`` is carried along by forward-mode ``jax.jvp`` (the channels
    are independent, so one tangent of ones gives every ``dh_T / dw``). The inputs
    and states have zero mean, so the variances are the means of the squares; their
    standard errors are ``std(z^2) / sqrt(samples)``.

    Args:
      key: PRNG key.
      lam: ``lambda`` in ``(0, 1)``.
      rho: input autocorrelation in ``[0, 1)``.
      samples: number of independent sequences.
      steps: sequence length; :func:`memory_steps` gives one long enough to be
        stationary. Rounded up to a multiple of ``chunk``.
      chunk: steps per :func:`seqjax.unroll` call.
      variants: :class:`MemoryVariant` s to measure side by side.
      associative: unroll each piece with the associative scan instead of step by
        step (the same numbers; on CPU the sequential scan is several times quicker
        both to compile and to run, since the state is tiny).

    Returns:
      A dict with ``lam``, ``rho``, ``steps``, ``samples`` and, per variant name,
      ``{"var_h", "var_h_se", "var_dh", "var_dh_se"}`` (measured) and
      ``{"theory_h", "theory_dh"}`` from :func:`seqjax.diagnostics.memory_moments`.
    """
    samples = _checks.positive_int(samples, "samples")
    chunk = _checks.positive_int(chunk, "chunk")
    if not 0.0 < lam < 1.0 or not 0.0 <= rho < 1.0:
        raise ValueError(f"memory_monte_carlo needs 0 < lam < 1 and 0 <= rho < 1, got "
                         f"lam={lam}, rho={rho}")
    chunks = max(1, math.ceil(_checks.positive_int(steps, "steps") / chunk))
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    h2, h2_se, d2, d2_se = _memory_sampler(tuple(variants), chunk, samples, dtype,
                                           associative)(
        key, jnp.asarray(lam, dtype), jnp.asarray(rho, dtype), jnp.asarray(chunks, jnp.int32))
    out = dict(lam=float(lam), rho=float(rho), steps=chunks * chunk, samples=samples)
    for i, v in enumerate(variants):
        theory = diagnostics.memory_moments(lam, rho, normalised=v.normalised,
                                            exponential=v.parametrisation is EXPONENTIAL)
        out[v.name] = dict(var_h=float(h2[i]), var_h_se=float(h2_se[i]),
                           var_dh=float(d2[i]), var_dh_se=float(d2_se[i]),
                           theory_h=float(theory.var_h), theory_dh=float(theory.var_dh))
    return out


_SAMPLERS: dict = {}


def _memory_sampler(variants, chunk, samples, dtype, associative):
    """The jitted estimator for one configuration (cached: one compilation serves
    every ``lambda``, ``rho`` and length)."""
    cache_key = (variants, chunk, samples, jnp.dtype(dtype).name, associative)
    if cache_key in _SAMPLERS:
        return _SAMPLERS[cache_key]
    groups = {}  # one cell per parametrisation, one channel per variant
    for i, v in enumerate(variants):
        groups.setdefault(v.parametrisation, []).append((i, v.normalised))

    def params_for(lam):
        out = []
        for par, members in groups.items():
            lams = jnp.full((len(members),), lam, dtype)
            gamma = jnp.stack([jnp.sqrt(1 - lam * lam) if norm else jnp.ones((), dtype)
                               for _, norm in members])
            cell = diagonal_linear(len(members), parametrisation=par, param_dtype=dtype)
            out.append((cell, DiagonalParams(par.param(lams), gamma)))
        return out

    def one_sequence(key, lam, rho, chunks):
        cells = params_for(lam)

        def final_states(ws):
            def body(i, carry):
                x_prev, states = carry
                xs = tasks.ar1_inputs(jax.random.fold_in(key, i), chunk, 1, rho,
                                      previous=x_prev, dtype=dtype)
                new = []
                for (cell, p), w, h in zip(cells, ws, states):
                    inputs = jnp.broadcast_to(xs, (chunk, cell.output_size))
                    h, _ = unroll(cell, p._replace(w=w), inputs, h, associative=associative)
                    new.append(h)
                return xs[-1], tuple(new)

            # the first piece starts from the stationary law (previous=None)
            xs0 = tasks.ar1_inputs(jax.random.fold_in(key, 0), chunk, 1, rho, dtype=dtype)
            states = []
            for (cell, p), w in zip(cells, ws):
                h, _ = unroll(cell, p._replace(w=w),
                              jnp.broadcast_to(xs0, (chunk, cell.output_size)),
                              associative=associative)
                states.append(h)
            _, states = lax.fori_loop(1, chunks, body, (xs0[-1], tuple(states)))
            return states

        ws = tuple(p.w for _, p in cells)
        hs, dhs = jax.jvp(final_states, (ws,), (tuple(jnp.ones_like(w) for w in ws),))
        h = jnp.zeros((len(variants),), dtype)
        dh = jnp.zeros((len(variants),), dtype)
        for (par, members), hg, dg in zip(groups.items(), hs, dhs):
            idx = jnp.array([i for i, _ in members])
            h, dh = h.at[idx].set(hg), dh.at[idx].set(dg)
        return h, dh

    @jax.jit
    def estimate(key, lam, rho, chunks):
        keys = jax.random.split(key, samples)
        h, dh = lax.map(lambda k: one_sequence(k, lam, rho, chunks), keys,
                        batch_size=min(samples, 1024))

        def moment(z):
            z2 = z * z
            return jnp.mean(z2, 0), jnp.std(z2, 0) / math.sqrt(samples)

        return (*moment(h), *moment(dh))

    _SAMPLERS[cache_key] = estimate
    return estimate


# ============================================================ signal propagation


class ComplexDiagonalParams(NamedTuple):
    """Parameters of :func:`complex_diagonal`: ``lam_re, lam_im [N]`` (the
    eigenvalues, parametrised directly); ``b_re, b_im [N, I]``; ``c_re, c_im [H, N]``;
    ``d [H]``."""

    lam_re: Array
    lam_im: Array
    b_re: Array
    b_im: Array
    c_re: Array
    c_im: Array
    d: Array


@constructor
def complex_diagonal(hidden_size: int, state_size: int, *, r_min: float = 0.9,
                     r_max: float = 0.999, max_phase: float = 2 * math.pi,
                     param_dtype=jnp.float32) -> Cell:
    """A complex diagonal linear RNN without normalisation, ``lambda`` parametrised by
    its real and imaginary parts: the "complex" model of Zucchet & Orvieto 2024.

    .. math::
        \\lambda = \\lambda^{re} + i \\lambda^{im}, \\qquad
        h_t = \\lambda \\odot h_{t-1} + B x_t, \\qquad
        y_t = \\mathrm{Re}(C h_t) + D \\odot x_t

    It is :func:`seqjax.lru` with ``gamma = 1`` and the direct parametrisation
    instead of ``lambda = exp(-exp(nu) + i exp(theta))``; the initialisation is the
    LRU's (``|lambda|`` uniform on the ring ``r_min .. r_max``, phase uniform in
    ``[0, max_phase]``, ``B ~ N(0, 1/(2I))`` per part, ``C ~ N(0, 1/N)``,
    ``D ~ N(0, 1)``).

    Args:
      hidden_size: ``H`` (``input_size`` must equal it, for the skip term).
      state_size: ``N``.
      r_min, r_max, max_phase: the eigenvalues' initial ring and phases.
      param_dtype: float32 or float64 (the state is the matching complex dtype).

    Returns:
      A :class:`~seqjax.Cell` with params :class:`ComplexDiagonalParams` and a
      :class:`~seqjax.LinearRecurrence`.

    References:
      Zucchet & Orvieto, NeurIPS 2024, section 4 and Figure 5 ("complex" model:
      ``which_gamma="none"``, ``parametrization="default"`` in their code).
    """
    H = _checks.positive_int(hidden_size, "hidden_size")
    N = _checks.positive_int(state_size, "state_size")
    if not 0.0 <= r_min < r_max <= 1.0:
        raise ValueError(f"complex_diagonal needs 0 <= r_min < r_max <= 1, got "
                         f"r_min={r_min}, r_max={r_max}")

    def init(key, input_size):
        I = _checks.positive_int(input_size, "input_size")
        if I != H:
            raise ValueError(f"complex_diagonal: input_size must equal hidden_size ({H}) "
                             f"for the skip term, got {I}")
        k1, k2, kb1, kb2, kc1, kc2, kd = jax.random.split(key, 7)
        u = jax.random.uniform(k1, (N,), param_dtype)
        modulus = jnp.sqrt(u * (r_max ** 2 - r_min ** 2) + r_min ** 2)
        phase = max_phase * jax.random.uniform(k2, (N,), param_dtype)
        normal = lambda k, shape, scale: jax.random.normal(k, shape, param_dtype) * scale
        return ComplexDiagonalParams(
            modulus * jnp.cos(phase), modulus * jnp.sin(phase),
            normal(kb1, (N, I), 1 / math.sqrt(2 * I)), normal(kb2, (N, I), 1 / math.sqrt(2 * I)),
            normal(kc1, (H, N), 1 / math.sqrt(N)), normal(kc2, (H, N), 1 / math.sqrt(N)),
            normal(kd, (H,), 1.0))

    def initial_state(params):
        complex_dtype = jnp.complex128 if params.lam_re.dtype == jnp.float64 else jnp.complex64
        return jnp.zeros((N,), complex_dtype)

    def coefficients(params, xs):
        xs = xs.astype(params.lam_re.dtype)
        bx = lax.complex(xs @ params.b_re.T, xs @ params.b_im.T)
        lam = lax.complex(params.lam_re, params.lam_im)
        return jnp.broadcast_to(lam, bx.shape), bx

    def readout(params, hs, xs):
        y = hs.real @ params.c_re.T - hs.imag @ params.c_im.T
        return y + jnp.broadcast_to(params.d, y.shape) * xs.astype(y.dtype)

    def apply(params, h, x):
        _checks.step_input(x, H, "complex_diagonal")
        a, b = coefficients(params, x)
        h = a * h + b
        return h, readout(params, h, x)

    return Cell(init, initial_state, apply, lambda p: p.b_re.shape[1], H,
                linear=LinearRecurrence(coefficients, readout))


class PropagationModel(NamedTuple):
    """A recurrent layer of the signal-propagation network at characteristic time
    ``t``: ``cell(t, width)`` builds it; ``timescale(params)`` returns the gradient
    leaves of its eigenvalue (or timescale) parameters and ``rest(params)`` the
    others (both pytrees of the cell's own params)."""

    cell: Callable[[float, int], Cell]
    timescale: Callable[[Any], Any]
    rest: Callable[[Any], Any]
    description: str


def _ring(t):
    """Zucchet & Orvieto's ring for characteristic time ``t``: ``|lambda|`` in
    ``[1 - 1/t, 1 - 1/(2t)]``."""
    return 1.0 - 1.0 / t, 1.0 - 1.0 / (2.0 * t)


def _chrono(t):
    """``b ~ log U(t, 2t)``: a gate memory of ``t + 1 .. 2t + 1`` steps (their
    ``ChronoGRUCell(T_min=t, T_max=2t)``)."""
    return chrono_init(2.0 * t + 1.0, t_min=t)


def _second_block(params):
    """The second gate block of the fused bias: the LSTM's ``b_f``, the GRU's ``b_z``."""
    H = params.w_h.shape[0]
    return params.b[H:2 * H]


def _without_second_block(params):
    H = params.w_h.shape[0]
    return params._replace(b=jnp.concatenate([params.b[:H], params.b[2 * H:]]))


_HE_NORMAL = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")

PROPAGATION_MODELS = {
    "complex": PropagationModel(
        lambda t, w: complex_diagonal(w, w, r_min=_ring(t)[0], r_max=_ring(t)[1]),
        lambda p: (p.lam_re, p.lam_im),
        lambda p: p._replace(lam_re=None, lam_im=None),
        "complex diagonal RNN, lambda = re + i im, no normalisation"),
    "lru": PropagationModel(
        lambda t, w: lru(w, w, r_min=_ring(t)[0], r_max=_ring(t)[1]),
        lambda p: (p.nu_log, p.theta_log),
        lambda p: p._replace(nu_log=None, theta_log=None),
        "LRU: lambda = exp(-exp(nu) + i exp(theta)), learned gamma"),
    "gru": PropagationModel(
        lambda t, w: gru(w, update_bias=_chrono(t), kernel_init=_HE_NORMAL),
        _second_block, _without_second_block,
        "GRU, chrono update-gate bias b_z ~ log U(t, 2t)"),
    "lstm": PropagationModel(
        lambda t, w: lstm(w, forget_bias=_chrono(t), kernel_init=_HE_NORMAL),
        _second_block, _without_second_block,
        "LSTM, chrono forget-gate bias b_f ~ log U(t, 2t), b_i = -b_f"),
}
"""The recurrent layers compared by :func:`signal_propagation`. The timescale
parameters are the eigenvalues of the diagonal RNNs (``lambda_re, lambda_im``;
the LRU's ``nu, theta``) and the gate bias that sets the GRU's / LSTM's memory
(``b_z``; ``b_f``)."""


class _Dense(NamedTuple):
    w: Array
    b: Array


def _dense_init(key, n_in, n_out, dtype):
    return _Dense(jax.nn.initializers.lecun_normal()(key, (n_in, n_out), dtype),
                  jnp.zeros((n_out,), dtype))


def _dense(p, x):
    y = x @ p.w
    return y + jnp.broadcast_to(p.b, y.shape)


class PropagationLayer(NamedTuple):
    """One residual layer: the recurrent cell, then a GLU."""

    cell: Any
    out1: _Dense
    out2: _Dense


class PropagationParams(NamedTuple):
    """The network of :func:`propagation_network`: encoder, layers, decoder."""

    encoder: _Dense
    layers: tuple
    decoder: _Dense


def propagation_network(cell: Cell, *, width: int, input_size: int, layers: int = 4):
    """Zucchet & Orvieto's Figure-5 network without normalisation, as pure functions.

    .. math::
        x^0 &= \\mathrm{Dense}(u), \\qquad
        y = \\mathrm{GELU}(\\mathrm{RNN}_l(x^{l-1})), \\qquad
        x^l = (W_1 y + b_1) \\odot \\sigma(W_2 y + b_2) + x^{l-1}, \\\\
        \\hat u_{t+1} &= \\mathrm{Dense}(x^L_t), \\qquad
        L = \\tfrac12 \\mathrm{mean}_{t,k} (\\hat u_{t+1, k} - u_{t+1, k})^2

    (next-step prediction; Dense layers LeCun-normal with zero bias, as Flax's).

    Args:
      cell: the recurrent layer (input and output size ``width``).
      width: the model width.
      input_size: features of the input sequence ``u``.
      layers: number of residual layers.

    Returns:
      ``(init, forward)``: ``init(key) -> PropagationParams``;
      ``forward(params, u [time, input_size]) -> (loss, activations)`` with
      ``activations`` a tuple per layer of ``(x^l [time, width], y_rnn
      [time, width])`` (the residual stream after the layer and the recurrent
      layer's output).

    References:
      Zucchet & Orvieto, NeurIPS 2024, Figure 5 (``figures/signal_propagation.ipynb``
      in their repository).
    """
    width = _checks.positive_int(width, "width")
    input_size = _checks.positive_int(input_size, "input_size")
    layers = _checks.positive_int(layers, "layers")

    def init(key, dtype=jnp.float32):
        keys = jax.random.split(key, 2 + 3 * layers)
        stack = tuple(PropagationLayer(cell.init(keys[2 + 3 * i], width),
                                       _dense_init(keys[3 + 3 * i], width, width, dtype),
                                       _dense_init(keys[4 + 3 * i], width, width, dtype))
                      for i in range(layers))
        return PropagationParams(_dense_init(keys[0], input_size, width, dtype), stack,
                                 _dense_init(keys[1], width, input_size, dtype))

    def forward(params, u):
        x = _dense(params.encoder, u)
        acts = []
        for layer in params.layers:
            _, y = unroll(cell, layer.cell, x)
            g = jax.nn.gelu(y)
            x = _dense(layer.out1, g) * jax.nn.sigmoid(_dense(layer.out2, g)) + x
            acts.append((x, y))
        pred = _dense(params.decoder, x)
        loss = 0.5 * jnp.mean((pred[:-1] - u[1:].astype(pred.dtype)) ** 2)
        return loss, tuple(acts)

    return init, forward


def _mean_square(tree) -> Array:
    leaves = [jnp.ravel(jnp.abs(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]
    if not leaves:
        return jnp.full((), jnp.nan)
    return jnp.mean(jnp.concatenate(leaves) ** 2)


def propagation_statistics(model: PropagationModel, cell: Cell, params: PropagationParams,
                           forward: Callable, us) -> dict:
    """Second moments of one batch at the given parameters.

    Args:
      model: the :class:`PropagationModel` (which parameters are timescales).
      cell: its cell, as passed to :func:`propagation_network`.
      params: the network's params.
      forward: :func:`propagation_network`'s ``forward``.
      us: ``[batch, time, input_size]``.

    Returns:
      A dict of arrays: ``loss``; per layer ``[layers]``: ``h2`` (mean ``x^l^2``, the
      residual stream), ``rnn2`` (mean square of the recurrent layer's output),
      ``grad2_timescale`` and ``grad2_rest`` (mean squared gradient of the layer's
      timescale parameters and of its other recurrent parameters), ``grad2_glu``;
      and over the whole network ``grad2_timescale_all`` and ``grad2_other_all``
      (every parameter that is not a timescale: the rest of the recurrent layers,
      the GLUs, encoder and decoder; Zucchet & Orvieto's "all but lambda").
    """
    def batch_loss(p):
        losses, acts = jax.vmap(lambda u: forward(p, u))(us)
        return jnp.mean(losses), acts

    (loss, acts), g = jax.value_and_grad(batch_loss, has_aux=True)(params)
    h2 = jnp.stack([jnp.mean(x ** 2) for x, _ in acts])
    rnn2 = jnp.stack([jnp.mean(y ** 2) for _, y in acts])
    timescale = [model.timescale(layer.cell) for layer in g.layers]
    rest = [model.rest(layer.cell) for layer in g.layers]
    glu = [(layer.out1, layer.out2) for layer in g.layers]
    others = (rest, glu, g.encoder, g.decoder)
    return dict(loss=loss, h2=h2, rnn2=rnn2,
                grad2_timescale=jnp.stack([_mean_square(t) for t in timescale]),
                grad2_rest=jnp.stack([_mean_square(r) for r in rest]),
                grad2_glu=jnp.stack([_mean_square(x) for x in glu]),
                grad2_timescale_all=_mean_square(timescale),
                grad2_other_all=_mean_square(others))


def signal_propagation(models: Sequence[str], timescales: Sequence[float], *, width: int,
                       time: int, batch: int, batches: int, input_size: int, rho: float,
                       layers: int = 4, seed: int = 0, progress: Optional[Callable] = None
                       ) -> list:
    """Zucchet & Orvieto 2024's Figure 5: second moments at initialisation against
    the recurrent layers' characteristic time ``t``.

    For every model (:data:`PROPAGATION_MODELS`) and ``t``, the network of
    :func:`propagation_network` is initialised once (key ``PRNGKey(seed)``; the
    eigenvalue moduli on ``[1 - 1/t, 1 - 1/(2t)]``, the gates' biases chrono on
    ``log U(t, 2t)``) and evaluated on ``batches`` batches of AR(1) inputs of
    autocorrelation ``rho`` (:func:`seqjax.tasks.ar1_inputs`; the same batches for
    every model and ``t``), a stand-in for the paper's BERT embeddings of Wikipedia.

    Args:
      models: names in :data:`PROPAGATION_MODELS`.
      timescales: characteristic times ``t >= 1``.
      width: model width (and the LRU's state size).
      time: sequence length.
      batch, batches: examples per batch and number of batches.
      input_size: features of the AR(1) inputs.
      rho: their autocorrelation.
      layers: residual layers (the paper: 4).
      seed: PRNG seed of the parameters and the data.
      progress: called with a message after each (model, t).

    Returns:
      One dict per (model, t, batch) with :func:`propagation_statistics`' values as
      floats / lists (per layer).
    """
    for name in models:
        if name not in PROPAGATION_MODELS:
            raise ValueError(f"signal_propagation: unknown model {name!r}; choose from "
                             f"{', '.join(PROPAGATION_MODELS)}")
    if min(timescales) < 1:
        raise ValueError(f"signal_propagation: timescales must be >= 1, got {timescales}")
    data_key, param_key = jax.random.split(jax.random.PRNGKey(seed))
    draw = jax.jit(jax.vmap(lambda k: tasks.ar1_inputs(k, time, input_size, rho)))
    data = [draw(jax.random.split(jax.random.fold_in(data_key, i), batch))
            for i in range(batches)]
    rows = []
    for name in models:
        model = PROPAGATION_MODELS[name]
        # t changes only the initialisation: one compiled forward serves every t
        cell = model.cell(float(timescales[0]), width)
        _, forward = propagation_network(cell, width=width, input_size=input_size,
                                         layers=layers)
        stats = jax.jit(lambda p, u, model=model, cell=cell, forward=forward:
                        propagation_statistics(model, cell, p, forward, u))
        for t in timescales:
            started = _time.perf_counter()
            init, _ = propagation_network(model.cell(float(t), width), width=width,
                                          input_size=input_size, layers=layers)
            params = init(param_key)
            for i, us in enumerate(data):
                s = jax.device_get(stats(params, us))
                rows.append(dict(model=name, t=float(t), batch=i,
                                 **{k: (np.asarray(v).tolist()) for k, v in s.items()}))
            if progress is not None:
                progress(f"{name} t={t:.4g}: {_time.perf_counter() - started:.1f} s")
    return rows


# ==================================================================== learnability


class LearnParams(NamedTuple):
    """``encoder`` (``None`` unless the cell needs its inputs projected to its
    width), ``cell``, ``head`` (read at every step)."""

    encoder: Optional[_Dense]
    cell: Any
    head: _Dense


def arjovsky_optimizer(learning_rate: float = 1e-3, *, max_norm: float = 1.0,
                       decay: float = 0.9) -> optax.GradientTransformation:
    """RMSProp with gradient clipping by global norm, Arjovsky et al. 2016's choice
    for the adding and copying problems (learning rate ``1e-3``, decay ``0.9``).

    Returns:
      ``optax.chain(optax.clip_by_global_norm(max_norm), optax.rmsprop(...))``.
    """
    return optax.chain(optax.clip_by_global_norm(max_norm),
                       optax.rmsprop(learning_rate, decay=decay))


class Learner(NamedTuple):
    """Pure functions of one (cell, task) model for one seed (vmap over seeds)."""

    init: Callable        # key -> LearnParams (float32)
    loss: Callable        # (params, examples) -> the task's mean loss over the batch
    state_norms: Callable  # (params, examples) -> ||d memory_loss / dh_t||, [T + 1]


def learner(cell: Cell, task: tasks.Task, *, hidden: int, encoder: bool,
            **unroll_options) -> Learner:
    """The model of :func:`learnability`: ``[GELU(Dense) ->] cell -> Dense`` at every
    step.

    The encoder (for cells whose input must have their width, such as the LRU) has a
    nonlinearity, as the blocks these cells are built into do: a linear recurrence
    read out linearly is a linear filter of its inputs, which cannot form the products
    ``v_t m_t`` the adding problem asks for.

    Args:
      cell: a seqjax cell whose ``output_size`` is ``hidden``.
      task: a :class:`seqjax.tasks.Task`.
      hidden: the width of the encoder's output (when ``encoder``).
      encoder: map the inputs to ``hidden`` features first, ``GELU(x W + b)`` (the
        LRU's skip term needs ``input == hidden``).
      **unroll_options: passed to :func:`seqjax.unroll` and the diagnostics
        (``associative``, ``hoist``, ...).

    Returns:
      A :class:`Learner`. ``state_norms`` is the Frobenius norm over the batch of
      ``dL/dh_t`` for the task's ``memory_loss`` (its ``loss`` when it has none), by
      :func:`seqjax.diagnostics.batch_state_gradient_norms`, in the params' dtype.
    """
    memory_loss = task.memory_loss or task.loss

    def init(key):
        k_e, k_c, k_h = jax.random.split(key, 3)
        enc = _dense_init(k_e, task.input_size, hidden, jnp.float32) if encoder else None
        return LearnParams(enc, cell.init(k_c, hidden if encoder else task.input_size),
                           _dense_init(k_h, cell.output_size, task.output_size, jnp.float32))

    def encode(p, xs):
        xs = xs.astype(p.head.w.dtype)
        return xs if p.encoder is None else jax.nn.gelu(_dense(p.encoder, xs))

    def loss(p, examples):
        def one(ex):
            _, ys = unroll(cell, p.cell, encode(p, ex.inputs), length=ex.length,
                           **unroll_options)
            return task.loss(_dense(p.head, ys), ex)

        return jnp.mean(jax.vmap(one)(examples))

    def state_norms(p, examples):
        def fn(finals, ys):
            return jnp.mean(jax.vmap(lambda y, ex: memory_loss(_dense(p.head, y), ex))(
                ys, examples))

        xs = jax.vmap(lambda x: encode(p, x))(examples.inputs)
        return diagnostics.batch_state_gradient_norms(
            cell, p.cell, xs, fn, lengths=examples.length, **unroll_options).states

    return Learner(init, loss, state_norms)


def learnability(cell: Cell, task: tasks.Task, *, encoder: bool, seeds: Sequence[int],
                 hidden: int, batch: int, steps: int, learning_rate: float = 1e-3,
                 optimizer: Optional[optax.GradientTransformation] = None,
                 eval_examples: int = 256, norm_examples: int = 32,
                 log_every: int = 50, **unroll_options) -> list:
    """Trains ``cell`` on ``task`` for a fixed budget, all ``seeds`` at once (vmap).

    Seed ``s`` draws its model from ``fold_in(PRNGKey(s), 0)``, its training batches
    from ``fold_in(fold_in(PRNGKey(s), 1), step)`` and its evaluation examples from
    ``fold_in(PRNGKey(s), 2)`` (the same data for every cell). Training is in
    float32; ``||dL/dh_t||`` at initialisation is measured in float64 on the first
    ``norm_examples`` evaluation examples (norms down to ``1e-300``), for the
    task's ``memory_loss``.

    Args:
      cell: a seqjax cell with ``output_size == hidden``.
      task: a :class:`seqjax.tasks.Task`.
      encoder: project the inputs to ``hidden`` first (see :func:`learner`).
      seeds: integer seeds.
      hidden: hidden size.
      batch: training examples per step.
      steps: training steps (updates).
      learning_rate: for the default optimizer, Adam clipped at global norm 1
        (:func:`seqjax.train.default_optimizer`).
      optimizer: an optax optimizer instead (e.g. :func:`arjovsky_optimizer`).
      eval_examples: held-out examples for the final loss.
      norm_examples: examples for the gradient norms at initialisation.
      log_every: the training curve keeps the mean loss of every ``log_every``
        steps.
      **unroll_options: passed to :func:`seqjax.unroll` (e.g. ``associative=False``:
        linear-recurrence cells step sequentially, the same numbers as their
        associative scan and on CPU quicker to compile).

    Returns:
      One dict per seed: ``seed``, ``loss_init`` and ``loss_final`` (held-out),
      ``baseline``, ``ratio`` (``loss_final / baseline``), ``solved``
      (``ratio < 0.1``), ``curve`` (training loss, mean per ``log_every`` steps),
      ``grad_h`` (``[T + 1]`` norms at initialisation), ``grad_h0``, ``seconds``.

    References:
      Arjovsky, Shah & Bengio, ICML 2016, sections 4.1-4.2 (their setup: RMSProp,
      learning rate ``1e-3``, clipping at 1); Hochreiter & Schmidhuber 1997,
      section 5.4.
    """
    seeds = [int(s) for s in seeds]
    steps = _checks.positive_int(steps, "steps")
    log_every = min(_checks.positive_int(log_every, "log_every"), steps)
    started = _time.perf_counter()
    opt = optimizer if optimizer is not None else train_default(learning_rate)
    model = learner(cell, task, hidden=hidden, encoder=encoder, **unroll_options)
    roots = jnp.stack([jax.random.PRNGKey(s) for s in seeds])

    @jax.jit
    def setup(roots):
        init_keys, data_keys, eval_keys = (
            jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(roots) for i in range(3))
        params = jax.vmap(model.init)(init_keys)
        with jax.numpy_dtype_promotion("standard"):  # optax is not strict-promotion clean
            opt_state = jax.vmap(opt.init)(params)
        examples = jax.vmap(lambda k: tasks.sample_batch(task, k, eval_examples))(eval_keys)
        return params, opt_state, data_keys, examples

    params, opt_state, data_keys, examples = setup(roots)
    evaluate = jax.jit(jax.vmap(model.loss))
    loss_init = np.asarray(evaluate(params, examples))
    with jax.enable_x64(True):
        few = jax.tree_util.tree_map(lambda a: a[:, :norm_examples], examples)
        wide = jax.tree_util.tree_map(
            lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
            params)
        grad_h = np.asarray(jax.jit(jax.vmap(model.state_norms))(wide, few), np.float64)

    def one_step(p, o, key, i):
        ex = tasks.sample_batch(task, jax.random.fold_in(key, i), batch)
        value, g = jax.value_and_grad(model.loss)(p, ex)
        with jax.numpy_dtype_promotion("standard"):
            updates, new_o = opt.update(g, o, p)
        keep = i < steps  # the last block may run past the budget: those steps are void
        new_p = optax.apply_updates(p, updates)
        p, o = jax.tree_util.tree_map(lambda n, a: jnp.where(keep, n, a), (new_p, new_o), (p, o))
        return p, o, value

    @jax.jit
    def train_block(p, o, first):
        def body(carry, i):
            p, o = carry
            p, o, value = jax.vmap(one_step, in_axes=(0, 0, 0, None))(p, o, data_keys, i)
            return (p, o), value

        (p, o), values = lax.scan(body, (p, o), first + jnp.arange(log_every))
        n = jnp.minimum(log_every, steps - first).astype(values.dtype)
        valid = (first + jnp.arange(log_every) < steps)[:, None]
        return p, o, jnp.sum(jnp.where(valid, values, jnp.zeros((), values.dtype)), axis=0) / n

    curve = []
    for first in range(0, steps, log_every):
        params, opt_state, mean = train_block(params, opt_state, jnp.asarray(first, jnp.int32))
        curve.append(np.asarray(mean))
    loss_final = np.asarray(evaluate(params, examples))
    seconds = _time.perf_counter() - started
    curve = np.stack(curve, axis=1)
    out = []
    for i, s in enumerate(seeds):
        ratio = float(loss_final[i]) / task.baseline
        out.append(dict(
            seed=s, loss_init=_float(loss_init[i]), loss_final=_float(loss_final[i]),
            baseline=task.baseline, ratio=_float(ratio), solved=bool(ratio < 0.1),
            curve=[_float(v) for v in curve[i]], log_every=log_every,
            grad_h=[_float(v) for v in grad_h[i]], grad_h0=_float(grad_h[i, 0]),
            seconds=seconds))
    return out


def _float(v):
    v = float(v)
    return v if math.isfinite(v) else None
