"""Where a warm run's time goes: the pack's runs against ComfyUI's own KSampler on the same loaded UNet, in
one process, interleaved run by run (full-size SDXL stand-in, UNet in bf16, PyTorch attention, this CPU).

The server benchmark (bench_warm_rerun.py) times whole prompts in rounds that last minutes, and this
machine's speed drifts by more than the few per cent it looks for. Here there is no server: one worker
thread (as ComfyUI runs prompts) times one run of 2·STEPS model calls of 2 rows (one 64-px face, both
branches) per configuration, the configurations following each other run by run, in an order reversed
every other round, so that a drift weighs on all of them alike:

* core: KSampler, 2·STEPS steps of euler at cfg 2, on the checkpoint's own model;
* core_kept: the same, with the C heap's freed pages kept while the run lasts, as the pack's runs keep
  them (revpers_core.heap.freed_pages_kept): core under the allocator settings of the pack's runs;
* lora: the same KSampler on the pack's inversion model (the FaceID LoRA added at run time, no identity
  tokens), the text context's LoRA products kept for the run as the pack's runs keep them;
* identity: the same on the pack's identity model (the LoRA and the identity attention);
* pack: Invert (STEPS calls) then Anonymized Sampler (STEPS calls) on those two models, as the
  aligned-face workflow runs them;
* pack_no_trim: the same with the freed heap not handed back at the end of each run (revpers_core.heap's
  release switched off for the run).

Every configuration runs once, untimed, before the first round (switching between them, which ComfyUI
does when another clone of the model is sampled, stays inside every timed run). Printed: each round's
seconds and page faults (minor faults of this process during the run: each one is a page the kernel had
to map and zero, because memory freed earlier had been handed back to the system or a new block was
mapped), and for each configuration its median, its ratio of medians to core, each round's ratio to core
with their median, and its median page faults per run against core's.

    flock /tmp/revpers-heavy.lock .venv/bin/python benchmarks/bench_interleaved_runs.py [--steps 5]
        [--rounds 4] [--configs core,core_kept,lora,identity,pack,pack_no_trim] [--json out.json]
"""
import argparse
import contextlib
import importlib
import json
import resource
import sys
import threading
import time
from pathlib import Path

import comfy_bench as cb

CONFIGS = ("core", "core_kept", "lora", "identity", "pack", "pack_no_trim")


@contextlib.contextmanager
def heap_release_off(runs_module):
    """The pack's runs without handing freed heap back (the module's release call made to do nothing)."""
    heap = runs_module.heap
    release = heap.release_free_heap
    heap.release_free_heap = lambda: False
    try:
        yield
    finally:
        heap.release_free_heap = release


def configurations(models, steps, size):
    """{name: run(seed)} for every configuration of the module docstring, on one loaded UNet."""
    import bench_row_budget_memory as rb

    pack, model, clip, adapter = rb.load(models)  # puts ComfyUI on the path, UNet in bf16
    import nodes as comfy_nodes  # ComfyUI's own nodes.py

    runs_module = importlib.import_module(f"{pack.__name__}.nodes._diffusion_runs")
    node = pack.nodes.BY_ID
    given = rb.pack_inputs(pack, model, clip, adapter, 1, size, seed=0)
    latent, positive, negative = {"samples": given.latents}, given.positive, given.negative
    inversion_model, identity_model = given.inversion_model, given.identity_model

    def ksampler(unet, seed, keep_context):
        kept = adapter.context_products.kept() if keep_context else contextlib.nullcontext()
        with kept:
            comfy_nodes.KSampler().sample(unet, seed, 2 * steps, 2.0, "euler", "normal", positive, negative, latent,
                                          denoise=1.0)

    def core_kept(seed):
        with runs_module.heap.freed_pages_kept():
            ksampler(model, seed, False)

    def pack_runs(seed, trim=True):
        with contextlib.nullcontext() if trim else heap_release_off(runs_module):
            record = node["RevPersInvert"].execute(inversion_model, latent, positive, negative, -10.0, steps, 0.7,
                                                   seed, 0)[0]
            node["RevPersAnonymizedSampler"].execute(identity_model, positive, negative, record, -10.0, False, 1024,
                                                     "", 0)

    return {
        "core": lambda seed: ksampler(model, seed, False),
        "core_kept": core_kept,
        "lora": lambda seed: ksampler(inversion_model, seed, True),
        "identity": lambda seed: ksampler(identity_model, seed, True),
        "pack": lambda seed: pack_runs(seed),
        "pack_no_trim": lambda seed: pack_runs(seed, trim=False),
    }


def minor_faults():
    """The page faults this process has taken that needed no read from disk (each maps a fresh page)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved(models, steps, size, names, rounds):
    """({name: [seconds of each round]}, {name: [page faults of each round]}), as the module docstring says."""
    import torch

    every = configurations(models, steps, size)
    seconds, faults = {name: [] for name in names}, {name: [] for name in names}
    with torch.inference_mode():
        for name in names:
            every[name](1000)  # untimed
        for r in range(rounds):
            for name in names if r % 2 == 0 else reversed(names):
                start, faults_before = time.perf_counter(), minor_faults()
                every[name](r + 1)
                seconds[name].append(round(time.perf_counter() - start, 2))
                faults[name].append(minor_faults() - faults_before)
            print(f"[round {r + 1}] " + ", ".join(f"{name} {seconds[name][-1]} s ({faults[name][-1]} page faults)"
                                                  for name in names), flush=True)
    return seconds, faults


def on_worker_thread(function, *args):
    """function(*args) on a thread of its own, as ComfyUI runs a prompt; its result, or its exception raised."""
    result = {}

    def target():
        try:
            result["value"] = function(*args)
        except BaseException as error:  # handed to the caller
            result["error"] = error

    thread = threading.Thread(target=target, name="bench-prompt-worker")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="inversion steps (2x this many model calls a run)")
    parser.add_argument("--rounds", type=int, default=4, help="timed runs of each configuration")
    parser.add_argument("--size", type=int, default=64, help="face size in px")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="configurations timed (core is needed)")
    parser.add_argument("--models", default=str(cb.REPO / ".host" / "test-models"))
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args(argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    if "core" not in names or not set(names) <= set(CONFIGS):
        parser.error(f"--configs must name core and may name {', '.join(CONFIGS)} (got {args.configs!r})")
    cb.ensure_standins(Path(args.models))
    print(f"machine: {cb.machine()}; {args.size} px, {2 * args.steps} model calls of 2 rows per run, "
          f"{args.rounds} rounds", flush=True)
    seconds, faults = on_worker_thread(interleaved, args.models, args.steps, args.size, names, args.rounds)
    core = round(cb.median(seconds["core"]), 2)  # medians of an even count are means of two: rounded as measured
    core_faults, figures = round(cb.median(faults["core"])), {}
    for name in names:
        median = round(cb.median(seconds[name]), 2)
        rounds = [round(s / c, 3) for s, c in zip(seconds[name], seconds["core"])]
        figures[name] = {"seconds": seconds[name], "median_s": median, "ratio_to_core": round(median / core, 3),
                         "round_ratios_to_core": rounds, "median_round_ratio_to_core": round(cb.median(rounds), 3),
                         "page_faults": faults[name], "median_page_faults": round(cb.median(faults[name]))}
        if name != "core":
            print(f"{name} / core: {figures[name]['ratio_to_core']} (median {median} s against {core} s; rounds "
                  f"{rounds}, their median {figures[name]['median_round_ratio_to_core']}); page faults per run "
                  f"{figures[name]['median_page_faults']} against {core_faults}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
