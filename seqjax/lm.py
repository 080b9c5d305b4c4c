"""Decoder language models from a list of blocks: Mamba, Griffin, xLSTM, Gated DeltaNet,
Transformers and their hybrids, as pure functions.

:func:`language_model` stacks blocks (:mod:`seqjax.blocks`, or any seqjax cell) between
a token embedding and a head::

    model = lm.language_model(vocab_size=256, d_model=128,
                              blocks=["griffin", "griffin", "local_attention"] * 2)
    params = model.init(jax.random.PRNGKey(0))
    logits = model.apply(params, tokens)                  # [T, V], whole sequence
    tokens = model.generate(params, key, prompt, 100)     # prefill, then 100 steps

Training runs every block's whole-sequence form (chunkwise, associative, parallel
attention); ``prefill`` does the same and returns the state (convolution histories,
recurrent states, KV caches); ``step`` advances it by one token. ``generate`` is one
compiled prefill followed by one compiled ``lax.scan`` of ``step``: the decode loop
compiles once per prompt length and number of steps, and its state has a fixed size
(a global attention block keeps ``max_length`` cache slots, a windowed one its window,
a recurrent block its state).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax

from seqjax import _checks
from seqjax.blocks import block as _block
from seqjax.cells.contract import Array, Cell, _getattr, _is_default, _show
from seqjax.layers.attention import KVCache
from seqjax.layers.norms import NormParams, rms_norm
from seqjax.losses import softmax_cross_entropy
from seqjax.models import _check_ids, _sample, _temperature
from seqjax.unroll import unroll


class DecoderParams(NamedTuple):
    """``embed [V, D]``; ``blocks``, one entry per block; ``norm``, the final norm's
    params (``None`` without one); ``head [D, V]``, or ``None`` when the head is the
    embedding transposed (tied)."""

    embed: Array
    blocks: tuple
    norm: Optional[NormParams]
    head: Optional[Array]


class Decoder(NamedTuple):
    """A decoder language model as pure functions, one example per call (batch with
    ``jax.vmap``). See :func:`language_model` for each function's signature.

    Attributes:
      init, apply, initial_state, prefill, step, generate, loss, hidden_gradients: the
        functions.
      blocks: the block cells, in order.
      name, config: the call that built it.
    """

    init: Callable
    apply: Callable
    initial_state: Callable
    prefill: Callable
    step: Callable
    generate: Callable
    loss: Callable
    hidden_gradients: Callable
    blocks: tuple
    name: str = ""
    config: tuple = ()

    def __repr__(self):
        shown = [f"{k}={_show(v)}" for k, v in self.config if k != "source" and (
                 k in ("vocab_size", "d_model") or not _is_default(v, _DEFAULTS.get(k)))]
        return f"language_model({', '.join(shown)})"

    __getattr__ = _getattr


_DEFAULTS = dict(tie_embeddings=True, final_norm=None, embed_scale=None, logits_soft_cap=None,
                 max_length=2048, param_dtype=jnp.float32)


def _resolve(blocks, d_model, max_length, param_dtype):
    cells = []
    for i, b in enumerate(blocks):
        if isinstance(b, str):
            b = _block(b, d_model, max_length=max_length, param_dtype=param_dtype)
        if not isinstance(b, Cell):
            raise TypeError(f"language_model: blocks[{i}] must be a block name or a seqjax "
                            f"Cell, got {type(b).__name__}")
        if b.output_size != d_model:
            raise ValueError(f"language_model: blocks[{i}] ({b!r}) outputs {b.output_size} "
                             f"features, not d_model = {d_model}")
        key = jax.ShapeDtypeStruct((2,), jnp.uint32)
        dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(
            jax.eval_shape(lambda k, b=b: b.init(k, d_model), key))}
        if dtypes - {jnp.dtype(param_dtype)}:
            raise ValueError(
                f"language_model: blocks[{i}] ({b!r}) builds {sorted(d.name for d in dtypes)} "
                f"params, but param_dtype is {jnp.dtype(param_dtype).name}; build the block "
                f"with param_dtype={jnp.dtype(param_dtype).name} (a block in another dtype "
                "would compute in it)")
        cells.append(b)
    if not cells:
        raise ValueError("language_model: blocks must name at least one block")
    return tuple(cells)


def _capacity(state) -> Optional[int]:
    """The fewest KV-cache slots of a global attention block in ``state`` (None: no
    global attention, so decoding is not limited)."""
    sizes = [leaf.k.shape[0] for leaf in jax.tree_util.tree_leaves(
        state, is_leaf=lambda x: isinstance(x, KVCache)) if isinstance(leaf, KVCache)]
    return min(sizes) if sizes else None


def language_model(
    vocab_size: int,
    d_model: int,
    blocks: Sequence[Union[str, Cell]],
    *,
    tie_embeddings: bool = True,
    final_norm: Optional[Cell] = None,
    embed_scale: Optional[float] = None,
    logits_soft_cap: Optional[float] = None,
    max_length: int = 2048,
    param_dtype=jnp.float32,
    source: Optional[dict] = None,
) -> Decoder:
    """A decoder language model: embedding, blocks, final norm, head.

    .. math::
        x^{(0)}_t = s\\, E[\\text{token}_t], \\quad
        x^{(l)} = \\mathrm{block}_l(x^{(l-1)}), \\quad
        \\text{logits}_t = c \\tanh\\big(\\mathrm{norm}(x^{(L)}_t) W / c\\big)

    with ``W = E^T`` (tied) or a separate head, ``s = embed_scale`` (RecurrentGemma
    scales by ``sqrt(D)``) and the soft cap ``c`` optional.

    Args:
      vocab_size: ``V``.
      d_model: ``D``.
      blocks: block names (:func:`seqjax.blocks.names`: ``"mamba"``, ``"mamba2"``,
        ``"griffin"``, ``"local_attention"``, ``"mlstm"``, ``"slstm"``,
        ``"deltanet"``, ``"gated_deltanet"``, ``"attention"``, or a seqjax cell such
        as ``"lstm"``) or block cells, in order; ``["griffin", "griffin",
        "local_attention"] * 4`` is a Griffin hybrid.
      tie_embeddings: the head is the embedding transposed.
      final_norm: the norm before the head (a stateless cell of width ``D``);
        ``None``: RMSNorm (eps 1e-6).
      embed_scale: ``s``, or ``None`` for 1.
      logits_soft_cap: ``c``, or ``None`` for no cap.
      max_length: KV-cache slots of global attention blocks built from names (the
        longest sequence they decode); windowed and recurrent blocks ignore it.
      param_dtype: dtype of the params (blocks built from names and the embedding).
      source: where the model comes from, kept for tools that need it
        (:func:`seqjax.interop.hf.load` stores ``{"hf_config": config}``, which
        :func:`seqjax.interop.hf.save` writes back); not shown in the repr.

    Returns:
      A :class:`Decoder` with params :class:`DecoderParams`:

      * ``init(key) -> params``;
      * ``apply(params, tokens [T], *, length=None) -> logits [T, V]``:
        ``logits[t]`` predicts ``tokens[t + 1]``; every block's whole-sequence form;
        with ``length``, steps from ``length`` on are padding (their logits are the
        head of zeros);
      * ``initial_state(params)``: every block's state;
      * ``prefill(params, tokens [T], state=None, *, length=None) -> (logits [T, V],
        state)``: ``apply`` that also returns the state after the last valid token
        (``state``: continue from it, e.g. a chunked prefill);
      * ``step(params, token, state) -> (logits [V], state)``: one token;
      * ``generate(params, key, prompt [P], steps, *, temperature=1.0, greedy=False)
        -> tokens [steps]`` (int32, without the prompt): one prefill, then ``steps``
        tokens drawn from ``softmax(logits / temperature)`` (argmax with ``greedy``
        or ``temperature=0``) in one compiled loop;
      * ``loss(params, tokens [T], *, length=None) -> scalar``: the mean next-token
        cross-entropy over the valid steps;
      * ``hidden_gradients(params, tokens [T], *, length=None, loss_fn=None) -> (loss,
        grads [L + 1, T, D])``: ``dL/dx^{(l)}_t`` for the embedding (``l = 0``) and
        every block's output, in one backward pass. A zero perturbation is added to
        each and the loss (``loss_fn(logits, tokens, length)``, default the
        next-token cross-entropy) differentiated w.r.t. it, so every path from
        ``x^{(l)}_t`` counts: through later steps, inside the blocks, and up the
        stack.
    """
    V = _checks.positive_int(vocab_size, "vocab_size")
    D = _checks.positive_int(d_model, "d_model")
    max_length = _checks.positive_int(max_length, "max_length")
    cells = _resolve(blocks, D, max_length, param_dtype)
    norm = rms_norm(D, eps=1e-6, param_dtype=param_dtype) if final_norm is None else final_norm
    if not isinstance(norm, Cell) or norm.output_size != D:
        raise ValueError(f"language_model: final_norm must be a stateless cell of width {D}")
    if logits_soft_cap is not None and not logits_soft_cap > 0:
        raise ValueError(f"language_model: logits_soft_cap must be positive or None, got "
                         f"{logits_soft_cap!r}")
    config = tuple(dict(vocab_size=vocab_size, d_model=d_model, blocks=tuple(blocks),
                        tie_embeddings=tie_embeddings, final_norm=final_norm,
                        embed_scale=embed_scale, logits_soft_cap=logits_soft_cap,
                        max_length=max_length, param_dtype=param_dtype,
                        source=source).items())

    def init(key):
        keys = jax.random.split(key, len(cells) + 2)
        embed = (jax.random.normal(keys[0], (V, D), jnp.float32) * D ** -0.5).astype(param_dtype)
        head = None if tie_embeddings else (
            jax.random.normal(keys[1], (D, V), jnp.float32) * D ** -0.5).astype(param_dtype)
        return DecoderParams(embed, tuple(c.init(k, D) for c, k in zip(cells, keys[2:])),
                             norm.init(keys[1], D), head)

    def initial_state(params):
        return tuple(c.initial_state(p) for c, p in zip(cells, params.blocks))

    def embed(params, tokens):
        x = jnp.take(params.embed, tokens, axis=0)
        if embed_scale is not None:
            x = x * jnp.asarray(embed_scale, x.dtype)
        return x

    def logits_of(params, x):
        x = norm.parallel(params.norm, x, (), None, None)[1]
        head = params.embed.T if params.head is None else params.head
        # float32 logits (as transformers returns them), float64 in a float64 model
        wide = x.dtype if jnp.dtype(x.dtype).itemsize > 4 else jnp.dtype(jnp.float32)
        logits = (x @ head.astype(x.dtype)).astype(wide)
        if logits_soft_cap is not None:
            logits = logits_soft_cap * jnp.tanh(logits / logits_soft_cap)
        return logits

    def tokens_of(tokens, name):
        tokens = _check_ids(tokens, V, name)
        if tokens.ndim != 1:
            raise ValueError(f"{name}: expected token ids of shape [T] (one sequence; batch "
                             f"with jax.vmap), got shape {tuple(tokens.shape)}")
        return tokens

    def forward(params, tokens, state, length, eps=None):
        """Logits and final states; ``eps [L + 1, T, D]`` is added to the embedding and
        to each block's output (see :func:`hidden_gradients`)."""
        x = embed(params, tokens)
        if eps is not None:
            x = x + eps[0].astype(x.dtype)
        states = (None,) * len(cells) if state is None else state
        finals = []
        for i, (c, p, s) in enumerate(zip(cells, params.blocks, states)):
            final, x = unroll(c, p, x, s, length=length)
            if eps is not None:
                x = x + eps[i + 1].astype(x.dtype)
            finals.append(final)
        return logits_of(params, x), tuple(finals)

    def prefill(params, tokens, state=None, *, length=None):
        tokens = tokens_of(tokens, "language_model.prefill: tokens")
        return forward(params, tokens, state, length)

    def apply(params, tokens, *, length=None):
        return prefill(params, tokens, length=length)[0]

    def step(params, token, state):
        token = _check_ids(token, V, "language_model.step: token")
        x = embed(params, token.reshape(()))
        finals = []
        for c, p, s in zip(cells, params.blocks, state):
            s, x = c.apply(p, s, x)
            finals.append(s)
        return logits_of(params, x), tuple(finals)

    def next_token_loss(logits, tokens, length):
        valid = None if length is None else (
            jnp.arange(logits.shape[0] - 1, dtype=jnp.int32) < jnp.asarray(length, jnp.int32) - 1)
        return softmax_cross_entropy(logits[:-1], tokens[1:], valid)

    def loss(params, tokens, *, length=None):
        return next_token_loss(apply(params, tokens, length=length), tokens, length)

    def hidden_gradients(params, tokens, *, length=None, loss_fn=None):
        tokens = tokens_of(tokens, "language_model.hidden_gradients: tokens")
        score = next_token_loss if loss_fn is None else loss_fn

        def total(eps):
            return score(forward(params, tokens, None, length, eps)[0], tokens, length)

        eps = jnp.zeros((len(cells) + 1, tokens.shape[0], D), params.embed.dtype)
        return jax.value_and_grad(total)(eps)

    @functools.partial(jax.jit, static_argnames=("steps", "greedy"))
    def _generate(params, key, prompt, temperature, steps, greedy):
        logits, state = prefill(params, prompt)
        keys = jax.random.split(key, steps)

        def body(carry, k):
            state, logits = carry
            token = _sample(logits, k, temperature, greedy)
            state_logits = step(params, token, state)
            return (state_logits[1], state_logits[0]), token

        _, out = lax.scan(body, (state, logits[-1]), keys)
        return out

    def generate(params, key, prompt, steps, *, temperature=1.0, greedy=False):
        steps = _checks.positive_int(steps, "steps")
        temperature, greedy = _temperature(temperature, greedy, "generate")
        prompt = _check_ids(prompt, V, "generate: prompt")
        prompt = prompt.reshape((1,)) if prompt.ndim == 0 else prompt
        if prompt.ndim != 1 or prompt.shape[0] < 1:
            raise ValueError(f"generate: prompt must be token ids [P] with P >= 1, got shape "
                             f"{tuple(prompt.shape)}")
        capacity = _capacity(jax.eval_shape(initial_state, params))
        if capacity is not None and prompt.shape[0] + steps > capacity:
            raise ValueError(
                f"generate: a prompt of {prompt.shape[0]} tokens and {steps} steps need "
                f"{prompt.shape[0] + steps} positions, but a global attention block keeps "
                f"{capacity} (max_length); build the model with a larger max_length")
        return _generate(params, key, prompt.astype(jnp.int32), temperature, steps, greedy)

    return Decoder(init, apply, initial_state, prefill, step, generate, loss,
                   hidden_gradients, cells, "language_model", config)
