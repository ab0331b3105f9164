"""Attribute modulation: the text the anonymized face is pulled toward, and identity-embedding modulation."""
import torch

from revpers_core import modulation, solver

from .common import EMBEDDING, category


class RevPersAttributeText:
    DESCRIPTION = (
        "Attributes for the anonymized face, as text (e.g. 'an old man'). With negative guidance the sampler moves "
        "away from the identity branch and TOWARD this branch, so connect it to the Anonymized Sampler's 'attribute' "
        "input (it is the sampler's unconditional branch). Empty text gives the reference's empty attribute: a "
        "conditioning of zeros (cross-attention tensor and pooled output), like SDXL's force_zeros_for_empty_prompt; "
        "that is also the inversion's unconditional conditioning.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The text encoder of the checkpoint."}),
                "text": ("STRING", {
                    "multiline": True, "default": "",
                    "tooltip": "Attributes to steer toward, e.g. 'an old man'. Empty = no attribute (zeros)."}),
            }
        }

    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("attribute",)
    OUTPUT_TOOLTIPS = ("Conditioning of the branch negative guidance pulls toward (sampler input 'attribute'); "
                       "zeros when the text is empty.",)
    FUNCTION = "encode"
    CATEGORY = category("Attributes")

    def encode(self, clip, text):
        if clip is None:
            raise ValueError("no CLIP connected: connect the checkpoint's CLIP output")
        tokens = clip.tokenize(text if text.strip() else "")
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        if not text.strip():
            cond = torch.zeros_like(cond)
            pooled = torch.zeros_like(pooled) if pooled is not None else None
        extra = {} if pooled is None else {"pooled_output": pooled}
        return ([[cond, extra]],)


class RevPersModulateIdentity:
    DESCRIPTION = (
        "Modulates identity embeddings before Identity Conditioning, as the paper's reference does: optionally flips "
        "each embedding (opposite), rotates it by a random angle of up to max_angle degrees toward a seeded random "
        "direction orthogonal to it (magnitude kept), then scales it by id_emb_scale. Defaults change nothing.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "embedding": (EMBEDDING, {"tooltip": "Identity embeddings, one row per face."}),
                "max_angle": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": modulation.MAX_ANGLE, "step": 1.0,
                    "tooltip": "Largest rotation in degrees; the angle is drawn uniformly in [0, max_angle]. 0 = no "
                               "rotation."}),
                "opposite": ("BOOLEAN", {"default": False,
                                         "tooltip": "Flip the embedding to its opposite direction first."}),
                "id_emb_scale": ("FLOAT", {
                    "default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05,
                    "tooltip": "Factor applied to the (rotated) embedding; the reference's id_emb_scale."}),
                "seed": ("INT", {
                    "default": 0, "min": 0, "max": solver.MAX_SEED,
                    "tooltip": "Seed of the random angle and direction (the same for every face, as the "
                               "reference seeds each face alike); used modulo 2^32."}),
            }
        }

    RETURN_TYPES = (EMBEDDING,)
    RETURN_NAMES = ("embedding",)
    OUTPUT_TOOLTIPS = ("The modulated embeddings, [faces, 512].",)
    FUNCTION = "modulate"
    CATEGORY = category("Attributes")

    def modulate(self, embedding, max_angle, opposite, id_emb_scale, seed):
        return (modulation.modulate_identity(embedding, float(max_angle), bool(opposite), float(id_emb_scale), int(seed)),)


NODE_CLASS_MAPPINGS = {
    "RevPersAttributeText": RevPersAttributeText,
    "RevPersModulateIdentity": RevPersModulateIdentity,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "RevPersAttributeText": "Attribute Text (RevPers)",
    "RevPersModulateIdentity": "Modulate Identity (RevPers)",
}
