"""IP-Adapter-FaceID weights: safe loading, validation, the identity projection, the per-layer
identity attention weights and the LoRA the FaceID files carry.

Layout of an IP-Adapter-FaceID (non-plus) checkpoint, as published (``ip-adapter-faceid_sdxl.bin``,
``ip-adapter-faceid_sd15.bin``; a torch pickle of ``{"image_proj": {...}, "ip_adapter": {...}}``,
or a safetensors conversion with flattened ``image_proj.*`` / ``ip_adapter.*`` keys):

* ``image_proj``: ``proj.0`` (H×E, E = 512 ArcFace dims, H = 1024), ``proj.2`` (D·T × H) and ``norm``
  (LayerNorm over D): the projection  tokens = LayerNorm(W2 · GELU(W1 e + b1) + b2) reshaped to T
  tokens of width D (D = the UNet's cross-attention width, T = 4).
* ``ip_adapter``: numbered attention processors n = 0 … P−1 in diffusers' ``attn_processors`` order
  (down blocks, up blocks, mid block; per transformer block self-attention ``attn1`` (even n) then
  cross-attention ``attn2`` (odd n)). Odd n carry ``{n}.to_k_ip.weight`` / ``{n}.to_v_ip.weight``
  (inner × D); every n may carry a LoRA ``{n}.to_{q,k,v,out}_lora.{down,up}.weight`` for that
  attention's projections, which the reference merges at weight 1 (W + up·down).

Nothing here imports ComfyUI: the target model is described by a list of `TransformerSlot`.
"""
from __future__ import annotations

import contextlib
import math
import os
import pickle
import re
import uuid
import zipfile
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "FaceIDAdapter",
    "TransformerSlot",
    "AdapterMismatch",
    "load_faceid_adapter",
    "faceid_adapter_from_state_dict",
    "LoraForward",
    "ContextProducts",
]

IMAGE_PROJ_KEYS = ("proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias")
LORA_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")
_IP_KEY = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip|to_(?:q|k|v|out)_lora\.(?:down|up))\.weight$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
CONTEXT_PRODUCT_BYTES = 256 << 20  # what the LoRA's products of the text context may hold while a run lasts
CONTEXT_ENTRIES = 4  # distinct text contexts whose products a run keeps at once
IDENTITY_READ_BLOCKS = 8  # transformer blocks whose identity projections are read from the file at a time
WHERE_TO_GET = ("get ip-adapter-faceid_sdxl.bin (SDXL) or ip-adapter-faceid_sd15.bin (SD1.5) from "
                "https://huggingface.co/h94/IP-Adapter-FaceID and put it in models/ipadapter")


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


# ---------------------------------------------------------------------------------------------
# loading

# torch enforces weights_only safely from 2.6 on: before it, a crafted pickle could run code through
# torch.load(weights_only=True) (CVE-2025-32434). The pack's pyproject allows older torch, so a pickled
# adapter is only read on a torch that is new enough; safetensors never runs code on any.
SAFE_PICKLE_TORCH = (2, 6)


def _release(version: str) -> tuple[int, int]:
    """(major, minor) of a torch version string ("2.5.1+cu121" -> (2, 5)); (0, 0) when unreadable."""
    found = re.match(r"^\s*(\d+)\.(\d+)", str(version))
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def pickle_loading_refusal(name: str, torch_version: str | None = None) -> str | None:
    """Why a pickled (.bin) adapter must not be loaded on this torch, or None when it may: the one place that
    decides whether torch.load(weights_only=True) can be trusted here."""
    version = torch.__version__ if torch_version is None else torch_version
    if _release(version) >= SAFE_PICKLE_TORCH:
        return None
    need = ".".join(map(str, SAFE_PICKLE_TORCH))
    return (f"FaceID adapter '{name}' was not loaded: it is a pickle (.bin), and torch {version} does not enforce "
            f"weights_only safely (CVE-2025-32434: before torch {need} a crafted .bin can run code even when loaded "
            f"with weights_only=True). Upgrade torch to {need} or later (pip install -U \"torch>={need}\"), or "
            f"use a .safetensors conversion of the adapter, which is safe on any torch.")


def _refused_pickle(name: str, err: Exception) -> ValueError:
    found = re.search(r"(Unsupported global: GLOBAL [^\s]+|Unsupported operand [^\s]+|GLOBAL [^\s]+)", str(err))
    what = f": {found.group(1).rstrip('.')}" if found else ""
    return ValueError(
        f"FaceID adapter '{name}' was refused: it is not a plain tensor checkpoint that can be loaded safely (torch's "
        f"weights-only loader rejected it{what}). A pickle holding other Python objects could run code when loaded, "
        f"so nothing in it was executed. Use a trusted file "
        f"({WHERE_TO_GET}) or a .safetensors conversion.")


def _file_layout(path: str) -> str:
    """"safetensors" (read by key), "zip" (a torch.save archive, memory-mapped) or "stream" (a pickle stream
    of older torch, which is only read whole)."""
    if path.lower().endswith(".safetensors"):
        return "safetensors"
    with open(path, "rb") as f:
        return "zip" if f.read(2) == b"PK" else "stream"


def _read_ip_tensors(path: str, numbers) -> Dict[int, Dict[str, torch.Tensor]]:
    """{n: {"to_k_ip", "to_v_ip"}} of cross-attention layers ``numbers`` from the file: a safetensors file
    reads only those tensors; a zip-format torch file is memory-mapped, so only their bytes are read; a
    pickle stream is read whole."""
    keys = {n: {w: f"{n}.{w}.weight" for w in ("to_k_ip", "to_v_ip")} for n in numbers}
    if path.lower().endswith(".safetensors"):
        from safetensors import safe_open
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                return {n: {w: f.get_tensor(f"ip_adapter.{k}") for w, k in ks.items()} for n, ks in keys.items()}
        except Exception as err:  # a damaged file: what safetensors says, as one error of ours
            raise ValueError(f"{err.__class__.__name__}: {err}") from None
    state = _load_state(path, mmap=True)
    try:
        section = state["ip_adapter"] if "ip_adapter" in state else {
            k[len("ip_adapter."):]: v for k, v in state.items() if str(k).startswith("ip_adapter.")}
        return {n: {w: section[k] for w, k in ks.items()} for n, ks in keys.items()}
    except (KeyError, TypeError) as err:
        raise ValueError(f"missing {err}") from None


def _load_state(path: str, mmap: bool = False) -> Mapping:
    name = os.path.basename(path)
    lower = name.lower()
    if lower.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"FaceID adapter '{name}' could not be read as safetensors: it is corrupt or truncated "
                             f"({err}). Download it again; {WHERE_TO_GET}.") from None
    if lower.endswith(PICKLE_SUFFIXES):
        refusal = pickle_loading_refusal(name)
        if refusal:
            raise ValueError(refusal)
        with open(path, "rb") as f:
            head = f.read(4)
        # torch.save writes a zip archive (PK..); older torch a pickle stream, which starts with PROTO (0x80).
        if not (head.startswith(b"PK") or head[:1] == b"\x80"):
            raise ValueError(f"FaceID adapter '{name}' could not be read: it is corrupt or truncated (not a torch "
                             f"checkpoint: neither a zip archive nor a pickle stream). Download it again; {WHERE_TO_GET}.")
        try:
            # weights_only: tensors and containers only; any other global is refused, never executed.
            # mmap: tensors read from the file when touched (zip archives only; a read in full where it fails)
            if mmap and head.startswith(b"PK"):
                try:
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:
                    pass
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            if "weights_only" in str(err) or "Unsupported global" in str(err) or "global" in str(err).lower():
                raise _refused_pickle(name, err) from None
            raise ValueError(f"FaceID adapter '{name}' could not be read: it is corrupt or truncated ({err}). "
                             f"Download it again; {WHERE_TO_GET}.") from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError) as err:
            raise ValueError(f"FaceID adapter '{name}' could not be read: it is corrupt or truncated "
                             f"({err.__class__.__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}). "
                             f"Download it again; {WHERE_TO_GET}.") from None
    raise ValueError(f"FaceID adapter '{name}' has an unsupported file type: expected .bin (torch pickle) or "
                     f".safetensors.")


def _split_sections(state: Mapping, name: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    if not isinstance(state, Mapping):
        raise ValueError(f"FaceID adapter '{name}' does not hold a dictionary of weights (found {type(state).__name__}).")
    if "image_proj" in state and "ip_adapter" in state:
        image_proj, ip_adapter = state["image_proj"], state["ip_adapter"]
        if not isinstance(image_proj, Mapping) or not isinstance(ip_adapter, Mapping):
            raise ValueError(f"FaceID adapter '{name}': 'image_proj' and 'ip_adapter' must both be dictionaries of tensors.")
        image_proj, ip_adapter = dict(image_proj), dict(ip_adapter)
    else:
        image_proj = {k[len("image_proj."):]: v for k, v in state.items() if str(k).startswith("image_proj.")}
        ip_adapter = {k[len("ip_adapter."):]: v for k, v in state.items() if str(k).startswith("ip_adapter.")}
        if not image_proj or not ip_adapter:
            sample = ", ".join(sorted(map(str, state.keys()))[:6])
            raise ValueError(f"FaceID adapter '{name}' is not an IP-Adapter file: expected the sections image_proj and "
                             f"ip_adapter (nested, or flattened as image_proj.* / ip_adapter.* keys); found keys like "
                             f"{sample or '(none)'}. {WHERE_TO_GET}.")
    for section, tensors in (("image_proj", image_proj), ("ip_adapter", ip_adapter)):
        for k, v in tensors.items():
            if not isinstance(v, torch.Tensor):
                raise ValueError(f"FaceID adapter '{name}': {section}.{k} is a {type(v).__name__}, not a tensor.")
    return image_proj, ip_adapter


def faceid_adapter_from_state_dict(state: Mapping, name: str) -> FaceIDAdapter:
    """Validate a loaded checkpoint and wrap it as a `FaceIDAdapter` (errors name the file)."""
    image_proj, ip_adapter = _split_sections(state, name)

    missing = [k for k in IMAGE_PROJ_KEYS if k not in image_proj]
    extra = sorted(set(image_proj) - set(IMAGE_PROJ_KEYS))
    if missing or extra:
        hint = ""
        if any("perceiver" in k or "latents" in k or "proj_in" in k for k in image_proj):
            hint = " It looks like a FaceID Plus / Portrait or image IP-Adapter, which this node does not use."
        raise ValueError(f"FaceID adapter '{name}' is not an IP-Adapter-FaceID file: its image_proj must hold exactly "
                         f"{', '.join(IMAGE_PROJ_KEYS)} (missing: {', '.join(missing) or 'none'}; unexpected: "
                         f"{', '.join(extra[:6]) or 'none'}).{hint} {WHERE_TO_GET}.")
    w1, b1, w2, b2 = (image_proj[k] for k in IMAGE_PROJ_KEYS[:4])
    nw, nb = image_proj["norm.weight"], image_proj["norm.bias"]
    D = int(nw.shape[0]) if nw.ndim == 1 else -1
    ok = (w1.ndim == 2 and b1.shape == (w1.shape[0],) and w2.ndim == 2 and w2.shape[1] == w1.shape[0]
          and b2.shape == (w2.shape[0],) and nw.ndim == 1 and nb.shape == nw.shape and D > 0 and w2.shape[0] % D == 0)
    if not ok:
        raise ValueError(f"FaceID adapter '{name}': the projection's shapes are inconsistent (proj.0 {tuple(w1.shape)}, "
                         f"proj.2 {tuple(w2.shape)}, norm {tuple(nw.shape)}); the file is damaged or not a FaceID adapter.")

    processors: Dict[int, Dict[str, torch.Tensor]] = {}
    for key, tensor in ip_adapter.items():
        m = _IP_KEY.match(str(key))
        if m is None:
            raise ValueError(f"FaceID adapter '{name}': unexpected key ip_adapter.{key} (expected {{n}}.to_k_ip.weight, "
                             f"{{n}}.to_v_ip.weight or {{n}}.to_{{q,k,v,out}}_lora.{{down,up}}.weight).")
        processors.setdefault(int(m.group(1)), {})[m.group(2)] = tensor
    if not processors:
        raise ValueError(f"FaceID adapter '{name}' has no attention layers in ip_adapter.")
    P = max(processors) + 1
    if P % 2:
        raise ValueError(f"FaceID adapter '{name}': the attention layers must come in self/cross pairs, but the last "
                         f"layer is number {P - 1}.")
    for n in range(P):
        p = processors.get(n, {})
        has_ip = "to_k_ip" in p or "to_v_ip" in p
        if n % 2 == 1:
            if "to_k_ip" not in p or "to_v_ip" not in p:
                raise ValueError(f"FaceID adapter '{name}': cross-attention layer {n} lacks to_k_ip/to_v_ip "
                                 f"(the file is incomplete).")
            k_ip, v_ip = p["to_k_ip"], p["to_v_ip"]
            if k_ip.ndim != 2 or k_ip.shape != v_ip.shape or k_ip.shape[1] != D:
                raise ValueError(f"FaceID adapter '{name}': layer {n} to_k_ip {tuple(k_ip.shape)} / to_v_ip "
                                 f"{tuple(v_ip.shape)} must both be (inner width, {D}).")
        elif has_ip:
            raise ValueError(f"FaceID adapter '{name}': self-attention layer {n} carries to_k_ip/to_v_ip, which only "
                             f"cross-attention layers (odd numbers) have.")
        for proj in LORA_PROJECTIONS:
            down, up = p.get(f"{proj}_lora.down"), p.get(f"{proj}_lora.up")
            if (down is None) != (up is None):
                raise ValueError(f"FaceID adapter '{name}': layer {n} has only half of its {proj} LoRA (down and up "
                                 f"must both be present).")
            if down is not None and (down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]):
                raise ValueError(f"FaceID adapter '{name}': layer {n} {proj} LoRA shapes do not chain "
                                 f"(up {tuple(up.shape)}, down {tuple(down.shape)}).")
    return FaceIDAdapter(name=name, image_proj=dict(image_proj), processors=processors, num_processors=P)


def load_faceid_adapter(path: str) -> FaceIDAdapter:
    """Load an IP-Adapter-FaceID checkpoint (.bin torch pickle or .safetensors) without running any code
    it might contain, and validate its layout. The identity projections are let go after the check and
    read from the file again when identity tokens are projected (`FaceIDAdapter.reading_identity_weights`)."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"FaceID adapter '{name}' not found at {path}. {WHERE_TO_GET}.")
    # Memory-mapped where the file allows (a zip-format .bin): the identity projections' bytes are not read here.
    adapter = faceid_adapter_from_state_dict(_load_state(path, mmap=True), name)
    adapter.release_identity_weights(path)
    return adapter
