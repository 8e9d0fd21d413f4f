"""Device selection: CUDA when present (with AMP), CPU otherwise - and always say which."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from instseg.errors import ConfigError


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full fp32
    reason: str

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def describe(self) -> str:
        amp = f", AMP {str(self.amp_dtype).removeprefix('torch.')}" if self.amp_dtype else ", fp32"
        return f"{self.device}{amp} ({self.reason})"


def resolve_device(spec: str = "auto", amp: bool = True) -> DeviceChoice:
    """`auto`, `cpu`, `cuda` or `cuda:N`. Asking for CUDA where there is none is an error."""
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return _cuda(torch.device("cuda", torch.cuda.current_device()), amp, "auto: CUDA available")
        return DeviceChoice(torch.device("cpu"), None, f"auto: CUDA not available; {torch.get_num_threads()} CPU threads")
    if spec == "cpu":
        return DeviceChoice(torch.device("cpu"), None, f"{torch.get_num_threads()} CPU threads")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: CUDA is not available on this machine (use --device cpu or auto)")
        try:
            device = torch.device(spec)
        except RuntimeError as exc:
            raise ConfigError(f"--device {spec}: {exc}") from exc
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return _cuda(torch.device("cuda", index), amp, "requested")
    raise ConfigError(f"--device {spec}: use auto, cpu, cuda or cuda:N")


def _cuda(device: torch.device, amp: bool, reason: str) -> DeviceChoice:
    name = torch.cuda.get_device_name(device)
    if not amp:
        return DeviceChoice(device, None, f"{reason}; {name}")
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return DeviceChoice(device, dtype, f"{reason}; {name}")
