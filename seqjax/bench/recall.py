"""``seqjax bench recall``: multi-query associative recall (MQAR) by block and state size.

Zoology's probe (Arora et al. 2023, arXiv:2312.04927): every block is trained as a
2-layer language model on :func:`seqjax.tasks.mqar` over a grid of ``d_model`` x
sequence length ``T`` x key-value pairs ``N``, with a learning-rate sweep per cell of
the grid, and is reported with its accuracy on held-out examples and its **recurrent
state size in bytes** -- the axis along which Zoology argues recall is decided.

What is trained (one model per block, ``d_model``, ``T``, ``N`` and learning rate):

* the model: :func:`seqjax.lm.language_model` (token embedding, 2 blocks, RMSNorm,
  tied head), one example per call and ``jax.vmap`` over the batch;
* the blocks: as Zoology's figure-2 models, **no MLP** (``state_mixer =
  torch.nn.Identity``): each block is a pre-norm residual around its family's mixer
  (:func:`recall_block`): softmax attention with one head (Zoology's), Griffin's
  recurrent block, Mamba's and Mamba-2's mixers, the mLSTM and sLSTM layers, the
  DeltaNet and Gated DeltaNet layers, or a seqjax cell (``lstm``, ``gru``). With
  ``--mlp`` the published blocks of :func:`seqjax.blocks.block` are used instead (with
  their MLPs). ``a+b`` names a hybrid whose layers alternate ``a``, ``b``;
* the optimizer: AdamW (weight decay 0.1 on every parameter, as torch's AdamW over
  ``model.parameters()``), peak learning rate ``lr`` on a cosine schedule to 0 over
  the run's steps, no warm-up (Zoology's ``CosineAnnealingLR``), no gradient clipping;
* the data: a fresh batch from :func:`seqjax.tasks.mqar` every step (Zoology draws a
  fixed training set of 100,000 examples and runs 64 epochs over it) with the gaps
  filled by 0 (figure 2's ``random_non_queries=False``); the loss is the
  cross-entropy at the query positions only;
* early stopping: every ``eval_every`` steps the accuracy on a validation set is
  measured, and a run stops once it reaches ``stop_accuracy`` (0.99, Zoology's
  threshold); a run whose loss is no longer finite stops as diverged;
* the sweep: the learning rates run in the order given; once one reaches
  ``stop_accuracy`` on the held-out set, the rest are skipped (the best of the sweep
  is then already within 0.01 of 1) unless ``--no-sweep-stop``;
* the result: accuracy on ``eval_examples`` held-out examples (a key no training or
  validation batch uses), the fraction of queries whose argmax is the value, best
  over the learning rates (as Zoology's figure takes the best run per point).

How it runs: with ``--jobs`` above 1 (the default on a CPU with two or more cores) the
points run in that many worker processes, one thread each
(``--xla_cpu_multi_thread_eigen=false``), started on Linux with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (:func:`worker_environment`; off with
``--no-huge-pages``): XLA:CPU allocates fresh buffers every step, and transparent huge
pages save the kernel faulting them in 4 KiB at a time. Results do not depend on
either; times do.

The state size is ``jax.eval_shape(model.initial_state, params)``: every leaf of the
decoding state of one sequence, summed over both layers -- the KV cache of an
attention layer (``T`` slots, or the window of a local one, plus its position
counter), the convolution histories and recurrent states of the others. It is what a
model carries from one token to the next when it decodes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import json
import math
import os
import pathlib
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import seqjax
from seqjax import _cli
from seqjax.bench import _common

# ----------------------------------------------------------------------------- grids

# the blocks of the issue: every published family, two classic cells and a hybrid
DEFAULT_BLOCKS = ("attention", "local_attention", "mamba", "mamba2", "griffin", "mlstm",
                  "slstm", "deltanet", "gated_deltanet", "lstm", "gru",
                  "griffin+local_attention")

ZOOLOGY_LRS = tuple(float(v) for v in np.logspace(-4, -2, 4))  # 1e-4 ... 1e-2


@dataclasses.dataclass(frozen=True)
class Setting:
    """One panel of the figure: a sequence length, its number of key-value pairs, and
    how long a model trains on it."""

    length: int
    pairs: int
    batch: int
    steps: int


@dataclasses.dataclass(frozen=True)
class Grid:
    """A recall grid: the vocabulary, the panels, the widths, the blocks, the sweep."""

    vocab: int
    settings: tuple
    d_models: tuple
    blocks: tuple
    lrs: tuple
    eval_examples: int = 1000
    valid_examples: int = 256
    eval_every: int = 100
    window: int = 32
    note: str = ""


def _zoology_steps(batch: int) -> int:
    """Zoology's budget: 64 epochs over 100,000 training examples."""
    return 64 * 100_000 // batch


GRIDS = {
    # a smoke run (CI): two blocks, two widths, one panel, a few steps
    "tiny": Grid(vocab=32, settings=(Setting(16, 2, 16, 30),), d_models=(16, 32),
                 blocks=("attention", "gru"), lrs=(3e-3, 1e-2),
                 eval_examples=64, valid_examples=32, eval_every=15, window=8,
                 note="smoke run: too few steps to learn anything"),
    # the default: under 15 minutes on 2 CPU cores (docs/bench/recall.md states the run's
    # time). One panel: a second one at T=64 doubles the cost of every step. 400 steps:
    # the same grid at 800 steps took 1,210 s on an idle machine, and 500 steps took
    # 1,224 s (20 min) on the same machine while it ran 1.3-1.5x slower; the Mamba and
    # Mamba-2 models are half the work (0.1-0.2 s per step at D = 32, twice at D = 64)
    "default": Grid(vocab=128, settings=(Setting(32, 4, 64, 400),),
                    d_models=(32, 64), blocks=DEFAULT_BLOCKS, lrs=(3e-3, 1e-2),
                    eval_examples=1000, valid_examples=256, eval_every=100, window=16,
                    note="a small grid for a 2-core CPU: V=128, T=32, N=4"),
    # Zoology's figure 2 (arXiv:2312.04927; zoology/experiments/iclr24_zoology_figure2)
    "full": Grid(vocab=8192, settings=tuple(
        Setting(t, n, b, _zoology_steps(b))
        for t, n, b in ((64, 4, 512), (128, 8, 512), (256, 16, 256), (512, 64, 128))),
        d_models=(64, 128, 256, 512), blocks=DEFAULT_BLOCKS, lrs=ZOOLOGY_LRS,
        eval_examples=3000, valid_examples=1000, eval_every=500, window=64,
        note="Zoology's figure-2 grid (V=8192; batch 512/512/256/128; 64 epochs of "
             "100,000 examples)"),
}


# ----------------------------------------------------------------------------- models


def _module(name):
    return importlib.import_module(name)


def _rms_residual(mixer):
    from seqjax.blocks import residual

    return residual(mixer)


def _attention_mixer(d_model, length, window):
    layers = _module("seqjax.layers.attention")
    return layers.attention(d_model, 1, max_length=length, rope=layers.rotary(d_model))


def _local_attention_mixer(d_model, length, window):
    # Griffin's local attention: one key/value head, rotary on half of each head, an
    # output bias, a sliding window
    layers = _module("seqjax.layers.attention")
    rotated = 2 * (d_model // 4)
    return layers.attention(d_model, 1, num_kv_heads=1, window=window, max_length=length,
                            rope=layers.rotary(rotated) if rotated else None,
                            out_bias=True)


def _griffin_mixer(d_model, length, window):
    return _module("seqjax.blocks.griffin").recurrent_block(d_model)


def _mlstm_mixer(d_model, length, window):
    # one head per 64 channels: xLSTM 7B's 8 heads would leave heads of 4 channels
    return _module("seqjax.blocks.xlstm").mlstm_layer(d_model, num_heads=max(1, d_model // 64))


def _slstm_mixer(d_model, length, window):
    return _module("seqjax.blocks.xlstm").slstm_layer(d_model)


def _deltanet_mixer(d_model, length, window):
    return _module("seqjax.blocks.delta").deltanet_layer(d_model)


def _gated_deltanet_mixer(d_model, length, window):
    return _module("seqjax.blocks.delta").gated_deltanet_layer(d_model)


# name -> (mixer constructor, what the row says): Zoology's no-MLP block of each
# family, a pre-norm residual (RMSNorm) around the family's own mixer. The published
# Mamba and Mamba-2 blocks and the seqjax cells have no MLP and are used as they are.
MIXERS = {
    "attention": (_attention_mixer, "softmax attention, 1 head, rotary"),
    "local_attention": (_local_attention_mixer,
                        "sliding-window MQA (Griffin's), 1 head, rotary on half"),
    "griffin": (_griffin_mixer, "Griffin recurrent block (conv + RG-LRU)"),
    "mlstm": (_mlstm_mixer, "mLSTM layer, one head per 64 channels"),
    "slstm": (_slstm_mixer, "sLSTM layer (conv, 4 heads, group norm)"),
    "deltanet": (_deltanet_mixer, "DeltaNet layer (short convs, L2-normalised q, k)"),
    "gated_deltanet": (_gated_deltanet_mixer, "Gated DeltaNet layer"),
}


def layer_names(spec: str, layers: int = 2) -> list:
    """The block names of a model spec (2 layers unless told):
    :func:`seqjax.bench._common.layer_names`."""
    return _common.layer_names(spec, layers)


def recall_block(name: str, d_model: int, *, length: int, window: int,
                 mlp: bool = False) -> seqjax.Cell:
    """One layer of a recall model.

    Args:
      name: a name of :func:`seqjax.blocks.names`.
      d_model: ``D``.
      length: ``T``; a global attention layer keeps ``T`` cache slots.
      window: the sliding window of ``local_attention``.
      mlp: use the published block (with its MLP) rather than Zoology's MLP-free one.

    Returns:
      A :class:`~seqjax.Cell` from ``D`` to ``D`` features.
    """
    from seqjax.blocks import block, names

    if name not in names():
        raise ValueError(f"unknown block {name!r}; choose from {', '.join(names())}")
    if mlp or name not in MIXERS:
        options = {"max_length": length}
        if name == "local_attention":
            options["window"] = window
        return block(name, d_model, **options)
    return _rms_residual(MIXERS[name][0](d_model, length, window))


def recall_model(spec: str, vocab_size: int, d_model: int, *, length: int, window: int,
                 mlp: bool = False, layers: int = 2):
    """The language model of ``spec`` (:func:`layer_names`) for MQAR."""
    cells = [recall_block(n, d_model, length=length, window=window, mlp=mlp)
             for n in layer_names(spec, layers)]
    return seqjax.lm.language_model(vocab_size, d_model, blocks=cells, max_length=length)


def state_bytes(model, params) -> list:
    """Bytes of each layer's decoding state for one sequence (``initial_state``'s
    leaves, by shape and dtype; nothing is allocated)."""
    state = jax.eval_shape(model.initial_state, params)
    return [int(sum(np.prod(leaf.shape, dtype=np.int64) * np.dtype(leaf.dtype).itemsize
                    for leaf in jax.tree_util.tree_leaves(s))) for s in state]


def param_count(params) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


# ----------------------------------------------------------------------------- training


def optimizer(lr: float, steps: int, weight_decay: float = 0.1):
    """AdamW with peak ``lr`` on a cosine schedule to 0 over ``steps``. The peak is a
    hyperparameter in the optimizer's state (``inject_hyperparams``), so one compiled
    step serves every learning rate of a sweep."""
    unit = optax.cosine_decay_schedule(1.0, max(int(steps), 1))
    return optax.chain(optax.adamw(unit, weight_decay=weight_decay),
                       optax.inject_hyperparams(optax.scale)(step_size=lr))


@dataclasses.dataclass
class _Data:
    """What every model of one (V, T, N, batch) setting trains and is scored on."""

    task: object
    sample: object  # (key) -> Recall batch [batch, T]
    valid: object  # Recall [batches, batch, T]: early stopping
    test: object  # Recall [batches, batch, T]: the reported accuracy


@functools.lru_cache(maxsize=None)
def _data(vocab, length, pairs, batch, valid_examples, eval_examples, random_fill, seed):
    task = seqjax.tasks.mqar(vocab, length, pairs, random_fill=random_fill)
    # training batches use fold_in(k_train, step); these keys are never among them
    k_valid, k_test = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 1))

    @functools.partial(jax.jit, static_argnums=1)
    def draw(key, n):
        batches = -(-n // batch)  # whole batches
        keys = jax.random.split(key, batches * batch).reshape(batches, batch, -1)
        return jax.vmap(jax.vmap(task.sample))(keys)

    sample = jax.jit(lambda key: jax.vmap(task.sample)(jax.random.split(key, batch)))
    return _Data(task, sample, draw(k_valid, valid_examples), draw(k_test, eval_examples))


def _score(step, params, opt_state, data, key) -> float:
    """Mean accuracy over held-out batches ``data [batches, batch, T]``, read from the
    compiled train step's metrics (its forward pass, before the update, which is
    discarded): scoring needs no second compilation."""
    total = []
    for i in range(data.tokens.shape[0]):
        batch = jax.tree_util.tree_map(lambda a: a[i], data)
        total.append(step(params, opt_state, batch, key)[2]["accuracy"])
    return float(np.mean(jax.device_get(total)))


def train_cell(spec: str, d_model: int, setting: Setting, *, vocab: int, lrs: Sequence[float],
               window: int, mlp: bool = False, layers: int = 2, eval_examples: int = 1000,
               valid_examples: int = 256, eval_every: int = 100, stop_accuracy: float = 0.99,
               sweep_stop: bool = True, random_fill: bool = False, weight_decay: float = 0.1,
               seed: int = 0, bar=None) -> dict:
    """Trains ``spec`` at one point of the grid, once per learning rate.

    Every learning rate starts from the same initial params and sees the same batches;
    one compiled train step serves them all (the rate lives in the optimizer state,
    :func:`optimizer`). The held-out accuracies are read from that step's metrics on
    held-out batches, with its update discarded (:func:`_score`).

    Args:
      spec: a block name or ``NAME+NAME`` (:func:`layer_names`).
      d_model: ``D``.
      setting: ``T``, ``N``, batch and most steps.
      bar: a tqdm-like progress bar (``update``, ``set_postfix_str``), or ``None``.
      (the rest: as the command line's options)

    Returns:
      A row: the sizes, ``state_bytes`` (and per layer), ``params``, ``accuracy``
      (best held-out accuracy over the sweep), ``best_lr``, and ``runs``, one dict
      per learning rate (``accuracy``, ``valid_accuracy``, ``steps``, ``stopped``:
      ``"accuracy"``, ``"steps"``, ``"diverged"`` or ``"skipped"``, ``train_s``).
    """
    T, N, B, steps = setting.length, setting.pairs, setting.batch, setting.steps
    row = dict(block=spec, layers=layer_names(spec, layers), mlp=mlp, d_model=d_model,
               length=T, pairs=N, vocab=vocab, batch=B, max_steps=steps, window=window,
               chance=1.0 / N, status="ok", reason=None, runs=[], accuracy=None,
               best_lr=None, state_bytes=None, state_bytes_by_layer=None, params=None,
               compile_s=None, wall_s=None)
    left = len(lrs) * steps

    def advance(n):
        nonlocal left
        if bar is not None and n > 0:
            bar.update(n)
        left -= n

    def show(text):
        if bar is not None:
            bar.set_postfix_str(f"{spec} D{d_model} T{T} N{N} {text}", refresh=False)

    start = time.perf_counter()
    try:
        model = recall_model(spec, vocab, d_model, length=T, window=window, mlp=mlp,
                             layers=layers)
        k_init, k_train = jax.random.split(jax.random.PRNGKey(seed))
        params0 = model.init(k_init)
        row["state_bytes_by_layer"] = state_bytes(model, params0)
        row["state_bytes"] = sum(row["state_bytes_by_layer"])
        row["params"] = param_count(params0)
        data = _data(vocab, T, N, B, valid_examples, eval_examples, random_fill, seed)
        task = data.task

        def loss_fn(params, batch, rng):
            logits = jax.vmap(model.apply, in_axes=(None, 0))(params, batch.tokens)
            loss = jnp.mean(jax.vmap(task.loss)(logits, batch))
            return loss, {"accuracy": jnp.mean(jax.vmap(task.accuracy)(logits, batch))}

        step = seqjax.train.make_train_step(loss_fn, optimizer(lrs[0], steps, weight_decay))
        first = data.sample(jax.random.fold_in(k_train, 0))
        show("compiling")
        t0 = time.perf_counter()
        step = step.lower(params0, optimizer(lrs[0], steps, weight_decay).init(params0),
                          first, k_train).compile()
        row["compile_s"] = time.perf_counter() - t0
    except Exception as e:  # report, keep going with the next model
        row.update(status="error", reason=f"{type(e).__name__}: {e}")
        advance(left)
        return row

    reached = False
    for lr in lrs:
        run = dict(lr=lr, accuracy=None, valid_accuracy=None, steps=0, stopped="steps",
                   train_s=None, loss=None)
        row["runs"].append(run)
        if reached and sweep_stop:
            run["stopped"] = "skipped"
            advance(steps)
            continue
        show(f"lr {lr:.2g}")
        params, opt_state = params0, optimizer(lr, steps, weight_decay).init(params0)
        t0 = time.perf_counter()
        try:
            for s in range(steps):
                batch = first if s == 0 else data.sample(jax.random.fold_in(k_train, s))
                params, opt_state, metrics = step(params, opt_state, batch, k_train)
                run["steps"] = s + 1
                advance(1)
                if (s + 1) % eval_every and s + 1 < steps:
                    continue
                run["loss"] = float(metrics["loss"])
                if not math.isfinite(run["loss"]):
                    run["stopped"] = "diverged"
                    break
                run["valid_accuracy"] = _score(step, params, opt_state, data.valid, k_train)
                show(f"lr {lr:.2g} acc {run['valid_accuracy']:.2f}")
                if run["valid_accuracy"] >= stop_accuracy:
                    run["stopped"] = "accuracy"
                    break
            advance(steps - run["steps"])
            run["accuracy"] = _score(step, params, opt_state, data.test, k_train)
            run["train_s"] = time.perf_counter() - t0
        except Exception as e:
            row.update(status="error", reason=f"{type(e).__name__}: {e}")
            advance(steps - run["steps"])
            break
        reached = reached or run["accuracy"] >= stop_accuracy
    done = [r for r in row["runs"] if r["accuracy"] is not None]
    if done:
        best = max(done, key=lambda r: (r["accuracy"], -r["steps"]))
        row["accuracy"], row["best_lr"] = best["accuracy"], best["lr"]
    row["wall_s"] = time.perf_counter() - start
    return row


# ----------------------------------------------------------------------------- workers

# XLA flags of a worker process: one thread each, so that ``--jobs`` processes share
# the cores instead of each spreading small matmuls over all of them
_WORKER_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false"
# glibc's malloc backing its large blocks with transparent huge pages (glibc >= 2.35;
# ignored elsewhere). XLA:CPU allocates fresh buffers for every step, and without it the
# kernel faults them in 4 KiB at a time, every step: `python benchmarks/hugepages.py`
# measured the train step of the Mamba and Mamba-2 recall models at 0.64-0.67 of their
# time without it (docs/guides/performance.md). glibc reads it only when a process
# starts, so it can reach the worker processes, not the one that starts them.
_WORKER_GLIBC_TUNABLE = "glibc.malloc.hugetlb=1"
_QUEUE = None


def worker_environment(huge_pages: bool = True) -> dict:
    """The environment variables the worker processes start with, beyond the parent's:
    ``GLIBC_TUNABLES`` with ``glibc.malloc.hugetlb=1`` added, on Linux with
    ``huge_pages``, unless the parent's already sets ``glibc.malloc.hugetlb``."""
    if not huge_pages or not sys.platform.startswith("linux"):
        return {}
    have = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in have:
        return {}
    return {"GLIBC_TUNABLES": f"{have}:{_WORKER_GLIBC_TUNABLE}" if have
            else _WORKER_GLIBC_TUNABLE}


@contextlib.contextmanager
def _environment(changes: dict):
    """``os.environ`` with ``changes`` while the block runs (processes started in it
    inherit them), then as it was."""
    before = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _QueueBar:
    """A worker's stand-in for the progress bar: sends its steps to the parent."""

    def __init__(self, queue):
        self.queue, self.steps, self.last = queue, 0, time.perf_counter()

    def update(self, n=1):
        self.steps += n
        if time.perf_counter() - self.last > 0.5:
            self.flush()

    def set_postfix_str(self, text, refresh=False):
        self.flush()
        self.queue.put(("postfix", text))

    def flush(self):
        if self.steps:
            self.queue.put(("update", self.steps))
        self.steps, self.last = 0, time.perf_counter()


def _worker_init(queue):
    global _QUEUE
    _QUEUE = queue
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _WORKER_XLA_FLAGS).strip()


def _worker(spec, d_model, setting, options):
    bar = _QueueBar(_QUEUE)
    try:
        return train_cell(spec, d_model, setting, bar=bar, **options)
    finally:
        bar.flush()


def _drain(queue, bar, timeout):
    """Passes the workers' messages on to ``bar`` (or drops them without one: a worker
    cannot exit while what it put on the queue is unread)."""
    import queue as queue_mod

    try:
        while True:
            kind, value = queue.get(timeout=timeout)
            if bar is None:
                pass
            elif kind == "update":
                bar.update(value)
            else:
                bar.set_postfix_str(value, refresh=False)
            timeout = 0
    except queue_mod.Empty:
        pass


def run_points(points, options: dict, *, jobs: int = 1, bar=None, env=None) -> list:
    """``train_cell`` for every ``(spec, d_model, setting)`` of ``points``, in order;
    with ``jobs > 1`` in that many single-threaded worker processes (each point is
    independent: its own compilation and training), started with the environment
    variables ``env`` (:func:`worker_environment`) added to this process's."""
    if jobs <= 1 or len(points) <= 1:
        return [train_cell(spec, d, s, bar=bar, **options) for spec, d, s in points]
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    with _environment(env or {}), concurrent.futures.ProcessPoolExecutor(
            min(jobs, len(points)), mp_context=ctx, initializer=_worker_init,
            initargs=(queue,)) as pool:
        futures = [pool.submit(_worker, spec, d, s, options) for spec, d, s in points]
        pending = set(futures)
        while pending:
            _drain(queue, bar, 0.25)
            _, pending = concurrent.futures.wait(pending, timeout=0)
        _drain(queue, bar, 0.1)
        return [f.result() for f in futures]


# ----------------------------------------------------------------------------- report

KiB = 1024.0


def _bytes(n):
    if n is None:
        return "—"
    if n < KiB:
        return f"{n} B"
    if n < KiB ** 2:
        return f"{n / KiB:.1f} KiB"
    return f"{n / KiB ** 2:.1f} MiB"


_table = _common.table


def _panels(rows):
    return list(dict.fromkeys((r["length"], r["pairs"]) for r in rows))


def zoology_comparison(rows, near: float = 0.95) -> list:
    """Lines that set the run beside Zoology's published figure 2 (attention at ~1.0
    at every ``d_model`` and ``T``; gated convolutions and small-state recurrences
    below it, more so as ``T`` and ``N`` grow and ``d_model`` shrinks): attention's
    lowest accuracy, and for every other block where it falls below 0.9."""
    lines = []
    att = [r for r in rows if r["block"] == "attention" and r["accuracy"] is not None]
    if att:
        low = min(att, key=lambda r: r["accuracy"])
        lines.append(
            f"- Zoology: attention reaches ~1.0 at every d_model and T. Here its lowest "
            f"accuracy is {low['accuracy']:.3f} (D={low['d_model']}, T={low['length']}, "
            f"N={low['pairs']}): " + (
                "**agrees**." if low["accuracy"] >= near else
                "**disagrees** -- the step budget ended before attention left the 1/N "
                "plateau there (Zoology trains up to 64 epochs of 100,000 examples with "
                "early stopping); raise --steps, or --d-model: attention with one head "
                "needs more steps at small widths."))
    for spec in dict.fromkeys(r["block"] for r in rows):
        mine = [r for r in rows if r["block"] == spec and r["accuracy"] is not None]
        if spec == "attention" or not mine:
            continue
        below = sorted((r for r in mine if r["accuracy"] < 0.9),
                       key=lambda r: (r["length"], r["d_model"]))
        sizes = [r["state_bytes"] for r in mine]
        state = (_bytes(sizes[0]) if min(sizes) == max(sizes)
                 else f"{_bytes(min(sizes))} to {_bytes(max(sizes))}")
        if not below:
            lines.append(f"- {spec} (state {state}): >= 0.9 at every point of this grid.")
            continue
        where = ", ".join(f"D={r['d_model']}/T={r['length']}: {r['accuracy']:.2f}"
                          for r in below)
        lines.append(f"- {spec} (state {state}): below 0.9 at {where}.")
    return lines


def markdown(meta, rows) -> str:
    grid = meta["grid_settings"]
    v = meta["versions"]
    vers = ", ".join(f"{k} {v[k]}" for k in ("jax", "jaxlib", "optax", "numpy") if v.get(k))
    lines = [
        "# MQAR recall by block and state size",
        "",
        f"- date: {meta['date']}; grid `{meta['grid']}` ({grid['note']}); whole run "
        f"{meta.get('wall_s', 0):.0f} s",
        f"- device: {meta['device']} ({meta['platform']}); {meta['cpu_count']} CPUs "
        f"(affinity {meta['cpu_affinity']}); XLA_FLAGS={meta['xla_flags'] or 'unset'}"
        + (f"; {meta['jobs']} worker processes, one thread each"
           + "".join(f", {k}={v}" for k, v in meta.get("worker_env", {}).items())
           if meta.get("jobs", 1) > 1 else ""),
        f"- versions: python {v['python']}, seqjax {v.get('seqjax')}, {vers}",
        f"- command: `seqjax bench recall {' '.join(meta['argv'])}`",
        f"- task: `seqjax.tasks.mqar` (Zoology's generator), V={grid['vocab']}, power_a 0.01, "
        f"gaps filled with {'random tokens' if meta['random_fill'] else '0'}; "
        f"{meta['layers']} layers, "
        + ("published blocks with their MLPs" if meta["mlp"] else "no MLP (Zoology figure 2)")
        + f"; local attention window {grid['window']}",
        f"- training: AdamW (weight decay {meta['weight_decay']}), cosine schedule to 0, "
        f"no warm-up; learning rates {', '.join(f'{lr:.3g}' for lr in grid['lrs'])}; "
        f"early stop at validation accuracy {meta['stop_accuracy']} (checked every "
        f"{grid['eval_every']} steps)"
        + ("; later rates skipped once one reaches it" if meta["sweep_stop"] else ""),
        f"- accuracy: held-out, {grid['eval_examples']} examples, fraction of queries "
        "whose argmax is the value, best over the learning rates (the rate in "
        "parentheses); chance (copying a value from the context) is 1/N",
        "- state: bytes of the decoding state of one sequence, both layers "
        "(`model.initial_state(params)`: the KV cache of attention with T slots or the "
        "window, convolution histories, recurrent states)",
        "",
    ]
    d_models = sorted({r["d_model"] for r in rows})
    for T, N in _panels(rows):
        panel = [r for r in rows if (r["length"], r["pairs"]) == (T, N)]
        s = panel[0]
        lines += [f"## T = {T}, N = {N} (batch {s['batch']}, up to {s['max_steps']} steps)",
                  ""]
        header = ["block"] + [f"D={d} acc" for d in d_models] + [f"D={d} state" for d in d_models]
        body = []
        for spec in dict.fromkeys(r["block"] for r in panel):
            cells, sizes = [], []
            for d in d_models:
                r = next((r for r in panel if r["block"] == spec and r["d_model"] == d), None)
                if r is None:
                    cells.append("—")
                    sizes.append("—")
                elif r["status"] != "ok" and r["accuracy"] is None:
                    cells.append("error")
                    sizes.append(_bytes(r["state_bytes"]))
                else:
                    cells.append(f"{r['accuracy']:.3f} ({r['best_lr']:.0e})")
                    sizes.append(_bytes(r["state_bytes"]))
            body.append([spec] + cells + sizes)
        lines += [_table(header, body), ""]
    lines += ["## Beside Zoology (Arora et al. 2023, figure 2)", "",
              "Zoology's figure 2 trains 2-layer models without MLPs at V = 8,192, (T, N) "
              "= (64, 4), (128, 8), (256, 16), (512, 64), d_model 64 to 512, best of four "
              "learning rates: attention solves MQAR at every point, while the "
              "gated-convolution and recurrent models of the figure need a d_model that "
              "grows with T and N and fall below attention at small widths and long "
              "sequences." + ("" if meta["grid"] == "full" else
                              f" This run's grid is smaller (`{meta['grid']}`: V = "
                              f"{grid['vocab']}, T up to "
                              f"{max(s['length'] for s in grid['settings'])}, at most "
                              f"{max(s['steps'] for s in grid['settings'])} steps); "
                              "`--grid full` is the figure's."), ""]
    lines += zoology_comparison(rows)
    lines += ["", "## Every run", "",
              "steps: steps run (of the maximum); stop: `accuracy` (early stop), `steps` "
              "(budget spent), `diverged` (non-finite loss), `skipped` (an earlier rate "
              "reached the threshold). compile s: the train step's compilation.", ""]
    body = []
    for r in rows:
        if not r["runs"]:
            body.append([r["block"], r["d_model"], r["length"], r["pairs"], "—", "—", "—",
                         "—", "—", "—", r["params"] or "—", "error"])
        for run in r["runs"]:
            body.append([r["block"], r["d_model"], r["length"], r["pairs"], f"{run['lr']:.3g}",
                         "—" if run["accuracy"] is None else f"{run['accuracy']:.3f}",
                         f"{run['steps']}/{r['max_steps']}", run["stopped"],
                         "—" if run["train_s"] is None else f"{run['train_s']:.1f}",
                         "—" if r["compile_s"] is None else f"{r['compile_s']:.1f}",
                         r["params"], "ok"])
    lines.append(_table(["block", "D", "T", "N", "lr", "accuracy", "steps", "stop", "train s",
                         "compile s", "params", "status"], body))
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        lines += ["", "## Errors", ""]
        lines += [f"- {r['block']} D={r['d_model']} T={r['length']}: {r['reason']}" for r in bad]
    return "\n".join(lines) + "\n"


def plot(out, rows):
    """``recall.png`` in Zoology's layout (accuracy against d_model, one panel per
    sequence length, one line per block) and ``recall_state.png`` (accuracy against
    state bytes). Returns the paths."""
    from seqjax._extras import require

    matplotlib = require("matplotlib", "seqjax bench recall's figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(rows)
    specs = list(dict.fromkeys(r["block"] for r in rows))
    colours = {s: matplotlib.colormaps["tab20"](i % 20) for i, s in enumerate(specs)}
    markers = "osD^v<>pP*Xh"
    paths = {}
    for name, key, label in (("figure", "d_model", "model dimension (d_model)"),
                             ("state_figure", "state_bytes", "state size (bytes)")):
        fig, axes = plt.subplots(1, len(panels), squeeze=False, layout="constrained",
                                 figsize=(3.6 * len(panels) + 1.8, 3.4))
        handles = {}
        for ax, (T, N) in zip(axes.flat, panels):
            for i, spec in enumerate(specs):
                pts = sorted((r[key], r["accuracy"]) for r in rows if r["block"] == spec
                             and (r["length"], r["pairs"]) == (T, N)
                             and r["accuracy"] is not None and r[key] is not None)
                if not pts:
                    continue
                (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], label=spec,
                                  color=colours[spec], marker=markers[i % len(markers)],
                                  markersize=4, linestyle="--" if "+" in spec else "-")
                handles.setdefault(spec, line)
            ax.set_xscale("log", base=2 if key == "d_model" else 10)
            if key == "d_model":
                ds = sorted({r["d_model"] for r in rows})
                ax.set_xticks(ds)
                ax.set_xticklabels([str(d) for d in ds])
                ax.minorticks_off()
            ax.set_ylim(-0.02, 1.02)
            ax.axhline(1.0 / N, color="grey", linewidth=0.7, linestyle=":")
            ax.set_title(f"Sequence length {T} ({N} pairs)", fontsize=9)
            ax.set_xlabel(label)
            ax.set_ylabel("MQAR accuracy")
            ax.grid(True, alpha=0.3)
        fig.legend(list(handles.values()), list(handles), loc="outside right center",
                   fontsize=7, frameon=False)
        fig.suptitle("MQAR accuracy (held-out, best learning rate); dotted: 1/N", fontsize=9)
        paths[name] = pathlib.Path(out) / ("recall.png" if key == "d_model"
                                           else "recall_state.png")
        fig.savefig(paths[name], dpi=110)
        plt.close(fig)
    return paths


def write(out, meta, rows, *, plots=True) -> dict:
    """Writes ``recall.json``, ``recall.md`` and the figures under ``out``."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "recall.json", "markdown": out / "recall.md"}
    paths["json"].write_text(json.dumps({"meta": meta, "rows": rows}, indent=1,
                                        default=str, allow_nan=False))
    text = markdown(meta, rows)
    paths["markdown"].write_text(text)
    if plots and any(r["accuracy"] is not None for r in rows):
        paths.update(plot(out, rows))
    paths["markdown_text"] = text
    return paths


# ----------------------------------------------------------------------------- metadata


def metadata(args, argv, grid: Grid) -> dict:
    meta = _common.machine(("seqjax", "jax", "jaxlib", "optax", "numpy", "matplotlib"))
    meta.update(argv=list(argv), grid=args.grid, grid_settings=dataclasses.asdict(grid),
                mlp=args.mlp, layers=args.layers, random_fill=args.random_fill,
                weight_decay=args.weight_decay, stop_accuracy=args.stop_accuracy,
                sweep_stop=args.sweep_stop, seed=args.seed)
    return meta


# ----------------------------------------------------------------------------- CLI


def _settings(text):
    rule = "a comma list of T:N pairs, e.g. 64:4,128:8"
    out = []
    for part in _cli._split(text, rule):
        t, sep, n = part.partition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}")
        out.append((_cli.positive_int(t), _cli.positive_int(n)))
    return tuple(out)


def parser():
    p = _cli.ArgumentParser(
        prog="seqjax bench recall",
        description="Train every block as a 2-layer language model on multi-query "
                    "associative recall (Zoology's MQAR) over d_model x sequence length x "
                    "key-value pairs, with a learning-rate sweep per point; report held-out "
                    "accuracy and state size; write recall.json, recall.md and figures.")
    p.add_argument("--grid", choices=sorted(GRIDS), default="default",
                   help="default: under 15 minutes on 2 CPU cores; full: Zoology's "
                        "figure 2 (V=8192, T 64..512, d_model 64..512: GPU-sized); tiny: a "
                        "smoke run")
    p.add_argument("--blocks", type=_cli.choice_list, default=None,
                   help="comma list of block names (seqjax.blocks.names()), NAME+NAME for a "
                        "hybrid. Default: the grid's")
    p.add_argument("--d-model", type=_cli.positive_ints, default=None,
                   help="comma list of model widths")
    p.add_argument("--settings", type=_settings, default=None,
                   help="comma list of T:N (sequence length: key-value pairs)")
    p.add_argument("--vocab", type=_cli.int_at_least(4), default=None, help="vocabulary V")
    p.add_argument("--steps", type=_cli.positive_int, default=None,
                   help="most training steps per run (default: the grid's)")
    p.add_argument("--batch", type=_cli.positive_int, default=None, help="batch size")
    p.add_argument("--lrs", type=_cli.floats_in(0.0, 1.0, low_open=True), default=None,
                   help="comma list of peak learning rates, tried in this order")
    p.add_argument("--weight-decay", type=_cli.nonnegative_float, default=0.1,
                   help="AdamW weight decay (default 0.1)")
    p.add_argument("--window", type=_cli.positive_int, default=None,
                   help="local attention's window (default: the grid's)")
    p.add_argument("--layers", type=_cli.positive_int, default=2, help="layers (default 2)")
    p.add_argument("--mlp", action=argparse.BooleanOptionalAction, default=False,
                   help="the published blocks with their MLPs (default: no MLP, as Zoology)")
    p.add_argument("--random-fill", action=argparse.BooleanOptionalAction, default=False,
                   help="fill the gaps with random tokens (default: 0, as figure 2)")
    p.add_argument("--eval-examples", type=_cli.positive_int, default=None,
                   help="held-out examples (default: the grid's)")
    p.add_argument("--eval-every", type=_cli.positive_int, default=None,
                   help="steps between validation checks (default: the grid's)")
    p.add_argument("--stop-accuracy", type=_cli.float_in(0.0, 1.0), default=0.99,
                   help="early-stopping validation accuracy (default 0.99, Zoology's)")
    p.add_argument("--sweep-stop", action=argparse.BooleanOptionalAction, default=True,
                   help="skip the remaining learning rates once one reaches the stopping "
                        "accuracy (default: yes)")
    p.add_argument("--seed", type=_cli.nonnegative_int, default=0, help="seed (default 0)")
    p.add_argument("--huge-pages", action=argparse.BooleanOptionalAction, default=True,
                   help="start the worker processes with GLIBC_TUNABLES="
                        "glibc.malloc.hugetlb=1 (Linux; default: yes): the Mamba models' "
                        "steps take about two thirds of the time")
    p.add_argument("--jobs", type=_cli.positive_int, default=None,
                   help="worker processes, one thread each (default: 2 on a CPU with two or "
                        "more cores, else 1; always 1 on an accelerator)")
    p.add_argument("--out", default=os.path.join("results", "bench"),
                   help="output folder (default results/bench)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="write the figures (default: yes)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar (default: yes)")
    return p


def default_jobs() -> int:
    """2 worker processes on a CPU with two or more cores, else 1 (and 1 on an
    accelerator, which the processes would have to share)."""
    if jax.default_backend() != "cpu":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return 2 if cores >= 2 else 1


def resolve(args) -> Grid:
    """The grid of ``--grid`` with the command line's overrides applied."""
    from seqjax.blocks import names

    g = GRIDS[args.grid]
    settings = g.settings
    if args.settings is not None:
        base = settings[0]
        settings = tuple(Setting(t, n, base.batch, base.steps) for t, n in args.settings)
    if args.batch is not None or args.steps is not None:
        settings = tuple(Setting(s.length, s.pairs, args.batch or s.batch,
                                 args.steps or s.steps) for s in settings)
    grid = dataclasses.replace(
        g, settings=settings, vocab=args.vocab or g.vocab, d_models=args.d_model or g.d_models,
        blocks=args.blocks or g.blocks, lrs=args.lrs or g.lrs, window=args.window or g.window,
        eval_examples=args.eval_examples or g.eval_examples,
        eval_every=args.eval_every or g.eval_every)
    known = names()
    for spec in grid.blocks:
        unknown = [n for n in spec.split("+") if n not in known]
        if unknown:
            raise ValueError(f"unknown block {unknown[0]!r} in --blocks; choose from "
                             f"{', '.join(known)} (NAME+NAME for a hybrid)")
    for s in grid.settings:
        seqjax.tasks.mqar(grid.vocab, s.length, s.pairs)  # raises on a bad T, N, V
    return grid


def main(argv=None) -> int:
    """Runs the recall benchmark; returns 0, or 1 if a model failed to build or train."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        grid = resolve(args)
    except ValueError as e:
        print(f"seqjax bench recall: {e}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    points = [(spec, d, s) for s in grid.settings for d in grid.d_models for spec in grid.blocks]
    total = sum(len(grid.lrs) * s.steps for _, _, s in points)
    jobs = args.jobs if args.jobs is not None else default_jobs()
    options = dict(vocab=grid.vocab, lrs=grid.lrs, window=grid.window, mlp=args.mlp,
                   layers=args.layers, eval_examples=grid.eval_examples,
                   valid_examples=min(grid.valid_examples, grid.eval_examples),
                   eval_every=grid.eval_every, stop_accuracy=args.stop_accuracy,
                   sweep_stop=args.sweep_stop, random_fill=args.random_fill,
                   weight_decay=args.weight_decay, seed=args.seed)
    start = time.perf_counter()
    bar = tqdm(total=total, desc="seqjax bench recall", unit="step", disable=not args.progress,
               dynamic_ncols=True)
    env = worker_environment(args.huge_pages) if jobs > 1 else {}
    try:
        rows = run_points(points, options, jobs=jobs, bar=bar, env=env)
    finally:
        bar.close()
    meta = metadata(args, argv, grid)
    meta["jobs"] = jobs
    meta["worker_env"] = env
    meta["wall_s"] = time.perf_counter() - start
    paths = write(args.out, meta, rows, plots=args.plots)
    print(paths["markdown_text"])
    print(f"\nwrote {', '.join(str(p) for k, p in paths.items() if k != 'markdown_text')} "
          f"in {meta['wall_s']:.1f} s")
    bad = [r for r in rows if r["status"] != "ok"]
    for r in bad:
        print(f"seqjax bench recall: error in {r['block']} D={r['d_model']} T={r['length']}: "
              f"{r['reason']}", file=sys.stderr)
    return 1 if bad else 0
