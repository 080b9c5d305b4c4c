"""Several JAX processes on one machine: a launcher, and the call that joins them.

JAX's multi-controller runtime runs one Python process per host (or per GPU); each
calls ``jax.distributed.initialize(coordinator_address, num_processes, process_id)``
before anything else, and from then on ``jax.devices()`` lists every process's devices
and a :class:`jax.sharding.Mesh` over them spans the processes. This module makes that
easy to try on one machine, for tests and on a laptop, and keeps a training script
the same there and on a cluster:

* ``seqjax launch -n N [--devices-per-process K] -- python train.py ...`` (or
  ``python -m seqjax.launch ...``, the same options) starts ``N`` copies of the command
  on this machine's CPU, each with ``K`` host devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count=K``). It passes each child the
  coordinator address, the process count and its id in environment variables
  (:data:`COORDINATOR`, :data:`NUM_PROCESSES`, :data:`PROCESS_ID`), prefixes every line
  a child prints with its id (``[1] ...``), and watches the children: when one fails,
  or all are still running after ``--timeout`` seconds, it stops the others and exits
  non-zero with one line that says which process failed and how.
* :func:`initialize`, called first thing in the script, joins the run that those
  variables (or a SLURM or Open MPI job) describe, with CPU collectives over gloo; in
  a plain ``python train.py`` it does nothing, so the script runs alone unchanged.

Why a launcher watches: when a process dies, JAX's coordination service stops the
others only once its heartbeat times out (``--heartbeat-timeout``, JAX's default 100
s), and then by aborting them (``SIGABRT``, a C++ stack trace in the log). The
launcher sees a child exit at once, so the run ends within a second of the failure
with a message that names it.
"""

from __future__ import annotations

import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

from seqjax import _cli

COORDINATOR = "SEQJAX_COORDINATOR_ADDRESS"
"""Environment variable: ``host:port`` of process 0's coordinator service."""
NUM_PROCESSES = "SEQJAX_NUM_PROCESSES"
"""Environment variable: the number of processes of the run."""
PROCESS_ID = "SEQJAX_PROCESS_ID"
"""Environment variable: this process's id, ``0 .. N-1``."""
JOIN_TIMEOUT = "SEQJAX_JOIN_TIMEOUT"
"""Environment variable: seconds :func:`initialize` waits for every process to join."""
HEARTBEAT_TIMEOUT = "SEQJAX_HEARTBEAT_TIMEOUT"
"""Environment variable: seconds after which JAX declares a silent process dead."""

_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_GRACE_S = 3.0  # between SIGTERM and SIGKILL when stopping the children
_JOIN_EXIT = 3  # exit status of a process whose peers never joined


# ----------------------------------------------------------------- in the child


def _cluster_in_environment() -> bool:
    """Whether a scheduler that ``jax.distributed.initialize()`` detects by itself
    started this process as one of several (SLURM's ``srun``, Open MPI's ``mpirun``,
    a TPU slice that lists its workers), or the user named a coordinator."""
    env = os.environ

    def count(name):
        try:
            return int(env.get(name, "1"))
        except ValueError:
            return 1

    slurm = "SLURM_STEP_NODELIST" in env and "SLURM_PROCID" in env \
        and count("SLURM_NTASKS") > 1  # under srun
    mpi = count("OMPI_COMM_WORLD_SIZE") > 1
    tpu = "," in env.get("TPU_WORKER_HOSTNAMES", env.get("TPU_PROCESS_ADDRESSES", ""))
    return slurm or mpi or tpu or "JAX_COORDINATOR_ADDRESS" in env


def _seconds(value, name: str, default: int) -> int:
    value = os.environ.get(name, default) if value is None else value
    try:
        value = int(float(value))
    except (TypeError, ValueError):
        raise ValueError(f"initialize: {name} must be a number of seconds, got {value!r}") \
            from None
    if value < 1:
        raise ValueError(f"initialize: timeouts must be >= 1 s, got {value} ({name})")
    return value


def initialize(*, join_timeout: Optional[float] = None,
               heartbeat_timeout: Optional[float] = None) -> bool:
    """Joins the other processes of a multi-process run; alone, does nothing.

    Call it first, before any other JAX call. It reads, in this order:

    * the variables ``seqjax launch`` sets (:data:`COORDINATOR`, :data:`NUM_PROCESSES`,
      :data:`PROCESS_ID`, and the two timeouts): ``jax.distributed.initialize`` with
      those arguments;
    * a multi-process job of a scheduler that ``jax.distributed.initialize()`` detects
      itself (``srun`` with ``SLURM_NTASKS > 1``, ``mpirun`` with
      ``OMPI_COMM_WORLD_SIZE > 1``, ``TPU_WORKER_HOSTNAMES`` naming several workers, or
      ``JAX_COORDINATOR_ADDRESS``): ``jax.distributed.initialize()`` without
      arguments, which finds the coordinator, the count and the id;
    * otherwise: nothing (one process, as in a plain ``python train.py``).

    CPU collectives between processes use gloo (``jax_cpu_collectives_implementation``),
    unless another implementation was configured.

    If not every process has joined within ``join_timeout`` seconds (a process that
    crashed at start, a wrong address), this process prints one line saying so on
    stderr and exits with status 3, before JAX's coordination service would abort it
    with a C++ stack trace.

    Args:
      join_timeout: seconds to wait for every process (default: :data:`JOIN_TIMEOUT`,
        else 300, JAX's default).
      heartbeat_timeout: seconds without a heartbeat after which JAX declares a
        process dead and stops the others (default: :data:`HEARTBEAT_TIMEOUT`, else
        100, JAX's default).

    Returns:
      ``True`` if this process is now part of a multi-process run (or already was),
      ``False`` if it runs alone.

    Raises:
      ValueError: a malformed variable (the message names it).
    """
    import jax

    if jax.distributed.is_initialized():
        return True
    join = _seconds(join_timeout, JOIN_TIMEOUT, 300)
    heartbeat = _seconds(heartbeat_timeout, HEARTBEAT_TIMEOUT, 100)
    env = os.environ
    if COORDINATOR in env:
        address = env[COORDINATOR]
        try:
            count, index = int(env[NUM_PROCESSES]), int(env[PROCESS_ID])
        except (KeyError, ValueError):
            raise ValueError(
                f"initialize: {COORDINATOR} is set, so {NUM_PROCESSES} and {PROCESS_ID} must "
                f"be integers, got {env.get(NUM_PROCESSES)!r} and {env.get(PROCESS_ID)!r}") \
                from None
        if not 0 <= index < count:
            raise ValueError(f"initialize: {PROCESS_ID}={index} is not in [0, {count})")
        arguments = dict(coordinator_address=address, num_processes=count, process_id=index)
        where = f"process {index} of {count}"
    elif _cluster_in_environment():
        arguments, address, where = {}, "the detected coordinator", "this process"
    else:
        return False
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX aborts the process (SIGABRT, a C++ trace) when its own deadline passes: give up
    # a few seconds before, in one line
    watchdog = threading.Timer(join, _give_up, (where, address, join))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(**arguments, initialization_timeout=join + 10,
                                   heartbeat_timeout_seconds=heartbeat)
    finally:
        watchdog.cancel()
    return True


def _give_up(where: str, address: str, seconds: int) -> None:
    print(f"seqjax.launch.initialize: {where}: not every process joined the coordinator at "
          f"{address} within {seconds} s (did one fail to start, or is the address wrong?); "
          "stopping", file=sys.stderr, flush=True)
    os._exit(_JOIN_EXIT)


# ---------------------------------------------------------------- the launcher


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the operating system's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def child_environment(base, *, process_id: int, num_processes: int, port: int,
                      devices_per_process: int = 1, join_timeout: int = 60,
                      heartbeat_timeout: int = 30) -> dict:
    """The environment of child ``process_id``: ``base`` plus the run's variables, CPU
    only (``JAX_PLATFORMS=cpu``) with ``devices_per_process`` host devices, the
    coordinator bound to the loopback interface, and unbuffered Python output."""
    env = dict(base)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_COUNT_FLAG)]
    address = f"127.0.0.1:{port}"
    env.update({
        COORDINATOR: address,
        NUM_PROCESSES: str(num_processes),
        PROCESS_ID: str(process_id),
        JOIN_TIMEOUT: str(join_timeout),
        HEARTBEAT_TIMEOUT: str(heartbeat_timeout),
        "JAX_COORDINATOR_BIND_ADDRESS": address,  # not every interface: a local run
        "JAX_PLATFORMS": "cpu",
        # first: XLA stops reading its flags at a malformed one
        "XLA_FLAGS": " ".join([f"{_DEVICE_COUNT_FLAG}={devices_per_process}"] + flags),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _forward(pipe, out, prefix: bytes, lock: threading.Lock) -> None:
    """Copies ``pipe`` to ``out`` line by line, each line after ``prefix``."""
    with pipe:
        for line in iter(pipe.readline, b""):
            if not line.endswith(b"\n"):
                line += b"\n"
            with lock:
                out.write(prefix + line)
                out.flush()


def _how(status: int) -> str:
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        if -status == signal.SIGABRT:
            return (f"was aborted ({name}; JAX's coordination service aborts every process "
                    "when one dies or never joins)")
        return f"was killed by {name}"
    if status == _JOIN_EXIT:
        return "gave up waiting for the others to join (exit status 3)"
    return f"exited with status {status}"


def _stop(children, done) -> None:
    """SIGTERM to every child still running (and its process group), SIGKILL after a
    grace period."""
    running = [(i, p) for i, p in enumerate(children) if i not in done and p.poll() is None]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for _, p in running:
            try:
                os.killpg(p.pid, sig)  # each child leads its own session (start_new_session)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + _GRACE_S
        for _, p in running:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        running = [(i, p) for i, p in running if p.poll() is None]
        if not running:
            return


class _Stopped(Exception):
    """SIGTERM (or SIGHUP) reached the launcher."""


def run(command: Sequence[str], *, num_processes: int, devices_per_process: int = 1,
        timeout: Optional[float] = None, join_timeout: int = 60,
        heartbeat_timeout: int = 30, name: str = "seqjax launch") -> int:
    """Runs ``command`` as ``num_processes`` JAX processes on this machine's CPU.

    Each child gets the environment of :func:`child_environment` (a fresh free port
    for the coordinator); its stdout and stderr lines are copied to this process's,
    each after ``[<id>] ``. The first child to fail stops the others (SIGTERM, then
    SIGKILL after 3 s).

    Args:
      command: the program and its arguments, e.g. ``["python", "train.py"]``; it
        calls :func:`initialize` (or ``jax.distributed.initialize`` with the
        variables).
      num_processes: how many processes.
      devices_per_process: host devices per process.
      timeout: seconds after which children still running are stopped (``None``: no
        limit).
      join_timeout: seconds a child waits for every other to join.
      heartbeat_timeout: seconds without a heartbeat after which JAX declares a child
        dead.
      name: how the one-line messages start.

    Returns:
      The exit status: 0 when every child exited with 0; the first failing child's
      status (``128 + signal`` for a signal); 124 after ``timeout``; 130 when
      interrupted; 127 when the command cannot be started. Every status but 0 comes
      with one line on stderr.
    """
    command = list(command)
    port = free_port()
    lock = threading.Lock()
    out, err = sys.stdout.buffer, sys.stderr.buffer
    width = len(str(num_processes - 1))
    children, forwarders, exits = [], [], queue.Queue()
    start = time.monotonic()
    others = lambda k: "the other process" if k == 1 else f"the other {k} processes"  # noqa: E731

    def say(message):
        with lock:
            err.write(f"{name}: {message}\n".encode())
            err.flush()

    try:
        for i in range(num_processes):
            env = child_environment(os.environ, process_id=i, num_processes=num_processes,
                                    port=port, devices_per_process=devices_per_process,
                                    join_timeout=join_timeout,
                                    heartbeat_timeout=heartbeat_timeout)
            try:
                child = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         start_new_session=True)
            except OSError as e:
                _stop(children, set())
                say(f"cannot run {shlex.join(command)}: {e.strerror or e}")
                return 127
            children.append(child)
            prefix = f"[{i:>{width}}] ".encode()
            for pipe, target in ((child.stdout, out), (child.stderr, err)):
                t = threading.Thread(target=_forward, args=(pipe, target, prefix, lock),
                                     daemon=True)
                t.start()
                forwarders.append(t)
            threading.Thread(target=lambda i=i, c=child: exits.put((i, c.wait())),
                             daemon=True).start()

        done = set()
        while len(done) < num_processes:
            left = None if timeout is None else timeout - (time.monotonic() - start)
            if left is not None and left <= 0:
                running = num_processes - len(done)
                _stop(children, done)
                _drain(forwarders)
                say(f"{running} of {num_processes} processes still running after "
                    f"--timeout {timeout:g} s (a hang?); stopped them")
                return 124
            try:
                i, status = exits.get(timeout=left if left is not None else 0.5)
            except queue.Empty:
                continue
            done.add(i)
            if status != 0:
                elapsed = time.monotonic() - start
                running = num_processes - len(done)
                _stop(children, done)
                _drain(forwarders)
                stopped = f"; stopped {others(running)}" if running else ""
                say(f"process {i} of {num_processes} {_how(status)} after {elapsed:.1f} s"
                    f"{stopped} (its output is above, each line after [{i}])")
                return status if status > 0 else 128 - status
        _drain(forwarders)
        return 0
    except (KeyboardInterrupt, _Stopped):
        _stop(children, set())
        _drain(forwarders)
        say(f"interrupted; stopped the {num_processes} processes")
        return 130


def _drain(forwarders, seconds: float = 5.0) -> None:
    """Waits (a little) for the children's last lines to be copied."""
    deadline = time.monotonic() + seconds
    for t in forwarders:
        t.join(max(0.0, deadline - time.monotonic()))


def parser(prog: str = "seqjax launch") -> _cli.ArgumentParser:
    """The parser of ``seqjax launch`` (the options before ``--``)."""
    p = _cli.ArgumentParser(
        prog=prog,
        description="Run a command as N JAX processes on this machine's CPU "
                    "(jax.distributed with gloo collectives). The command calls "
                    "seqjax.launch.initialize() first.",
        epilog="example: seqjax launch -n 2 --devices-per-process 2 -- python train.py")
    p.add_argument("-n", "--num-processes", type=_cli.positive_int, required=True,
                   help="how many processes")
    p.add_argument("--devices-per-process", type=_cli.positive_int, default=1,
                   help="host devices per process (XLA_FLAGS="
                        "--xla_force_host_platform_device_count); default 1")
    p.add_argument("--timeout", type=_cli.positive_float, default=None,
                   help="stop every process after this many seconds (a hang); default: none")
    p.add_argument("--join-timeout", type=_cli.positive_int, default=60,
                   help="seconds a process waits for the others to join; default 60")
    p.add_argument("--heartbeat-timeout", type=_cli.positive_int, default=30,
                   help="seconds without a heartbeat after which JAX declares a process "
                        "dead; default 30")
    p.add_argument("command", nargs="*", help="the command, after --")
    return p


def main(argv=None, prog: str = "seqjax launch") -> int:
    """``seqjax launch`` and ``python -m seqjax.launch``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    p = parser(prog)
    args = p.parse_args(argv[:split])
    command = args.command + argv[split + 1:]
    if not command:
        p.error("give the command to run after --, e.g. -- python train.py")

    def stopped(signum, frame):
        raise _Stopped

    previous = {s: signal.signal(s, stopped) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return run(command, num_processes=args.num_processes,
                   devices_per_process=args.devices_per_process, timeout=args.timeout,
                   join_timeout=args.join_timeout, heartbeat_timeout=args.heartbeat_timeout,
                   name=p.prog)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main(prog="python -m seqjax.launch"))
