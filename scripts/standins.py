#!/usr/bin/env python3
"""Generate stand-in model files into a ComfyUI-style models folder.

A stand-in has the exact file format, key names and tensor shapes of a real model file, and seeded
random values. It proves that loaders, graphs and the whole pipeline work end to end where the real
weights cannot be downloaded; its output is noise, never a real anonymization. Nothing generated
here is ever committed.

    python scripts/standins.py --models DIR [--seed 0] [--sdxl] [--sd15] [--faceid] [--buffalo] [--all]
                               [--reuse OTHER_DIR ...]

    checkpoints/revpers-standin-sdxl.safetensors   full SDXL key layout (2,515 keys, 6.9 GB, fp16)
    checkpoints/revpers-standin-sd15.safetensors   full SD1.5 key layout (2.1 GB)
    ipadapter/ip-adapter-faceid_sdxl.bin           IP-Adapter-FaceID layout, LoRA included
    ipadapter/ip-adapter-faceid_sd15.bin           (with --sd15 and --faceid)
    insightface/models/buffalo_l/*.onnx            InsightFace buffalo_l signatures

The checkpoint layouts come from ComfyUI itself: its model classes are built on the meta device and
its checkpoint-saving code names the keys, so a stand-in is exactly what ComfyUI would save. Values
are generated and written one tensor at a time (safetensors is streamed), so memory stays small.

Every file is deterministic for a seed, written atomically (temporary name, then rename) and skipped
when it already exists with the size and seed recorded in its `<file>.standin.json` marker. With
`--reuse OTHER_DIR`, a current file of the same kind and seed in another models folder (say the quick
start's and the tests') is hard-linked (or copied, across file systems) instead of generated again.
"""
import argparse
import hashlib
import json
import math
import os
import struct
import sys
import time
from collections import OrderedDict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

GENERATOR_VERSION = 1
MARKER_SUFFIX = ".standin.json"

CHECKPOINTS = {
    "sdxl": "checkpoints/revpers-standin-sdxl.safetensors",
    "sd15": "checkpoints/revpers-standin-sd15.safetensors",
}
FACEID = {
    "sdxl": "ipadapter/ip-adapter-faceid_sdxl.bin",
    "sd15": "ipadapter/ip-adapter-faceid_sd15.bin",
}
BUFFALO_DIR = "insightface/models/buffalo_l"

# The UNet architectures ComfyUI's detection recognises as SDXL base and SD1.5.
UNET_CONFIGS = {
    "sdxl": dict(use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=320,
                 num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10],
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], transformer_depth_middle=10,
                 context_dim=2048, num_head_channels=64, use_linear_in_transformer=True,
                 use_spatial_transformer=True, legacy=False, num_classes="sequential", adm_in_channels=2816,
                 use_temporal_attention=False, use_temporal_resblock=False),
    "sd15": dict(use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, model_channels=320,
                 num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4],
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1,
                 context_dim=768, num_heads=8, use_linear_in_transformer=False, use_spatial_transformer=True,
                 legacy=False, adm_in_channels=None, use_temporal_attention=False, use_temporal_resblock=False),
}
# The KL autoencoder both use (SDXL's VAE has SD's architecture).
VAE_DDCONFIG = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128,
                    ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)


def default_comfyui_dir():
    from revpers_core.host import default_comfyui_dir as host_dir
    return host_dir()


def import_comfy(comfyui_dir):
    """Put a ComfyUI checkout on sys.path (command-line parsing off) and import what we need."""
    comfyui_dir = Path(comfyui_dir).resolve()
    if not (comfyui_dir / "comfy" / "model_detection.py").is_file():
        raise SystemExit(f"error: no ComfyUI at {comfyui_dir} (give --comfyui DIR or set COMFYUI_DIR)")
    if str(comfyui_dir) not in sys.path:
        sys.path.insert(0, str(comfyui_dir))
    import torch
    from comfy.cli_args import args  # ComfyUI's own parsing stays off here: it parses []

    if "comfy.model_management" not in sys.modules and not torch.cuda.is_available():
        args.cpu = True  # read once, when model_management is imported
    import comfy.model_detection
    import comfy.ldm.models.autoencoder
    return comfy


# --- the key layout, from ComfyUI ----------------------------------------------------------------

def checkpoint_layout(arch, comfyui_dir):
    """{key: tensor} for the whole checkpoint, as ComfyUI's own saving code names it. Floating
    tensors are on the meta device (shape only); the few real ones (CLIP position ids) are kept."""
    import torch
    comfy = import_comfy(comfyui_dir)
    unet_config = dict(UNET_CONFIGS[arch], dtype=torch.float16)
    with torch.device("meta"), torch.no_grad():
        model_config = comfy.model_detection.model_config_from_unet_config(unet_config)
        if model_config is None:
            raise RuntimeError(f"this ComfyUI does not recognise the {arch} UNet configuration")
        model = model_config.get_model({}, device="meta")
        clip = model_config.clip_target().clip(device="meta", dtype=torch.float16)
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(VAE_DDCONFIG), embed_dim=4)
        sd = model.state_dict_for_saving(clip.state_dict(), vae.state_dict())
    return OrderedDict(sorted(sd.items()))


# --- values --------------------------------------------------------------------------------------

def tensor_generator(seed, key):
    import torch
    digest = hashlib.sha256(f"revpers-standin/{seed}/{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def standin_value(seed, key, shape):
    """Seeded values with scales that keep a random network finite through the whole pipeline:
    normalisation weights 1 and biases 0 (every 1-D `.weight` in these models is a norm scale),
    other biases small, weights and embeddings N(0, 1/fan_in) so each layer keeps its input's scale,
    CLIP's logit scale ln(100) as in the real models."""
    import torch
    shape = tuple(shape)
    if key.endswith("logit_scale"):
        return torch.full(shape, math.log(100.0))
    if len(shape) == 1 and key.endswith(".weight"):
        return torch.ones(shape)
    x = torch.randn(shape, generator=tensor_generator(seed, key)) if shape else torch.randn(
        (), generator=tensor_generator(seed, key))
    if len(shape) <= 1:
        return x * 0.02
    fan_in = math.prod(shape[1:])
    return x / math.sqrt(fan_in)


# --- streaming safetensors -----------------------------------------------------------------------

_ST_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64", "int64": "I64",
              "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def write_safetensors_streamed(path, layout, make_tensor, metadata=None, on_tensor=None):
    """Write a .safetensors file whose tensors come one at a time from `make_tensor(key, like)`.

    The header (names, dtypes, shapes, offsets) is known up front from `layout` ({key: tensor or
    meta tensor}), so each tensor is produced, written and dropped in turn."""
    import torch
    entries, offset, plan = {}, 0, []
    for key, like in layout.items():
        dtype = torch.float16 if like.is_floating_point() else like.dtype
        nbytes = like.numel() * torch.empty((), dtype=dtype).element_size()
        entries[key] = {"dtype": _ST_DTYPES[str(dtype).replace("torch.", "")], "shape": list(like.shape),
                        "data_offsets": [offset, offset + nbytes]}
        plan.append((key, like, dtype, nbytes))
        offset += nbytes
    header = dict(entries)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for key, like, dtype, nbytes in plan:
            t = make_tensor(key, like).to(dtype).contiguous()
            data = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
            if len(memoryview(data).cast("B")) != nbytes:
                raise RuntimeError(f"{key}: produced {t.shape} {t.dtype}, expected {nbytes} bytes")
            f.write(data)
            if on_tensor is not None:
                on_tensor(key, nbytes)
    return 8 + len(blob) + offset


# --- markers and atomic writes -------------------------------------------------------------------

def marker_path(path):
    return Path(str(path) + MARKER_SUFFIX)


def is_current(path, kind, seed):
    """True when `path` was generated by this version for this kind and seed and is whole."""
    path, marker = Path(path), marker_path(path)
    if not (path.is_file() and marker.is_file()):
        return False
    try:
        info = json.loads(marker.read_text())
    except ValueError:
        return False
    return (info.get("kind") == kind and info.get("seed") == seed
            and info.get("generator") == GENERATOR_VERSION and info.get("size") == path.stat().st_size)


def write_marker(path, kind, seed, **extra):
    info = {"kind": kind, "seed": seed, "generator": GENERATOR_VERSION, "size": Path(path).stat().st_size,
            "note": "stand-in weights (random values): NOT a real model", **extra}
    tmp = Path(f"{marker_path(path)}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, marker_path(path))


def adopt(path, kind, seed, reuse=(), log=print):
    """Make `path` a current stand-in of `kind`/`seed` by taking the same file from another models
    folder in `reuse` (same relative path, current marker): a hard link, or a copy across file
    systems. Returns True when one was taken."""
    path = Path(path)
    for other in reuse:
        src = Path(other) / path.relative_to(path.parents[1])  # <folder>/<file> under the models dir
        if not is_current(src, kind, seed) or src.resolve() == path.resolve():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            try:
                os.link(src, tmp)
                how = "hard-linked"
            except OSError:
                import shutil
                shutil.copyfile(src, tmp)
                how = "copied"
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        marker = json.loads(marker_path(src).read_text())
        tmp_marker = Path(f"{marker_path(path)}.tmp-{os.getpid()}")
        tmp_marker.write_text(json.dumps(marker, indent=1) + "\n")
        os.replace(tmp_marker, marker_path(path))
        log(f"  {path}: {how} from {src}")
        return True
    return False


def already_there(path, kind, seed, reuse, log, size_text):
    """True when `path` is a current stand-in already (kept; `size_text(bytes)` words its size for
    the log) or was taken from one of the `reuse` models folders (see `adopt`)."""
    if is_current(path, kind, seed):
        log(f"  {path} exists ({size_text(Path(path).stat().st_size)}, seed {seed}): kept")
        return True
    return adopt(path, kind, seed, reuse, log)


def _atomic(path, write):
    """Run write(tmp_path), then rename onto `path`; the temporary is removed on any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# --- the generators ------------------------------------------------------------------------------

def generate_checkpoint(models_dir, arch, seed=0, comfyui_dir=None, log=print, reuse=()):
    path = Path(models_dir) / CHECKPOINTS[arch]
    kind = f"checkpoint-{arch}"
    if already_there(path, kind, seed, reuse, log, lambda size: f"{size / 1e9:.2f} GB"):
        return path
    import torch
    t0 = time.time()
    layout = checkpoint_layout(arch, comfyui_dir or default_comfyui_dir())
    params = sum(v.numel() for v in layout.values() if v.is_floating_point())

    def make(key, like):
        if like.device.type != "meta":
            return like
        if like.is_floating_point():
            return standin_value(seed, key, like.shape)
        if key.endswith("position_ids"):  # CLIP's token positions 0..76, as in the real files
            return torch.arange(like.shape[-1], dtype=like.dtype).expand(like.shape)
        raise RuntimeError(f"no stand-in rule for the {like.dtype} tensor {key}")

    meta = {"format": "pt", "revpers_standin": arch, "revpers_seed": seed,
            "note": "random stand-in weights for testing: not a real model"}
    _atomic(path, lambda tmp: write_safetensors_streamed(tmp, layout, make, metadata=meta))
    write_marker(path, kind, seed, keys=len(layout), params=params)
    log(f"  {path}: {len(layout)} keys, {params / 1e9:.2f} B params, {path.stat().st_size / 1e9:.2f} GB "
        f"in {time.time() - t0:.0f} s")
    return path


def generate_faceid(models_dir, arch, seed=0, log=print, reuse=()):
    from revpers_core.standins.faceid import write_faceid_bin
    path = Path(models_dir) / FACEID[arch]
    kind = f"faceid-{arch}"
    if already_there(path, kind, seed, reuse, log, lambda size: f"{size / 1e6:.0f} MB"):
        return path
    t0 = time.time()
    _atomic(path, lambda tmp: write_faceid_bin(tmp, arch=arch, seed=seed))
    write_marker(path, kind, seed)
    log(f"  {path}: {path.stat().st_size / 1e6:.0f} MB in {time.time() - t0:.1f} s")
    return path


def generate_buffalo(models_dir, seed=0, log=print):
    folder = Path(models_dir) / BUFFALO_DIR
    try:
        # Written by another part of the project; the call site stays here.
        from revpers_core.standins.buffalo_l import write_buffalo_l
    except ImportError as e:
        raise SystemExit(f"error: the buffalo_l stand-in generator is not available "
                         f"(revpers_core/standins/buffalo_l.py: {e})")
    stamp = folder / ("buffalo_l" + MARKER_SUFFIX)
    if stamp.is_file():
        try:
            info = json.loads(stamp.read_text())
        except ValueError:
            info = {}
        files = info.get("files", {})
        if (info.get("seed") == seed and info.get("generator") == GENERATOR_VERSION and files
                and all((folder / n).is_file() and (folder / n).stat().st_size == s for n, s in files.items())):
            log(f"  {folder} exists ({len(files)} files, seed {seed}): kept")
            return folder
    t0 = time.time()
    folder.mkdir(parents=True, exist_ok=True)
    write_buffalo_l(folder, seed=seed)
    files = {p.name: p.stat().st_size for p in sorted(folder.glob("*.onnx"))}
    tmp = Path(f"{stamp}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"kind": "buffalo_l", "seed": seed, "generator": GENERATOR_VERSION,
                               "files": files, "note": "stand-in weights: NOT a real model"}, indent=1) + "\n")
    os.replace(tmp, stamp)
    log(f"  {folder}: {', '.join(f'{n} ({s / 1e6:.1f} MB)' for n, s in files.items())} "
        f"in {time.time() - t0:.1f} s")
    return folder


def generate(models_dir, seed=0, sdxl=False, sd15=False, faceid=False, buffalo=False, comfyui_dir=None,
             log=print, reuse=()):
    """Generate the chosen stand-ins; FaceID files follow the chosen checkpoint architectures
    (SDXL when no checkpoint is chosen). Current files in the `reuse` models folders are taken
    instead of generating them again. Returns the paths."""
    out = []
    if sdxl:
        out.append(generate_checkpoint(models_dir, "sdxl", seed, comfyui_dir, log, reuse))
    if sd15:
        out.append(generate_checkpoint(models_dir, "sd15", seed, comfyui_dir, log, reuse))
    if faceid:
        archs = [a for a, on in (("sdxl", sdxl), ("sd15", sd15)) if on] or ["sdxl"]
        out += [generate_faceid(models_dir, a, seed, log, reuse) for a in archs]
    if buffalo:
        out.append(generate_buffalo(models_dir, seed, log))
    return out


# --- verification: load through ComfyUI, one sampling step, VAE both ways ------------------------

def _verify_child(path, comfyui_dir, size=64, low_memory=False):
    """Runs in a child process: load the checkpoint as CheckpointLoaderSimple does, encode a prompt,
    take one sampling step at `size` px and decode/encode with the VAE. Prints one JSON line."""
    import resource
    import torch
    comfy = import_comfy(comfyui_dir)
    from comfy.cli_args import args
    if low_memory:  # only the UNet in bf16 (and text encoders in fp16) to fit a shared machine
        args.bf16_unet = True
        args.fp16_text_enc = True
    import comfy.sample
    import comfy.sd
    t0 = time.time()
    report = {"path": str(path)}
    with torch.inference_mode():
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)[:3]
        report["model_config"] = type(model.model.model_config).__name__
        report["model_class"] = type(model.model).__name__
        report["load_s"] = round(time.time() - t0, 1)
        t1 = time.time()
        cond, pooled = clip.encode_from_tokens(clip.tokenize("a photo of a face"), return_pooled=True)
        positive = [[cond, {"pooled_output": pooled}]]
        cond0, pooled0 = clip.encode_from_tokens(clip.tokenize(""), return_pooled=True)
        negative = [[cond0, {"pooled_output": pooled0}]]
        latent = torch.zeros(1, 4, size // 8, size // 8)
        noise = comfy.sample.prepare_noise(latent, 0)
        samples = comfy.sample.sample(model, noise, 1, 5.0, "euler", "normal", positive, negative, latent,
                                      disable_pbar=True, seed=0).float()
        report["sample_s"] = round(time.time() - t1, 1)
        image = vae.decode(samples)
        back = vae.encode(image[:, :, :, :3])
        report["finite"] = bool(torch.isfinite(cond).all() and torch.isfinite(samples).all()
                                and torch.isfinite(image).all() and torch.isfinite(back).all())
        report["cond_std"] = round(float(cond.float().std()), 4)
        report["latent_std"] = round(float(samples.std()), 4)
        report["image_mean"] = round(float(image.float().mean()), 4)
        report["image_std"] = round(float(image.float().std()), 4)
    report["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print("VERIFY " + json.dumps(report), flush=True)


def verify_checkpoint(path, comfyui_dir=None, size=64, low_memory=False, python=None):
    """Load a checkpoint through ComfyUI in a child process (so its memory is returned) and run one
    sampling step and the VAE; returns the child's report dict (model_config, finite, timings...)."""
    import subprocess
    cmd = [python or sys.executable, str(Path(__file__).resolve()), "--verify-child", str(path),
           "--comfyui", str(comfyui_dir or default_comfyui_dir()), "--size", str(size)]
    if low_memory:
        cmd.append("--low-memory")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("VERIFY "):
            return json.loads(line[len("VERIFY "):])
    raise RuntimeError(f"verifying {path} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True, help="models base folder (gets checkpoints/, ipadapter/, insightface/)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random value (default 0)")
    p.add_argument("--sdxl", action="store_true", help="the full-size SDXL checkpoint (6.9 GB, ~1 min)")
    p.add_argument("--sd15", action="store_true", help="the SD1.5 checkpoint (2.1 GB)")
    p.add_argument("--faceid", action="store_true",
                   help="IP-Adapter-FaceID .bin for each chosen checkpoint (SDXL's when none is chosen)")
    p.add_argument("--buffalo", action="store_true", help="the InsightFace buffalo_l ONNX files")
    p.add_argument("--all", action="store_true", help="SDXL checkpoint, its FaceID adapter and buffalo_l")
    p.add_argument("--comfyui", default=None, help="ComfyUI folder whose classes give the checkpoint layouts "
                   "(default: $COMFYUI_DIR, or .host/comfyui-$REVPERS_HOST, default 0.3.75)")
    p.add_argument("--reuse", action="append", default=[], metavar="DIR",
                   help="another models folder whose current stand-ins (same seed) are hard-linked or copied "
                   "instead of generated again (may be given more than once)")
    p.add_argument("--verify", action="store_true", help="then load each checkpoint through ComfyUI (child "
                   "process) and check one sampling step and the VAE give finite numbers")
    p.add_argument("--low-memory", action="store_true", help="with --verify: UNet in bf16, text encoders in fp16")
    p.add_argument("--size", type=int, default=64, help="with --verify: image size in pixels (default 64)")
    p.add_argument("--verify-child", default=None, help=argparse.SUPPRESS)
    if argv is None and "--verify-child" in sys.argv:
        argv = sys.argv[1:]
    if argv is not None and "--verify-child" in argv:
        # The child of verify_checkpoint: --models is not needed.
        a, _ = p.parse_known_args(["--models", "-"] + list(argv))
        _verify_child(a.verify_child, a.comfyui or default_comfyui_dir(), a.size, a.low_memory)
        return 0
    a = p.parse_args(argv)
    if a.all:
        a.sdxl = a.faceid = a.buffalo = True
    if not (a.sdxl or a.sd15 or a.faceid or a.buffalo):
        p.error("choose what to generate: --sdxl, --sd15, --faceid, --buffalo or --all")
    t0 = time.time()
    print(f"stand-in weights (random values, NOT real models) into {a.models}, seed {a.seed}:", flush=True)
    paths = generate(a.models, a.seed, a.sdxl, a.sd15, a.faceid, a.buffalo, a.comfyui,
                     log=lambda s: print(s, flush=True), reuse=a.reuse)
    if a.verify:
        for path in paths:
            if str(path).endswith(".safetensors"):
                r = verify_checkpoint(path, a.comfyui, a.size, a.low_memory)
                print(f"  verified {Path(path).name}: detected {r['model_config']}, finite={r['finite']}, "
                      f"load {r['load_s']} s, 1 step at {a.size}px {r['sample_s']} s, "
                      f"peak {r['peak_rss_gib']} GiB", flush=True)
                if not r["finite"]:
                    raise SystemExit(f"error: {path} produced non-finite values: {r}")
    print(f"done in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
