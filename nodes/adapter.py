"""IP-Adapter-FaceID loader node."""
import os

import folder_paths
from comfy_api.v0_0_2 import io

from revpers_core.faceid import load_faceid_adapter

from .common import FaceIDAdapter, category, check_options


class RevPersFaceIDAdapterLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RevPersFaceIDAdapterLoader",
            display_name="FaceID Adapter Loader (RevPers)",
            category=category("Identity"),
            description=(
                "Loads an IP-Adapter-FaceID file from models/ipadapter: ip-adapter-faceid_sdxl.bin for SDXL, "
                "ip-adapter-faceid_sd15.bin for SD1.5, or a .safetensors conversion. It holds the identity "
                "projection (ArcFace 512 -> identity tokens) and the LoRA the file carries for every attention "
                "layer; the per-layer identity attention weights (most of the file) are checked, then read from "
                "the file again only when Identity Conditioning makes new identity tokens. .bin files are read "
                "with torch's weights-only loader: a file holding anything but tensors is refused and nothing in "
                "it runs."),
            inputs=[
                io.Combo.Input(
                    "adapter_name", options=folder_paths.get_filename_list("ipadapter"),
                    tooltip="File in models/ipadapter (IPAdapter_plus users already have this folder). Get "
                            "ip-adapter-faceid_sdxl.bin from huggingface.co/h94/IP-Adapter-FaceID."),
            ],
            outputs=[
                FaceIDAdapter.Output(display_name="faceid_adapter",
                                     tooltip="The FaceID adapter's weights; connect to Identity Conditioning."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, adapter_name):
        # Reload when the file on disk changes (ComfyUI otherwise reuses the cached adapter).
        path = folder_paths.get_full_path("ipadapter", adapter_name)
        if path is None or not os.path.isfile(path):
            return ""
        stat = os.stat(path)
        return f"{stat.st_mtime_ns}-{stat.st_size}"

    @classmethod
    def validate_inputs(cls, adapter_name=None):
        return check_options(cls, adapter_name=adapter_name)

    @classmethod
    def execute(cls, adapter_name):
        path = folder_paths.get_full_path("ipadapter", adapter_name)
        if path is None:
            raise FileNotFoundError(
                f"FaceID adapter '{adapter_name}' is not in models/ipadapter (looked in: "
                f"{', '.join(folder_paths.get_folder_paths('ipadapter'))}). Get ip-adapter-faceid_sdxl.bin from "
                "https://huggingface.co/h94/IP-Adapter-FaceID and put it there.")
        return io.NodeOutput(load_faceid_adapter(path))


NODES = [RevPersFaceIDAdapterLoader]
