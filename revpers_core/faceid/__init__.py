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

One job per module:

* `files`: the file formats and reading them safely (a pickle only on a torch that enforces
  weights_only; the identity projections read again in part);
* `loading`: validating a loaded checkpoint and wrapping it as a `FaceIDAdapter`;
* `adapter`: the adapter itself (shapes, the identity projection, per-layer weights, lazy re-reading
  with change detection, the fit to a model) and `TransformerSlot`;
* `lora`: the LoRA added at run time (`LoraForward`);
* `context`: the LoRA's products of the text context, kept while a run lasts (`ContextProducts`);
* `blocks`: tensors laid out end to end in one block of memory.

A name patched in a test must be patched where it is looked up: `adapter.IDENTITY_READ_BLOCKS`,
`adapter._read_ip_tensors`.
"""
from __future__ import annotations

from .adapter import IDENTITY_READ_BLOCKS as IDENTITY_READ_BLOCKS
from .adapter import LORA_PROJECTIONS as LORA_PROJECTIONS
from .adapter import AdapterMismatch, FaceIDAdapter, TransformerSlot
from .context import CONTEXT_ENTRIES as CONTEXT_ENTRIES
from .context import CONTEXT_PRODUCT_BYTES as CONTEXT_PRODUCT_BYTES
from .context import ContextProducts
from .files import PICKLE_SUFFIXES as PICKLE_SUFFIXES
from .files import SAFE_PICKLE_TORCH as SAFE_PICKLE_TORCH
from .files import WHERE_TO_GET as WHERE_TO_GET
from .files import pickle_loading_refusal as pickle_loading_refusal
from .loading import IMAGE_PROJ_KEYS as IMAGE_PROJ_KEYS
from .loading import faceid_adapter_from_state_dict, load_faceid_adapter
from .lora import LoraForward

__all__ = [
    "FaceIDAdapter",
    "TransformerSlot",
    "AdapterMismatch",
    "load_faceid_adapter",
    "faceid_adapter_from_state_dict",
    "LoraForward",
    "ContextProducts",
]
