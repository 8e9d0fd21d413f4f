"""The engine: interfaces, registry, losses, data, training, clustering, metrics.

Importing this package imports nothing heavy; `clustering` and `metrics` are numpy-only so
the torch-free ONNX path can use them.
"""
