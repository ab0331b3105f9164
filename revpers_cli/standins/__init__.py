"""Stand-in model files: the exact file names, formats, key layouts and input/output signatures of the
real models, with seeded random values, for tests and demos on machines without the real downloads.
They prove that loaders, graphs and the whole pipeline work end to end; their output is noise, never a
real anonymization. They are generated on demand and never shipped.

    from revpers_cli import standins
    standins.generate(models_dir, checkpoints=["sdxl"], faceid=True, buffalo=True)

or from a shell: `python -m revpers_cli.standins --models DIR --all` (see __main__.py). Into a
ComfyUI-style models folder:

    checkpoints/revpers-standin-sdxl.safetensors   full SDXL key layout (2,515 keys, 6.9 GB, fp16)
    checkpoints/revpers-standin-sd15.safetensors   full SD1.5 key layout (1,131 keys, 2.1 GB, fp16)
    ipadapter/ip-adapter-faceid_sdxl.bin           IP-Adapter-FaceID layout, LoRA included
    ipadapter/ip-adapter-faceid_sd15.bin           (for an SD1.5 checkpoint)
    insightface/models/buffalo_l/*.onnx            InsightFace buffalo_l signatures

Every file is deterministic for a seed, written atomically (temporary name, then rename) and kept when
it already exists with the size and seed (and, for a checkpoint, the digest of its key layout) recorded
in its `<file>.standin.json` marker. Files of the same kind and seed in the `reuse` models folders (say
the quick start's and the tests') are hard-linked (or copied, across file systems) instead of generated
again.

Modules: layout.py (the standard SDXL/SD1.5 single-file key layouts, from the architectures' numbers),
checkpoint.py (streamed safetensors), faceid.py, buffalo_l.py, values.py (seeded values), store.py
(markers, atomic writes, reuse), verify.py (a checkpoint through ComfyUI's loader: every loaded weight
against the file, one sampling step and the VAE, in a child process). Only verify.py needs ComfyUI. This
module imports none of the heavy ones until asked to generate.
"""
import time
from pathlib import Path

from .buffalo_l import BUFFALO_FILES
from .store import (NotAStandin, already_there, ensure_space, folder_is_current, is_current, read_marker,
                    refuse_overwrite, standin_evidence, write_atomic, write_folder_stamp, write_marker)

__all__ = ["ARCHS", "CHECKPOINTS", "FACEID", "BUFFALO_DIR", "BUFFALO_FILES", "generate", "generate_checkpoint",
           "generate_faceid", "generate_buffalo", "is_current", "verify_checkpoint", "SIZES", "NotAStandin",
           "standin_evidence", "CHECKPOINT_NAMES"]

ARCHS = ("sdxl", "sd15")
CHECKPOINTS = {
    "sdxl": "checkpoints/revpers-standin-sdxl.safetensors",
    "sd15": "checkpoints/revpers-standin-sd15.safetensors",
}
FACEID = {
    "sdxl": "ipadapter/ip-adapter-faceid_sdxl.bin",
    "sd15": "ipadapter/ip-adapter-faceid_sd15.bin",
}
BUFFALO_DIR = "insightface/models/buffalo_l"
# The stand-in checkpoints' file names: a real run that names one is refused by that name.
CHECKPOINT_NAMES = tuple(Path(p).name for p in CHECKPOINTS.values())
# The bytes each generated file takes (checked against the files by the tests), so that a disk too
# full for one is said before writing starts.
SIZES = {
    "checkpoint-sdxl": 6_938_041_288,
    "checkpoint-sd15": 2_132_626_038,
    "faceid-sdxl": 1_071_400_677,
    "faceid-sd15": 96_798_387,
}


def _arch(arch):
    if arch not in ARCHS:
        raise ValueError(f"unknown stand-in architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return arch


def generate_checkpoint(models_dir, arch, seed=0, log=print, reuse=()) -> Path:
    """The stand-in checkpoint of `arch` in `models_dir` (kept, taken from `reuse`, or generated). A file
    whose marker records another key layout than layout.py's (or none) is made again."""
    from .layout import checkpoint_layout, layout_digest

    path = Path(models_dir) / CHECKPOINTS[_arch(arch)]
    kind = f"checkpoint-{arch}"
    digest = layout_digest(checkpoint_layout(arch))
    refuse_overwrite(path, f"the {arch.upper()} stand-in checkpoint")
    if already_there(path, kind, seed, reuse, log, lambda size: f"{size / 1e9:.2f} GB", layout=digest):
        return path
    from .checkpoint import write_checkpoint

    ensure_space(path, SIZES[kind], f"the {arch.upper()} stand-in checkpoint")
    t0 = time.time()
    keys, params = write_atomic(path, lambda tmp: write_checkpoint(tmp, arch, seed))
    write_marker(path, kind, seed, layout=digest, keys=keys, params=params)
    log(f"  {path}: {keys} keys, {params / 1e9:.2f} B params, {path.stat().st_size / 1e9:.2f} GB "
        f"in {time.time() - t0:.0f} s")
    return path


def generate_faceid(models_dir, arch, seed=0, log=print, reuse=()) -> Path:
    """The stand-in IP-Adapter-FaceID .bin of `arch` in `models_dir` (kept, taken from `reuse`, or generated)."""
    path = Path(models_dir) / FACEID[_arch(arch)]
    kind = f"faceid-{arch}"
    refuse_overwrite(path, f"the {arch.upper()} stand-in FaceID adapter")
    if already_there(path, kind, seed, reuse, log, lambda size: f"{size / 1e6:.0f} MB"):
        return path
    from .faceid import write_faceid_bin

    ensure_space(path, SIZES[kind], f"the {arch.upper()} stand-in FaceID adapter")
    t0 = time.time()
    write_faceid_bin(path, arch=arch, seed=seed)
    write_marker(path, kind, seed)
    log(f"  {path}: {path.stat().st_size / 1e6:.0f} MB in {time.time() - t0:.1f} s")
    return path


def generate_buffalo(models_dir, seed=0, log=print) -> Path:
    """The stand-in buffalo_l folder in `models_dir` (kept when its stamp lists every file, whole)."""
    folder = Path(models_dir) / BUFFALO_DIR
    stamp = folder / "buffalo_l.standin.json"
    if folder_is_current(stamp, seed):
        log(f"  {folder} exists ({len(read_marker(stamp)['files'])} files, seed {seed}): kept")
        return folder
    from .buffalo_l import write_buffalo_l

    for name in BUFFALO_FILES:
        refuse_overwrite(folder / name, "the stand-in buffalo_l")  # the folder's stamp names its own files
    t0 = time.time()
    folder.mkdir(parents=True, exist_ok=True)
    write_buffalo_l(folder, seed=seed)
    files = {p.name: p.stat().st_size for p in sorted(folder.glob("*.onnx"))}
    write_folder_stamp(stamp, "buffalo_l", seed, files)
    log(f"  {folder}: {', '.join(f'{n} ({s / 1e6:.1f} MB)' for n, s in files.items())} "
        f"in {time.time() - t0:.1f} s")
    return folder


def generate(models_dir, checkpoints=("sdxl",), faceid=True, buffalo=True, seed=0, log=print, reuse=()) -> list:
    """Generate the stand-ins a job needs into `models_dir`: the checkpoint of each architecture in
    `checkpoints` ("sdxl", "sd15"), with `faceid` the FaceID adapter of each (SDXL's when no checkpoint is
    asked for), with `buffalo` the buffalo_l folder. Current files are kept; current files in the
    `reuse` models folders are taken instead of generating them again. `log` gets one line per file.
    Returns the paths."""
    archs = [_arch(a) for a in ([checkpoints] if isinstance(checkpoints, str) else checkpoints)]
    out = [generate_checkpoint(models_dir, a, seed, log, reuse) for a in archs]
    if faceid:
        out += [generate_faceid(models_dir, a, seed, log, reuse) for a in archs or ["sdxl"]]
    if buffalo:
        out.append(generate_buffalo(models_dir, seed, log))
    return out


def verify_checkpoint(path, comfyui_dir=None, size=64, low_memory=False, python=None) -> dict:
    """A checkpoint loaded through ComfyUI in a child process, one sampling step and the VAE: the report
    (see verify.py)."""
    from .verify import verify_checkpoint as run

    return run(path, comfyui_dir, size, low_memory, python)
