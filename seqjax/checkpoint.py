"""Checkpoints of a training run: params, optimizer state, step and PRNG key.

**Format.** A checkpoint is one ``.npz`` file -- a zip archive (Python's ``zipfile``,
no compression) that ``numpy.load`` opens -- holding

* one ``.npy`` member per array, named after its path in the tree
  (``params/encoder/w_i.npy``; 16-bit floats and PRNG keys are stored as their raw
  unsigned-integer bits);
* ``manifest.json``: the format name and version, and for every leaf its tree path,
  kind (array, PRNG key, Python ``int``/``float``/``bool``), dtype, shape, member name,
  byte count and **SHA-256** of the member's bytes;
* the archive comment ``seqjax-checkpoint 1 sha256=<hex>``: the SHA-256 of the
  manifest itself.

It needs nothing beyond numpy and the standard library (the library's core stays
jax, numpy and optax), every array is readable without seqjax, and restoring
verifies every byte: zip's CRC-32 per member, then the SHA-256s. A truncated file
(the zip directory sits at the end) or a flipped byte is reported as such, never
restored as plausible numbers. safetensors would give the same guarantees only with
an extra dependency and no place for Python scalars or key types; flax's msgpack
(the format before this one) has no checksum at all. Checkpoints in the old msgpack
format are recognised and refused with a message saying how to convert them.

**Writes are atomic.** The bytes go to a temporary file in the target directory,
created with the process's umask (not ``mkstemp``'s 0600), flushed and ``fsync``-ed,
then renamed over the target with ``os.replace`` (atomic on POSIX). A crash or an
exception during :func:`save` leaves the previous checkpoint intact; the temporary of
a save that was killed (``kill -9``, power loss) is removed by the next :func:`save`
into the same directory, once the process that wrote it is gone.

**Many processes.** A train state on a mesh that spans several processes
(``jax.distributed``; :mod:`seqjax.launch`) is saved by *every* process calling
:func:`save` with the same path: arrays split over processes are gathered, process 0
alone writes the file (atomically, as above), and every process returns once it is
complete -- or raises if process 0 could not write it. The file is the same as one
process would write: whole arrays, no trace of the mesh, so any number of processes
or devices restores it (resharding): :func:`restore` on every process reads it (from
a file system they all see) and puts each array where the template's is. Orbax's
sharded, asynchronous checkpoints pay off for params too large for one host; a
recurrent model's state is small and replicated by data parallelism, so one verified
file written by one process keeps the core lean.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import socket
import struct
import time
import zipfile
import zlib
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "seqjax-checkpoint"
VERSION = 1
_SUFFIX = ".npz"
_PATTERN = re.compile(r"^ckpt_(\d+)\.(npz|msgpack)$")
_TMP = re.compile(r"^\.tmp-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]+-")
_MANIFEST = "manifest.json"
_COMMENT = re.compile(rb"^seqjax-checkpoint (\d+) sha256=([0-9a-f]{64})$")
_FOREIGN_AGE_S = 24 * 3600  # temporaries of other hosts are removed after a day
_OLD_TMP = re.compile(r"^\.tmp-[A-Za-z0-9_]{8}\.msgpack$")  # mkstemp's, before this format
_OLD_AGE_S = 3600


class CheckpointError(ValueError):
    """A checkpoint file that cannot be restored: truncated, corrupted, not a seqjax
    checkpoint, or not matching the template. A :class:`ValueError`."""


def step_path(directory, step: int) -> str:
    """The file name :func:`latest` recognises: ``<directory>/ckpt_<step:08d>.npz``."""
    return os.path.join(os.fspath(directory), f"ckpt_{int(step):08d}{_SUFFIX}")


# ----------------------------------------------------------------------- writing


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _host_id() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _member_name(path, used) -> str:
    simple = jax.tree_util.keystr(path, simple=True, separator="/") if path else "value"
    simple = re.sub(r"[^A-Za-z0-9_./-]", "_", simple).strip("/") or "value"
    name, n = simple, 1
    while name in used:
        n += 1
        name = f"{simple}~{n}"
    used.add(name)
    return name + ".npy"


def _raw(array: np.ndarray):
    """``(array to store, dtype name)``: dtypes ``.npy`` cannot name (bfloat16, the
    float8s) are stored as unsigned-integer bits of the same width."""
    array = np.ascontiguousarray(array)
    if array.dtype.kind in "biufc":
        return array, array.dtype.name
    return array.view(np.dtype(f"u{array.dtype.itemsize}")), jnp.dtype(array.dtype).name


def _npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, array, allow_pickle=False)
    return out.getvalue()


def _entries(tree):
    """``[(path string, leaf entry, member bytes or None)]`` for every leaf."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    used, out = set(), []
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        if isinstance(leaf, (bool, int, float)) and not isinstance(leaf, np.generic):
            out.append((where, {"kind": type(leaf).__name__, "value": leaf}, None))
            continue
        entry = {"kind": "array"}
        if _is_key(leaf):
            entry = {"kind": "key", "impl": str(jax.random.key_impl(leaf))}
            leaf = jax.random.key_data(leaf)
        if not hasattr(leaf, "dtype"):
            raise TypeError(f"checkpoint.save: the leaf at {where} is a "
                            f"{type(leaf).__name__}; a checkpoint holds arrays, PRNG keys "
                            "and Python int/float/bool")
        array = np.asarray(jax.device_get(leaf))
        stored, dtype = _raw(array)
        data = _npy_bytes(stored)
        entry.update(dtype=dtype, shape=list(array.shape), member=_member_name(path, used),
                     bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        out.append((where, entry, data))
    return out


def _remove_stale_temporaries(directory: str) -> None:
    """Removes the ``.tmp-*`` files of saves whose process is gone (killed mid-write):
    this host's whose process no longer runs, other hosts' after a day, and those of
    the msgpack format (which recorded no owner) after an hour."""
    host = _host_id()
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        match = _TMP.match(name)
        path = os.path.join(directory, name)
        if not match:
            if _OLD_TMP.match(name):  # no owner recorded: an hour old is long dead
                _remove_if_older(path, _OLD_AGE_S)
            continue
        if match.group("host") != host:
            _remove_if_older(path, _FOREIGN_AGE_S)
            continue
        pid = int(match.group("pid"))
        if pid != os.getpid() and not _alive(pid):
            try:
                os.remove(path)
            except OSError:
                pass


def _remove_if_older(path: str, age_s: float) -> bool:
    """Removes ``path`` if it was last modified more than ``age_s`` ago."""
    try:
        if time.time() - os.path.getmtime(path) > age_s:
            os.remove(path)
            return True
    except OSError:
        pass
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def _spans_processes(tree) -> bool:
    """Whether some array of ``tree`` lives on devices of several processes."""
    return any(isinstance(leaf, jax.Array) and not leaf.is_fully_addressable
               for leaf in jax.tree_util.tree_leaves(tree))


def _gathered(leaf):
    """A leaf whose whole value this process can read: an array split over processes
    is gathered (a collective: every process calls it, in the same order)."""
    if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable \
            or leaf.is_fully_replicated:
        return leaf
    from jax.experimental import multihost_utils

    if _is_key(leaf):
        data = multihost_utils.process_allgather(jax.random.key_data(leaf), tiled=True)
        return jax.random.wrap_key_data(jnp.asarray(data), impl=jax.random.key_impl(leaf))
    return multihost_utils.process_allgather(leaf, tiled=True)


def save(path, train_state) -> str:
    """Writes ``train_state`` (any pytree, e.g. :class:`seqjax.train.TrainState`) atomically.

    When ``train_state`` holds arrays on a mesh over several processes, every process
    calls ``save`` with the same ``path``: process 0 writes the file (arrays split
    over processes are gathered first) and every process returns once it is written.

    Args:
      path: target file; its directory is created if needed. :func:`step_path` names
        the files that :func:`latest` finds.
      train_state: pytree of arrays, typed or raw PRNG keys, Python ``int``, ``float``,
        ``bool`` and ``None``.

    Returns:
      ``path`` as a string.

    Raises:
      TypeError: a leaf that is none of the above.
      RuntimeError: (on the other processes) process 0 could not write the file; it
        raises its own error.
    """
    path = os.fspath(path)
    if not _spans_processes(train_state):
        return _write(path, train_state)
    from jax.experimental import multihost_utils

    train_state = jax.tree_util.tree_map(_gathered, train_state)
    error = None
    if jax.process_index() == 0:
        try:
            _write(path, train_state)
        except BaseException as e:  # re-raised below, once the others know
            error = e
    written = multihost_utils.process_allgather(np.int32(error is None))
    if error is not None:
        raise error
    if not np.all(written):
        raise RuntimeError(f"checkpoint.save: process 0 could not write {path} (its own "
                           "error says why); the previous checkpoints are intact")
    return path


def _write(path: str, train_state) -> str:
    """:func:`save` in this process alone."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    entries = _entries(train_state)
    manifest = {"format": FORMAT, "version": VERSION,
                "leaves": [dict(path=where, **entry) for where, entry, _ in entries]}
    manifest_bytes = json.dumps(manifest, indent=1).encode()
    comment = f"{FORMAT} {VERSION} sha256={hashlib.sha256(manifest_bytes).hexdigest()}"

    _remove_stale_temporaries(directory)
    tmp = os.path.join(directory, f".tmp-{_host_id()}-{os.getpid()}-{secrets.token_hex(4)}-"
                                  f"{os.path.basename(path)}")
    # os.open applies the umask, as any new file gets (mkstemp would force 0600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                archive.writestr(_MANIFEST, manifest_bytes)
                for _, entry, data in entries:
                    if data is not None:
                        archive.writestr(entry["member"], data)
                archive.comment = comment.encode()
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


# ----------------------------------------------------------------------- reading


# What Python's zipfile (and the zlib and struct calls beneath it) raises on a damaged
# archive besides BadZipFile: a header field read past the end (EOFError, struct.error),
# a flipped flag, version or method byte ("encrypted, password required" is a
# RuntimeError; "zip file version", "compression method", "patched data" are
# NotImplementedErrors), a bad length or offset (ValueError, zlib.error, OSError), a
# renamed member (KeyError). Caught only around the zipfile calls that read the file
# (never FileNotFoundError: a missing file says so), and re-raised as a CheckpointError
# that names the file and keeps the original as its cause.
_DAMAGE = (zipfile.BadZipFile, zlib.error, struct.error, EOFError, NotImplementedError,
           RuntimeError, ValueError, KeyError, OSError)


def _damaged(path: str, what: str, error: BaseException) -> CheckpointError:
    """The :class:`CheckpointError` for ``error``, raised by the zip reader while reading
    ``what`` of ``path``."""
    if isinstance(error, zipfile.BadZipFile) and "CRC" in str(error):
        how = "is corrupted: checksum mismatch (CRC-32) in"
    elif isinstance(error, (zipfile.BadZipFile, RuntimeError, NotImplementedError)):
        how = "is corrupted: damaged zip header of"  # a flipped flag, version or method
    else:
        how = "is truncated or corrupted: cannot read"
    return CheckpointError(f"restore: {path} {how} {what} ({type(error).__name__}: {error})")


def _read_member(archive, path: str, member: str, what: str) -> bytes:
    """The bytes of ``member``, CRC-checked; any damage is a :class:`CheckpointError`."""
    try:
        return archive.read(member)
    except FileNotFoundError:
        raise
    except _DAMAGE as e:
        raise _damaged(path, what, e) from e


def _open(path: str):
    """``(archive, manifest)``, after checking the file is a whole, intact checkpoint."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise FileNotFoundError(f"restore: no checkpoint at {path}") from None
    if size == 0:
        raise CheckpointError(f"restore: {path} is empty (0 bytes); not a checkpoint that "
                              "seqjax.checkpoint.save finished")
    if head[0] in range(0x80, 0x90) or head[0] in (0xDE, 0xDF):  # a msgpack map
        raise CheckpointError(
            f"restore: {path} is a flax msgpack checkpoint, written by an earlier seqjax; "
            "this version reads its own verified .npz format. Convert it once: state = "
            "flax.serialization.from_bytes(template, open(path, 'rb').read()), then "
            "seqjax.checkpoint.save(new_path, state)")
    if head != b"PK\x03\x04":
        raise CheckpointError(f"restore: {path} is not a seqjax checkpoint (it does not start "
                              f"like a zip archive; {size} bytes)")
    try:
        archive = zipfile.ZipFile(path, "r")
    except FileNotFoundError:
        raise
    except _DAMAGE as e:
        raise CheckpointError(
            f"restore: {path} is truncated or corrupted: its zip directory, which is written "
            f"last, is missing or damaged ({type(e).__name__}: {e}; {size} bytes). The save "
            "that wrote it was probably interrupted; use an earlier checkpoint") from e
    match = _COMMENT.match(archive.comment)
    if match is None:
        archive.close()
        raise CheckpointError(f"restore: {path} is truncated or not a seqjax checkpoint: its "
                              "closing zip record lacks the seqjax signature (archive comment "
                              f"{archive.comment[:60]!r})")
    if int(match.group(1)) != VERSION:
        archive.close()
        raise CheckpointError(f"restore: {path} is corrupted or of another version: its zip "
                              f"record says {FORMAT!r} version {int(match.group(1))}; this "
                              f"seqjax reads version {VERSION}")
    try:
        manifest_bytes = _read_member(archive, path, _MANIFEST, "its manifest")
    except BaseException:
        archive.close()
        raise
    if hashlib.sha256(manifest_bytes).hexdigest() != match.group(2).decode():
        archive.close()
        raise CheckpointError(f"restore: {path} is corrupted: checksum mismatch in the "
                              "manifest (SHA-256)")
    manifest = json.loads(manifest_bytes)
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        archive.close()
        raise CheckpointError(f"restore: {path} has format {manifest.get('format')!r} version "
                              f"{manifest.get('version')!r}; this seqjax reads {FORMAT!r} "
                              f"version {VERSION}")
    return archive, manifest


def _read_array(archive, path: str, entry: dict) -> np.ndarray:
    where = entry["path"]
    data = _read_member(archive, path, entry["member"], f"the array at {where}")
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointError(f"restore: {path} is corrupted: checksum mismatch in the array "
                              f"at {where} (SHA-256 of {len(data)} bytes)")
    stored = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    dtype = jnp.dtype(entry["dtype"])
    array = stored if stored.dtype == dtype else stored.view(dtype)
    return array.reshape(entry["shape"])


def load(path) -> dict:
    """Every leaf of a checkpoint, verified, by tree path (no template needed).

    Args:
      path: checkpoint file.

    Returns:
      ``{path: value}`` in the order saved, e.g. ``{".params['w']": array, ".step": 5}``;
      arrays as numpy arrays (PRNG keys as their raw ``uint32`` data).

    Raises:
      FileNotFoundError: no file at ``path``.
      CheckpointError: truncated, corrupted or not a seqjax checkpoint.
    """
    path = os.fspath(path)
    archive, manifest = _open(path)
    with archive:
        return {entry["path"]: (entry["value"] if entry["kind"] in ("int", "float", "bool")
                                else _read_array(archive, path, entry))
                for entry in manifest["leaves"]}


def restore(path, like):
    """Reads a checkpoint written by :func:`save` into the structure of ``like``.

    Every array's bytes are verified (CRC-32 and SHA-256) before anything is returned.

    Args:
      path: checkpoint file.
      like: a template with the same tree structure, shapes and dtypes (e.g. a freshly
        initialised train state); typed PRNG keys in it are restored as typed keys.

    Returns:
      A pytree like ``like``: arrays as ``jax.Array``, Python scalars as Python scalars.
      Where the template's array lives on a mesh over several processes, the
      restored one is put on the same devices with the same sharding (each process
      reads the file and keeps its own part), whatever mesh wrote the file.

    Raises:
      FileNotFoundError: no file at ``path``.
      CheckpointError: (a ``ValueError``) the file is truncated, corrupted (checksum
        mismatch), in the old msgpack format or not a checkpoint; or its structure,
        shapes or dtypes differ from ``like``.
    """
    path = os.fspath(path)
    archive, manifest = _open(path)
    with archive:
        leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
        saved = {entry["path"]: entry for entry in manifest["leaves"]}
        wanted = [jax.tree_util.keystr(p) for p, _ in leaves]
        missing = [w for w in wanted if w not in saved]
        extra = [s for s in saved if s not in set(wanted)]
        if missing or extra:
            raise CheckpointError(
                f"restore: {path} does not match the template's structure: "
                + "; ".join(part for part in (
                    f"the template has {missing[:5]} which the checkpoint lacks"
                    if missing else "",
                    f"the checkpoint has {extra[:5]} which the template lacks"
                    if extra else "") if part))
        out = []
        for (p, want), where in zip(leaves, wanted):
            entry = saved[where]
            out.append(_convert(path, where, want, entry, archive))
        return jax.tree_util.tree_unflatten(treedef, out)


def _convert(path, where, want, entry, archive):
    kind = entry["kind"]
    if isinstance(want, (bool, int, float)) and not isinstance(want, np.generic):
        if kind not in ("int", "float", "bool"):
            raise CheckpointError(f"restore: {path} has an array at {where}, the template a "
                                  f"Python {type(want).__name__}")
        return type(want)(entry["value"])
    if kind in ("int", "float", "bool"):
        raise CheckpointError(f"restore: {path} has a Python {kind} at {where}, the template "
                              f"an array")
    is_key = _is_key(want)
    template = jax.random.key_data(want) if is_key else want
    if not hasattr(template, "dtype"):
        template = np.asarray(template)
    want_dtype, want_shape = jnp.dtype(template.dtype), tuple(np.shape(template))
    got_dtype, got_shape = jnp.dtype(entry["dtype"]), tuple(entry["shape"])
    if got_shape != want_shape or got_dtype != want_dtype:
        raise CheckpointError(
            f"restore: {path} has {got_dtype.name}{list(got_shape)} at {where}, the template "
            f"{want_dtype.name}{list(want_shape)}")
    array = _read_array(archive, path, entry)
    if isinstance(template, jax.Array) and not template.is_fully_addressable:
        placed = jax.make_array_from_callback(array.shape, template.sharding,
                                              lambda index: array[index])
        return jax.random.wrap_key_data(placed, impl=jax.random.key_impl(want)) \
            if is_key else placed
    if is_key:
        return jax.random.wrap_key_data(jnp.asarray(array), impl=jax.random.key_impl(want))
    return jnp.asarray(array)


# ----------------------------------------------------------------------- directories


def checkpoints(directory) -> list:
    """``[(step, path), ...]`` of the step-numbered checkpoints in ``directory``, sorted.

    Files of the old msgpack format (``ckpt_<step>.msgpack``) are listed too, so that
    resuming from them fails with a message instead of silently starting afresh.
    """
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
    """Path of the highest-step ``ckpt_<step>.npz`` in ``directory``, or ``None``."""
    found = checkpoints(directory)
    return found[-1][1] if found else None


def prune(directory, keep: int) -> None:
    """Deletes all but the ``keep`` most recent step-numbered checkpoints."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"prune: keep must be an int >= 1, got {keep!r}")
    for _, path in checkpoints(directory)[:-keep]:
        os.remove(path)
