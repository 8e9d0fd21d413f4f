"""ONNX Runtime sessions: provider selection that never falls back silently.

`auto` asks for CUDA, then the CPU, when the installed onnxruntime has a CUDA provider;
`cuda` insists on it; `cpu` uses the CPU. What ONNX Runtime really runs on is
`session.get_providers()`, and that is what gets reported. onnxruntime-gpu without the CUDA
libraries it was built for logs its own error and runs on the CPU: `ProviderReport.note`
says so in one plain sentence (`auto`), and `cuda` turns it into an error. Torch-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

from instseg.errors import CheckpointError, ConfigError

PROVIDER_CHOICES = ("auto", "cpu", "cuda")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# What InferenceSession raises for files it cannot load (all plain Exception subclasses).
LOAD_ERRORS = (Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile, OrtNotImplemented)


@dataclass(frozen=True)
class ProviderReport:
    asked: str  # auto / cpu / cuda
    requested: tuple[str, ...]  # the providers ONNX Runtime was asked for, in order
    active: tuple[str, ...]  # session.get_providers(): what it really uses

    @property
    def cuda_unavailable(self) -> bool:
        """CUDA was asked for but ONNX Runtime did not start it."""
        return CUDA in self.requested and CUDA not in self.active

    def describe(self) -> str:
        return f"{', '.join(self.active)} (--provider {self.asked}; asked for {', '.join(self.requested)})"

    def note(self) -> str | None:
        """A plain sentence when the session does not run where it was asked to."""
        if self.cuda_unavailable:
            return (f"ONNX Runtime could not start its CUDA provider ({cuda_requirements()}; its own message "
                    f"above gives the reason), so this runs on the CPU")
        if self.asked == "auto" and CUDA not in self.requested:
            return f"this onnxruntime has no CUDA provider (available: {', '.join(ort.get_available_providers())}); " \
                   "running on the CPU"
        return None


def cuda_requirements() -> str:
    version = getattr(ort, "cuda_version", "") or "the CUDA version it was built for"
    return f"onnxruntime-gpu {ort.__version__} needs CUDA {version} and cuDNN 9 libraries"


def requested_providers(asked: str, available: Sequence[str]) -> list[str]:
    """The provider list to ask ONNX Runtime for; `cuda` without a CUDA provider is an error."""
    if asked not in PROVIDER_CHOICES:
        raise ConfigError(f"--provider {asked}: choose from {', '.join(PROVIDER_CHOICES)}")
    if asked == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]  # the CPU runs whatever CUDA has no kernel for
    if asked == "cuda":
        raise ConfigError(f"--provider cuda: this onnxruntime build has no CUDA provider (available: "
                          f"{', '.join(available)}); install onnxruntime-gpu, or use --provider cpu")
    return [CPU]


def open_session(path: str | os.PathLike, provider: str = "auto",
                 threads: int = 0) -> tuple[ort.InferenceSession, ProviderReport]:
    """Load an ONNX file (all graph optimisations on) on the providers asked for.

    A missing, non-ONNX or truncated file is a CheckpointError naming it; `--provider cuda`
    where ONNX Runtime cannot start CUDA is a ConfigError. `threads` 0 lets ONNX Runtime choose.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {'is a folder, not an ONNX file' if path.is_dir() else 'no such file'}")
    requested = requested_providers(provider, ort.get_available_providers())
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = max(0, threads)
    # Idle ORT threads otherwise spin for a while after each run, taking the cores from the
    # clustering that follows it: `infer` at batch 1 ran 18% faster on 2 cores without spinning.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: no warnings about node placement
    try:
        session = ort.InferenceSession(str(path), options, providers=requested)
    except LOAD_ERRORS as exc:
        raise CheckpointError(f"{path}: not a loadable ONNX model ({_load_reason(exc)})") from None
    report = ProviderReport(provider, tuple(requested), tuple(session.get_providers()))
    if provider == "cuda" and report.cuda_unavailable:
        raise ConfigError(f"--provider cuda: ONNX Runtime could not start its CUDA provider "
                          f"({cuda_requirements()}; its own message above gives the reason); "
                          "use --provider cpu or auto")
    return session, report


def _load_reason(exc: Exception) -> str:
    """The readable end of an ONNX Runtime load error: after 'failed:', and after the source
    location and C++ signature it may put before the reason."""
    reason = str(exc).rsplit("failed:", 1)[-1].strip()
    if reason.startswith("/"):  # "/onnxruntime_src/...cc:181 onnxruntime::Model::Model(...) <reason>"
        reason = reason.rsplit(") ", 1)[-1]
    return reason
