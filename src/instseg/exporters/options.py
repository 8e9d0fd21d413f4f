"""What an export may be asked for, checked before any work: the opset, a static size, the
int8 tolerance. Each bad value is one ConfigError naming the option and the range it must lie in.
"""

from __future__ import annotations

import torch

from instseg import limits
from instseg.errors import ConfigError

DEFAULT_OPSET = 18
MIN_OPSET = 18  # dynamo silently writes 18 when asked for less


def opset_range(exporter: str = "dynamo") -> tuple[int, int]:
    """The opsets instseg asks `exporter` of the installed torch for: MIN_OPSET up to the newest
    that torch.onnx declares it writes (asked for more, dynamo silently writes 18 after ~20 s)."""
    from torch.onnx import _constants  # where torch.onnx states them; no public name holds them

    newest = _constants.ONNX_MAX_OPSET if exporter == "dynamo" else _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    return MIN_OPSET, newest


def check_opset(opset: int, exporter: str = "dynamo") -> None:
    """A ConfigError for an opset `exporter` does not write, before anything is traced."""
    low, high = opset_range(exporter)
    if opset < low:
        raise ConfigError(f"--opset {opset}: instseg exports opset {MIN_OPSET} or newer (the dynamo exporter "
                          f"silently writes {MIN_OPSET} when asked for less)")
    if opset > high:
        raise ConfigError(f"--opset {opset}: the {exporter} exporter of torch {torch.__version__} writes opset "
                          f"{low} to {high}")


def check_static_size(size: tuple[int, int], multiple_of: int, name: str = "the model") -> None:
    """A ConfigError unless H and W are working sizes (`limits.IMAGE_SIZE`) that divide by the
    network's padding multiple (a static graph then holds no padding)."""
    shown = f"--static {size[0]}x{size[1]}"
    if not all(limits.is_int_in(side, limits.IMAGE_SIZE) for side in size):
        raise ConfigError(f"{shown}: H and W must be {limits.describe(limits.IMAGE_SIZE)} pixels")
    if any(side % multiple_of for side in size):
        near = "x".join(str(max(multiple_of, side // multiple_of * multiple_of)) for side in size)
        raise ConfigError(f"{shown}: H and W must be multiples of {multiple_of} for {name} (its padding "
                          f"multiple), e.g. {near}")


def check_sbd_tolerance(tolerance: float) -> None:
    """The validation SBD an int8 model may lose: a number from 0 to 1 (SBD lies in [0, 1])."""
    if not limits.is_number_in(tolerance, (0, 1)):
        raise ConfigError(f"--sbd-tolerance {tolerance:g}: must be a number from 0 to 1 (the validation SBD "
                          "an int8 model may lose against fp32)")
