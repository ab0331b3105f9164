"""Resident and peak memory of the photo workflow against a plain SDXL img2img workflow, and their
growth over warm re-runs, on the full-size SDXL stand-in in a real ComfyUI server.

Three servers, one after the other, each started fresh the way the headless SDXL tests start theirs
(CPU, `--bf16-unet`, PyTorch attention):

* pack: workflows/api/anonymize_photo.json on a two-face marker photo, crops of CROP px, STEPS
  inversion steps (2·STEPS model calls of 2 rows per face);
* core: the same two faces' crops (CROP px: the same number and size of latents) through ComfyUI's own
  CheckpointLoaderSimple, VAEEncode, KSampler (2·STEPS steps, cfg 2: the same model calls and rows),
  VAEDecode, SaveImage;
* core + LoRA: the same with LoraLoaderModelOnly carrying the FaceID stand-in's own LoRA (its factors as
  a LoRA file), merged by ComfyUI's own loader: what ComfyUI itself holds for a LoRA of that size.

Each server runs its workflow once (cold: loads the checkpoint), then RERUNS more times, each with
the picture uploaded under a new name and a new seed, so every node after the loaders runs again.
Printed per workflow: the resident memory (VmRSS) after the first run and after every re-run, and
its two parts after the first and the last run (RssAnon: what the process holds; RssFile: pages of
files it maps, such as the checkpoint's, which the kernel may drop under memory pressure, so they
vary with what else runs on the machine), the peak (VmHWM) of the first run (model loading
included), and the peak during the re-runs (the high-water mark reset after the first run); then the
pack/core ratios.

    flock /tmp/revpers-heavy.lock .venv/bin/python benchmarks/bench_memory_img2img.py [--steps 3]
        [--crop 64] [--reruns 10] [--configs core,core_lora,pack] [--comfyui DIR] [--models DIR] [--json out.json]
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import comfy_bench as cb


def pictures(seed):
    """The marker photo, and the two crops the photo workflow would anonymize (for the core graph)."""
    width, height = cb.PHOTO_SIZE
    photo = cb.marker_picture(width, height, cb.PHOTO_FACES, seed=seed)
    crops = []
    for (cx, cy), radius, _ in cb.PHOTO_FACES:
        half = int(radius * 1.6)
        crops.append(photo[max(cy - half, 0):cy + half, max(cx - half, 0):cx + half])
    return photo, crops


def resized(rgb, size):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC))


def graph_for(kind, server, seed, steps, crop):
    photo, crops = pictures(seed)
    if kind == "pack":
        return cb.pack_graph("anonymize_photo", server.upload(photo, "photo"), steps, seed=seed, crop=crop)
    names = [server.upload(resized(c, crop), f"crop{i}") for i, c in enumerate(crops)]
    return cb.core_graph(names, 2 * steps, seed=seed, denoise=0.3, lora=cb.FACEID_LORA if kind == "core_lora" else None)


def measure(kind, args):
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix=f"revpers-bench-{kind}-")) / kind
    server = cb.BenchServer(cb.host_dir(args.comfyui), args.models, workdir, env=cb.server_env(args.server_env))
    try:
        idle = server.rss()
        _, first_s = server.run(graph_for(kind, server, 0, args.steps, args.crop))
        anon, file = server.rss_parts()
        report = {"idle_gib": cb.gib(idle), "first_s": round(first_s, 1), "after_first_gib": cb.gib(server.rss()),
                  "after_first_anon_gib": cb.gib(anon), "after_first_file_gib": cb.gib(file),
                  "peak_first_gib": cb.gib(server.peak()), "after_rerun_gib": [], "rerun_s": []}
        server.reset_peak()
        for i in range(args.reruns):
            _, seconds = server.run(graph_for(kind, server, i + 1, args.steps, args.crop))
            report["after_rerun_gib"].append(cb.gib(server.rss()))
            report["rerun_s"].append(round(seconds, 1))
        report["peak_reruns_gib"] = cb.gib(server.peak())
        anon, file = server.rss_parts()
        report["after_last_anon_gib"], report["after_last_file_gib"] = cb.gib(anon), cb.gib(file)
        report["growth_gib"] = round(report["after_rerun_gib"][-1] - report["after_first_gib"], 2) if args.reruns else 0
        report["loads_logged"] = server.log_count("Requested to load SDXL")
    finally:
        server.close()
    print(f"[{kind}] {json.dumps(report)}", flush=True)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="inversion steps (the pack makes 2x this many model "
                                                             "calls; the core KSampler takes 2x this many steps)")
    parser.add_argument("--crop", type=int, default=64, help="crop size in px (both workflows)")
    parser.add_argument("--reruns", type=int, default=10)
    parser.add_argument("--configs", default="core,core_lora,pack", help="workflows measured, in this order")
    args, header = cb.parse_server_benchmark(parser, argv)
    print(f"{header}; {len(cb.PHOTO_FACES)} faces, "
          f"{args.crop} px crops, {2 * args.steps} model calls of 2 rows per face", flush=True)
    kinds = args.configs.split(",")
    if not {"pack", "core"} <= set(kinds):
        parser.error("--configs must include pack and core (the ratios are theirs)")
    figures = {kind: measure(kind, args) for kind in kinds}
    pack, core = figures["pack"], figures["core"]
    ratios = {
        "pack_over_core_lora_resident_after_first": round(pack["after_first_gib"] / figures["core_lora"]["after_first_gib"], 3)
        if "core_lora" in figures else None,
        "anonymous_after_first": round(pack["after_first_anon_gib"] / core["after_first_anon_gib"], 3),
        "resident_after_first": round(pack["after_first_gib"] / core["after_first_gib"], 3),
        "resident_after_last": round(pack["after_rerun_gib"][-1] / core["after_rerun_gib"][-1], 3) if args.reruns else None,
        "peak_reruns": round(pack["peak_reruns_gib"] / core["peak_reruns_gib"], 3) if args.reruns else None,
        "peak_first_run": round(pack["peak_first_gib"] / core["peak_first_gib"], 3),
    }
    figures["ratios_pack_over_core"] = ratios
    print(f"pack / core: {json.dumps(ratios)}; growth over {args.reruns} re-runs: "
          + ", ".join(f"{kind} {figures[kind]['growth_gib']} GiB" for kind in kinds), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
