"""Warm re-run of the aligned-face workflow against a core KSampler workflow making the same UNet calls,
on the full-size SDXL stand-in in one real ComfyUI server (CPU, `--bf16-unet`, PyTorch attention).

* pack: workflows/api/anonymize_aligned_face.json on a 64-px marker face with STEPS inversion steps:
  STEPS inversion calls + STEPS sampling calls, each of 2 rows (both branches of one face);
* core: the same picture through CheckpointLoaderSimple, VAEEncode, KSampler (2·STEPS steps, euler,
  cfg 2, denoise 1: 2·STEPS calls of 2 rows), VAEDecode, SaveImage;
* core + LoRA: the same with LoraLoaderModelOnly carrying the FaceID stand-in's own LoRA (its factors
  written as a LoRA file), merged by ComfyUI's own loader: the UNet the pack samples with, minus the
  identity attention.

The three are timed in rounds, interleaved (pack, core + LoRA, core; RUNS rounds), so that a drift of
this machine's speed over the minutes weighs on all three alike. Before the first round, a warm-up round
runs each workflow once, untimed: the checkpoint's cold load happens there, and so does the server's
second prompt, which on this CPU ran slower than the same workflow's later runs (the pack's by 20-35 s in
two benchmarks; core's, seen once, by 2-7 s), so that it lands on no timed run. Each timed run follows
an untimed run of the same workflow with another seed: switching workflows (putting the pack's FaceID
patches on, merging or restoring ComfyUI's LoRA weights) happens there, so a timed run is a warm re-run:
the diffusion and what follows it run again; ComfyUI's cache keeps the loaders, text encodings, adapter
and embeddings.
Printed: the warm-up's seconds, the seconds of every timed run, the medians, pack/core and
pack/(core + LoRA), each round's own ratios and their median (a round's runs follow each other within
minutes, so its ratio is the least touched by this machine's drift); also how often the server logged
"Requested to load" (a model load or switch) during each workflow's timed runs, the server's resident
memory after each timed run, and the median seconds of each node. ``--configs pack,core`` leaves core +
LoRA out (more rounds in the same time).

    flock /tmp/revpers-heavy.lock .venv/bin/python benchmarks/bench_warm_rerun.py [--steps 10] [--runs 3]
        [--size 64] [--configs pack,core_lora,core] [--comfyui DIR] [--models DIR] [--json out.json]
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import comfy_bench as cb


def interleaved(server, graphs, runs):
    """{name: figures} of the workflows `graphs` ({name: seed -> graph}) timed in `runs` interleaved rounds
    after an untimed warm-up round, each timed run preceded by an untimed one of the same workflow (see the
    module docstring)."""
    out = {name: {"warm_up_s": None, "seconds": [], "loads_logged": 0, "resident_gib": [], "nodes": {}}
           for name in graphs}
    for name, make_graph in graphs.items():  # the warm-up round: cold load and the server's second prompt
        out[name]["warm_up_s"] = round(server.run(make_graph(900))[1], 2)
    print("[warm-up] " + ", ".join(f"{name} {out[name]['warm_up_s']} s" for name in graphs), flush=True)
    for r in range(runs):
        for name, make_graph in graphs.items():
            server.run(make_graph(1000 + r))  # untimed: the switch to this workflow happens here
            loads_before = server.log_count("Requested to load")
            fig = out[name]
            fig["seconds"].append(round(server.run(make_graph(r + 1))[1], 2))
            fig["loads_logged"] += server.log_count("Requested to load") - loads_before
            fig["resident_gib"].append(cb.gib(server.rss()))
            for kind, s in server.node_seconds.items():
                fig["nodes"].setdefault(kind, []).append(s)
        print(f"[round {r + 1}] " + ", ".join(f"{name} {out[name]['seconds'][-1]} s" for name in graphs), flush=True)
    for fig in out.values():
        fig["median_s"] = cb.median(fig["seconds"])
        fig["node_median_s"] = {kind: cb.median(v) for kind, v in fig.pop("nodes").items()}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="inversion steps (2x this many UNet calls)")
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds: timed warm re-runs per workflow")
    parser.add_argument("--size", type=int, default=64, help="face picture size in px")
    parser.add_argument("--configs", default="pack,core_lora,core",
                        help="workflows timed, in this order within a round (pack and core are needed)")
    args, header = cb.parse_server_benchmark(parser, argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not {"pack", "core"} <= set(configs) or not set(configs) <= {"pack", "core_lora", "core"}:
        parser.error(f"--configs must name pack and core, and may name core_lora (got {args.configs!r})")
    print(f"{header}; {args.size} px, {2 * args.steps} UNet "
          f"calls of 2 rows per run, {args.runs} timed warm re-runs each", flush=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="revpers-bench-warm-"))
    server = cb.BenchServer(cb.host_dir(args.comfyui), args.models, workdir, env=cb.server_env(args.server_env))
    try:
        face = cb.marker_picture(args.size, args.size, cb.ALIGNED_FACE, seed=1)
        name = server.upload(face, "aligned")
        every = {
            "pack": lambda seed: cb.pack_graph("anonymize_aligned_face", name, args.steps, seed=seed),
            "core_lora": lambda seed: cb.core_graph([name], 2 * args.steps, seed=seed, lora=cb.FACEID_LORA),
            "core": lambda seed: cb.core_graph([name], 2 * args.steps, seed=seed),
        }
        timed = interleaved(server, {c: every[c] for c in configs}, args.runs)
        for label, key in (("pack", "pack"), ("core + LoRA", "core_lora"), ("core", "core")):
            if key in timed:
                print(f"[{label}] {json.dumps(timed[key])}", flush=True)
    finally:
        server.close()
    pack, core = timed["pack"], timed["core"]
    figures = dict(timed)
    line = f"warm re-run, median: pack {pack['median_s']} s, core {core['median_s']} s"
    for key, label in (("core", "core"), ("core_lora", "(core + LoRA)")):
        if key in timed:
            other = timed[key]
            figures[f"ratio_pack_over_{key}"] = round(pack["median_s"] / other["median_s"], 3)
            rounds = [round(p / c, 3) for p, c in zip(pack["seconds"], other["seconds"])]
            figures[f"round_ratios_pack_over_{key}"] = rounds
            figures[f"median_round_ratio_pack_over_{key}"] = cb.median(rounds)
            line += (f"; pack/{label} {figures[f'ratio_pack_over_{key}']} (rounds {rounds}, their median "
                     f"{figures[f'median_round_ratio_pack_over_{key}']})")
    print(line, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
