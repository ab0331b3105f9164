"""VAE Encode (mode) against the host's own VAE Encode, in-process on a stand-in SD VAE (the KL
autoencoder of SD1.5 and SDXL, seeded values): where the host's node already takes the mode (its
regularizer does not sample: ComfyUI 0.3.6x and later), the two give identical latents and the node's
description says the core node is enough; where it samples (the 2024 floor), two encodes of the same
picture differ and only ours repeats. The feature check the description relies on is held to what
the host's node actually does."""

import torch


def standin_vae():
    import comfy.sd

    from revpers_cli.standins.layout import checkpoint_layout
    from revpers_cli.standins.values import checkpoint_value

    prefix = "first_stage_model."  # the VAE's tensors in the SD1.5 checkpoint layout, without it
    shapes = {key[len(prefix):]: shape for key, (shape, _) in checkpoint_layout("sd15").items()
              if key.startswith(prefix)}
    sd = {key: checkpoint_value(0, key, shape) for key, shape in shapes.items()}
    return comfy.sd.VAE(sd=sd)


def encode_twice(encode):
    out = []
    for seed in (1, 2):  # the global generator is what a sampling encoder draws from
        torch.manual_seed(seed)
        out.append(encode())
    return out


def test_core_vae_encode_and_ours(comfy_inprocess):
    import nodes as core

    latent = comfy_inprocess.nodes.latent
    vae = standin_vae()
    pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours = encode_twice(lambda: latent.RevPersVAEEncode.execute(pixels, vae)[0]["samples"])
        host = encode_twice(lambda: core.VAEEncode().encode(vae, pixels)[0]["samples"])
    spread = float((host[0] - host[1]).abs().max())
    takes_mode = latent.core_vae_encode_takes_mode()
    print(f"\n[vae] host VAE Encode takes the mode: {takes_mode}; spread of two host encodes {spread:.3g}; "
          f"max |host - ours| {float((host[0] - ours[0]).abs().max()):.3g}")

    assert ours[0].shape == (1, 4, 8, 8) and torch.equal(ours[0], ours[1])
    description = latent.RevPersVAEEncode.DESCRIPTION
    if takes_mode:
        assert torch.equal(host[0], host[1]) and torch.equal(host[0], ours[0])
        assert "core VAE Encode already takes the mode" in description
    else:
        assert spread > 0, "the feature check says the host samples, but its VAE Encode repeated exactly"
        assert "draws a sample: use this node" in description
