"""Stand-in IP-Adapter-FaceID files: the published key layout and shapes, seeded random values.

The real `ip-adapter-faceid_sdxl.bin` / `ip-adapter-faceid_sd15.bin` (h94/IP-Adapter-FaceID) are
`torch.save`d dicts `{"image_proj": {...}, "ip_adapter": {...}}` in float16. Their layout follows from
the published training code (tencent-ailab/IP-Adapter, `ip_adapter_faceid.py` and
`attention_processor_faceid.py`):

* `image_proj` is the MLP that turns the 512-d ArcFace embedding into T=4 identity tokens of the
  UNet's cross-attention width D: `proj.0` Linear(512, 1024), GELU, `proj.2` Linear(1024, D*T), then
  `norm` LayerNorm(D).
* `ip_adapter` is a ModuleList over the UNet's attention processors in diffusers' `attn_processors`
  order (down_blocks, then up_blocks, then mid_block; in each transformer block attn1 then attn2, so
  processor n is a self-attention when n is even and a cross-attention when n is odd). Every
  processor carries a rank-128 LoRA on its four projections, `{n}.to_{q,k,v,out}_lora.{down,up}.weight`
  (down: (rank, in), up: (out, rank); to_k/to_v read the text context, width D, in attn2 and the
  hidden states in attn1); every cross-attention also has the identity branch
  `{n}.to_k_ip.weight`, `{n}.to_v_ip.weight`, Linear(D, hidden) without bias.

The SD1.5 file's size (96,740,574 bytes) matches this layout at rank 128 in float16 (96,709,632 bytes
of tensors plus the container), which is how the rank and dtype were checked.
"""
import os
from collections import OrderedDict

import torch

from .store import write_atomic
from .values import seeded_normal

__all__ = ["ARCHS", "faceid_layout", "processor_names", "make_faceid_state_dict", "write_faceid_bin"]

LORA_RANK = 128
ID_DIM = 512  # ArcFace embedding
NUM_TOKENS = 4

# arch -> cross-attention width D, and the attention blocks in diffusers order:
# (diffusers block name, hidden width, attentions in the block, transformer depth)
ARCHS = {
    "sdxl": {
        "cross_attention_dim": 2048,
        "blocks": [("down_blocks.1", 640, 2, 2), ("down_blocks.2", 1280, 2, 10),
                   ("up_blocks.0", 1280, 3, 10), ("up_blocks.1", 640, 3, 2),
                   ("mid_block", 1280, 1, 10)],
    },
    "sd15": {
        "cross_attention_dim": 768,
        "blocks": [("down_blocks.0", 320, 2, 1), ("down_blocks.1", 640, 2, 1),
                   ("down_blocks.2", 1280, 2, 1), ("up_blocks.1", 1280, 3, 1),
                   ("up_blocks.2", 640, 3, 1), ("up_blocks.3", 320, 3, 1),
                   ("mid_block", 1280, 1, 1)],
    },
}


def _arch(arch):
    if arch not in ARCHS:
        raise ValueError(f"unknown FaceID architecture {arch!r}; choose one of {sorted(ARCHS)}")
    return ARCHS[arch]


def processor_names(arch="sdxl"):
    """The diffusers attention-processor name of every index n, in file order: a list of
    (name, hidden width, is_cross_attention)."""
    spec = _arch(arch)
    names = []
    for block, hidden, attentions, depth in spec["blocks"]:
        for a in range(attentions):
            for t in range(depth):
                for attn in ("attn1", "attn2"):
                    names.append((f"{block}.attentions.{a}.transformer_blocks.{t}.{attn}.processor",
                                  hidden, attn == "attn2"))
    return names


def faceid_layout(arch="sdxl", lora=True, rank=LORA_RANK):
    """{"image_proj": {key: shape}, "ip_adapter": {key: shape}} in the real file's key order."""
    spec = _arch(arch)
    d = spec["cross_attention_dim"]
    image_proj = OrderedDict([
        ("proj.0.weight", (ID_DIM * 2, ID_DIM)), ("proj.0.bias", (ID_DIM * 2,)),
        ("proj.2.weight", (d * NUM_TOKENS, ID_DIM * 2)), ("proj.2.bias", (d * NUM_TOKENS,)),
        ("norm.weight", (d,)), ("norm.bias", (d,)),
    ])
    ip_adapter = OrderedDict()
    for n, (_, hidden, cross) in enumerate(processor_names(arch)):
        context = d if cross else hidden
        if lora:
            for proj, width_in in (("to_q", hidden), ("to_k", context), ("to_v", context), ("to_out", hidden)):
                ip_adapter[f"{n}.{proj}_lora.down.weight"] = (rank, width_in)
                ip_adapter[f"{n}.{proj}_lora.up.weight"] = (hidden, rank)
        if cross:
            ip_adapter[f"{n}.to_k_ip.weight"] = (hidden, d)
            ip_adapter[f"{n}.to_v_ip.weight"] = (hidden, d)
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def _value(seed, section, key, shape):
    """Scales that keep a random adapter well behaved: LayerNorm weight 1 / bias 0; weights
    N(0, 1/fan_in) so projections keep the activation scale; LoRA up-projections 10x smaller so
    W + up.down stays close to W; small biases, so the null (zero) identity gives non-zero tokens."""
    if section == "image_proj" and key.startswith("norm."):
        return torch.ones(shape) if key.endswith("weight") else torch.zeros(shape)
    x = seeded_normal(seed, f"{section}.{key}", shape)
    if key.endswith("bias"):
        return x * 0.1
    if "_lora.up." in key:
        return x * (0.1 / shape[1] ** 0.5)
    return x / shape[1] ** 0.5


def make_faceid_state_dict(arch="sdxl", seed=0, lora=True, dtype=torch.float16, rank=LORA_RANK):
    """The nested dict the real .bin holds, with seeded random values (deterministic per key)."""
    layout = faceid_layout(arch, lora=lora, rank=rank)
    return {section: OrderedDict((k, _value(seed, section, k, shape).to(dtype)) for k, shape in keys.items())
            for section, keys in layout.items()}


def write_faceid_bin(path, arch="sdxl", seed=0, lora=True, dtype=torch.float16):
    """Write a stand-in FaceID .bin (torch.save of {"image_proj", "ip_adapter"}) atomically.
    Returns the number of bytes written."""
    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: the archive's inner name does not depend on `tmp`
            torch.save(make_faceid_state_dict(arch, seed, lora=lora, dtype=dtype), f)

    write_atomic(path, write)
    return os.path.getsize(path)
