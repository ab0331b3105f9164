"""ComfyUI IMAGE / MASK tensors <-> the numpy arrays revpers_core.faces works on.

ComfyUI's IMAGE is a float tensor [B, H, W, C] in 0..1 (C = 3 from LoadImage; graphs can also
deliver 1 or 4 channels), MASK a float tensor [B, H, W] (or [H, W]).
"""
import numpy as np
import torch

CHANNELS = (1, 3, 4)


def image_array(images, name="image"):
    """An IMAGE batch as one [B, H, W, C] float32 array, refusing shapes the face stages can't use."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a ComfyUI IMAGE tensor, got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"{name} must be an IMAGE batch [B, H, W, C], got shape {tuple(images.shape)}")
    batch, height, width, channels = images.shape
    if batch == 0:
        raise ValueError(f"{name} is an empty batch")
    if channels not in CHANNELS:
        raise ValueError(f"{name} has {channels} channels; use grey (1), RGB (3) or RGBA (4) images")
    if height < 2 or width < 2:
        raise ValueError(f"{name} is {width}x{height} pixels, too small to hold a face")
    return np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())


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
    if masks is None:
        return None
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"{name} must be a ComfyUI MASK tensor, got {type(masks).__name__}")
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if masks.ndim != 3:
        raise ValueError(f"{name} must be a MASK batch [B, H, W], got shape {tuple(masks.shape)}")
    return masks.detach().to("cpu", torch.float32).numpy()


def to_mask(arrays):
    """A [B, H, W] array or a list of equally sized HxW arrays as a MASK tensor."""
    return _batch_tensor(arrays, 3)


def embedding_rows(embedding, name="embedding"):
    """An EMBEDDING value (float tensor [N, 512]) as a numpy array."""
    if not isinstance(embedding, torch.Tensor):
        raise TypeError(f"{name} must be an identity embedding tensor [N, 512], got {type(embedding).__name__}")
    if embedding.ndim == 1:
        embedding = embedding[None]
    if embedding.ndim != 2:
        raise ValueError(f"{name} must be [N, 512], got shape {tuple(embedding.shape)}")
    return embedding.detach().to("cpu", torch.float32).numpy()
