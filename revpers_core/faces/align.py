"""Face alignment: five landmarks -> similarity transform -> square crop.

The canonical template
----------------------
InsightFace's ArcFace template places the five landmarks (left eye, right eye, nose tip, left and
right mouth corner) in a 112x112 square at

    (38.2946, 51.6963) (73.5318, 51.5014) (56.0252, 71.7366) (41.5493, 92.3655) (70.7299, 92.2041)

Call that square the *face square* F (unit side). Our crops are cut around it:

* the square is first moved down by `vshift` x F (default 0.05), which gives the chin and jaw a
  little more room than the forehead;
* then it is grown by `padding` x F on every side (default 0.15), so the crop side is
  (1 + 2 padding) F and the crop runs from 0.10 F above the template square to 0.20 F below it.
  At the defaults the eyes are 24 % of the crop side apart and the eye line sits at 43 % of the
  crop height: between the framing of the reference implementation's 1024 px "whole face" crops
  (25 %, 40 %) and FFHQ's (eyes near mid-height), with the whole head from hairline to chin inside.
  padding = 0 and vshift = 0 give exactly InsightFace's 112 px ArcFace crop.

A point p of the 112 template (in units of F) lands in a crop of S pixels at

    q = S * ((p - (0.5, 0.5 + vshift)) / (1 + 2 padding) + 0.5)

in OpenCV pixel coordinates (integer = pixel centre), the convention InsightFace's norm_crop uses.

The transform from image to crop is the least-squares similarity (rotation, uniform scale,
translation; no reflection or shear) taking the detected landmarks onto the template points, so
crops are upright (eye line level) whatever the roll of the face in the photo.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

# InsightFace's ArcFace five-point template for a 112x112 crop (pixel coordinates).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
ARCFACE_SIZE = 112

DEFAULT_CROP_SIZE = 1024
DEFAULT_PADDING = 0.15
MAX_PADDING = 1.0
DEFAULT_VSHIFT = 0.05
MIN_CROP_SIZE = 64
MAX_CROP_SIZE = 2048

# The face region of a crop (the MASK Detect and Align Faces outputs): an ellipse centred on the moved face
# square, with semi-axes in units of F, clipped by the crop. Generous on purpose: paste-back feathers
# inwards from its edge (0.05 of the crop = 0.065 F at the default padding), and the whole face -
# forehead, cheeks, jaw line and chin, also of turned heads - must lie in the part that is replaced
# completely (tested with dlib's 68 points on real photos); the soft edge falls on hair, neck and
# background, which the inversion reproduces closely anyway.
MASK_SEMI_AXES = (0.65, 0.72)


def check_crop_size(size: int) -> int:
    size = int(size)
    if size < MIN_CROP_SIZE or size > MAX_CROP_SIZE or size % 8:
        raise ValueError(
            f"crop size {size} is not supported: use a multiple of 8 from {MIN_CROP_SIZE} to "
            f"{MAX_CROP_SIZE} (the latent of an SD/SDXL VAE is 1/8 of the image side)"
        )
    return size


def check_padding(padding: float) -> float:
    padding = float(padding)
    if not 0.0 <= padding <= MAX_PADDING:
        raise ValueError(f"padding {padding} is out of range: use 0 (tight face square) to {MAX_PADDING:g}")
    return padding


def template_points(size: int, padding: float = DEFAULT_PADDING, vshift: float = DEFAULT_VSHIFT) -> np.ndarray:
    """The five template landmarks in a crop of `size` pixels (5x2, OpenCV pixel coordinates)."""
    unit = ARCFACE_TEMPLATE_112 / ARCFACE_SIZE
    centre = np.array([0.5, 0.5 + vshift])
    return size * ((unit - centre) / (1.0 + 2.0 * padding) + 0.5)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform taking points `src` onto `dst` (both Nx2, N >= 2).

    Writing points as complex numbers z (source) and w (target), the model is w = a z + b with a
    complex a = s e^{i theta}. Minimising sum |a z_k + b - w_k|^2 gives, with centred points
    z' = z - mean z, w' = w - mean w:  a = sum w'_k conj(z'_k) / sum |z'_k|^2,  b = mean w - a mean z.
    (This is Umeyama's solution restricted to 2-D, where no reflection can arise.) Returns the 2x3
    matrix [[Re a, -Im a, Re b], [Im a, Re a, Im b]].
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(f"need matching point sets of at least 2 points, got {src.shape} and {dst.shape}")
    z = src[:, 0] + 1j * src[:, 1]
    w = dst[:, 0] + 1j * dst[:, 1]
    zc = z - z.mean()
    wc = w - w.mean()
    denom = float(np.sum(np.abs(zc) ** 2))
    if not np.isfinite(denom) or denom <= 1e-12:
        raise ValueError("landmarks are degenerate (all at one point); cannot align this face")
    a = np.sum(wc * np.conj(zc)) / denom
    b = w.mean() - a * z.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]], dtype=np.float64)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def transform_scale(matrix: np.ndarray) -> float:
    """The uniform scale of a similarity matrix (crop pixels per image pixel for image->crop)."""
    return math.sqrt(abs(float(np.linalg.det(matrix[:, :2]))))


def rotation_degrees(matrix: np.ndarray) -> float:
    return math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))


def footprint_roi(inverse: np.ndarray, size: int, height: int, width: int, margin: int):
    """Bounding box (x0, y0, x1, y1) in the image of the crop square mapped back by `inverse`,
    grown by `margin` and clipped to the image; None if it misses the image."""
    corners = np.array([[0, 0], [size, 0], [size, size], [0, size]], dtype=np.float64) - 0.5
    pts = transform_points(corners, inverse)
    x0 = max(int(math.floor(pts[:, 0].min())) - margin, 0)
    y0 = max(int(math.floor(pts[:, 1].min())) - margin, 0)
    x1 = min(int(math.ceil(pts[:, 0].max())) + margin + 1, width)
    y1 = min(int(math.ceil(pts[:, 1].max())) + margin + 1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def warp_to_crop(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Resample `image` (HxWxC, uint8 or float32) into a size x size crop with the image->crop
    `matrix`.

    Where the crop is much smaller than the face in the photo (scale < 1/2), the photo is first
    reduced with a Gaussian pyramid so the crop does not alias; the final resampling is Lanczos
    (8x8 taps). Crop pixels that fall outside the photo are filled by mirroring the photo at its
    edge (a plausible continuation for the diffusion model; they are never pasted back).
    """
    height, width = image.shape[:2]
    scale = transform_scale(matrix)
    levels = 0
    while scale * (2 ** levels) < 0.5:
        levels += 1
    margin = 8 * (2 ** levels) + 8
    roi = footprint_roi(invert_affine(matrix), size, height, width, margin)
    m = matrix.astype(np.float64).copy()
    if roi is not None:
        x0, y0, x1, y1 = roi
        src = image[y0:y1, x0:x1]
        m[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
    else:  # the crop lies wholly outside the photo: mirror the whole photo
        src = image
    for _ in range(levels):
        if min(src.shape[:2]) < 2:
            break
        src = cv2.pyrDown(src)
        m[:, :2] *= 2.0
    out = cv2.warpAffine(
        np.ascontiguousarray(src),
        m,
        (size, size),
        flags=cv2.INTER_LANCZOS4,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    if out.ndim == 2 and image.ndim == 3:
        out = out[:, :, None]
    if np.issubdtype(out.dtype, np.floating):
        np.clip(out, 0.0, 1.0, out=out)
    return out


def alignment_matrix(landmarks: np.ndarray, size: int, padding: float = DEFAULT_PADDING,
                     vshift: float = DEFAULT_VSHIFT) -> np.ndarray:
    """Image->crop similarity taking five landmarks onto the crop template."""
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if landmarks.shape != (5, 2):
        raise ValueError(f"expected 5 landmarks (eyes, nose, mouth corners), got {landmarks.shape[0]}")
    if not np.all(np.isfinite(landmarks)):
        raise ValueError("landmarks contain NaN or infinite values")
    return estimate_similarity(landmarks, template_points(size, padding, vshift))


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = DEFAULT_CROP_SIZE,
               padding: float = DEFAULT_PADDING, vshift: float = DEFAULT_VSHIFT):
    """Cut the aligned square crop of one face. Returns (crop, image->crop 2x3 matrix)."""
    matrix = alignment_matrix(landmarks, size, padding, vshift)
    return warp_to_crop(image, matrix, size), matrix


def arcface_crop(image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 112x112 ArcFace input for five landmarks, exactly as InsightFace's norm_crop cuts it
    (bilinear, black outside the image), so embeddings match the ones InsightFace computes."""
    matrix = estimate_similarity(np.asarray(landmarks, dtype=np.float64), ARCFACE_TEMPLATE_112)
    return cv2.warpAffine(image_bgr, matrix, (ARCFACE_SIZE, ARCFACE_SIZE), borderValue=0.0)


def face_mask(size: int, padding: float = DEFAULT_PADDING,
              semi_axes: tuple[float, float] = MASK_SEMI_AXES) -> np.ndarray:
    """The face region of a crop (size x size float32, 1 inside, 0 outside): an ellipse centred on
    the moved face square (centred in the crop whatever the shift) with semi-axes `semi_axes` x F,
    clipped to the crop."""
    face = size / (1.0 + 2.0 * padding)
    ax, ay = semi_axes[0] * face, semi_axes[1] * face
    coords = np.arange(size, dtype=np.float64) - size / 2.0
    inside = (coords[None, :] / ax) ** 2 + (coords[:, None] / ay) ** 2 <= 1.0
    return inside.astype(np.float32)
