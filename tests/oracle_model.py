"""The oracle's tiny SDXL-architecture UNet inside ComfyUI's OWN model classes, and the oracle's
tensors as ComfyUI types, for tests that run the pack's nodes against the reference's numbers.

ComfyUI's automatic detection does not recognise the tiny model and its SDXL config forces 64-channel
heads and a 256-dim size embedder, so the config is built here: an SDXL subclass with 16-channel heads
(4 heads at width 64, diffusers' ``attention_head_dim`` [2, 4] there means heads) and an 8-dim
``Timestep`` embedder for the size conditioning (6 × 8 + pooled 32 = adm 80). The weights are the
oracle's diffusers-format UNet mapped through ``comfy.utils.unet_to_diffusers``.
"""
from functools import lru_cache

import torch
from safetensors.torch import load_file

from paths import ORACLE

LATENT_SCALE = 0.13025  # SDXL's latent scaling factor (ComfyUI's latent_formats.SDXL)
CASES = ("default", "attribute")

TINY_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 80, "dtype": torch.float32, "in_channels": 4,
    "model_channels": 32, "num_res_blocks": [1, 1], "transformer_depth": [0, 1], "channel_mult": [1, 2],
    "transformer_depth_middle": 1, "use_linear_in_transformer": True, "context_dim": 64, "num_head_channels": 16,
    "transformer_depth_output": [0, 0, 1, 1], "use_temporal_attention": False, "use_temporal_resblock": False,
}


def oracle_dir(name="golden"):
    path = ORACLE / name
    if not (path / "golden.safetensors").is_file():  # never skipped: the oracle ships with the tests
        raise FileNotFoundError(f"the oracle's {name} set is missing from {path}: it is part of the repository "
                                "(tests/data/oracle); restore it with git")
    return path


def adapter_path(name="golden"):
    if name == "golden":
        return oracle_dir("golden") / "weights" / "ip-adapter-faceid_tiny.safetensors"
    return oracle_dir(name) / "ip-adapter-faceid_tiny_nolora.safetensors"


@lru_cache(maxsize=None)
def golden(name="golden"):
    return load_file(str(oracle_dir(name) / "golden.safetensors"))


def tiny_sdxl():
    """A ComfyUI ModelPatcher around comfy.model_base.SDXL (a subclass) holding the oracle UNet."""
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils
    from comfy.ldm.modules.diffusionmodules.openaimodel import Timestep

    class TinySDXLModel(comfy.model_base.SDXL):
        def __init__(self, model_config, model_type=comfy.model_base.ModelType.EPS, device=None):
            super().__init__(model_config, model_type, device=device)
            self.embedder = Timestep(8)

    class TinySDXL(comfy.supported_models.SDXL):
        unet_config = {"model_channels": 32, "context_dim": 64, "adm_in_channels": 80}
        unet_extra_config = {"num_heads": -1, "num_head_channels": 16}

        def get_model(self, state_dict, prefix="", device=None):
            return TinySDXLModel(self, model_type=self.model_type(state_dict, prefix), device=device)

    unet_dir = oracle_dir("golden") / "weights" / "tiny-sdxl" / "unet"
    diffusers_sd = load_file(str(unet_dir / "diffusion_pytorch_model.safetensors"))
    config = TinySDXL(dict(TINY_UNET_CONFIG))
    key_map = comfy.utils.unet_to_diffusers(config.unet_config)
    sd = {comfy_key: diffusers_sd.pop(diffusers_key) for diffusers_key, comfy_key in key_map.items()
          if diffusers_key in diffusers_sd}
    assert not diffusers_sd, f"oracle UNet keys left unmapped: {sorted(diffusers_sd)[:5]}"
    model = config.get_model(sd)
    missing, unexpected = model.diffusion_model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    model.eval()
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))


def tiny_models(pack, name="golden"):
    """The tiny SDXL with the oracle's FaceID adapter through the pack's Identity Conditioning node:
    {"base": the MODEL, "adapter", "node": the Identity Conditioning node, "inversion": the MODEL Invert
    takes (no embedding), "identity": the MODEL with the oracle's identity embedding}."""
    from revpers_core.faceid import load_faceid_adapter

    with torch.inference_mode():
        base = tiny_sdxl()
        adapter = load_faceid_adapter(str(adapter_path(name)))
        node = pack.nodes.identity.RevPersIdentityConditioning
        return {"base": base, "adapter": adapter, "node": node, "inversion": node.execute(base, adapter, 1.0)[0],
                "identity": node.execute(base, adapter, 1.0, identity_embedding(name))[0]}


def conditioning(case, phase, name="golden"):
    """The oracle's stored UNet conditioning of ``phase`` ("inversion" or "generation") as ComfyUI
    CONDITIONING lists: (positive = the oracle's batch row 1 "cond", negative = row 0 "uncond")."""
    g = golden(name)
    hidden = g[f"{case}/{phase}/cond_encoder_hidden_states"]
    pooled = g[f"{case}/{phase}/cond_text_embeds"]
    time_ids = g[f"{case}/{phase}/cond_time_ids"]

    def one(row):
        h, w, crop_h, crop_w, target_h, target_w = (int(v) for v in time_ids[row])
        return [[hidden[row:row + 1].clone(), {"pooled_output": pooled[row:row + 1].clone(), "height": h, "width": w,
                                                "crop_h": crop_h, "crop_w": crop_w, "target_height": target_h,
                                                "target_width": target_w}]]

    return one(1), one(0)


def latent(case, name="golden"):
    """The oracle's x0 as a ComfyUI LATENT (user latent space: ComfyUI multiplies by 0.13025 on the way in)."""
    return {"samples": golden(name)[f"{case}/x0"] / LATENT_SCALE}


def identity_embedding(name="golden"):
    """The identity the oracle's generation uses, [1, 512] (row 1 of its ip-adapter embeds)."""
    return golden(name)["ip_embeds_generation"][1].reshape(1, -1).clone()
