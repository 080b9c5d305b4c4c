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
* The same holds when the program runs as several processes (``jax.distributed``;
  :mod:`seqjax.launch`): the mesh spans every process's devices, each process's
  ``batches`` returns **its own rows** of the global batch (:func:`process_slice`
  says which), assembled into one global array with
  ``jax.make_array_from_process_local_data``; process 0 writes the checkpoints, and
  every process restores them. A mesh with a ``"time"`` axis as well
  (``make_mesh(time=k)``) adds sequence parallelism (:mod:`seqjax.parallel`) over the
  devices of each process.
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
from seqjax.parallel import TIME_AXIS

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


def make_mesh(devices=None, *, time: Optional[int] = None) -> Mesh:
    """A mesh for data parallelism, optionally with sequence parallelism.

    Without ``time`` the mesh has one axis, ``"data"``, over ``devices``. With
    ``time=k`` it has two, ``("data", "time")``, of shape ``[n / k, k]``: each run of
    ``k`` consecutive devices splits the time axis of its rows
    (:func:`seqjax.parallel.unroll_batch` with ``batch_axis="data"``), and the rows are
    split over the ``n / k`` such groups.

    Args:
      devices: the devices, in mesh order. Default: every device of every process
        (``jax.devices()``), process by process, so that each process's devices are
        consecutive: its rows of the batch are one contiguous block
        (:func:`process_slice`), and with ``k`` dividing its device count the
        ``"time"`` axis stays inside one process (no network traffic in the scan).
      time: size of the ``"time"`` axis (``None``: no such axis).

    Returns:
      A :class:`jax.sharding.Mesh` with axis ``"data"``, or ``("data", "time")``.

    Raises:
      ValueError: ``time`` is not a positive divisor of the number of devices.
    """
    if devices is None:
        devices = jax.devices()
        if jax.process_count() > 1:
            devices = sorted(devices, key=lambda d: (d.process_index, d.id))
    devices = list(devices)
    if time is None:
        return Mesh(np.asarray(devices), (DATA_AXIS,))
    if isinstance(time, bool) or not isinstance(time, int) or time < 1 \
            or len(devices) % time:
        raise ValueError(f"make_mesh: time must be a positive divisor of the number of "
                         f"devices ({len(devices)}), got {time!r}")
    return Mesh(np.asarray(devices).reshape(-1, time), (DATA_AXIS, TIME_AXIS))


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


def _local_data_shards(mesh: Mesh) -> int:
    """How many positions along ``"data"`` this process's devices occupy."""
    axis = mesh.axis_names.index(DATA_AXIS)
    here = jax.process_index()
    positions = {index[axis] for index, device in np.ndenumerate(mesh.devices)
                 if device.process_index == here}
    return len(positions)


def _assemble(path, leaf, sharding: NamedSharding, shards: int):
    """One batch leaf as a global array: this process's rows, or an array that is
    global already."""
    mesh = sharding.mesh
    n = _data_size(mesh)
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        if leaf.ndim == 0 or leaf.shape[0] % n:
            raise ValueError(
                f"data parallel: every batch leaf needs a leading batch axis divisible by the "
                f"{n} devices of the mesh's {DATA_AXIS!r} axis; batch"
                f"{jax.tree_util.keystr(path)} has global shape {tuple(leaf.shape)}")
        return jax.device_put(leaf, sharding)
    local = np.asarray(leaf)
    if local.ndim == 0 or local.shape[0] % shards:
        raise ValueError(
            f"data parallel over {jax.process_count()} processes: each process's batch holds "
            f"its own rows of the global batch (seqjax.train.process_slice), a leading axis "
            f"divisible by its {shards} device(s) along the mesh's {DATA_AXIS!r} axis; "
            f"batch{jax.tree_util.keystr(path)} has shape {tuple(local.shape)} on process "
            f"{jax.process_index()}")
    rows = local.shape[0] // shards * n
    return jax.make_array_from_process_local_data(sharding, local,
                                                  (rows,) + local.shape[1:])


def shard_batch(batch, mesh: Mesh):
    """Puts ``batch`` on ``mesh``, split along its leading axis over ``"data"``.

    When ``mesh`` spans several processes, ``batch`` is this process's rows of the
    global batch (:func:`process_slice`): the global array is assembled from every
    process's rows with ``jax.make_array_from_process_local_data``. (A leaf that is
    already a global ``jax.Array`` is resharded as it is.)

    Raises:
      ValueError: a leaf's batch size is not divisible by the number of devices (of
        this process, along ``"data"``, when the mesh spans several).
    """
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    if not mesh.is_multi_process:
        _check_batch(batch, mesh)
        return jax.device_put(batch, sharding)
    shards = _local_data_shards(mesh)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: _assemble(path, leaf, sharding, shards), batch)


def process_slice(batch_size: int, mesh: Mesh) -> slice:
    """The rows of a global batch of ``batch_size`` that this process feeds.

    With ``mesh`` over several processes, each process's ``batches`` returns only its
    rows, ``global_batch[process_slice(batch_size, mesh)]``: read those from disk, or
    make the global batch from the step's key (the same on every process) and slice
    it. With one process the slice is every row.

    Args:
      batch_size: the global batch size (divisible by the size of ``"data"``).
      mesh: the mesh of :func:`fit` (with a ``"data"`` axis).

    Returns:
      ``slice(start, stop)``; e.g. ``slice(8, 16)`` on process 1 of 2 for 16 rows.

    Raises:
      ValueError: ``batch_size`` is not divisible by the size of ``"data"``, or this
        process's rows are not one contiguous block (devices not ordered process by
        process; :func:`make_mesh` orders them so).
    """
    n = _data_size(mesh)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1 \
            or batch_size % n:
        raise ValueError(f"process_slice: batch_size must be a positive multiple of the {n} "
                         f"devices of the mesh's {DATA_AXIS!r} axis, got {batch_size!r}")
    index = NamedSharding(mesh, P(DATA_AXIS)).addressable_devices_indices_map((batch_size,))
    blocks = sorted({s[0].indices(batch_size)[:2] for s in index.values()})
    start, stop = blocks[0][0], blocks[-1][1]
    if sum(b - a for a, b in blocks) != stop - start:
        raise ValueError(f"process_slice: process {jax.process_index()}'s rows are not "
                         f"contiguous ({blocks}); order the mesh's devices process by "
                         "process (seqjax.train.make_mesh does)")
    return slice(start, stop)


def _replicated(leaf, sharding: NamedSharding):
    """``leaf`` on every device of a mesh that spans several processes."""
    if not isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
        return leaf
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        return jax.device_put(leaf, sharding)
    if isinstance(leaf, jax.Array) and checkpoint._is_key(leaf):
        return jax.random.wrap_key_data(_replicated(jax.random.key_data(leaf), sharding),
                                        impl=jax.random.key_impl(leaf))
    # a process-local array, the same on every process: each process fills its own
    # devices from host memory (no process can write to another's devices)
    value = np.asarray(jax.device_get(leaf))
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def replicate(tree, mesh: Mesh):
    """Puts ``tree`` on every device of ``mesh`` (``PartitionSpec()``).

    When ``mesh`` spans several processes, every process passes the same values
    (params initialised from the same key, a restored checkpoint).
    """
    sharding = NamedSharding(mesh, P())
    if not mesh.is_multi_process:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(lambda leaf: _replicated(leaf, sharding), tree)


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
        floating-point reduction order. A mesh over several processes works the
        same, with each process passing its own rows of the batch
        (:func:`shard_batch`); a ``"time"`` axis (``make_mesh(time=k)``) is there for
        ``loss_fn`` to use (:func:`seqjax.parallel.unroll_batch` with
        ``batch_axis="data"``).

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
      mesh: data-parallel mesh (see :func:`make_train_step`). Required when the
        program runs as several processes (``jax.distributed``): a mesh over every
        process's devices (:func:`make_mesh`), with ``batches`` returning this
        process's rows of each batch (:func:`process_slice`). Then every process runs
        ``fit`` with the same arguments; process 0 writes the checkpoints (into a
        ``checkpoint_dir`` that every process sees) and shows the progress bar.
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
        ``checkpoint_dir``; several processes and no ``mesh``.
      RuntimeError: the processes of a multi-process run see different checkpoints
        in ``checkpoint_dir`` (a directory not shared between hosts).
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

    if mesh is None and jax.process_count() > 1:
        raise ValueError(
            f"fit: this program runs as {jax.process_count()} processes (jax.distributed); "
            "pass mesh=seqjax.train.make_mesh() so that they train one model together, "
            "each feeding its rows of the batch (seqjax.train.process_slice)")
    many = mesh is not None and mesh.is_multi_process
    lead = not many or jax.process_index() == 0  # writes checkpoints, shows progress

    state = init_state(params, optimizer, seed)
    saved = None  # the step of the checkpoint that holds the current state
    if checkpoint_dir is not None:
        state, found = _resumed(state, checkpoint_dir, resume, steps, many, lead)
        saved = state.step if found else None
    if many:  # on the mesh from the start: every save is then one collective save
        state = state._replace(**replicate(
            {"params": state.params, "opt_state": state.opt_state, "rng": state.rng}, mesh))

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
        nonlocal saved
        if checkpoint_dir is not None:
            # on a mesh over several processes: every process gives its state, process
            # 0 writes, and every process returns once the file is complete
            checkpoint.save(checkpoint.step_path(checkpoint_dir, state.step), state)
            if lead:
                checkpoint.prune(checkpoint_dir, keep_checkpoints)
            saved = state.step

    history = []
    bar = _progress_bar(progress and lead, total=steps, initial=min(state.step, steps))
    try:
        while state.step < steps:
            k = state.step
            rng, data_key, step_key = jax.random.split(state.rng, 3)
            batch = next_batch(k, data_key)
            try:
                new_params, new_opt, metrics = train_step(state.params, state.opt_state,
                                                          batch, step_key)
                record = _scalars(metrics)
            except jax.errors.JaxRuntimeError as e:
                if not many:
                    raise
                raise _peer_failure(k, e) from e
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
        if saved != state.step:
            save(state)
    finally:
        bar.close()
    return state, history


def _resumed(state: TrainState, checkpoint_dir, resume, steps: int, many: bool,
             lead: bool):
    """``(state, None)``, or ``(the latest checkpoint in checkpoint_dir, its path)`` as
    ``resume`` says (announced on stderr by process 0)."""
    found = _latest(checkpoint_dir, many)
    if found is not None and resume is False:
        raise FileExistsError(
            f"fit(resume=False): {os.fspath(checkpoint_dir)!r} already holds checkpoints "
            f"of an earlier run (latest {found}); pass resume=True to continue it, or "
            "give a new or empty checkpoint_dir")
    if found is None and resume is True:
        raise FileNotFoundError(
            f"fit(resume=True): no checkpoint (ckpt_<step>.npz) in "
            f"{os.fspath(checkpoint_dir)!r} to resume from")
    if found is None:
        return state, None
    state = checkpoint.restore(found, like=state)
    if lead:
        print(_resume_note(found, state.step, steps, resume), file=sys.stderr)
    return state, found


def _latest(checkpoint_dir, many: bool):
    """:func:`seqjax.checkpoint.latest`; over several processes, the same on every one
    (or a clear error: the directory is not shared)."""
    found = checkpoint.latest(checkpoint_dir)
    if not many:
        return found
    from jax.experimental import multihost_utils

    step = -1 if found is None else checkpoint.checkpoints(checkpoint_dir)[-1][0]
    seen = [int(s) for s in multihost_utils.process_allgather(np.int32(step))]
    if len(set(seen)) > 1:
        raise RuntimeError(
            f"fit: the {len(seen)} processes see different checkpoints in "
            f"{os.fspath(checkpoint_dir)!r} (latest step by process: "
            f"{[s if s >= 0 else None for s in seen]}); checkpoint_dir must be one "
            "directory that every process sees (a shared file system)")
    return found


def _peer_failure(step: int, error: Exception) -> RuntimeError:
    """The error of a step whose collectives with the other processes broke."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return RuntimeError(
        f"fit: step {step} (0-based) failed on process {jax.process_index()} of "
        f"{jax.process_count()}: the exchange with the other processes broke, most likely "
        f"because one of them died or was stopped ({first}). Restart every process: fit "
        "resumes from the last complete checkpoint")


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
