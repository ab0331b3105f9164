"""The row budget: how many latent rows one model call may carry, and the face chunks that keep to it.

Every step of the inversion and of the anonymized sampling is one model call over all faces of a
chunk and both branches (a conditional and an unconditional row per face). A clip's frames times
faces can be far more rows than a device holds, so faces are taken in chunks of at most
``max_rows // 2`` faces, each chunk run through all steps before the next. Each face's noise comes
from its own generator, its identity tokens are its own, and the UNet's per-row layers are computed
as for a face alone (`RowPairs`), so a face's result does not depend on which chunk it is in, nor on
how many faces share it. ``max_rows`` 0 means automatic: as many rows as the device's free memory holds
by the host's own estimate of a model call's memory (``automatic_rows``).
"""
from __future__ import annotations

import torch

ROWS_PER_FACE = 2   # the conditional and the unconditional branch
MAX_ROWS = 4096     # the widget's upper bound
FREE_MEMORY_SHARE = 0.8  # of the free memory, what the activations may take


def check_max_rows(max_rows: int) -> int:
    rows = int(max_rows)
    if rows != 0 and not ROWS_PER_FACE <= rows <= MAX_ROWS:
        raise ValueError(f"max_rows {max_rows} is out of range: use 0 (automatic, from the free memory) or "
                         f"{ROWS_PER_FACE}..{MAX_ROWS} (each face takes {ROWS_PER_FACE} rows: both branches)")
    return rows


def automatic_rows(free_bytes: float, bytes_for_rows) -> int:
    """The most rows whose model call fits in FREE_MEMORY_SHARE of ``free_bytes``, by ``bytes_for_rows(n)``
    (the host's estimate for a call of n rows); at least one face's rows."""
    budget = FREE_MEMORY_SHARE * float(free_bytes)
    one, two = float(bytes_for_rows(1)), float(bytes_for_rows(2))
    per_row = max(two - one, 1.0)
    fixed = max(one - per_row, 0.0)
    rows = int((budget - fixed) // per_row)
    return max(ROWS_PER_FACE, min(rows, MAX_ROWS))


def face_chunks(faces: int, max_rows: int) -> list[tuple[int, int]]:
    """(start, stop) face ranges of at most max_rows // 2 faces each, covering 0..faces in order."""
    per_chunk = max(1, int(max_rows) // ROWS_PER_FACE)
    return [(a, min(a + per_chunk, faces)) for a in range(0, faces, per_chunk)]


# --- the same result in any chunk ------------------------------------------------------------------
#
# Matrix-product kernels pick their code path by the number of rows they multiply, and the paths round
# differently (measured on this project's 2-core CPU with torch's MKL: a product of 2 rows, of 6, and of
# 16 give a row three different last bits). A diffusion UNet's per-row layers (the timestep and size
# embeddings, each residual block's embedding projection) multiply one vector per batch row, so a face
# alone (a call of 2 rows: both branches) and the same face among three (6 rows) would differ in the
# last bits, and negative guidance amplifies that into the result. These layers are therefore computed
# two rows at a time, the shape of one face alone (`RowPairs`); the 2-row path gives a row the same
# result whatever row it is paired with, so every face gets what it gets alone, in any chunk. The
# other layers multiply rows × tokens rows at once, where the kernels take one path whatever the count.


class RowPairs:
    """A per-row layer's forward (input [rows, features]) computed two rows at a time, the last odd row
    paired with a zero row; with one or two rows it is the forward itself."""

    def __init__(self, forward):
        self.forward = forward

    def __call__(self, x, *args, **kwargs):
        rows = int(x.shape[0])
        if x.ndim != 2 or rows <= ROWS_PER_FACE:
            return self.forward(x, *args, **kwargs)
        parts = []
        for start in range(0, rows, ROWS_PER_FACE):
            pair = x[start:start + ROWS_PER_FACE]
            if pair.shape[0] < ROWS_PER_FACE:
                pair = torch.cat([pair, pair.new_zeros((ROWS_PER_FACE - pair.shape[0], x.shape[1]))])
            parts.append(self.forward(pair, *args, **kwargs)[:rows - start])
        return torch.cat(parts)

    def __eq__(self, other):
        return isinstance(other, RowPairs) and other.forward == self.forward

    def __hash__(self):
        return hash(self.forward)
