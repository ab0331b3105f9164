"""python -m revpers_cli.standins: generate stand-in model files into a ComfyUI-style models folder.

    python -m revpers_cli.standins --models DIR [--seed 0] [--sdxl] [--sd15] [--faceid] [--buffalo] [--all]
                                    [--reuse OTHER_DIR ...] [--verify [--low-memory] [--size 64]]
"""
import argparse
import sys
import time
from pathlib import Path

from . import generate, verify_checkpoint
from .verify import weight_problems


def _parser():
    p = argparse.ArgumentParser(prog="python -m revpers_cli.standins",
                                description="Generate stand-in model files (exact formats, random values: NOT real "
                                            "models) into a ComfyUI-style models folder.")
    p.add_argument("--models", required=True, help="models base folder (gets checkpoints/, ipadapter/, insightface/)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random value (default 0)")
    p.add_argument("--sdxl", action="store_true", help="the full-size SDXL checkpoint (6.9 GB, ~1 min)")
    p.add_argument("--sd15", action="store_true", help="the SD1.5 checkpoint (2.1 GB)")
    p.add_argument("--faceid", action="store_true",
                   help="IP-Adapter-FaceID .bin for each chosen checkpoint (SDXL's when none is chosen)")
    p.add_argument("--buffalo", action="store_true", help="the InsightFace buffalo_l ONNX files")
    p.add_argument("--all", action="store_true", help="SDXL checkpoint, its FaceID adapter and buffalo_l")
    p.add_argument("--comfyui", default=None, help="with --verify: the ComfyUI folder to load the checkpoints with "
                   "(default: $COMFYUI_DIR, or .host/comfyui-$REVPERS_HOST, default 0.3.75); generating needs none")
    p.add_argument("--reuse", action="append", default=[], metavar="DIR",
                   help="another models folder whose current stand-ins (same seed) are hard-linked or copied "
                   "instead of generated again (may be given more than once)")
    p.add_argument("--verify", action="store_true", help="then load each checkpoint through ComfyUI (child "
                   "process) and check one sampling step and the VAE give finite numbers")
    p.add_argument("--low-memory", action="store_true", help="with --verify: UNet in bf16, text encoders in fp16")
    p.add_argument("--size", type=int, default=64, help="with --verify: image size in pixels (default 64)")
    return p


def main(argv=None):
    p = _parser()
    a = p.parse_args(argv)
    if a.all:
        a.sdxl = a.faceid = a.buffalo = True
    if not (a.sdxl or a.sd15 or a.faceid or a.buffalo):
        p.error("choose what to generate: --sdxl, --sd15, --faceid, --buffalo or --all")
    t0 = time.time()
    print(f"stand-in weights (random values, NOT real models) into {a.models}, seed {a.seed}:", flush=True)
    archs = [arch for arch, on in (("sdxl", a.sdxl), ("sd15", a.sd15)) if on]
    try:
        paths = generate(a.models, archs, a.faceid, a.buffalo, a.seed, log=lambda s: print(s, flush=True),
                         reuse=a.reuse)
    except OSError as e:  # a full disk (said before writing where it can be)
        raise SystemExit(f"error: {e}")
    if a.verify:
        for path in paths:
            if str(path).endswith(".safetensors"):
                r = verify_checkpoint(path, a.comfyui, a.size, a.low_memory)
                weights = r.get("weights")
                problems = weight_problems(weights) if weights else ["not detected as SDXL or SD1.5"]
                print(f"  verified {Path(path).name}: detected {r['model_config']}, "
                      f"{weights['compared'] if weights else 0} weights equal to the file's, finite={r['finite']}, "
                      f"load {r['load_s']} s, 1 step at {a.size}px {r['sample_s']} s, "
                      f"peak {r['peak_rss_gib']} GiB", flush=True)
                if problems:
                    raise SystemExit(f"error: {path} did not load whole: {'; '.join(problems[:10])}")
                if not r["finite"]:
                    raise SystemExit(f"error: {path} produced non-finite values: {r}")
    print(f"done in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
