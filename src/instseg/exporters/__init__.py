"""Exporters of trained models (ONNX, in `instseg.exporters.onnx`). They import torch; the
runtime that runs their output (`instseg.runtime`) does not."""

DEFAULT_SBD_TOLERANCE = 0.01  # --int8: the validation SBD an int8 model may lose against fp32
