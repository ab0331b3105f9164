"""Stand-in model files: the FaceID .bin against diffusers' own IP-Adapter-FaceID loaders on the real
SDXL / SD1.5 UNet architectures, the streamed safetensors writer against the safetensors library,
determinism and idempotency, the checkpoint layouts against the published numbers, diffusers' UNet and the
host ComfyUI's own saving code, and the checkpoints through ComfyUI's own loader, every weight compared
with the file (SDXL behind `sdxl`)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from paths import REPO
from standin_models import QUICKSTART_MODELS
from revpers_cli import standins
from revpers_cli.standins import faceid, layout
from revpers_cli.standins.__main__ import main as standins_main
from revpers_cli.standins.checkpoint import write_safetensors_streamed
from revpers_cli.standins.values import checkpoint_value

# The real files' published sizes (h94/IP-Adapter-FaceID): the stand-in must come within the
# container's overhead of them.
PUBLISHED_SIZE = {"sd15": 96_740_574}

UNET_CONFIGS = {  # diffusers' configs of the SDXL base and SD1.5 UNets
    "sdxl": dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
                 cross_attention_dim=2048, attention_head_dim=(5, 10, 20), use_linear_projection=True,
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816),
    "sd15": dict(down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                 attention_head_dim=8),
}

TEST_MODELS = REPO / ".host" / "test-models"


def meta_unet(arch):
    from diffusers import UNet2DConditionModel
    with torch.device("meta"):
        return UNet2DConditionModel(**UNET_CONFIGS[arch])


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def faceid_file(request, tmp_path_factory):
    arch = request.param
    path = tmp_path_factory.mktemp("faceid") / f"ip-adapter-faceid_{arch}.bin"
    size = faceid.write_faceid_bin(path, arch=arch, seed=0)
    assert size == path.stat().st_size == standins.SIZES[f"faceid-{arch}"]
    yield arch, path, size
    path.unlink()  # the SDXL one is 1.07 GB: given back when the module is done, not at the session's end


def test_faceid_bin_loads_weights_only_with_the_published_nesting(faceid_file):
    arch, path, size = faceid_file
    sd = torch.load(path, weights_only=True)
    assert list(sd) == ["image_proj", "ip_adapter"]
    assert all(t.dtype == torch.float16 for part in sd.values() for t in part.values())
    n = {"sdxl": 140, "sd15": 32}[arch]
    assert len(processor_ids(sd)) == n
    # every processor has the 8 LoRA tensors, every cross-attention (odd n) the 2 identity ones
    assert len(sd["ip_adapter"]) == 8 * n + 2 * (n // 2)
    assert {k.split(".", 1)[0] for k in sd["ip_adapter"] if "_ip." in k} == {str(i) for i in range(1, n, 2)}


def processor_ids(sd):
    return sorted({int(k.split(".", 1)[0]) for k in sd["ip_adapter"]})


def test_faceid_layout_matches_diffusers_loaders_on_the_real_unet(faceid_file):
    """diffusers' own FaceID loaders, on the real UNet architecture, accept every tensor: the image
    projection loads strictly, the identity attention of every cross-attention loads strictly, and
    every LoRA pair fits the projection it adapts (attn2's to_k/to_v read the text context)."""
    from diffusers.models.attention_processor import Attention

    arch, path, _ = faceid_file
    sd = torch.load(path, weights_only=True)
    unet = meta_unet(arch)
    assert [name for name, _, _ in faceid.processor_names(arch)] == list(unet.attn_processors)

    proj = unet._convert_ip_adapter_image_proj_to_diffusers(sd["image_proj"], low_cpu_mem_usage=False)
    assert type(proj).__name__ == "IPAdapterFaceIDImageProjection"
    tokens = proj(torch.randn(1, 512))
    assert tokens.shape == (1, 4, unet.config.cross_attention_dim)

    procs = unet._convert_ip_adapter_attn_to_diffusers([sd], low_cpu_mem_usage=False)
    with_ip = [n for n, p in procs.items() if hasattr(p, "to_k_ip")]
    assert len(with_ip) == len(procs) // 2 and all(n.endswith("attn2.processor") for n in with_ip)

    loras = unet._load_ip_adapter_loras([sd])[0]
    assert len(loras) == len(sd["ip_adapter"]) - 2 * len(with_ip)
    modules = dict(unet.named_modules())
    for key, tensor in loras.items():
        processor, proj_name, kind, _ = key[len("unet."):].rsplit(".", 3)
        attn = modules[processor.removesuffix(".processor")]
        assert isinstance(attn, Attention)
        linear = {"to_q_lora": attn.to_q, "to_k_lora": attn.to_k, "to_v_lora": attn.to_v,
                  "to_out_lora": attn.to_out[0]}[proj_name]
        expected = (128, linear.in_features) if kind == "down" else (linear.out_features, 128)
        assert tuple(tensor.shape) == expected, key
    cross_k = [t for k, t in loras.items() if "attn2" in k and "to_k_lora.down" in k]
    assert cross_k and all(t.shape[1] == unet.config.cross_attention_dim for t in cross_k)


def test_faceid_sd15_size_matches_the_published_file(tmp_path):
    size = faceid.write_faceid_bin(tmp_path / "f.bin", arch="sd15", seed=0)
    # rank-128 fp16 tensors make 96,709,632 bytes; the rest is the torch.save container
    assert abs(size - PUBLISHED_SIZE["sd15"]) / PUBLISHED_SIZE["sd15"] < 1e-3


def test_faceid_is_deterministic_per_seed(tmp_path):
    a, b, c = tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "c.bin"
    faceid.write_faceid_bin(a, "sd15", seed=3)
    faceid.write_faceid_bin(b, "sd15", seed=3)
    faceid.write_faceid_bin(c, "sd15", seed=4)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    sa, sc = torch.load(a, weights_only=True), torch.load(c, weights_only=True)
    assert not torch.equal(sa["ip_adapter"]["1.to_k_ip.weight"], sc["ip_adapter"]["1.to_k_ip.weight"])
    assert torch.equal(sa["image_proj"]["norm.weight"], torch.ones(768, dtype=torch.float16))


def test_faceid_rejects_an_unknown_architecture(tmp_path):
    with pytest.raises(ValueError, match="unknown FaceID architecture 'sd3'"):
        faceid.write_faceid_bin(tmp_path / "x.bin", arch="sd3")


def test_streamed_safetensors_reads_back_with_the_library(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    layout = {"b.weight": torch.empty(3, 5, device="meta"), "a.bias": torch.empty(7, device="meta"),
              "scale": torch.empty((), device="meta"), "ids": torch.arange(4).expand(1, 4)}
    made = {}

    def make(key, like):
        t = like if like.device.type != "meta" else checkpoint_value(1, key, like.shape)
        made[key] = t
        return t

    path = tmp_path / "x.safetensors"
    size = write_safetensors_streamed(path, layout, make, metadata={"k": "v"})
    assert size == path.stat().st_size
    back = load_file(path)
    assert set(back) == set(layout)
    for key, t in made.items():
        expected = t.to(torch.float16) if t.is_floating_point() else t
        assert back[key].dtype == expected.dtype and torch.equal(back[key], expected.contiguous()), key
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"k": "v"}


def test_values_are_finite_and_scaled(tmp_path):
    w = checkpoint_value(0, "x.proj.weight", (640, 2048))
    assert abs(float(w.std()) - 2048 ** -0.5) < 0.1 * 2048 ** -0.5
    assert torch.equal(checkpoint_value(0, "x.norm1.weight", (320,)), torch.ones(320))
    assert torch.equal(checkpoint_value(0, "x.proj.weight", (4, 4)), checkpoint_value(0, "x.proj.weight", (4, 4)))
    assert not torch.equal(checkpoint_value(0, "x.proj.weight", (4, 4)), checkpoint_value(1, "x.proj.weight", (4, 4)))


def test_generation_is_idempotent_and_follows_the_seed(tmp_path):
    logs = []
    first = standins.generate_faceid(tmp_path, "sd15", seed=0, log=logs.append)
    stamp = first.stat().st_mtime_ns
    standins.generate_faceid(tmp_path, "sd15", seed=0, log=logs.append)
    assert first.stat().st_mtime_ns == stamp and "kept" in logs[-1]
    standins.generate_faceid(tmp_path, "sd15", seed=1, log=logs.append)
    assert first.stat().st_mtime_ns != stamp and "kept" not in logs[-1]
    marker = json.loads(Path(str(first) + ".standin.json").read_text())
    assert marker["seed"] == 1 and marker["size"] == first.stat().st_size
    # a truncated file is regenerated
    with open(first, "r+b") as f:
        f.truncate(1000)
    standins.generate_faceid(tmp_path, "sd15", seed=1, log=logs.append)
    assert first.stat().st_size == marker["size"]
    assert not [p for p in first.parent.iterdir() if ".tmp-" in p.name]


def test_cli_requires_a_choice(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        standins_main(["--models", str(tmp_path)])
    assert e.value.code == 2
    assert "choose what to generate" in capsys.readouterr().err


def test_the_command_line_generates_files_identical_to_the_function_and_keeps_them(tmp_path):
    """`python -m revpers_cli.standins` (what an installed pack has, run outside the checkout) writes the
    same files as `standins.generate`; a second run keeps them."""
    models = tmp_path / "command"
    for _ in range(2):
        run = subprocess.run([sys.executable, "-m", "revpers_cli.standins", "--models", str(models), "--buffalo"],
                             cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert run.returncode == 0, run.stderr
    assert "kept" in run.stdout
    standins.generate(tmp_path / "function", checkpoints=(), faceid=False, buffalo=True, log=lambda s: None)
    made = {p.name: p.read_bytes() for p in (models / standins.BUFFALO_DIR).glob("*.onnx")}
    want = {p.name: p.read_bytes() for p in (tmp_path / "function" / standins.BUFFALO_DIR).glob("*.onnx")}
    assert len(made) == 5 and made == want


# --- checkpoints: the layout itself (no ComfyUI) ------------------------------------------------------

# Published parameter counts of each part (diffusers' UNet2DConditionModel and AutoencoderKL, Hugging
# Face's CLIPTextModel for ViT-L/14, OpenCLIP ViT-bigG/14's text tower with its projection and logit scale).
PART_PARAMETERS = {
    "sdxl": {"model.diffusion_model.": 2_567_463_684, "first_stage_model.": 83_653_863,
             "conditioner.embedders.0.": 123_060_480, "conditioner.embedders.1.": 694_659_841},
    "sd15": {"model.diffusion_model.": 859_520_964, "first_stage_model.": 83_653_863,
             "cond_stage_model.": 123_060_480},
}
F16, I64 = torch.float16, torch.int64
KNOWN_TENSORS = {  # key: shape, as in sd_xl_base_1.0.safetensors / v1-5-pruned-emaonly.safetensors
    "sdxl": {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.time_embed.0.weight": (1280, 320),
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "model.diffusion_model.label_emb.0.2.bias": (1280,),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "model.diffusion_model.input_blocks.4.1.proj_in.weight": (640, 640),
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight": (640, 2048),
        "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.ff.net.0.proj.weight": (10240, 1280),
        "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.ff.net.2.weight": (1280, 5120),
        "model.diffusion_model.middle_block.1.transformer_blocks.9.norm3.bias": (1280,),
        "model.diffusion_model.middle_block.2.emb_layers.1.weight": (1280, 1280),
        "model.diffusion_model.output_blocks.0.0.skip_connection.weight": (1280, 2560, 1, 1),
        "model.diffusion_model.output_blocks.2.0.in_layers.2.weight": (1280, 1920, 3, 3),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.output_blocks.8.0.in_layers.2.weight": (320, 640, 3, 3),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.conv_out.weight": (8, 512, 3, 3),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.decoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc1.weight": (3072, 768),
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.bias": (768,),
        "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280),
        "conditioner.embedders.1.model.positional_embedding": (77, 1280),
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_bias": (3840,),
        "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight": (5120, 1280),
        "conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_proj.weight": (1280, 5120),
        "conditioner.embedders.1.model.ln_final.weight": (1280,),
        "conditioner.embedders.1.model.text_projection": (1280, 1280),
        "conditioner.embedders.1.model.logit_scale": (),
    },
    "sd15": {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "model.diffusion_model.input_blocks.9.0.op.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.input_blocks.11.0.in_layers.2.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_out.0.bias": (1280,),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.output_blocks.11.1.proj_out.weight": (320, 320, 1, 1),
        "first_stage_model.decoder.conv_out.weight": (3, 128, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.bias": (768,),
    },
}
POSITION_IDS = {"sdxl": "conditioner.embedders.0.transformer.text_model.embeddings.position_ids",
                "sd15": "cond_stage_model.transformer.text_model.embeddings.position_ids"}
KEY_COUNTS = {"sdxl": 2515, "sd15": 1131}


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


@pytest.mark.parametrize("arch", ["sdxl", "sd15"])
def test_checkpoint_layout_is_the_standard_single_file_layout(arch):
    """The layout our own code works out: the key count of the real files (sd_xl_base_1.0: 2,515), the
    shapes of known tensors, each part's published parameter count, float16 everywhere but CLIP-L's int64
    position ids, and nothing under a prefix a real file does not have."""
    lay = layout.checkpoint_layout(arch)
    assert len(lay) == KEY_COUNTS[arch]
    assert list(lay) == sorted(lay)
    for key, shape in KNOWN_TENSORS[arch].items():
        assert lay.get(key) == (shape, F16), key
    assert lay[POSITION_IDS[arch]] == ((1, 77), I64)
    assert [k for k, (_, dtype) in lay.items() if dtype != F16] == [POSITION_IDS[arch]]
    parts = PART_PARAMETERS[arch]
    assert all(any(k.startswith(p) for p in parts) for k in lay), "a key outside the checkpoint's parts"
    for prefix, params in parts.items():
        assert sum(_numel(s) for k, (s, d) in lay.items() if k.startswith(prefix) and d == F16) == params, prefix
    assert layout.parameter_count(lay) == sum(parts.values())
    assert ("model.diffusion_model.label_emb.0.0.weight" in lay) == (arch == "sdxl")
    if arch == "sdxl":  # SDXL's full-resolution level has no attention
        assert not any(k.startswith("model.diffusion_model.input_blocks.1.1.") for k in lay)
    # text encoder or VAE tensors under the UNet's prefix: what ComfyUI 0.33's saving code writes when it is
    # given the text encoders where it now takes the UNet
    assert not any(k.startswith(("model.diffusion_model.clip_", "model.diffusion_model.encoder.")) for k in lay)


@pytest.mark.parametrize("arch", ["sdxl", "sd15"])
def test_checkpoint_unet_has_the_tensor_shapes_of_diffusers_unet(arch):
    """An independent implementation of the same UNet (diffusers', another naming): the same number of
    tensors with the same shapes (a 1x1-conv or linear proj_in/proj_out alike)."""
    lay = layout.checkpoint_layout(arch)
    ours = sorted(shape for k, (shape, _) in lay.items() if k.startswith("model.diffusion_model."))
    theirs = sorted(tuple(t.shape) for t in meta_unet(arch).state_dict().values())
    assert ours == theirs


def test_layout_digest_follows_keys_shapes_and_dtypes():
    lay = layout.checkpoint_layout("sd15")
    digest = layout.layout_digest(lay)
    assert digest == layout.layout_digest(dict(reversed(list(lay.items()))))
    renamed = dict(lay)
    renamed["model.diffusion_model.out.2.biaz"] = renamed.pop("model.diffusion_model.out.2.bias")
    reshaped = dict(lay, **{"model.diffusion_model.out.2.bias": ((5,), F16)})
    retyped = dict(lay, **{POSITION_IDS["sd15"]: ((1, 77), torch.float32)})
    assert len({digest, layout.layout_digest(renamed), layout.layout_digest(reshaped),
                layout.layout_digest(retyped), layout.layout_digest(layout.checkpoint_layout("sdxl"))}) == 5


def test_a_checkpoint_of_another_layout_is_made_again(tmp_path, monkeypatch):
    """A checkpoint whose marker records no layout (written before layout.py, by ComfyUI's saving code) or
    another one is regenerated, and is not taken from a `reuse` folder; one with the current layout is
    kept. (The writer is replaced by a small one: what is tested is which files are kept.)"""
    from revpers_cli.standins import checkpoint, store

    written = []

    def small_writer(path, arch, seed):
        Path(path).write_bytes(b"new layout")
        written.append(arch)
        return 1, 1

    monkeypatch.setattr(checkpoint, "write_checkpoint", small_writer)
    models, other = tmp_path / "models", tmp_path / "other"
    for folder in (models, other):  # what the code before layout.py left: a marker without a layout
        path = folder / standins.CHECKPOINTS["sd15"]
        path.parent.mkdir(parents=True)
        path.write_bytes(b"old layout")
        store.write_marker(path, "checkpoint-sd15", 0, keys=446)
    path = models / standins.CHECKPOINTS["sd15"]
    digest = layout.layout_digest(layout.checkpoint_layout("sd15"))
    assert store.is_current(path, "checkpoint-sd15", 0) and not store.is_current(path, "checkpoint-sd15", 0, digest)

    standins.generate_checkpoint(models, "sd15", seed=0, log=lambda s: None, reuse=[other])
    assert written == ["sd15"] and path.read_bytes() == b"new layout"
    assert store.read_marker(store.marker_path(path))["layout"] == digest
    standins.generate_checkpoint(models, "sd15", seed=0, log=lambda s: None, reuse=[other])
    assert written == ["sd15"]  # kept
    store.write_marker(path, "checkpoint-sd15", 0, layout="0123456789abcdef")
    standins.generate_checkpoint(models, "sd15", seed=0, log=lambda s: None)
    assert written == ["sd15", "sd15"]
    # a current file in another folder is hard-linked, not written
    fresh = tmp_path / "fresh"
    standins.generate_checkpoint(fresh, "sd15", seed=0, log=lambda s: None, reuse=[models])
    assert written == ["sd15", "sd15"] and (fresh / standins.CHECKPOINTS["sd15"]).read_bytes() == b"new layout"


# --- checkpoints: the layout against the host's own classes --------------------------------------------

# The UNet configurations of ComfyUI's model detection for SDXL base and SD1.5.
HOST_UNET_CONFIGS = {
    "sdxl": dict(use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=320,
                 num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10],
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], transformer_depth_middle=10,
                 context_dim=2048, num_head_channels=64, use_linear_in_transformer=True,
                 use_spatial_transformer=True, legacy=False, num_classes="sequential", adm_in_channels=2816,
                 use_temporal_attention=False, use_temporal_resblock=False),
    "sd15": dict(use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=320,
                 num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4],
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1,
                 context_dim=768, num_heads=8, use_linear_in_transformer=False, use_spatial_transformer=True,
                 legacy=False, adm_in_channels=None, use_temporal_attention=False, use_temporal_resblock=False),
}


def _host_saved_layout(arch):
    """{key: shape} of the checkpoint the host's own model classes save (built on the meta device), or
    None when its saving method takes neither known form: (clip, vae) with the UNet its own, as
    0.3.75's; (unet, clip, vae), as 0.33's."""
    import inspect

    import comfy.ldm.models.autoencoder
    import comfy.model_detection

    with torch.device("meta"), torch.no_grad():
        model_config = comfy.model_detection.model_config_from_unet_config(
            dict(HOST_UNET_CONFIGS[arch], dtype=torch.float16))
        assert model_config is not None, f"this ComfyUI does not recognise the {arch} UNet"
        model = model_config.get_model({}, device="meta")
        clip = model_config.clip_target().clip(device="meta", dtype=torch.float16)
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(
            ddconfig=dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128,
                          ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0), embed_dim=4)
        first = next(iter(inspect.signature(model.state_dict_for_saving).parameters), None)
        if first == "clip_state_dict":
            saved = model.state_dict_for_saving(clip.state_dict(), vae.state_dict())
        elif first == "unet_state_dict":
            saved = model.state_dict_for_saving(model.diffusion_model.state_dict(), clip.state_dict(),
                                                vae.state_dict())
        else:
            return None
    return {k: tuple(v.shape) for k, v in saved.items()}


@pytest.mark.parametrize("arch", ["sdxl", "sd15"])
def test_checkpoint_layout_equals_what_the_hosts_classes_save(arch, comfy_inprocess):
    """Key for key and shape for shape, the layout is what the host ComfyUI's own model classes write when
    saving a checkpoint (an independent implementation), but for CLIP-L's position ids, which real SD1.5
    files carry and ComfyUI's SD1.5 saver leaves out."""
    saved = _host_saved_layout(arch)
    if saved is None:
        pytest.skip("this ComfyUI's state_dict_for_saving takes neither (clip, vae) nor (unet, clip, vae)")
    ours = {k: shape for k, (shape, _) in layout.checkpoint_layout(arch).items()}
    assert sorted(set(saved) - set(ours)) == []
    assert sorted(set(ours) - set(saved)) in ([], [POSITION_IDS[arch]])
    assert [k for k in saved if saved[k] != ours[k]] == []


# --- checkpoints: through the host's loader ------------------------------------------------------------

# ComfyUI's CLIP-L tensors that SD checkpoints do not have (they use CLIP-L's hidden states, not its
# projection): the only loaded tensors that may not come from the file.
HOST_ONLY_TENSORS = {"clip_l.logit_scale", "clip_l.transformer.text_projection.weight"}


def _check_checkpoint(arch, expected_class, low_memory=False):
    """Generate (or keep) the stand-in, check its header against the layout, load it through the host's
    loader in a child process (verify.py): detected as `expected_class`, finite through one step."""
    # the quick start's file when it has one (hard-linked): the SDXL one is 6.9 GB of disk
    path = standins.generate_checkpoint(TEST_MODELS, arch, seed=0, reuse=[QUICKSTART_MODELS])
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        assert f.metadata()["revpers_standin"] == arch
        header = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    st = {F16: "F16", I64: "I64"}
    assert header == {k: (shape, st[dtype]) for k, (shape, dtype) in layout.checkpoint_layout(arch).items()}
    assert path.stat().st_size == standins.SIZES[f"checkpoint-{arch}"]
    report = standins.verify_checkpoint(path, low_memory=low_memory)
    assert report["model_config"] == expected_class
    assert report["finite"], report
    return report


def _assert_loaded_whole(weights, arch):
    """Every tensor of the loaded UNet, text encoders and VAE equals the file's; the only loaded tensors
    the file lacks are ComfyUI's CLIP-L projection and logit scale (SD files have none), the only file
    tensor loaded into nothing is CLIP-L's position ids (ComfyUI makes its own)."""
    assert set(weights["not_from_file"]) <= HOST_ONLY_TENSORS, weights["not_from_file"]
    assert set(weights["not_from_file"].values()) <= {"not in the file"}, weights["not_from_file"]
    assert weights["unused"] == [POSITION_IDS[arch]]
    # each file tensor loads into one tensor, but for OpenCLIP's fused q/k/v, which ComfyUI splits in three
    fused = 2 * 2 * 32 if arch == "sdxl" else 0
    assert weights["compared"] == KEY_COUNTS[arch] - 1 + fused


def test_sd15_checkpoint_loads_whole_and_runs_finite():
    """SD1.5 stand-in (2.1 GB, generated once into .host/test-models): ComfyUI's own loader detects
    it as SD15, every weight it loads came from the file and nothing of the file is left over; CLIP, one
    sampling step and the VAE both ways give finite numbers."""
    report = _check_checkpoint("sd15", "SD15")
    _assert_loaded_whole(report["weights"], "sd15")
    print({k: v for k, v in report.items() if k != "weights"})


@pytest.mark.sdxl
def test_sdxl_checkpoint_loads_whole_and_runs_finite():
    """The full-size SDXL stand-in: 2,515 keys, detected as SDXL by load_checkpoint_guess_config
    (what CheckpointLoaderSimple calls), every weight loaded from the file (UNet in bf16), finite through
    one step and the VAE."""
    report = _check_checkpoint("sdxl", "SDXL", low_memory=True)
    _assert_loaded_whole(report["weights"], "sdxl")
    print({k: v for k, v in report.items() if k != "weights"})


def test_a_misnamed_tensor_is_found_by_the_load_check(tmp_path):
    """The load check can fail: the SD1.5 stand-in with one UNet tensor renamed (header rewritten, same
    length) still loads as SD15, and the check names the weight ComfyUI left at its initial value (some
    hosts leave it uninitialised, so the numbers need not be finite) and the file's tensor it loaded into
    nothing."""
    import shutil
    import struct

    good = standins.generate_checkpoint(TEST_MODELS, "sd15", seed=0, reuse=[QUICKSTART_MODELS])
    name = "model.diffusion_model.output_blocks.4.0.emb_layers.1.bias"
    wrong = name[:-1] + "5"
    bad = tmp_path / "misnamed.safetensors"
    with open(good, "rb") as src, open(bad, "wb") as dst:
        n = struct.unpack("<Q", src.read(8))[0]
        header = src.read(n)
        assert header.count(f'"{name}"'.encode()) == 1
        dst.write(struct.pack("<Q", n) + header.replace(f'"{name}"'.encode(), f'"{wrong}"'.encode()))
        shutil.copyfileobj(src, dst, 64 << 20)
    report = standins.verify_checkpoint(bad)
    assert report["model_config"] == "SD15"
    weights = report["weights"]
    unexplained = {k: why for k, why in weights["not_from_file"].items() if k not in HOST_ONLY_TENSORS}
    assert unexplained == {"output_blocks.4.0.emb_layers.1.bias": "not in the file"}
    assert weights["unused"] == sorted([wrong, POSITION_IDS["sd15"]])
    with pytest.raises(AssertionError):
        _assert_loaded_whole(weights, "sd15")


def test_a_disk_too_full_for_a_standin_is_said_before_writing(tmp_path, monkeypatch, capsys):
    """The free space is checked against the file's size first: the error names the file, both sizes and
    the fix, nothing is left half-written, and the command line prints it as one line and exits 1."""
    from revpers_cli.standins import store
    free = 500e6  # a disk with 0.5 GB free, too little for the 1.07 GB SDXL adapter
    monkeypatch.setattr(store.shutil, "disk_usage", lambda folder: type("Usage", (), {"free": free})())
    with pytest.raises(OSError, match=r"not enough disk space to generate the SDXL stand-in FaceID adapter: "
                                      r"it takes 1\.07 GB and .* has 0\.50 GB free\. Free some space"):
        standins.generate_faceid(tmp_path, "sdxl", seed=0, log=lambda s: None)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as e:
        standins_main(["--models", str(tmp_path), "--faceid"])
    assert str(e.value.code).startswith("error: not enough disk space to generate the SDXL stand-in FaceID")
    free = 2e9  # enough for the SD1.5 one (0.10 GB): written
    assert standins.generate_faceid(tmp_path, "sd15", seed=0, log=lambda s: None).stat().st_size == \
        standins.SIZES["faceid-sd15"]


def test_buffalo_standins_are_generated_once(tmp_path):
    folder = standins.generate_buffalo(tmp_path, seed=0, log=lambda s: None)
    names = sorted(p.name for p in folder.glob("*.onnx"))
    assert {"det_10g.onnx", "w600k_r50.onnx"} <= set(names)
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.onnx")}
    standins.generate_buffalo(tmp_path, seed=0, log=lambda s: None)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in folder.glob("*.onnx")}
