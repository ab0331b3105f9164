"""The photo and aligned-face workflows at their shipped size (1024-px crops, 100 inversion steps) against
plain SDXL img2img from ComfyUI's own nodes, on a GPU: the card's memory and the seconds of warm re-runs,
for one face and for three, in real ComfyUI servers holding the full-size SDXL stand-in (UNet in bf16,
PyTorch attention: what the headless tests run with REVPERS_TEST_GPU=1).

Two servers, one after the other, each started fresh:

* core: the faces' crops (CROP px, one latent per face) through CheckpointLoaderSimple, VAEEncode,
  KSampler (2·STEPS steps, cfg 2: the same UNet calls and rows as the pack), VAEDecode, SaveImage;
* pack: workflows/api/anonymize_photo.json as shipped but for the picture, the checkpoint name and
  the seed (CROP and STEPS are the shipped 1024 and 100 unless told), on a marker photo with one face,
  then with three; then workflows/api/anonymize_aligned_face.json on a CROP-px marker face (the same
  model calls as one face of the photo, without detection and paste-back).

Each server runs a one-face picture cold (model load, CUDA start), then the timed warm re-runs with new
seeds (every node after the loaders runs again): one face RERUNS times, three faces once (the
aligned face after an untimed run that switches to it). For each run: wall seconds, the card's peak
used memory during it and after it (nvidia-smi, the whole GPU, less what was in use before the server
started), how often the server logged "Requested to load", and the pack's seconds per node. Printed
last: pack/core for time and memory, and the pack's warm seconds per face. The audit's second
recognizer is dlib when installed; where it is not, the audit says so and runs ArcFace only.

    python benchmarks/bench_gpu.py [--crop 1024] [--steps 100] [--reruns 2] [--json out.json]
        [--comfyui DIR] [--models DIR] [--cpu (a smoke test of this script: RSS instead of the card)]
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import comfy_bench as cb

PHOTO_SIZE = (360, 160)
THREE_FACES = [((70, 80), 28, 11), ((170, 76), 24, 22), ((285, 80), 26, 33)]


def photo(faces, seed):
    return cb.marker_picture(*PHOTO_SIZE, THREE_FACES[:faces], seed=seed)


def crops(faces, seed, size):
    """The crops of the photo's faces, resized to `size` px: the core workflow's pictures."""
    import numpy as np
    from PIL import Image

    rgb = photo(faces, seed)
    out = []
    for (cx, cy), radius, _ in THREE_FACES[:faces]:
        half = int(radius * 1.6)
        cut = rgb[max(cy - half, 0):cy + half, max(cx - half, 0):cx + half]
        out.append(np.asarray(Image.fromarray(cut).resize((size, size), Image.BICUBIC)))
    return out


def aligned_face(size):
    scale = size / 64
    return cb.marker_picture(size, size, [((int(32 * scale), int(33 * scale)), int(22 * scale), 5)], seed=1)


def graph(kind, server, faces, seed, args):
    if kind == "aligned":
        return cb.pack_graph("anonymize_aligned_face", server.upload(aligned_face(args.crop), "aligned"),
                             args.steps, seed=seed)
    if kind == "pack":
        return cb.pack_graph("anonymize_photo", server.upload(photo(faces, seed), "photo"), args.steps, seed=seed,
                             crop=args.crop)
    names = [server.upload(c, f"crop{i}") for i, c in enumerate(crops(faces, seed, args.crop))]
    return cb.core_graph(names, 2 * args.steps, seed=seed, denoise=0.3)


class Memory:
    """The card's used memory on a GPU (less the use before the server started); the server's RSS on the CPU."""

    def __init__(self, gpu):
        self.card = cb.GpuMemory() if gpu else None
        self.base = self.card.now() if gpu else 0
        self.server = None

    def now(self):
        return (self.card.now() - self.base) if self.card else self.server.rss()

    def peak(self):
        return (self.card.peak() - self.base) if self.card else self.server.peak()

    def reset_peak(self):
        (self.card or self.server).reset_peak()

    def close(self):
        if self.card:
            self.card.close()


def plan(kind, reruns):
    """(label, workflow, faces, timed) of the runs one server makes."""
    runs = [("1 face cold", kind, 1, False)]
    runs += [(f"1 face warm {i + 1}", kind, 1, True) for i in range(reruns)]
    runs += [("3 faces warm", kind, 3, True)]
    if kind == "pack":
        runs += [("aligned face (switch)", "aligned", 1, False), ("aligned face warm", "aligned", 1, True)]
    return runs


def measure(kind, args, workdir):
    memory = Memory(not args.cpu)
    try:
        server = cb.BenchServer(cb.host_dir(args.comfyui), args.models, Path(workdir) / kind, args.server_arg,
                                env=cb.server_env(args.server_env), gpu=not args.cpu)
    except BaseException:
        memory.close()
        raise
    memory.server = server
    try:
        out = {"idle_gib": cb.gib(memory.now()), "runs": {}}
        for seed, (label, workflow, faces, _) in enumerate(plan(kind, args.reruns)):
            memory.reset_peak()
            loads = server.log_count("Requested to load")
            _, seconds = server.run(graph(workflow, server, faces, seed, args))
            fig = {"seconds": round(seconds, 2), "peak_gib": cb.gib(memory.peak()), "after_gib": cb.gib(memory.now()),
                   "loads_logged": server.log_count("Requested to load") - loads}
            if kind == "pack":
                fig["node_seconds"] = server.node_seconds
            out["runs"][label] = fig
            print(f"[{kind}] {label}: {json.dumps(fig)}", flush=True)
    finally:
        server.close()
        memory.close()
    return out


def peak(runs, labels):
    return max(runs[k]["peak_gib"] for k in labels)


def summary(core, pack, reruns):
    c, p = core["runs"], pack["runs"]
    one = [f"1 face warm {i + 1}" for i in range(reruns)]
    c1, p1 = cb.median([c[k]["seconds"] for k in one]), cb.median([p[k]["seconds"] for k in one])
    c3, p3 = c["3 faces warm"], p["3 faces warm"]
    return {
        "time_1_face": round(p1 / c1, 3),
        "time_3_faces": round(p3["seconds"] / c3["seconds"], 3),
        "time_aligned_face_over_core_1_face": round(p["aligned face warm"]["seconds"] / c1, 3),
        "peak_memory_1_face": round(peak(p, one) / peak(c, one), 3),
        "peak_memory_3_faces": round(p3["peak_gib"] / c3["peak_gib"], 3),
        "memory_after_3_faces": round(p3["after_gib"] / c3["after_gib"], 3),
        "pack_warm_seconds_per_face": {"1 face": p1, "3 faces": round(p3["seconds"] / 3, 2),
                                       "aligned face": p["aligned face warm"]["seconds"]},
        "memory_growth_over_1_face_reruns_gib": {
            "core": round(c[one[-1]]["after_gib"] - c["1 face cold"]["after_gib"], 2),
            "pack": round(p[one[-1]]["after_gib"] - p["1 face cold"]["after_gib"], 2)},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=1024, help="crop size in px (the shipped 1024)")
    parser.add_argument("--steps", type=int, default=100, help="inversion steps (the shipped 100; the pack makes "
                                                               "2x this many UNet calls, the core KSampler as many)")
    parser.add_argument("--reruns", type=int, default=2, help="timed warm one-face re-runs per server")
    parser.add_argument("--cpu", action="store_true", help="run the servers on the CPU (a smoke test of this "
                                                           "script; memory is then the server's RSS)")
    args, _ = cb.parse_server_benchmark(parser, argv)
    print(f"machine: {cb.machine(gpu=not args.cpu)}; ComfyUI: {cb.host_dir(args.comfyui)}; {args.crop} px crops, "
          f"{2 * args.steps} UNet calls of 2 rows per face", flush=True)
    workdir = args.workdir or tempfile.mkdtemp(prefix="revpers-bench-gpu-")
    figures = {kind: measure(kind, args, workdir) for kind in ("core", "pack")}
    figures["pack_over_core"] = summary(figures["core"], figures["pack"], args.reruns)
    print(f"pack / core: {json.dumps(figures['pack_over_core'])}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
