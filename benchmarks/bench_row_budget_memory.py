"""Peak memory of Invert + Anonymized Sampler for 1, 4 and 16 faces under a row budget, on the full-size
SDXL stand-in (UNet in bf16, CPU, PyTorch attention), in this process through the pack's own nodes.

The checkpoint is loaded with ComfyUI's own loader (what CheckpointLoaderSimple calls) and the FaceID
stand-in with the pack's loader; one warm-up run (1 face) loads and patches the UNet. Then for each
configuration the process's resident high-water mark is reset (/proc/self/clear_refs) and the faces
are inverted and sampled (STEPS steps each, SIZE px crops as latents, random identities); printed is
the peak resident memory above the resident memory before the run, and the model calls made. Before each
configuration the C library is asked to give freed heap memory back (revpers_core.heap, as each run does
at its end), so that what an earlier configuration freed does not absorb the next one's peak. With
`--max-rows` R, faces go in chunks of R/2 (both branches of a face per row pair): the peak should stop
growing once the faces fill one chunk. The last configuration, all faces in one call (max_rows large
enough), shows what the budget saves.

    flock /tmp/revpers-heavy.lock .venv/bin/python benchmarks/bench_row_budget_memory.py [--faces 1,4,16]
        [--max-rows 4] [--size 128] [--steps 2] [--models DIR] [--json out.json]
"""
import argparse
import json
import sys
import time
import types
from pathlib import Path

import comfy_bench as cb
from revpers_core import heap


def load(models_dir):
    """ComfyUI in this process (CPU, bf16 UNet, PyTorch attention), the pack, the SDXL stand-in and its adapter."""
    from paths import HOST

    sys.path.insert(0, str(HOST))
    from comfy.cli_args import args

    args.bf16_unet = True
    from inprocess import load_comfy_and_pack

    pack = load_comfy_and_pack()
    import comfy.sd
    from revpers_core.faceid import load_faceid_adapter

    model, clip = comfy.sd.load_checkpoint_guess_config(
        str(Path(models_dir) / "checkpoints" / cb.CHECKPOINT), output_vae=False, output_clip=True)[:2]
    adapter = load_faceid_adapter(str(Path(models_dir) / "ipadapter" / "ip-adapter-faceid_sdxl.bin"))
    return pack, model, clip, adapter


class Calls:
    """Counts model calls and rows at the model (ComfyUI's model_function_wrapper)."""

    def __init__(self):
        self.calls = self.rows = 0

    def __call__(self, apply_model, args):
        self.calls += 1
        self.rows += int(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])


def pack_inputs(pack, model, clip, adapter, faces, size, seed):
    """What the pack's Invert and Anonymized Sampler take for FACES random faces of SIZE px (random latents and
    identities drawn from SEED): the latents, the inversion and identity models (the FaceID adapter put on
    `model` by Identity Conditioning, without and with the identities), and the prompt's conditioning and
    attribute, both of "" (CLIP Text Encode and Attribute Text, as the shipped workflows)."""
    import nodes as comfy_nodes  # ComfyUI's own nodes.py
    import torch

    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(faces, 4, size // 8, size // 8, generator=generator)
    embeddings = torch.nn.functional.normalize(torch.randn(faces, 512, generator=generator), dim=1)
    node = pack.nodes.BY_ID
    identity = node["RevPersIdentityConditioning"]
    return types.SimpleNamespace(
        latents=latents, inversion_model=identity.execute(model, adapter, 1.0)[0],
        identity_model=identity.execute(model, adapter, 1.0, embeddings)[0],
        positive=comfy_nodes.CLIPTextEncode().encode(clip, "")[0],
        negative=node["RevPersAttributeText"].execute(clip, "")[0])


def run(pack, model, clip, adapter, faces, size, steps, max_rows):
    given = pack_inputs(pack, model, clip, adapter, faces, size, seed=faces)
    node = pack.nodes.BY_ID
    calls = Calls()
    inv_model, id_model = given.inversion_model.clone(), given.identity_model.clone()
    inv_model.set_model_unet_function_wrapper(calls)
    id_model.set_model_unet_function_wrapper(calls)
    record, _ = node["RevPersInvert"].execute(inv_model, {"samples": given.latents}, given.positive, given.negative,
                                              -10.0, steps, 0.7, 0, max_rows)
    node["RevPersAnonymizedSampler"].execute(id_model, given.positive, given.negative, record, -10.0, False, 1024, "",
                                             max_rows)
    return calls


def rss_status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", default="1,4,16")
    parser.add_argument("--max-rows", type=int, default=4, help="the row budget (2 rows per face)")
    parser.add_argument("--size", type=int, default=128, help="crop size in px")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--unbounded", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the most faces in one call, for comparison")
    parser.add_argument("--models", default=str(cb.REPO / ".host" / "test-models"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    cb.ensure_standins(Path(args.models))
    import torch

    with torch.inference_mode():
        pack, model, clip, adapter = load(args.models)
        print(f"machine: {cb.machine()}; {args.size} px crops, {args.steps} steps, row budget {args.max_rows}",
              flush=True)
        run(pack, model, clip, adapter, 1, args.size, args.steps, args.max_rows)  # warm-up: load and patch
        counts = [int(f) for f in args.faces.split(",")]
        configs = [(n, args.max_rows) for n in counts]
        if args.unbounded:
            configs.append((max(counts), 2 * max(counts)))
        figures = []
        for faces, max_rows in configs:
            heap.release_free_heap()
            before = rss_status("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")
            t0 = time.monotonic()
            calls = run(pack, model, clip, adapter, faces, args.size, args.steps, max_rows)
            row = {"faces": faces, "max_rows": max_rows, "calls": calls.calls, "rows": calls.rows,
                   "seconds": round(time.monotonic() - t0, 1), "resident_before_gib": cb.gib(before),
                   "peak_gib": cb.gib(rss_status("VmHWM")),
                   "peak_above_before_gib": cb.gib(rss_status("VmHWM") - before)}
            figures.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
