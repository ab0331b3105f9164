"""ComfyUI IMAGE / MASK tensors <-> the numpy arrays revpers_core.faces works on.

ComfyUI's IMAGE is a float tensor [B, H, W, C] in 0..1 (C = 3 from LoadImage; graphs can also
deliver 1 or 4 channels), MASK a float tensor [B, H, W] (or [H, W]).
"""
import numpy as np
import torch

CHANNELS = (1, 3, 4)


def _batch(value, name, kind, layout):
    """A ComfyUI tensor input with its batch dimension: `layout` names its dimensions, batch first (one
    dimension fewer is taken as a batch of one); TypeError or ValueError naming the input otherwise."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be {kind} tensor [{', '.join(layout)}], got {type(value).__name__}")
    if value.ndim == len(layout) - 1:
        value = value[None]
    if value.ndim != len(layout):
        raise ValueError(f"{name} must be {kind} batch [{', '.join(layout)}], got shape {tuple(value.shape)}")
    return value


def _numpy(value):
    return value.detach().to("cpu", torch.float32).numpy()


def image_array(images, name="image"):
    """An IMAGE batch as one [B, H, W, C] float32 array, refusing shapes the face stages can't use."""
    images = _batch(images, name, "a ComfyUI IMAGE", ("B", "H", "W", "C"))
    batch, height, width, channels = images.shape
    if batch == 0:
        raise ValueError(f"{name} is an empty batch")
    if channels not in CHANNELS:
        raise ValueError(f"{name} has {channels} channels; use grey (1), RGB (3) or RGBA (4) images")
    if height < 2 or width < 2:
        raise ValueError(f"{name} is {width}x{height} pixels, too small to hold a face")
    return np.ascontiguousarray(_numpy(images))


def image_batch(images, name="image"):
    """An IMAGE batch as a list of HxWxC float32 arrays (see image_array)."""
    return list(image_array(images, name))


def _batch_tensor(arrays, ndim):
    """A batch array of `ndim` dimensions, or a list of equally sized arrays, as a float32 tensor."""
    if not (isinstance(arrays, np.ndarray) and arrays.ndim == ndim):
        arrays = np.stack([np.asarray(a, dtype=np.float32) for a in arrays])
    return torch.from_numpy(np.ascontiguousarray(arrays, dtype=np.float32))


def to_image(arrays):
    """A [B, H, W, C] array or a list of equally sized HxWxC arrays as an IMAGE tensor."""
    return _batch_tensor(arrays, 4)


def mask_batch(masks, name="mask"):
    """A MASK batch ([B, H, W], [H, W] or [B, H, W, 1]) as a [B, H, W] float32 array; None stays None."""
    if masks is None:
        return None
    if isinstance(masks, torch.Tensor) and masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    return _numpy(_batch(masks, name, "a ComfyUI MASK", ("B", "H", "W")))


def to_mask(arrays):
    """A [B, H, W] array or a list of equally sized HxW arrays as a MASK tensor."""
    return _batch_tensor(arrays, 3)


def embedding_rows(embedding, name="embedding"):
    """An EMBEDDING value (float tensor [N, 512], or one row [512]) as a numpy array [N, 512]."""
    return _numpy(_batch(embedding, name, "an identity embedding", ("N", "512")))
