"""Exporters of trained models (ONNX, in `instseg.exporters.onnx`). They import torch; the
runtime that runs their output (`instseg.runtime`) does not."""
