"""Paste-back: put edited face crops into their photos through the inverse of the alignment.

Each crop comes with its face mask (crop space). The mask is feathered *inwards*: the blend
weight is alpha = mask x smoothstep(d / feather), where d is the distance (crop pixels) from the
pixel to the nearest pixel outside the mask or outside the crop. So alpha is exactly 0 on and
outside the mask edge and reaches the mask value `feather` pixels inside it: no hard seam, and the
crop never leaks beyond its mask.

Crop and weight are mapped into the photo with the inverse similarity (Lanczos for the crop,
bilinear for the weight; when the crop is more than twice the face's size in the photo it is first
reduced with a Gaussian pyramid). Several faces are blended at once, order-independently: with
weights alpha_i and warped crops c_i,

    out = I * prod_i (1 - alpha_i)  +  (1 - prod_i (1 - alpha_i)) * (sum_i alpha_i c_i / sum_i alpha_i)

which is the usual "over" blend for one face and, where faces overlap, shares the covered part
between them in proportion to their weights. Wherever every alpha_i is 0 the photo is copied
unchanged, bit for bit.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from .align import footprint_roi, invert_affine, transform_scale
from .pixels import colour_channels

DEFAULT_FEATHER = 0.05  # of the crop side: 51 px at 1024
MAX_FEATHER = 0.5


def check_feather(feather: float) -> float:
    feather = float(feather)
    if not 0.0 <= feather <= MAX_FEATHER:
        raise ValueError(f"feather {feather} is out of range: use 0 (hard edge) to {MAX_FEATHER} of the crop side")
    return feather

def feathered_alpha(mask: np.ndarray, feather_px: float) -> np.ndarray:
    """Blend weights in crop space from a face mask (SxS, values in 0..1)."""
    mask = np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)
    if feather_px <= 0:
        return mask.copy()
    region = (mask > 0).astype(np.uint8)
    # A zero border makes the crop edge count as "outside" for the distance.
    padded = cv2.copyMakeBorder(region, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    t = np.clip(dist / float(feather_px), 0.0, 1.0)
    ramp = t * t * (3.0 - 2.0 * t)
    return (mask * ramp).astype(np.float32)


def warp_to_image(crop: np.ndarray, alpha: np.ndarray, matrix: np.ndarray, height: int, width: int):
    """Map one crop and its blend weights into the photo. Returns (roi, crop_part, alpha_part)
    where roi = (x0, y0, x1, y1) is the photo window they cover, or None if the crop misses it.
    `matrix` is the image->crop transform for this crop's size."""
    size = crop.shape[0]
    roi = footprint_roi(invert_affine(matrix), size, height, width, margin=2)
    if roi is None:
        return None
    x0, y0, x1, y1 = roi
    m = matrix.astype(np.float64).copy()
    m[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
    src, weight = crop, alpha
    scale = transform_scale(m)  # crop pixels per photo pixel
    while scale > 2.0 and min(src.shape[:2]) >= 2:
        src = cv2.pyrDown(src)
        weight = cv2.pyrDown(weight)
        m /= 2.0
        scale /= 2.0
    if src.ndim == 2:
        src = src[:, :, None]
    dsize = (x1 - x0, y1 - y0)
    part = cv2.warpAffine(
        np.ascontiguousarray(src), m, dsize,
        flags=cv2.INTER_LANCZOS4 | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
    )
    if part.ndim == 2:
        part = part[:, :, None]
    np.clip(part, 0.0, 1.0, out=part)
    a = cv2.warpAffine(
        np.ascontiguousarray(weight), m, dsize,
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0,
    )
    np.clip(a, 0.0, 1.0, out=a)
    return roi, part, a


def paste_faces(image: np.ndarray, pieces) -> tuple[np.ndarray, np.ndarray]:
    """Blend edited crops into one photo.

    image: HxWxC float32 in 0..1 (C = 1, 3 or 4; with 4 the alpha channel is kept as it is).
    pieces: iterable of (crop SxSx3 float32, alpha SxS float32 from feathered_alpha, image->crop
    2x3 matrix for that S).
    Returns (new image, coverage HxW float32 = 1 - prod(1 - alpha_i)). Pixels with coverage 0 are
    bit-identical to the input.
    """
    image = np.asarray(image, dtype=np.float32)
    height, width, channels = image.shape
    colour = 1 if channels == 1 else 3
    warped = []
    for crop, alpha, matrix in pieces:
        crop = colour_channels(np.asarray(crop, dtype=np.float32), colour)  # the photo's layout, alpha kept apart
        got = warp_to_image(crop, np.asarray(alpha, dtype=np.float32), matrix, height, width)
        if got is not None:
            warped.append(got)
    coverage = np.zeros((height, width), dtype=np.float32)
    out = image.copy()
    if not warped:
        return out, coverage
    ux0 = min(r[0] for r, _, _ in warped)
    uy0 = min(r[1] for r, _, _ in warped)
    ux1 = max(r[2] for r, _, _ in warped)
    uy1 = max(r[3] for r, _, _ in warped)
    shape = (uy1 - uy0, ux1 - ux0)
    num = np.zeros(shape + (colour,), dtype=np.float64)
    den = np.zeros(shape, dtype=np.float64)
    keep = np.ones(shape, dtype=np.float64)
    for (x0, y0, x1, y1), part, a in warped:
        ys, xs = slice(y0 - uy0, y1 - uy0), slice(x0 - ux0, x1 - ux0)
        num[ys, xs] += a[:, :, None].astype(np.float64) * part
        den[ys, xs] += a
        keep[ys, xs] *= 1.0 - a.astype(np.float64)
    touched = den > 0
    region = out[uy0:uy1, ux0:ux1, :colour].astype(np.float64)
    blend = num / np.where(touched, den, 1.0)[:, :, None]
    mixed = region * keep[:, :, None] + (1.0 - keep[:, :, None]) * blend
    mixed = np.clip(mixed, 0.0, 1.0).astype(np.float32)
    target = out[uy0:uy1, ux0:ux1, :colour]
    target[touched] = mixed[touched]
    coverage[uy0:uy1, ux0:ux1] = np.where(touched, 1.0 - keep, 0.0).astype(np.float32)
    return out, coverage


# A face too small for the model is covered by an ellipse around its detected box, grown by these
# factors (the box of a detector runs from the brows to the chin; the fill also takes the forehead,
# the cheeks and the jaw line), filled with one flat colour: no identity can survive it.
COVER_GROWTH = (1.3, 1.5)


def cover_faces(image: np.ndarray, coverage: np.ndarray, boxes) -> tuple[np.ndarray, np.ndarray]:
    """Fill the region of each face box with the mean colour of that region.

    image HxWxC float32 (alpha, if any, kept as it is); coverage HxW, set to 1 where filled;
    boxes: (x1, y1, x2, y2) in image pixels. Returns (image, coverage), copies when anything is
    filled."""
    if not len(boxes):
        return image, coverage
    image, coverage = image.copy(), coverage.copy()
    height, width = image.shape[:2]
    for box in boxes:
        fill_flat(image, coverage, cover_ellipse(height, width, box))
    return image, coverage


def cover_ellipse(height: int, width: int, box) -> np.ndarray:
    """Where a face box is covered (bool HxW): the ellipse around it, grown by COVER_GROWTH."""
    x1, y1, x2, y2 = box
    centre = ((x1 + x2) / 2.0, (y1 + y2) / 2.0)
    axes = (max(1.0, (x2 - x1) * COVER_GROWTH[0] / 2.0), max(1.0, (y2 - y1) * COVER_GROWTH[1] / 2.0))
    region = np.zeros((height, width), dtype=np.uint8)
    cv2.ellipse(region, (int(round(centre[0])), int(round(centre[1]))),
                (int(math.ceil(axes[0])), int(math.ceil(axes[1]))), 0, 0, 360, 1, thickness=-1)
    return region.astype(bool)


def fill_flat(image: np.ndarray, coverage: np.ndarray, inside: np.ndarray) -> None:
    """The certain fill, in place: every pixel of `inside` (bool HxW) takes the mean colour of that region
    (alpha, if any, kept), and `coverage` becomes 1 there. No identity can survive one flat colour."""
    if not inside.any():
        return
    colour = 1 if image.shape[2] == 1 else 3
    image[inside, :colour] = image[inside, :colour].mean(axis=0)
    coverage[inside] = 1.0


def mark_left_faces(image: np.ndarray, boxes) -> np.ndarray:
    """The photo with each face left un-anonymized by request outlined in red, and a red banner
    saying how many there are (the faces themselves are not touched)."""
    out = np.asarray(image, dtype=np.float32).copy()
    height, width, channels = out.shape
    colour = 1 if channels == 1 else 3
    paint = np.ones(colour, np.float32) if channels == 1 else np.array([1.0, 0.0, 0.0], np.float32)
    line = max(2, int(round(0.006 * min(height, width))))
    for x1, y1, x2, y2 in boxes:
        gx, gy = 0.15 * (x2 - x1), 0.25 * (y2 - y1)
        xa, ya = max(0, int(x1 - gx)), max(0, int(y1 - gy))
        xb, yb = min(width, int(math.ceil(x2 + gx))), min(height, int(math.ceil(y2 + gy)))
        for region in (out[ya:ya + line, xa:xb], out[max(ya, yb - line):yb, xa:xb],
                       out[ya:yb, xa:xa + line], out[ya:yb, max(xa, xb - line):xb]):
            region[..., :colour] = paint
    n = len(boxes)
    return mark_not_anonymized(out, f"{n} FACE{'S' if n != 1 else ''} LEFT UN-ANONYMIZED")


def mark_not_anonymized(image: np.ndarray, label: str = "NOT ANONYMIZED") -> np.ndarray:
    """A visibly marked copy of a photo that is passed through without anonymization: a red frame
    and, where the photo is tall enough, a red banner across the top carrying `label`.
    (Grey images get a white frame and banner with black text.)"""
    image = np.asarray(image, dtype=np.float32)
    out = image.copy()
    height, width, channels = out.shape
    if channels == 1:
        paint, ink = np.array([1.0], np.float32), np.array([0.0], np.float32)
    else:
        paint, ink = np.array([1.0, 0.0, 0.0], np.float32), np.array([1.0, 1.0, 1.0], np.float32)
    colour = 1 if channels == 1 else 3
    frame = max(2, int(round(0.015 * min(height, width))))
    frame = min(frame, max(1, min(height, width) // 4))
    for region in (out[:frame], out[-frame:], out[:, :frame], out[:, -frame:]):
        region[..., :colour] = paint
        if channels == 4:
            region[..., 3] = 1.0
    banner = int(round(min(max(0.07 * height, 14), 60)))
    if height >= 3 * banner and width >= 40:
        out[:banner, :, :colour] = paint
        if channels == 4:
            out[:banner, :, 3] = 1.0
        font = cv2.FONT_HERSHEY_SIMPLEX
        thickness = max(1, banner // 14)
        (tw, th), _ = cv2.getTextSize(label, font, 1.0, thickness)
        fscale = min((banner * 0.6) / th, (width - 2 * frame - 8) / tw)
        (tw, th), _ = cv2.getTextSize(label, font, fscale, thickness)
        glyphs = np.zeros((banner, width), dtype=np.uint8)
        org = (max(frame + 4, (width - tw) // 2), (banner + th) // 2)
        cv2.putText(glyphs, label, org, font, fscale, 255, thickness, cv2.LINE_AA)
        weight = (glyphs.astype(np.float32) / 255.0)[:, :, None]
        strip = out[:banner, :, :colour]
        out[:banner, :, :colour] = strip * (1.0 - weight) + ink * weight
    return out
