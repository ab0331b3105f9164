"""Attribute modulation, on the identity side: rotate, flip and scale ArcFace embeddings before they
condition the identity branch (the attribute text itself is a conditioning, encoded by the node).

The paper's reference samples, per face, a random direction orthogonal to the embedding e and rotates
e towards it by an angle drawn uniformly from [0, max_angle] degrees (magnitude kept), optionally after
flipping e to −e, then scales the result. Its random draws are NumPy's legacy generator seeded with the
run's seed (one uniform angle, then one standard-normal vector), which `modulate_identity` reproduces
with a private ``RandomState`` per face, so face i of a batch gets what it would get alone.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["MAX_ANGLE", "modulate_identity", "rotate_within_angle"]

MAX_ANGLE = 180.0  # degrees: beyond it a rotation comes round again


def rotate_within_angle(e: np.ndarray, max_angle_deg: float, rng: np.random.RandomState) -> np.ndarray:
    """Rotate e (1-D) by θ ~ U[0, max_angle] in the plane of e and a random direction u ⟂ e:
    e' = |e| (cos θ ê + sin θ û)."""
    magnitude = np.linalg.norm(e)
    if magnitude == 0:
        return e.copy()
    unit = e / magnitude
    theta = rng.uniform(0, np.radians(max_angle_deg))
    direction = rng.randn(len(unit))
    direction -= direction.dot(unit) * unit
    direction = direction / np.linalg.norm(direction)
    return (np.cos(theta) * unit + np.sin(theta) * direction) * magnitude


def modulate_identity(embeddings: torch.Tensor, max_angle: float = 0.0, opposite: bool = False,
                      scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Embeddings [B, E] → modulated embeddings [B, E] (float32): e ← −e if ``opposite``; e ← a random
    rotation of e by at most ``max_angle`` degrees (seeded, magnitude kept; none when 0); e ← scale·e."""
    e = torch.as_tensor(embeddings)
    if e.ndim != 2:
        raise ValueError(f"identity embeddings must be [faces, dims] (got shape {tuple(e.shape)})")
    if not (0.0 <= float(max_angle) <= MAX_ANGLE):
        raise ValueError(f"max_angle must be between 0 and {MAX_ANGLE:g} degrees (got {max_angle})")
    # Same dtypes as the reference: the embedding stays float32 until the rotation promotes it to float64.
    rows = e.detach().to(device="cpu", dtype=torch.float32)
    if opposite:
        rows = -rows
    rows = rows.numpy()
    out = rows.astype(np.float64)
    if max_angle > 0:
        for i in range(rows.shape[0]):
            out[i] = rotate_within_angle(rows[i], float(max_angle), np.random.RandomState(int(seed) % 2 ** 32))
    return (torch.from_numpy(out) * float(scale)).to(torch.float32)
