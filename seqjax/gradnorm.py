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
phase and t), ``summary.csv``, ``loss.csv`` and the figures ``gradnorm_by_step.png``
(``||dL/dh_t||`` against ``t`` at the longest T, the shape of Arjovsky et al. 2016's
figure), ``gradnorm_by_length.png`` (``||dL/dh_0||`` against T) and ``loss.png``
(training loss against the task's baseline, per T).

Run ``seqjax gradnorm --help`` for the options; the defaults finish in a few minutes
on a 2-core CPU.

Three further experiments (:mod:`seqjax.experiments` computes them; this module
only wires them to files and figures), each with a quick default of about a minute
and a ``--full`` configuration:

* ``seqjax gradnorm memory``: the curse of memory (Zucchet & Orvieto 2024, Figures
  1-2), measured variances of ``h_t`` and ``dh_t/d lambda`` against the closed forms.
* ``seqjax gradnorm propagation``: signal propagation at initialisation (their
  Figure 5) in a 4-layer network, against the characteristic time ``t``.
* ``seqjax gradnorm learnability``: which cell learns the adding / copy problem at
  which length ``T``, beside ``||dL/dh_0||`` at initialisation; results are cached per
  (cell, task, T, seed) in the output JSON, so a run adds only what is missing.

References:
  Arjovsky, Shah & Bengio, "Unitary evolution recurrent neural networks", ICML 2016
  (``||dC/dh_t||`` against ``t`` at initialisation and after training).
  Zucchet & Orvieto, "Recurrent neural networks: vanishing and exploding gradients are
  not the end of the story", NeurIPS 2024.
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
from seqjax import _cli, diagnostics, experiments, tasks, train

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
    "slstm": (lambda h: seqjax.slstm(h), False),  # 4 heads: hidden divisible by 4
    "rg_lru": (lambda h: seqjax.rg_lru(h), True),  # input = hidden: projected first
    "s6": (lambda h: seqjax.s6(h), True),  # N = 16 per channel; input = hidden
    # -- matrix-state cells (mLSTM, DeltaNet, Gated DeltaNet, Mamba-2)
    # heads of 64 channels (one head up to hidden 127); gradnorm steps them with apply,
    # the same numbers as their chunkwise form; ||dL/dh_t|| is over the whole state
    "mlstm": (lambda h: seqjax.mlstm(h), False),
    "delta_net": (lambda h: seqjax.delta_net(h), False),
    "gated_delta_net": (lambda h: seqjax.gated_delta_net(h), False),
    "mamba2": (lambda h: seqjax.mamba2(h, state_size=16), False),
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
    """``gradnorm_by_step.png``, ``gradnorm_by_length.png`` and (after training)
    ``loss.png``."""
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
    paths["plot_t"] = out / "gradnorm_by_step.png"
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
    paths["plot_T"] = out / "gradnorm_by_length.png"
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seqjax gradnorm",
        description="Per-step gradient norms ||dL/dh_t|| for cells x sequence lengths x "
                    "seeds, at initialisation and after training on a long-dependency task "
                    "(Arjovsky et al. 2016's figure). Three further experiments are "
                    "subcommands; see below.",
        epilog="experiments (each: seqjax gradnorm NAME --help; quick by default, --full "
               "for the committed configuration):\n" + "\n".join(
                   f"  {name:<13} {help_}" for name, (help_, _) in EXPERIMENTS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=_cli.names(CELLS), default=DEFAULT_CELLS,
                   help=f"comma-separated, from {', '.join(CELLS)} (default: "
                        f"{','.join(DEFAULT_CELLS)})")
    p.add_argument("--lengths", type=_cli.positive_ints, default=DEFAULT_LENGTHS,
                   help="comma-separated sequence lengths T (default: "
                        f"{','.join(map(str, DEFAULT_LENGTHS))}); for adding1997 the minimal "
                        "length, for copy the delay")
    p.add_argument("--task", choices=tuple(TASKS), default="adding",
                   help="adding (Arjovsky et al. 2016), adding1997 (Hochreiter & Schmidhuber "
                        "1997) or copy (copying memory); default adding")
    p.add_argument("--seeds", type=_cli.positive_int, default=3,
                   help="seeds per cell and T (default 3)")
    p.add_argument("--steps", type=_cli.nonnegative_int, default=100,
                   help="training steps between the two measurements (default 100; 0: "
                        "initialisation only)")
    p.add_argument("--hidden", type=_cli.positive_int, default=32,
                   help="hidden size (default 32)")
    p.add_argument("--batch", type=_cli.positive_int, default=8,
                   help="examples per training step (default 8)")
    p.add_argument("--lr", type=_cli.positive_float, default=1e-3,
                   help="Adam learning rate (default 1e-3)")
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
    if argv and argv[0] in EXPERIMENTS:
        return EXPERIMENTS[argv[0]][1](argv[1:])
    p = parser()
    args = p.parse_args(argv)
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


# ======================================================= the three further experiments
#
# Each experiment: a quick default (about a minute on 2 CPU cores) and ``--full`` (the
# configuration whose results are committed under docs/science/); explicit options
# override either. The computing is in seqjax.experiments; here: options, files, plots.


def _floats_in(low: float, high: float, *, high_open: bool = False):
    """argparse type: a non-empty comma list of numbers in ``[low, high]`` (``high``
    excluded with ``high_open``), in ``seqjax._cli``'s one-line style."""
    rule = (f"a comma list of numbers in [{low:g}, {high:g}{')' if high_open else ']'}, "
            "e.g. 0,0.9")

    def parse(text):
        parts = [v.strip() for v in text.split(",")]
        try:
            values = tuple(float(v) for v in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}") from None
        if not values or any(not (low <= v <= high) or (high_open and v == high)
                             or not math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}")
        return values

    parse.__name__ = "floats_in"
    return parse


def _settle(args, quick: dict, full: dict):
    """Options left unset (``None``) take the quick or the ``--full`` value."""
    chosen = full if args.full else quick
    for k, v in chosen.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def _meta(prog, argv, started, **config):
    """What every result file records: command, configuration, machine, versions and
    wall time."""
    dev = jax.devices()[0]
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return dict(
        command=" ".join(["seqjax", "gradnorm", prog] + list(argv)), **config,
        wall_s=round(time.perf_counter() - started, 1),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=str(dev), platform=dev.platform, cpu_count=os.cpu_count(),
        machine=f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores",
        load_average_at_end=load,
        versions={"python": platform.python_version(), "seqjax": seqjax.__version__,
                  **{d: _version(d) for d in ("jax", "jaxlib", "optax", "numpy",
                                              "matplotlib")}})


def _write_json(path, data):
    path = pathlib.Path(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":"), allow_nan=False))
    os.replace(tmp, path)  # a run stopped mid-write leaves the last complete file


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _say(progress, message):
    if progress:
        print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ curse of memory

MEMORY_QUICK = dict(rhos=(0.0, 0.9, 0.99), per_decade=2, samples=1024, horizon=8.0,
                    decades=4.0, chunk=512, seed=0, out="results/memory")
MEMORY_FULL = dict(rhos=(0.0, 0.9, 0.99), per_decade=4, samples=4096, horizon=8.0,
                   decades=4.0, chunk=512, seed=0, out="docs/science")


def memory_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seqjax gradnorm memory",
        description="The curse of memory (Zucchet & Orvieto 2024, Figures 1-2): for "
                    "h_{t+1} = lambda h_t + gamma x_{t+1} driven by unit-variance inputs of "
                    "autocorrelation rho, Monte Carlo estimates of Var h and of the "
                    "sensitivity Var dh/dlambda through a seqjax diagonal linear cell "
                    "(forward-mode jax.jvp), against the closed forms, for lambda = "
                    "1 - 10^-k; with and without the LRU's normalisation gamma = "
                    "sqrt(1 - lambda^2) and exponential parametrisation lambda = "
                    "exp(-exp(nu)). Writes memory.json, memory.csv, memory.png.")
    p.add_argument("--full", action="store_true",
                   help="the committed configuration: 4 lambdas per decade, 4096 sequences "
                        "per point, written to docs/science")
    p.add_argument("--rhos", type=_floats_in(0.0, 1.0, high_open=True),
                   help="input autocorrelations (default 0,0.9,0.99)")
    p.add_argument("--decades", type=_cli.float_in(0.1, 6.0),
                   help="largest k in lambda = 1 - 10^-k (default 4)")
    p.add_argument("--per-decade", dest="per_decade", type=_cli.positive_int,
                   help="lambdas per decade of 1 - lambda (quick 2, full 4)")
    p.add_argument("--samples", type=_cli.positive_int,
                   help="independent sequences per (lambda, rho) (quick 1024, full 4096)")
    p.add_argument("--horizon", type=_cli.positive_float,
                   help="sequence length in units of the slowest timescale, "
                        "horizon / (1 - max(lambda, rho)) steps (default 8: stationary to "
                        "~1e-5)")
    p.add_argument("--chunk", type=_cli.positive_int,
                   help="steps per seqjax.unroll call (default 512)")
    p.add_argument("--seed", type=_cli.nonnegative_int, help="PRNG seed (default 0)")
    p.add_argument("--out", help="output folder (quick: results/memory; full: docs/science)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="write memory.png (default on)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="print one line per point to stderr (default on)")
    return p


def memory_lambdas(decades: float, per_decade: int) -> list:
    """``lambda = 1 - 10^-k`` for ``k = 1/per_decade, 2/per_decade, ... <= decades``."""
    n = int(math.floor(decades * per_decade + 1e-9))
    return [1.0 - 10.0 ** (-(i + 1) / per_decade) for i in range(n)]


def main_memory(argv) -> int:
    """``seqjax gradnorm memory``."""
    p = memory_parser()
    args = _settle(p.parse_args(argv), MEMORY_QUICK, MEMORY_FULL)
    lams = memory_lambdas(args.decades, args.per_decade)
    if not lams:
        p.error(f"--decades {args.decades} with --per-decade {args.per_decade} gives no lambda")
    started = time.perf_counter()
    rows = []
    with jax.enable_x64(True):
        for i, rho in enumerate(args.rhos):
            for j, lam in enumerate(lams):
                t0 = time.perf_counter()
                steps = experiments.memory_steps(lam, rho, horizon=args.horizon)
                key = jax.random.fold_in(jax.random.PRNGKey(args.seed), i * 1000 + j)
                r = experiments.memory_monte_carlo(key, lam, rho, samples=args.samples,
                                                   steps=steps, chunk=args.chunk)
                rows.append(r)
                _say(args.progress, f"rho={rho:g} 1-lambda={1 - lam:.3g}: {r['steps']} steps, "
                                    f"{time.perf_counter() - t0:.1f} s")
    meta = _meta("memory", argv, started, rhos=list(args.rhos), lambdas=lams,
                 samples=args.samples, horizon=args.horizon, chunk=args.chunk, seed=args.seed,
                 dtype="float64", variants=[v.name for v in experiments.MEMORY_VARIANTS],
                 model="h_t = lambda h_{t-1} + gamma x_t, x unit-variance AR(1) of "
                       "autocorrelation rho, h_0 = 0; sensitivity by forward-mode jvp")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "memory.json", dict(meta=meta, rows=rows))
    with open(out / "memory.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rho", "lambda", "one_minus_lambda", "variant", "steps", "samples",
                    "var_h", "var_h_se", "theory_h", "var_dh", "var_dh_se", "theory_dh"])
        for r in rows:
            for v in experiments.MEMORY_VARIANTS:
                d = r[v.name]
                w.writerow([r["rho"], repr(r["lam"]), f"{1 - r['lam']:.6g}", v.name, r["steps"],
                            r["samples"], d["var_h"], d["var_h_se"], d["theory_h"],
                            d["var_dh"], d["var_dh_se"], d["theory_dh"]])
    paths = [out / "memory.json", out / "memory.csv"]
    if args.plots:
        paths.append(plot_memory(out / "memory.png", meta, rows))
    print(memory_table(rows))
    print(f"\nwall time {meta['wall_s']:.1f} s on {meta['machine']}")
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def memory_table(rows) -> str:
    """Markdown: measured / theory for each (rho, lambda), plain model and LRU-style."""
    lines = ["| rho | 1 - lambda | Var h: measured / theory | Var dh/dlambda: measured / "
             "theory | with gamma + exp: Var h | Var dh/dnu |", "|" + "---|" * 6]
    for r in rows:
        a, b = r["lambda"], r["gamma+exp"]
        lines.append(f"| {r['rho']:g} | {1 - r['lam']:.3g} | {a['var_h']:.4g} / "
                     f"{a['theory_h']:.4g} | {a['var_dh']:.4g} / {a['theory_dh']:.4g} | "
                     f"{b['var_h']:.4g} / {b['theory_h']:.4g} | {b['var_dh']:.4g} / "
                     f"{b['theory_dh']:.4g} |")
    return "\n".join(lines)


def plot_memory(path, meta, rows):
    """Three log-log panels against ``1 - lambda`` (``lambda -> 1`` to the right):
    ``Var h``, ``Var dh/dlambda``, ``Var dh/dnu``; Monte Carlo points with 2-standard-
    error bars over the closed forms (lines), one colour per ``rho``."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    rhos = sorted({r["rho"] for r in rows})
    colors = {rho: plt.get_cmap("viridis")(0.85 * i / max(1, len(rhos) - 1))
              for i, rho in enumerate(rhos)}
    panels = [
        ("var_h", "theory_h", "var_h_se", (("lambda", "o", "-"), ("gamma", "s", "--")),
         "Var $h_t$", "state: without and with γ = √(1−λ²)"),
        ("var_dh", "theory_dh", "var_dh_se", (("lambda", "o", "-"), ("gamma", "s", "--")),
         "Var $dh_t/d\\lambda$", "sensitivity to λ, λ parametrised directly"),
        ("var_dh", "theory_dh", "var_dh_se", (("exp", "^", "-"), ("gamma+exp", "D", "--")),
         "Var $dh_t/d\\nu$", "sensitivity to ν, λ = exp(−exp(ν))"),
    ]
    labels = {"lambda": "no γ", "gamma": "γ = √(1−λ²)", "exp": "no γ",
              "gamma+exp": "γ = √(1−λ²)"}
    fig, axes = plt.subplots(1, 3, figsize=(14.5, 4.6))
    fine = np.array(sorted({1 - r["lam"] for r in rows}))
    grid = np.geomspace(fine.min(), fine.max(), 200)
    for ax, (key, theory_key, se_key, variants, ylabel, title) in zip(axes, panels):
        handles = []
        for variant, marker, ls in variants:
            for rho in rhos:
                sel = sorted((r for r in rows if r["rho"] == rho), key=lambda r: r["lam"])
                x = np.array([1 - r["lam"] for r in sel])
                y = np.array([r[variant][key] for r in sel])
                err = 2 * np.array([r[variant][se_key] for r in sel])
                th = diagnostics.memory_moments(
                    1 - grid, rho, normalised="gamma" in variant, exponential="exp" in variant)
                ax.plot(grid, th.var_h if key == "var_h" else th.var_dh, ls=ls,
                        color=colors[rho], lw=1.3, alpha=0.9)
                ax.errorbar(x, y, yerr=err, fmt=marker, color=colors[rho], ms=4.5,
                            mfc="white" if "gamma" in variant else colors[rho], capsize=2,
                            lw=0.8)
            handles.append(Line2D([], [], color="0.3", ls=ls, marker=marker,
                                  mfc="white" if "gamma" in variant else "0.3",
                                  label=f"{labels[variant]} (points: measured, line: theory)"))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("1 − λ (log scale; λ → 1 to the right)")
        ax.set_ylabel(ylabel + " (log scale)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(handles=handles, fontsize=7.5, loc="upper left")
    rho_handles = [Line2D([], [], color=colors[rho], lw=3, label=f"ρ = {rho:g}") for rho in rhos]
    fig.legend(handles=rho_handles, loc="lower center", ncol=len(rhos), fontsize=9,
               title="input autocorrelation", title_fontsize=9, frameon=False)
    fig.suptitle(f"The curse of memory: h_t = λ h_(t−1) + γ x_t, stationary AR(1) inputs; "
                 f"{meta['samples']} sequences per point, error bars ±2 standard errors",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ------------------------------------------------------------- signal propagation

PROPAGATION_TIMESCALES = (1.0, 10 ** 0.5, 10.0, 10 ** 1.5, 100.0)
PROPAGATION_QUICK = dict(models=tuple(experiments.PROPAGATION_MODELS),
                         timescales=PROPAGATION_TIMESCALES, width=64, time=128, batch=8,
                         batches=2, input_size=32, rho=0.9, layers=4, seed=0,
                         out="results/propagation")
PROPAGATION_FULL = dict(PROPAGATION_QUICK, width=256, time=512, batch=16, batches=8,
                        out="docs/science")


def propagation_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seqjax gradnorm propagation",
        description="Signal propagation at initialisation (Zucchet & Orvieto 2024, "
                    "Figure 5): a 4-layer residual network without normalisation "
                    "(recurrent layer, GELU, GLU, skip), next-step MSE on AR(1) inputs "
                    "(a stand-in for their BERT embeddings). For each characteristic time "
                    "t (eigenvalue moduli in [1 - 1/t, 1 - 1/(2t)], gate biases chrono "
                    "log U(t, 2t)): mean h_t^2 per layer and the mean squared gradient of the "
                    "timescale parameters (lambda) against all others. Writes "
                    "propagation.json, propagation.csv, propagation.png.")
    p.add_argument("--full", action="store_true",
                   help="the committed configuration: width 256, 512 steps, 8 batches of 16, "
                        "written to docs/science")
    p.add_argument("--models", type=_cli.names(experiments.PROPAGATION_MODELS),
                   help=f"from {', '.join(experiments.PROPAGATION_MODELS)} (default all)")
    p.add_argument("--timescales", type=_floats_in(1.0, 1e6),
                   help="characteristic times t >= 1 (default 1,3.16,10,31.6,100)")
    p.add_argument("--width", type=_cli.positive_int, help="model width (quick 64, full 256)")
    p.add_argument("--time", type=_cli.positive_int, help="sequence length (quick 128, full 512)")
    p.add_argument("--batch", type=_cli.positive_int, help="examples per batch (quick 8, full 16)")
    p.add_argument("--batches", type=_cli.positive_int, help="batches (quick 2, full 8)")
    p.add_argument("--input-size", dest="input_size", type=_cli.positive_int,
                   help="features of the AR(1) inputs (default 32)")
    p.add_argument("--rho", type=_cli.float_in(0.0, 1.0, high_open=True),
                   help="autocorrelation of the inputs (default 0.9)")
    p.add_argument("--layers", type=_cli.positive_int, help="residual layers (default 4)")
    p.add_argument("--seed", type=_cli.nonnegative_int, help="PRNG seed (default 0)")
    p.add_argument("--out", help="output folder (quick: results/propagation; full: docs/science)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="write propagation.png (default on)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="print one line per (model, t) to stderr (default on)")
    return p


PROPAGATION_KEYS = ("h2", "rnn2", "grad2_timescale", "grad2_rest", "grad2_glu")


def propagation_summary(rows) -> list:
    """Means over batches per (model, t): per-layer lists and the network totals."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for t in sorted({r["t"] for r in rows if r["model"] == model}):
            sel = [r for r in rows if r["model"] == model and r["t"] == t]
            d = dict(model=model, t=t, batches=len(sel))
            for k in PROPAGATION_KEYS + ("grad2_timescale_all", "grad2_other_all", "loss"):
                d[k] = np.mean([r[k] for r in sel], axis=0).tolist()
            out.append(d)
    return out


def main_propagation(argv) -> int:
    """``seqjax gradnorm propagation``."""
    p = propagation_parser()
    args = _settle(p.parse_args(argv), PROPAGATION_QUICK, PROPAGATION_FULL)
    started = time.perf_counter()
    rows = experiments.signal_propagation(
        args.models, args.timescales, width=args.width, time=args.time, batch=args.batch,
        batches=args.batches, input_size=args.input_size, rho=args.rho, layers=args.layers,
        seed=args.seed, progress=(lambda m: _say(True, m)) if args.progress else None)
    summary = propagation_summary(rows)
    meta = _meta("propagation", argv, started, models=list(args.models),
                 descriptions={m: experiments.PROPAGATION_MODELS[m].description
                               for m in args.models},
                 timescales=list(args.timescales), width=args.width, time=args.time,
                 batch=args.batch, batches=args.batches, input_size=args.input_size,
                 rho=args.rho, layers=args.layers, seed=args.seed, dtype="float32",
                 inputs=f"AR(1), rho={args.rho}, {args.input_size} independent unit-variance "
                        "features (stand-in for the paper's BERT embeddings)",
                 loss="0.5 * mean over steps and features of (prediction_t - u_(t+1))^2")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "propagation.json", dict(meta=meta, summary=summary, rows=rows))
    with open(out / "propagation.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "t", "layer", "mean_h2", "mean_rnn_output2",
                    "grad2_timescale", "grad2_recurrent_rest", "grad2_glu",
                    "grad2_timescale_all_layers", "grad2_all_other_params"])
        for d in summary:
            for layer in range(args.layers):
                w.writerow([d["model"], d["t"], layer + 1] + [d[k][layer] for k in PROPAGATION_KEYS]
                           + [d["grad2_timescale_all"], d["grad2_other_all"]])
    paths = [out / "propagation.json", out / "propagation.csv"]
    if args.plots:
        paths.append(plot_propagation(out / "propagation.png", meta, summary))
    print(propagation_table(summary))
    print(f"\nwall time {meta['wall_s']:.1f} s on {meta['machine']}")
    print("wrote " + ", ".join(map(str, paths)))
    return 0


def propagation_table(summary) -> str:
    """Markdown: per (model, t), mean h^2 of the first and last layer and the mean
    squared gradients."""
    lines = ["| model | t | mean h² layer 1 | mean h² last layer | E[(dL/dλ)²] | "
             "E[(dL/dθ_other)²] |", "|" + "---|" * 6]
    for d in summary:
        lines.append(f"| {d['model']} | {d['t']:.3g} | {d['h2'][0]:.3g} | {d['h2'][-1]:.3g} | "
                     f"{d['grad2_timescale_all']:.3g} | {d['grad2_other_all']:.3g} |")
    return "\n".join(lines)


def plot_propagation(path, meta, summary):
    """Two log-log panels against ``t``: mean ``h_t^2`` of the first and last layer,
    and the mean squared gradient of the timescale parameters and of all others."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    models = list(dict.fromkeys(d["model"] for d in summary))
    colors = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(models)}
    markers = dict(zip(models, "osD^v<>p"))
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8))
    last = meta["layers"]
    for m in models:
        sel = [d for d in summary if d["model"] == m]
        t = [d["t"] for d in sel]
        axes[0].plot(t, [d["h2"][0] for d in sel], ls="--", marker=markers[m], mfc="white",
                     color=colors[m])
        axes[0].plot(t, [d["h2"][-1] for d in sel], ls="-", marker=markers[m], color=colors[m])
        axes[1].plot(t, [d["grad2_timescale_all"] for d in sel], ls="-", marker=markers[m],
                     color=colors[m])
        axes[1].plot(t, [d["grad2_other_all"] for d in sel], ls=":", marker=markers[m],
                     mfc="white", color=colors[m])
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("characteristic time t (|λ| ∈ [1 − 1/t, 1 − 1/(2t)]; log scale)")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("mean $h_t^2$ of a layer's output (log scale)")
    axes[0].set_title("hidden states: residual stream after layer 1 and layer "
                      f"{last}", fontsize=10)
    axes[1].set_ylabel("mean squared gradient (log scale)")
    axes[1].set_title("gradients: timescale parameters λ against all other parameters",
                      fontsize=10)
    style0 = [Line2D([], [], color="0.3", ls="--", marker="o", mfc="white", label="layer 1"),
              Line2D([], [], color="0.3", ls="-", marker="o", label=f"layer {last}")]
    style1 = [Line2D([], [], color="0.3", ls="-", marker="o",
                     label="λ (complex: Re λ, Im λ; LRU: ν, θ; GRU: b_z; LSTM: b_f)"),
              Line2D([], [], color="0.3", ls=":", marker="o", mfc="white",
                     label="all other parameters")]
    axes[0].legend(handles=style0, fontsize=8, loc="upper left")
    axes[1].legend(handles=style1, fontsize=8, loc="upper left")
    model_handles = [Line2D([], [], color=colors[m], marker=markers[m], lw=2,
                            label=f"{m}: {meta['descriptions'][m]}") for m in models]
    fig.legend(handles=model_handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"Signal propagation at initialisation: {meta['layers']} layers, width "
                 f"{meta['width']}, no normalisation; {meta['batches']}×{meta['batch']} "
                 f"AR(1) sequences (ρ = {meta['rho']:g}) of {meta['time']} steps", fontsize=11)
    fig.tight_layout(rect=(0, 0.14, 1, 0.95))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ------------------------------------------------------------------- learnability

LEARN_TASKS = {"adding": tasks.adding_problem, "copy": tasks.copy_memory}
LEARN_FULL_CELLS = ("rnn", "lstm", "gru", "min_gru", "lru", "slstm", "rg_lru", "s6", "mlstm",
                    "delta_net", "gated_delta_net", "mamba2")
LEARN_QUICK = dict(cells=("rnn", "lstm"), tasks=("adding",), lengths=(10, 50), seeds=2,
                   steps=300, hidden=32, batch=20, lr=1e-3, optimizer="adam", log_every=50,
                   out="results/learnability")
LEARN_FULL = dict(cells=None, tasks=("adding", "copy"), lengths=(50, 100, 200, 400), seeds=2,
                  steps=1500, hidden=32, batch=20, lr=1e-3, optimizer="adam", log_every=50,
                  out="docs/science")
LEARN_OPTIMIZERS = {
    "adam": ("clip_by_global_norm(1.0), adam", train.default_optimizer),
    "rmsprop": ("clip_by_global_norm(1.0), rmsprop(decay=0.9) (Arjovsky et al. 2016)",
                experiments.arjovsky_optimizer),
}
LEARN_EVAL, LEARN_NORM_EXAMPLES = 256, 32


def learnability_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seqjax gradnorm learnability",
        description="Learnability against length: train each cell on the adding problem "
                    "and the copy-memory problem (Arjovsky et al. 2016) at several lengths T, "
                    "several seeds, a fixed step budget (Adam, lr 1e-3, gradient clipped at "
                    "global norm 1; --optimizer rmsprop for Arjovsky et al.'s RMSProp); "
                    "success = held-out loss below 10% of the task's baseline. Beside it, ||dL/dh_0|| at initialisation (float64). "
                    "Results are kept per (task, cell, T, seed) in learnability.json: a run "
                    "computes only what the file lacks for the same configuration, so cells "
                    "can be added later by running only them. Writes learnability.json, "
                    "learnability.csv, learnability.png, learnability_curves.png.")
    p.add_argument("--full", action="store_true",
                   help="the committed configuration: adding and copy at T=50,100,200,400, "
                        "2 seeds, 1500 steps, hidden 32, batch 20, written to docs/science")
    p.add_argument("--cells", type=_cli.names(CELLS),
                   help=f"from {', '.join(CELLS)} (quick: rnn,lstm; full: every one of "
                        f"{','.join(LEARN_FULL_CELLS)} that exists)")
    p.add_argument("--tasks", type=_cli.names(LEARN_TASKS),
                   help="adding (Arjovsky et al.'s adding problem), copy (copy memory; T is "
                        "the delay) (quick: adding; full: adding,copy)")
    p.add_argument("--lengths", type=_cli.ints_at_least(2),
                   help="sequence lengths T (quick 10,50; full 50,100,200,400)")
    p.add_argument("--seeds", type=_cli.positive_int, help="seeds 0 .. n-1 (default 2)")
    p.add_argument("--steps", type=_cli.positive_int,
                   help="training steps per run (quick 300, full 1500)")
    p.add_argument("--hidden", type=_cli.positive_int, help="hidden size (default 32)")
    p.add_argument("--batch", type=_cli.positive_int, help="examples per step (default 20)")
    p.add_argument("--lr", type=_cli.positive_float, help="learning rate (default 1e-3)")
    p.add_argument("--optimizer", choices=tuple(LEARN_OPTIMIZERS),
                   help="adam (default) or rmsprop (Arjovsky et al. 2016), both clipped at "
                        "global norm 1")
    p.add_argument("--log-every", dest="log_every", type=_cli.positive_int,
                   help="steps per point of the training curve (default 50)")
    p.add_argument("--out", help="output folder (quick: results/learnability; full: "
                                 "docs/science)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="write the PNG figures (default on)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="print one line per (task, cell, T) to stderr (default on)")
    return p


def _learn_config(args) -> dict:
    """What a cached record must match to be reused."""
    return dict(hidden=args.hidden, batch=args.batch, steps=args.steps, lr=args.lr,
                optimizer=LEARN_OPTIMIZERS[args.optimizer][0],
                log_every=args.log_every, eval_examples=LEARN_EVAL,
                norm_examples=LEARN_NORM_EXAMPLES, dtype="float32 (norms: float64)")


def main_learnability(argv) -> int:
    """``seqjax gradnorm learnability``."""
    p = learnability_parser()
    args = _settle(p.parse_args(argv), LEARN_QUICK, LEARN_FULL)
    if args.cells is None:
        args.cells = tuple(c for c in LEARN_FULL_CELLS if c in CELLS)
    try:
        for name in args.tasks:
            for T in args.lengths:
                LEARN_TASKS[name](T)
        for c in args.cells:
            CELLS[c][0](args.hidden)
    except (ValueError, TypeError) as e:
        p.error(str(e))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "learnability.json"
    config = _learn_config(args)
    old = json.loads(path.read_text()) if path.exists() else {}
    if old and old.get("config") != config:
        p.error(f"{path} holds results of another configuration ({old.get('config')}); "
                "choose another --out or the same options")
    records = {(r["task"], r["cell"], r["T"], r["seed"]): r for r in old.get("records", [])}
    runs = old.get("runs", [])
    started = time.perf_counter()
    computed = []
    for T in args.lengths:  # shortest first: a stopped run still has a complete corner
        for task_name in args.tasks:
            task = LEARN_TASKS[task_name](T)
            for cell_name in args.cells:
                seeds = [s for s in range(args.seeds) if (task_name, cell_name, T, s) not in records]
                if not seeds:
                    continue
                make, encoder = CELLS[cell_name]
                t0 = time.perf_counter()
                results = experiments.learnability(
                    make(args.hidden), task, encoder=encoder, seeds=seeds, hidden=args.hidden,
                    batch=args.batch, steps=args.steps,
                    optimizer=LEARN_OPTIMIZERS[args.optimizer][1](args.lr),
                    eval_examples=LEARN_EVAL, norm_examples=LEARN_NORM_EXAMPLES,
                    log_every=args.log_every, associative=False)
                for r in results:
                    r = dict(r, curve=_six(r["curve"]), grad_h=_six(r["grad_h"]))
                    records[(task_name, cell_name, T, r["seed"])] = dict(
                        task=task_name, cell=cell_name, T=T, time=task.time, **r)
                computed.append([task_name, cell_name, T, seeds])
                ratios = ", ".join(f"{r['ratio']:.3f}" for r in results)
                _say(args.progress, f"{task_name} {cell_name} T={T}: loss/baseline {ratios}; "
                                    f"{time.perf_counter() - t0:.1f} s")
                meta = _meta("learnability", argv, started, computed=computed)
                _write_json(path, dict(config=config, runs=runs + [meta],
                                       records=_sorted_records(records)))
    meta = _meta("learnability", argv, started, computed=computed)
    data = dict(config=config, runs=runs + [meta] if computed or not runs else runs,
                records=_sorted_records(records))
    _write_json(path, data)
    write_learnability(out, data, plots=args.plots)
    print(learnability_table(data["records"]))
    print(f"\nwall time {meta['wall_s']:.1f} s on {meta['machine']}; computed "
          f"{len(computed)} (task, cell, T) groups, reused the rest from {path}")
    return 0


def _six(values):
    """Six significant digits: the curves' precision, at half the file size."""
    return [None if v is None else float(f"{v:.6g}") for v in values]


def _cell_order(names):
    order = {c: i for i, c in enumerate(CELLS)}
    return sorted(set(names), key=lambda c: order.get(c, len(order)))


def _sorted_records(records):
    tasks_order = {t: i for i, t in enumerate(LEARN_TASKS)}
    cells = {c: i for i, c in enumerate(CELLS)}
    return [records[k] for k in sorted(records, key=lambda k: (
        tasks_order.get(k[0], 99), cells.get(k[1], 99), k[2], k[3]))]


def learnability_summary(records) -> list:
    """Per (task, cell, T), over seeds: the median ratio of the final loss to the
    baseline, how many seeds solved it, the geometric mean of ``||dL/dh_0||``."""
    out = []
    groups = {}
    for r in records:
        groups.setdefault((r["task"], r["cell"], r["T"]), []).append(r)
    for (task, cell, T), sel in groups.items():
        ratios = [r["ratio"] for r in sel if r["ratio"] is not None]
        norms = [r["grad_h0"] for r in sel if r["grad_h0"]]
        out.append(dict(task=task, cell=cell, T=T, seeds=len(sel),
                        ratio=float(np.median(ratios)) if ratios else None,
                        ratio_best=min(ratios) if ratios else None,
                        solved=sum(r["solved"] for r in sel),
                        grad_h0=float(np.exp(np.mean(np.log(norms)))) if norms else None,
                        baseline=sel[0]["baseline"]))
    return out


def learnability_table(records) -> str:
    """Markdown: the median final loss / baseline (solved seeds) and ||dL/dh_0||."""
    summary = learnability_summary(records)
    lines = ["| task | cell | T | final loss / baseline (median over seeds) | seeds solved "
             "| ‖∂L/∂h_0‖ at init |", "|" + "---|" * 6]
    for d in summary:
        lines.append(f"| {d['task']} | {d['cell']} | {d['T']} | {_fmt(d['ratio'], '.3f')} | "
                     f"{d['solved']}/{d['seeds']} | {_fmt(d['grad_h0'], '.2e')} |")
    return "\n".join(lines)


def write_learnability(out, data, *, plots=True):
    """``learnability.csv`` and, with ``plots``, the two figures."""
    out = pathlib.Path(out)
    with open(out / "learnability.csv", "w", newline="") as f:
        w = csv.writer(f)
        keys = ["task", "cell", "T", "time", "seed", "loss_init", "loss_final", "baseline",
                "ratio", "solved", "grad_h0", "seconds"]
        w.writerow(keys)
        for r in data["records"]:
            w.writerow([r[k] for k in keys])
    paths = [out / "learnability.json", out / "learnability.csv"]
    if plots and data["records"]:
        paths += plot_learnability(out, data)
    return paths


def plot_learnability(out, data):
    """``learnability.png``: per task, a cells x T map of the final loss relative to the
    baseline beside ``||dL/dh_0||`` at initialisation; ``learnability_curves.png``: the
    training curves."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    records, config = data["records"], data["config"]
    summary = learnability_summary(records)
    task_names = [t for t in LEARN_TASKS if any(r["task"] == t for r in records)]
    cells = _cell_order(r["cell"] for r in records)
    lengths = sorted({r["T"] for r in records})
    fig, axes = plt.subplots(len(task_names), 2, squeeze=False,
                             figsize=(5.0 + 2.4 * len(lengths),
                                      1.3 + (0.45 * len(cells) + 0.9) * len(task_names)))
    for row, task in zip(axes, task_names):
        ratio = np.full((len(cells), len(lengths)), np.nan)
        norm = np.full_like(ratio, np.nan)
        solved = {}
        for d in summary:
            if d["task"] != task:
                continue
            i, j = cells.index(d["cell"]), lengths.index(d["T"])
            ratio[i, j] = np.nan if d["ratio"] is None else d["ratio"]
            norm[i, j] = np.nan if d["grad_h0"] is None else d["grad_h0"]
            solved[i, j] = (d["solved"], d["seeds"])
        im = row[0].imshow(np.clip(ratio, 1e-3, 10), cmap="RdYlGn_r", aspect="auto",
                           norm=LogNorm(1e-2, 2))
        fig.colorbar(im, ax=row[0], label="final loss / baseline (log)")
        for (i, j), (n, of) in solved.items():
            v = ratio[i, j]
            row[0].text(j, i, f"{v:.2g}\n{n}/{of} solved" if np.isfinite(v) else "—",
                        ha="center", va="center", fontsize=7,
                        fontweight="bold" if n else "normal")
        positive = norm[np.isfinite(norm) & (norm > 0)]
        low = max(positive.min(), 1e-300) if positive.size else 1e-30
        high = max(positive.max(), low * 10) if positive.size else 1.0
        im = row[1].imshow(np.where(norm > 0, norm, np.nan), cmap="viridis", aspect="auto",
                           norm=LogNorm(low, high))
        fig.colorbar(im, ax=row[1], label="‖∂L/∂h_0‖ at init (log)")
        middle = math.sqrt(low * high)
        for (i, j) in solved:
            v = norm[i, j]
            row[1].text(j, i, f"{v:.0e}" if np.isfinite(v) else "—", ha="center",
                        va="center", fontsize=7,
                        color="w" if np.isfinite(v) and v < middle else "k")
        base = "1/6" if task == "adding" else "10 log 8/(T+20)"
        row[0].set_title(f"{task}: held-out loss / baseline ({base}); success < 0.1",
                         fontsize=9)
        row[1].set_title(f"{task}: ‖∂L/∂h_0‖ at initialisation"
                         + (" (recall loss)" if task == "copy" else ""), fontsize=9)
        for ax in row:
            ax.set_xticks(range(len(lengths)), [str(T) for T in lengths])
            ax.set_yticks(range(len(cells)), cells)
            ax.set_xlabel("sequence length T" if task == "adding" else "delay T")
    fig.suptitle(f"Learnability against length: {config['steps']} steps of "
                 f"{config['optimizer'].split(', ')[1].split('(')[0]} "
                 f"(lr {config['lr']:g}, clip 1), hidden {config['hidden']}, batch "
                 f"{config['batch']}; median over seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    paths = [out / "learnability.png"]
    fig.savefig(paths[0], dpi=90)
    plt.close(fig)

    palette = plt.get_cmap("tab10" if len(cells) <= 10 else "tab20")
    colors = {c: palette(i % palette.N) for i, c in enumerate(cells)}
    fig, axes = plt.subplots(len(task_names), len(lengths), squeeze=False, sharey="row",
                             figsize=(3.3 * len(lengths), 2.8 * len(task_names) + 0.8))
    for row, task in zip(axes, task_names):
        for ax, T in zip(row, lengths):
            for c in cells:
                sel = [r for r in records if (r["task"], r["cell"], r["T"]) == (task, c, T)]
                for k, r in enumerate(sel):
                    y = np.array([np.nan if v is None else v for v in r["curve"]]) / r["baseline"]
                    x = (np.arange(y.size) + 1) * r["log_every"]
                    ax.plot(x, y, color=colors[c], lw=1.1, alpha=0.85,
                            label=c if k == 0 else None)
            ax.axhline(1.0, color="k", ls="--", lw=0.8)
            ax.axhline(0.1, color="k", ls=":", lw=0.8)
            ax.set_yscale("log")
            ax.set_title(f"{task}, T={T}", fontsize=9)
            ax.set_xlabel("training step")
            ax.grid(True, alpha=0.3)
        row[0].set_ylabel("training loss / baseline (log)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(cells), 8), fontsize=8,
               frameon=False)
    fig.suptitle("Training curves (every seed; dashed: baseline, dotted: success threshold)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    paths.append(out / "learnability_curves.png")
    fig.savefig(paths[1], dpi=80)
    plt.close(fig)
    return paths


# ------------------------------------------------------- language models: per layer


def copy_tokens(key, batch: int, length: int, vocab: int):
    """The copy task as language modelling: ``k = (length - 1) // 2`` random symbols from
    ``[1, vocab)``, the separator 0, then the same symbols again (and zeros to fill):
    only the copied half is predictable, and only from ``k + 1`` steps back.

    Returns ``(tokens [batch, length], mask [batch, length - 1])``, the mask true where a
    next-token prediction is scored (the copied symbols).
    """
    k = (length - 1) // 2
    symbols = jax.random.randint(key, (batch, k), 1, vocab)
    tokens = jnp.concatenate([symbols, jnp.zeros((batch, 1), symbols.dtype), symbols,
                              jnp.zeros((batch, length - 2 * k - 1), symbols.dtype)], axis=1)
    position = jnp.arange(length - 1)
    mask = (position >= k) & (position < 2 * k)  # predictions of tokens k + 1 .. 2k
    return tokens.astype(jnp.int32), jnp.broadcast_to(mask, (batch, length - 1))


def lm_gradients(model, params, tokens, mask):
    """``(loss, norms [L + 1, T])``: the copy loss of a batch and ``||dL/dx^{(l)}_t||``,
    the Frobenius norm over the batch of the gradient w.r.t. the residual stream
    (:meth:`seqjax.lm.Decoder.hidden_gradients`)."""

    def example(t, m):
        def loss_fn(logits, tokens_, length):
            return seqjax.losses.softmax_cross_entropy(logits[:-1], tokens_[1:], m)

        return model.hidden_gradients(params, t, loss_fn=loss_fn)

    losses, grads = jax.vmap(example)(tokens, mask)  # grads [B, L + 1, T, D]
    # the batch loss is the mean of the examples': its gradient is theirs over B
    grads = grads / tokens.shape[0]
    return jnp.mean(losses), jnp.sqrt(jnp.sum(grads * grads, axis=(0, 3)))


def run_lm(*, blocks, d_model, length, vocab, steps, batch, learning_rate, seed=0,
           progress=True):
    """Trains a language model of ``blocks`` on the copy task, recording per-layer,
    per-step gradient norms at initialisation and after ``steps`` updates."""
    model = seqjax.lm.language_model(vocab_size=vocab, d_model=d_model, blocks=blocks,
                                     max_length=max(length, 16))
    key = jax.random.PRNGKey(seed)
    params = model.init(key)
    measure = jax.jit(lambda p, t, m: lm_gradients(model, p, t, m))
    probe = copy_tokens(jax.random.PRNGKey(seed + 1), batch, length, vocab)
    loss0, norms0 = measure(params, *probe)

    def loss_fn(p, data, rng):
        return measure(p, *data)[0]

    history = []
    if steps:
        state, history = train.fit(
            loss_fn, train.default_optimizer(learning_rate), params,
            lambda step, rng: copy_tokens(jax.random.fold_in(key, step), batch, length, vocab),
            steps=steps, progress=progress)
        params = state.params
    loss1, norms1 = measure(params, *probe)
    return dict(model=repr(model), loss=[float(loss0), float(loss1)],
                norms={"init": np.asarray(norms0).tolist(), "trained": np.asarray(norms1).tolist()},
                curve=[float(h["loss"]) for h in history])


def plot_lm(out, meta, result):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = meta["blocks"]
    layers = ["embedding"] + [f"{i + 1}: {b}" for i, b in enumerate(blocks)]
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(layers)))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, phase in zip(axes, ("init", "trained")):
        norms = np.asarray(result["norms"][phase])
        for l, (label, colour) in enumerate(zip(layers, colours)):
            ax.plot(np.arange(norms.shape[1]), np.where(norms[l] > 0, norms[l], np.nan),
                    color=colour, lw=1.2, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("position t")
        ax.set_title(f"{'at initialisation' if phase == 'init' else 'after %d steps' % meta['steps']}"
                     f" (copy loss {result['loss'][0 if phase == 'init' else 1]:.3f})",
                     fontsize=9)
        ax.axvline((meta["length"] - 1) // 2, color="k", ls=":", lw=0.8)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("‖∂L/∂x⁽ˡ⁾_t‖ (log)")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Gradient norms per layer and position: {', '.join(blocks)}; d_model "
                 f"{meta['d_model']}, T {meta['length']}, copy task (dotted: separator)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path = pathlib.Path(out) / "gradnorm_lm.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main_lm(argv=None) -> int:
    """``seqjax gradnorm lm``: per-layer, per-position gradient norms of a language model."""
    p = argparse.ArgumentParser(
        prog="seqjax gradnorm lm",
        description="||dL/dx^(l)_t|| for every layer l and position t of a language model "
                    "(any blocks: a hybrid by default) on the copy task, at initialisation "
                    "and after training.")
    p.add_argument("--blocks", type=_cli.names(seqjax.blocks.names()),
                   default=("griffin", "griffin", "local_attention"),
                   help="comma-separated block names, bottom to top (default "
                        "griffin,griffin,local_attention)")
    p.add_argument("--d-model", type=_cli.positive_int, default=64, help="default 64")
    p.add_argument("--length", type=_cli.positive_int, default=128,
                   help="sequence length T, at least 4 (default 128)")
    p.add_argument("--vocab", type=_cli.positive_int, default=16,
                   help="vocabulary, at least 3 (default 16)")
    p.add_argument("--steps", type=_cli.nonnegative_int, default=200,
                   help="training steps (default 200; 0: initialisation only)")
    p.add_argument("--batch", type=_cli.positive_int, default=16, help="default 16")
    p.add_argument("--lr", type=_cli.positive_float, default=3e-3, help="default 3e-3")
    p.add_argument("--seed", type=_cli.nonnegative_int, default=0, help="default 0")
    p.add_argument("--out", default="results/gradnorm_lm",
                   help="output folder (default results/gradnorm_lm)")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    if args.length < 4:
        p.error(f"argument --length: expected at least 4, got {args.length}")
    if args.vocab < 3:
        p.error(f"argument --vocab: expected at least 3, got {args.vocab}")
    start = time.perf_counter()
    result = run_lm(blocks=list(args.blocks), d_model=args.d_model, length=args.length,
                    vocab=args.vocab, steps=args.steps, batch=args.batch,
                    learning_rate=args.lr, seed=args.seed, progress=args.progress)
    dev = jax.devices()[0]
    meta = dict(command="seqjax gradnorm lm " + " ".join(list(argv or [])),
                blocks=list(args.blocks), d_model=args.d_model, length=args.length,
                vocab=args.vocab, steps=args.steps, batch=args.batch, lr=args.lr,
                seed=args.seed, wall_s=time.perf_counter() - start, device=str(dev),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                versions={"python": platform.python_version(), "seqjax": seqjax.__version__,
                          "jax": _version("jax")})
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "gradnorm_lm.json", "w") as f:
        json.dump(dict(meta=meta, **result), f, indent=1)
    written = [out / "gradnorm_lm.json"]
    if args.plots:
        written.append(plot_lm(out, meta, result))
    for phase in ("init", "trained"):
        norms = np.asarray(result["norms"][phase])
        first = ", ".join(f"{v:.2e}" for v in norms[:, 0])
        print(f"{phase:>7}: ||dL/dx_0|| per layer (embedding first): {first}")
    print(f"copy loss {result['loss'][0]:.3f} -> {result['loss'][1]:.3f}; "
          f"wall time {meta['wall_s']:.1f} s")
    print("wrote " + ", ".join(str(w) for w in written))
    return 0


EXPERIMENTS = {
    "memory": ("the curse of memory (Zucchet & Orvieto 2024): Var h_t and the sensitivity "
               "dh_t/dlambda, measured against theory", main_memory),
    "propagation": ("signal propagation at initialisation (Zucchet & Orvieto 2024, Fig. 5): "
                    "h_t^2 and lambda-gradients per layer against the timescale", main_propagation),
    "learnability": ("learnability against length: which cell learns adding / copy at which "
                     "T, beside ||dL/dh_0|| at initialisation", main_learnability),
    "lm": ("a language model's ||dL/dx^(l)_t|| for every layer l and position t (any "
           "blocks, a hybrid by default), at initialisation and after training",
           main_lm),
}
