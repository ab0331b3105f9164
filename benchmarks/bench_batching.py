"""Batched faces vs a face-by-face loop over the same nodes: model calls, rows and wall time.

The pack inverts and samples all faces of a batch together, one model call per step carrying both
guidance branches of every face. The reference runs faces one after another (two branches per call).
This script runs both ways on the oracle's tiny SDXL weights inside ComfyUI (CPU), in the same process,
and prints the figures. Not a test: timings depend on the machine.

    .venv/bin/python benchmarks/bench_batching.py [--steps 100] [--faces 1,3] [--threads N] [--repeat 2]
"""
import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


class CallCounter:
    """Counts model calls and batch rows at the model (ComfyUI's model_function_wrapper)."""

    def __init__(self):
        self.calls = 0
        self.rows = 0

    def __call__(self, apply_model, args):
        self.calls += 1
        self.rows += int(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])


def run(nodes, base, adapter, latents, embeddings, steps, counter):
    """Inversion + anonymized sampling of a batch through the pack's nodes; returns the output latents."""
    import oracle_model as om

    identity = nodes.identity.RevPersIdentityConditioning
    inv_model = identity.execute(base, adapter, 1.0)[0].clone()
    id_model = identity.execute(base, adapter, 1.0, embeddings)[0].clone()
    inv_model.set_model_unet_function_wrapper(counter)
    id_model.set_model_unet_function_wrapper(counter)
    pos, neg = om.conditioning("default", "inversion")
    record, _ = nodes.inversion.RevPersInvert.execute(inv_model, {"samples": latents}, pos, neg, -10.0, steps, 0.7, 0)
    gpos, gneg = om.conditioning("default", "generation")
    return nodes.sampler.RevPersAnonymizedSampler.execute(id_model, gpos, gneg, record, -10.0, False, 1024)[0]["samples"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--faces", default="1,3", help="comma-separated face counts")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per configuration; the fastest is shown")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from inprocess import load_comfy_and_pack
    import oracle_model as om
    from revpers_core.faceid import load_faceid_adapter

    pack = load_comfy_and_pack()
    import logging
    logging.getLogger().setLevel(logging.WARNING)  # ComfyUI logs every model load at INFO
    with torch.inference_mode():
        base = om.tiny_sdxl()
        adapter = load_faceid_adapter(str(om.adapter_path("golden")))
        x = om.latent("default")["samples"]
        e = om.identity_embedding()
        all_latents = torch.cat([x, x.flip(-1), x.roll(3, -2), x.roll(3, -1), -x])
        all_embeddings = torch.cat([e, e.roll(100, -1), -e, e.roll(7, -1), e.flip(-1)])
        run(pack.nodes, base, adapter, x, e, 2, CallCounter())  # warm-up (kernels, model load)

        print(f"tiny SDXL (oracle weights), CPU, {torch.get_num_threads()} threads, N={args.steps} steps, "
              f"inversion + anonymized sampling")
        print(f"{'faces':>5}  {'mode':<13} {'model calls':>11} {'rows':>6} {'rows/call':>9} {'wall s':>8}")
        for n in [int(f) for f in args.faces.split(",")]:
            latents, embeddings = all_latents[:n], all_embeddings[:n]
            best = {}
            for _ in range(max(1, args.repeat)):
                counter = CallCounter()
                t0 = time.perf_counter()
                batched = run(pack.nodes, base, adapter, latents, embeddings, args.steps, counter)
                best["batched"] = min(best.get("batched", 1e9), time.perf_counter() - t0)
                loop = CallCounter()
                t0 = time.perf_counter()
                singles = [run(pack.nodes, base, adapter, latents[i:i + 1], embeddings[i:i + 1], args.steps, loop)
                           for i in range(n)]
                best["loop"] = min(best.get("loop", 1e9), time.perf_counter() - t0)
            diff = (torch.cat(singles) - batched).abs().max().item()
            print(f"{n:>5}  {'batched':<13} {counter.calls:>11} {counter.rows:>6} {counter.rows / counter.calls:>9.0f} "
                  f"{best['batched']:>8.2f}")
            print(f"{n:>5}  {'face-by-face':<13} {loop.calls:>11} {loop.rows:>6} {loop.rows / loop.calls:>9.0f} "
                  f"{best['loop']:>8.2f}   (max |batched - alone| = {diff:.2g})")
        ref = 3 * 2 * args.steps
        print(f"reference (faces one by one, 2 branches per call): 3 faces x ({args.steps} + {args.steps}) = {ref} calls "
              f"of 2 rows")


if __name__ == "__main__":
    main()
