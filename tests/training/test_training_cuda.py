"""The CUDA path: AMP (bf16, else fp16 with a grad scaler), channels_last, pinned memory,
cudnn.benchmark, --compile, nccl with SyncBatchNorm. These run where a GPU is present and are
skipped on CPU-only machines (this one); the CPU-side refusal runs everywhere.
"""

from __future__ import annotations

import subprocess

import pytest
import torch
from torch import nn

from instseg.train.trainer import Trainer
from instseg.errors import ConfigError
from training_support import PYTHON, cli_args, recording_console, subprocess_env, tiny_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; this machine has none")
needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices for nccl")


def finite(trainer: Trainer) -> bool:
    return all(torch.isfinite(v).all() for v in trainer.model.state_dict().values() if v.is_floating_point())


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_amp_training_uses_the_cuda_fast_paths(tmp_path, monkeypatch, dtype):
    if dtype == torch.float16:  # the path of GPUs without bf16: fp16 autocast with a grad scaler
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    elif not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU does not support bf16")
    trainer = Trainer(tiny_config(tmp_path, device="cuda", epochs=2), recording_console())
    assert trainer.device.amp_dtype == dtype
    assert trainer.scaler.is_enabled() == (dtype == torch.float16)
    assert torch.backends.cudnn.benchmark and trainer.train_loader.pin_memory
    conv = next(m for m in trainer.model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    trainer.fit()
    assert finite(trainer) and trainer.step == 8
    saved = torch.load(trainer.run_dir / "last.pt", weights_only=True)
    assert bool(saved["training"]["scaler"]) == (dtype == torch.float16)


@needs_cuda
def test_compile_on_cuda_trains_and_saves_plain_weights(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, device="cuda", compile=True), recording_console())
    trainer.fit()
    saved = torch.load(trainer.run_dir / "last.pt", weights_only=True)
    assert finite(trainer) and not any("_orig_mod" in k for k in saved["state_dict"])


@needs_cuda
@needs_two_gpus
def test_two_gpus_with_nccl_and_sync_batch_norm(tmp_path):
    config = tiny_config(tmp_path, device="cuda", train_size=16)
    result = subprocess.run(
        [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "instseg",
         "train", *cli_args(config), "--sync-bn"],
        capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes (nccl, SyncBatchNorm)" in result.stderr


def test_compile_on_a_cpu_without_a_compiler_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    with pytest.raises(ConfigError, match=r"--compile on the CPU needs a C\+\+ compiler .*'no-such-c\+\+-compiler'"):
        Trainer(tiny_config(tmp_path, compile=True), recording_console())
