"""What the whole-model benchmarks (``bench recall``, ``bench lm``) share: model specs
by name, the machine and versions a result is recorded with, markdown tables."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform

import jax


def layer_names(spec: str, layers: int) -> list:
    """The block names of a model spec: ``"mamba"`` is ``layers`` Mamba blocks;
    ``"griffin+local_attention"`` alternates the two and
    ``"griffin+griffin+local_attention"`` repeats that pattern, ``layers`` in all."""
    parts = [p.strip() for p in spec.split("+")]
    if any(not p for p in parts):
        raise ValueError(f"bad block spec {spec!r}: expected NAME or NAME+NAME+...")
    return [parts[i % len(parts)] for i in range(layers)]


def version(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine(dists) -> dict:
    """Date, device, CPUs, ``XLA_FLAGS`` and the versions of ``dists`` (and Python)."""
    dev = jax.devices()[0]
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    versions = {name: version(name) for name in dists}
    versions["python"] = platform.python_version()
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=str(dev), device_kind=dev.device_kind, platform=dev.platform,
        machine=platform.machine(), system=platform.system(), cpu_count=os.cpu_count(),
        cpu_affinity=affinity, xla_flags=os.environ.get("XLA_FLAGS"), versions=versions)


def table(header, body) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in line) + " |" for line in body]
    return "\n".join(lines)
