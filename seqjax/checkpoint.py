"""Checkpoints of a training run: params, optimizer state, step and PRNG key.

Serialised with ``flax.serialization.to_bytes`` (msgpack) and written atomically: the
bytes go to a temporary file in the target directory, which is flushed, ``fsync``-ed
and then renamed over the target with ``os.replace`` (atomic on POSIX). A crash or an
exception during :func:`save` therefore leaves the previous checkpoint intact; there
is never a half-written file under the checkpoint's name.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Optional

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

_PATTERN = re.compile(r"^ckpt_(\d+)\.msgpack$")
_CHUNK = 1 << 20


def step_path(directory, step: int) -> str:
    """The file name :func:`latest` recognises: ``<directory>/ckpt_<step:08d>.msgpack``."""
    return os.path.join(os.fspath(directory), f"ckpt_{int(step):08d}.msgpack")


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_host(tree):
    """Typed PRNG keys become their raw ``uint32`` data; arrays come to the host."""
    tree = jax.tree_util.tree_map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)
    return jax.device_get(tree)


def save(path, train_state) -> str:
    """Writes ``train_state`` (any pytree, e.g. :class:`seqjax.train.TrainState`) atomically.

    Args:
      path: target file; its directory is created if needed.
      train_state: pytree of arrays, Python scalars and ``None``.

    Returns:
      ``path`` as a string.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    data = flax.serialization.to_bytes(_to_host(train_state))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".msgpack")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            for start in range(0, len(data), _CHUNK):
                f.write(data[start:start + _CHUNK])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def restore(path, like):
    """Reads a checkpoint written by :func:`save` into the structure of ``like``.

    Args:
      path: checkpoint file.
      like: a template with the same tree structure, shapes and dtypes (e.g. a freshly
        initialised train state); typed PRNG keys in it are restored as typed keys.

    Returns:
      A pytree like ``like``: arrays as ``jax.Array``, Python scalars as Python scalars.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: the checkpoint's structure, shapes or dtypes differ from ``like``.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    host_like = _to_host(like)
    try:
        restored = flax.serialization.from_bytes(host_like, data)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"restore: {path} does not match the template's structure: {e}") from e

    def convert(path_, want, got, orig):
        where = jax.tree_util.keystr(path_)
        if isinstance(want, (bool, int, float)) and not isinstance(want, np.generic):
            return type(want)(got)
        got = np.asarray(got)
        want = np.asarray(want)
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ValueError(f"restore: {path} has {got.dtype}{list(got.shape)} at {where}, the "
                             f"template {want.dtype}{list(want.shape)}")
        if _is_key(orig):
            return jax.random.wrap_key_data(jnp.asarray(got), impl=jax.random.key_impl(orig))
        return jnp.asarray(got)

    return jax.tree_util.tree_map_with_path(convert, host_like, restored, like)


def checkpoints(directory) -> list:
    """``[(step, path), ...]`` of the step-numbered checkpoints in ``directory``, sorted."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = _PATTERN.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(directory, name)))
    return sorted(found)


def latest(directory) -> Optional[str]:
    """Path of the highest-step ``ckpt_<step>.msgpack`` in ``directory``, or ``None``."""
    found = checkpoints(directory)
    return found[-1][1] if found else None


def prune(directory, keep: int) -> None:
    """Deletes all but the ``keep`` most recent step-numbered checkpoints."""
    if keep < 1:
        raise ValueError(f"prune: keep must be >= 1, got {keep}")
    for _, path in checkpoints(directory)[:-keep]:
        os.remove(path)
