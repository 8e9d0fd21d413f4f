"""ONNX Runtime sessions: provider selection that never falls back silently.

`auto` asks for CUDA, then the CPU, when the installed onnxruntime has a CUDA provider that
can run here; `cuda` insists on it; `cpu` uses the CPU. What ONNX Runtime really runs on is
`session.get_providers()`, and that is what gets reported. Where onnxruntime-gpu cannot run its
CUDA provider (`builds.cuda_problem()`: no CUDA libraries of the version it was built for, no
cuDNN, no driver or GPU), `auto` asks only for the CPU, so ONNX Runtime logs no error of its own,
and `ProviderReport.note` says why in one line; `cuda` is an error saying the same. Should
ONNX Runtime still fall back to the CPU, the note says so too. Torch-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from instseg.errors import CheckpointError, ConfigError
from instseg.runtime.builds import build_name, cuda_problem, installed_builds, mixed_builds_advice, ort, pybind

PROVIDER_CHOICES = ("auto", "cpu", "cuda")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# What InferenceSession raises for files it cannot load (all plain Exception subclasses).
LOAD_ERRORS = (pybind.Fail, pybind.InvalidArgument, pybind.InvalidGraph, pybind.InvalidProtobuf, pybind.NoSuchFile,
               pybind.NotImplemented)


@dataclass(frozen=True)
class ProviderReport:
    asked: str  # auto / cpu / cuda
    requested: tuple[str, ...]  # the providers ONNX Runtime was asked for, in order
    active: tuple[str, ...]  # session.get_providers(): what it really uses
    cuda_problem: str | None = None  # why CUDA was not asked for although this build has it (auto)
    mixed_builds: tuple[str, ...] = ()  # more than one ONNX Runtime distribution installed

    @property
    def cuda_unavailable(self) -> bool:
        """CUDA was asked for but ONNX Runtime did not start it."""
        return CUDA in self.requested and CUDA not in self.active

    def describe(self) -> str:
        return f"{', '.join(self.active)} (--provider {self.asked}; asked for {', '.join(self.requested)})"

    def note(self) -> str | None:
        """One line when the session does not run where it was asked to, or may not (`auto`
        without CUDA), or the ONNX Runtime install is a mix of builds; None when all is as asked."""
        running = ", ".join(self.active)
        if self.cuda_unavailable:
            note = (f"ONNX Runtime could not start its CUDA provider ({cuda_requirements()}; its own message "
                    f"above gives the reason), so this runs on the CPU ({running})")
        elif self.cuda_problem:
            note = (f"{build_name()} is installed but CUDA is not usable here ({self.cuda_problem}; "
                    f"{cuda_requirements()}); running on {running}")
        elif self.asked == "auto" and CUDA not in self.requested:
            note = f"this onnxruntime has no CUDA provider (available: {', '.join(ort.get_available_providers())}); " \
                   f"running on {running}"
        else:
            note = None
        if self.mixed_builds:
            return "; ".join(filter(None, [note, mixed_builds_advice(self.mixed_builds)]))
        return note


def cuda_requirements() -> str:
    version = getattr(ort, "cuda_version", "") or "the CUDA version it was built for"
    return f"onnxruntime-gpu {ort.__version__} needs CUDA {version} and cuDNN 9 libraries"


def requested_providers(asked: str, available: Sequence[str], problem: str | None = None) -> list[str]:
    """The provider list to ask ONNX Runtime for. `problem`: why this build's CUDA provider cannot
    run here (`builds.cuda_problem()`), so `auto` does not ask for it; `cuda` without a CUDA
    provider, or with a problem, is an error."""
    if asked not in PROVIDER_CHOICES:
        raise ConfigError(f"--provider {asked}: choose from {', '.join(PROVIDER_CHOICES)}")
    if asked == "cpu":
        return [CPU]
    if CUDA in available and problem:
        if asked == "cuda":
            raise ConfigError(f"--provider cuda: {build_name()} is installed but CUDA is not usable here ({problem}; "
                              f"{cuda_requirements()}); use --provider cpu or auto")
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]  # the CPU runs whatever CUDA has no kernel for
    if asked == "cuda":
        raise ConfigError(f"--provider cuda: this onnxruntime build has no CUDA provider (available: "
                          f"{', '.join(available)}); install onnxruntime-gpu (alone: pip uninstall -y onnxruntime "
                          "first), or use --provider cpu")
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
    available = ort.get_available_providers()
    problem = cuda_problem() if provider != "cpu" and CUDA in available else None
    requested = requested_providers(provider, available, problem)
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
    builds = installed_builds()
    report = ProviderReport(provider, tuple(requested), tuple(session.get_providers()), problem,
                            builds if len(builds) > 1 else ())
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
