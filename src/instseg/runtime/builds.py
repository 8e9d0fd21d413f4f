"""Which ONNX Runtime build is installed, and whether its CUDA provider can run here. Torch-free.

instseg depends on neither build itself: `instseg[cpu]` brings `onnxruntime`, `instseg[gpu]`
brings `onnxruntime-gpu` (CUDA, and the CPU as well). Both install the one `onnxruntime` module,
so only one may be installed, and pip cannot swap one for the other through an extra. `ort` is
that module for every torch-free entry point: where no build is installed, importing it is a
MissingDependencyError that says what to install, in one line.

`cuda_problem()` says, before any session is made, why onnxruntime-gpu's CUDA provider cannot run
here (a CUDA library its provider library links that the loader cannot find, no cuDNN, no driver
or no GPU). It loads what ONNX Runtime would load, except the provider library itself: that one's
static initialisers need ONNX Runtime's provider host in place, which only ONNX Runtime sets up.
Asked for CUDA in such a place, ONNX Runtime logs a red error of its own and then runs on the CPU;
instseg asks only for the CPU there and says why in one line.
"""

from __future__ import annotations

import ctypes
import functools
import struct
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

from instseg.errors import MissingDependencyError

# The distributions that install the `onnxruntime` module (each overwrites the others' files).
DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino")
INSTALL = "pip install 'instseg[cpu]', or 'instseg[gpu]' for onnxruntime-gpu (CUDA, and the CPU too)"
CUDNN = "libcudnn.so.9"  # the CUDA provider opens it when it starts; it is not among the libraries it links
CUDA_PROVIDER_LIBRARY = "libonnxruntime_providers_cuda.so"


def installed_builds() -> tuple[str, ...]:
    """The ONNX Runtime distributions installed here; more than one is a broken mix."""
    found = []
    for name in DISTRIBUTIONS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return tuple(found)


def mixed_builds_advice(builds: Sequence[str]) -> str:
    return (f"{' and '.join(builds)} are installed together, and each overwrites the others' `onnxruntime` "
            f"files: pip uninstall -y {' '.join(builds)}, then install one of them")


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        builds = installed_builds()
        if len(builds) > 1:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MissingDependencyError(f"onnxruntime does not import ({reason}); {mixed_builds_advice(builds)}") \
                from None
        if isinstance(exc, ModuleNotFoundError) and exc.name == "onnxruntime":
            raise MissingDependencyError(f"ONNX Runtime is not installed (instseg infer and export run on it): "
                                         f"{INSTALL}") from None
        raise
    return onnxruntime


ort = _import_onnxruntime()
pybind = ort.capi.onnxruntime_pybind11_state  # ONNX Runtime's exception types (Fail, InvalidArgument, ...)


def build_name() -> str:
    return getattr(ort, "package_name", "") or "onnxruntime"


@functools.cache
def cuda_problem() -> str | None:
    """Why the CUDA provider of this onnxruntime cannot run here, in a few words (what the loader
    or the CUDA driver said); None when nothing was found wrong, or where nothing is checked (not
    Linux, no provider library where onnxruntime-gpu keeps it): ONNX Runtime then has the last word."""
    if not sys.platform.startswith("linux"):
        return None  # Windows looks for DLLs in ways of its own: not guessed at here
    provider = Path(ort.__file__).parent / "capi" / CUDA_PROVIDER_LIBRARY
    try:
        needed, search = linked_libraries(provider)
    except (OSError, ValueError, struct.error):
        return None
    return missing_library(needed, search)


def missing_library(needed: Sequence[str], search: Sequence[str],
                    load: Callable[[str], Any] = ctypes.CDLL) -> str | None:
    """Load each library the CUDA provider links (then cuDNN) as the loader would resolve them for it;
    the first that fails is the problem. When the driver (libcuda) loads, it must also see a GPU."""
    for name in [*needed, CUDNN]:
        try:
            library = _load(name, search, load)
        except OSError as exc:
            return str(exc).strip().removesuffix(": No such file or directory") or f"{name} does not load"
        if name.startswith("libcuda.so"):
            problem = driver_problem(library)
            if problem:
                return problem
    return None


def _load(name: str, search: Sequence[str], load: Callable[[str], Any]) -> Any:
    for folder in search:  # the provider library's own RPATH / RUNPATH, where it has one
        candidate = Path(folder) / name
        if candidate.is_file():
            return load(str(candidate))
    return load(name)  # LD_LIBRARY_PATH, the loader's cache, the system folders


def driver_problem(libcuda: Any) -> str | None:
    """None when the CUDA driver starts and sees a GPU."""
    try:
        init, count_devices = libcuda.cuInit, libcuda.cuDeviceGetCount
    except AttributeError:
        return None
    status = init(0)
    if status:
        return f"the CUDA driver did not start (cuInit: {_cuda_error(libcuda, status)})"
    count = ctypes.c_int(0)
    status = count_devices(ctypes.byref(count))
    if status or count.value < 1:
        return "the CUDA driver sees no GPU" + (f" (cuDeviceGetCount: {_cuda_error(libcuda, status)})" if status else "")
    return None


def _cuda_error(libcuda: Any, status: int) -> str:
    name = ctypes.c_char_p()
    try:
        if libcuda.cuGetErrorName(status, ctypes.byref(name)) == 0 and name.value:
            return name.value.decode()
    except (AttributeError, TypeError, ctypes.ArgumentError):
        pass
    return f"error {status}"


PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 15, 29


def linked_libraries(path: Path) -> tuple[list[str], list[str]]:
    """The DT_NEEDED names and the RPATH / RUNPATH folders ($ORIGIN filled in) of a 64-bit
    little-endian ELF shared library, read from its dynamic section without loading it."""
    with open(path, "rb") as file:
        header = file.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
        (program_offset,) = struct.unpack_from("<Q", header, 0x20)
        entry_size, entries = struct.unpack_from("<HH", header, 0x36)
        file.seek(program_offset)
        table = file.read(entry_size * entries)
        loads, dynamic = [], None
        for i in range(entries):
            kind, _, offset, vaddr, _, size, _, _ = struct.unpack_from("<IIQQQQQQ", table, i * entry_size)
            if kind == PT_LOAD:
                loads.append((vaddr, offset, size))
            elif kind == PT_DYNAMIC:
                dynamic = (offset, size)
        if dynamic is None:
            return [], []
        file.seek(dynamic[0])
        raw = file.read(dynamic[1])
        needed, paths, strtab, strsz = [], [], None, 0
        for at in range(0, len(raw) - 15, 16):
            tag, value = struct.unpack_from("<qQ", raw, at)
            if tag == DT_NULL:
                break
            if tag == DT_NEEDED:
                needed.append(value)
            elif tag in (DT_RPATH, DT_RUNPATH):
                paths.append(value)
            elif tag == DT_STRTAB:
                strtab = value
            elif tag == DT_STRSZ:
                strsz = value
        segment = next(((v, o) for v, o, s in loads if strtab is not None and v <= strtab < v + s), None)
        if segment is None:
            raise ValueError(f"{path}: no string table in a loaded segment")
        file.seek(strtab - segment[0] + segment[1])
        strings = file.read(strsz)

    def text(at: int) -> str:
        return strings[at:strings.index(b"\0", at)].decode()

    origin = str(path.parent)
    folders = [folder.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
               for at in paths for folder in text(at).split(":") if folder]
    return [text(at) for at in needed], folders
