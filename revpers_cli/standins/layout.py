"""The standard single-file checkpoint layouts of SDXL base and SD1.5: every key with its shape and
dtype, worked out from the architectures' numbers alone (no ComfyUI, no diffusers).

A single-file checkpoint (`sd_xl_base_1.0.safetensors`, `v1-5-pruned-emaonly.safetensors`) keeps each
part under the name of the original Stability code that trained it:

    model.diffusion_model.            the UNet in LDM naming (`openaimodel.py`): time_embed,
                                      label_emb (SDXL), input_blocks.N.M, middle_block, output_blocks.N.M, out
    first_stage_model.                the KL autoencoder (`encoder.down.I.block.J`, `decoder.up.I...`)
    cond_stage_model.transformer.     SD1.5's text encoder, CLIP ViT-L/14 in Hugging Face naming
    conditioner.embedders.0.transformer.   SDXL's CLIP ViT-L/14, Hugging Face naming
    conditioner.embedders.1.model.    SDXL's OpenCLIP ViT-bigG/14, OpenCLIP naming (fused in_proj, ln_final,
                                      text_projection as a matrix, logit_scale)

Every floating tensor is float16 (as in the published fp16 files); CLIP-L's `position_ids`, the one
buffer the real files carry, is int64 [1, 77]. Loaders (ComfyUI's among them) recognise a checkpoint by
these names and shapes, so they are what a stand-in must have.

    checkpoint_layout("sdxl") -> {key: (shape, dtype)}   (2,515 keys, sorted)
"""
import hashlib
from dataclasses import dataclass

import torch

__all__ = ["ARCHS", "checkpoint_layout", "parameter_count", "layout_digest", "UNetArch", "UNET", "TEXT_ENCODERS"]

F16, I64 = torch.float16, torch.int64


@dataclass(frozen=True)
class UNetArch:
    """The numbers that fix an LDM UNet's tensors. `level_mult` gives each resolution level's width as a
    multiple of `model_channels`; `level_depth` how many transformer blocks each attention layer of a
    level has (0: that level has no attention), the same going down and coming up."""
    level_mult: tuple
    level_depth: tuple
    middle_depth: int
    context_dim: int
    linear_proj: bool  # proj_in/proj_out of the spatial transformers: Linear (SDXL) or 1x1 Conv (SD1.5)
    adm_in_channels: int = 0  # SDXL's pooled text + size conditioning vector (label_emb); 0: none
    model_channels: int = 320
    res_blocks: int = 2
    in_channels: int = 4
    out_channels: int = 4


UNET = {
    "sdxl": UNetArch(level_mult=(1, 2, 4), level_depth=(0, 2, 10), middle_depth=10, context_dim=2048,
                     linear_proj=True, adm_in_channels=2816),
    "sd15": UNetArch(level_mult=(1, 2, 4, 4), level_depth=(1, 1, 1, 0), middle_depth=1, context_dim=768,
                     linear_proj=False),
}
ARCHS = tuple(UNET)

# The text encoders: (key prefix, naming, width, layers, MLP width). Both CLIPs read 77 tokens of a
# 49,408-word vocabulary.
TEXT_ENCODERS = {
    "sd15": [("cond_stage_model.transformer.", "hf", 768, 12, 3072)],
    "sdxl": [("conditioner.embedders.0.transformer.", "hf", 768, 12, 3072),
             ("conditioner.embedders.1.model.", "openclip", 1280, 32, 5120)],
}
CLIP_VOCAB, CLIP_CONTEXT = 49408, 77

# The KL autoencoder of both (SDXL's VAE has SD's architecture): base width, level multiples, resnet
# blocks per level, latent channels.
VAE_CH, VAE_MULT, VAE_RES_BLOCKS, VAE_Z = 128, (1, 2, 4, 4), 2, 4


class _Layout(dict):
    """{key: (shape, dtype)} with the few kinds of layer these models are built of."""

    def tensor(self, key, *shape, dtype=F16):
        if key in self:
            raise ValueError(f"{key} is laid out twice")
        self[key] = (tuple(shape), dtype)

    def linear(self, prefix, n_in, n_out, bias=True):
        self.tensor(f"{prefix}.weight", n_out, n_in)
        if bias:
            self.tensor(f"{prefix}.bias", n_out)

    def conv(self, prefix, n_in, n_out, kernel):
        self.tensor(f"{prefix}.weight", n_out, n_in, kernel, kernel)
        self.tensor(f"{prefix}.bias", n_out)

    def norm(self, prefix, n):
        """GroupNorm or LayerNorm: a scale and a shift per channel."""
        self.tensor(f"{prefix}.weight", n)
        self.tensor(f"{prefix}.bias", n)


# --- UNet (LDM `openaimodel.UNetModel`) ---------------------------------------------------------------

def _unet_resblock(lay, p, n_in, n_out, emb):
    """ResBlock: GroupNorm, 3x3 conv, the time embedding's projection, GroupNorm, 3x3 conv, and a 1x1
    skip convolution when the width changes."""
    lay.norm(f"{p}.in_layers.0", n_in)
    lay.conv(f"{p}.in_layers.2", n_in, n_out, 3)
    lay.linear(f"{p}.emb_layers.1", emb, n_out)
    lay.norm(f"{p}.out_layers.0", n_out)
    lay.conv(f"{p}.out_layers.3", n_out, n_out, 3)
    if n_in != n_out:
        lay.conv(f"{p}.skip_connection", n_in, n_out, 1)


def _unet_transformer(lay, p, ch, depth, context_dim, linear_proj):
    """SpatialTransformer: GroupNorm, proj_in, `depth` transformer blocks (self-attention, cross-attention
    on the text context, GEGLU feed-forward of 4x width, a LayerNorm before each), proj_out."""
    lay.norm(f"{p}.norm", ch)
    proj = (lambda q: lay.linear(q, ch, ch)) if linear_proj else (lambda q: lay.conv(q, ch, ch, 1))
    proj(f"{p}.proj_in")
    for d in range(depth):
        b = f"{p}.transformer_blocks.{d}"
        for attn, kv_dim in (("attn1", ch), ("attn2", context_dim)):
            lay.linear(f"{b}.{attn}.to_q", ch, ch, bias=False)
            lay.linear(f"{b}.{attn}.to_k", kv_dim, ch, bias=False)
            lay.linear(f"{b}.{attn}.to_v", kv_dim, ch, bias=False)
            lay.linear(f"{b}.{attn}.to_out.0", ch, ch)
        lay.linear(f"{b}.ff.net.0.proj", ch, 4 * ch * 2)  # GEGLU: value and gate
        lay.linear(f"{b}.ff.net.2", 4 * ch, ch)
        for n in (1, 2, 3):
            lay.norm(f"{b}.norm{n}", ch)
    proj(f"{p}.proj_out")


def _unet(lay, a: UNetArch, prefix="model.diffusion_model"):
    mc, emb = a.model_channels, 4 * a.model_channels
    lay.linear(f"{prefix}.time_embed.0", mc, emb)
    lay.linear(f"{prefix}.time_embed.2", emb, emb)
    if a.adm_in_channels:
        lay.linear(f"{prefix}.label_emb.0.0", a.adm_in_channels, emb)
        lay.linear(f"{prefix}.label_emb.0.2", emb, emb)

    def block(part, n, ch_in, ch_out, depth):
        """One input/output block: a ResBlock, then a spatial transformer where the level has attention.
        Returns the index of the next layer in the block."""
        _unet_resblock(lay, f"{prefix}.{part}.{n}.0", ch_in, ch_out, emb)
        if depth:
            _unet_transformer(lay, f"{prefix}.{part}.{n}.1", ch_out, depth, a.context_dim, a.linear_proj)
        return 2 if depth else 1

    # Going down: conv_in, then per level `res_blocks` blocks and (but for the last level) a strided conv.
    lay.conv(f"{prefix}.input_blocks.0.0", a.in_channels, mc, 3)
    skips, ch, n = [mc], mc, 1  # skips: the width of each input block's output, read again coming up
    for level, (mult, depth) in enumerate(zip(a.level_mult, a.level_depth)):
        for _ in range(a.res_blocks):
            block("input_blocks", n, ch, mult * mc, depth)
            ch = mult * mc
            skips.append(ch)
            n += 1
        if level < len(a.level_mult) - 1:
            lay.conv(f"{prefix}.input_blocks.{n}.0.op", ch, ch, 3)
            skips.append(ch)
            n += 1

    _unet_resblock(lay, f"{prefix}.middle_block.0", ch, ch, emb)
    _unet_transformer(lay, f"{prefix}.middle_block.1", ch, a.middle_depth, a.context_dim, a.linear_proj)
    _unet_resblock(lay, f"{prefix}.middle_block.2", ch, ch, emb)

    # Coming up: per level, deepest first, `res_blocks + 1` blocks that each take one skip connection;
    # the last block of every level but the top one ends in an upsampling conv.
    n = 0
    for level in reversed(range(len(a.level_mult))):
        mult, depth = a.level_mult[level], a.level_depth[level]
        for j in range(a.res_blocks + 1):
            nxt = block("output_blocks", n, ch + skips.pop(), mult * mc, depth)
            ch = mult * mc
            if level > 0 and j == a.res_blocks:
                lay.conv(f"{prefix}.output_blocks.{n}.{nxt}.conv", ch, ch, 3)
            n += 1

    lay.norm(f"{prefix}.out.0", mc)
    lay.conv(f"{prefix}.out.2", mc, a.out_channels, 3)


# --- KL autoencoder (LDM `AutoencoderKL`) ------------------------------------------------------------

def _vae_resblock(lay, p, n_in, n_out):
    lay.norm(f"{p}.norm1", n_in)
    lay.conv(f"{p}.conv1", n_in, n_out, 3)
    lay.norm(f"{p}.norm2", n_out)
    lay.conv(f"{p}.conv2", n_out, n_out, 3)
    if n_in != n_out:
        lay.conv(f"{p}.nin_shortcut", n_in, n_out, 1)


def _vae_middle(lay, p, ch):
    """Two resnet blocks around one single-head self-attention made of 1x1 convolutions."""
    _vae_resblock(lay, f"{p}.block_1", ch, ch)
    lay.norm(f"{p}.attn_1.norm", ch)
    for proj in ("q", "k", "v", "proj_out"):
        lay.conv(f"{p}.attn_1.{proj}", ch, ch, 1)
    _vae_resblock(lay, f"{p}.block_2", ch, ch)


def _vae(lay, prefix="first_stage_model"):
    widths = [VAE_CH * m for m in VAE_MULT]
    enc, dec = f"{prefix}.encoder", f"{prefix}.decoder"

    lay.conv(f"{enc}.conv_in", 3, VAE_CH, 3)
    ch = VAE_CH
    for i, width in enumerate(widths):
        for j in range(VAE_RES_BLOCKS):
            _vae_resblock(lay, f"{enc}.down.{i}.block.{j}", ch, width)
            ch = width
        if i < len(widths) - 1:
            lay.conv(f"{enc}.down.{i}.downsample.conv", ch, ch, 3)
    _vae_middle(lay, f"{enc}.mid", ch)
    lay.norm(f"{enc}.norm_out", ch)
    lay.conv(f"{enc}.conv_out", ch, 2 * VAE_Z, 3)  # mean and log-variance

    lay.conv(f"{prefix}.quant_conv", 2 * VAE_Z, 2 * VAE_Z, 1)
    lay.conv(f"{prefix}.post_quant_conv", VAE_Z, VAE_Z, 1)

    ch = widths[-1]
    lay.conv(f"{dec}.conv_in", VAE_Z, ch, 3)
    _vae_middle(lay, f"{dec}.mid", ch)
    for i in reversed(range(len(widths))):  # `up` is numbered like `down`: up.0 is the full resolution
        for j in range(VAE_RES_BLOCKS + 1):
            _vae_resblock(lay, f"{dec}.up.{i}.block.{j}", ch, widths[i])
            ch = widths[i]
        if i > 0:
            lay.conv(f"{dec}.up.{i}.upsample.conv", ch, ch, 3)
    lay.norm(f"{dec}.norm_out", ch)
    lay.conv(f"{dec}.conv_out", ch, 3, 3)


# --- text encoders -----------------------------------------------------------------------------------

def _clip_hf(lay, p, width, layers, mlp):
    """CLIP's text transformer as Hugging Face's CLIPTextModel names it (text_model.*). Its
    `position_ids` buffer (0..76) is in the real files too."""
    t = f"{p}text_model"
    lay.tensor(f"{t}.embeddings.token_embedding.weight", CLIP_VOCAB, width)
    lay.tensor(f"{t}.embeddings.position_embedding.weight", CLIP_CONTEXT, width)
    lay.tensor(f"{t}.embeddings.position_ids", 1, CLIP_CONTEXT, dtype=I64)
    for i in range(layers):
        b = f"{t}.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            lay.linear(f"{b}.self_attn.{proj}", width, width)
        lay.norm(f"{b}.layer_norm1", width)
        lay.norm(f"{b}.layer_norm2", width)
        lay.linear(f"{b}.mlp.fc1", width, mlp)
        lay.linear(f"{b}.mlp.fc2", mlp, width)
    lay.norm(f"{t}.final_layer_norm", width)


def _clip_openclip(lay, p, width, layers, mlp):
    """CLIP's text transformer as OpenCLIP names it: q, k and v fused in one in_proj, `text_projection` a
    bare [width, width] matrix (applied as x @ text_projection), the contrastive `logit_scale`."""
    lay.tensor(f"{p}token_embedding.weight", CLIP_VOCAB, width)
    lay.tensor(f"{p}positional_embedding", CLIP_CONTEXT, width)
    for i in range(layers):
        b = f"{p}transformer.resblocks.{i}"
        lay.norm(f"{b}.ln_1", width)
        lay.tensor(f"{b}.attn.in_proj_weight", 3 * width, width)
        lay.tensor(f"{b}.attn.in_proj_bias", 3 * width)
        lay.linear(f"{b}.attn.out_proj", width, width)
        lay.norm(f"{b}.ln_2", width)
        lay.linear(f"{b}.mlp.c_fc", width, mlp)
        lay.linear(f"{b}.mlp.c_proj", mlp, width)
    lay.norm(f"{p}ln_final", width)
    lay.tensor(f"{p}text_projection", width, width)
    lay.tensor(f"{p}logit_scale")


def checkpoint_layout(arch) -> dict:
    """{key: (shape, dtype)} of the whole single-file checkpoint of `arch` ("sdxl" or "sd15"), sorted by
    key: UNet, VAE and text encoders."""
    if arch not in UNET:
        raise ValueError(f"unknown checkpoint architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    lay = _Layout()
    _unet(lay, UNET[arch])
    _vae(lay)
    builders = {"hf": _clip_hf, "openclip": _clip_openclip}
    for prefix, naming, width, layers, mlp in TEXT_ENCODERS[arch]:
        builders[naming](lay, prefix, width, layers, mlp)
    return dict(sorted(lay.items()))


def parameter_count(layout) -> int:
    """The number of floating-point values in a layout (its parameters; position ids not counted)."""
    total = 0
    for shape, dtype in layout.values():
        if dtype.is_floating_point:
            n = 1
            for d in shape:
                n *= d
            total += n
    return total


def layout_digest(layout) -> str:
    """A short digest of a layout's keys, shapes and dtypes: recorded in a stand-in's marker, so that a
    file written with another layout is noticed and made again."""
    text = "\n".join(f"{k} {list(shape)} {str(dtype).replace('torch.', '')}" for k, (shape, dtype) in
                     sorted(layout.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
