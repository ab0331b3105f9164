"""Channel layouts of the pictures the face stages handle: grey (HxW or HxWx1), RGB and RGBA.

The stages work on the colour part of a picture (alpha is never looked at, and is kept as it was
where a picture is written back); InsightFace and dlib take BGR / RGB uint8.
"""
from __future__ import annotations

import numpy as np

CHANNELS = (1, 3, 4)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as OpenCV's RGB -> grey


def colour_channels(image: np.ndarray, channels: int = 3) -> np.ndarray:
    """The colour part of a picture in `channels` channels: 3 gives RGB (grey repeated), 1 gives grey
    (RGB by luma, as float32). Alpha is dropped; otherwise the dtype is kept."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    have = image.shape[2]
    if have not in CHANNELS:
        raise ValueError(f"images with {have} channels are not supported (use 1, 3 or 4)")
    if have == 4:
        image, have = image[:, :, :3], 3
    if have == channels:
        return image
    if channels == 3:
        return np.repeat(image, 3, axis=2)
    if channels == 1:
        return (image @ LUMA)[:, :, None].astype(np.float32)
    raise ValueError(f"colour channels are 1 (grey) or 3 (RGB), not {channels}")


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """An RGB(A)/grey image (HxWxC, float in 0..1 or uint8) as contiguous RGB uint8 (what dlib takes).
    Alpha is ignored (faces are looked for in the colour channels)."""
    rgb = colour_channels(image, 3)
    if rgb.dtype != np.uint8:
        rgb = (np.clip(rgb.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def to_bgr_uint8(image: np.ndarray) -> np.ndarray:
    """The same as BGR, the picture InsightFace expects."""
    return np.ascontiguousarray(to_rgb_uint8(image)[:, :, ::-1])
