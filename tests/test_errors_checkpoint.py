"""What :mod:`seqjax.checkpoint` refuses to restore, and what it cleans up.

A checkpoint that is truncated, has a flipped byte, was written in the old msgpack
format, or does not match the template raises a ``CheckpointError`` (a
``ValueError``) that says which -- never plausible numbers. A save killed mid-write
(``kill -9``, in a subprocess) leaves a temporary file that the next save removes.
"""

import io
import json
import os
import stat
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import seqjax as sj
from seqjax import checkpoint, train


def _state():
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3, jnp.bfloat16)}
    return train.init_state(params, optax.adam(0.1), seed=1)._replace(
        step=7, rng=jax.random.key(3))


def _flip(path, offset, out):
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 0x01
    Path(out).write_bytes(bytes(data))
    return out


def test_round_trip_is_exact_and_readable_without_seqjax(tmp_path):
    state = _state()
    path = checkpoint.save(tmp_path / "a.npz", state)
    back = checkpoint.restore(path, like=state)
    assert back.step == 7 and isinstance(back.step, int)
    assert jax.random.key_impl(back.rng) == jax.random.key_impl(state.rng)
    np.testing.assert_array_equal(jax.random.key_data(back.rng), jax.random.key_data(state.rng))
    for a, b in zip(jax.tree_util.tree_leaves(back.params), jax.tree_util.tree_leaves(state.params)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    with np.load(path) as archive:  # plain numpy reads every array by its tree path
        np.testing.assert_array_equal(archive["params/w"], np.arange(6.0).reshape(2, 3))
        manifest = json.loads(archive["manifest.json"])
    assert manifest["format"] == "seqjax-checkpoint"
    assert all(len(leaf["sha256"]) == 64 for leaf in manifest["leaves"] if "sha256" in leaf)
    assert list(checkpoint.load(path))[:2] == [".params['b']", ".params['w']"]


def test_a_flipped_byte_is_a_checksum_mismatch(tmp_path):
    state = _state()
    path = checkpoint.save(tmp_path / "a.npz", state)
    payload = np.asarray(state.params["w"]).tobytes()
    offset = Path(path).read_bytes().index(payload) + 9  # inside w's numbers
    bad = _flip(path, offset, tmp_path / "bad.npz")
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"corrupted: checksum mismatch \(CRC-32\) in the array at "
                             r"\.params\['w'\]"):
        checkpoint.restore(bad, like=state)

    # the SHA-256 catches what the zip's CRC cannot: the same change with a CRC to match
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp_path / "forged.npz", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "params/w.npy":
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.writestr(info, data)
        dst.comment = src.comment
    with pytest.raises(ValueError, match=r"checksum mismatch in the array at \.params\['w'\] "
                                         r"\(SHA-256"):
        checkpoint.restore(tmp_path / "forged.npz", like=state)

    manifest_at = Path(path).read_bytes().index(b'"format"')
    with pytest.raises(ValueError, match=r"corrupted: checksum mismatch \(CRC-32\) in its "
                                         r"manifest"):
        checkpoint.restore(_flip(path, manifest_at + 3, tmp_path / "m.npz"), like=state)


def test_truncated_empty_foreign_and_old_files_say_so(tmp_path):
    state = _state()
    path = checkpoint.save(tmp_path / "a.npz", state)
    data = Path(path).read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.npz is truncated or corrupted: its zip "
                                         r"directory, which is written last, is missing"):
        checkpoint.restore(tmp_path / "cut.npz", like=state)
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is empty \(0 bytes\)"):
        checkpoint.restore(tmp_path / "empty.npz", like=state)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="is not a seqjax checkpoint"):
        checkpoint.restore(tmp_path / "notes.txt", like=state)
    (tmp_path / "ckpt_00000003.msgpack").write_bytes(b"\x81\xa1w\xc0")  # flax's msgpack map
    with pytest.raises(ValueError, match=r"is a flax msgpack checkpoint, written by an earlier "
                                         r"seqjax.*seqjax\.checkpoint\.save"):
        checkpoint.restore(tmp_path / "ckpt_00000003.msgpack", like=state)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        checkpoint.restore(tmp_path / "missing.npz", like=state)


def test_fit_does_not_silently_restart_over_old_checkpoints(tmp_path):
    (tmp_path / "ckpt_00000004.msgpack").write_bytes(b"\x81\xa1w\xc0")
    loss_fn = lambda p, b, r: jnp.sum(p ** 2)  # noqa: E731
    with pytest.raises(ValueError, match="flax msgpack checkpoint"):
        train.fit(loss_fn, optax.sgd(0.1), jnp.ones(2), lambda s, r: None, steps=6,
                  checkpoint_dir=tmp_path, progress=False)


def test_restore_names_a_mismatch(tmp_path):
    path = checkpoint.save(tmp_path / "a.npz", {"w": jnp.zeros(3)})
    with pytest.raises(ValueError, match=r"float32\[3\] at \['w'\], the template float32\[4\]"):
        checkpoint.restore(path, like={"w": jnp.zeros(4)})
    with pytest.raises(ValueError, match=r"does not match the template's structure: the "
                                         r"template has \[\"\['v'\]\"\]"):
        checkpoint.restore(path, like={"v": jnp.zeros(3)})
    with pytest.raises(ValueError, match="has an array at \\['w'\\], the template a Python int"):
        checkpoint.restore(path, like={"w": 0})
    with pytest.raises(TypeError, match=r"the leaf at \['s'\] is a str"):
        checkpoint.save(tmp_path / "b.npz", {"s": "text"})


_KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import jax.numpy as jnp
    from seqjax import checkpoint

    def killed(fd):  # kill -9 once the bytes are written, before the rename
        os.kill(os.getpid(), signal.SIGKILL)

    os.fsync = killed
    checkpoint.save(os.path.join(sys.argv[1], "ckpt_00000002.npz"), {"w": jnp.ones(1000)})
""")


def test_a_killed_save_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    first = checkpoint.save(checkpoint.step_path(tmp_path, 1), {"w": jnp.zeros(1000)})
    out = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(tmp_path)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == -9, out.stderr[-2000:]
    left = sorted(os.listdir(tmp_path))
    assert left[0].startswith(".tmp-") and left[1:] == ["ckpt_00000001.npz"], left
    np.testing.assert_array_equal(checkpoint.restore(first, like={"w": jnp.ones(1000)})["w"],
                                  0.0)  # the earlier checkpoint is intact
    old = tmp_path / ".tmp-k2j4x9_a.msgpack"  # an interrupted save of the msgpack format
    old.write_bytes(b"\x81")
    os.utime(old, (0, 0))
    checkpoint.save(checkpoint.step_path(tmp_path, 3), {"w": jnp.ones(1000)})
    assert sorted(os.listdir(tmp_path)) == ["ckpt_00000001.npz", "ckpt_00000003.npz"]


def test_files_get_the_umask_mode(tmp_path):
    umask = os.umask(0o027)
    try:
        path = checkpoint.save(tmp_path / "a.npz", {"w": jnp.zeros(2)})
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # 0o666 & ~0o027, not mkstemp's 0o600


def _payload_ranges(data: bytes):
    """``[(start, end)]`` of every member's stored bytes and of the archive comment: the
    bytes a checkpoint's content lives in (the rest is zip bookkeeping)."""
    ranges = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            names, extra = struct.unpack("<HH", data[info.header_offset + 26:
                                                     info.header_offset + 30])
            start = info.header_offset + 30 + names + extra
            ranges.append((start, start + info.compress_size))
        ranges.append((len(data) - len(archive.comment), len(data)))
    return ranges


def test_every_flipped_or_truncated_byte_is_refused(tmp_path):
    """Every byte of a small checkpoint flipped (two patterns) and every truncation:
    restore raises a CheckpointError naming the file, or -- where the byte is zip
    bookkeeping that the content does not depend on (a timestamp, the version that
    made it) -- returns exactly the saved arrays. Never another exception (zipfile's
    own RuntimeError "encrypted, password required", NotImplementedError, EOFError
    escaped before), never other numbers."""
    params = sj.lstm(4).init(jax.random.PRNGKey(0), 3)
    data = Path(checkpoint.save(tmp_path / "good.npz", params)).read_bytes()
    assert len(data) < 4096  # small enough to try every offset in-process
    payload = _payload_ranges(data)
    want = jax.tree_util.tree_leaves(params)
    bad = tmp_path / "bad.npz"
    accepted = []

    def outcome(what):
        try:
            got = checkpoint.restore(bad, like=params)
        except checkpoint.CheckpointError as e:
            assert str(bad) in str(e), (what, str(e))
            return False
        leaves = jax.tree_util.tree_leaves(got)
        assert all(a.dtype == b.dtype and np.array_equal(a, b)
                   for a, b in zip(leaves, want)), f"{what}: restored other numbers"
        return True

    # one descriptor, changed in place: rewriting the file from scratch thousands of
    # times is slow on filesystems that flush a file truncated to zero on close (ext4)
    fd = os.open(bad, os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, data)
        for offset in range(len(data)):
            for pattern in (0xFF, 0x01):
                os.pwrite(fd, bytes([data[offset] ^ pattern]), offset)
                if outcome(f"byte {offset} ^ {pattern:#04x}"):
                    accepted.append(offset)
            os.pwrite(fd, data[offset:offset + 1], offset)
        for size in reversed(range(len(data))):
            os.ftruncate(fd, size)
            assert not outcome(f"truncated to {size} bytes"), size
    finally:
        os.close(fd)
    inside = [o for o in accepted if any(a <= o < b for a, b in payload)]
    assert not inside, f"flips inside a member or the comment restored: {inside[:10]}"
