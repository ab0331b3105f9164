"""The FaceID adapter: its weights, the identity projection, the per-layer identity attention weights
(let go after loading and read from the file again when needed, refused if the file changed), the LoRA
factors it carries, and whether it fits a model (`TransformerSlot`)."""
from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .blocks import _one_block
from .context import ContextProducts
from .files import _file_layout, _read_ip_tensors

LORA_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")
IDENTITY_READ_BLOCKS = 8  # transformer blocks whose identity projections are read from the file at a time


class AdapterMismatch(ValueError):
    """The adapter's layers do not fit the model it is applied to."""


@dataclass(frozen=True)
class TransformerSlot:
    """One transformer block of the target UNet, in the adapter's processor order.

    ``name`` names it in messages (e.g. ``input_blocks.4.1.transformer_blocks.0``);
    ``weight_shapes`` maps ``attn1.to_q`` … ``attn2.to_out`` to the (out, in) shapes of its weights.
    """

    name: str
    weight_shapes: Mapping[str, Tuple[int, int]]

    @property
    def inner_dim(self) -> int:
        return int(self.weight_shapes["attn2.to_k"][0])

    @property
    def context_dim(self) -> int:
        return int(self.weight_shapes["attn2.to_k"][1])


@dataclass
class FaceIDAdapter:
    """The weights of one IP-Adapter-FaceID file (tensors kept in their stored dtype, on the CPU).

    The identity projections to_k_ip / to_v_ip (about 60 % of an SDXL file) are only read to project the
    keys and values of new identity tokens (revpers_core.conditioning), once per identity. An adapter
    loaded from a file lets them go (`release_identity_weights`: ``processors`` then holds them as
    shape-only "meta" tensors) and reads them from the file again whenever they are needed
    (`reading_identity_weights`)."""

    name: str
    image_proj: Dict[str, torch.Tensor]
    processors: Dict[int, Dict[str, torch.Tensor]]
    num_processors: int
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)  # tells apart two loads, even of one file
    source: Optional[str] = None  # the file the identity projections are read from again, once released
    _stamp: Optional[Tuple[int, int]] = None  # that file's (size, mtime_ns) when it was loaded
    _source_layout: str = ""  # how that file can be read in part: "safetensors", "zip" or "stream" (not at all)
    context_products: "ContextProducts" = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.context_products is None:
            self.context_products = ContextProducts(self.context_widths)

    # -- shapes -------------------------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        """E, the width of the identity embedding the projection takes (512 for ArcFace)."""
        return int(self.image_proj["proj.0.weight"].shape[1])

    @property
    def cross_attention_dim(self) -> int:
        """D, the width of each identity token (the UNet's cross-attention width)."""
        return int(self.image_proj["norm.weight"].shape[0])

    @property
    def num_tokens(self) -> int:
        """T, the number of identity tokens per face."""
        return int(self.image_proj["proj.2.weight"].shape[0]) // self.cross_attention_dim

    @property
    def num_blocks(self) -> int:
        return self.num_processors // 2

    @property
    def has_lora(self) -> bool:
        return any(k.endswith("_lora.down") for p in self.processors.values() for k in p)

    def describe(self) -> str:
        lora = "with LoRA" if self.has_lora else "without LoRA"
        return (f"'{self.name}' ({self.num_processors} attention layers = {self.num_blocks} transformer blocks, "
                f"identity tokens {self.num_tokens}×{self.cross_attention_dim}, {lora})")

    # -- the identity projection --------------------------------------------------------------
    def project(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Identity embeddings [B, E] → identity tokens [B, T, D] (float32):
        LayerNorm(W2 · GELU(W1 e + b1) + b2), reshaped to T tokens of width D."""
        e = torch.as_tensor(embeddings)
        if e.ndim != 2 or e.shape[1] != self.embedding_dim:
            raise ValueError(f"identity embeddings must be [faces, {self.embedding_dim}] for adapter '{self.name}' "
                             f"(got shape {tuple(e.shape)})")
        p = {k: v.to(torch.float32) for k, v in self.image_proj.items()}
        h = F.gelu(F.linear(e.to(torch.float32), p["proj.0.weight"], p["proj.0.bias"]))
        x = F.linear(h, p["proj.2.weight"], p["proj.2.bias"])
        x = x.reshape(-1, self.num_tokens, self.cross_attention_dim)
        return F.layer_norm(x, (self.cross_attention_dim,), p["norm.weight"], p["norm.bias"])

    def project_identities(self, embeddings) -> Tuple[torch.Tensor, torch.Tensor]:
        """The token sets of ``embeddings`` [F, E] and the set of each face: (sets [S, T, D], index [F]).
        Set 0 holds the tokens of the null (zero) embedding, then one set per distinct embedding. Each is
        projected as the reference projects a face, in a batch [null, e] of its own, so a face's tokens do
        not depend on the other faces of the batch (nor on a chunk of it), and equal embeddings, such as
        the faces of one track, get bit-identical tokens. None: the null set alone, no face (projected in
        the same [null, null] batch shape, so it is bit-identical to the null set of any embeddings)."""
        null = torch.zeros(1, self.embedding_dim)
        if embeddings is None:
            return self.project(torch.cat([null, null]))[:1], torch.zeros(0, dtype=torch.long)
        e = torch.as_tensor(embeddings).detach().to(device="cpu", dtype=torch.float32)
        if e.ndim != 2 or e.shape[0] < 1 or e.shape[1] != self.embedding_dim:
            raise ValueError(f"identity embeddings must be [faces, {self.embedding_dim}] for adapter '{self.name}' "
                             f"(got shape {tuple(e.shape)})")
        seen: Dict[bytes, int] = {}
        sets, index = [], []
        for row in e:
            key = row.numpy().tobytes()
            if key not in seen:
                pair = self.project(torch.cat([null, row[None]]))
                if not sets:
                    sets.append(pair[:1])
                seen[key] = len(sets)
                sets.append(pair[1:])
            index.append(seen[key])
        return torch.cat(sets), torch.tensor(index, dtype=torch.long)

    # -- per-layer weights --------------------------------------------------------------------
    def identity_weights(self, block: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(to_k_ip, to_v_ip) of transformer block ``block``'s cross-attention (processor 2·block+1)."""
        p = self.processors[2 * block + 1]
        return p["to_k_ip"], p["to_v_ip"]

    @property
    def identity_weights_held(self) -> bool:
        """Whether the identity projections are in memory (else they are read from ``source`` when needed)."""
        return self.source is None

    def release_identity_weights(self, source: str) -> None:
        """Let the identity projections go, to be read from ``source`` (the file this adapter was loaded
        from) when new identity tokens need them; their shapes and dtypes stay (as "meta" tensors). Every
        other tensor is copied into memory of its own where the load mapped the file (safetensors, a zip-format
        .bin): a mapping would follow the file if it were overwritten. A pickle stream's load is its own. The
        LoRA factors are copied, whatever the layout, into one block of memory (`_gather_lora`)."""
        stat = os.stat(source)
        layout = _file_layout(source)
        own = (lambda t: t) if layout == "stream" else (lambda t: t.clone())
        for n, p in self.processors.items():
            for key, t in p.items():
                if key in ("to_k_ip", "to_v_ip"):
                    p[key] = torch.empty_like(t, device="meta")
                elif "_lora." not in key:
                    p[key] = own(t)
        self._gather_lora()  # the LoRA factors: copied into one block of memory of their own
        self.image_proj = {k: own(t) for k, t in self.image_proj.items()}
        self.source, self._stamp, self._source_layout = source, (stat.st_size, stat.st_mtime_ns), layout

    @contextlib.contextmanager
    def reading_identity_weights(self) -> Iterator[Callable[[int], Tuple[torch.Tensor, torch.Tensor]]]:
        """Within this, block -> (to_k_ip, to_v_ip) of that transformer block: the adapter's own tensors, or,
        once released, the file's, read again IDENTITY_READ_BLOCKS blocks at a time (only those tensors; a
        group is let go when the next is read, and on leaving), so reading them never holds the whole set.
        A pickle-stream .bin (older torch) can only be read whole: all blocks are then read in one go."""
        if self.source is None:
            yield self.identity_weights
            return
        self._check_unchanged()
        group: Dict[int, Dict[str, torch.Tensor]] = {}
        size = self.num_blocks if self._source_layout == "stream" else IDENTITY_READ_BLOCKS

        def weights(block: int) -> Tuple[torch.Tensor, torch.Tensor]:
            n = 2 * block + 1
            if n not in group:
                group.clear()  # the previous group's tensors (and the file mapping they share) go
                first = block - block % size
                last = min(first + size, self.num_blocks)
                group.update(self._read_identity_weights(range(2 * first + 1, 2 * last + 1, 2)))
            return group[n]["to_k_ip"], group[n]["to_v_ip"]

        try:
            yield weights
        finally:
            group.clear()

    def _changed(self, why) -> ValueError:
        return ValueError(f"FaceID adapter '{self.name}' changed on disk or became unreadable since it was loaded "
                          f"({why}); queue the prompt again so the adapter loader reads the file anew")

    def _check_unchanged(self) -> None:
        try:
            stat = os.stat(self.source)
        except OSError as err:
            raise self._changed(err) from None
        if (stat.st_size, stat.st_mtime_ns) != self._stamp:
            raise self._changed("its size or modification time differs")

    def _read_identity_weights(self, numbers) -> Dict[int, Dict[str, torch.Tensor]]:
        try:
            read = _read_ip_tensors(self.source, numbers)
        except ValueError as err:
            raise self._changed(err) from None
        for n, p in read.items():
            for key, t in p.items():
                held = self.processors[n][key]
                if t.shape != held.shape or t.dtype != held.dtype:
                    raise self._changed(f"layer {n} {key} is now {tuple(t.shape)} {t.dtype}")
        return read

    def lora_layers(self, block: int):
        """(attention, projection, up, down) of every LoRA pair of transformer block ``block`` the file
        carries (attention "attn1" or "attn2", projection "to_q" … "to_out"): the low-rank factors
        themselves, ΔW = up · down at weight 1, for the host to merge into the model's weights (`LoraForward`
        adds them at run time instead)."""
        for attn, _, proj, up, down in self.lora_pairs(block):
            yield attn, proj, up, down

    def _gather_lora(self) -> None:
        """Copy all the LoRA factors into one block of memory of their own (views of one flat tensor, in file
        order, as held): the file's mapping, or the tensors of a pickle's load, then go. The factors stay in the
        file's dtype for the server's whole life; a computation in a wider dtype casts each pair at its call
        (`LoraForward`)."""
        keys = [(n, k) for n, p in self.processors.items() for k in p if "_lora." in k]
        if keys:
            tensors = [self.processors[n][k] for n, k in keys]
            for (n, k), view in zip(keys, _one_block(tensors)):
                self.processors[n][k] = view

    def reads_context(self, n: int, proj: str) -> bool:
        """Whether processor ``n``'s ``proj`` projection takes the text context: the keys and values of a
        cross-attention (odd n), whose input is the same at every step of a run."""
        return n % 2 == 1 and proj in ("to_k", "to_v")

    def context_widths(self) -> Dict[Tuple[int, str], int]:
        """(processor, projection) → output width of every LoRA pair that takes the text context."""
        return {(n, proj): int(p[f"{proj}_lora.up"].shape[0]) for n, p in sorted(self.processors.items())
                for proj in LORA_PROJECTIONS if f"{proj}_lora.up" in p and self.reads_context(n, proj)}

    def lora_bytes(self) -> int:
        """Bytes of all the LoRA factors as held (what the LoRA costs in memory): the file's."""
        return sum(t.numel() * t.element_size() for p in self.processors.values()
                   for k, t in p.items() if "_lora." in k)

    def lora_pairs(self, block: int):
        """(attention, processor number, projection, up, down) of every LoRA pair of transformer block
        ``block`` that the file carries: attn1 is processor 2·block, attn2 is 2·block + 1."""
        for attn, n in (("attn1", 2 * block), ("attn2", 2 * block + 1)):
            p = self.processors.get(n, {})
            for proj in LORA_PROJECTIONS:
                down = p.get(f"{proj}_lora.down")
                if down is not None:
                    yield attn, n, proj, p[f"{proj}_lora.up"], down

    # -- fit to a model -----------------------------------------------------------------------
    def check_fits(self, slots: Sequence[TransformerSlot], model_name: str) -> None:
        """Raise `AdapterMismatch` naming the adapter and the model unless every layer of the adapter
        has a matching attention layer in the model (same count, same weight shapes)."""
        if len(slots) * 2 != self.num_processors:
            raise AdapterMismatch(
                f"FaceID adapter {self.describe()} does not fit the model {model_name} "
                f"({len(slots)} transformer blocks = {2 * len(slots)} attention layers). Use the FaceID adapter made "
                f"for this model family: ip-adapter-faceid_sdxl.bin for SDXL, ip-adapter-faceid_sd15.bin for SD1.5.")
        for b, slot in enumerate(slots):
            k_ip, v_ip = self.identity_weights(b)
            want = (slot.inner_dim, slot.context_dim)
            for label, w in (("to_k_ip", k_ip), ("to_v_ip", v_ip)):
                if tuple(w.shape) != want:
                    raise AdapterMismatch(
                        f"FaceID adapter {self.describe()} does not fit the model {model_name}: layer {2 * b + 1} "
                        f"{label} is {tuple(w.shape)} but the model's cross-attention {slot.name}.attn2 needs {want} "
                        f"(inner width × cross-attention width). Use the adapter made for this model family.")
            for attn, n, proj, up, down in self.lora_pairs(b):
                shape = (int(up.shape[0]), int(down.shape[1]))
                target = tuple(slot.weight_shapes[f"{attn}.{proj}"])
                if shape != target:
                    raise AdapterMismatch(
                        f"FaceID adapter {self.describe()} does not fit the model {model_name}: the LoRA of layer {n} "
                        f"({proj}) makes a {shape} weight but {slot.name}.{attn}.{proj} is {target}.")
