"""Stand-in SDXL and SD1.5 checkpoints: the whole standard single-file key layout of a real
`.safetensors` checkpoint (layout.py) with seeded values.

Values are generated and written one tensor at a time (the safetensors file is streamed), so memory
stays small. Nothing here needs ComfyUI: a stand-in is the same file whichever host later loads it.
"""
import json
import struct

import torch

from .layout import checkpoint_layout, parameter_count
from .values import checkpoint_value

_ST_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64", "int64": "I64",
              "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def write_safetensors_streamed(path, layout, make_tensor, metadata=None, on_tensor=None):
    """Write a .safetensors file whose tensors come one at a time from `make_tensor(key, like)`.

    The header (names, dtypes, shapes, offsets) is known up front from `layout` ({key: tensor or
    meta tensor}), so each tensor is produced, written and dropped in turn. Floating tensors are
    written as float16. Returns the file's size."""
    entries, offset, plan = {}, 0, []
    for key, like in layout.items():
        dtype = torch.float16 if like.is_floating_point() else like.dtype
        nbytes = like.numel() * torch.empty((), dtype=dtype).element_size()
        entries[key] = {"dtype": _ST_DTYPES[str(dtype).replace("torch.", "")], "shape": list(like.shape),
                        "data_offsets": [offset, offset + nbytes]}
        plan.append((key, like, dtype, nbytes))
        offset += nbytes
    header = dict(entries)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for key, like, dtype, nbytes in plan:
            t = make_tensor(key, like).to(dtype).contiguous()
            data = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
            if len(memoryview(data).cast("B")) != nbytes:
                raise RuntimeError(f"{key}: produced {t.shape} {t.dtype}, expected {nbytes} bytes")
            f.write(data)
            if on_tensor is not None:
                on_tensor(key, nbytes)
    return 8 + len(blob) + offset


def write_checkpoint(path, arch, seed):
    """Write the stand-in checkpoint of `arch` ("sdxl" or "sd15") to `path`: every tensor of the
    standard layout, floating ones from `checkpoint_value`, CLIP's position ids 0..76 as in the real
    files. Returns (keys, parameters)."""
    layout = checkpoint_layout(arch)
    like = {key: torch.empty(shape, dtype=dtype, device="meta") for key, (shape, dtype) in layout.items()}

    def make(key, meta):
        if meta.is_floating_point():
            return checkpoint_value(seed, key, meta.shape)
        if key.endswith("position_ids"):
            return torch.arange(meta.shape[-1], dtype=meta.dtype).expand(meta.shape)
        raise RuntimeError(f"no stand-in rule for the {meta.dtype} tensor {key}")

    meta = {"format": "pt", "revpers_standin": arch, "revpers_seed": seed,
            "note": "random stand-in weights for testing: not a real model"}
    write_safetensors_streamed(path, like, make, metadata=meta)
    return len(layout), parameter_count(layout)
