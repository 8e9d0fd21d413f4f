"""Atomic file writes: temporary sibling, optional fsync, rename - a crash never leaves half a file.

Every write failure (a read-only folder, a full disk, no permission) becomes one `OutputError`
naming the target, and the temporary file is removed, so nothing half-written is left behind.
Torch-free, so the ONNX inference path writes its outputs the same way training does.
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
from pathlib import Path

from instseg.errors import OutputError

_REASONS = {
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENAMETOOLONG: "file name too long",
    errno.ENOTDIR: "a parent is not a folder",
    errno.EISDIR: "it is a folder",
}


def cannot_write(path: str | os.PathLike, exc: OSError) -> OutputError:
    """`cannot write PATH: <reason>` for an OSError raised while writing `path`."""
    reason = _REASONS.get(exc.errno or 0) or (exc.strerror or str(exc)).lower()
    return OutputError(f"cannot write {path}: {reason}")


def _umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `path` via a temporary file in the same directory and rename it into place.

    `durable` fsyncs the file and its folder before returning (checkpoints, metadata, exports);
    bulk outputs pass False and call `sync_folder` once per batch, since an fsync per file costs
    milliseconds each (150 s per 10,000 predictions). The rename is atomic either way.
    The file gets the mode a plain `open(path, "w")` would (0666 less the umask), not mkstemp's
    private 0600, so others can read results on a shared machine.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        if os.name == "posix":
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        if durable:
            sync_folder(path.parent)
    except OSError as exc:
        raise cannot_write(path, exc) from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str, *, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def sync_folder(directory: str | os.PathLike) -> None:
    """fsync a folder, so renames into it survive a power cut (a no-op off POSIX)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
