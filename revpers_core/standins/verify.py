"""Check a stand-in checkpoint through ComfyUI: load it as CheckpointLoaderSimple does, encode a prompt,
take one sampling step and run the VAE both ways; the numbers must be finite.

`verify_checkpoint(path)` runs the check in a child process (`python -m revpers_core.standins.verify`),
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


def check_checkpoint(path, comfyui_dir, size=64, low_memory=False) -> dict:
    """The check itself, in this process: returns the report (model_config, model_class, finite,
    timings, value statistics, peak_rss_gib)."""
    import resource

    import torch

    from .checkpoint import import_comfy

    import_comfy(comfyui_dir)
    from comfy.cli_args import args
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
