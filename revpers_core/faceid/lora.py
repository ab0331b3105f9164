"""The FaceID LoRA added at run time: y = W x + up · (down · x), without forming W + up · down."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .adapter import FaceIDAdapter


class LoraForward:
    """A projection with the FaceID LoRA added at run time: y = W x + up · (down · x), the same as the merged
    weight (W + up · down) x at weight 1 without forming W + up · down. The factors are processor ``n``'s
    ``proj`` pair of ``adapter`` (no copy), cast at each call to the input's device and dtype where they
    differ, as ComfyUI casts the UNet's own weights: a float16 file's factors in a float32 computation (the
    CPU) cost their file's bytes between calls and one pair's cast at a time during one (on SDXL about 25 ms
    of casting per call on a 2-core CPU; kept in float32 instead they held 244 MiB more for the server's whole
    life). ``forward`` is the projection's own forward (W x, bias included). A cross-attention's keys and
    values take the text context, the same at every step: while a run keeps them (`ContextProducts.kept`),
    their products up · (down · c) are formed once per distinct context and reused, bit for bit what each call
    would form."""

    def __init__(self, forward, adapter: FaceIDAdapter, n: int, proj: str):
        self.forward, self.adapter, self.n, self.proj = forward, adapter, n, proj
        self.reads_context = adapter.reads_context(n, proj)

    @property
    def up(self) -> torch.Tensor:
        return self.adapter.processors[self.n][f"{self.proj}_lora.up"]

    @property
    def down(self) -> torch.Tensor:
        return self.adapter.processors[self.n][f"{self.proj}_lora.down"]

    def __call__(self, x, *args, **kwargs):
        y = self.forward(x, *args, **kwargs)
        if self.reads_context:
            delta = self.adapter.context_products.product((self.n, self.proj), x, self.product)
        else:
            delta = self.product(x)
        return y + delta.to(y.dtype)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """The LoRA's part of the projection of ``x``: up · (down · x), in ``x``'s dtype and on its device."""
        down, up = (t.to(device=x.device, dtype=x.dtype) for t in (self.down, self.up))
        return F.linear(F.linear(x, down), up)

    def __eq__(self, other):
        # Equal when it computes the same: the same projection and the same factors (two patched clones of one
        # model with one adapter; the host's loaded clone then serves both).
        return (isinstance(other, LoraForward) and other.forward == self.forward and other.adapter is self.adapter
                and (other.n, other.proj) == (self.n, self.proj))

    def __hash__(self):
        return hash((self.forward, id(self.adapter), self.n, self.proj))
