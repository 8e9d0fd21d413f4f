"""The numpy-only half of instseg: image files, clustering, metrics, pictures, the prediction pipeline.

Nothing here imports torch (a test imports every module with torch blocked), so the ONNX
Runtime path (`instseg.runtime`, `instseg infer`) and folder scoring run where torch is not
installed; `instseg.core` builds the PyTorch side on top of these modules.
"""
