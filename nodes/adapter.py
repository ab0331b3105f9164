"""IP-Adapter-FaceID loader node."""
import os

import folder_paths

from revpers_core.faceid import load_faceid_adapter

from .common import FACEID_ADAPTER, category


class RevPersFaceIDAdapterLoader:
    DESCRIPTION = (
        "Loads an IP-Adapter-FaceID file from models/ipadapter: ip-adapter-faceid_sdxl.bin for SDXL, "
        "ip-adapter-faceid_sd15.bin for SD1.5, or a .safetensors conversion. It holds the identity projection "
        "(ArcFace 512 -> identity tokens) and the LoRA the file carries for every attention layer; the per-layer "
        "identity attention weights (most of the file) are checked, then read from the file again only when "
        "Identity Conditioning makes new identity tokens. .bin files are read with torch's weights-only loader: "
        "a file holding anything but tensors is refused and nothing in it runs.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "adapter_name": (folder_paths.get_filename_list("ipadapter"), {
                    "tooltip": "File in models/ipadapter (IPAdapter_plus users already have this folder). Get "
                               "ip-adapter-faceid_sdxl.bin from huggingface.co/h94/IP-Adapter-FaceID."}),
            }
        }

    RETURN_TYPES = (FACEID_ADAPTER,)
    RETURN_NAMES = ("faceid_adapter",)
    OUTPUT_TOOLTIPS = ("The FaceID adapter's weights; connect to Identity Conditioning.",)
    FUNCTION = "load"
    CATEGORY = category("Identity")

    @classmethod
    def IS_CHANGED(cls, adapter_name):
        # Reload when the file on disk changes (ComfyUI otherwise reuses the cached adapter).
        path = folder_paths.get_full_path("ipadapter", adapter_name)
        if path is None or not os.path.isfile(path):
            return ""
        stat = os.stat(path)
        return f"{stat.st_mtime_ns}-{stat.st_size}"

    def load(self, adapter_name):
        path = folder_paths.get_full_path("ipadapter", adapter_name)
        if path is None:
            raise FileNotFoundError(
                f"FaceID adapter '{adapter_name}' is not in models/ipadapter (looked in: "
                f"{', '.join(folder_paths.get_folder_paths('ipadapter'))}). Get ip-adapter-faceid_sdxl.bin from "
                "https://huggingface.co/h94/IP-Adapter-FaceID and put it there.")
        return (load_faceid_adapter(path),)


NODE_CLASS_MAPPINGS = {"RevPersFaceIDAdapterLoader": RevPersFaceIDAdapterLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"RevPersFaceIDAdapterLoader": "FaceID Adapter Loader (RevPers)"}
