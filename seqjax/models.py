"""Models built from cells: embeddings, dense heads, readouts and the RNN types.

The RNN types are named by how inputs map to outputs (Karpathy 2015, "The
unreasonable effectiveness of recurrent neural networks"): *many to one*
(sentiment: a sequence in, one label out), *many to many* (one output per step),
*one to many* (generation from one input or a context vector) and the
*encoder-decoder* (sequence to sequence, where the encoder's final state is the
decoder's initial state). Each constructor here returns a NamedTuple of pure
functions, like a :class:`~seqjax.Cell`: ``init(key) -> params`` and
``apply(params, ...)`` over **one example** (batch with ``jax.vmap``). Static
configuration (sizes, special token ids) lives in the closure; params are typed
NamedTuples of arrays.

The output layer is the affine readout :math:`y_t = W_{hy} h_t + b` (:func:`dense`).

Token ids and lengths are checked when their values are known (outside ``jit`` and
``vmap``): an id outside ``[0, V)`` or a length outside ``[0, T]`` raises a
``ValueError`` before anything is compiled. Inside ``jit``/``vmap`` they are tracers
whose values Python cannot see: an out-of-range id then embeds as NaN (see
:func:`embed`) and a length outside ``[0, T]`` acts as if clipped to it. Wrap the
compiled function in ``jax.experimental.checkify.checkify`` to have both raise there
too, with the same messages.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from seqjax import _checks
from seqjax.cells import Cell, SequenceModel
from seqjax.cells.contract import _getattr, _is_default, _show
from seqjax.unroll import unroll

Array = jax.Array
Params = Any


# ------------------------------------------------------------------------- layers


class DenseParams(NamedTuple):
    """Affine map parameters: ``w [in, out]``, ``b [out]``."""

    w: Array
    b: Array


def dense_init(key, in_size: int, out_size: int, *,
               kernel_init=jax.nn.initializers.lecun_normal(),
               bias_init=jax.nn.initializers.zeros, dtype=jnp.float32) -> DenseParams:
    """Initialises :func:`dense` (LeCun-normal kernel and zero bias, as Flax's ``Dense``).

    Args:
      key: PRNG key.
      in_size: input features.
      out_size: output features.
      kernel_init: initialiser of ``w [in, out]``.
      bias_init: initialiser of ``b [out]``.
      dtype: parameter dtype.

    Returns:
      :class:`DenseParams`.
    """
    in_size = _checks.positive_int(in_size, "in_size")
    out_size = _checks.positive_int(out_size, "out_size")
    k_w, k_b = jax.random.split(key)
    return DenseParams(kernel_init(k_w, (in_size, out_size), dtype),
                       bias_init(k_b, (out_size,), dtype))


def dense(params: DenseParams, x) -> Array:
    """The output layer :math:`y = W_{hy} h + b`, on any leading axes.

    Args:
      params: :class:`DenseParams` with ``w [in, out]``, ``b [out]``.
      x: ``[..., in]`` floating features.

    Returns:
      ``[..., out]``.
    """
    w, b = params.w, params.b
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dense: x must be a floating array [..., {w.shape[0]}], got "
                        f"{dtype if dtype is not None else type(x).__name__}")
    if x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"dense: expected x of shape [..., {w.shape[0]}], got {tuple(x.shape)}")
    y = x.astype(w.dtype) @ w
    return y + jnp.broadcast_to(b, y.shape)


def embedding_init(key, vocab_size: int, dim: int, *, dtype=jnp.float32) -> Array:
    """A token embedding table with entries drawn from ``N(0, 1/dim)`` (Flax's ``Embed``).

    Args:
      key: PRNG key.
      vocab_size: number of token ids ``V``.
      dim: embedding size ``E``.
      dtype: parameter dtype.

    Returns:
      ``[V, E]`` table.
    """
    vocab_size = _checks.positive_int(vocab_size, "vocab_size")
    dim = _checks.positive_int(dim, "dim")
    scale = jnp.asarray(1.0 / math.sqrt(dim), dtype)
    return jax.random.normal(key, (vocab_size, dim), dtype) * scale


def _check_ids(ids, vocab_size: int, name: str):
    return _checks.token_ids(ids, vocab_size, name)


def embed(table, ids) -> Array:
    """Looks up token embeddings: ``table[ids]``.

    Ids must lie in ``[0, V)``. Concrete ids (outside ``jit``/``vmap``) are checked
    here and a ``ValueError`` names the range and the values found. Traced ids cannot
    be read in Python: an out-of-range traced id (negative, or ``>= V``) then looks
    up a row of NaN -- never another token's row -- so the model's output and loss
    become NaN (and :func:`seqjax.train.fit` stops with its non-finite-loss error).
    To get the same ``ValueError`` message from compiled code, run under
    ``jax.experimental.checkify``::

        err, out = checkify.checkify(jax.jit(jax.vmap(model.apply, (None, 0))))(params, ids)
        err.throw()

    Args:
      table: ``[V, E]`` floating embedding table (:func:`embedding_init`).
      ids: integer token ids of any shape.

    Returns:
      ``[*ids.shape, E]``.

    Raises:
      TypeError: ids are not integers, or the table is not floating.
      ValueError: concrete ids outside ``[0, V)``; a table that is not ``[V, E]``.
    """
    if getattr(table, "ndim", None) != 2:
        raise ValueError(f"embed: table must be [vocab, dim], got shape {jnp.shape(table)}")
    if not jnp.issubdtype(table.dtype, jnp.floating):
        raise TypeError(f"embed: table must be floating, got {table.dtype}")
    vocab_size = table.shape[0]
    ids = _check_ids(ids, vocab_size, "embed: ids")
    # traced ids outside [0, V) read row V, which does not exist: a NaN fill, never
    # another token's row (plain indexing would wrap -1 to the last row)
    ids = jnp.where((ids >= 0) & (ids < vocab_size), ids, vocab_size)
    return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan)


def shift_right(tokens, start_id: int) -> Array:
    """Teacher-forcing decoder inputs: ``[START, tokens[0], ..., tokens[T-2]]``.

    Args:
      tokens: ``[..., T]`` integer targets.
      start_id: the START token.

    Returns:
      ``[..., T]`` with the same dtype.
    """
    tokens = jnp.asarray(tokens)
    start = jnp.full(tokens.shape[:-1] + (1,), start_id, tokens.dtype)
    return jnp.concatenate([start, tokens[..., :-1]], axis=-1)


# ----------------------------------------------------------------------- readouts


def _steps(ys, name):
    if getattr(ys, "ndim", 0) < 1:
        raise ValueError(f"{name}: expected ys of shape [time, ...], got {jnp.shape(ys)}")
    return ys.shape[0]


def last_valid(ys, length=None) -> Array:
    """The output at the last valid step, ``ys[length - 1]`` (many-to-one readout).

    Args:
      ys: ``[T, H]`` per-step outputs of one sequence.
      length: valid steps (int scalar in ``[0, T]``); ``None`` means ``T`` (the last
        step). ``length == 0`` gives zeros.

    Returns:
      ``[H]``.
    """
    time = _steps(ys, "last_valid")
    if length is None:
        return ys[-1]
    length = _checks.length(length, time)
    y = lax.dynamic_index_in_dim(ys, jnp.maximum(length - 1, 0), axis=0, keepdims=False)
    return jnp.where(length > 0, y, jnp.zeros((), ys.dtype))


def masked_mean(ys, length=None) -> Array:
    """Mean of the outputs over the valid prefix, ``mean(ys[:length])``.

    Args:
      ys: ``[T, H]`` per-step outputs.
      length: valid steps; ``None`` means all ``T``. ``length == 0`` gives zeros.

    Returns:
      ``[H]``.
    """
    time = _steps(ys, "masked_mean")
    if length is None:
        return jnp.mean(ys, axis=0)
    length = _checks.length(length, time)
    valid = (jnp.arange(time, dtype=jnp.int32) < length).reshape((time,) + (1,) * (ys.ndim - 1))
    total = jnp.sum(jnp.where(valid, ys, jnp.zeros((), ys.dtype)), axis=0)
    return total / jnp.maximum(length, 1).astype(ys.dtype)


# ------------------------------------------------------------------------- bundles


class Model(NamedTuple):
    """A model as pure functions.

    It prints as the call that built it, and that call's arguments read back as
    attributes (``model.output_size``, ``model.encoder``).

    Attributes:
      init: ``(key) -> params``.
      apply: ``(params, *inputs, **options) -> outputs`` for one example.
      name: the constructor's name (``"many_to_one"``).
      config: the constructor's arguments as ``(name, value)`` pairs.
    """

    init: Callable[[Array], Params]
    apply: Callable[..., Array]
    name: str = ""
    config: tuple = ()


class LanguageModel(NamedTuple):
    """A one-to-many / next-token model (:func:`one_to_many`).

    Attributes:
      init: ``(key) -> params``.
      apply: ``(params, tokens[T], length=None, *, context=None, rng=None) ->
        logits[T, V]``, teacher forcing: ``logits[t]`` predicts ``tokens[t + 1]``.
      generate: ``(params, key, prompt_or_context, steps, *, temperature=1.0,
        greedy=False) -> tokens[steps]``.
    """

    init: Callable[[Array], Params]
    apply: Callable[..., Array]
    generate: Callable[..., Array]
    name: str = ""
    config: tuple = ()


class Seq2Seq(NamedTuple):
    """An encoder-decoder (:func:`seq2seq`).

    Attributes:
      init: ``(key) -> params``.
      apply: ``(params, src[S], src_len, tgt_in[T], *, rng=None) -> logits[T, V]``.
      greedy_decode: ``(params, src[S], src_len, max_len) -> (tokens[max_len],
        length)``.
      encode: ``(params, src[S], src_len) -> state``, the decoder's initial state.
    """

    init: Callable[[Array], Params]
    apply: Callable[..., Array]
    greedy_decode: Callable[..., tuple]
    encode: Callable[..., Any]
    name: str = ""
    config: tuple = ()


class ModelParams(NamedTuple):
    """Params of :func:`many_to_one` / :func:`many_to_many`.

    ``embedding [V, E]`` (``None`` for float inputs), ``encoder`` (the cell's
    params), ``head`` (:class:`DenseParams` ``[H, out]``).
    """

    embedding: Optional[Array]
    encoder: Params
    head: DenseParams


class LanguageModelParams(NamedTuple):
    """Params of :func:`one_to_many`: ``embedding [V, E]``, ``cell``, ``head [H, V]``,
    ``bridge`` (:class:`DenseParams` ``[context_size, state]`` or ``None``)."""

    embedding: Array
    cell: Params
    head: DenseParams
    bridge: Optional[DenseParams]


class Seq2SeqParams(NamedTuple):
    """Params of :func:`seq2seq`: ``src_embedding [Vs, E]``, ``tgt_embedding [Vt, E]``,
    ``encoder``, ``bridge`` (:class:`DenseParams` or ``None`` for the identity),
    ``decoder``, ``head [H, Vt]``."""

    src_embedding: Array
    tgt_embedding: Array
    encoder: Params
    bridge: Optional[DenseParams]
    decoder: Params
    head: DenseParams


# -------------------------------------------------------------- readable models

_SIGNATURES: dict = {}


def _described(fn):
    """Marks a model constructor: what it returns records the constructor's name and
    arguments, prints as the call that built it (defaults left out), and reads its
    arguments back as attributes."""
    signature = inspect.signature(fn)
    _SIGNATURES[fn.__name__] = signature

    @functools.wraps(fn)
    def build(*args, **kwargs):
        model = fn(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return model._replace(name=fn.__name__, config=tuple(bound.arguments.items()))

    return build


def _model_repr(self) -> str:
    signature = _SIGNATURES.get(self.name)
    if signature is None:
        return f"{type(self).__name__}(...)"
    parts = []
    for key, value in self.config:
        default = signature.parameters[key].default
        if default is inspect.Parameter.empty or not _is_default(value, default):
            parts.append(f"{key}={_show(value)}")
    return f"{self.name}({', '.join(parts)})"


for _kind in (Model, LanguageModel, Seq2Seq):
    _kind.__repr__ = _model_repr
    _kind.__getattr__ = _getattr  # config, read back as attributes, as cells do


# ------------------------------------------------------------------ state bridges


def _state_template(model, input_size):
    """Shapes and dtypes of ``model``'s state (no computation)."""
    return jax.eval_shape(lambda k: model.initial_state(model.init(k, input_size)),
                          jax.random.PRNGKey(0))


def _state_size(template) -> int:
    return sum(math.prod(l.shape) * (2 if jnp.issubdtype(l.dtype, jnp.complexfloating) else 1)
               for l in jax.tree_util.tree_leaves(template))


def state_to_vector(state) -> Array:
    """Concatenates a state's leaves into one real vector.

    Leaves are raveled in ``jax.tree_util`` order (an :class:`~seqjax.LSTMState` gives
    ``h`` then ``c``; a stack layer by layer; a bidirectional model forward then
    backward); a complex leaf contributes its real then its imaginary part.

    Args:
      state: any seqjax state (one example).

    Returns:
      ``[state_size]``.
    """
    parts = []
    for leaf in jax.tree_util.tree_leaves(state):
        leaf = jnp.ravel(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
            parts += [leaf.real, leaf.imag]
        else:
            parts.append(leaf)
    dtype = parts[0].dtype
    return jnp.concatenate([p.astype(dtype) for p in parts])


def vector_to_state(vector, template):
    """Inverse of :func:`state_to_vector`: splits ``vector`` into ``template``'s leaves.

    Args:
      vector: ``[state_size]``.
      template: a state or its ``jax.ShapeDtypeStruct`` tree.

    Returns:
      A state with ``template``'s structure, shapes and dtypes.
    """
    leaves, tree = jax.tree_util.tree_flatten(template)
    out, offset = [], 0
    for leaf in leaves:
        n = math.prod(leaf.shape)
        if jnp.issubdtype(leaf.dtype, jnp.complexfloating):
            re, im = vector[offset:offset + n], vector[offset + n:offset + 2 * n]
            out.append(lax.complex(re, im).reshape(leaf.shape).astype(leaf.dtype))
            offset += 2 * n
        else:
            out.append(vector[offset:offset + n].reshape(leaf.shape).astype(leaf.dtype))
            offset += n
    return jax.tree_util.tree_unflatten(tree, out)


def _same_structure(a, b) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(x.shape == y.shape and x.dtype == y.dtype for x, y in zip(la, lb))


def _describe(template) -> str:
    return str(jax.tree_util.tree_map(lambda l: f"{l.dtype}{list(l.shape)}", template))


# ------------------------------------------------------------------------ helpers


def _check_model(model, name, what="encoder", cell_only=False):
    kinds = (Cell,) if cell_only else (Cell, SequenceModel)
    if not isinstance(model, kinds):
        want = "a seqjax Cell (or stack of cells)" if cell_only else \
            "a seqjax Cell or SequenceModel (stack, bidirectional)"
        raise TypeError(f"{name}: {what} must be {want}, got {type(model).__name__}")


def _token_sequence(ids, vocab_size, name):
    ids = _check_ids(ids, vocab_size, name)
    if ids.ndim != 1:
        raise ValueError(f"{name}: expected token ids of shape [time], got {tuple(ids.shape)}; "
                         "batch with jax.vmap")
    return ids


def _token_id(value, vocab_size, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or not 0 <= value < vocab_size:
        raise ValueError(f"{name} must be a token id in [0, {vocab_size - 1}], got {value!r}")


def _split(rng, n):
    return [None] * n if rng is None else list(jax.random.split(rng, n))


def _inputs(name, input_size, vocab_size, embed_dim):
    """The encoder's input size: ``input_size`` for float features, ``embed_dim`` for ids."""
    if vocab_size is None:
        if embed_dim is not None:
            raise ValueError(f"{name}: embed_dim is the size of token embeddings; pass "
                             "vocab_size too, or input_size alone for float features")
        if input_size is None:
            raise ValueError(f"{name}: pass input_size (features per step) for float inputs, "
                             "or vocab_size and embed_dim for integer token ids")
        return _checks.positive_int(input_size, "input_size")
    _checks.positive_int(vocab_size, "vocab_size")
    if input_size is not None:
        raise ValueError(f"{name}: with vocab_size the encoder reads embeddings of size "
                         f"embed_dim; leave input_size unset (got {input_size!r})")
    if embed_dim is None:
        raise ValueError(f"{name}: token inputs (vocab_size={vocab_size}) need embed_dim")
    return _checks.positive_int(embed_dim, "embed_dim")


def _encoder_model(name, encoder, output_size, input_size, vocab_size, embed_dim):
    """``init`` and ``encode(params, xs, length, rng) -> ys [T, H]`` shared by the
    many-to-one and many-to-many models."""
    _check_model(encoder, name)
    size = _inputs(name, input_size, vocab_size, embed_dim)
    output_size = _checks.positive_int(output_size, "output_size")

    def init(key):
        k_e, k_c, k_h = jax.random.split(key, 3)
        table = None if vocab_size is None else embedding_init(k_e, vocab_size, size)
        return ModelParams(table, encoder.init(k_c, size),
                           dense_init(k_h, encoder.output_size, output_size))

    def encode(params, xs, length, rng):
        if vocab_size is not None:
            xs = embed(params.embedding, _token_sequence(xs, vocab_size, f"{name}: xs"))
        _, ys = unroll(encoder, params.encoder, xs, length=length, rng=rng)
        return ys

    return init, encode


# ---------------------------------------------------------------------- RNN types


@_described
def many_to_one(encoder, output_size: int, *, input_size: Optional[int] = None,
                vocab_size: Optional[int] = None, embed_dim: Optional[int] = None,
                readout: Callable = last_valid) -> Model:
    """Many to one: a sequence in, one output (a class, a forecast) out.

    .. math:: h_t = f(h_{t-1}, x_t), \\quad y = W_{hy}\\, r(h_1, \\dots, h_T) + b

    where ``r`` is the ``readout`` (default: the output at the last valid step).

    Args:
      encoder: a :class:`~seqjax.Cell` or :class:`~seqjax.SequenceModel` (stack,
        bidirectional).
      output_size: size of the output (classes or regression targets).
      input_size: features per step, for float inputs ``xs [T, input_size]``.
      vocab_size: for integer token ids ``[T]`` instead: the number of ids; they are
        embedded (:func:`embed`) before the encoder reads them.
      embed_dim: embedding size, with ``vocab_size``.
      readout: ``(ys[T, H], length) -> [H]``: :func:`last_valid` (default) or
        :func:`masked_mean`. For a bidirectional encoder the backward half of
        ``ys[length - 1]`` has seen one step only; :func:`masked_mean` suits it
        better.

    Returns:
      A :class:`Model` with params :class:`ModelParams` and
      ``apply(params, xs[T, I] or ids[T], length=None, *, rng=None) -> [output_size]``
      for one example (``jax.vmap`` it for a batch); ``length`` is the number of
      valid steps (padding after it is never read); ``rng`` enables dropout in
      stacks.

    Raises:
      ValueError: neither ``input_size`` nor ``vocab_size`` with ``embed_dim``, or
        both.
    """
    init, encode = _encoder_model("many_to_one", encoder, output_size, input_size,
                                  vocab_size, embed_dim)

    def apply(params, xs, length=None, *, rng=None):
        ys = encode(params, xs, length, rng)
        return dense(params.head, readout(ys, length))

    return Model(init, apply)


@_described
def many_to_many(encoder, output_size: int, *, input_size: Optional[int] = None,
                 vocab_size: Optional[int] = None, embed_dim: Optional[int] = None) -> Model:
    """Many to many, aligned: one output per input step (tagging, per-step regression).

    .. math:: h_t = f(h_{t-1}, x_t), \\quad y_t = W_{hy} h_t + b

    Args:
      encoder: a :class:`~seqjax.Cell` or :class:`~seqjax.SequenceModel` (a
        bidirectional encoder makes ``y_t`` depend on the whole sequence).
      output_size, input_size, vocab_size, embed_dim: as for :func:`many_to_one`.

    Returns:
      A :class:`Model` with params :class:`ModelParams` and
      ``apply(params, xs[T, I] or ids[T], length=None, *, rng=None) -> [T, output_size]``;
      outputs at padded steps (``t >= length``) are zero.
    """
    init, encode = _encoder_model("many_to_many", encoder, output_size, input_size,
                                  vocab_size, embed_dim)

    def apply(params, xs, length=None, *, rng=None):
        out = dense(params.head, encode(params, xs, length, rng))
        if length is None:
            return out
        valid = jnp.arange(out.shape[0], dtype=jnp.int32) < jnp.asarray(length, jnp.int32)
        return jnp.where(valid[:, None], out, jnp.zeros((), out.dtype))

    return Model(init, apply)


def _sample(logits, key, temperature, greedy):
    if greedy:
        return jnp.argmax(logits).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature.astype(logits.dtype)).astype(jnp.int32)


def _temperature(temperature, greedy, name):
    if greedy:
        return jnp.ones((), jnp.float32), True
    if isinstance(temperature, numbers.Real) and not isinstance(temperature, bool):
        if temperature < 0 or not math.isfinite(temperature):
            raise ValueError(f"{name}: temperature must be a finite number >= 0, got {temperature}")
        if temperature == 0:
            return jnp.ones((), jnp.float32), True
        return jnp.asarray(temperature, jnp.float32), False
    temperature = jnp.asarray(temperature)
    if temperature.ndim != 0 or not jnp.issubdtype(temperature.dtype, jnp.floating):
        raise TypeError(f"{name}: temperature must be a float scalar, got {temperature!r}")
    return temperature, False


@_described
def one_to_many(cell, vocab_size: int, embed_dim: int, *,
                context_size: Optional[int] = None, start_id: int = 0) -> LanguageModel:
    """One to many: a next-token model that generates from one input or a context.

    .. math::
        h_0 = 0 \\text{ or } W_c c + b_c, \\quad
        h_t = f(h_{t-1}, E[x_t]), \\quad
        p(x_{t+1} \\mid x_{\\le t}) = \\mathrm{softmax}(W_{hy} h_t + b)

    Trained with teacher forcing (:func:`seqjax.losses.softmax_cross_entropy` of
    ``apply(params, tokens)[:-1]`` against ``tokens[1:]``); a character-level
    language model is this with ``V`` characters. ``generate`` feeds each sampled
    token back as the next input (one to many: ``y_{t-1}`` is the input at step
    ``t``).

    Args:
      cell: a :class:`~seqjax.Cell` or stack of cells (generation steps the cell one
        token at a time, so a bidirectional model is not allowed).
      vocab_size: ``V``.
      embed_dim: ``E``, the cell's input size.
      context_size: if given, the model also accepts a context vector ``c
        [context_size]`` (an image feature, an encoder summary) mapped to the
        initial state by a learned affine bridge (:func:`vector_to_state` layout).
      start_id: the token fed first when generating from a context alone.

    Returns:
      A :class:`LanguageModel` with params :class:`LanguageModelParams`:

      * ``apply(params, tokens[T], length=None, *, context=None, rng=None) ->
        logits[T, V]``; ``logits[t]`` predicts ``tokens[t + 1]``.
      * ``generate(params, key, prompt_or_context, steps, *, temperature=1.0,
        greedy=False) -> tokens[steps]`` (int32, not including the prompt):
        ``prompt_or_context`` is either integer token ids (a scalar, one input, or
        ``[P]``, ``P >= 1``; the cell reads them, then generation continues from
        the last one) or a floating context vector ``[context_size]`` (then the
        first input is ``start_id``). Each token is drawn from
        ``softmax(logits / temperature)`` with keys split from ``key`` (same key,
        same tokens); ``greedy=True`` or ``temperature=0`` takes the argmax. The
        loop is a ``lax.scan`` compiled once per ``(steps, greedy)`` and shapes.
    """
    _check_model(cell, "one_to_many", "cell", cell_only=True)
    vocab_size = _checks.positive_int(vocab_size, "vocab_size")
    embed_dim = _checks.positive_int(embed_dim, "embed_dim")
    if context_size is not None:
        context_size = _checks.positive_int(context_size, "context_size")
    _token_id(start_id, vocab_size, "one_to_many: start_id")
    template = _state_template(cell, embed_dim)
    state_size = _state_size(template)

    def init(key):
        k_e, k_c, k_h, k_b = jax.random.split(key, 4)
        bridge = None if context_size is None else dense_init(k_b, context_size, state_size)
        return LanguageModelParams(embedding_init(k_e, vocab_size, embed_dim),
                                   cell.init(k_c, embed_dim),
                                   dense_init(k_h, cell.output_size, vocab_size), bridge)

    def initial_state(params, context):
        if context is None:
            return None
        return vector_to_state(dense(params.bridge, context), template)

    def check_context(params, context, name):
        if context is None:
            return
        if params.bridge is None:
            raise ValueError(f"{name}: a context vector needs a model built with context_size")
        dtype = getattr(context, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or context.ndim != 1 \
                or context.shape[0] != context_size:
            raise ValueError(f"{name}: expected a floating context of shape [{context_size}], "
                             f"got {dtype} {tuple(jnp.shape(context))}")

    def apply(params, tokens, length=None, *, context=None, rng=None):
        tokens = _token_sequence(tokens, vocab_size, "one_to_many.apply: tokens")
        check_context(params, context, "one_to_many.apply")
        xs = embed(params.embedding, tokens)
        _, ys = unroll(cell, params.cell, xs, initial_state(params, context), length=length,
                       rng=rng)
        return dense(params.head, ys)

    @functools.partial(jax.jit, static_argnames=("steps", "greedy"))
    def _generate(params, key, prompt, context, temperature, steps, greedy):
        state = initial_state(params, context)
        state, ys = unroll(cell, params.cell, jnp.take(params.embedding, prompt, axis=0), state)
        keys = jax.random.split(key, steps)

        def body(carry, k):
            state, logits = carry
            token = _sample(logits, k, temperature, greedy)
            state, y = cell.apply(params.cell, state, jnp.take(params.embedding, token, axis=0))
            return (state, dense(params.head, y)), token

        _, tokens = lax.scan(body, (state, dense(params.head, ys[-1])), keys)
        return tokens

    def generate(params, key, prompt_or_context, steps, *, temperature=1.0, greedy=False):
        steps = _checks.positive_int(steps, "steps")
        temperature, greedy = _temperature(temperature, greedy, "generate")
        dtype = getattr(prompt_or_context, "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
            check_context(params, prompt_or_context, "generate")
            context, prompt = prompt_or_context, jnp.full((1,), start_id, jnp.int32)
        else:
            context = None
            prompt = _check_ids(prompt_or_context, vocab_size, "generate: prompt")
            prompt = prompt.reshape((1,)) if prompt.ndim == 0 else prompt
            if prompt.ndim != 1 or prompt.shape[0] == 0:
                raise ValueError(f"generate: prompt must be a token id or ids [P] with P >= 1, "
                                 f"got shape {tuple(prompt.shape)}")
        return _generate(params, key, prompt.astype(jnp.int32), context, temperature,
                         steps=steps, greedy=greedy)

    return LanguageModel(init, apply, generate)


@_described
def seq2seq(encoder, decoder, *, src_vocab: int, tgt_vocab: int, embed_dim: int,
            start_id: int, end_id: int, pad_id: int = 0,
            bridge: Optional[bool] = None) -> Seq2Seq:
    """Encoder-decoder: the encoder's final state is the context vector and the
    decoder's initial state.

    .. math::
        h^{enc}_s &= f_{enc}(h^{enc}_{s-1}, E_{src}[x_s]), \\quad c = h^{enc}_{S} \\\\
        h^{dec}_0 &= c \\;(\\text{or } W_c\\,\\mathrm{vec}(c) + b_c), \\quad
        h^{dec}_t = f_{dec}(h^{dec}_{t-1}, E_{tgt}[y_{t-1}]), \\quad y_0 = \\mathrm{START} \\\\
        p(y_t \\mid y_{<t}, x) &= \\mathrm{softmax}(W_{hy} h^{dec}_t + b)

    ``c`` is the encoder state after ``src_len`` steps (padding never reaches it).

    Args:
      encoder: a :class:`~seqjax.Cell` or :class:`~seqjax.SequenceModel` (stack,
        bidirectional; a bidirectional model's final state is ``(forward,
        backward)``, the backward one after reading ``src[0]``).
      decoder: a :class:`~seqjax.Cell` (or stack of cells); it is stepped one token
        at a time when decoding.
      src_vocab, tgt_vocab: vocabulary sizes.
      embed_dim: embedding size of both vocabularies (the input size of both sides).
      start_id: START token, the decoder's first input.
      end_id: END token; greedy decoding stops once it is emitted.
      pad_id: token written after END by ``greedy_decode``.
      bridge: how ``c`` becomes the decoder's initial state. ``None`` (default): the
        identity when the encoder's final state has the decoder state's structure,
        shapes and dtypes (e.g. LSTM to LSTM of the same size, as in Sutskever et al.),
        otherwise a learned affine map from :func:`state_to_vector` of the final
        state(s) to the decoder state, split in :func:`vector_to_state` order
        (for a bidirectional encoder: the concatenated forward and backward final
        states). ``True`` forces the affine bridge; ``False`` forces the identity
        and raises if the states differ.

    Returns:
      A :class:`Seq2Seq` with params :class:`Seq2SeqParams`:

      * ``apply(params, src[S], src_len, tgt_in[T], *, rng=None) -> logits[T, V]``,
        teacher forcing: ``tgt_in`` starts with START (:func:`shift_right`),
        ``logits[t]`` predicts the target at ``t``. ``src_len=None`` means ``S``.
      * ``greedy_decode(params, src[S], src_len, max_len) -> (tokens[max_len],
        length)``: argmax decoding, each prediction fed back as the next input, in a
        compiled ``lax.while_loop`` that stops at the first END (or after
        ``max_len`` steps). ``tokens`` holds the output up to and including END,
        then ``pad_id``; ``length`` (int32) counts the tokens up to and including
        END, ``max_len`` when END never came. ``jax.vmap`` it for a batch: output
        lengths differ per example and the loop runs until every example is done.
      * ``encode(params, src, src_len) -> state``: the decoder's initial state.

    Raises:
      TypeError: the decoder is not a Cell.
      ValueError: ``bridge=False`` with incompatible states; bad sizes or ids.

    References:
      Sutskever, Vinyals & Le, "Sequence to sequence learning with neural
      networks", NeurIPS 2014; Cho et al., EMNLP 2014.
    """
    _check_model(encoder, "seq2seq")
    _check_model(decoder, "seq2seq", "decoder", cell_only=True)
    src_vocab = _checks.positive_int(src_vocab, "src_vocab")
    tgt_vocab = _checks.positive_int(tgt_vocab, "tgt_vocab")
    embed_dim = _checks.positive_int(embed_dim, "embed_dim")
    for name, value in (("start_id", start_id), ("end_id", end_id), ("pad_id", pad_id)):
        _token_id(value, tgt_vocab, f"seq2seq: {name}")
    enc_template = _state_template(encoder, embed_dim)
    dec_template = _state_template(decoder, embed_dim)
    same = _same_structure(enc_template, dec_template)
    if bridge is False and not same:
        raise ValueError(
            "seq2seq(bridge=False): the encoder's final state must match the decoder's "
            f"state; encoder {_describe(enc_template)}, decoder {_describe(dec_template)}. "
            "Use bridge=None/True for a learned affine bridge.")
    use_bridge = bool(bridge) or not same
    enc_size, dec_size = _state_size(enc_template), _state_size(dec_template)

    def init(key):
        k_s, k_t, k_e, k_b, k_d, k_h = jax.random.split(key, 6)
        return Seq2SeqParams(
            embedding_init(k_s, src_vocab, embed_dim),
            embedding_init(k_t, tgt_vocab, embed_dim),
            encoder.init(k_e, embed_dim),
            dense_init(k_b, enc_size, dec_size) if use_bridge else None,
            decoder.init(k_d, embed_dim),
            dense_init(k_h, decoder.output_size, tgt_vocab))

    def encode(params, src, src_len=None, *, rng=None):
        src = _token_sequence(src, src_vocab, "seq2seq: src")
        final, _ = unroll(encoder, params.encoder, embed(params.src_embedding, src),
                          length=src_len, rng=rng)
        if params.bridge is None:
            return final
        return vector_to_state(dense(params.bridge, state_to_vector(final)), dec_template)

    def apply(params, src, src_len, tgt_in, *, rng=None):
        k_enc, k_dec = _split(rng, 2)
        state = encode(params, src, src_len, rng=k_enc)
        tgt_in = _token_sequence(tgt_in, tgt_vocab, "seq2seq: tgt_in")
        _, ys = unroll(decoder, params.decoder, embed(params.tgt_embedding, tgt_in), state,
                       rng=k_dec)
        return dense(params.head, ys)

    @functools.partial(jax.jit, static_argnames=("max_len",))
    def _decode(params, src, src_len, max_len):
        state = encode(params, src, src_len)

        def running(carry):
            t, _, _, done, _ = carry
            return jnp.logical_and(t < max_len, jnp.logical_not(done))

        def step(carry):
            t, state, prev, _, tokens = carry
            state, y = decoder.apply(params.decoder, state,
                                     jnp.take(params.tgt_embedding, prev, axis=0))
            token = jnp.argmax(dense(params.head, y)).astype(jnp.int32)
            tokens = lax.dynamic_update_index_in_dim(tokens, token, t, axis=0)
            return t + 1, state, token, token == end_id, tokens

        carry = (jnp.zeros((), jnp.int32), state, jnp.int32(start_id), jnp.zeros((), bool),
                 jnp.full((max_len,), pad_id, jnp.int32))
        length, _, _, _, tokens = lax.while_loop(running, step, carry)
        return tokens, length

    def greedy_decode(params, src, src_len, max_len):
        max_len = _checks.positive_int(max_len, "max_len")
        src = _token_sequence(src, src_vocab, "seq2seq.greedy_decode: src")
        src_len = _checks.length(src_len, src.shape[0], name="src_len")
        return _decode(params, src, src_len, max_len=max_len)

    return Seq2Seq(init, apply, greedy_decode, encode)
