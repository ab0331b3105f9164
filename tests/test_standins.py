"""Stand-in model files: the FaceID .bin against diffusers' own IP-Adapter-FaceID loaders on the real
SDXL / SD1.5 UNet architectures, the streamed safetensors writer against the safetensors library,
determinism and idempotency, and the checkpoints through ComfyUI's own loader (SDXL behind `sdxl`)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from paths import REPO
from standin_models import QUICKSTART_MODELS
from revpers_core import standins
from revpers_core.standins import faceid
from revpers_core.standins.__main__ import main as standins_main
from revpers_core.standins.checkpoint import write_safetensors_streamed
from revpers_core.standins.values import checkpoint_value

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
    """`python -m revpers_core.standins` (what an installed pack has, run outside the checkout) writes the
    same files as `standins.generate`; a second run keeps them."""
    models = tmp_path / "command"
    for _ in range(2):
        run = subprocess.run([sys.executable, "-m", "revpers_core.standins", "--models", str(models), "--buffalo"],
                             cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert run.returncode == 0, run.stderr
    assert "kept" in run.stdout
    standins.generate(tmp_path / "function", checkpoints=(), faceid=False, buffalo=True, log=lambda s: None)
    made = {p.name: p.read_bytes() for p in (models / standins.BUFFALO_DIR).glob("*.onnx")}
    want = {p.name: p.read_bytes() for p in (tmp_path / "function" / standins.BUFFALO_DIR).glob("*.onnx")}
    assert len(made) == 5 and made == want


def _check_checkpoint(arch, expected_keys, expected_class):
    # the quick start's file when it has one (hard-linked): the SDXL one is 6.9 GB of disk
    path = standins.generate_checkpoint(TEST_MODELS, arch, seed=0, reuse=[QUICKSTART_MODELS])
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        keys = list(f.keys())
        assert f.metadata()["revpers_standin"] == arch
    assert len(keys) == expected_keys
    assert path.stat().st_size == standins.SIZES[f"checkpoint-{arch}"]
    report = standins.verify_checkpoint(path, low_memory=(arch == "sdxl"))
    assert report["model_config"] == expected_class
    assert report["finite"], report
    return report


def test_sd15_checkpoint_is_detected_and_runs_finite():
    """SD1.5 stand-in (2.1 GB, generated once into .host/test-models): ComfyUI's own loader detects
    it as SD15; CLIP, one sampling step and the VAE both ways give finite numbers."""
    report = _check_checkpoint("sd15", 1130, "SD15")
    print(report)


@pytest.mark.sdxl
def test_sdxl_checkpoint_is_detected_and_runs_finite():
    """The full-size SDXL stand-in: 2,515 keys, detected as SDXL by load_checkpoint_guess_config
    (what CheckpointLoaderSimple calls), finite through one step and the VAE (UNet in bf16)."""
    report = _check_checkpoint("sdxl", 2515, "SDXL")
    print(report)


def test_a_disk_too_full_for_a_standin_is_said_before_writing(tmp_path, monkeypatch, capsys):
    """The free space is checked against the file's size first: the error names the file, both sizes and
    the fix, nothing is left half-written, and the command line prints it as one line and exits 1."""
    from revpers_core.standins import store
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
