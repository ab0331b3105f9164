"""The recognizers and detectors the audit judges with, behind one small interface.

The method pushes each face away from its *ArcFace* identity, so ArcFace alone is a judge the
method was optimized against. The audit therefore also asks a recognizer the method never saw:
dlib's ResNet face descriptor (128-d, trained on other data with another loss), and looks for faces
with dlib's HOG detector beside the analysis' own SCRFD detector, so a face one detector misses is
still measured. dlib's weights ship in PyPI packages (`dlib-bin` and `face-recognition-models`):
nothing is downloaded.

A recognizer turns faces into descriptors and decides, from a pair of them, "same person":

  ArcFace  cosine similarity of L2-normalised 512-d embeddings; same person at or above the
           threshold (default 0.30, the strict end of the 0.28-0.4 used with InsightFace's models)
  dlib     Euclidean distance of 128-d descriptors; same person at or below the threshold (dlib's
           own rule is "below 0.6"; its authors report 99.38 % on LFW with it)

Thresholds are bounded (ARCFACE_BOUNDS, DLIB_BOUNDS) so that no setting can switch the audit off:
above 0.5 cosine, or below 0.5 distance, re-encoded photos of one person start to count as strangers.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass

import numpy as np

from .pixels import to_bgr_uint8, to_rgb_uint8
from .records import Detection

ARCFACE_DEFAULT, ARCFACE_BOUNDS = 0.30, (0.10, 0.50)
DLIB_DEFAULT, DLIB_BOUNDS = 0.60, (0.50, 0.80)
DLIB_PACKAGES = "pip install dlib-bin face-recognition-models"
DLIB_FILES = {
    "recognizer": "dlib_face_recognition_resnet_model_v1.dat",
    "landmarks": "shape_predictor_68_face_landmarks.dat",
}


def check_threshold(value: float, bounds: tuple[float, float], what: str) -> float:
    value = float(value)
    lo, hi = bounds
    if not lo <= value <= hi:
        raise ValueError(f"{what} threshold {value:g} is outside {lo:g}..{hi:g}: outside that range the "
                         f"audit could not tell a person from a stranger (to save images that fail the "
                         f"audit, choose that explicitly with the audit's on_fail setting instead)")
    return value


class ArcFace:
    """The analysis' own ArcFace model as an audit recognizer (cosine similarity)."""

    name = "ArcFace"
    measure = "cosine similarity"
    higher_is_same = True

    def __init__(self, analyser, threshold: float = ARCFACE_DEFAULT):
        self.analyser = analyser
        self.threshold = check_threshold(threshold, ARCFACE_BOUNDS, "ArcFace")

    def describe(self) -> str:
        return f"ArcFace ({os.path.basename(self.analyser.model_dir)}), cosine similarity, same person at >= {self.threshold:.2f}"

    def descriptors(self, image: np.ndarray, faces: list[Detection]) -> np.ndarray:
        return self.analyser.embed(to_bgr_uint8(image), [f.landmarks for f in faces])

    def scores(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """[N, M] cosine similarities of two descriptor sets (rows are unit length)."""
        return np.atleast_2d(a).astype(np.float64) @ np.atleast_2d(b).astype(np.float64).T

    def same_person(self, score: float) -> bool:
        return score >= self.threshold


@dataclass(frozen=True)
class _DlibModels:
    detector: object
    landmarks: object
    recognizer: object
    folder: str


_DLIB = None
_DLIB_LOCK = threading.Lock()


def dlib_model_folder() -> str | None:
    """The folder of face-recognition-models' .dat files, or None when dlib or it is missing. dlib is
    imported, not only looked for: a dlib that is there but cannot load (a broken build, a missing
    shared library) counts as missing."""
    if importlib.util.find_spec("dlib") is None:
        return None
    try:
        import dlib  # noqa: F401
    except ImportError:
        return None
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    # Its __init__ imports pkg_resources, which new setuptools no longer has: take the folder only.
    folder = os.path.join(list(spec.submodule_search_locations)[0], "models")
    if not all(os.path.isfile(os.path.join(folder, f)) for f in DLIB_FILES.values()):
        return None
    return folder


def dlib_available() -> bool:
    return dlib_model_folder() is not None


def load_dlib() -> _DlibModels:
    """dlib's HOG detector, 68-point landmark model and ResNet recognizer, loaded once."""
    global _DLIB
    with _DLIB_LOCK:
        if _DLIB is None:
            folder = dlib_model_folder()
            if folder is None:
                raise RuntimeError(f"dlib's face models are not installed ({DLIB_PACKAGES})")
            import dlib

            _DLIB = _DlibModels(dlib.get_frontal_face_detector(),
                                dlib.shape_predictor(os.path.join(folder, DLIB_FILES["landmarks"])),
                                dlib.face_recognition_model_v1(os.path.join(folder, DLIB_FILES["recognizer"])),
                                folder)
        return _DLIB


def _rectangle(box):
    import dlib

    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return dlib.rectangle(x1, y1, max(x2, x1 + 1), max(y2, y1 + 1))


def _five_points(shape) -> np.ndarray:
    """InsightFace's five points from dlib's 68: eye centres, nose tip, mouth corners."""
    p = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)
    return np.array([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


class DlibHOG:
    """dlib's HOG face detector (frontal and slightly turned faces of ~40 px and more at one
    upsampling), giving InsightFace-style records: box, five landmarks from the 68, score."""

    name = "dlib HOG"

    def __init__(self, upsample: int = 1, min_score: float = 0.0):
        self.models = load_dlib()
        self.upsample = int(upsample)
        self.min_score = float(min_score)

    def detect(self, image: np.ndarray) -> list[Detection]:
        rgb = to_rgb_uint8(image)
        with _DLIB_LOCK:
            rects, scores, _ = self.models.detector.run(rgb, self.upsample, self.min_score)
            shapes = [self.models.landmarks(rgb, r) for r in rects]
        return [Detection(box=np.array([r.left(), r.top(), r.right(), r.bottom()], dtype=np.float64),
                          landmarks=_five_points(s), score=float(c))
                for r, s, c in zip(rects, shapes, scores)]


class Dlib:
    """dlib's ResNet face descriptor as an audit recognizer (Euclidean distance, 128-d). The face's
    68 landmarks are found by dlib's own model inside its box, on the image being measured."""

    name = "dlib"
    measure = "Euclidean distance"
    higher_is_same = False

    def __init__(self, threshold: float = DLIB_DEFAULT):
        self.threshold = check_threshold(threshold, DLIB_BOUNDS, "dlib")
        self.models = load_dlib()

    def describe(self) -> str:
        return f"dlib ResNet (128-d), Euclidean distance, same person at <= {self.threshold:.2f}"

    def descriptors(self, image: np.ndarray, faces: list[Detection]) -> np.ndarray:
        rgb = to_rgb_uint8(image)
        rows = []
        with _DLIB_LOCK:
            for face in faces:
                shape = self.models.landmarks(rgb, _rectangle(face.box))
                rows.append(np.asarray(self.models.recognizer.compute_face_descriptor(rgb, shape), np.float64))
        return np.stack(rows) if rows else np.zeros((0, 128))

    def scores(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """[N, M] Euclidean distances of two descriptor sets."""
        a, b = np.atleast_2d(a), np.atleast_2d(b)
        return np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0.0))

    def same_person(self, score: float) -> bool:
        return score <= self.threshold
