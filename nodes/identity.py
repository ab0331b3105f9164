"""Identity-guided conditioning: the FaceID adapter on a MODEL, identity on the conditional branch."""
from comfy_api.v0_0_2 import io

from .common import Embedding, FaceIDAdapter, category
from ._identity_attention import apply_faceid


class RevPersIdentityConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RevPersIdentityConditioning",
            display_name="Identity Conditioning (RevPers)",
            category=category("Identity"),
            description=(
                "Puts the FaceID adapter on a MODEL (its LoRA at weight 1 and identity attention in every "
                "cross-attention) so that the conditional branch sees each face's identity tokens and the "
                "unconditional branch the tokens of the null (zero) embedding. With negative guidance in the "
                "Anonymized Sampler this pushes the result away from the person. Without an embedding it gives the "
                "inversion's model: adapter and LoRA active, null identity on both branches. Works on a clone: the "
                "input MODEL is unchanged, and other patches and LoRAs are kept. The LoRA is merged into the weights "
                "by ComfyUI where the model runs on a GPU, and added by each projection at run time where it runs "
                "on the CPU (there a merge would hold every patched weight twice)."),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (SDXL for ip-adapter-faceid_sdxl.bin)."),
                FaceIDAdapter.Input("faceid_adapter", tooltip="From FaceID Adapter Loader."),
                io.Float.Input("ip_adapter_scale", default=1.0, min=0.0, max=5.0, step=0.05,
                               tooltip="Weight of the identity attention (the reference uses 1.0)."),
                Embedding.Input("embedding", optional=True,
                                tooltip="Identity embeddings, one row per face in the order of the latents. Leave "
                                        "unconnected for the model that Invert (RevPers) needs."),
            ],
            outputs=[
                io.Model.Output(display_name="model",
                                tooltip="The MODEL with the FaceID adapter: identity on the conditional branch (or "
                                        "the null identity on both when no embedding is connected)."),
            ],
        )

    @classmethod
    def execute(cls, model, faceid_adapter, ip_adapter_scale, embedding=None):
        return io.NodeOutput(apply_faceid(model, faceid_adapter, embedding, float(ip_adapter_scale)))


NODES = [RevPersIdentityConditioning]
