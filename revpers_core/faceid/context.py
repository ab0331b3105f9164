"""The LoRA's products of the text context, kept while a run lasts (`ContextProducts`)."""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Tuple

import torch

from .blocks import _empty_block

CONTEXT_PRODUCT_BYTES = 256 << 20  # what the LoRA's products of the text context may hold while a run lasts
CONTEXT_ENTRIES = 4  # distinct text contexts whose products a run keeps at once


class _Context:
    """One distinct text context of a run: its distinct rows and the LoRA's products of them, all in one
    block of memory (one allocation, handed back whole when the run ends)."""

    def __init__(self, rows: torch.Tensor, widths: Dict[Tuple[int, str], int]):
        u, length = rows.shape[:2]
        self.rows = rows  # [u, L, D]: the context's distinct rows, in the order they first appear
        self.block, views = _empty_block([(u, length, w) for w in widths.values()], rows.dtype, rows.device)
        self.views: Dict[Tuple[int, str], torch.Tensor] = dict(zip(widths, views))  # each projection's product
        self.filled: set = set()  # the projections whose product is in its view

    @property
    def nbytes(self) -> int:
        return (self.rows.numel() + self.block.numel()) * self.rows.element_size()


class ContextProducts:
    """The LoRA's products of the text context, kept while a run lasts.

    A cross-attention's key and value projections take the text context c (the prompt's tokens, one row per
    latent), which is the same at every step of a run; the LoRA's part of them, up · (down · c), is then the
    same too. Within `kept` (one run of the sampler over one chunk of faces) each distinct context's product
    is formed at its first call and reused at the later ones, without their arithmetic: the same products of
    the same rows, equal bit for bit to forming them at every call (tests/test_model_patches.py). Rows are
    told apart by value, so the products of the rows that repeat (every face with the same prompt) are formed
    and held once; a context is told apart by value too, except that the very tensor seen last is taken as
    unchanged (a model call does not write into its conditioning). What is kept is bounded: at most
    ``max_bytes`` (rows and products; a context that would not fit is not kept, its products formed at every
    call as without this) and `CONTEXT_ENTRIES` contexts, the least recently used dropped first; all of it
    goes when the run ends (for SDXL: about 100 MiB for two distinct rows, a prompt and its negative).
    Outside `kept` nothing is kept."""

    def __init__(self, widths: Callable[[], Dict[Tuple[int, str], int]], max_bytes: int = CONTEXT_PRODUCT_BYTES):
        self._widths_of, self.max_bytes = widths, max_bytes
        self.formed = 0  # products formed (each of one projection for one context's distinct rows, or per call)
        self._depth = 0
        self._entries: list = []  # _Context, most recently used last
        self._last = None  # (the context tensor seen last, its _Context, the index of its rows)

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return sum(e.nbytes for e in self._entries)

    @contextlib.contextmanager
    def kept(self):
        """Keep products while this lasts (nested: until the outermost ends); then let all of them go."""
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                self.clear()

    def clear(self) -> None:
        self._entries.clear()
        self._last = None

    def product(self, key: Tuple[int, str], x: torch.Tensor, form: Callable[[torch.Tensor], torch.Tensor]):
        """``form(x)`` (the LoRA's product for projection ``key``), kept for ``x``'s context while a run lasts."""
        found = self._context(x) if self._depth and x.ndim == 3 else None
        if found is None:
            self.formed += 1
            return form(x)
        entry, index = found
        product = entry.views[key]
        if key not in entry.filled:
            product.copy_(form(entry.rows))
            entry.filled.add(key)
            self.formed += 1
        return product if index is None else product.index_select(0, index)

    def _context(self, x: torch.Tensor):
        """(the kept _Context of ``x``, the index of its rows there or None where they are its rows in order),
        or None where ``x``'s context is not kept and will not fit."""
        if self._last is not None and self._last[0] is x:  # the other layers of the same call
            return None if self._last[1] is None else self._last[1:]
        distinct: list = []
        order = []
        for row in x:
            at = next((i for i, d in enumerate(distinct) if torch.equal(row, d)), None)
            if at is None:
                at = len(distinct)
                distinct.append(row)
            order.append(at)
        index = None if order == list(range(len(x))) else torch.tensor(order, device=x.device)
        entry = next((e for e in self._entries if e.rows.shape[0] == len(distinct) and e.rows.dtype == x.dtype
                      and e.rows.device == x.device and all(torch.equal(r, d) for r, d in zip(e.rows, distinct))),
                     None)
        if entry is not None:
            self._entries.remove(entry)
        else:
            widths = self._widths_of()
            need = len(distinct) * x.shape[1] * (x.shape[2] + sum(widths.values())) * x.element_size()
            if need > self.max_bytes:
                self._last = (x, None, None)  # told once per call, not at every layer
                return None
            while self._entries and (len(self._entries) >= CONTEXT_ENTRIES or self.nbytes + need > self.max_bytes):
                self._entries.pop(0)
            entry = _Context(torch.stack(distinct), widths)
        self._entries.append(entry)
        self._last = (x, entry, index)
        return entry, index
