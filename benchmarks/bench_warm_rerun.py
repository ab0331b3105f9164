"""Warm re-run of the aligned-face workflow against a core KSampler workflow making the same UNet calls,
on the full-size SDXL stand-in in one real ComfyUI server (CPU, `--bf16-unet`, PyTorch attention).

* pack: workflows/api/anonymize_aligned_face.json on a 64-px marker face with STEPS inversion steps:
  STEPS inversion calls + STEPS sampling calls, each of 2 rows (both branches of one face);
* core: the same picture through CheckpointLoaderSimple, VAEEncode, KSampler (2·STEPS steps, euler,
  cfg 2, denoise 1: 2·STEPS calls of 2 rows), VAEDecode, SaveImage;
* core + LoRA: the same with LoraLoaderModelOnly carrying the FaceID stand-in's own LoRA (its factors
  written as a LoRA file), merged by ComfyUI's own loader: the UNet the pack samples with, minus the
  identity attention.

Each workflow runs once to warm up (the core one first absorbs the checkpoint load; the pack's first
run puts the FaceID patches on), then RUNS times with a new seed each time (the diffusion and what
follows it run again; ComfyUI's cache keeps the loaders, text encodings, adapter and embeddings).
The blocks run one after the other (pack, core + LoRA, core), so that switching between them does not
count in any. Printed: the seconds of every run, the medians, and pack/core; also how often the server
logged "Requested to load" (a model load or switch) during each block's timed runs, and the server's
resident memory after the warm-up and after each timed run, and the median seconds of each node.

    flock /tmp/revpers-heavy.lock .venv/bin/python benchmarks/bench_warm_rerun.py [--steps 10] [--runs 3]
        [--size 64] [--comfyui DIR] [--models DIR] [--json out.json]
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import comfy_bench as cb


def block(server, make_graph, runs):
    server.run(make_graph(0))  # warm-up
    loads_before = server.log_count("Requested to load")
    seconds, resident, nodes = [], [cb.gib(server.rss())], {}
    for seed in range(1, runs + 1):
        seconds.append(round(server.run(make_graph(seed))[1], 2))
        resident.append(cb.gib(server.rss()))
        for kind, s in server.node_seconds.items():
            nodes.setdefault(kind, []).append(s)
    return {"seconds": seconds, "median_s": cb.median(seconds),
            "loads_logged": server.log_count("Requested to load") - loads_before, "resident_gib": resident,
            "node_median_s": {kind: cb.median(v) for kind, v in nodes.items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="inversion steps (2x this many UNet calls)")
    parser.add_argument("--runs", type=int, default=3, help="timed warm re-runs per workflow")
    parser.add_argument("--size", type=int, default=64, help="face picture size in px")
    args, header = cb.parse_server_benchmark(parser, argv)
    print(f"{header}; {args.size} px, {2 * args.steps} UNet "
          f"calls of 2 rows per run, {args.runs} timed warm re-runs each", flush=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="revpers-bench-warm-"))
    server = cb.BenchServer(cb.host_dir(args.comfyui), args.models, workdir, env=cb.server_env(args.server_env))
    try:
        face = cb.marker_picture(args.size, args.size, cb.ALIGNED_FACE, seed=1)
        name = server.upload(face, "aligned")
        pack = block(server, lambda seed: cb.pack_graph("anonymize_aligned_face", name, args.steps, seed=seed),
                     args.runs)
        print(f"[pack] {json.dumps(pack)}", flush=True)
        lora = block(server, lambda seed: cb.core_graph([name], 2 * args.steps, seed=seed, lora=cb.FACEID_LORA),
                     args.runs)
        print(f"[core + LoRA] {json.dumps(lora)}", flush=True)
        core = block(server, lambda seed: cb.core_graph([name], 2 * args.steps, seed=seed), args.runs)
        print(f"[core] {json.dumps(core)}", flush=True)
    finally:
        server.close()
    figures = {"pack": pack, "core_lora": lora, "core": core,
               "ratio_pack_over_core": round(pack["median_s"] / core["median_s"], 3),
               "ratio_pack_over_core_lora": round(pack["median_s"] / lora["median_s"], 3)}
    print(f"warm re-run, median: pack {pack['median_s']} s, core + LoRA {lora['median_s']} s, core {core['median_s']} "
          f"s; pack/core {figures['ratio_pack_over_core']}, pack/(core + LoRA) {figures['ratio_pack_over_core_lora']}",
          flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
