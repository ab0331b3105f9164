"""Face analysis: InsightFace's model pack in a small loader object with a plain `detect`/`embed`.

The model pack is InsightFace's `buffalo_l` (SCRFD-10G detector + ArcFace ResNet-50), in the
folder layout every ComfyUI face pack uses: `<models>/insightface/models/buffalo_l/*.onnx`. Its two
models run on whichever ONNX Runtime is installed (`onnx_pack`, InsightFace's arithmetic without the
`insightface` package, whose requirement of the CPU `onnxruntime` would displace `onnxruntime-gpu`).
Nothing is ever downloaded: the files are checked here first, and a missing or broken pack is an
error naming the folder, the files and where they come from.

Images are numpy arrays in OpenCV's convention, BGR uint8 HxWx3, as InsightFace expects.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from . import onnx_pack
from .align import arcface_crop
from .records import Detection

DEFAULT_PACK = "buffalo_l"
BUFFALO_L_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"
BUFFALO_L_FILES = {
    "det_10g.onnx": "face detector (SCRFD-10G) - required",
    "w600k_r50.onnx": "ArcFace recognition model (ResNet-50) - required",
    "1k3d68.onnx": "3-D landmarks - optional, not used by this pack",
    "2d106det.onnx": "106-point landmarks - optional, not used by this pack",
    "genderage.onnx": "gender/age - optional, not used by this pack",
}
BUFFALO_L_REQUIRED = ("det_10g.onnx", "w600k_r50.onnx")

PROVIDERS = ("auto", "CPU", "CUDA")
DEFAULT_DET_SIZE = 640
MIN_DET_SIZE, MAX_DET_SIZE, DET_SIZE_STEP = 160, 2048, 32
DEFAULT_THRESHOLD = 0.5


def _where_from(pack: str) -> str:
    if pack == DEFAULT_PACK:
        return (f"Download {BUFFALO_L_URL} (InsightFace model zoo; non-commercial research licence) "
                f"and unzip it so that the .onnx files sit directly in that folder.")
    return (f"'{pack}' is an InsightFace model pack: unzip it so that its .onnx files (a detector and a "
            f"recognition model) sit directly in that folder.")


def _expected_files(pack: str) -> str:
    if pack == DEFAULT_PACK:
        return "; ".join(f"{name} ({what})" for name, what in BUFFALO_L_FILES.items())
    return "a detector .onnx (SCRFD) and a recognition .onnx (ArcFace)"


def find_model_dir(roots, pack: str = DEFAULT_PACK) -> str:
    """The first `<root>/models/<pack>` folder that exists, for the insightface model roots
    `roots` (in order). Raises FileNotFoundError naming every place looked at."""
    roots = [os.path.abspath(os.path.expanduser(str(r))) for r in roots]
    tried = []
    for root in roots:
        candidate = os.path.join(root, "models", pack)
        tried.append(candidate)
        if os.path.isdir(candidate):
            return candidate
    where = "\n  ".join(tried) if tried else "(no insightface model folder is registered)"
    raise FileNotFoundError(
        f"InsightFace model pack '{pack}' not found. Looked for the folder:\n  {where}\n"
        f"Expected files: {_expected_files(pack)}.\n{_where_from(pack)}"
    )


def _looks_broken(path: str) -> str:
    size = os.path.getsize(path)
    if size == 0:
        return "is empty"
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the model (download the real file)"
    if size < 1024:
        return f"is only {size} bytes (truncated download?)"
    return ""


def check_model_dir(model_dir: str, pack: str = DEFAULT_PACK) -> list[str]:
    """Check a pack folder before ONNX Runtime opens it; returns its .onnx file names."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(
            f"InsightFace model folder {model_dir} does not exist.\n"
            f"Expected files: {_expected_files(pack)}.\n{_where_from(pack)}")
    onnx_files = sorted(f for f in os.listdir(model_dir) if f.lower().endswith(".onnx"))
    required = BUFFALO_L_REQUIRED if pack == DEFAULT_PACK else ()
    missing = [f for f in required if f not in onnx_files]
    if not onnx_files or missing:
        what = ", ".join(missing) if missing else "any .onnx file"
        raise FileNotFoundError(
            f"InsightFace model folder {model_dir} lacks {what}.\n"
            f"Expected files: {_expected_files(pack)}.\n{_where_from(pack)}")
    broken = [(f, _looks_broken(os.path.join(model_dir, f))) for f in onnx_files]
    broken = [f"{f} {why}" for f, why in broken if why]
    if broken:
        raise ValueError(
            f"InsightFace model folder {model_dir}: " + "; ".join(broken) + ".\n" + _where_from(pack))
    return onnx_files


def resolve_providers(provider: str) -> list[str]:
    """ONNX Runtime execution providers for "auto", "CPU" or "CUDA"."""
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
    available = onnx_pack.import_onnxruntime().get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if provider == "CUDA" and not has_cuda:
        raise RuntimeError(
            "provider CUDA was requested but this ONNX Runtime has no CUDA support "
            f"(available: {', '.join(available)}). Install onnxruntime-gpu instead of onnxruntime, "
            "or choose 'auto' or 'CPU'.")
    if provider == "CUDA" or (provider == "auto" and has_cuda):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def check_det_size(det_size: int) -> int:
    det_size = int(det_size)
    if det_size < MIN_DET_SIZE or det_size > MAX_DET_SIZE or det_size % DET_SIZE_STEP:
        raise ValueError(f"detection size {det_size} is not supported: use a multiple of {DET_SIZE_STEP} from "
                         f"{MIN_DET_SIZE} to {MAX_DET_SIZE}")
    return det_size


class FaceAnalyser:
    """An InsightFace detector + ArcFace recogniser, loaded once and reused.

    detect(image, threshold) -> [Detection]; embed(image, [landmarks]) -> [N, 512] normalised.
    """

    def __init__(self, model_dir: str, provider: str = "auto", det_size: int = DEFAULT_DET_SIZE,
                 pack: str = DEFAULT_PACK):
        self.model_dir = os.path.abspath(model_dir)
        self.pack = pack
        self.det_size = check_det_size(det_size)
        self.provider = provider
        self.files = check_model_dir(self.model_dir, pack)
        self.providers = resolve_providers(provider)
        try:
            models = onnx_pack.load_pack(self.model_dir, self.providers)
        except RuntimeError as exc:  # a file ONNX Runtime cannot open, or a detector of an unknown layout
            raise RuntimeError(f"{exc}. Files there: {', '.join(self.files)}. {_where_from(pack)}") from exc
        if models.detector is None or models.recognizer is None:
            found = ", ".join(f"{name} ({role})" for name, role in models.roles.items() if role) or "nothing"
            raise RuntimeError(
                f"InsightFace model pack in {self.model_dir} needs a detector and a recognition model; "
                f"it recognised only: {found}. {_where_from(pack)}")
        if not models.detector.has_landmarks:
            raise RuntimeError(f"the detector {os.path.basename(models.detector.path)} in {self.model_dir} gives "
                               "no landmarks; a SCRFD model with keypoints (like det_10g.onnx) is needed")
        self.detector = models.detector
        self.recognizer = models.recognizer

    def __repr__(self):
        return (f"FaceAnalyser({self.pack} from {self.model_dir}, providers={self.providers}, "
                f"det_size={self.det_size})")

    def _detector_input(self, image: np.ndarray):
        """Shrink large photos with area averaging to the size SCRFD works at (SCRFD itself would
        use bilinear resizing, which aliases). Returns (picture, x scale, y scale) to map back."""
        height, width = image.shape[:2]
        size = self.det_size
        if height / width > 1.0:
            new_h, new_w = size, max(1, int(round(size * width / height)))
        else:
            new_w, new_h = size, max(1, int(round(size * height / width)))
        if new_w >= width or new_h >= height:
            return image, 1.0, 1.0
        small = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        return small, width / new_w, height / new_h

    def detect(self, image_bgr: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> list[Detection]:
        """All faces the detector scores at or above `threshold`, most confident first."""
        picture, sx, sy = self._detector_input(image_bgr)
        boxes, points = onnx_pack.detect(self.detector, picture, (self.det_size, self.det_size), float(threshold))
        scale = np.array([sx, sy], dtype=np.float64)
        return [Detection(box=(boxes[i, :4].astype(np.float64).reshape(2, 2) * scale).reshape(4),
                          landmarks=points[i].astype(np.float64) * scale, score=float(boxes[i, 4]))
                for i in range(boxes.shape[0])]

    def embed(self, image_bgr: np.ndarray, landmarks_list) -> np.ndarray:
        """L2-normalised ArcFace embeddings [N, 512] (float32) of the faces at the given 5-point
        landmarks, each cut with InsightFace's 112x112 norm_crop."""
        crops = [arcface_crop(image_bgr, np.asarray(l, dtype=np.float64)) for l in landmarks_list]
        if not crops:
            return np.zeros((0, 512), dtype=np.float32)
        feats = onnx_pack.embed(self.recognizer, crops).astype(np.float64)
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        if np.any(norms == 0) or not np.all(np.isfinite(feats)):
            raise RuntimeError("the recognition model returned an all-zero or non-finite embedding")
        return (feats / norms).astype(np.float32)


_CACHE: "OrderedDict[tuple, FaceAnalyser]" = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4


def _files_signature(model_dir: str):
    sig = []
    for name in sorted(os.listdir(model_dir)):
        if name.lower().endswith(".onnx"):
            st = os.stat(os.path.join(model_dir, name))
            sig.append((name, st.st_size, st.st_mtime_ns))
    return tuple(sig)


def load_analyser(model_dir: str, provider: str = "auto", det_size: int = DEFAULT_DET_SIZE,
                  pack: str = DEFAULT_PACK) -> FaceAnalyser:
    """A FaceAnalyser, reused while the folder's files, the provider and the size are unchanged."""
    model_dir = os.path.realpath(model_dir)
    check_model_dir(model_dir, pack)
    key = (model_dir, provider, int(det_size), pack, _files_signature(model_dir))
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            _CACHE.move_to_end(key)
            return cached
    analyser = FaceAnalyser(model_dir, provider=provider, det_size=det_size, pack=pack)
    with _CACHE_LOCK:
        _CACHE[key] = analyser
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return analyser


@dataclass(frozen=True)
class BoundAnalyser:
    """A loaded analyser together with the detection threshold chosen where it was loaded (what the
    pack's FACE_ANALYSIS values carry; the cached analyser itself is shared and holds no setting)."""

    analyser: FaceAnalyser
    threshold: float = DEFAULT_THRESHOLD

    @property
    def det_size(self) -> int:
        return self.analyser.det_size


# --- choosing faces -------------------------------------------------------------------------------

def reading_order(detections: list[Detection]) -> list[Detection]:
    """The documented order of faces within one image: left to right by box centre x, then top
    to bottom by box centre y."""
    return sorted(detections, key=lambda d: (round(d.centre[0], 3), round(d.centre[1], 3)))


def largest(detections: list[Detection]) -> Detection:
    """The face with the largest box area (the reference's choice); ties go to the first in
    reading order."""
    ordered = reading_order(detections)
    return max(ordered, key=lambda d: d.area)


def split_faces(detections: list[Detection], min_size: float = 0.0, max_faces: int = 0):
    """Share out the detections of one image: (to anonymize, too small, beyond max_faces).

    Faces whose box is shorter than `min_size` pixels (shorter side) are too small; of the rest,
    the `max_faces` largest are anonymized (0 = all) and the others are beyond. Nothing is dropped:
    every detection is in exactly one of the three lists, each in reading order.
    """
    small = [d for d in detections if d.size < min_size]
    rest = [d for d in detections if d.size >= min_size]
    beyond = []
    if max_faces and len(rest) > max_faces:
        ranked = sorted(rest, key=lambda d: -d.area)
        rest, beyond = ranked[:max_faces], ranked[max_faces:]
    return reading_order(rest), reading_order(small), reading_order(beyond)
