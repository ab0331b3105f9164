"""Anonymized sampling: replay the inversion under identity-guided negative guidance."""
import logging

from comfy_api.v0_0_2 import io

from revpers_core import guarantee, guidance as scale_rules

from .common import Inversion, Progress, category, max_rows_input
from ._diffusion_runs import run_sampling
from ._identity_attention import identity_of

log = logging.getLogger("revpers")


def check_identity(model, record):
    """The MODEL's identity tokens, which must hold one identity embedding per inverted face (privacy: never
    sample without one)."""
    tokens = identity_of(model)
    if tokens is None or not tokens.has_identity:
        raise ValueError("the MODEL carries no identity: connect the MODEL from Identity Conditioning WITH the faces' "
                         "embeddings. Without an identity the sampler would reproduce the input faces, not "
                         "anonymize them.")
    if tokens.faces != record.batch_size:
        raise ValueError(f"the MODEL carries {tokens.faces} identity embedding(s) but the inversion holds "
                         f"{record.batch_size} face(s): connect exactly one embedding per face, in the order of the "
                         "latents that were inverted")
    return tokens


class RevPersAnonymizedSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RevPersAnonymizedSampler",
            display_name="Anonymized Sampler (RevPers)",
            category=category("Diffusion"),
            description=(
                "Anonymized sampling, the paper's second stage: starts from the inversion's x_T and replays its "
                "solver with the recorded noise maps, now with the identity on the conditional branch and NEGATIVE "
                "guidance, which pushes each face away from its identity and toward the 'attribute' branch, while "
                "pose, expression, light and background follow the inversion. One model call per step for all "
                "faces and both branches (in chunks of at most max_rows rows when there are more). "
                "reference_compat reproduces the published code's numerics, quirks included."),
            inputs=[
                io.Model.Input("model", tooltip="Identity Conditioning output WITH the faces' embeddings."),
                io.Conditioning.Input("conditioning", tooltip="Identity branch text: CLIP Text Encode of \"\"."),
                io.Conditioning.Input("attribute", tooltip="From Attribute Text: what the face is pulled toward "
                                                           "(empty text = zeros)."),
                Inversion.Input("inversion", tooltip="From Invert (RevPers)."),
                io.Float.Input("guidance", default=scale_rules.DEFAULT, min=scale_rules.WIDGET_RANGE[0],
                               max=scale_rules.WIDGET_RANGE[1], step=scale_rules.STEP,
                               tooltip="Guidance scale; negative moves away from the identity (the paper uses "
                                       f"{scale_rules.DEFAULT:g}). Stronger = more different, less faithful."),
                io.Boolean.Input(
                    "reference_compat", default=False,
                    tooltip="Reproduce the published code exactly, quirks included (solver state carried over "
                            "from the inversion, first-order last step below 15 steps, default-size SDXL "
                            "conditioning). Off = the clean method, which reconstructs exactly."),
                io.Int.Input(
                    "reference_size", default=1024, min=64, max=8192, step=8,
                    tooltip="Only with reference_compat: the SDXL size conditioning the reference passes during "
                            "sampling (its pipeline default, 1024)."),
                io.String.Input(
                    "face_guidance", optional=True, default="", multiline=False,
                    tooltip="Stronger guidance for single faces, as ROW:SCALE pairs (e.g. "
                            f"\"{scale_rules.FACE_GUIDANCE_EXAMPLE}\"), "
                            "ROW being the face's number in Detect and Align's order, as the audit reports it. "
                            "Only those faces change: every other face comes out bit-identical. Empty = "
                            "'guidance' for every face. Guaranteed mode (the revpers CLI) sets it by itself."),
                max_rows_input(),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip="The anonymized face latents; VAE Decode them."),
            ],
        )

    @classmethod
    def execute(cls, model, conditioning, attribute, inversion, guidance, reference_compat, reference_size,
                face_guidance="", max_rows=0):
        tokens = check_identity(model, inversion)
        overrides = guarantee.parse_face_guidance(face_guidance, inversion.batch_size)
        scales = guarantee.row_guidance(float(guidance), overrides, inversion.batch_size)
        warnings = [w for w in (guarantee.weak_guidance_warning(float(guidance), tokens.scale),
                                inversion.guidance_note(float(guidance))) if w]
        for warning in warnings:
            log.warning("revpers: %s", warning)
        out = run_sampling(model, inversion, conditioning, attribute, float(guidance), bool(reference_compat),
                           int(reference_size), on_step=Progress(inversion.steps), row_scales=scales,
                           max_rows=int(max_rows))
        text = list(warnings)
        if overrides:
            text.append(f"per-face guidance: {guarantee.format_face_guidance(overrides)} (the other faces: "
                        f"{float(guidance):g})")
        # the warnings and the per-face guidance used, shown on the node (web/revpers.js); the same as data
        # for API clients (the CLI reads only that)
        verdict = {"anonymizing": not scale_rules.why_not_anonymizing(float(guidance), tokens.scale),
                   "warnings": warnings, "face_guidance": guarantee.format_face_guidance(overrides)}
        return io.NodeOutput({"samples": out}, ui={"text": text, "revpers_sampler": [verdict]})


NODES = [RevPersAnonymizedSampler]
