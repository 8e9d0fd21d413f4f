"""Channels-last training on the CPU is refused for models oneDNN's NHWC weight gradient gets
wrong (a 1x1 strided conv on fewer than 16 channels: hangs, crashes or wrong gradients,
oneDNN#6035), and said so; every other model keeps the faster layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from instseg.device import channels_last_hazard
from instseg.train.trainer import Trainer
from training_support import console_text, recording_console, tiny_config


@pytest.mark.parametrize(("conv", "hazard"), [
    (nn.Conv2d(8, 16, 1, stride=2), "1 is a 1x1 stride-2 conv on 8 channels"),
    (nn.Conv2d(15, 16, 1, stride=(1, 2)), "1 is a 1x1 stride-1x2 conv on 15 channels"),
    (nn.Conv2d(64, 64, 1, stride=2, groups=8), "1 is a 1x1 stride-2 conv on 8 channels"),  # per group
    (nn.Conv2d(16, 16, 1, stride=2), None),  # a whole channel block
    (nn.Conv2d(8, 16, 1, stride=1), None),  # no strided gather
    (nn.Conv2d(8, 16, 3, stride=2), None),  # another kernel
])
def test_the_hazard_is_a_strided_1x1_conv_on_few_channels(conv, hazard):
    model = nn.Sequential(nn.Conv2d(3, conv.in_channels, 3, padding=1), conv)
    assert channels_last_hazard(model) == hazard


def test_a_model_with_the_hazard_trains_in_nchw_and_says_why(tmp_path):
    console = recording_console()
    trainer = Trainer(tiny_config(tmp_path, model="deeplabv3", width=4, train_size=4, val_size=2), console)
    assert trainer.memory_format == torch.contiguous_format
    assert all(p.is_contiguous() for p in trainer.model.parameters())
    trainer.fit()
    text = " ".join(console_text(console).split())
    assert "channels-last off: backbone." in text and "oneDNN#6035" in text


def test_other_models_keep_channels_last(tmp_path):
    trainer = Trainer(tiny_config(tmp_path), recording_console())
    assert trainer.memory_format == torch.channels_last
    conv = next(m for m in trainer.model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
