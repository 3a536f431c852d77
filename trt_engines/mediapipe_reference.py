"""Run the original MediaPipe 0.10.21 models the way MediaPipe runs them.

Only importable inside the throwaway export environment (it needs ``mediapipe`` and
``tensorflow``); the project's runtime never imports it. Two runners:

- :func:`run_tflite`: TensorFlow Lite's own interpreter (``tf.lite.Interpreter``). Good
  for models made of builtin ops only (``face_landmark.tflite``).
- :func:`run_mediapipe_graph`: a small MediaPipe calculator graph built from MediaPipe's
  own calculators: ``ImageToTensorCalculator`` (uint8 RGB image -> float tensor in [0, 1],
  exactly as the selfie-segmentation and face-landmark graphs configure it), then
  ``InferenceCalculator`` with the ``TfLiteCustomOpResolverCalculator`` op resolver, which
  carries MediaPipe's custom ``Convolution2DTransposeBias`` kernel, then
  ``TensorsToFloatsCalculator`` per output tensor. This is the only way to run
  ``selfie_segmentation*.tflite`` as MediaPipe does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def run_tflite(model_path: Path | str, x: np.ndarray, num_threads: int = 1) -> list[np.ndarray]:
    """Invoke a .tflite model on one float32 NHWC input; outputs in the model's order."""
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_path=str(model_path), num_threads=num_threads)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    interp.set_tensor(inp["index"], np.ascontiguousarray(x, dtype=np.float32))
    interp.invoke()
    return [np.array(interp.get_tensor(o["index"])) for o in interp.get_output_details()]


def _graph_config(model_path: str, width: int, height: int, num_outputs: int) -> str:
    outs = "\n".join(f'output_stream: "floats_{i}"' for i in range(num_outputs))
    if num_outputs == 1:
        split = ""
        floats = (
            'node { calculator: "TensorsToFloatsCalculator" '
            'input_stream: "TENSORS:output_tensors" output_stream: "FLOATS:floats_0" }'
        )
    else:
        ranges = " ".join(f"ranges: {{ begin: {i} end: {i + 1} }}" for i in range(num_outputs))
        split_outs = " ".join(f'output_stream: "tensor_{i}"' for i in range(num_outputs))
        split = (
            'node { calculator: "SplitTensorVectorCalculator" input_stream: "output_tensors" '
            f"{split_outs} options {{ [mediapipe.SplitVectorCalculatorOptions.ext] {{ {ranges} }} }} }}"
        )
        floats = "\n".join(
            'node { calculator: "TensorsToFloatsCalculator" '
            f'input_stream: "TENSORS:tensor_{i}" output_stream: "FLOATS:floats_{i}" }}'
            for i in range(num_outputs)
        )
    return f"""
input_stream: "image"
{outs}
node {{
  calculator: "ImageToTensorCalculator"
  input_stream: "IMAGE:image"
  output_stream: "TENSORS:input_tensors"
  options {{
    [mediapipe.ImageToTensorCalculatorOptions.ext] {{
      output_tensor_width: {width}
      output_tensor_height: {height}
      keep_aspect_ratio: false
      output_tensor_float_range {{ min: 0.0 max: 1.0 }}
      border_mode: BORDER_ZERO
    }}
  }}
}}
node {{ calculator: "TfLiteCustomOpResolverCalculator" output_side_packet: "OP_RESOLVER:op_resolver" }}
node {{
  calculator: "InferenceCalculator"
  input_stream: "TENSORS:input_tensors"
  output_stream: "TENSORS:output_tensors"
  input_side_packet: "OP_RESOLVER:op_resolver"
  options {{
    [mediapipe.InferenceCalculatorOptions.ext] {{
      model_path: "{model_path}"
      delegate {{ tflite {{}} }}
    }}
  }}
}}
{split}
{floats}
"""


def run_mediapipe_graph(model_path: Path | str, image_rgb: np.ndarray, num_outputs: int = 1) -> list[np.ndarray]:
    """Run a .tflite model through MediaPipe's own calculators on a uint8 RGB image.

    The image must already have the model's input size: ImageToTensorCalculator then
    only converts uint8 -> float in [0, 1] (identity ROI), as in MediaPipe's graphs.
    Returns each output tensor flattened to float32.
    """
    import mediapipe as mp
    from mediapipe.python import packet_creator, packet_getter

    image_rgb = np.ascontiguousarray(image_rgb, dtype=np.uint8)
    height, width = image_rgb.shape[:2]
    config = _graph_config(str(Path(model_path).resolve()), width, height, num_outputs)
    graph = mp.CalculatorGraph(graph_config=config)
    results: dict[int, np.ndarray] = {}
    for i in range(num_outputs):
        graph.observe_output_stream(
            f"floats_{i}",
            lambda _stream, packet, i=i: results.__setitem__(
                i, np.array(packet_getter.get_float_list(packet), dtype=np.float32)
            ),
        )
    graph.start_run()
    frame = packet_creator.create_image_frame(image_format=mp.ImageFormat.SRGB, data=image_rgb)
    graph.add_packet_to_input_stream("image", frame.at(mp.Timestamp(0)))
    graph.close()
    return [results[i] for i in range(num_outputs)]
