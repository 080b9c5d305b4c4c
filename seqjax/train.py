"""Training: a jit-compiled optax step, a ``fit`` loop, and data parallelism.

* :func:`default_optimizer` is Adam behind gradient clipping by global norm
  (Pascanu et al. 2013), the standard guard against exploding gradients in RNNs.
* :func:`make_train_step` turns ``loss_fn(params, batch, rng)`` into a pure, compiled
  ``step(params, opt_state, batch, rng) -> (params, opt_state, metrics)`` that reports
  the loss and the global norm of the raw (unclipped) gradients every step.
* :func:`fit` runs the loop with a progress bar (when tqdm is installed), periodic
  evaluation, atomic checkpoints that a later call resumes from (verified by SHA-256
  on restore: :mod:`seqjax.checkpoint`; ``resume=`` chooses, and a resume is
  announced), and a clear error on a non-finite loss.
* With a :class:`jax.sharding.Mesh` (:func:`make_mesh`) the step is data parallel:
  the batch is split along the mesh's ``"data"`` axis and params are replicated; XLA
  inserts the gradient all-reduce, so the result equals the single-device step.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Callable, Iterable, NamedTuple, Optional, Union

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from seqjax import checkpoint

Array = jax.Array
Params = Any

DATA_AXIS = "data"


class TrainState(NamedTuple):
    """Everything a run needs to continue exactly.

    Attributes:
      params: model params.
      opt_state: the optimizer's state.
      step: number of completed steps (Python int).
      rng: PRNG key (raw ``uint32[2]``) for the next step.
    """

    params: Params
    opt_state: Any
    step: int
    rng: Array


# ------------------------------------------------------------------------ optimizers


def clipped(optimizer: optax.GradientTransformation,
            max_norm: float = 1.0) -> optax.GradientTransformation:
    """``optimizer`` behind gradient clipping by global norm.

    .. math:: g \\leftarrow g \\cdot \\min\\left(1, \\frac{\\tau}{\\lVert g \\rVert_2}\\right)

    where :math:`\\lVert g \\rVert_2` is the norm of all gradients concatenated.

    Args:
      optimizer: any optax transformation.
      max_norm: the threshold :math:`\\tau` (Pascanu et al. suggest values around 1).

    Returns:
      ``optax.chain(optax.clip_by_global_norm(max_norm), optimizer)``.

    References:
      Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural
      networks", ICML 2013.
    """
    if not max_norm > 0:
        raise ValueError(f"clipped: max_norm must be > 0, got {max_norm}")
    return optax.chain(optax.clip_by_global_norm(max_norm), optimizer)


def default_optimizer(learning_rate: Union[float, Callable] = 1e-3, *,
                      max_norm: float = 1.0) -> optax.GradientTransformation:
    """Adam with gradient clipping by global norm, the default for recurrent models.

    Args:
      learning_rate: a float or an optax schedule.
      max_norm: global-norm clipping threshold (default ``1.0``).

    Returns:
      ``optax.chain(optax.clip_by_global_norm(max_norm), optax.adam(learning_rate))``.

    References:
      Pascanu et al., ICML 2013; Kingma & Ba, "Adam", ICLR 2015.
    """
    return clipped(optax.adam(learning_rate), max_norm)


# ------------------------------------------------------------------ data parallelism


def make_mesh(devices=None) -> Mesh:
    """A one-axis mesh named ``"data"`` over ``devices`` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def _data_size(mesh: Mesh) -> int:
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"data parallelism needs a mesh axis named {DATA_AXIS!r}, got "
                         f"{mesh.axis_names}; build one with seqjax.train.make_mesh()")
    return mesh.shape[DATA_AXIS]


def _check_batch(batch, mesh: Mesh) -> None:
    n = _data_size(mesh)
    for path, leaf in jax.tree_util.tree_leaves_with_path(batch):
        shape = np.shape(leaf)
        if len(shape) == 0 or shape[0] % n:
            raise ValueError(
                f"data parallel: every batch leaf needs a leading batch axis divisible by the "
                f"{n} devices of the mesh's {DATA_AXIS!r} axis; batch{jax.tree_util.keystr(path)} "
                f"has shape {tuple(shape)}")


def shard_batch(batch, mesh: Mesh):
    """Puts ``batch`` on ``mesh``, split along its leading axis over ``"data"``.

    Raises:
      ValueError: a leaf's batch size is not divisible by the number of devices.
    """
    _check_batch(batch, mesh)
    return jax.device_put(batch, NamedSharding(mesh, P(DATA_AXIS)))


def replicate(tree, mesh: Mesh):
    """Puts ``tree`` on every device of ``mesh`` (``PartitionSpec()``)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


# ------------------------------------------------------------------------ train step


def _split_aux(out):
    if isinstance(out, tuple):
        if len(out) != 2:
            raise ValueError("loss_fn must return a scalar or a (scalar, aux) pair, got a "
                             f"tuple of {len(out)}")
        return out
    return out, {}


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *,
                    mesh: Optional[Mesh] = None) -> Callable:
    """A pure, jit-compiled optimisation step.

    Args:
      loss_fn: ``(params, batch, rng) -> loss`` or ``-> (loss, aux)``; ``loss`` a
        scalar; ``aux`` a dict of arrays (merged into the metrics) or any pytree
        (stored under ``"aux"``).
      optimizer: an optax transformation (e.g. :func:`default_optimizer`).
      mesh: if given, a mesh with a ``"data"`` axis (:func:`make_mesh`): the step
        splits every batch leaf along its leading axis over the devices and keeps
        params and optimizer state replicated. The batch size must be divisible by
        the number of devices. The global loss is computed as written (e.g. a mean
        over the whole batch), so the step matches the single-device one up to
        floating-point reduction order.

    Returns:
      ``step(params, opt_state, batch, rng) -> (params, opt_state, metrics)``, where
      ``metrics`` has ``"loss"`` and ``"grad_norm"`` (``optax.global_norm`` of the
      raw gradients, before any clipping) plus the aux entries.

    Raises:
      ValueError: (with ``mesh``) the batch size is not divisible by the devices.
    """

    def step(params, opt_state, batch, rng):
        def objective(p):
            return _split_aux(loss_fn(p, batch, rng))

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
        # optax's own arithmetic mixes Python floats and int32 step counts (Adam's
        # ``decay ** count``), which jax_numpy_dtype_promotion="strict" rejects; the
        # loss above is traced under the caller's setting.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads)}
        if isinstance(aux, dict):
            metrics.update(aux)
        else:
            metrics["aux"] = aux
        return params, opt_state, metrics

    if mesh is None:
        return jax.jit(step)

    _data_size(mesh)
    replicated = NamedSharding(mesh, P())
    split = NamedSharding(mesh, P(DATA_AXIS))
    compiled = jax.jit(step, in_shardings=(replicated, replicated, split, replicated),
                       out_shardings=(replicated, replicated, replicated))

    def data_parallel_step(params, opt_state, batch, rng):
        batch = shard_batch(batch, mesh)
        params, opt_state, rng = replicate((params, opt_state, rng), mesh)
        return compiled(params, opt_state, batch, rng)

    data_parallel_step.jitted = compiled
    return data_parallel_step


# -------------------------------------------------------------------------------- fit


def init_state(params, optimizer: optax.GradientTransformation, seed: int = 0) -> TrainState:
    """A fresh :class:`TrainState` at step 0 with ``jax.random.PRNGKey(seed)``."""
    return TrainState(params, optimizer.init(params), 0, jax.random.PRNGKey(seed))


def _scalars(metrics) -> dict:
    out = {}
    for name, value in jax.device_get(metrics).items():
        value = np.asarray(value)
        out[name] = float(value) if value.ndim == 0 else value
    return out


def _evaluate(eval_fn, params) -> dict:
    result = eval_fn(params)
    if isinstance(result, dict):
        return {f"eval_{k}": float(np.asarray(v)) for k, v in jax.device_get(result).items()}
    return {"eval": float(np.asarray(jax.device_get(result)))}


def fit(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    params: Params,
    batches: Union[Iterable, Callable],
    *,
    steps: int,
    eval_fn: Optional[Callable] = None,
    eval_every: int = 100,
    seed: int = 0,
    checkpoint_dir=None,
    checkpoint_every: Optional[int] = None,
    keep_checkpoints: int = 3,
    mesh: Optional[Mesh] = None,
    progress: bool = True,
    resume: Optional[bool] = None,
):
    """Trains ``params`` for ``steps`` steps.

    Each step splits the run's key into the next key, a data key and a step key;
    the batch is ``batches(step, data_key)`` (or the next item of an iterable) and
    the step key is passed to ``loss_fn`` (dropout). A run is therefore a pure
    function of ``(params, seed, batches)``, which is what makes resuming exact.

    Args:
      loss_fn: ``(params, batch, rng) -> loss`` or ``(loss, aux)``
        (see :func:`make_train_step`).
      optimizer: optax transformation, e.g. :func:`default_optimizer`.
      params: initial params (ignored when resuming from a checkpoint).
      batches: ``callable(step, rng) -> batch`` (preferred: resumable exactly) or an
        iterable of batches. When resuming at step ``k`` from an iterable, its first
        ``k`` items are skipped, which reproduces the run if the iterable does.
      steps: total number of steps of the run (a resumed run continues up to it).
      eval_fn: ``(params) -> scalar or dict of scalars``, run every ``eval_every``
        steps and after the last; results enter the history as ``"eval"`` or
        ``"eval_<name>"``.
      eval_every: evaluation period in steps.
      seed: seed of the run's PRNG key.
      checkpoint_dir: if given, save ``ckpt_<step>.npz`` there every
        ``checkpoint_every`` steps and at the end (atomic writes), and resume from
        its latest checkpoint (:func:`seqjax.checkpoint.latest`) as ``resume`` says.
      checkpoint_every: checkpoint period; ``None`` saves at the end only.
      keep_checkpoints: how many checkpoints to keep in ``checkpoint_dir``.
      mesh: data-parallel mesh (see :func:`make_train_step`).
      progress: show a tqdm bar with the loss and the gradient norm (when tqdm is
        installed; without it ``fit`` runs silently).
      resume: what to do with the checkpoints already in ``checkpoint_dir``.
        ``None`` (default): continue from the latest one if there is one, else
        start from ``params``. ``True``: continue from the latest one, and raise if
        there is none. ``False``: start from ``params`` at step 0, and raise if
        ``checkpoint_dir`` already holds checkpoints (a fresh run would otherwise
        mix its checkpoints with an older run's). A resume is announced on stderr
        in one line naming the file and its step; a run resumed at or past
        ``steps`` runs no step, says so, and returns an empty history.

    Returns:
      ``(state, history)``: the final :class:`TrainState` and one dict per step run
      by this call, with ``"step"`` (1-based count of completed steps), ``"loss"``,
      ``"grad_norm"``, aux metrics and evaluation results.

    Raises:
      FloatingPointError: the loss or the gradient norm is not finite. The message
        names the step (0-based, the ``step`` argument its batch was made with); the
        exception carries ``.step``, ``.state`` (the last finite
        :class:`TrainState`, before that step) and ``.history``.
      FileNotFoundError: ``resume=True`` and ``checkpoint_dir`` holds no checkpoint.
      FileExistsError: ``resume=False`` and ``checkpoint_dir`` holds checkpoints.
      ValueError: an argument out of range; ``resume=True`` without
        ``checkpoint_dir``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"fit: steps must be an int >= 0, got {steps!r}")
    if eval_every < 1:
        raise ValueError(f"fit: eval_every must be >= 1, got {eval_every}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"fit: checkpoint_every must be >= 1 or None, got {checkpoint_every}")
    if isinstance(keep_checkpoints, bool) or not isinstance(keep_checkpoints, int) \
            or keep_checkpoints < 1:
        raise ValueError(f"fit: keep_checkpoints must be an int >= 1, got {keep_checkpoints!r}")

    if resume is not None and not isinstance(resume, bool):
        raise ValueError(f"fit: resume must be None, True or False, got {resume!r}")
    if resume is True and checkpoint_dir is None:
        raise ValueError("fit: resume=True needs a checkpoint_dir to resume from")

    state = init_state(params, optimizer, seed)
    if checkpoint_dir is not None:
        found = checkpoint.latest(checkpoint_dir)
        if found is not None and resume is False:
            raise FileExistsError(
                f"fit(resume=False): {os.fspath(checkpoint_dir)!r} already holds checkpoints "
                f"of an earlier run (latest {found}); pass resume=True to continue it, or "
                "give a new or empty checkpoint_dir")
        if found is None and resume is True:
            raise FileNotFoundError(
                f"fit(resume=True): no checkpoint (ckpt_<step>.npz) in "
                f"{os.fspath(checkpoint_dir)!r} to resume from")
        if found is not None:
            state = checkpoint.restore(found, like=state)
            print(_resume_note(found, state.step, steps, resume), file=sys.stderr)

    train_step = make_train_step(loss_fn, optimizer, mesh=mesh)
    if callable(batches):
        next_batch = batches
    else:
        iterator = iter(batches)
        for _ in range(min(state.step, steps)):
            next(iterator)

        def next_batch(step, rng):
            try:
                return next(iterator)
            except StopIteration:
                raise ValueError(f"fit: the batches ran out at step {step} of {steps}") from None

    def save(state):
        if checkpoint_dir is not None:
            checkpoint.save(checkpoint.step_path(checkpoint_dir, state.step), state)
            checkpoint.prune(checkpoint_dir, keep_checkpoints)

    history = []
    bar = _progress_bar(progress, total=steps, initial=min(state.step, steps))
    try:
        while state.step < steps:
            k = state.step
            rng, data_key, step_key = jax.random.split(state.rng, 3)
            batch = next_batch(k, data_key)
            new_params, new_opt, metrics = train_step(state.params, state.opt_state, batch,
                                                      step_key)
            record = _scalars(metrics)
            for name in ("loss", "grad_norm"):
                if not math.isfinite(record[name]):
                    err = FloatingPointError(
                        f"fit: non-finite {name} ({record[name]}) at step {k} (0-based); "
                        f"training stopped, the last finite state (after {k} steps) is on "
                        "this exception's .state")
                    err.step, err.state, err.history = k, state, history
                    raise err
            state = TrainState(new_params, new_opt, k + 1, rng)
            entry = {"step": state.step, **record}
            if eval_fn is not None and (state.step % eval_every == 0 or state.step == steps):
                entry.update(_evaluate(eval_fn, state.params))
            history.append(entry)
            bar.update(1)
            bar.set_postfix({n: f"{v:.4g}" for n, v in entry.items()
                             if n != "step" and isinstance(v, float)}, refresh=False)
            if checkpoint_every is not None and state.step % checkpoint_every == 0:
                save(state)
        if checkpoint_dir is not None and not os.path.exists(
                checkpoint.step_path(checkpoint_dir, state.step)):
            save(state)
    finally:
        bar.close()
    return state, history


def _resume_note(path, step: int, steps: int, resume) -> str:
    """The line ``fit`` prints when it resumes."""
    if step >= steps:
        left = (f"the run of {steps} steps is already complete: no step runs and the "
                "history is empty")
    else:
        left = f"{steps - step} of {steps} steps to go"
    hint = "" if resume else "; to start over, give fit a new or empty checkpoint_dir"
    return f"fit: resuming from {path} (step {step}): {left}{hint}"


class _NoBar:
    """Stands in for a tqdm bar when there is none to show."""

    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


def _progress_bar(progress: bool, *, total: int, initial: int):
    """A tqdm bar when ``progress`` is on and tqdm is installed, else a no-op."""
    if not progress:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar
        return _NoBar()
    return tqdm(total=total, initial=initial, dynamic_ncols=True)
