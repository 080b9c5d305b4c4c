"""Synthetic long-dependency tasks: seeded, jit-able generators with their baselines.

A task is a :class:`Task`, a NamedTuple of pure functions and constants in the style
of a :class:`~seqjax.Cell`: ``sample(key)`` draws **one example** (batch with
``jax.vmap`` over keys, or :func:`sample_batch`), ``loss(outputs, example)`` scores a
model's per-step outputs on it, and ``baseline`` is the loss of the task's published
trivial strategy, so that an experiment can print "model vs baseline". Sizes are
static configuration in the closure; the same key always gives the same example.

* :func:`adding_problem`: Arjovsky, Shah & Bengio 2016's adding problem; predicting
  the constant 1 scores ``1/6 ~ 0.167``.
* :func:`hochreiter_adding_problem`: the original adding problem of Hochreiter &
  Schmidhuber 1997 (experiment 4); predicting the constant 0.5 scores ``19/480``.
* :func:`copy_memory`: Arjovsky et al. 2016's copying memory problem; the memoryless
  strategy scores ``10 log 8 / (T + 20)``.
* :func:`ar1_inputs`: stationary inputs with autocorrelation ``rho`` (an AR(1)
  process), the inputs of Zucchet & Orvieto 2024's analysis of the curse of memory.
* :func:`mqar`: multi-query associative recall (Arora et al. 2023, Zoology), the recall
  probe of language models: token ids in, the value of each queried key out.

References:
  Hochreiter & Schmidhuber, "Long short-term memory", Neural Computation 1997,
  section 5.4 (experiment 4, adding problem).
  Arjovsky, Shah & Bengio, "Unitary evolution recurrent neural networks", ICML 2016,
  section 4.1 (copying memory) and 4.2 (adding problem).
  Zucchet & Orvieto, "Recurrent neural networks: vanishing and exploding gradients are
  not the end of the story", NeurIPS 2024 (inputs of autocorrelation ``rho``).
  Arora, Eyuboglu, Timalsina, Johnson, Poli, Zou, Rudra & Ré, "Zoology: measuring and
  improving recall in efficient language models", ICLR 2024, arXiv:2312.04927.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from seqjax import _checks

Array = jax.Array


class Example(NamedTuple):
    """One example of a task.

    Attributes:
      inputs: ``[time, input_size]`` float32 (zero after ``length``).
      targets: a float32 scalar (adding problems) or ``[time]`` int32 class ids
        (copy memory).
      length: int32 scalar, the number of valid steps (``time`` for fixed-length
        tasks); pass it to :func:`seqjax.unroll` as ``length``.
    """

    inputs: Array
    targets: Array
    length: Array


class Task(NamedTuple):
    """A synthetic sequence task.

    Attributes:
      sample: ``(key) -> Example``, one example; pure, jit- and vmap-able.
      loss: ``(outputs [time, output_size], example) -> scalar``, the task's loss of
        a model's per-step outputs (a many-to-one task reads the output at step
        ``length - 1``).
      baseline: the expected ``loss`` of the task's trivial strategy (see each
        constructor), a Python float.
      input_size: features per step of ``inputs``.
      output_size: features per step the model must output.
      time: the time axis of ``inputs`` (the longest possible sequence).
      name: a human-readable description for logs and plot titles.
      memory_loss: ``(outputs, example) -> scalar``, the part of the loss that can
        only be lowered by remembering across the task's delay (copy memory: the
        recall window), or ``None`` when that is the whole ``loss`` (the adding
        problems read one output, at the last step). Gradient diagnostics such as
        ``||d memory_loss / dh_0||`` use it so that the short path from ``h_0`` to
        the first outputs does not mask the long one.
    """

    sample: Callable[[Array], Example]
    loss: Callable[[Array, Example], Array]
    baseline: float
    input_size: int
    output_size: int
    time: int
    name: str
    memory_loss: Optional[Callable[[Array, Example], Array]] = None


def sample_batch(task: Task, key, batch_size: int) -> Example:
    """``batch_size`` examples, ``jax.vmap(task.sample)`` over split keys.

    Args:
      task: a :class:`Task`.
      key: PRNG key.
      batch_size: static number of examples.

    Returns:
      An :class:`Example` whose fields have a leading ``[batch_size]`` axis.
    """
    batch_size = _checks.positive_int(batch_size, "batch_size")
    return jax.vmap(task.sample)(jax.random.split(key, batch_size))


def _check_outputs(outputs, task_name, time, size):
    if getattr(outputs, "ndim", None) != 2 or outputs.shape != (time, size):
        raise ValueError(f"{task_name} loss: expected outputs of shape [{time}, {size}] (one "
                         f"example; vmap over a batch), got {tuple(getattr(outputs, 'shape', ()))}")


def _last_output(outputs, length):
    return jax.lax.dynamic_index_in_dim(outputs, length - 1, axis=0, keepdims=False)[0]


# ------------------------------------------------------------------------- adding


def adding_problem(length: int) -> Task:
    """The adding problem as in Arjovsky et al. 2016.

    Input step ``t`` is ``(v_t, m_t)``: values ``v_t ~ U[0, 1]`` and a marker that is 1
    at exactly two steps, one drawn uniformly from the first half ``[0, T // 2)`` and
    one from the second half ``[T // 2, T)``, and 0 elsewhere. The target, read from
    the output at the last step, is the sum of the two marked values; the loss is the
    squared error.

    Baseline: predicting 1 whatever the input has expected squared error
    ``Var(U1 + U2) = 2 / 12 = 1/6 ~ 0.167``, the variance of the sum of two
    independent uniforms (the constant minimising the error).

    Args:
      length: ``T >= 2``, the sequence length.

    Returns:
      A :class:`Task` with ``inputs [T, 2]``, scalar float ``targets``,
      ``output_size = 1`` and ``baseline = 1/6``.

    References:
      Arjovsky, Shah & Bengio, "Unitary evolution recurrent neural networks",
      ICML 2016, section 4.2.
    """
    T = _checks.positive_int(length, "length")
    if T < 2:
        raise ValueError(f"adding_problem: length must be >= 2 (one marker per half), got {T}")
    half = T // 2

    def sample(key):
        k_v, k_1, k_2 = jax.random.split(key, 3)
        values = jax.random.uniform(k_v, (T,), jnp.float32)
        first = jax.random.randint(k_1, (), 0, half, jnp.int32)
        second = jax.random.randint(k_2, (), half, T, jnp.int32)
        steps = jnp.arange(T, dtype=jnp.int32)
        marker = ((steps == first) | (steps == second)).astype(jnp.float32)
        inputs = jnp.stack([values, marker], axis=-1)
        return Example(inputs, values[first] + values[second], jnp.asarray(T, jnp.int32))

    def loss(outputs, example):
        _check_outputs(outputs, "adding_problem", T, 1)
        y = _last_output(outputs, example.length)
        return (y - example.targets.astype(y.dtype)) ** 2

    return Task(sample, loss, 1.0 / 6.0, 2, 1, T, f"adding (Arjovsky et al. 2016), T={T}")


def hochreiter_adding_problem(min_length: int) -> Task:
    """The original adding problem of Hochreiter & Schmidhuber 1997 (experiment 4).

    Each step is a pair ``(v_t, m_t)`` with ``v_t ~ U[-1, 1]``. The length ``L`` is
    drawn uniformly from ``T .. T + T // 10``; inputs are padded with zeros to
    ``T + T // 10`` steps and :attr:`Example.length` is ``L``. Exactly two pairs are
    marked with ``m = 1``: one of the first ten (its value is ``X1``), then one of the
    first ``T / 2 - 1`` still unmarked pairs (``X2``). The first and the final
    (``L``-th) pair carry ``m = -1`` unless marked, all others ``m = 0``; if the first
    pair is marked, its value is set to zero (``X1 = 0``). The target, read from the
    output at step ``L - 1``, is ``0.5 + (X1 + X2) / 4``; the loss is the squared
    error (the paper counts an example as solved when the absolute error is below
    0.04).

    Baseline: predicting the mean target 0.5 has expected squared error
    ``(Var X1 + Var X2) / 16 = (0.9 / 3 + 1 / 3) / 16 = 19 / 480 ~ 0.0396``
    (``X1 = 0`` with probability 1/10).

    Args:
      min_length: ``T >= 20`` (so that the first ten pairs lie in the first half).

    Returns:
      A :class:`Task` with ``inputs [T + T // 10, 2]``, scalar float ``targets``,
      ``output_size = 1`` and ``baseline = 19 / 480``.

    References:
      Hochreiter & Schmidhuber, "Long short-term memory", Neural Computation 1997,
      section 5.4.
    """
    T = _checks.positive_int(min_length, "min_length")
    if T < 20:
        raise ValueError(f"hochreiter_adding_problem: min_length must be >= 20 (the first "
                         f"marker is one of the first ten pairs, the second in the first "
                         f"half), got {T}")
    time = T + T // 10
    half = T // 2

    def sample(key):
        k_n, k_v, k_1, k_2 = jax.random.split(key, 4)
        n = jax.random.randint(k_n, (), T, time + 1, jnp.int32)
        first = jax.random.randint(k_1, (), 0, 10, jnp.int32)
        k = jax.random.randint(k_2, (), 0, half - 1, jnp.int32)
        second = jnp.where(k < first, k, k + 1)  # the k-th still unmarked pair
        steps = jnp.arange(time, dtype=jnp.int32)
        valid = steps < n
        values = jax.random.uniform(k_v, (time,), jnp.float32, -1.0, 1.0)
        values = jnp.where(valid & ~((steps == 0) & (first == 0)), values,
                           jnp.zeros((), jnp.float32))
        marked = (steps == first) | (steps == second)
        ends = (steps == 0) | (steps == n - 1)
        marker = jnp.where(marked, 1.0, jnp.where(ends, -1.0, 0.0)).astype(jnp.float32)
        marker = jnp.where(valid, marker, jnp.zeros((), jnp.float32))
        target = 0.5 + (values[first] + values[second]) / 4.0
        return Example(jnp.stack([values, marker], axis=-1), target, n)

    def loss(outputs, example):
        _check_outputs(outputs, "hochreiter_adding_problem", time, 1)
        y = _last_output(outputs, example.length)
        return (y - example.targets.astype(y.dtype)) ** 2

    return Task(sample, loss, 19.0 / 480.0, 2, 1, time,
                f"adding (Hochreiter & Schmidhuber 1997), T={T}..{time}")


# ---------------------------------------------------------------------------- copy


def copy_memory(delay: int, *, memorize: int = 10, categories: int = 8) -> Task:
    """The copying memory problem as in Arjovsky et al. 2016.

    Symbols ``0 .. categories - 1`` are data, ``categories`` is the blank and
    ``categories + 1`` the delimiter. The input (one-hot, ``T + 2 * memorize`` steps)
    is ``memorize`` data symbols drawn uniformly with replacement, ``T - 1`` blanks, the
    delimiter, then ``memorize`` blanks. The target at every step is the blank, except
    the last ``memorize`` steps, which must reproduce the data symbols in order. The
    loss is the cross-entropy averaged over all ``T + 2 * memorize`` steps.

    Baseline: the memoryless strategy predicts the blank for the first
    ``T + memorize`` steps and a uniform guess over the categories for the last
    ``memorize``, with cross-entropy ``memorize * log(categories) / (T + 2 * memorize)``
    (``10 log 8 / (T + 20)`` with the paper's sizes).

    Args:
      delay: ``T >= 1``, the number of steps between the end of the data and the
        delimiter, counted as in the paper (``T - 1`` blanks, then the delimiter).
      memorize: number of symbols to copy (paper: 10).
      categories: number of data categories (paper: 8).

    Returns:
      A :class:`Task` with ``inputs [T + 2 memorize, categories + 2]`` (one-hot),
      ``targets [T + 2 memorize]`` int32 and ``output_size = categories + 2`` logits.

    References:
      Arjovsky, Shah & Bengio, "Unitary evolution recurrent neural networks",
      ICML 2016, section 4.1.
    """
    T = _checks.positive_int(delay, "delay")
    M = _checks.positive_int(memorize, "memorize")
    C = _checks.positive_int(categories, "categories")
    blank, delimiter, vocab = C, C + 1, C + 2
    time = T + 2 * M

    def sample(key):
        data = jax.random.randint(key, (M,), 0, C, jnp.int32)
        fill = jnp.full((time,), blank, jnp.int32)
        ids = fill.at[:M].set(data).at[T + M - 1].set(delimiter)
        targets = fill.at[T + M:].set(data)
        inputs = jax.nn.one_hot(ids, vocab, dtype=jnp.float32)
        return Example(inputs, targets, jnp.asarray(time, jnp.int32))

    def loss(outputs, example):
        _check_outputs(outputs, "copy_memory", time, vocab)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(outputs,
                                                                         example.targets))

    def recall_loss(outputs, example):
        _check_outputs(outputs, "copy_memory", time, vocab)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
            outputs[T + M:], example.targets[T + M:]))

    return Task(sample, loss, M * math.log(C) / time, vocab, vocab, time,
                f"copy memory (Arjovsky et al. 2016), T={T}", recall_loss)


# ------------------------------------------------------------------ autocorrelated


def ar1_inputs(key, time: int, size: int, rho, *, previous=None, dtype=jnp.float32) -> Array:
    """Stationary inputs of unit variance and autocorrelation ``rho``: an AR(1) process.

    .. math:: x_t = \\rho\\, x_{t-1} + \\sqrt{1 - \\rho^2}\\, \\xi_t, \\qquad
              \\xi_t \\sim \\mathcal N(0, 1)

    so that ``E[x_t] = 0``, ``E[x_t^2] = 1`` and ``E[x_t x_{t+k}] = rho^|k|`` for every
    ``t``: the first step is drawn from the stationary law ``N(0, 1)`` (or continues
    ``previous``), so no burn-in is needed. The ``size`` features are independent.
    Evaluated as a linear recurrence with ``jax.lax.associative_scan``.

    Args:
      key: PRNG key.
      time: number of steps (static).
      size: number of independent features (static).
      rho: the autocorrelation, ``-1 < rho < 1`` (may be traced).
      previous: ``None``, or ``[size]``, the step before the first: continue a
        sequence drawn in pieces (the pieces then join into one stationary sequence).
      dtype: a floating dtype.

    Returns:
      ``[time, size]``.

    References:
      Zucchet & Orvieto, "Recurrent neural networks: vanishing and exploding gradients
      are not the end of the story", NeurIPS 2024, section 2 (inputs of
      autocorrelation ``rho``).
    """
    time = _checks.positive_int(time, "time")
    size = _checks.positive_int(size, "size")
    if isinstance(rho, (int, float)) and not -1.0 < rho < 1.0:
        raise ValueError(f"ar1_inputs: rho must be in (-1, 1), got {rho}")
    rho = jnp.asarray(rho, dtype)
    noise = jax.random.normal(key, (time, size), dtype) * jnp.sqrt(1 - rho * rho)
    if previous is None:  # x_0 ~ N(0, 1): scale the first innovation to unit variance
        first = noise[0] / jnp.sqrt(1 - rho * rho)
    else:
        first = rho * jnp.asarray(previous, dtype) + noise[0]
    b = noise.at[0].set(first)
    a = jnp.broadcast_to(rho, b.shape)

    def combine(earlier, later):
        return earlier[0] * later[0], later[0] * earlier[1] + later[1]

    return jax.lax.associative_scan(combine, (a, b))[1]


# ---------------------------------------------------------------- associative recall


class Recall(NamedTuple):
    """One associative-recall example.

    Attributes:
      tokens: ``[T]`` int32, the model's input.
      targets: ``[T]`` int32: at a query, the value of the queried key (the next token
        to predict); 0 elsewhere.
      mask: ``[T]`` bool, true at the queries: only they are scored.
    """

    tokens: Array
    targets: Array
    mask: Array


class RecallTask(NamedTuple):
    """A recall task over token ids (:func:`mqar`).

    Attributes:
      sample: ``(key) -> Recall``, one example; pure, jit- and vmap-able.
      loss: ``(logits [T, V], example) -> scalar``, cross-entropy at the queries.
      accuracy: ``(logits [T, V], example) -> scalar``, the fraction of queries whose
        argmax is the value.
      baseline: the accuracy of answering with a value drawn from the context, ``1 /
        num_pairs`` (the plateau a model sits on before it learns to look up the key).
      vocab_size, time, num_pairs: the sizes.
      name: a description for logs and plots.
    """

    sample: Callable[[Array], Recall]
    loss: Callable[[Array, Recall], Array]
    accuracy: Callable[[Array, Recall], Array]
    baseline: float
    vocab_size: int
    time: int
    num_pairs: int
    name: str


def mqar(vocab_size: int = 8192, length: int = 64, num_pairs: int = 4, *,
         power_a: float = 0.01, random_fill: bool = True) -> RecallTask:
    """Multi-query associative recall, as Zoology generates it (Arora et al. 2023).

    Each example is ``num_pairs`` key-value pairs ``k_1 v_1 k_2 v_2 ...`` (keys drawn
    without replacement from ``[1, V/2)``, values from ``[V/2, V)``), then the rest of
    the sequence, in which every key is queried once: query ``i`` sits at an even
    offset ``2 g_i`` after the pairs, the slots ``g`` drawn without replacement with
    probability ``p(g) ∝ power_a (g + 1)^(power_a - 1)`` (``power_a = 0.01``: early
    slots are much more likely, as repeated bigrams are in text). At a query the next
    token to predict is the key's value; only those predictions are scored. The other
    positions hold 0 or, with ``random_fill``, tokens drawn uniformly from ``[0, V)``.

    Args:
      vocab_size: ``V`` (Zoology's figure 2: 8,192); more than ``length``.
      length: ``T``, even (figure 2: 64, 128, 256, 512).
      num_pairs: ``N`` key-value pairs, ``4 N <= T`` (figure 2: 4, 8, 16, 64 with the
        lengths above).
      power_a: the power-law exponent of the query positions (1: uniform).
      random_fill: fill the non-query positions with random tokens (Zoology's
        default) rather than 0.

    Returns:
      A :class:`RecallTask`.

    References:
      Arora et al., "Zoology: measuring and improving recall in efficient language
      models", ICLR 2024, arXiv:2312.04927, section 3 and appendix (``multiquery_ar``).
    """
    V = _checks.positive_int(vocab_size, "vocab_size")
    T = _checks.positive_int(length, "length")
    N = _checks.positive_int(num_pairs, "num_pairs")
    if T % 2:
        raise ValueError(f"mqar: length must be even, got {T}")
    if V <= T:
        raise ValueError(f"mqar: vocab_size ({V}) must exceed length ({T})")
    if 4 * N > T:
        raise ValueError(f"mqar: {N} pairs and their {N} queries need length >= {4 * N}, "
                         f"got {T}")
    if N > V // 2 - 1:
        raise ValueError(f"mqar: {N} distinct keys need vocab_size >= {2 * N + 2}")
    if not power_a > 0:
        raise ValueError(f"mqar: power_a must be positive, got {power_a!r}")
    context = 2 * N
    space = (T - context) // 2
    weights = power_a * jnp.arange(1, space + 1, dtype=jnp.float32) ** (power_a - 1)
    weights = weights / jnp.sum(weights)

    def sample(key):
        k_keys, k_values, k_slots, k_fill = jax.random.split(key, 4)
        keys = jax.random.choice(k_keys, jnp.arange(1, V // 2, dtype=jnp.int32), (N,),
                                 replace=False)
        values = jax.random.choice(k_values, jnp.arange(V // 2, V, dtype=jnp.int32), (N,),
                                   replace=False)
        slots = jax.random.choice(k_slots, space, (N,), replace=False, p=weights)
        pairs = jnp.stack([keys, values], axis=1).reshape(context)
        where = context + 2 * slots.astype(jnp.int32)  # the queries' positions
        tokens = jnp.zeros((T,), jnp.int32).at[:context].set(pairs).at[where].set(keys)
        if random_fill:
            filler = jax.random.randint(k_fill, (T,), 0, V, jnp.int32)
            tokens = jnp.where(tokens == 0, filler, tokens)
        targets = jnp.zeros((T,), jnp.int32).at[where].set(values)
        mask = jnp.zeros((T,), bool).at[where].set(True)
        return Recall(tokens, targets, mask)

    def check(logits):
        if getattr(logits, "ndim", None) != 2 or logits.shape != (T, V):
            raise ValueError(f"mqar: expected logits of shape [{T}, {V}] (one example; vmap "
                             f"over a batch), got {tuple(getattr(logits, 'shape', ()))}")

    def loss(logits, example):
        check(logits)
        per_step = optax.softmax_cross_entropy_with_integer_labels(logits, example.targets)
        return jnp.sum(jnp.where(example.mask, per_step, 0.0)) / N

    def accuracy(logits, example):
        check(logits)
        right = (jnp.argmax(logits, axis=-1) == example.targets) & example.mask
        return jnp.sum(right) / N

    return RecallTask(sample, loss, accuracy, 1.0 / N, V, T, N,
                      f"MQAR (Arora et al. 2023), V={V}, T={T}, pairs={N}")

