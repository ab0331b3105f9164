"""Where a model call's time goes: the pack's inversion and sampler against ComfyUI's own KSampler on the
full-size SDXL stand-in (UNet in bf16, as the server benchmarks run it), in one process, on this CPU.

Each configuration runs in its own process (one model in memory at a time): one untimed run, then a
run under torch.profiler. Printed per configuration: the seconds inside the model calls (ComfyUI's
model-function wrapper around each call), per call, and the operators that took the most time, so that
a cost the pack adds per call shows as the difference between two tables (for example the casts,
aten::copy_, or the LoRA's matrix products, aten::mm). Also counted per call (counts do not vary from
run to run as seconds do): the arithmetic (GFLOP of matrix products, convolutions and attention, by
torch's FLOP counter, in a third run) and the number of copies (the profiler's); then each
configuration's ratios to core.

* pack: Identity Conditioning, Invert (STEPS inversion calls), Anonymized Sampler (STEPS calls), one
  face of SIZE px: 2·STEPS calls of 2 rows, with the FaceID LoRA and the identity attention;
* core: KSampler, 2·STEPS steps of euler at cfg 2 on the same latent: 2·STEPS calls of 2 rows;
* core_lora: the same through LoraLoaderModelOnly with the FaceID stand-in's own LoRA at strength 1.

    flock /tmp/revpers-heavy.lock .venv/bin/python benchmarks/bench_call_profile.py [--steps 3]
        [--size 64] [--configs pack,core,core_lora] [--rows 14] [--json out.json]
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import comfy_bench as cb


class CallTimer:
    """ComfyUI's model-function wrapper: times each model call."""

    def __init__(self):
        self.seconds = []

    def __call__(self, apply_model, args):
        t0 = time.perf_counter()
        out = apply_model(args["input"], args["timestep"], **args["c"])
        self.seconds.append(time.perf_counter() - t0)
        return out


def prepare(config, steps, size, models):
    """A function running `config` once, and its CallTimer."""
    import bench_row_budget_memory as rb

    pack, model, clip, adapter = rb.load(models)  # puts ComfyUI on the path, UNet in bf16
    import folder_paths

    import nodes as comfy_nodes  # ComfyUI's own nodes.py

    node = pack.nodes.BY_ID
    given = rb.pack_inputs(pack, model, clip, adapter, 1, size, seed=0)
    latent, positive, negative = {"samples": given.latents}, given.positive, given.negative
    timer = CallTimer()
    if config == "pack":
        inversion_model, identity_model = given.inversion_model.clone(), given.identity_model.clone()
        for m in (inversion_model, identity_model):
            m.set_model_unet_function_wrapper(timer)

        def run():
            record, _ = node["RevPersInvert"].execute(inversion_model, latent, positive, negative, -10.0, steps, 0.7,
                                                      0, 0)
            node["RevPersAnonymizedSampler"].execute(identity_model, positive, negative, record, -10.0, False, 1024,
                                                     "", 0)
        return run, timer
    if config == "core_lora":
        folder_paths.add_model_folder_path("loras", str(Path(models) / "loras"))
        model = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, cb.FACEID_LORA, 1.0)[0]
    model = model.clone()
    model.set_model_unet_function_wrapper(timer)

    def run():
        comfy_nodes.KSampler().sample(model, 1, 2 * steps, 2.0, "euler", "normal", positive, negative, latent,
                                      denoise=1.0)
    return run, timer


def child(config, steps, size, models, rows):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    run, timer = prepare(config, steps, size, models)
    with torch.inference_mode():
        run()  # untimed: first-call costs (weight casts set up, caches) stay out of the figures
        timer.seconds.clear()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run()
        calls, seconds = len(timer.seconds), sum(timer.seconds)
        # The arithmetic, counted in a run of its own (the profiler's own flop count keeps every op's inputs
        # and runs out of memory on the full-size model): torch's FLOP counter, per operator.
        counter = FlopCounterMode(display=False)
        with counter:
            run()
    table = prof.key_averages()
    flops = {str(op): n / calls for op, n in counter.get_flop_counts()["Global"].items() if n}
    figures = {"calls": calls, "seconds_per_call": round(seconds / calls, 3),
               "gflop_per_call": round(sum(flops.values()) / 1e9, 3),
               "gflop_per_call_by_operator": {k: round(v / 1e9, 3) for k, v in sorted(flops.items())},
               "operator_calls_per_call": {e.key: e.count // calls for e in table
                                           if e.key in ("aten::mm", "aten::addmm", "aten::copy_")}}
    print(f"[{config}] {calls} model calls, {seconds:.2f} s inside them, "
          f"{figures['seconds_per_call']} s per call; {figures['gflop_per_call']} GFLOP per call counted by "
          f"torch's FLOP counter ({', '.join(f'{k} {v}' for k, v in figures['gflop_per_call_by_operator'].items())})", flush=True)
    print(table.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=55), flush=True)
    print(f"FIGURES {json.dumps(figures)}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="inversion steps (2x this many model calls)")
    parser.add_argument("--size", type=int, default=64, help="face size in px")
    parser.add_argument("--configs", default="pack,core,core_lora")
    parser.add_argument("--rows", type=int, default=14, help="operators listed per configuration")
    parser.add_argument("--models", default=str(cb.REPO / ".host" / "test-models"))
    parser.add_argument("--json", default=None, help="write the figures to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.steps, args.size, args.models, args.rows)
        return 0
    cb.ensure_standins(Path(args.models))
    cb.write_faceid_lora(Path(args.models))
    print(f"machine: {cb.machine()}; {args.size} px, {2 * args.steps} model calls of 2 rows per configuration",
          flush=True)
    figures = {}
    for config in args.configs.split(","):
        done = subprocess.run([sys.executable, __file__, "--child", config, "--steps", str(args.steps), "--size",
                               str(args.size), "--models", args.models, "--rows", str(args.rows)], check=False,
                              stdout=subprocess.PIPE, text=True)
        print(done.stdout, end="", flush=True)
        if done.returncode != 0:
            return done.returncode
        figures[config] = json.loads(done.stdout.split("FIGURES ", 1)[1].splitlines()[0])
    if "core" in figures:
        core = figures["core"]
        for config, fig in figures.items():
            if config != "core":
                print(f"{config} / core: arithmetic {fig['gflop_per_call'] / core['gflop_per_call']:.3f}x "
                      f"({fig['gflop_per_call']} / {core['gflop_per_call']} GFLOP per call), seconds "
                      f"{fig['seconds_per_call'] / core['seconds_per_call']:.3f}x, copies "
                      f"{fig['operator_calls_per_call'].get('aten::copy_', 0)} / "
                      f"{core['operator_calls_per_call'].get('aten::copy_', 0)} per call", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
