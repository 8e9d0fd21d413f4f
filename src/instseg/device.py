"""Device selection: CUDA when present (with AMP), CPU otherwise - and always say which."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

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


def resolve_device(spec: str = "auto", amp: bool = True, local_rank: int | None = None,
                   cpu_amp: bool = False) -> DeviceChoice:
    """`auto`, `cpu`, `cuda` or `cuda:N`. Asking for CUDA where there is none is an error.

    `amp` on CUDA: bf16 where supported, else fp16. On the CPU only with `cpu_amp` (training):
    bf16 autocast where the CPU computes bf16 natively (AMX or AVX-512 BF16), fp32 elsewhere,
    since emulated bf16 is slower than fp32.

    `local_rank` is set when torchrun started one process per device: CUDA then means
    `cuda:LOCAL_RANK`, and naming a device index is refused (every process would use it).
    """
    spec = spec.strip().lower()
    if local_rank is not None and spec.startswith("cuda:"):
        raise ConfigError(f"--device {spec}: under torchrun each process uses cuda:LOCAL_RANK; "
                          "pass --device cuda or auto")
    if spec == "auto":
        if torch.cuda.is_available():
            return _cuda(_default_cuda(local_rank), amp, "auto: CUDA available")
        return _cpu(amp and cpu_amp, "auto: CUDA not available; ")
    if spec == "cpu":
        return _cpu(amp and cpu_amp, "")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: CUDA is not available on this machine (use --device cpu or auto)")
        try:
            device = torch.device(spec)
        except RuntimeError as exc:
            raise ConfigError(f"--device {spec}: {exc}") from exc
        index = device.index if device.index is not None else _default_cuda(local_rank).index
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return _cuda(torch.device("cuda", index), amp, "requested")
    raise ConfigError(f"--device {spec}: use auto, cpu, cuda or cuda:N")


def _default_cuda(local_rank: int | None) -> torch.device:
    if local_rank is None:
        return torch.device("cuda", torch.cuda.current_device())
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s): "
                          "start at most that many processes per node (torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank)


CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def native_cpu_bf16() -> str | None:
    """The CPU flag that makes bf16 fast here (Linux /proc/cpuinfo), or None: detected, never assumed."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return next((flag for flag in CPU_BF16_FLAGS if flag in flags), None)


def _cpu(amp: bool, prefix: str) -> DeviceChoice:
    threads = f"{prefix}{torch.get_num_threads()} CPU threads"
    if not amp:
        return DeviceChoice(torch.device("cpu"), None, threads)
    flag = native_cpu_bf16()
    if flag is None:
        return DeviceChoice(torch.device("cpu"), None, f"{threads}; no native bf16 (no {'/'.join(CPU_BF16_FLAGS)})")
    return DeviceChoice(torch.device("cpu"), torch.bfloat16, f"{threads}; bf16 autocast: CPU has {flag}")


def _cuda(device: torch.device, amp: bool, reason: str) -> DeviceChoice:
    name = torch.cuda.get_device_name(device)
    if not amp:
        return DeviceChoice(device, None, f"{reason}; {name}")
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return DeviceChoice(device, dtype, f"{reason}; {name}")


def check_training_device(choice: DeviceChoice, *, sync_bn: bool, compile: bool) -> None:
    """Options training can only honour on some devices, refused before anything is built."""
    if sync_bn and not choice.is_cuda:
        raise ConfigError("--sync-bn needs CUDA: torch's SyncBatchNorm does not run on the CPU "
                          "(without it each process normalises its own batch)")
    if compile:
        check_compile_supported(choice.device)


def check_compile_supported(device: torch.device) -> None:
    """`torch.compile` generates C++ kernels on the CPU: refuse up front when no compiler exists."""
    if device.type != "cpu":
        return
    default = "clang++" if sys.platform == "darwin" else "cl" if sys.platform == "win32" else "g++"
    compiler = os.environ.get("CXX") or default
    if shutil.which(compiler) is None:
        raise ConfigError(f"--compile on the CPU needs a C++ compiler (torch.compile builds C++ kernels) "
                          f"and '{compiler}' was not found: install one, set CXX, or drop --compile")


# oneDNN's NHWC 1x1 strided weight gradient reads and writes past its workspace when a conv has
# fewer input channels than the kernel's channel block (8 with AVX2, 16 with AVX-512): it hangs,
# crashes or returns wrong gradients (uxlfoundation/oneDNN#6035, seen with torch 2.13 on AVX2).
ONEDNN_NHWC_MIN_CHANNELS = 16


def channels_last_hazard(model: torch.nn.Module) -> str | None:
    """The first conv that makes channels-last training unsafe on the CPU, described, or None."""
    for name, module in model.named_modules():
        if not (isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1) and module.stride != (1, 1)):
            continue
        channels = module.in_channels // module.groups
        if channels < ONEDNN_NHWC_MIN_CHANNELS:
            sh, sw = module.stride
            stride = str(sh) if sh == sw else f"{sh}x{sw}"
            return f"{name} is a 1x1 stride-{stride} conv on {channels} channels"
    return None
