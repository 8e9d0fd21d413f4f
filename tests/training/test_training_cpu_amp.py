"""bf16 autocast on the CPU: used by training where the CPU computes bf16 natively (detected from
its flags, never assumed), reported in the device line, fp32 elsewhere and for prediction."""

from __future__ import annotations

import pytest
import torch

from instseg import device as device_module
from instseg.device import native_cpu_bf16, resolve_device
from instseg.train.trainer import Trainer
from training_support import recording_console, tiny_config


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16"])
def test_cpu_with_native_bf16_trains_in_bf16_and_says_so(tmp_path, monkeypatch, flag):
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: flag)
    trainer = Trainer(tiny_config(tmp_path, amp=True), recording_console())
    assert trainer.device.amp_dtype == torch.bfloat16
    assert f"bf16 autocast: CPU has {flag}" in trainer.device.describe()
    trainer.fit()
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values() if v.is_floating_point())
    assert all(v.dtype != torch.bfloat16 for v in trainer.model.state_dict().values())  # weights stay fp32


def test_cpu_without_native_bf16_stays_fp32_and_says_why(monkeypatch):
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: None)
    choice = resolve_device("cpu", amp=True, cpu_amp=True)
    assert choice.amp_dtype is None and "no native bf16" in choice.describe()


def test_prediction_and_no_amp_stay_fp32(monkeypatch):
    monkeypatch.setattr(device_module, "native_cpu_bf16", lambda: "amx_bf16")
    assert resolve_device("cpu", amp=True).amp_dtype is None  # inference: cpu_amp is off
    assert resolve_device("cpu", amp=False, cpu_amp=True).amp_dtype is None


def test_detection_reads_the_cpu_flags(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    real_path = device_module.Path
    monkeypatch.setattr(device_module, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    assert native_cpu_bf16() == "avx512_bf16"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert native_cpu_bf16() is None
