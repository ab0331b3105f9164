"""A stand-in for InsightFace's `buffalo_l` model pack, written as ONNX files with the real pack's
file names and input/output signatures, so InsightFace routes and runs them exactly as it does the
real ones:

  det_10g.onnx    SCRFD detector: input "input.1" [1, 3, H, W] (dynamic); 9 outputs
                  "448" "471" "494" (scores [N, 1]), "451" "474" "497" (box distances [N, 4]),
                  "454" "477" "500" (landmark offsets [N, 10]) for strides 8, 16, 32, with
                  N = (H / s)(W / s) x 2 anchors
  w600k_r50.onnx  ArcFace recognition: "input.1" [B, 3, 112, 112] -> "683" [B, 512]
  2d106det.onnx   2-D landmarks: "data" [B, 3, 192, 192] -> "fc1" [B, 212]
  1k3d68.onnx     3-D landmarks: "data" [B, 3, 192, 192] -> "fc1" [B, 3309]
  genderage.onnx  gender/age:    "data" [B, 3, 96, 96]   -> "fc1" [B, 3]

What the stand-ins compute
--------------------------
The detector is not a neural network: it is built from ONNX operators so that it finds *marker
faces*, discs painted in a marker colour (red and blue above ~200, green below ~100: magenta, see
`MarkerFaces`), and nothing else. For every anchor of every stride it sums, over a window around
the anchor, the marker mask and its first and second moments (one strided convolution); an anchor
fires when the window holds exactly one whole compact blob (no marker pixel on the window's rim,
second moment that of a disc) whose centroid lies within half a stride of the anchor. The box is
the disc's bounding square and the landmarks are the ArcFace template placed in that square, so a
disc of radius r centred at c is a face with box c +- r and landmarks c + 2r (p - 1/2) for the
template points p (in units of the 112 px ArcFace square). Photos without magenta discs yield no
face; real faces are not detected. `draw_marker_face` paints such faces (with a seeded pattern
inside, so different faces look different) and `expected_face` gives their ground truth.

The recognition model is a fixed random function of its input: 4x4 average pooling, a random
linear map to 512 values and a cosine (random Fourier features), so equal crops give equal
embeddings, slightly different crops similar ones and unrelated crops nearly orthogonal ones, as
ArcFace does for faces. The landmark and gender/age models are small random linear maps; they are
loaded by InsightFace but not used by the pack.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

ARCFACE_TEMPLATE_UNIT = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64) / 112.0

FILES = ("det_10g.onnx", "w600k_r50.onnx", "2d106det.onnx", "1k3d68.onnx", "genderage.onnx")
STRIDES = (8, 16, 32)
WINDOWS = (128, 256, 512)  # detector-input pixels summed around an anchor, per stride
POOL = 4                    # the marker mask is averaged over 4x4 cells before the window sums
RIM = 2                     # pooled cells on the window's rim that must hold no marker
OPSET = 13
IR_VERSION = 8


@dataclass(frozen=True)
class MarkerFaces:
    """What the stand-in detector takes for a face: a blob of pixels with R >= red_min,
    B >= blue_min and G <= green_max (0..255), scored `score` when whole and disc-shaped."""

    red_min: float = 200.0
    blue_min: float = 200.0
    green_max: float = 100.0
    score: float = 0.9
    min_area: float = 64.0  # detector-input pixels


def _norm(value: float) -> float:
    """A 0..255 pixel value as SCRFD feeds it to the network: (v - 127.5) / 128."""
    return (value - 127.5) / 128.0


def _helpers():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    return onnx, TensorProto, helper, numpy_helper


class _Graph:
    """A tiny builder that names nodes and constants uniquely."""

    def __init__(self):
        self.onnx, self.TP, self.helper, self.nh = _helpers()
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, stem):
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, value, dtype=np.float32, stem="c"):
        arr = np.asarray(value, dtype=dtype)
        n = self.name(stem)
        self.inits.append(self.nh.from_array(arr, n))
        return n

    def op(self, op_type, inputs, n_out=1, stem=None, outputs=None, **attrs):
        stem = stem or op_type.lower()
        outs = outputs or [self.name(stem) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outs, name=self.name(stem), **attrs))
        return outs[0] if n_out == 1 else outs

    def model(self, inputs, outputs, name):
        graph = self.helper.make_graph(self.nodes, name, inputs, outputs, initializer=self.inits)
        model = self.helper.make_model(graph, opset_imports=[self.helper.make_opsetid("", OPSET)],
                                       producer_name="revpers-standin")
        model.ir_version = IR_VERSION
        self.onnx.checker.check_model(model)
        return model


def _window_kernel(window: int) -> np.ndarray:
    """[5, 1, K, K] weights over pooled cells: mass, x and y offset of the cell centre from the
    anchor (in detector-input pixels), squared distance, and a rim indicator."""
    k = window // POOL
    offs = POOL * (np.arange(k, dtype=np.float64) - k / 2.0) + (POOL - 1) / 2.0
    dx = np.broadcast_to(offs[None, :], (k, k))
    dy = np.broadcast_to(offs[:, None], (k, k))
    idx = np.arange(k)
    rim1 = (idx < RIM) | (idx >= k - RIM)
    rim = (rim1[None, :] | rim1[:, None]).astype(np.float64)
    w = np.stack([np.ones((k, k)), dx, dy, dx * dx + dy * dy, rim])
    return w[:, None].astype(np.float32)


def _detector(marker: MarkerFaces):
    g = _Graph()
    h, TP = g.helper, g.TP
    r, gr, b = g.op("Split", ["input.1"], n_out=3, stem="split", axis=1)
    is_r = g.op("Greater", [r, g.const(_norm(marker.red_min))])
    is_b = g.op("Greater", [b, g.const(_norm(marker.blue_min))])
    is_g = g.op("Less", [gr, g.const(_norm(marker.green_max))])
    mask = g.op("Cast", [g.op("And", [g.op("And", [is_r, is_b]), is_g])], to=TP.FLOAT)
    pooled = g.op("AveragePool", [mask], kernel_shape=[POOL, POOL], strides=[POOL, POOL])
    template = 2.0 * (ARCFACE_TEMPLATE_UNIT - 0.5)  # landmark offsets in units of the radius
    scores, boxes, kpss = [], [], []
    for stride, window in zip(STRIDES, WINDOWS):
        k, step = window // POOL, stride // POOL
        sums = g.op("Conv", [pooled, g.const(_window_kernel(window))], kernel_shape=[k, k],
                    strides=[step, step], pads=[k // 2, k // 2, k // 2 - step, k // 2 - step])
        s0, sx, sy, sxx, rim = g.op("Split", [sums], n_out=5, stem="split", axis=1)
        mass = g.op("Max", [s0, g.const(1e-6)])
        ox = g.op("Div", [sx, mass])
        oy = g.op("Div", [sy, mass])
        area = g.op("Mul", [s0, g.const(float(POOL * POOL))])
        radius = g.op("Sqrt", [g.op("Div", [area, g.const(math.pi)])])
        # central second moment per unit mass over r^2: 1/2 for a disc, 0.52 for a square
        spread = g.op("Sub", [g.op("Div", [sxx, mass]),
                              g.op("Add", [g.op("Mul", [ox, ox]), g.op("Mul", [oy, oy])])])
        r2 = g.op("Max", [g.op("Div", [area, g.const(math.pi)]), g.const(1e-6)])
        compact = g.op("Less", [g.op("Div", [spread, r2]), g.const(0.6)])
        near = g.op("Not", [g.op("Greater", [g.op("Max", [g.op("Abs", [ox]), g.op("Abs", [oy])]),
                                             g.const(stride / 2.0)])])
        whole = g.op("Less", [rim, g.const(1e-4)])
        big = g.op("Not", [g.op("Less", [area, g.const(marker.min_area)])])
        ok = g.op("And", [g.op("And", [compact, near]), g.op("And", [whole, big])])
        score = g.op("Mul", [g.op("Cast", [ok], to=TP.FLOAT), g.const(marker.score)])
        inv = g.const(1.0 / stride)
        dist = [g.op("Mul", [g.op("Sub", [radius, ox]), inv]), g.op("Mul", [g.op("Sub", [radius, oy]), inv]),
                g.op("Mul", [g.op("Add", [radius, ox]), inv]), g.op("Mul", [g.op("Add", [radius, oy]), inv])]
        kps = []
        for u, v in template:
            kps.append(g.op("Mul", [g.op("Add", [ox, g.op("Mul", [radius, g.const(u)])]), inv]))
            kps.append(g.op("Mul", [g.op("Add", [oy, g.op("Mul", [radius, g.const(v)])]), inv]))
        box = g.op("Concat", dist, axis=1)
        kp = g.op("Concat", kps, axis=1)
        zero = g.op("Mul", [score, g.const(0.0)])
        for parts, channels, sink in (((score, zero), 1, scores), ((box, box), 4, boxes), ((kp, kp), 10, kpss)):
            rows = []
            for part in parts:  # [1, C, h, w] -> [h*w, 1, C]; the two anchors of a cell follow each other
                t = g.op("Transpose", [part], perm=[0, 2, 3, 1])
                rows.append(g.op("Reshape", [t, g.const([-1, 1, channels], np.int64)]))
            pair = g.op("Concat", rows, axis=1)
            sink.append((pair, channels))
    names = ("448", "471", "494", "451", "474", "497", "454", "477", "500")
    outputs = []
    for (pair, channels), out in zip(scores + boxes + kpss, names):
        g.op("Reshape", [pair, g.const([-1, channels], np.int64)], outputs=[out])
        outputs.append(h.make_tensor_value_info(out, TP.FLOAT, [f"n_{out}", channels]))
    inputs = [h.make_tensor_value_info("input.1", TP.FLOAT, [1, 3, "height", "width"])]
    return g.model(inputs, outputs, "scrfd_standin")


def _recognition(rng: np.random.Generator, sigma: float = 0.3):
    g = _Graph()
    h, TP = g.helper, g.TP
    pooled = g.op("AveragePool", ["input.1"], kernel_shape=[4, 4], strides=[4, 4], stem="pool")
    flat = g.op("Flatten", [pooled], axis=1, stem="flatten")
    dim = 3 * 28 * 28
    weight = rng.normal(0.0, sigma, size=(dim, 512)).astype(np.float32)
    phase = rng.uniform(0.0, 2.0 * math.pi, size=(512,)).astype(np.float32)
    proj = g.op("Gemm", [flat, g.const(weight, stem="fc_w"), g.const(phase, stem="fc_b")], stem="fc")
    g.op("Cos", [proj], outputs=["683"], stem="features")
    inputs = [h.make_tensor_value_info("input.1", TP.FLOAT, ["None", 3, 112, 112])]
    outputs = [h.make_tensor_value_info("683", TP.FLOAT, ["None", 512])]
    return g.model(inputs, outputs, "arcface_standin")


def _linear_head(rng: np.random.Generator, size: int, pool: int, out: int, name: str):
    g = _Graph()
    h, TP = g.helper, g.TP
    # mxnet-converted InsightFace models begin with these two nodes (InsightFace reads the names to
    # choose its input normalisation), so the stand-ins do too.
    x = g.op("Sub", ["data", g.const(0.0)], outputs=["_minusscalar0_out"], stem="_minusscalar0")
    g.nodes[-1].name = "_minusscalar0"
    x = g.op("Mul", [x, g.const(1.0 / 128.0)], outputs=["_mulscalar0_out"], stem="_mulscalar0")
    g.nodes[-1].name = "_mulscalar0"
    pooled = g.op("AveragePool", [x], kernel_shape=[pool, pool], strides=[pool, pool], stem="pool")
    flat = g.op("Flatten", [pooled], axis=1, stem="flatten")
    dim = 3 * (size // pool) ** 2
    weight = (rng.normal(0.0, 1.0, size=(dim, out)) / math.sqrt(dim)).astype(np.float32)
    bias = np.zeros((out,), np.float32)
    g.op("Gemm", [flat, g.const(weight), g.const(bias)], outputs=["fc1"], stem="fc1")
    inputs = [h.make_tensor_value_info("data", TP.FLOAT, ["None", 3, size, size])]
    outputs = [h.make_tensor_value_info("fc1", TP.FLOAT, ["None", out])]
    return g.model(inputs, outputs, name)


# The five files of the buffalo_l pack, as write_buffalo_l writes them.
BUFFALO_FILES = ("det_10g.onnx", "w600k_r50.onnx", "2d106det.onnx", "1k3d68.onnx", "genderage.onnx")


def write_buffalo_l(folder, seed: int = 0, faces: MarkerFaces | None = None) -> list[str]:
    """Write the five stand-in buffalo_l files into `folder` (created if needed). `faces` sets
    what the detector takes for a face (default MarkerFaces()). Same seed, same files. Returns the
    paths written."""
    import onnx

    faces = faces or MarkerFaces()
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    models = {
        "det_10g.onnx": _detector(faces),
        "w600k_r50.onnx": _recognition(rng),
        "2d106det.onnx": _linear_head(rng, 192, 32, 212, "landmark_2d_106_standin"),
        "1k3d68.onnx": _linear_head(rng, 192, 32, 3309, "landmark_3d_68_standin"),
        "genderage.onnx": _linear_head(rng, 96, 16, 3, "genderage_standin"),
    }
    paths = []
    for name, model in models.items():
        path = os.path.join(folder, name)
        tmp = path + ".tmp"
        onnx.save(model, tmp)
        os.replace(tmp, path)
        paths.append(path)
    return paths


# --- marker faces for pictures ------------------------------------------------------------------

def expected_face(centre, radius):
    """Ground truth for a marker face drawn at `centre` (x, y) with `radius`, in the picture's
    pixels: (box [x1, y1, x2, y2], landmarks 5x2)."""
    c = np.asarray(centre, dtype=np.float64)
    box = np.array([c[0] - radius, c[1] - radius, c[0] + radius, c[1] + radius])
    landmarks = c + 2.0 * radius * (ARCFACE_TEMPLATE_UNIT - 0.5)
    return box, landmarks


def draw_marker_face(image: np.ndarray, centre, radius: float, seed: int = 0) -> np.ndarray:
    """Paint a marker face into an RGB uint8 picture (in place; also returned): a magenta disc
    with eyes, nose and mouth at the template positions and a seeded pattern of stripes, all
    within the marker colour range so the stand-in detector sees one whole disc."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("draw_marker_face paints RGB uint8 pictures")
    rng = np.random.default_rng(seed)
    height, width = image.shape[:2]
    cx, cy = float(centre[0]), float(centre[1])
    x0, x1 = max(int(math.floor(cx - radius)), 0), min(int(math.ceil(cx + radius)) + 1, width)
    y0, y1 = max(int(math.floor(cy - radius)), 0), min(int(math.ceil(cy + radius)) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return image
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius ** 2
    base = np.array([rng.uniform(215, 250), rng.uniform(20, 70), rng.uniform(215, 250)])
    # identity: a few seeded stripes in the free colour range (green 0..95, red/blue 205..255)
    u = (xs - cx) / radius
    v = (ys - cy) / radius
    green = np.full_like(u, base[1])
    for _ in range(4):
        angle = rng.uniform(0, math.pi)
        freq = rng.uniform(1.5, 5.0)
        amp = rng.uniform(8, 22)
        green = green + amp * np.sin(freq * math.pi * (u * math.cos(angle) + v * math.sin(angle)) + rng.uniform(0, 6.3))
    red = base[0] + 10 * np.sin(3 * u + rng.uniform(0, 6.3))
    blue = base[2] + 10 * np.cos(3 * v + rng.uniform(0, 6.3))
    _, landmarks = expected_face((cx, cy), radius)
    feature = np.zeros_like(inside)
    for k, (lx, ly) in enumerate(landmarks):
        size = radius * (0.10 if k < 2 else 0.07)
        feature |= (xs - lx) ** 2 + (ys - ly) ** 2 <= size ** 2
    rgb = np.stack([red, np.where(feature, 2.0, green), blue], axis=-1)
    rgb[..., 0] = np.clip(rgb[..., 0], 205, 255)
    rgb[..., 1] = np.clip(rgb[..., 1], 0, 95)
    rgb[..., 2] = np.clip(rgb[..., 2], 205, 255)
    region = image[y0:y1, x0:x1]
    region[inside] = np.round(rgb[inside]).astype(np.uint8)
    return image
