"""``seqjax gradnorm``: how far back does the gradient reach, per cell and sequence length?

For every cell, sequence length ``T`` and seed, the command builds a model (the cell,
a linear head on every step's output and, for the LRU, whose skip term wants
``input == hidden``, a linear input projection) and trains it with Adam (clipped at
global norm 1, :func:`seqjax.train.default_optimizer`) on fresh batches of the chosen
task, all seeds at once under ``jax.vmap``. Every step differentiates the batch loss
w.r.t. the parameters and a zero perturbation of every state
(:func:`seqjax.diagnostics.perturbed_unroll`), so the backward pass that trains the
model also gives ``||dL/dh_t||`` for ``t = 0 .. T`` (Frobenius norm over the batch).
Those norms, ``||dL/dtheta||`` and the recurrent spectrum
(:func:`seqjax.diagnostics.recurrent_spectrum`) are kept at initialisation (step 0)
and after ``--steps`` updates. The run is in float64 so that norms down to ``1e-300``
are represented (float32 underflows below ``1e-45``, which a vanishing gradient
reaches within a few hundred steps).

It writes ``gradnorm.json`` (everything), ``gradnorm.csv`` (one row per cell, T, seed,
phase and t), ``summary.csv``, ``loss.csv`` and the figures ``gradnorm_t.png``
(``||dL/dh_t||`` against ``t`` at the longest T, the shape of Arjovsky et al. 2016's
figure), ``gradnorm_T.png`` (``||dL/dh_0||`` against T) and ``loss.png`` (training
loss against the task's baseline, per T).

Run ``seqjax gradnorm --help`` for the options; the defaults finish in a few minutes
on a 2-core CPU.

References:
  Arjovsky, Shah & Bengio, "Unitary evolution recurrent neural networks", ICML 2016
  (``||dC/dh_t||`` against ``t`` at initialisation and after training).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import sys
import time
import warnings
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import seqjax
from seqjax import diagnostics, tasks, train

# name -> (constructor of the cell from the hidden size, needs an input projection)
CELLS = {
    "rnn": (lambda h: seqjax.rnn(h), False),
    "lstm": (lambda h: seqjax.lstm(h), False),
    "gru": (lambda h: seqjax.gru(h), False),
    "mgu": (lambda h: seqjax.mgu(h), False),
    "min_gru": (lambda h: seqjax.min_gru(h), False),
    "min_lstm": (lambda h: seqjax.min_lstm(h), False),
    "lru": (lambda h: seqjax.lru(h, h), True),
    # -- modern cells I (sLSTM, RG-LRU, S6)
    # -- matrix-state cells (mLSTM, DeltaNet, Gated DeltaNet, Mamba-2)
}
TASKS = {
    "adding": tasks.adding_problem,
    "adding1997": tasks.hochreiter_adding_problem,
    "copy": tasks.copy_memory,
}
DEFAULT_CELLS = ("rnn", "lstm", "gru", "min_gru", "lru")
DEFAULT_LENGTHS = (10, 30, 100, 300, 1000)
PHASES = ("init", "trained")


# ----------------------------------------------------------------------------- model


class Affine(NamedTuple):
    """A linear layer ``x @ w + b``: ``w [in, out]``, ``b [out]``."""

    w: jax.Array
    b: jax.Array


class ModelParams(NamedTuple):
    """``encoder`` (``None`` unless the cell needs an input projection), ``cell``, ``head``."""

    encoder: Optional[Affine]
    cell: Any
    head: Affine


def _affine_init(key, n_in, n_out):
    return Affine(jax.nn.initializers.lecun_normal()(key, (n_in, n_out), jnp.float32),
                  jnp.zeros((n_out,), jnp.float32))


def _affine(p, x):
    y = x @ p.w
    return y + jnp.broadcast_to(p.b, y.shape)


class StepResult(NamedTuple):
    """What one training step of one seed reports (before its update is applied)."""

    loss: jax.Array         # scalar, the batch loss
    grad_h: jax.Array       # [T + 1], ||dL/dh_t|| over the batch (Frobenius)
    grad_cell: jax.Array    # scalar, ||dL/dtheta|| over the cell's params
    grad_model: jax.Array   # scalar, the global norm of the whole model's gradient


class Experiment(NamedTuple):
    """Pure functions of one (cell, task) pair, each for one seed (vmap over seeds)."""

    init: Callable        # key -> ModelParams
    step: Callable        # (params, opt_state, examples) -> (params, opt_state, StepResult)
    optimizer: optax.GradientTransformation


def experiment(cell, task: tasks.Task, *, hidden: int, encoder: bool, learning_rate: float,
               dtype=jnp.float64, **unroll_options) -> Experiment:
    """The pure functions of one (cell, task) experiment for one seed.

    Every training step differentiates the batch loss w.r.t. the parameters *and* a
    zero perturbation of every state (:func:`seqjax.diagnostics.perturbed_unroll`),
    so the same backward pass that trains the model measures ``||dL/dh_t||``.

    Args:
      cell: a seqjax cell with ``output_size == hidden``.
      task: a :class:`seqjax.tasks.Task`.
      hidden: size of the encoder output (when ``encoder``).
      encoder: project the inputs to ``hidden`` features before the cell.
      learning_rate: Adam's learning rate (global-norm clipping at 1,
        :func:`seqjax.train.default_optimizer`).
      dtype: parameter dtype of the whole run (float64 represents gradient norms down
        to ``1e-300``; float32 underflows below ``1e-45``).
      **unroll_options: passed to :func:`seqjax.diagnostics.perturbed_unroll`
        (``associative``, ``hoist``, ``unroll``, ``remat``).

    Returns:
      An :class:`Experiment`; ``step`` takes a batch of examples
      (:func:`seqjax.tasks.sample_batch`).
    """
    optimizer = train.default_optimizer(learning_rate)

    def init(key):
        k_e, k_c, k_h = jax.random.split(key, 3)
        enc = _affine_init(k_e, task.input_size, hidden) if encoder else None
        cell_in = hidden if encoder else task.input_size
        params = ModelParams(enc, cell.init(k_c, cell_in),
                             _affine_init(k_h, cell.output_size, task.output_size))
        return jax.tree_util.tree_map(lambda a: a.astype(dtype), params)

    def loss_fn(p, eps, examples):
        def one(example, e):
            xs = example.inputs.astype(dtype)
            xs = xs if p.encoder is None else _affine(p.encoder, xs)
            _, ys = diagnostics.perturbed_unroll(cell, p.cell, xs, e, length=example.length,
                                                 **unroll_options)
            return task.loss(_affine(p.head, ys), example)

        return jnp.mean(jax.vmap(one)(examples, eps))

    def step(p, opt_state, examples):
        batch = examples.length.shape[0]
        zero = diagnostics.zero_perturbation(cell, p.cell, task.time)
        eps = jax.tree_util.tree_map(lambda z: jnp.zeros((batch,) + z.shape, z.dtype), zero)
        loss, (g, g_eps) = jax.value_and_grad(loss_fn, argnums=(0, 1))(p, eps, examples)
        norms = diagnostics.gradient_norms(diagnostics.StateGradients(loss, g_eps, g.cell),
                                           time_axis=1)
        # optax's Adam computes ``decay ** count`` (float ** int32), which
        # jax_numpy_dtype_promotion="strict" rejects; the model above is traced strictly
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(g, opt_state, p)
        result = StepResult(loss, norms.states, norms.params, optax.global_norm(g))
        return optax.apply_updates(p, updates), opt_state, result

    return Experiment(init, step, optimizer)


# ------------------------------------------------------------------------------- run


def _finite_list(a):
    return [float(v) if math.isfinite(v) else None for v in np.asarray(a, np.float64).ravel()]


def _finite(v):
    v = float(v)
    return v if math.isfinite(v) else None


def _spectrum_dict(spectrum, seed):
    return {name: {"spectral_radius": _finite(s.spectral_radius[seed]),
                   "max_singular_value": _finite(s.max_singular_value[seed])}
            for name, s in spectrum.items()}


def decay_per_step(norms) -> Optional[float]:
    """``exp(-slope)`` of a least-squares line through ``log ||dL/dh_t||`` against
    ``t`` (positive, finite entries only): the average factor by which the gradient
    norm shrinks per step back in time (``None`` with fewer than two such entries)."""
    norms = np.asarray(norms, np.float64)
    t = np.arange(norms.size)
    ok = np.isfinite(norms) & (norms > 0)
    if ok.sum() < 2:
        return None
    slope = np.polyfit(t[ok], np.log(norms[ok]), 1)[0]
    return float(np.exp(-slope))


def run(*, cells, lengths, seeds: int, task_name: str, steps: int, hidden: int, batch: int,
        learning_rate: float, progress: bool = True):
    """Runs the grid; returns ``(rows, curves)``.

    Seed ``s`` draws its models from ``fold_in(PRNGKey(s), 0)`` (the same models at
    every length) and its batches from ``fold_in(fold_in(PRNGKey(s), 1), i)`` for step
    ``i`` (the same data for every cell). For every cell and length, one training step
    is compiled and run for all seeds at once (``jax.vmap``), ``steps + 1`` times; the
    state gradients of step 0 (at initialisation) and of step ``steps`` (after
    ``steps`` updates; its own update is discarded) are kept.

    Returns:
      ``rows``: one dict per (cell, T, seed, phase) with the batch loss, the task
      baseline, ``grad_h`` (``[T + 1]`` norms), ``grad_params`` (cell),
      ``grad_model``, the fitted decay and the recurrent spectrum. ``curves``: one
      dict per (cell, T, seed) with the training loss of each step ``0 .. steps`` and
      the seconds that (cell, T) took, compilation included.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=len(cells) * len(lengths) * (steps + 1), desc="seqjax gradnorm",
               unit="step", disable=not progress, dynamic_ncols=True)
    rows, curves, data = [], [], {}
    seed_keys = jnp.stack([jax.random.PRNGKey(s) for s in range(seeds)])
    init_keys, data_keys = (jax.vmap(lambda k, i=i: jax.random.fold_in(k, i))(seed_keys)
                            for i in range(2))
    try:
        for name in cells:
            make, encoder = CELLS[name]
            initial = None
            for T in lengths:
                started = time.perf_counter()
                bar.set_postfix_str(f"{name} T={T}", refresh=True)
                task = TASKS[task_name](T)
                if T not in data:  # [seeds, steps + 1, batch, ...], shared by the cells
                    draw = jax.vmap(jax.vmap(
                        lambda k, i, task=task: tasks.sample_batch(
                            task, jax.random.fold_in(k, i), batch), in_axes=(None, 0)),
                        in_axes=(0, None))
                    data[T] = jax.jit(draw)(data_keys, jnp.arange(steps + 1))
                # linear-recurrence cells step sequentially: the same numbers as their
                # associative scan, and on CPU several times faster to compile
                exp = experiment(make(hidden), task, hidden=hidden, encoder=encoder,
                                 learning_rate=learning_rate, associative=False)
                if initial is None:  # the same models (per seed) at every length
                    params = jax.jit(jax.vmap(exp.init))(init_keys)
                    initial = params, jax.vmap(exp.optimizer.init)(params)
                    spectrum_fn = jax.jit(jax.vmap(diagnostics.recurrent_spectrum))
                params, opt_state = initial
                step = jax.jit(jax.vmap(
                    lambda p, o, d, i: exp.step(p, o, jax.tree_util.tree_map(lambda a: a[i], d)),
                    in_axes=(0, 0, 0, None)))
                measured, losses = {}, []
                for i in range(steps + 1):
                    new_params, opt_state, result = step(params, opt_state, data[T], i)
                    result = jax.device_get(result)
                    losses.append(result.loss)
                    if i in (0, steps):
                        measured["init" if i == 0 else "trained"] = (
                            result, jax.device_get(spectrum_fn(params.cell)))
                    params = new_params
                    bar.update(1)
                losses = np.stack(losses, axis=1)
                seconds = time.perf_counter() - started
                for s in range(seeds):
                    curves.append(dict(cell=name, T=T, seed=s, loss=_finite_list(losses[s]),
                                       baseline=task.baseline, seconds=seconds))
                    for phase in PHASES[:1] if steps == 0 else PHASES:
                        r, spectrum = measured[phase]
                        g = np.asarray(r.grad_h[s], np.float64)
                        rows.append(dict(
                            cell=name, T=T, time=task.time, seed=s, phase=phase,
                            step=0 if phase == "init" else steps,
                            loss=_finite(r.loss[s]), baseline=task.baseline,
                            grad_h0=_finite(g[0]), grad_hT=_finite(g[-1]),
                            grad_params=_finite(r.grad_cell[s]),
                            grad_model=_finite(r.grad_model[s]),
                            decay_per_step=decay_per_step(g),
                            underflow_steps=int(np.sum(g == 0)),
                            spectrum=_spectrum_dict(spectrum, s), grad_h=_finite_list(g)))
    finally:
        bar.close()
    return rows, curves


# ----------------------------------------------------------------------------- output


def _geomean(curves):
    """Per step over seeds: the geometric mean, the min and the max. Entries that
    underflowed to 0 are left out of the mean (NaN where every seed underflowed)."""
    positive = np.where(curves > 0, curves, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        mean = 10 ** np.nanmean(np.log10(positive), axis=0)
        return mean, np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)


def _grad_matrix(rows, cell, T, phase):
    sel = [r for r in rows if r["cell"] == cell and r["T"] == T and r["phase"] == phase]
    return np.array([[np.nan if v is None else v for v in r["grad_h"]] for r in sel])


def _gmean(values):
    values = np.array([np.nan if v is None else v for v in values], np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.exp(np.mean(np.log(values)))) if values.size else None


def summarise(rows, cells, lengths):
    """Per (cell, T, phase), over seeds: mean loss, geometric means of the norms, and
    the decay fitted to the seed-averaged curve."""
    out = []
    for cell in cells:
        for T in lengths:
            for phase in PHASES:
                sel = [r for r in rows if r["cell"] == cell and r["T"] == T and r["phase"] == phase]
                if not sel:
                    continue
                mean_curve = _geomean(_grad_matrix(rows, cell, T, phase))[0]
                losses = [r["loss"] for r in sel if r["loss"] is not None]
                out.append(dict(
                    cell=cell, T=T, phase=phase, step=sel[0]["step"],
                    loss=float(np.mean(losses)) if losses else None, baseline=sel[0]["baseline"],
                    grad_h0=_finite(mean_curve[0]), grad_hT=_finite(mean_curve[-1]),
                    decay_per_step=decay_per_step(mean_curve),
                    grad_params=_gmean(r["grad_params"] for r in sel),
                    grad_model=_gmean(r["grad_model"] for r in sel),
                    underflow_steps=max(r["underflow_steps"] for r in sel)))
    return out


def _fmt(v, spec):
    return "—" if v is None else format(v, spec)


def table(summary) -> str:
    """A markdown table of :func:`summarise`'s rows."""
    head = ("| cell | T | phase | loss | baseline | ‖∂L/∂h_0‖ | ‖∂L/∂h_T‖ | decay/step | "
            "‖∂L/∂θ_cell‖ |")
    lines = [head, "|" + "---|" * 9]
    for r in summary:
        lines.append(f"| {r['cell']} | {r['T']} | {r['phase']} (step {r['step']}) | "
                     f"{_fmt(r['loss'], '.4f')} | {r['baseline']:.4f} | "
                     f"{_fmt(r['grad_h0'], '.3g')} | {_fmt(r['grad_hT'], '.3g')} | "
                     f"{_fmt(r['decay_per_step'], '.4f')} | {_fmt(r['grad_params'], '.3g')} |")
    return "\n".join(lines)


def write(out, meta, rows, curves, *, plots=True):
    """Writes the JSON, the CSVs and (with ``plots``) the PNGs; returns their paths."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    summary = summarise(rows, meta["cells"], meta["lengths"])
    paths["json"] = out / "gradnorm.json"
    paths["json"].write_text(json.dumps(
        {"meta": meta, "summary": summary, "rows": rows, "curves": curves}, allow_nan=False))
    paths["csv"] = out / "gradnorm.csv"
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "T", "seed", "phase", "step", "t", "grad_norm"])
        for r in rows:
            for t, v in enumerate(r["grad_h"]):
                w.writerow([r["cell"], r["T"], r["seed"], r["phase"], r["step"], t,
                            "" if v is None else repr(v)])
    paths["summary"] = out / "summary.csv"
    keys = ["cell", "T", "seed", "phase", "step", "loss", "baseline", "grad_h0", "grad_hT",
            "decay_per_step", "grad_params", "grad_model", "underflow_steps"]
    with open(paths["summary"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for r in rows:
            w.writerow([r[k] for k in keys])
    paths["loss"] = out / "loss.csv"
    with open(paths["loss"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "T", "seed", "step", "loss", "baseline"])
        for c in curves:
            for i, v in enumerate(c["loss"]):
                w.writerow([c["cell"], c["T"], c["seed"], i, v, c["baseline"]])
    if plots:
        paths.update(plot(out, meta, rows, curves))
    return paths, summary


def _decade_ticks(ax, most=9):
    """Log-axis ticks at 10^(k n) with the smallest round k giving at most ``most``."""
    from matplotlib.ticker import LogLocator, NullLocator

    low, high = ax.get_ylim()
    span = math.log10(high) - math.log10(low)
    k = next(k for k in (1, 2, 5, 10, 20, 25, 50, 100) if span / k <= most)
    ax.yaxis.set_major_locator(LogLocator(base=10.0 ** k))
    ax.yaxis.set_minor_locator(NullLocator())


def plot(out, meta, rows, curves):
    """``gradnorm_t.png``, ``gradnorm_T.png`` and (after training) ``loss.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = pathlib.Path(out)
    cells, lengths, steps = meta["cells"], meta["lengths"], meta["steps"]
    colors = {c: plt.get_cmap("tab10")(i) for i, c in enumerate(cells)}
    phases = PHASES if steps else PHASES[:1]
    when = {"init": "at initialisation", "trained": f"after {steps} training steps"}
    setup = (f"{meta['task_name']}; hidden {meta['hidden']}, batch {meta['batch']}, "
             f"{meta['seeds']} seeds")
    paths = {}

    # ||dL/dh_t|| against t at the longest T
    T = max(lengths)
    fig, axes = plt.subplots(1, len(phases), figsize=(6.2 * len(phases), 4.4), sharey=True,
                             squeeze=False)
    for ax, phase in zip(axes[0], phases):
        for cell in cells:
            mean, lo, hi = _geomean(_grad_matrix(rows, cell, T, phase))
            t = np.arange(mean.size)
            decay = decay_per_step(mean)
            label = cell if decay is None else f"{cell} (×{decay:.3f}/step)"
            ax.plot(t, mean, color=colors[cell], label=label, lw=1.6)
            ax.fill_between(t, lo, hi, color=colors[cell], alpha=0.18, lw=0)
        ax.set_yscale("log")
        ax.set_xlabel("t (time step of the state h_t)")
        ax.set_title(when[phase], fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    _decade_ticks(axes[0][0])
    axes[0][0].set_ylabel("‖∂L/∂h_t‖ (log scale)")
    fig.suptitle(f"Gradient norm w.r.t. the state, T={T}: {setup}\n"
                 f"geometric mean over seeds, band min–max; legend: fitted decay per step "
                 f"back in time", fontsize=10)
    fig.tight_layout()
    paths["plot_t"] = out / "gradnorm_t.png"
    fig.savefig(paths["plot_t"], dpi=90)
    plt.close(fig)

    # ||dL/dh_0|| against T
    fig, axes = plt.subplots(1, len(phases), figsize=(6.2 * len(phases), 4.2), sharey=True,
                             squeeze=False)
    for ax, phase in zip(axes[0], phases):
        for cell in cells:
            h0 = [_geomean(_grad_matrix(rows, cell, L, phase))[0][0] for L in lengths]
            ax.plot(lengths, h0, "o-", color=colors[cell], label=cell)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_title(when[phase], fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    _decade_ticks(axes[0][0])
    axes[0][0].set_ylabel("‖∂L/∂h_0‖ (log scale)")
    fig.suptitle(f"Gradient norm w.r.t. the initial state against T: {setup}\n"
                 "geometric mean over seeds", fontsize=10)
    fig.tight_layout()
    paths["plot_T"] = out / "gradnorm_T.png"
    fig.savefig(paths["plot_T"], dpi=90)
    plt.close(fig)

    if steps:
        n = len(lengths)
        cols = min(n, 3)
        nrows = math.ceil(n / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.3 * cols, 3.3 * nrows), squeeze=False)
        for ax, L in zip(axes.ravel(), lengths):
            for cell in cells:
                sel = [c for c in curves if c["cell"] == cell and c["T"] == L]
                loss = np.array([[np.nan if v is None else v for v in c["loss"]] for c in sel])
                ax.plot(np.arange(loss.shape[1]), np.nanmean(loss, axis=0),
                        color=colors[cell], label=cell, lw=1.2)
            baseline = next(c["baseline"] for c in curves if c["T"] == L)
            ax.axhline(baseline, color="k", ls="--", lw=1, label=f"baseline {baseline:.3g}")
            ax.set_title(f"T={L}", fontsize=10)
            ax.set_xlabel("updates applied")
            ax.set_ylabel("training loss")
            ax.grid(True, alpha=0.3)
        for ax in axes.ravel()[n:]:
            ax.axis("off")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"Training loss (mean over seeds) against the task baseline: {setup}",
                     fontsize=10)
        fig.tight_layout()
        paths["plot_loss"] = out / "loss.png"
        fig.savefig(paths["plot_loss"], dpi=80)
        plt.close(fig)
    return paths


# ------------------------------------------------------------------------------- main


def _ints(text):
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(choices):
    def parse(text):
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        unknown = [v for v in values if v not in choices]
        if not values or unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {unknown or text!r}; choose from {', '.join(choices)}")
        return values

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seqjax gradnorm",
        description="Per-step gradient norms ||dL/dh_t|| for cells x sequence lengths x "
                    "seeds, at initialisation and after training on a long-dependency task.")
    p.add_argument("--cells", type=_names(CELLS), default=DEFAULT_CELLS,
                   help=f"comma-separated, from {', '.join(CELLS)} (default: "
                        f"{','.join(DEFAULT_CELLS)})")
    p.add_argument("--lengths", type=_ints, default=DEFAULT_LENGTHS,
                   help="comma-separated sequence lengths T (default: "
                        f"{','.join(map(str, DEFAULT_LENGTHS))}); for adding1997 the minimal "
                        "length, for copy the delay")
    p.add_argument("--task", choices=tuple(TASKS), default="adding",
                   help="adding (Arjovsky et al. 2016), adding1997 (Hochreiter & Schmidhuber "
                        "1997) or copy (copying memory); default adding")
    p.add_argument("--seeds", type=int, default=3, help="seeds per cell and T (default 3)")
    p.add_argument("--steps", type=int, default=100,
                   help="training steps between the two measurements (default 100; 0: "
                        "initialisation only)")
    p.add_argument("--hidden", type=int, default=32, help="hidden size (default 32)")
    p.add_argument("--batch", type=int, default=8,
                   help="examples per training step (default 8)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--out", default="results/gradnorm",
                   help="output folder (default results/gradnorm)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="write the PNG figures (default on)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="show a progress bar (default on)")
    return p


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv=None) -> int:
    """The ``seqjax gradnorm`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    args = p.parse_args(argv)
    for name in ("seeds", "hidden", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.steps < 0:
        p.error("--steps must be >= 0")
    if not args.lr > 0:
        p.error("--lr must be > 0")
    try:
        for T in args.lengths:
            TASKS[args.task](T)
    except ValueError as e:
        p.error(str(e))

    start = time.perf_counter()
    with jax.enable_x64(True):  # the whole run in float64 (see `experiment`)
        rows, curves = run(cells=args.cells, lengths=args.lengths, seeds=args.seeds,
                           task_name=args.task, steps=args.steps, hidden=args.hidden,
                           batch=args.batch, learning_rate=args.lr, progress=args.progress)
    wall = time.perf_counter() - start
    dev = jax.devices()[0]
    meta = dict(
        command="seqjax gradnorm " + " ".join(argv), cells=list(args.cells),
        lengths=list(args.lengths), task=args.task,
        task_name=TASKS[args.task](max(args.lengths)).name.split(", T=")[0],
        seeds=args.seeds, steps=args.steps, hidden=args.hidden, batch=args.batch, lr=args.lr,
        optimizer="adam, clip_by_global_norm(1.0)", dtype="float64", wall_s=wall,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=str(dev), platform=dev.platform, cpu_count=os.cpu_count(),
        machine=platform.machine(),
        versions={"python": platform.python_version(), "seqjax": seqjax.__version__,
                  **{d: _version(d) for d in ("jax", "jaxlib", "optax", "numpy", "matplotlib")}})
    paths, summary = write(args.out, meta, rows, curves, plots=args.plots)
    print(table(summary))
    print(f"\n{meta['task_name']}; seeds {args.seeds}; wall time {wall:.1f} s on "
          f"{os.cpu_count()} CPU cores ({dev.platform})")
    print("wrote " + ", ".join(str(v) for v in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
