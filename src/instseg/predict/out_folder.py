"""The output folder of a prediction run (`outputs.predict_folder`): one run writes into it at a
time, and every file the run would write is checked before the first image is read.

- The lock: `fcntl.flock` on `<out>/.instseg.lock`, held for the whole run and removed at its
  end, so a second `predict` / `infer` into the same folder is refused at once, by name, rather
  than both writing the same files. The copies of a sharded run (`--shard K/N`) share that lock
  and each holds its part's own (`.instseg-shard-K-of-N.lock`): N parts write side by side,
  two copies of one part do not. POSIX only; where the file system has no locks (some cluster
  file systems), runs are not serialised.
- The plan: `<name>_label.png` (or `.tif`), `<name>_<kind>.png` for every kind of picture
  asked for, `<name>_rois.zip` and `<name>.geojson` when asked, for every input. A file
  that already exists is replaced only with `overwrite`, or with `skip_existing` when it is an
  instseg output of the same kind (an interrupted run's); an input counts as done only when all
  its outputs exist and are complete (`is_complete`). A file that is one of the run's inputs (an image to
  predict, a ground-truth file) is never replaced, not even with `overwrite`.
"""

from __future__ import annotations

import errno
import os
import zipfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from instseg.errors import OutputError
from instseg.io.atomic import cannot_write
from instseg.io.annotations import annotation_output_kind
from instseg.io.images import display_path, tiff_named
from instseg.io.writing import png_is_complete, prediction_output_kind, tiff_is_complete

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_NAME = ".instseg.lock"
NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)  # a file system without flock


@contextmanager
def locked(folder: Path, shard: tuple[int, int] | None = None) -> Iterator[None]:
    """Hold `folder`'s lock inside the block (shared by the parts of a sharded run, with the
    part's own held alone); an OutputError naming the other run when it is taken."""
    if fcntl is None:
        yield
        return
    with ExitStack() as held:
        for path, mode, what in _locks(folder, shard):
            fd = _acquire(path, mode, folder, what)
            if fd is not None:
                held.callback(_release, fd, path)
        yield


def _locks(folder: Path, shard: tuple[int, int] | None) -> list[tuple[Path, int, str]]:
    """The lock files a run takes, how, and what a second run is told it is writing."""
    if shard is None:
        return [(folder / LOCK_NAME, fcntl.LOCK_EX, "")]
    k, n = shard
    return [(folder / LOCK_NAME, fcntl.LOCK_SH, ""),
            (folder / f".instseg-shard-{k}-of-{n}.lock", fcntl.LOCK_EX, f" shard {k}/{n}")]


def _acquire(path: Path, mode: int, folder: Path, what: str) -> int | None:
    """The locked lock file's descriptor (it holds this process's id, for a second run's
    message); None where the file system has no locks."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise cannot_write(path, exc) from exc
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"another instseg run (process {holder})" if holder.isdigit() else "another instseg run"
            raise OutputError(f"--out {display_path(folder)}: {who} is writing{what} into this folder; wait for it "
                              f"to finish, or choose another --out (its lock: {path.name})") from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in NO_LOCKS:
                return None
            raise cannot_write(path, exc) from exc
        if _is_current(fd, path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
            return fd
        os.close(fd)  # a run that just ended removed this file: lock the new one


def _release(fd: int, path: Path) -> None:
    """Unlock; the last holder removes the file (while it still holds it alone, so a run that
    opened it meanwhile finds it removed and locks a new one)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # other parts of a sharded run still hold it: the last one removes it
        os.close(fd)
        return
    if _is_current(fd, path):
        path.unlink(missing_ok=True)
    os.close(fd)


def _is_current(fd: int, path: Path) -> bool:
    """Whether `fd` is still the file at `path` (not one removed since it was opened)."""
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


@dataclass
class Plan:
    """What a run will do in its folder, decided before it computes anything."""

    todo: list[tuple[Path, str]] = field(default_factory=list)  # inputs to predict, with their output names
    done: list[Path] = field(default_factory=list)  # skip_existing: inputs whose outputs are all there
    replace: set[Path] = field(default_factory=set)  # existing outputs this run replaces


def output_files(out_dir: Path, name: str, endings: Mapping[str, str]) -> list[Path]:
    """An input's output files, one per kind (`label` first): its name, then the kind's ending."""
    return [out_dir / f"{name}{ending}" for ending in endings.values()]


def is_complete(path: Path) -> bool:
    """Whether an output file is whole (one renamed into place before a power cut may be empty
    or cut short): a PNG ends with IEND, a TIFF's pixels lie inside it, a zip ends with its
    directory, a GeoJSON file ends as `annotations.qupath_geojson` ends it."""
    suffix = path.suffix.lower()
    if suffix == ".png":
        return png_is_complete(path)
    if tiff_named(path):
        return tiff_is_complete(path)
    if suffix == ".zip":
        return zipfile.is_zipfile(path)
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - 2, 0))
            return handle.read() == b"}\n"
    except OSError:
        return False


def output_kind(path: Path) -> str | None:
    """What instseg output a file is (`label`, `overlay`, `rois`, ...), None for any other file."""
    return annotation_output_kind(path) if path.suffix.lower() in (".zip", ".geojson") else prediction_output_kind(path)


def plan_outputs(inputs: Sequence[tuple[Path, str]], out_dir: Path, endings: Mapping[str, str], *, overwrite: bool,
                 skip_existing: bool, protected: Sequence[Path] = ()) -> Plan:
    """The plan for `inputs` (path, output name) writing a file per kind of `endings` (kind ->
    what follows the name) into `out_dir`, or an OutputError naming the first file it must not
    replace. `protected`: files read by the run besides the inputs (ground truth), which are
    never replaced either."""
    plan, clashes, sources = Plan(), [], {}
    for path, name in inputs:
        files = output_files(out_dir, name, endings)
        present = [(file, kind) for file, kind in zip(files, endings) if file.exists() or file.is_symlink()]
        if skip_existing and len(present) == len(files) and all(is_complete(file) for file in files):
            plan.done.append(path)
            continue
        plan.todo.append((path, name))
        for file, kind in present:
            sources[file] = f"the prediction of {display_path(path)}"
            replaceable = overwrite or (skip_existing and output_kind(file) == kind)
            (plan.replace.add if replaceable else clashes.append)(file)
    refuse_inputs(sources, [path for path, _ in plan.todo] + list(protected))
    if clashes:
        raise OutputError(_clash_message(clashes, sources, out_dir, skip_existing))
    return plan


def _clash_message(clashes: list[Path], sources: Mapping[Path, str], out_dir: Path, skip_existing: bool) -> str:
    first = clashes[0]
    more = f"; {len(clashes) - 1} more file(s) like it in {display_path(out_dir)}" if len(clashes) > 1 else ""
    why = " and is not an instseg output (yours, or cut short by a crash)" if skip_existing else ""
    return (f"{display_path(first)}: exists{why} and this run did not write it, so it is not replaced "
            f"({sources[first]} would go there{more}); nothing was predicted: pass --overwrite, or choose "
            "another --out")


def refuse_inputs(outputs: Mapping[Path, str], inputs: Sequence[Path], advice: str = "choose another --out") -> None:
    """An OutputError when one of `outputs` (path -> what would be written there) is one of
    `inputs`, compared as files (a link or another spelling of the same file counts)."""
    written = {_identity(path): path for path in outputs}
    written.pop(None, None)
    if not written:
        return
    for source in inputs:
        target = written.get(_identity(source))
        if target is not None:
            raise OutputError(f"{display_path(target)}: is one of this run's inputs and {outputs[target]} would "
                              f"replace it; inputs are never replaced, not even with --overwrite: {advice}")


def _identity(path: Path) -> tuple[int, int] | None:
    """The file `path` names (device, inode), None when there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino
