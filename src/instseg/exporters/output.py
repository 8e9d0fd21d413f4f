"""Where an export is written: checked before the work, and never left half-written.

An export takes seconds to minutes, so its target is checked first: the folder it goes to must
take a new file (a read-only or forbidden folder fails at once, not after the work). The file
is then written hidden beside its target, synced, checked, and renamed into place (one folder,
so the rename is atomic): a failure at any point leaves the target as it was and removes the
hidden file. Every OSError is one `OutputError` naming the target (`io.atomic.cannot_write`).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import onnx

from instseg.io.atomic import cannot_write, sync_folder


def export_source(path: Path) -> str | None:
    """What an ONNX file instseg exported was exported from (its `instseg.source`); None for
    any other file."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # onnx raises DecodeError, OSError, ValueError...: any of them means "not ours"
        return None
    props = {prop.key: prop.value for prop in proto.metadata_props}
    return props.get("instseg.source", "an unnamed checkpoint") if "instseg.model" in props else None


def check_writable(target: Path) -> None:
    """A file can be made in `target`'s folder, or in the nearest folder above it that exists
    (the write makes the rest): an unnamed temporary file is made there and dropped."""
    folder = next(parent for parent in target.absolute().parents if parent.exists())
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise cannot_write(target, exc) from exc


@contextmanager
def staged(target: Path, data: bytes) -> Iterator[Path]:
    """`data` in a hidden file beside `target`, synced, for the block to check and `publish`;
    removed when the block leaves it there (a failed check, an error)."""
    hidden = target.with_name(f".{target.name}.unverified")
    try:
        _write(hidden, data, target)
        yield hidden
    finally:
        hidden.unlink(missing_ok=True)


def _write(hidden: Path, data: bytes, target: Path) -> None:
    try:
        hidden.parent.mkdir(parents=True, exist_ok=True)
        with open(hidden, "wb") as handle:  # the mode a plain new file gets (0666 less the umask)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise cannot_write(target, exc) from exc


def publish(hidden: Path, target: Path) -> None:
    """Rename a checked file onto `target` and sync the folder, so the rename survives a power cut."""
    try:
        os.replace(hidden, target)
        sync_folder(target.parent)
    except OSError as exc:
        raise cannot_write(target, exc) from exc
