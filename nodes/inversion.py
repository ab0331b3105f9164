"""Inverse diffusion: edit-friendly DDPM inversion of face latents."""
from comfy_api.v0_0_2 import io

from revpers_core import guidance, solver

from .common import Inversion, Progress, category, max_rows_input
from ._diffusion_runs import run_inversion
from ._identity_attention import identity_of


def _check_inversion_model(model):
    tokens = identity_of(model)
    if tokens is None:
        raise ValueError("Invert (RevPers) needs the MODEL from Identity Conditioning with NO embedding connected (the "
                         "FaceID adapter with the null identity on both branches); this MODEL has no FaceID adapter")
    if tokens.has_identity:
        raise ValueError("Invert (RevPers) needs the MODEL from an Identity Conditioning node with NO embedding connected "
                         "(null identity on both branches); this MODEL carries identity embeddings - use it for the "
                         "Anonymized Sampler instead")


def _check_latent(latent):
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if samples is None or samples.ndim != 4 or samples.shape[0] < 1:
        raise ValueError("the LATENT must hold a batch of face latents [faces, channels, height, width] (VAE Encode "
                         "the aligned face crops)")
    return samples


class RevPersInvert(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RevPersInvert",
            display_name="Invert (RevPers)",
            category=category("Diffusion"),
            description=(
                "Edit-friendly DDPM inversion (SDE-DPM-Solver++ 2M), the paper's first stage: finds the start latent "
                "x_T and the noise map of every step such that replaying the solver reproduces the input faces "
                "exactly. All faces of the batch are inverted together, one model call per step (in chunks when "
                "they exceed max_rows). Use the MODEL from Identity Conditioning WITHOUT an embedding, "
                "'conditioning' = CLIP Text Encode of an empty prompt and 'unconditional' = Attribute Text with "
                "empty text (zeros), and the same guidance as the sampler."),
            inputs=[
                io.Model.Input("model", tooltip="Identity Conditioning output with no embedding (adapter active, null "
                                                "identity on both branches)."),
                io.Latent.Input("latent", tooltip="VAE-encoded face crops, one per face."),
                io.Conditioning.Input("conditioning", tooltip="Conditional branch: CLIP Text Encode of \"\"."),
                io.Conditioning.Input("unconditional", tooltip="Unconditional branch: zeros (Attribute Text with "
                                                               "empty text)."),
                io.Float.Input("guidance", default=guidance.DEFAULT, min=guidance.WIDGET_RANGE[0],
                               max=guidance.WIDGET_RANGE[1], step=guidance.STEP,
                               tooltip="Guidance scale of the inversion: the sampler's (the method inverts and "
                                       f"samples with one scale; the paper's {guidance.DEFAULT:g})."),
                io.Int.Input("steps", default=solver.DEFAULT_STEPS, min=solver.MIN_STEPS, max=solver.MAX_STEPS,
                             tooltip=f"Solver steps (the paper uses {solver.DEFAULT_STEPS})."),
                io.Float.Input(
                    "skip", default=solver.DEFAULT_SKIP, min=solver.SKIP_MIN, max=solver.SKIP_MAX, step=0.01,
                    round=False,
                    tooltip="Fraction of the noise schedule skipped at the noisy end: higher keeps more of the "
                            "input (pose, light, background), lower changes more. 0.7 = timesteps 299..1."),
                io.Int.Input("seed", default=0, min=0, max=solver.MAX_SEED,
                             tooltip="Seed of the noise drawn for the inversion (each face uses it alike)."),
                max_rows_input(),
            ],
            outputs=[
                Inversion.Output(display_name="inversion",
                                 tooltip="x_T, the noise maps and the schedule, for the Anonymized Sampler."),
                io.Latent.Output(display_name="x_T", tooltip="The inverted start latent x_T (for inspection)."),
            ],
        )

    @classmethod
    def execute(cls, model, latent, conditioning, unconditional, guidance, steps, skip, seed, max_rows=0):
        samples = _check_latent(latent)
        _check_inversion_model(model)
        steps, skip, seed = solver.check_steps(steps), solver.check_skip(skip), solver.check_seed(seed)
        record, x_T = run_inversion(model, samples, conditioning, unconditional, float(guidance), steps, skip, seed,
                                    on_step=Progress(steps), max_rows=int(max_rows))
        return io.NodeOutput(record, {"samples": x_T})


NODES = [RevPersInvert]
