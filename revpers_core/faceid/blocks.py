"""Tensors laid out end to end in one block of memory of their own (one allocation)."""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch


def _empty_block(shapes: Sequence[Sequence[int]], dtype: torch.dtype, device) -> Tuple[torch.Tensor, list]:
    """One flat uninitialised tensor and views of it of ``shapes``, in order, end to end."""
    sizes = [math.prod(shape) for shape in shapes]
    flat = torch.empty(sum(sizes), dtype=dtype, device=device)
    return flat, [part.view(shape) for part, shape in zip(flat.split(sizes), shapes)]


def _one_block(tensors: Sequence[torch.Tensor]) -> list:
    """Copies of ``tensors``, in order, as views of one flat tensor of the dtype they share (tensors of mixed
    dtypes are copied one by one instead)."""
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1:
        return [t.clone() for t in tensors]  # mixed dtypes (no file we know): each its own copy
    _, views = _empty_block([t.shape for t in tensors], dtypes.pop(), tensors[0].device)
    for view, t in zip(views, tensors):
        view.copy_(t)
    return views
