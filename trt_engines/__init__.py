"""Model export (tflite -> ONNX) and, later, ONNX -> TensorRT engine build and cache.

``python -m trt_engines.export_models`` rebuilds ``pipeline/models`` in a throwaway
environment; nothing in this package is imported by the CPU runtime.
"""
