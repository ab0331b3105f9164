"""Which UNet dtype should the stand-in quick start run the full-size SDXL stand-in in on a CPU?

Loads the SDXL stand-in checkpoint through ComfyUI's own loader (what CheckpointLoaderSimple calls) in a
child process per configuration, then times UNet calls at the quick start's size (256 px crops: 32x32
latents; batch = 2 branches x faces) and reports load time and peak memory. Not a test: the figures
depend on the machine.

    .venv/bin/python benchmarks/bench_standin_dtype.py [--models DIR] [--configs fp32,bf16] [--batches 2,6]
        [--size 256] [--calls 2] [--attention pytorch|default]

A configuration is fp32 (ComfyUI's CPU default) or bf16 (`--bf16-unet`: weights in bf16, cast to fp32
layer by layer for the computation, since ComfyUI 2024 does not compute in bf16 on a CPU).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = "checkpoints/revpers-standin-sdxl.safetensors"


def child(path, config, attention, size, batches, calls, comfyui):
    sys.path.insert(0, str(comfyui))
    import psutil
    import torch
    from comfy.cli_args import args

    args.cpu = True
    args.bf16_unet = config == "bf16"
    args.use_pytorch_cross_attention = attention == "pytorch"
    import comfy.model_management as mm
    import comfy.sd

    proc = psutil.Process()
    report = {"config": config, "attention": attention, "threads": torch.get_num_threads()}
    t0 = time.time()
    with torch.inference_mode():
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)[:3]
        report["load_s"] = round(time.time() - t0, 1)
        report["unet_dtype"] = str(model.model.get_dtype()).replace("torch.", "")
        mm.load_model_gpu(model)
        report["rss_after_load_gib"] = round(proc.memory_info().rss / 2**30, 2)
        report["anon_after_load_gib"] = round(proc.memory_full_info().uss / 2**30, 2)
        report["peak_rss_load_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        g = torch.Generator().manual_seed(0)
        lat = size // 8
        for batch in batches:
            x = torch.randn(batch, 4, lat, lat, generator=g)
            context = torch.randn(batch, 77, 2048, generator=g)
            y = torch.randn(batch, 2816, generator=g)
            sigma = torch.full((batch,), 2.0)
            times = []
            for _ in range(calls):
                t1 = time.time()
                out = model.model.apply_model(x, sigma, c_crossattn=context, y=y)
                times.append(round(time.time() - t1, 2))
            report[f"call_s_batch{batch}"] = times
            if os.environ.get("BENCH_PROFILE"):
                from torch.profiler import ProfilerActivity, profile
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    model.model.apply_model(x, sigma, c_crossattn=context, y=y)
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), file=sys.stderr)
            report[f"finite_batch{batch}"] = bool(torch.isfinite(out).all())
    report["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print("BENCH " + json.dumps(report), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=str(REPO / ".host" / "standin-models"))
    p.add_argument("--comfyui", default=str(REPO / ".host" / "ComfyUI"))
    p.add_argument("--configs", default="fp32,bf16")
    p.add_argument("--attention", default="pytorch", choices=("pytorch", "default"))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batches", default="2,6")
    p.add_argument("--calls", type=int, default=2)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    batches = [int(b) for b in a.batches.split(",")]
    path = Path(a.models) / CHECKPOINT
    if a.child:
        child(path, a.child, a.attention, a.size, batches, a.calls, a.comfyui)
        return 0
    if not path.is_file():
        raise SystemExit(f"no SDXL stand-in at {path}: python -m revpers_cli.standins --models {a.models} --sdxl")
    for config in a.configs.split(","):
        t0 = time.time()
        cmd = [sys.executable, __file__, "--child", config, "--models", a.models, "--comfyui", a.comfyui,
               "--attention", a.attention, "--size", str(a.size), "--batches", a.batches, "--calls", str(a.calls)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in out.stdout.splitlines() if l.startswith("BENCH ")), None)
        if line is None:
            print(f"{config}: failed (exit {out.returncode})\n{out.stderr[-3000:]}")
            continue
        if os.environ.get("BENCH_PROFILE"):
            print(out.stderr[-6000:])
        r = json.loads(line[6:])
        r["process_s"] = round(time.time() - t0, 1)
        print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
