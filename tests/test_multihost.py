"""Many processes on one machine: ``fit`` over ``jax.distributed`` (2 processes x 2 host
devices, gloo collectives) against one process, checkpoints across process counts,
failures, and the launcher (``seqjax launch``).

Each JAX run is a subprocess (``python -m seqjax.launch`` for several processes, plain
``python`` with ``--xla_force_host_platform_device_count`` for one), running the script
``_JOBS`` below; process 0 writes what it saw to a JSON file. The runs share a
persistent compilation cache, which only saves time.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from seqjax import checkpoint, cli, launch, train

# Every job trains a tiny model for a few steps. The global batch is made from the
# step's key (the same on every process); each process keeps its rows of it
# (train.process_slice) -- what a per-process data loader reads from disk.
_JOBS = textwrap.dedent("""
    import json, os, signal, sys, time
    from seqjax import launch
    launch.initialize()  # joins the others under seqjax launch; alone, nothing

    import jax, jax.numpy as jnp, numpy as np, optax
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    import seqjax as sj
    from seqjax import losses, models, parallel, train

    B, T, F = 8, 6, 3

    def global_batch(rng):
        k1, k2 = jax.random.split(rng)
        return {"x": jax.random.normal(k1, (B, T, F)), "y": jax.random.normal(k2, (B,))}

    def rows_of(mesh):
        rows = train.process_slice(B, mesh)
        return lambda step, rng: jax.tree_util.tree_map(lambda x: np.asarray(x)[rows],
                                                        global_batch(rng))

    def summary(state, history, mesh):
        leaves = jax.tree_util.tree_leaves(state.params)
        return {"step": [h["step"] for h in history], "loss": [h["loss"] for h in history],
                "params": [np.asarray(l).ravel().tolist() for l in leaves],
                "devices": len(leaves[0].sharding.device_set), "mesh": dict(mesh.shape),
                "processes": jax.process_count()}

    def data(job):
        # data parallel: a GRU classifier, the batch split over every device
        model = models.many_to_one(sj.gru(8), 1, input_size=F)
        params = model.init(jax.random.PRNGKey(0))

        def loss_fn(p, batch, rng):
            pred = jax.vmap(lambda xs: model.apply(p, xs))(batch["x"])[:, 0]
            return losses.mse(pred, batch["y"])

        devices = jax.devices()[:job["devices"]] if "devices" in job else None
        mesh = train.make_mesh(devices)
        feed = rows_of(mesh)

        def batches(step, rng):
            if step == job.get("kill_at") and jax.process_index() == 1:
                with open(job["killed"], "w") as f:
                    f.write(str(time.time()))
                os.kill(os.getpid(), signal.SIGKILL)  # dies mid-run, without a word
            return feed(step, rng)

        state, history = train.fit(loss_fn, train.default_optimizer(0.01), params, batches,
                                   steps=job["steps"], seed=1, mesh=mesh, progress=False,
                                   checkpoint_dir=job.get("dir"),
                                   checkpoint_every=job.get("every"))
        return summary(state, history, mesh)

    def data_time(job):
        # data parallel over the processes x sequence parallel over each one's devices,
        # against one device running the plain unroll
        cell = sj.min_gru(8)
        params = {"cell": cell.init(jax.random.PRNGKey(0), F), "w": jnp.ones((8,)) / 8}

        def loss(unroll):
            def loss_fn(p, batch, rng):
                _, ys = unroll(p["cell"], batch["x"])
                return losses.mse(ys[:, -1] @ p["w"], batch["y"])
            return loss_fn

        mesh = train.make_mesh(time=jax.local_device_count())
        split = loss(lambda p, x: parallel.unroll_batch(cell, p, x, mesh=mesh,
                                                         batch_axis="data"))
        state, history = train.fit(split, train.default_optimizer(0.01), params,
                                   rows_of(mesh), steps=job["steps"], seed=1, mesh=mesh,
                                   progress=False)
        out = {"many": summary(state, history, mesh)}
        one = train.make_mesh(jax.local_devices()[:1])  # this process's first device
        state, history = train.fit(loss(lambda p, x: sj.unroll_batch(cell, p, x)),
                                   train.default_optimizer(0.01), params,
                                   lambda step, rng: global_batch(rng), steps=job["steps"],
                                   seed=1, mesh=one, progress=False)
        out["one"] = summary(state, history, one)
        return out

    def roundtrip(job):
        # a checkpoint of arrays split over the processes, restored onto other shardings,
        # and the errors of a multi-process run
        from jax.sharding import NamedSharding, PartitionSpec as P
        from seqjax import checkpoint
        mesh = train.make_mesh()
        split, whole = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
        rows = train.process_slice(8, mesh)
        values = np.arange(24, dtype=np.float32).reshape(8, 3)
        state = {"split": jax.make_array_from_process_local_data(split, values[rows]),
                 "whole": train.replicate(jnp.arange(3), mesh),
                 "key": jax.random.key(7), "step": 3}
        checkpoint.save(job["path"], state)
        on_disk = checkpoint.load(job["path"])  # every process reads the one file
        like = {"split": jax.device_put(np.zeros((8, 3), np.float32), whole),
                "whole": train.replicate(jnp.zeros(3, jnp.int32), mesh),
                "key": jax.random.key(0), "step": 0}
        back = checkpoint.restore(job["path"], like)  # split on disk, replicated here
        again = checkpoint.restore(job["path"], {**like, "split": jax.device_put(
            np.zeros((8, 3), np.float32), split)})
        out = {"on_disk": bool(np.array_equal(on_disk["['split']"], values)),
               "replicated": bool(back["split"].is_fully_replicated),
               "values": bool(np.array_equal(np.asarray(back["split"]), values)),
               "shards": sorted([s.index[0].start, np.asarray(s.data).tolist()]
                                for s in again["split"].addressable_shards),
               "rows": [rows.start, rows.stop],
               "step": back["step"],
               "key": bool(np.array_equal(jax.random.key_data(back["key"]),
                                          jax.random.key_data(jax.random.key(7))))}
        try:
            train.fit(lambda p, b, r: jnp.sum(p), optax.sgd(0.1), jnp.zeros(()),
                      lambda s, r: None, steps=1, progress=False)
        except ValueError as e:
            out["no_mesh"] = str(e)
        try:
            train.shard_batch({"x": np.zeros((3, 2), np.float32)}, mesh)
        except ValueError as e:
            out["bad_rows"] = str(e)
        return out

    for job in json.loads(sys.argv[1]):
        out = {"data": data, "data_time": data_time, "roundtrip": roundtrip}[job["job"]](job)
        if jax.process_index() == 0:
            with open(job["out"], "w") as f:
                json.dump(out, f)
""")


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """The job script and the environment every run gets (a shared compilation cache)."""
    where = tmp_path_factory.mktemp("multihost")
    script = where / "jobs.py"
    script.write_text(_JOBS)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(where / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    for name in (launch.COORDINATOR, launch.NUM_PROCESSES, launch.PROCESS_ID,
                 launch.JOIN_TIMEOUT, launch.HEARTBEAT_TIMEOUT):
        env.pop(name, None)
    return script, env


def _launch(jobs, run, *, processes=2, devices=2, check=True, **options):
    """The jobs ``run`` as ``processes`` processes of ``devices`` host devices each."""
    script, env = jobs
    argv = [sys.executable, "-m", "seqjax.launch", "-n", str(processes),
            "--devices-per-process", str(devices), "--timeout", "400"]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    out = subprocess.run(argv + ["--", sys.executable, str(script), json.dumps(run)],
                         env=env, capture_output=True, text=True, timeout=450, check=False)
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return out


def _alone(jobs, run, *, devices=4):
    """The jobs ``run`` in one process with ``devices`` host devices."""
    script, env = jobs
    env = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
               + env.get("XLA_FLAGS", ""))
    out = subprocess.run([sys.executable, str(script), json.dumps(run)], env=env,
                         capture_output=True, text=True, timeout=450, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return out


def _read(path):
    return json.loads(pathlib.Path(path).read_text())


def _diff(a, b):
    """Largest difference of the losses and of the params of two summaries."""
    assert a["step"] == b["step"]
    loss = max(abs(x - y) for x, y in zip(a["loss"], b["loss"], strict=True))
    params = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                 for x, y in zip(a["params"], b["params"], strict=True))
    return loss, params


def _only(directory, step, into):
    """A copy of ``directory`` that holds only its checkpoint of ``step``."""
    into.mkdir()
    shutil.copy(checkpoint.step_path(directory, step), into)
    return into


# ---------------------------------------------------------------- training together


@pytest.fixture(scope="module")
def together(jobs, tmp_path_factory):
    """One launch of 2 processes x 2 devices: the data-parallel run (6 steps, a
    checkpoint after each, the last 3 kept), the data x time run and a checkpoint of
    split arrays. Under pytest-xdist the workers share it: the first one runs it, the
    others wait for it (a lock file in the run's common temporary directory)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        where = tmp_path_factory.getbasetemp().parent / "multihost-together"
    else:
        where = tmp_path_factory.mktemp("together")
    where.mkdir(exist_ok=True)
    with open(where / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (where / "done").exists():
            _launch(jobs, [{"job": "data", "steps": 6, "dir": str(where / "ckpt"),
                            "every": 1, "out": str(where / "data.json")},
                           {"job": "data_time", "steps": 5,
                            "out": str(where / "data_time.json")},
                           {"job": "roundtrip", "path": str(where / "split.npz"),
                            "out": str(where / "roundtrip.json")}])
            (where / "done").touch()
    return (where, _read(where / "data.json"), _read(where / "data_time.json"),
            _read(where / "roundtrip.json"))


def test_two_processes_train_as_one_and_their_checkpoints_cross(jobs, together, tmp_path):
    """2 processes x 2 devices == 1 process x 4 devices (losses, params to 1e-5); a
    checkpoint written by the 2 processes resumes in 1 process (on 2 devices), and
    one written by 1 process resumes in 2; both continuations land on the same run."""
    where, many = together[:2]
    assert [s for s, _ in checkpoint.checkpoints(where / "ckpt")] == [4, 5, 6]
    one = tmp_path / "one"
    resumed_alone = _alone(jobs, [
        {"job": "data", "steps": 6, "dir": str(one), "every": 2,
         "out": str(tmp_path / "one.json")},
        {"job": "data", "steps": 6, "dir": str(_only(where / "ckpt", 4, tmp_path / "two_at_4")),
         "devices": 2, "out": str(tmp_path / "two_then_one.json")}])
    _launch(jobs, [{"job": "data", "steps": 6, "dir": str(_only(one, 2, tmp_path / "one_at_2")),
                    "out": str(tmp_path / "one_then_two.json")}])

    alone = _read(tmp_path / "one.json")
    assert many["processes"] == 2 and many["devices"] == 4 and many["mesh"] == {"data": 4}
    assert alone["processes"] == 1 and alone["devices"] == 4
    assert many["loss"][-1] != many["loss"][0]  # it trained
    loss, params = _diff(many, alone)
    assert loss < 1e-5 and params < 1e-5, (loss, params)

    two_then_one = _read(tmp_path / "two_then_one.json")
    assert "resuming from" in resumed_alone.stderr and "(step 4)" in resumed_alone.stderr
    assert two_then_one["processes"] == 1 and two_then_one["devices"] == 2
    loss, params = _diff(two_then_one, {**alone, "step": [5, 6], "loss": alone["loss"][4:]})
    assert loss < 1e-5 and params < 1e-5, (loss, params)

    one_then_two = _read(tmp_path / "one_then_two.json")
    assert one_then_two["processes"] == 2 and one_then_two["devices"] == 4
    loss, params = _diff(one_then_two, {**many, "step": [3, 4, 5, 6],
                                        "loss": many["loss"][2:]})
    assert loss < 1e-5 and params < 1e-5, (loss, params)


def test_data_by_time_mesh_matches_one_device(together):
    """A 2-D mesh, data over the 2 processes x time over each one's 2 devices
    (seqjax.parallel), trains like the plain unroll on one device."""
    many, one = together[2]["many"], together[2]["one"]
    assert many["mesh"] == {"data": 2, "time": 2} and many["devices"] == 4
    assert one["devices"] == 1
    assert many["loss"][-1] != many["loss"][0]
    loss, params = _diff(many, one)
    assert loss < 1e-5 and params < 1e-5, (loss, params)


def test_a_checkpoint_of_arrays_split_over_processes(together):
    """Saved by both processes (gathered; process 0 writes), the file holds the whole
    arrays; every process restores it onto a replicated template and onto a split one."""
    result = together[3]
    values = np.arange(24, dtype=np.float32).reshape(8, 3)
    assert result["on_disk"] and result["values"] and result["replicated"]
    assert result["step"] == 3 and result["key"]
    start, stop = result["rows"]  # process 0's rows: its 2 devices hold 2 rows each
    assert [start, stop] == [0, 4]
    assert result["shards"] == [[0, values[0:2].tolist()], [2, values[2:4].tolist()]]
    assert result["no_mesh"].startswith("fit: this program runs as 2 processes "
                                        "(jax.distributed); pass mesh=")
    assert "batch['x'] has shape (3, 2) on process 0" in result["bad_rows"]


# ------------------------------------------------------------------------ failures


def test_a_killed_process_stops_the_run_and_resuming_reproduces_it(jobs, together, tmp_path):
    """Process 1 is killed (SIGKILL) before step 4: the launcher stops process 0 and
    says so in one line, long before JAX's heartbeat timeout (60 s here); a new launch
    resumes from the last complete checkpoint (step 4) and ends bit for bit where the
    uninterrupted run (the same job, run whole) ends."""
    ckpt, killed = tmp_path / "ckpt", tmp_path / "killed"
    out = _launch(jobs, [{"job": "data", "steps": 6, "dir": str(ckpt), "every": 1,
                          "kill_at": 4, "killed": str(killed), "out": str(tmp_path / "x")}],
                  check=False, heartbeat_timeout=60)
    stopped = time.time() - float(killed.read_text())
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 128 + 9, out.stderr[-3000:]
    assert last.startswith("python -m seqjax.launch: process 1 of 2 was killed by SIGKILL "
                           "after "), last
    assert "stopped the other process" in last
    assert stopped < 30, stopped  # the launcher, not the 60 s heartbeat, ended it
    assert [s for s, _ in checkpoint.checkpoints(ckpt)] == [2, 3, 4]
    assert not (tmp_path / "x").exists()

    _launch(jobs, [{"job": "data", "steps": 6, "dir": str(ckpt), "every": 1,
                    "out": str(tmp_path / "resumed.json")}])
    resumed, whole = _read(tmp_path / "resumed.json"), together[1]
    assert resumed["step"] == [5, 6]
    assert resumed["loss"] == whole["loss"][4:]  # bit for bit
    assert resumed["params"] == whole["params"]


def test_a_process_whose_peers_never_join_stops_in_one_line(jobs):
    """Process 0 of 2, alone: it gives up after the join timeout with one line (exit
    status 3), not after JAX's own deadline with a C++ stack trace."""
    _, env = jobs
    env = dict(env, **{launch.COORDINATOR: f"127.0.0.1:{launch.free_port()}",
                       launch.NUM_PROCESSES: "2", launch.PROCESS_ID: "0",
                       launch.JOIN_TIMEOUT: "2"})
    out = subprocess.run([sys.executable, "-c", "from seqjax import launch; "
                          "launch.initialize(); print('joined')"],
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 3, out.stderr[-3000:]
    assert "joined" not in out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "seqjax.launch.initialize: process 0 of 2: not every process joined the coordinator "
        "at 127.0.0.1:") and "within 2 s" in lines[0], out.stderr


# ------------------------------------------------------------------------ the launcher


def _run(capfd, argv):
    """``python -m seqjax.launch ARGV`` in this process: (status, stdout, stderr)."""
    status = launch.main(argv, prog="python -m seqjax.launch")
    out, err = capfd.readouterr()
    return status, out, err


def test_the_launcher_passes_each_process_its_place_and_prefixes_its_output(capfd):
    child = ("import os; print(os.environ['SEQJAX_PROCESS_ID'], "
             "os.environ['SEQJAX_NUM_PROCESSES'], os.environ['SEQJAX_COORDINATOR_ADDRESS'], "
             "os.environ['XLA_FLAGS'].split()[0], os.environ['JAX_PLATFORMS'])")
    status, out, err = _run(capfd, ["-n", "3", "--devices-per-process", "2", "--",
                                    sys.executable, "-c", child])
    assert status == 0, err
    lines = sorted(out.splitlines())
    assert [line.split()[:3] for line in lines] == [
        ["[0]", "0", "3"], ["[1]", "1", "3"], ["[2]", "2", "3"]]
    addresses = {line.split()[3] for line in lines}
    assert len(addresses) == 1 and addresses.pop().startswith("127.0.0.1:")
    assert {tuple(line.split()[4:]) for line in lines} == {
        ("--xla_force_host_platform_device_count=2", "cpu")}


def test_the_launcher_stops_the_others_when_one_fails(capfd):
    child = ("import os, sys, time\n"
             "if os.environ['SEQJAX_PROCESS_ID'] == '1':\n"
             "    print('bad input', file=sys.stderr); sys.exit(5)\n"
             "time.sleep(60)")
    start = time.monotonic()
    status, _, err = _run(capfd, ["-n", "2", "--", sys.executable, "-c", child])
    assert time.monotonic() - start < 30
    assert status == 5
    assert "[1] bad input" in err.splitlines()
    last = err.strip().splitlines()[-1]
    assert last.startswith("python -m seqjax.launch: process 1 of 2 exited with status 5 "
                           "after "), last
    assert last.endswith("s; stopped the other process (its output is above, each line "
                         "after [1])")
    assert "Traceback" not in err


def test_the_launcher_stops_a_hang_after_its_timeout(capfd):
    start = time.monotonic()
    status, _, err = _run(capfd, ["-n", "2", "--timeout", "1", "--", sys.executable, "-c",
                                  "import time; time.sleep(60)"])
    assert time.monotonic() - start < 30
    assert status == 124
    assert err.strip() == ("python -m seqjax.launch: 2 of 2 processes still running after "
                           "--timeout 1 s (a hang?); stopped them")


def test_seqjax_launch_command_and_its_usage_errors(capsys):
    assert cli.main(["launch", "-n", "1", "--", sys.executable, "-c", "pass"]) == 0
    assert cli.main(["launch", "-n", "1", "--", "no-such-program-here"]) == 127
    assert capsys.readouterr().err.strip() == (
        "seqjax launch: cannot run no-such-program-here: No such file or directory")
    for argv, message in [
            (["-n", "0", "--", "python"], "argument -n/--num-processes: expected a positive "
                                          "integer (>= 1), got '0'"),
            (["-n", "2"], "give the command to run after --, e.g. -- python train.py"),
            (["--", "python"], "the following arguments are required: -n/--num-processes")]:
        with pytest.raises(SystemExit) as exit_:
            cli.main(["launch", *argv])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err == f"seqjax launch: error: {message} (see seqjax launch --help)", err


def test_initialize_alone_does_nothing(monkeypatch):
    for name in (launch.COORDINATOR, "SLURM_PROCID", "OMPI_COMM_WORLD_SIZE",
                 "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert launch.initialize() is False
    monkeypatch.setenv(launch.COORDINATOR, "127.0.0.1:1")
    monkeypatch.setenv(launch.NUM_PROCESSES, "2")
    monkeypatch.setenv(launch.PROCESS_ID, "2")
    with pytest.raises(ValueError, match=r"SEQJAX_PROCESS_ID=2 is not in \[0, 2\)"):
        launch.initialize()


def test_meshes_and_rows_in_one_process():
    """One process: the default mesh is today's, its rows are the whole batch, and a
    time axis is there when asked for."""
    n = jax.device_count()
    mesh = train.make_mesh()
    assert mesh.axis_names == ("data",) and list(mesh.devices) == jax.devices()
    assert train.process_slice(2 * n, mesh) == slice(0, 2 * n)
    grid = train.make_mesh(time=1)
    assert grid.axis_names == ("data", "time") and grid.devices.shape == (n, 1)
    with pytest.raises(ValueError, match=rf"make_mesh: time must be a positive divisor of "
                                         rf"the number of devices \({n}\), got {n + 1}"):
        train.make_mesh(time=n + 1)
    with pytest.raises(ValueError, match="process_slice: batch_size must be a positive "
                                         "multiple of the"):
        train.process_slice(0, mesh)
