"""Helpers for the face tests: real photos that ship in installed packages, real 5-point landmarks
from dlib's HOG detector and 68-point model (weights from face_recognition_models), stand-in
buffalo_l folders, marker-face pictures, and picture artifacts."""
import filecmp
import importlib.util
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from paths import artifact_dir


def insightface_image(name):
    """A photo from the insightface wheel's data/images (RGB uint8)."""
    spec = importlib.util.find_spec("insightface")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "images"
    bgr = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(folder / name)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def astronaut():
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@lru_cache(maxsize=1)
def _dlib_models():
    import dlib

    # face_recognition_models' __init__ needs pkg_resources; its data folder is all we need.
    spec = importlib.util.find_spec("face_recognition_models")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    predictor = dlib.shape_predictor(str(folder / "shape_predictor_68_face_landmarks.dat"))
    return dlib.get_frontal_face_detector(), predictor


def dlib_faces(rgb, min_score=0.3, upsample=1, all_points=False):
    """Faces dlib finds: list of (box [x1, y1, x2, y2], 5x2 landmarks, score), left to right
    (with all_points, a fourth item: the 68 points).
    The five points follow InsightFace's order: eye centres (means of points 36-41 and 42-47),
    nose tip (30), mouth corners (48, 54)."""
    detector, predictor = _dlib_models()
    rects, scores, _ = detector.run(np.ascontiguousarray(rgb), upsample, 0)
    found = []
    for rect, score in zip(rects, scores):
        if score < min_score:
            continue
        shape = predictor(np.ascontiguousarray(rgb), rect)
        p = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)
        five = np.array([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])
        box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float64)
        found.append((box, five, float(score), p) if all_points else (box, five, float(score)))
    found.sort(key=lambda f: (f[0][0] + f[0][2]) / 2)
    return found


def to_float(rgb):
    return rgb.astype(np.float32) / 255.0


def to_uint8(img):
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_rgb(area, name, rgb):
    """Write an RGB picture (uint8 or float 0..1) under artifacts/<area>/ and return its path."""
    if rgb.dtype != np.uint8:
        rgb = to_uint8(rgb)
    if rgb.ndim == 3 and rgb.shape[2] == 1:
        rgb = rgb[:, :, 0]
    path = artifact_dir(area) / name
    out = rgb if rgb.ndim == 2 else rgb[:, :, ::-1]
    cv2.imwrite(str(path), out)
    return path


def write_standin_pack(folder, seed=0):
    """Make `folder` hold the stand-in buffalo_l files for `seed`, rewriting only files whose bytes
    differ (so a folder reused across test runs keeps its modification times and any loaded
    analyser stays valid)."""
    from revpers_cli.standins.buffalo_l import write_buffalo_l

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for path in write_buffalo_l(tmp, seed=seed):
            target = folder / os.path.basename(path)
            if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                _copy(path, target)
    return folder


def _copy(src, dst):
    data = Path(src).read_bytes()
    tmp = Path(str(dst) + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, dst)


# Marker faces (what the stand-in detector detects): centre (x, y), radius, pattern seed.
MARKER_FACES = [((170, 210), 60, 11), ((470, 260), 90, 22), ((760, 170), 45, 33)]


def marker_photo(width=960, height=540, faces=MARKER_FACES, seed=0):
    """An RGB uint8 picture with a textured, face-free background and marker faces."""
    from revpers_cli.standins.buffalo_l import draw_marker_face

    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([
        90 + 40 * np.sin(xs / 37.0) + 20 * np.cos(ys / 23.0),
        120 + 50 * np.cos(xs / 53.0 + ys / 41.0),
        100 + 30 * np.sin(ys / 29.0),
    ], axis=-1)
    base += rng.normal(0, 6, size=base.shape)
    img = np.clip(base, 0, 255).astype(np.uint8)
    for centre, radius, pattern in faces:
        draw_marker_face(img, centre, radius, seed=pattern)
    return img


def record_figures(name, figures):
    """Keep measured figures (tolerances reached, counts) as artifacts/faces/figures/<name>.json
    and print them (shown with pytest -s)."""
    import json

    path = artifact_dir("faces/figures") / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2, default=float))
    print(f"\n[figures] {name}: {json.dumps(figures, default=float)}")
    return path


CROP = 256  # the crop size faces are swapped at


def outsiders():
    """Faces of people who are not in the group photo: (RGB float, Detection)."""
    from revpers_core.faces import recognizers

    hog = recognizers.DlibHOG(upsample=2)
    out = []
    for rgb in (to_float(astronaut()), to_float(cv2.resize(insightface_image("Tom_Hanks_54745.png"), (336, 336)))):
        found = max(hog.detect(rgb), key=lambda d: d.area)
        out.append((rgb, found))
    return out


def put_faces(photo, places, donors):
    """`photo` with the face of donor i pasted over places[i] (aligned by the five landmarks, blended
    with the pack's own face mask and paste-back): a face swap, as an attacker or a bad tool would."""
    from revpers_core.faces.align import align_face, face_mask
    from revpers_core.faces.paste import feathered_alpha, paste_faces

    mask = feathered_alpha(face_mask(CROP), 0.05 * CROP)
    pieces = []
    for place, (donor_rgb, donor) in zip(places, donors):
        crop, _ = align_face(donor_rgb, donor.landmarks, CROP)
        _, to_crop = align_face(photo, place.landmarks, CROP)
        pieces.append((crop, mask, to_crop))
    out, _ = paste_faces(photo, pieces)
    return out
