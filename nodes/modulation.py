"""Attribute modulation: the text the anonymized face is pulled toward, and identity-embedding modulation."""
import torch
from comfy_api.v0_0_2 import io

from revpers_core import modulation, solver

from .common import Embedding, category


class RevPersAttributeText(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RevPersAttributeText",
            display_name="Attribute Text (RevPers)",
            category=category("Attributes"),
            description=(
                "Attributes for the anonymized face, as text (e.g. 'an old man'). With negative guidance the sampler "
                "moves away from the identity branch and TOWARD this branch, so connect it to the Anonymized "
                "Sampler's 'attribute' input (it is the sampler's unconditional branch). Empty text gives the "
                "reference's empty attribute: a conditioning of zeros (cross-attention tensor and pooled output), "
                "like SDXL's force_zeros_for_empty_prompt; that is also the inversion's unconditional "
                "conditioning."),
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder of the checkpoint."),
                io.String.Input("text", multiline=True, default="",
                                tooltip="Attributes to steer toward, e.g. 'an old man'. Empty = no attribute (zeros)."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="attribute",
                                       tooltip="Conditioning of the branch negative guidance pulls toward (sampler "
                                               "input 'attribute'); zeros when the text is empty."),
            ],
        )

    @classmethod
    def execute(cls, clip, text):
        if clip is None:
            raise ValueError("no CLIP connected: connect the checkpoint's CLIP output")
        tokens = clip.tokenize(text if text.strip() else "")
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        if not text.strip():
            cond = torch.zeros_like(cond)
            pooled = torch.zeros_like(pooled) if pooled is not None else None
        extra = {} if pooled is None else {"pooled_output": pooled}
        return io.NodeOutput([[cond, extra]])


class RevPersModulateIdentity(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RevPersModulateIdentity",
            display_name="Modulate Identity (RevPers)",
            category=category("Attributes"),
            description=(
                "Modulates identity embeddings before Identity Conditioning, as the paper's reference does: "
                "optionally flips each embedding (opposite), rotates it by a random angle of up to max_angle degrees "
                "toward a seeded random direction orthogonal to it (magnitude kept), then scales it by "
                "id_emb_scale. Defaults change nothing."),
            inputs=[
                Embedding.Input("embedding", tooltip="Identity embeddings, one row per face."),
                io.Float.Input("max_angle", default=0.0, min=0.0, max=modulation.MAX_ANGLE, step=1.0,
                               tooltip="Largest rotation in degrees; the angle is drawn uniformly in [0, max_angle]. "
                                       "0 = no rotation."),
                io.Boolean.Input("opposite", default=False,
                                 tooltip="Flip the embedding to its opposite direction first."),
                io.Float.Input("id_emb_scale", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="Factor applied to the (rotated) embedding; the reference's id_emb_scale."),
                io.Int.Input("seed", default=0, min=0, max=solver.MAX_SEED,
                             tooltip="Seed of the random angle and direction (the same for every face, as the "
                                     "reference seeds each face alike); used modulo 2^32."),
            ],
            outputs=[
                Embedding.Output(display_name="embedding", tooltip="The modulated embeddings, [faces, 512]."),
            ],
        )

    @classmethod
    def execute(cls, embedding, max_angle, opposite, id_emb_scale, seed):
        return io.NodeOutput(modulation.modulate_identity(embedding, float(max_angle), bool(opposite),
                                                          float(id_emb_scale), int(seed)))


NODES = [RevPersAttributeText, RevPersModulateIdentity]
