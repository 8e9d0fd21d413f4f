"""Inference without PyTorch: ONNX Runtime sessions, instseg metadata, the pipeline's runner.

Nothing here imports torch (a test runs `instseg infer` where importing torch fails): an
exported model, numpy, Pillow, threadpoolctl and onnxruntime are all a deployment needs.

    runner = OnnxRunner.open("model.onnx", provider="auto")
    for result in instseg.predict.pipeline.predict(paths, runner): ...
"""

from instseg.runtime.metadata import INPUT_NAME, OUTPUT_NAMES, ModelInfo
from instseg.runtime.runner import OnnxRunner
from instseg.runtime.session import PROVIDER_CHOICES, ProviderReport, open_session

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "ModelInfo", "OnnxRunner", "PROVIDER_CHOICES", "ProviderReport",
           "open_session"]
