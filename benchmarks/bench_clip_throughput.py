"""Frames per second of `revpers anonymize clip.mp4`, and what a frame of a clip costs beside the same
frame sent as a photo of its own.

One local ComfyUI with the stand-ins (SD1.5 by default; --arch sdxl for the full-size SDXL one, ~14 GiB)
and the CLI's own code, in this process: a clip of marker faces walking (two per frame, made with PyAV,
with a tone) goes through the shipped video workflow, all its faces in one batch (in chunks under the
row budget); the same frames, as PNG files in a folder, go through the shipped photo workflow, one
prompt per photo. Both warm (a first run of each loads the models) and then timed --repeat times, each
time with another seed so that ComfyUI's cache cannot serve them. Printed: seconds, frames per second,
and the ratio of the clip's time per frame to a photo's (below 1: batching the frames pays).

    .venv/bin/python benchmarks/bench_clip_throughput.py [--frames 8] [--steps 4] [--crop 64] [--arch sd15]
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))


def marker_frames(n, size=(240, 160)):
    from standin_models import marker_picture
    frames = []
    for t in range(n):
        faces = [((40 + 4 * t, 70), 24, 11), ((200 - 4 * t, 90), 24, 22)]
        frames.append(marker_picture(*size, faces, seed=t))
    return frames


def timed(argv):
    from revpers_cli import cli
    t0 = time.perf_counter()
    code = cli.main([str(a) for a in argv])
    if code != 0:
        sys.exit(f"the run failed (exit {code}): {' '.join(map(str, argv))}")
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--arch", choices=("sd15", "sdxl"), default="sd15")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()

    from PIL import Image
    from clips import write_clip
    from revpers_cli import cli, servers, workflow
    from revpers_cli.host import default_comfyui_dir

    models = REPO / ".host" / "standin-models"
    comfyui = default_comfyui_dir()
    cli.generate_standins(models, a.arch, comfyui)
    work = Path(tempfile.mkdtemp(prefix="revpers-bench-clip-"))
    frames = marker_frames(a.frames)
    clip = write_clip(work / "walk.mp4", frames, fps=12)
    folder = work / "frames"
    folder.mkdir()
    for t, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"frame_{t:03d}.png")
    names = {"checkpoint": cli.STANDIN_CHECKPOINT[a.arch], "adapter": cli.STANDIN_ADAPTER[a.arch]}
    flows = {}
    for kind in ("photo", "clip"):
        flows[kind] = work / f"{kind}.json"
        flows[kind].write_text(__import__("json").dumps(workflow.apply_knobs(
            workflow.load_workflow(workflow.find_workflow(None, kind)), names)))
    server = servers.start_local(comfyui, ["--cpu", *cli.STANDIN_CPU_SERVER_ARGS["fp32" if a.arch == "sd15" else "bf16"]],
                                  models, work)
    try:
        common = ["--server", server.url, "--steps", a.steps, "--crop-size", a.crop, "-q", "--overwrite"]
        clip_times, photo_times = [], []
        for seed in range(a.repeat + 1):  # seed 0 warms up (loads the models)
            clip_times.append(timed(["anonymize", clip, "-o", work / f"out{seed}.mp4", "--video-workflow", flows["clip"],
                                     "--seed", seed, *common]))
            photo_times.append(timed(["anonymize", folder, "-o", work / f"out{seed}", "--workflow", flows["photo"],
                                      "--seed", seed, *common]))
    finally:
        server.host.stop()
    clip_s, photos_s = statistics.median(clip_times[1:]), statistics.median(photo_times[1:])
    print(f"\n[clip throughput] {a.arch} stand-ins, {a.frames} frames of 240x160 with 2 faces each, {a.crop}-px crops, "
          f"{a.steps} steps, this machine's CPU, warm, median of {a.repeat}")
    print(f"  clip through the video workflow : {clip_s:6.1f} s  = {a.frames / clip_s:.3f} frames/s "
          f"({clip_s / a.frames:.2f} s per frame; runs {', '.join(f'{t:.1f}' for t in clip_times[1:])} s)")
    print(f"  the frames as {a.frames} photos      : {photos_s:6.1f} s  = {a.frames / photos_s:.3f} frames/s "
          f"({photos_s / a.frames:.2f} s per frame; runs {', '.join(f'{t:.1f}' for t in photo_times[1:])} s)")
    print(f"  per-frame cost of the clip relative to separate photos: {clip_s / photos_s:.2f}")


if __name__ == "__main__":
    main()
