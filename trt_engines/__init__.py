"""Model export (tflite -> ONNX) and the ONNX -> TensorRT engine build and check.

``python -m trt_engines.export_models`` rebuilds ``pipeline/models`` in a throwaway
environment; ``python -m trt_engines.build_engines`` builds the TensorRT engine cache on a
GPU machine and checks the engines against the CPU. Nothing in this package is imported by
the runtime.
"""
