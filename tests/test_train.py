"""Training: the optax step against PyTorch's clip + Adam, the fit loop, checkpoints
(atomic writes, exact resume) and data parallelism over 4 host devices."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import seqjax
from seqjax import checkpoint, losses, models, train


def _rnn_problem(seed=0, batch=6, time=5, features=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, time, features)).astype(np.float32)
    y = rng.normal(size=(batch,)).astype(np.float32) * 3
    return x, y


def test_train_step_matches_torch_clip_and_adam(key):
    """Five steps of an Elman RNN regression: clip_grad_norm_ + torch.optim.Adam."""
    hidden, lr, max_norm = 4, 0.05, 0.5
    model = models.many_to_one(seqjax.rnn(hidden), 1, input_size=3)
    params = model.init(key)
    x, y = _rnn_problem()

    def loss_fn(p, batch, rng):
        pred = jax.vmap(lambda xs: model.apply(p, xs))(batch["x"])[:, 0]
        return losses.mse(pred, batch["y"])

    optimizer = train.default_optimizer(lr, max_norm=max_norm)
    step = train.make_train_step(loss_fn, optimizer)
    opt_state = optimizer.init(params)

    tp = [torch.tensor(np.asarray(a), requires_grad=True) for a in
          (params.encoder.w_i, params.encoder.w_h, params.encoder.b, params.head.w,
           params.head.b)]
    torch_opt = torch.optim.Adam(tp, lr=lr)
    tx, ty = torch.tensor(x), torch.tensor(y)

    def torch_loss():
        w_i, w_h, b, w, c = tp
        h = torch.zeros(x.shape[0], hidden)
        for t in range(x.shape[1]):
            h = torch.tanh(tx[:, t] @ w_i + h @ w_h + b)
        return torch.mean(((h @ w + c)[:, 0] - ty) ** 2)

    for _ in range(5):
        params, opt_state, metrics = step(params, opt_state, {"x": x, "y": y},
                                          jax.random.PRNGKey(0))
        torch_opt.zero_grad()
        loss = torch_loss()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(tp, max_norm)
        torch_opt.step()
        np.testing.assert_allclose(metrics["loss"], loss.item(), rtol=1e-5)
        np.testing.assert_allclose(metrics["grad_norm"], norm.item(), rtol=1e-5)
        assert metrics["grad_norm"] > max_norm  # clipping was active
    got = (params.encoder.w_i, params.encoder.w_h, params.encoder.b, params.head.w,
           params.head.b)
    for a, b in zip(got, tp):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-4, atol=1e-6)
    assert step._cache_size() == 1  # compiled once


def test_aux_metrics_are_reported(key):
    def loss_fn(p, batch, rng):
        loss = jnp.sum((p - batch) ** 2)
        return loss, {"double": 2 * loss}

    step = train.make_train_step(loss_fn, optax.sgd(0.1))
    p = jnp.array([1.0, 2.0])
    _, _, metrics = step(p, optax.sgd(0.1).init(p), jnp.zeros(2), key)
    np.testing.assert_allclose(metrics["double"], 10.0)
    np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm([2.0, 4.0]), rtol=1e-6)


def test_fit_equals_a_hand_written_optax_loop():
    batches = [np.array([1.0, -2.0], np.float32) * (i + 1) for i in range(6)]

    def loss_fn(p, batch, rng):
        return jnp.sum((p - batch) ** 2)

    state, history = train.fit(loss_fn, optax.adam(0.1), jnp.zeros(2), batches, steps=6,
                               progress=False)
    p, opt = np.zeros(2, np.float32), optax.adam(0.1)
    opt_state = opt.init(jnp.asarray(p))
    want_losses = []
    for b in batches:
        want_losses.append(float(np.sum((p - b) ** 2)))
        with jax.numpy_dtype_promotion("standard"):  # optax's Adam is not strict-clean
            updates, opt_state = opt.update(jnp.asarray(2 * (p - b)), opt_state)
        p = np.asarray(optax.apply_updates(jnp.asarray(p), updates))
    np.testing.assert_allclose(state.params, p, rtol=1e-6)
    np.testing.assert_allclose([h["loss"] for h in history], want_losses, rtol=1e-6)
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6] and state.step == 6


def test_fit_evaluates_periodically():
    calls = []

    def eval_fn(p):
        calls.append(float(p[0]))
        return {"value": p[0]}

    _, history = train.fit(lambda p, b, r: jnp.sum((p - b) ** 2), optax.sgd(0.1), jnp.zeros(1),
                           lambda step, rng: jnp.ones(1), steps=5, eval_fn=eval_fn,
                           eval_every=2, progress=False)
    assert [h["step"] for h in history if "eval_value" in h] == [2, 4, 5]
    assert len(calls) == 3


def test_fit_stops_on_non_finite_loss_naming_the_step():
    def batches(step, rng):
        return jnp.full((2,), jnp.nan if step == 3 else 1.0)

    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at step 3") as info:
        train.fit(lambda p, b, r: jnp.sum((p - b) ** 2), optax.sgd(0.1), jnp.zeros(2), batches,
                  steps=10, progress=False)
    assert info.value.step == 3 and info.value.state.step == 3
    assert len(info.value.history) == 3
    assert np.all(np.isfinite(info.value.state.params))


# ---------------------------------------------------------------------- checkpoints


def _noisy_problem():
    """A GRU regression whose inputs get noise from the step key, so the run depends on
    the params, the optimizer state, the batches and the step keys."""
    model = models.many_to_one(seqjax.gru(4), 1, input_size=3)

    def loss_fn(p, batch, rng):
        x = batch["x"] + 0.3 * jax.random.normal(rng, batch["x"].shape)
        pred = jax.vmap(lambda xs: model.apply(p, xs))(x)[:, 0]
        return losses.mse(pred, batch["y"])

    def batches(step, rng):
        k1, k2 = jax.random.split(rng)
        return {"x": jax.random.normal(k1, (4, 5, 3)), "y": jax.random.normal(k2, (4,))}

    return model.init(jax.random.PRNGKey(1)), loss_fn, batches


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    params, loss_fn, batches = _noisy_problem()
    opt = train.default_optimizer(0.01)
    full, full_history = train.fit(loss_fn, opt, params, batches, steps=8, seed=3,
                                   progress=False)

    def crashing(step, rng):
        if step == 5:
            raise RuntimeError("power cut")
        return batches(step, rng)

    with pytest.raises(RuntimeError, match="power cut"):
        train.fit(loss_fn, opt, params, crashing, steps=8, seed=3, checkpoint_dir=tmp_path,
                  checkpoint_every=2, keep_checkpoints=2, progress=False)
    assert [s for s, _ in checkpoint.checkpoints(tmp_path)] == [2, 4]
    # the resumed run ignores the params given and continues from step 4
    resumed, history = train.fit(loss_fn, opt, jax.tree_util.tree_map(jnp.zeros_like, params),
                                 batches, steps=8, seed=3, checkpoint_dir=tmp_path,
                                 checkpoint_every=2, keep_checkpoints=2, progress=False)
    assert [h["step"] for h in history] == [5, 6, 7, 8]
    assert [h["loss"] for h in history] == [h["loss"] for h in full_history[4:]]
    for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(full)):
        np.testing.assert_array_equal(a, b)
    assert [s for s, _ in checkpoint.checkpoints(tmp_path)] == [6, 8]


def test_resume_from_an_iterable_skips_consumed_batches(tmp_path):
    data = [np.full(2, i, np.float32) for i in range(6)]
    loss_fn = lambda p, b, r: jnp.sum((p - b) ** 2)  # noqa: E731
    full, _ = train.fit(loss_fn, optax.adam(0.1), jnp.zeros(2), data, steps=6, progress=False)
    train.fit(loss_fn, optax.adam(0.1), jnp.zeros(2), data, steps=4, checkpoint_dir=tmp_path,
              progress=False)
    resumed, _ = train.fit(loss_fn, optax.adam(0.1), jnp.zeros(2), data, steps=6,
                           checkpoint_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(resumed.params, full.params)


def test_interrupted_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.msgpack"
    state = train.init_state({"w": jnp.arange(3.0)}, optax.adam(0.1), seed=1)
    checkpoint.save(path, state)
    newer = state._replace(params={"w": jnp.full(3, 7.0)}, step=5)

    def interrupted(fd):
        raise KeyboardInterrupt  # e.g. Ctrl-C while the bytes are being flushed

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, newer)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt.msgpack"]  # no temporary file left behind
    back = checkpoint.restore(path, like=newer)
    np.testing.assert_array_equal(back.params["w"], [0.0, 1.0, 2.0])
    assert back.step == 0 and isinstance(back.step, int)
    np.testing.assert_array_equal(back.rng, jax.random.PRNGKey(1))


# ------------------------------------------------------------------ data parallelism

_DATA_PARALLEL = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    import seqjax
    from seqjax import losses, models, train

    assert jax.device_count() == 4, jax.devices()
    model = models.many_to_one(seqjax.gru(8), 1, input_size=3)
    params = model.init(jax.random.PRNGKey(0))

    def loss_fn(p, batch, rng):
        pred = jax.vmap(lambda xs, n: model.apply(p, xs, n))(batch["x"], batch["n"])[:, 0]
        return losses.mse(pred, batch["y"])

    def batches(step, rng):
        k1, k2, k3 = jax.random.split(rng, 3)
        return {"x": np.asarray(jax.random.normal(k1, (16, 7, 3))),
                "n": np.asarray(jax.random.randint(k2, (16,), 1, 8)),
                "y": np.asarray(jax.random.normal(k3, (16,)))}

    opt = train.default_optimizer(0.01)
    single, h1 = train.fit(loss_fn, opt, params, batches, steps=6, progress=False)
    mesh = train.make_mesh()
    multi, h4 = train.fit(loss_fn, opt, params, batches, steps=6, mesh=mesh, progress=False)

    sharded = train.shard_batch(batches(0, jax.random.PRNGKey(0)), mesh)
    try:
        train.shard_batch({"x": np.zeros((6, 2), np.float32)}, mesh)
        error = ""
    except ValueError as e:
        error = str(e)
    leaves = jax.tree_util.tree_leaves
    print(json.dumps({
        "loss_diff": max(abs(a["loss"] - b["loss"]) for a, b in zip(h1, h4)),
        "param_diff": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                          for a, b in zip(leaves(single.params), leaves(multi.params))),
        "param_devices": len(leaves(multi.params)[0].sharding.device_set),
        "shards": sorted(s.data.shape[0] for s in sharded["x"].addressable_shards),
        "losses": [h["loss"] for h in h1],
        "error": error,
    }))
""")


def test_data_parallel_matches_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _DATA_PARALLEL], env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shards"] == [4, 4, 4, 4]  # the batch of 16 is split over 4 devices
    assert result["param_devices"] == 4  # params are replicated
    assert result["loss_diff"] < 1e-5 and result["param_diff"] < 1e-5, result
    assert result["losses"][-1] != result["losses"][0]  # it trained
    assert "divisible by the 4 devices" in result["error"]
