"""Timing and memory measurement, in diffrax's discipline.

Compile on its own (``jax.jit(f).lower(*args).compile()``), warm up, then time
``repeats`` calls each ended by ``block_until_ready``; report the median and the minimum.
"""

from __future__ import annotations

import dataclasses
import re
import resource
import statistics
import time
from typing import Callable, Optional

import jax


@dataclasses.dataclass
class Timing:
    """What one measured function gave."""

    median_s: float
    min_s: float
    times_s: list
    compile_s: Optional[float]  # trace + lower + compile; None for eager frameworks
    first_call_s: float  # the first call after compiling (or the first eager call)
    memory_bytes: Optional[int]
    memory_kind: str
    xla_temp_bytes: Optional[int] = None  # XLA's own buffer plan for the compiled function


class Memory:
    """Peak memory around a block of calls, by the best means the backend offers.

    * GPU (JAX): ``device.memory_stats()["peak_bytes_in_use"]`` after the calls minus
      ``bytes_in_use`` before. The peak is a process-wide high-water mark that JAX cannot
      reset, so when an earlier row went higher this reads as that earlier peak: an
      upper bound.
    * GPU (PyTorch): ``torch.cuda.max_memory_allocated`` after
      ``reset_peak_memory_stats``.
    * CPU: the process's peak resident set size during the calls minus the RSS before.
      On Linux the peak is reset first (``/proc/self/clear_refs``, then ``VmHWM``);
      elsewhere the growth of ``getrusage().ru_maxrss``, a high-water mark that only
      counts memory above every earlier peak (0 then means "no new peak").
    """

    def __init__(self, kind: str = "jax"):
        self.kind = kind
        self.device = jax.devices()[0] if kind == "jax" else None
        self.start = None

    def describe(self) -> str:
        if self.kind == "torch-cuda":
            return "GPU: torch.cuda.max_memory_allocated (peak reset before)"
        if self.kind == "jax" and self._jax_stats() is not None:
            return "GPU: peak_bytes_in_use - bytes_in_use before (process high-water mark)"
        if _proc_status() is not None and _can_reset_rss():
            return "CPU: process peak RSS - RSS before (VmHWM after /proc/self/clear_refs)"
        return "CPU: growth of getrusage ru_maxrss (high-water mark; 0 = no new peak)"

    def _jax_stats(self):
        try:
            stats = self.device.memory_stats()
        except Exception:  # backends without allocator statistics
            return None
        return stats if stats and "peak_bytes_in_use" in stats else None

    def __enter__(self):
        if self.kind == "torch-cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        elif self.kind == "jax" and self._jax_stats() is not None:
            self.start = self._jax_stats()["bytes_in_use"]
        elif _can_reset_rss():
            _reset_rss_peak()
            self.start = _proc_status()["VmRSS"]
        else:
            self.start = _maxrss()
        return self

    def __exit__(self, *exc):
        if self.kind == "torch-cuda":
            import torch

            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.start
        elif self.kind == "jax" and self._jax_stats() is not None:
            self.bytes = self._jax_stats()["peak_bytes_in_use"] - self.start
        elif _can_reset_rss():
            self.bytes = _proc_status()["VmHWM"] - self.start
        else:
            self.bytes = _maxrss() - self.start
        self.bytes = max(int(self.bytes), 0)
        return False


def _proc_status():
    try:
        with open("/proc/self/status") as f:
            text = f.read()
    except OSError:
        return None
    out = {}
    for name in ("VmRSS", "VmHWM"):
        m = re.search(rf"^{name}:\s+(\d+)\s+kB", text, re.M)
        if m is None:
            return None
        out[name] = int(m.group(1)) * 1024
    return out


_RSS_RESET_OK = None


def _can_reset_rss() -> bool:
    global _RSS_RESET_OK
    if _RSS_RESET_OK is None:
        try:
            _reset_rss_peak()
            _RSS_RESET_OK = _proc_status() is not None
        except OSError:
            _RSS_RESET_OK = False
    return _RSS_RESET_OK


def _reset_rss_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _maxrss() -> int:
    import sys

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure(call: Callable[[], object], sync: Callable[[object], object], *, warmup: int,
            repeats: int, memory: Memory) -> tuple:
    """Times ``sync(call())``: first call, ``warmup`` more, then ``repeats`` timed.

    Returns:
      ``(first_call_s, times_s, memory_bytes)``; memory is measured around the warm-up
      and the timed calls.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    with memory:
        start = time.perf_counter()
        sync(call())
        first = time.perf_counter() - start
        for _ in range(max(warmup - 1, 0)):
            sync(call())
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            sync(call())
            times.append(time.perf_counter() - start)
    return first, times, memory.bytes


def time_fn(fn: Callable, args: tuple, *, warmup: int, repeats: int) -> Timing:
    """Compiles ``jax.jit(fn)`` for ``args`` (timed on its own), then times its calls.

    Args:
      fn: a JAX-traceable function of ``*args``.
      args: example arguments (arrays / pytrees), already on the device.
      warmup: calls before timing (the first call after compiling counts as one).
      repeats: timed calls; each ends with ``jax.block_until_ready``.

    Returns:
      A :class:`Timing` with the median and minimum over ``repeats``.
    """
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    temp = None
    try:
        stats = compiled.memory_analysis()
        temp = int(stats.temp_size_in_bytes) if stats is not None else None
    except Exception:  # not every backend implements it
        temp = None
    memory = Memory("jax")
    first, times, mem = measure(lambda: compiled(*args), jax.block_until_ready, warmup=warmup,
                                repeats=repeats, memory=memory)
    return Timing(statistics.median(times), min(times), times, compile_s, first, mem,
                  memory.describe(), temp)


def time_eager(call: Callable[[], object], sync: Callable[[object], object], *, warmup: int,
               repeats: int, memory: Memory) -> Timing:
    """:func:`time_fn` for an eager framework (PyTorch): no separate compilation."""
    first, times, mem = measure(call, sync, warmup=warmup, repeats=repeats, memory=memory)
    return Timing(statistics.median(times), min(times), times, None, first, mem,
                  memory.describe())
