"""VAE encoding as the method needs it: the mode of the VAE's latent distribution."""
from comfy_api.v0_0_2 import io

from .common import category


def core_vae_encode_takes_mode():
    """True where this ComfyUI's own VAE Encode already encodes to the mode: its KL regularizer no
    longer samples by default (releases from mid-2025 on). A feature check, not a version check."""
    try:
        from comfy.ldm.models.autoencoder import DiagonalGaussianRegularizer
        return not DiagonalGaussianRegularizer().sample
    except (ImportError, AttributeError, TypeError):
        return False


_ON_THIS_HOST = (
    " On this ComfyUI the core VAE Encode already takes the mode and gives identical latents, so "
    "either node will do; this one keeps a workflow repeatable when it is shared with older ComfyUI."
    if core_vae_encode_takes_mode() else
    " This ComfyUI's own VAE Encode draws a sample: use this node.")


class RevPersVAEEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RevPersVAEEncode",
            display_name="VAE Encode (mode) (RevPers)",
            category=category("Diffusion"),
            description=(
                "Encodes face crops to latents with the mode (mean) of the VAE's latent distribution, as the "
                "reference does. ComfyUI releases before mid-2025 draw a random sample in VAE Encode instead, so "
                "the same photo gives a different inversion, and a different anonymized face, on every run; this "
                "node gives the same latents every time on every ComfyUI version." + _ON_THIS_HOST),
            inputs=[
                io.Image.Input("pixels", tooltip="Face crops (from Detect and Align Faces, or an aligned face)."),
                io.Vae.Input("vae", tooltip="The checkpoint's VAE."),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip="The crops' latents, one per face; connect to Invert."),
            ],
        )

    @classmethod
    def execute(cls, pixels, vae):
        # The sampling switch of ComfyUI's KL-regularized autoencoders; newer releases default it to off.
        regularizer = getattr(getattr(vae, "first_stage_model", None), "regularization", None)
        sampling = bool(getattr(regularizer, "sample", False))
        if sampling:
            regularizer.sample = False
        try:
            samples = vae.encode(pixels[:, :, :, :3])
        finally:
            if sampling:
                regularizer.sample = True
        return io.NodeOutput({"samples": samples})


NODES = [RevPersVAEEncode]
