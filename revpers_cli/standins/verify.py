"""Check a stand-in checkpoint through ComfyUI: load it as CheckpointLoaderSimple does, compare every
weight of the loaded UNet, text encoders and VAE with the file, encode a prompt, take one sampling step
and run the VAE both ways; the numbers must be finite.

`verify_checkpoint(path)` runs the check in a child process (`python -m revpers_cli.standins.verify`),
so the memory of the loaded model is given back when it ends; the child prints its report as one JSON
line after `VERIFY `.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPORT_PREFIX = "VERIFY "
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding revpers_core

# Where ComfyUI's text encoders ("clip_l", "clip_g" in its CLIP object) are kept in each checkpoint layout.
HOST_TEXT_ENCODERS = {
    "sd15": {"clip_l": "cond_stage_model.transformer."},
    "sdxl": {"clip_l": "conditioner.embedders.0.transformer.", "clip_g": "conditioner.embedders.1.model."},
}
# OpenCLIP's names for the parts of a text-transformer layer that Hugging Face's naming (ComfyUI's) calls
# otherwise; q, k and v are the three thirds of OpenCLIP's fused in_proj.
_OPENCLIP_LAYER = {"self_attn.out_proj.": "attn.out_proj.", "layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.",
                   "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj."}
# What a real SD checkpoint and ComfyUI's classes legitimately do not share: ComfyUI's CLIP-L carries a
# projection and a logit scale that SD files lack (SD uses CLIP-L's hidden states, not its projection),
# and the files carry CLIP-L's position ids, which ComfyUI's CLIP makes itself.
HOST_ONLY = ("clip_l.logit_scale", "clip_l.transformer.text_projection.weight")
FILE_ONLY_SUFFIX = "text_model.embeddings.position_ids"


def weight_problems(weights) -> list:
    """The findings of compare_weights that the layouts do not explain (see HOST_ONLY): [] when every
    loaded weight came from the file and every tensor of the file was loaded."""
    problems = [f"{name}: {why}" for name, why in weights["not_from_file"].items()
                if not (name in HOST_ONLY and why == "not in the file")]
    problems += [f"{key}: in the file, loaded into nothing" for key in weights["unused"]
                 if not key.endswith(FILE_ONLY_SUFFIX)]
    return problems


def import_comfy(comfyui_dir):
    """Put a ComfyUI folder on sys.path, with its own command-line parsing off, and return its `args` (set
    before comfy.model_management is imported). On a machine without CUDA, ComfyUI is told to use the
    CPU."""
    import torch

    comfyui_dir = Path(comfyui_dir).resolve()
    if not (comfyui_dir / "comfy" / "sd.py").is_file():
        raise FileNotFoundError(f"no ComfyUI at {comfyui_dir}: give its folder, or set COMFYUI_DIR")
    if str(comfyui_dir) not in sys.path:
        sys.path.insert(0, str(comfyui_dir))
    from comfy.cli_args import args  # ComfyUI's own parsing stays off here: it parses []

    if "comfy.model_management" not in sys.modules and not torch.cuda.is_available():
        args.cpu = True  # read once, when model_management is imported
    return args


def _text_encoder_source(name, arch):
    """(file key, how) for a tensor of ComfyUI's text encoders, named as in its CLIP object's state dict
    ("clip_l.transformer.text_model...", "clip_g.logit_scale"); `how` turns the file's tensor into the
    loaded one. None when the file has no such tensor."""
    clip, _, rest = name.partition(".")
    prefix = HOST_TEXT_ENCODERS[arch].get(clip)
    if prefix is None:
        return None
    if clip == "clip_l":  # Hugging Face naming in the file too: only the prefix differs
        if not rest.startswith("transformer.text_model."):
            return None  # ComfyUI's CLIP-L also has a projection and a logit scale, which SD files lack
        return prefix + rest[len("transformer."):], None
    # clip_g: OpenCLIP naming in the file
    if rest == "logit_scale":
        return prefix + "logit_scale", None
    if rest == "transformer.text_projection.weight":  # OpenCLIP applies it as x @ P, a Linear as x @ W.T
        return prefix + "text_projection", lambda t: t.t()
    body = rest[len("transformer.text_model."):] if rest.startswith("transformer.text_model.") else None
    simple = {"embeddings.token_embedding.weight": "token_embedding.weight",
              "embeddings.position_embedding.weight": "positional_embedding",
              "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
    if body in simple:
        return prefix + simple[body], None
    if body is None or not body.startswith("encoder.layers."):
        return None
    index, _, part = body[len("encoder.layers."):].partition(".")
    block = f"{prefix}transformer.resblocks.{index}."
    for i, qkv in enumerate(("q_proj", "k_proj", "v_proj")):
        if part.startswith(f"self_attn.{qkv}."):
            kind = part.rsplit(".", 1)[1]  # weight or bias
            return block + f"attn.in_proj_{kind}", lambda t, i=i: t.chunk(3, dim=0)[i]
    for hf, oc in _OPENCLIP_LAYER.items():
        if part.startswith(hf):
            return block + oc + part[len(hf):], None
    return None


def compare_weights(path, arch, model, clip, vae) -> dict:
    """Every tensor of the loaded UNet, text encoders and VAE (their state dicts, as ComfyUI holds them)
    against the file's, read with the safetensors library: {"compared": how many loaded tensors equal the
    file's (cast to the loaded dtype), "not_from_file": {loaded name: why} for the others (no such tensor
    in the file, other shape, other values), "unused": file keys no loaded tensor came from}."""
    import torch
    from safetensors import safe_open

    parts = [(model.model.diffusion_model.state_dict(), lambda k: ("model.diffusion_model." + k, None)),
             (vae.first_stage_model.state_dict(), lambda k: ("first_stage_model." + k, None)),
             (clip.cond_stage_model.state_dict(), lambda k: _text_encoder_source(k, arch))]
    compared, not_from_file, used = 0, {}, set()
    with safe_open(str(path), "pt") as f:
        file_keys = set(f.keys())
        for state, source in parts:
            for name, loaded in state.items():
                found = source(name)
                if found is None or found[0] not in file_keys:
                    not_from_file[name] = "not in the file"
                    continue
                key, how = found
                used.add(key)
                expected = f.get_tensor(key)
                if how is not None:
                    expected = how(expected)
                if tuple(expected.shape) != tuple(loaded.shape):
                    not_from_file[name] = f"shape {list(loaded.shape)}, the file's {key} {list(expected.shape)}"
                elif not torch.equal(expected.to(loaded.dtype), loaded.detach().cpu()):
                    not_from_file[name] = f"values differ from the file's {key}"
                else:
                    compared += 1
    return {"compared": compared, "not_from_file": not_from_file, "unused": sorted(file_keys - used)}


def check_checkpoint(path, comfyui_dir, size=64, low_memory=False) -> dict:
    """The check itself, in this process: returns the report (model_config, model_class, weights (see
    compare_weights), finite, timings, value statistics, peak_rss_gib)."""
    import resource

    import torch

    args = import_comfy(comfyui_dir)
    if low_memory:  # only the UNet in bf16 (and text encoders in fp16) to fit a shared machine
        args.bf16_unet = True
        args.fp16_text_enc = True
    import comfy.sample
    import comfy.sd
    t0 = time.time()
    report = {"path": str(path)}
    with torch.inference_mode():
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)[:3]
        report["model_config"] = type(model.model.model_config).__name__
        report["model_class"] = type(model.model).__name__
        report["load_s"] = round(time.time() - t0, 1)
        arch = {"SDXL": "sdxl", "SD15": "sd15"}.get(report["model_config"])
        if arch is not None:  # the layouts this module knows
            t1 = time.time()
            report["weights"] = compare_weights(path, arch, model, clip, vae)
            report["compare_s"] = round(time.time() - t1, 1)
        t1 = time.time()
        cond, pooled = clip.encode_from_tokens(clip.tokenize("a photo of a face"), return_pooled=True)
        positive = [[cond, {"pooled_output": pooled}]]
        cond0, pooled0 = clip.encode_from_tokens(clip.tokenize(""), return_pooled=True)
        negative = [[cond0, {"pooled_output": pooled0}]]
        latent = torch.zeros(1, 4, size // 8, size // 8)
        noise = comfy.sample.prepare_noise(latent, 0)
        samples = comfy.sample.sample(model, noise, 1, 5.0, "euler", "normal", positive, negative, latent,
                                      disable_pbar=True, seed=0).float()
        report["sample_s"] = round(time.time() - t1, 1)
        image = vae.decode(samples)
        back = vae.encode(image[:, :, :, :3])
        report["finite"] = bool(torch.isfinite(cond).all() and torch.isfinite(samples).all()
                                and torch.isfinite(image).all() and torch.isfinite(back).all())
        report["cond_std"] = round(float(cond.float().std()), 4)
        report["latent_std"] = round(float(samples.std()), 4)
        report["image_mean"] = round(float(image.float().mean()), 4)
        report["image_std"] = round(float(image.float().std()), 4)
    report["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return report


def verify_checkpoint(path, comfyui_dir=None, size=64, low_memory=False, python=None) -> dict:
    """Run check_checkpoint in a child process (so its memory is returned) and return its report."""
    if comfyui_dir is None:
        from ..host import default_comfyui_dir
        comfyui_dir = default_comfyui_dir()
    cmd = [python or sys.executable, "-m", __name__, str(path), "--comfyui", str(comfyui_dir), "--size", str(size)]
    if low_memory:
        cmd.append("--low-memory")
    env = dict(os.environ)  # the child imports this package whether or not it is installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(REPORT_PREFIX):
            return json.loads(line[len(REPORT_PREFIX):])
    raise RuntimeError(f"verifying {path} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="the .safetensors checkpoint to check")
    p.add_argument("--comfyui", required=True, help="the ComfyUI folder to load it with")
    p.add_argument("--size", type=int, default=64, help="image size in pixels of the sampling step (default 64)")
    p.add_argument("--low-memory", action="store_true", help="UNet in bf16, text encoders in fp16")
    a = p.parse_args(argv)
    report = check_checkpoint(a.checkpoint, a.comfyui, a.size, a.low_memory)
    print(REPORT_PREFIX + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
