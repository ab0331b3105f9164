"""InsightFace's face models, run on whichever ONNX Runtime is installed.

A model pack like `buffalo_l` is a folder of .onnx files: an SCRFD face detector (det_10g.onnx), an
ArcFace recogniser (w600k_r50.onnx) and models this pack does not use (landmarks, gender/age). This
module opens such a folder with `onnxruntime.InferenceSession` and does what InsightFace does with the
two models it needs, with the same arithmetic, so boxes, landmarks, scores and features are InsightFace's
own. It exists so that the `insightface` package is not needed at run time: every pure-Python release of
it requires the CPU `onnxruntime` package, which overwrites the files of an installed `onnxruntime-gpu`.

The files are told apart by their signatures, as InsightFace tells them apart: five or more outputs is a
detector; a square input of 192 is a landmark model, of 96 gender/age, two inputs of 128 a face swapper;
any other square input of at least 112 and a multiple of 16 is a recogniser. Files are taken in name
order and the first of each kind is used; every file is opened, so a broken one is an error naming it.

Pictures are numpy arrays in OpenCV's convention (BGR uint8, H x W x 3); the networks get RGB.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

NMS_THRESHOLD = 0.4
# SCRFD's output layouts, by number of outputs: (strides, anchors per cell, with landmarks). The outputs
# are the scores of every stride, then the box distances of every stride, then the landmark offsets.
SCRFD_LAYOUTS = {
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}
DETECTOR_MEAN, DETECTOR_STD = 127.5, 128.0
ARCFACE_MEAN, ARCFACE_STD = 127.5, 127.5
NO_ONNXRUNTIME = ("ONNX Runtime is not installed; the face models need it. Install one of the two builds, "
                  "never both (they overwrite each other's files): pip install onnxruntime (CPU) or "
                  "pip install onnxruntime-gpu (CUDA).")


def import_onnxruntime():
    """The `onnxruntime` module, or an ImportError saying which package to install."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(NO_ONNXRUNTIME) from exc
    return onnxruntime


@dataclass(frozen=True)
class Detector:
    """An SCRFD detector: its session and how to read its outputs."""

    path: str
    session: object
    input_name: str
    fixed_size: tuple[int, int] | None  # (width, height) when the model takes one size only
    strides: tuple[int, ...]
    anchors: int
    has_landmarks: bool


@dataclass(frozen=True)
class Recognizer:
    """An ArcFace recogniser: its session, input size (width, height) and input normalisation."""

    path: str
    session: object
    input_name: str
    size: tuple[int, int]
    mean: float
    std: float


@dataclass(frozen=True)
class ModelPack:
    """The detector and recogniser of a pack folder, and what each of its files was taken for."""

    folder: str
    detector: Detector | None
    recognizer: Recognizer | None
    roles: dict  # file name -> "detection", "recognition", "landmark", "genderage", "swapper" or None


class ModelFileError(RuntimeError):
    """A file of a model pack that ONNX Runtime cannot open."""

    def __init__(self, path: str, cause: Exception):
        self.path = path
        super().__init__(f"ONNX Runtime could not open {os.path.basename(path)} in {os.path.dirname(path)} "
                         f"({type(cause).__name__}: {cause})")


def _square_side(shape) -> int | None:
    """The side of an N x C x S x S input with a fixed S, else None."""
    if len(shape) != 4 or not isinstance(shape[2], int) or shape[2] != shape[3]:
        return None
    return shape[2]


def role_of(session) -> str | None:
    """What InsightFace takes a model for, from its inputs and outputs."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(outputs) >= 5:
        return "detection"
    side = _square_side(inputs[0].shape)
    if side == 192:
        return "landmark"
    if side == 96:
        return "genderage"
    if len(inputs) == 2 and side == 128:
        return "swapper"
    if side is not None and side >= 112 and side % 16 == 0 and len(outputs) == 1:
        return "recognition"
    return None


def load_pack(folder: str, providers) -> ModelPack:
    """Open every .onnx file of `folder` (in name order) on the given ONNX Runtime providers and keep
    the first detector and the first recogniser. Raises ModelFileError for a file that does not open."""
    ort = import_onnxruntime()
    if "CUDAExecutionProvider" in providers and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA and cuDNN from the environment's nvidia packages, where it has them
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    detector = recognizer = None
    roles = {}
    for name in sorted(f for f in os.listdir(folder) if f.lower().endswith(".onnx")):
        path = os.path.join(folder, name)
        try:
            session = ort.InferenceSession(path, sess_options=options, providers=list(providers))
        except Exception as exc:  # ONNX Runtime raises its own untyped errors on bad files
            raise ModelFileError(path, exc) from exc
        role = roles[name] = role_of(session)
        if role == "detection" and detector is None:
            detector = _detector(path, session)
        elif role == "recognition" and recognizer is None:
            recognizer = _recognizer(path, session)
    return ModelPack(folder=folder, detector=detector, recognizer=recognizer, roles=roles)


def _detector(path, session) -> Detector:
    count = len(session.get_outputs())
    if count not in SCRFD_LAYOUTS:
        raise RuntimeError(f"{os.path.basename(path)} in {os.path.dirname(path)} has {count} outputs; an SCRFD "
                           f"detector has {', '.join(map(str, SCRFD_LAYOUTS))}")
    strides, anchors, has_landmarks = SCRFD_LAYOUTS[count]
    inp = session.get_inputs()[0]
    height, width = inp.shape[2:4]
    fixed = None
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        fixed = (width, height)
    return Detector(path=path, session=session, input_name=inp.name, fixed_size=fixed, strides=strides,
                    anchors=anchors, has_landmarks=has_landmarks)


def _recognizer(path, session) -> Recognizer:
    inp = session.get_inputs()[0]
    side = _square_side(inp.shape)
    # Recognisers converted from MXNet subtract and scale inside the graph (their first nodes are named
    # so) and take raw pixel values; the others take pixels scaled to [-1, 1].
    names = first_node_names(path, 8)
    inside = (any(n.startswith(("Sub", "_minus")) for n in names)
              and any(n.startswith(("Mul", "_mul")) for n in names))
    mean, std = (0.0, 1.0) if inside else (ARCFACE_MEAN, ARCFACE_STD)
    return Recognizer(path=path, session=session, input_name=inp.name, size=(side, side), mean=mean, std=std)


# --- reading node names without the onnx package ------------------------------------------------------

def _varint(buf, pos):
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start, end):
    """(field number, start, end) of each field of the protobuf message in buf[start:end]; for a
    length-delimited field, start and end bound its bytes."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        kind = key & 7
        if kind == 0:
            _, nxt = _varint(buf, pos)
        elif kind == 1:
            nxt = pos + 8
        elif kind == 2:
            length, pos = _varint(buf, pos)
            nxt = pos + length
        elif kind == 5:
            nxt = pos + 4
        else:
            raise ValueError(f"protobuf wire type {kind} is not used by ONNX")
        yield key >> 3, pos, nxt
        pos = nxt


MODEL_GRAPH, GRAPH_NODE, NODE_NAME = 7, 1, 3  # field numbers in onnx.proto
MODEL_PRODUCER_NAME = 2


def producer_name(path: str) -> str | None:
    """The producer_name an ONNX model file records (a field before its graph, so only the file's first
    bytes are read), or None when there is none or the file is no ONNX model."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
        for number, start, end in _fields(head, 0, len(head)):
            if number == MODEL_PRODUCER_NAME:
                return head[start:end].decode("utf-8", errors="replace")
            if number == MODEL_GRAPH or end > len(head):
                return None
    except (OSError, ValueError, IndexError):
        return None
    return None


def first_node_names(path: str, count: int) -> list[str]:
    """The names of the first `count` nodes of an ONNX model's graph, in graph order."""
    names = []
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        graph = next(((s, e) for f, s, e in _fields(buf, 0, len(buf)) if f == MODEL_GRAPH), None)
        if graph is None:
            return names
        for field, start, end in _fields(buf, *graph):
            if field != GRAPH_NODE:
                continue
            name = next((bytes(buf[s:e]).decode("utf-8", "replace")
                         for f, s, e in _fields(buf, start, end) if f == NODE_NAME), "")
            names.append(name)
            if len(names) == count:
                break
    return names


# --- running the models -----------------------------------------------------------------------------

def blob(pictures, mean: float, std: float) -> np.ndarray:
    """BGR uint8 pictures of one size as the networks take them: N x 3 x H x W float32, RGB,
    (value - mean) / std, computed as OpenCV's blobFromImages computes it (times a float32 1/std)."""
    rgb = np.stack([p[:, :, ::-1] for p in pictures]).astype(np.float32)
    out = (rgb - np.float32(mean)) * np.float32(1.0 / std)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


@lru_cache(maxsize=64)
def anchor_centres(rows: int, cols: int, stride: int, anchors: int) -> np.ndarray:
    """The (x, y) centres of a stride's anchors in detector-input pixels, row by row, each repeated for
    the anchors of its cell: [rows * cols * anchors, 2] float32 (read-only)."""
    ys, xs = np.mgrid[:rows, :cols]
    centres = (np.stack([xs, ys], axis=-1).astype(np.float32) * stride).reshape(-1, 1, 2)
    centres = np.repeat(centres, anchors, axis=1).reshape(-1, 2)
    centres.flags.writeable = False
    return centres


def nms(boxes: np.ndarray, threshold: float = NMS_THRESHOLD) -> list[int]:
    """Greedy non-maximum suppression over boxes [N, >=4] given most confident first: the indices kept,
    in order. A box goes when it overlaps a kept one by more than `threshold` (intersection over union,
    in InsightFace's inclusive pixel convention: a box spans x2 - x1 + 1 pixels)."""
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    rest = np.arange(boxes.shape[0])
    keep = []
    while rest.size:
        i, rest = rest[0], rest[1:]
        keep.append(int(i))
        width = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = width * height
        overlap = inter / (areas[i] + areas[rest] - inter)
        rest = rest[overlap <= threshold]
    return keep


def detect(detector: Detector, picture: np.ndarray, input_size, threshold: float):
    """Faces in a BGR picture: boxes with scores [N, 5] (x1, y1, x2, y2, score) and landmarks [N, 5, 2]
    (None for a detector without them), float32, in the picture's pixels, most confident first.

    The picture is resized, keeping its aspect, to fit input_size (width, height) and padded with black
    at the right and bottom; every anchor of every stride scoring at least `threshold` gives a box
    (distances to its four sides) and landmarks (offsets), both in units of the stride; overlapping
    boxes are suppressed (`nms`) and the rest scaled back."""
    width, height = (int(v) for v in input_size)
    if detector.fixed_size is not None and detector.fixed_size != (width, height):
        raise ValueError(f"{os.path.basename(detector.path)} takes {detector.fixed_size[0]}x"
                         f"{detector.fixed_size[1]} pictures only, not {width}x{height}")
    ratio = picture.shape[0] / picture.shape[1]
    if ratio > height / width:
        new_h, new_w = height, max(1, int(height / ratio))
    else:
        new_w, new_h = width, max(1, int(width * ratio))
    scale = np.float32(new_h / picture.shape[0])
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(picture, (new_w, new_h))
    outputs = detector.session.run(None, {detector.input_name: blob([canvas], DETECTOR_MEAN, DETECTOR_STD)})
    n = len(detector.strides)
    found = []  # (scores, boxes, landmarks) per stride
    for k, stride in enumerate(detector.strides):
        scores = outputs[k].reshape(-1)
        chosen = np.nonzero(scores >= threshold)[0]
        centres = anchor_centres(height // stride, width // stride, stride, detector.anchors)[chosen]
        sides = outputs[n + k].reshape(-1, 4)[chosen] * stride
        boxes = np.concatenate([centres - sides[:, :2], centres + sides[:, 2:]], axis=1)
        points = None
        if detector.has_landmarks:
            points = centres[:, None, :] + outputs[2 * n + k].reshape(-1, 5, 2)[chosen] * stride
        found.append((scores[chosen], boxes, points))
    scores = np.concatenate([s for s, _, _ in found])
    order = np.argsort(-scores, kind="stable")
    dets = np.concatenate([np.concatenate([b for _, b, _ in found]) / scale, scores[:, None]], axis=1)[order]
    keep = nms(dets)
    points = None
    if detector.has_landmarks:
        points = (np.concatenate([p for _, _, p in found]) / scale)[order][keep]
    return dets[keep].astype(np.float32), points


def embed(recognizer: Recognizer, crops) -> np.ndarray:
    """The recogniser's raw (not normalised) features [N, D] float32 for aligned BGR face crops; crops
    of another size than the model's are resized to it first (bilinear)."""
    size = recognizer.size
    crops = [c if c.shape[1::-1] == size else cv2.resize(c, size) for c in crops]
    feats = recognizer.session.run(None, {recognizer.input_name: blob(crops, recognizer.mean, recognizer.std)})[0]
    return np.asarray(feats, dtype=np.float32).reshape(len(crops), -1)
