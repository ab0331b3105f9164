"""Stand-in SDXL and SD1.5 checkpoints: the whole key layout of a real `.safetensors` checkpoint with
seeded values.

The layouts come from ComfyUI itself: its model classes are built on the meta device and its
checkpoint-saving code names the keys, so a stand-in is exactly what ComfyUI would save. Values are
generated and written one tensor at a time (the safetensors file is streamed), so memory stays small.
ComfyUI is imported from the folder given (its classes are the only thing used; nothing is run).
"""
import json
import struct
import sys
from collections import OrderedDict
from pathlib import Path

import torch

from .values import checkpoint_value

# The UNet architectures ComfyUI's detection recognises as SDXL base and SD1.5.
UNET_CONFIGS = {
    "sdxl": dict(use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=320,
                 num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10],
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], transformer_depth_middle=10,
                 context_dim=2048, num_head_channels=64, use_linear_in_transformer=True,
                 use_spatial_transformer=True, legacy=False, num_classes="sequential", adm_in_channels=2816,
                 use_temporal_attention=False, use_temporal_resblock=False),
    "sd15": dict(use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=320,
                 num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4],
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1,
                 context_dim=768, num_heads=8, use_linear_in_transformer=False, use_spatial_transformer=True,
                 legacy=False, adm_in_channels=None, use_temporal_attention=False, use_temporal_resblock=False),
}
# The KL autoencoder both use (SDXL's VAE has SD's architecture).
VAE_DDCONFIG = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128,
                    ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)


def import_comfy(comfyui_dir):
    """Put a ComfyUI folder on sys.path (its own command-line parsing stays off) and import the model
    classes. On a machine without CUDA, ComfyUI is told to use the CPU."""
    comfyui_dir = Path(comfyui_dir).resolve()
    if not (comfyui_dir / "comfy" / "model_detection.py").is_file():
        raise FileNotFoundError(f"no ComfyUI at {comfyui_dir}: the checkpoint layouts come from its model classes "
                                "(give its folder, or set COMFYUI_DIR)")
    if str(comfyui_dir) not in sys.path:
        sys.path.insert(0, str(comfyui_dir))
    from comfy.cli_args import args  # ComfyUI's own parsing stays off here: it parses []

    if "comfy.model_management" not in sys.modules and not torch.cuda.is_available():
        args.cpu = True  # read once, when model_management is imported
    import comfy.model_detection
    import comfy.ldm.models.autoencoder
    return comfy


def checkpoint_layout(arch, comfyui_dir):
    """{key: tensor} for the whole checkpoint, as ComfyUI's own saving code names it. Floating
    tensors are on the meta device (shape only); the few real ones (CLIP position ids) are kept."""
    comfy = import_comfy(comfyui_dir)
    unet_config = dict(UNET_CONFIGS[arch], dtype=torch.float16)
    with torch.device("meta"), torch.no_grad():
        model_config = comfy.model_detection.model_config_from_unet_config(unet_config)
        if model_config is None:
            raise RuntimeError(f"this ComfyUI does not recognise the {arch} UNet configuration")
        model = model_config.get_model({}, device="meta")
        clip = model_config.clip_target().clip(device="meta", dtype=torch.float16)
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(VAE_DDCONFIG), embed_dim=4)
        sd = model.state_dict_for_saving(clip.state_dict(), vae.state_dict())
    return OrderedDict(sorted(sd.items()))


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


def write_checkpoint(path, arch, seed, comfyui_dir):
    """Write the stand-in checkpoint of `arch` ("sdxl" or "sd15") to `path`. Returns (keys, parameters)."""
    layout = checkpoint_layout(arch, comfyui_dir)

    def make(key, like):
        if like.device.type != "meta":
            return like
        if like.is_floating_point():
            return checkpoint_value(seed, key, like.shape)
        if key.endswith("position_ids"):  # CLIP's token positions 0..76, as in the real files
            return torch.arange(like.shape[-1], dtype=like.dtype).expand(like.shape)
        raise RuntimeError(f"no stand-in rule for the {like.dtype} tensor {key}")

    meta = {"format": "pt", "revpers_standin": arch, "revpers_seed": seed,
            "note": "random stand-in weights for testing: not a real model"}
    write_safetensors_streamed(path, layout, make, metadata=meta)
    return len(layout), sum(v.numel() for v in layout.values() if v.is_floating_point())
