"""revpers: anonymize the faces in a photo from the command line, through a ComfyUI server.

    revpers anonymize photo.jpg -o anonymized.png            # starts the local ComfyUI, runs, stops it
    revpers anonymize photo.jpg -o out.png --server http://127.0.0.1:8188   # your running ComfyUI
    revpers anonymize photo.jpg -o out.png --standin-weights # installation check on random weights
    revpers anonymize --example group -o out.png --standin-weights   # the README's quick start
    revpers models                                           # download the real model files
    revpers models --check                                   # list what is missing, verify checksums

`anonymize` runs the shipped API-format workflow "anonymize every face in a photo": it sets the
knobs below on the workflow's nodes (found by class_type, see KNOBS), uploads the photo, queues the
graph, shows a progress bar per node from the server's websocket, downloads the result and prints
the anonymity check. Failures exit non-zero with the server's own message.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from . import guarantee
from .photos import UPLOAD_AS_IS, photo_has_alpha, read_photo
from . import models as model_registry
from .host import default_comfyui_dir

REPO = Path(__file__).resolve().parent.parent

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MISSING, EXIT_SERVER, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_UNANONYMIZED = 5  # written with --allow-unanonymized although the audit failed (the image is marked)

WORKFLOW_CANDIDATES = ("workflows/api/anonymize_photo.json", "workflows/anonymize_photo_api.json")

# What each option sets: every node of that class_type in the workflow that has that input (as a
# literal, not a link) gets the value; a third element means "the node linked to that input, its
# input of this name". An option given on the command line must set at least one.
KNOBS = {
    "image": [("LoadImage", "image")],
    "checkpoint": [("CheckpointLoaderSimple", "ckpt_name")],
    "adapter": [("RevPersFaceIDAdapterLoader", "adapter_name")],
    # the reference inverts with the sampler's guidance scale, so one option sets both
    "guidance": [("RevPersAnonymizedSampler", "guidance"), ("RevPersInvert", "guidance")],
    "skip": [("RevPersInvert", "skip")],
    "steps": [("RevPersInvert", "steps")],
    "seed": [("RevPersInvert", "seed")],
    # only the Attribute Text that feeds the sampler: the inversion's own stays empty (zeros)
    "attribute": [("RevPersAnonymizedSampler", "attribute", "text")],
    "faces": [("RevPersDetectAlign", "max_faces")],  # all -> 0, largest -> 1, N -> the N largest
    # the other faces stay visible (outlined, the photo marked), instead of stopping the run
    "leave_other_faces": [("RevPersDetectAlign", "beyond_max_faces")],
    "min_face_size": [("RevPersDetectAlign", "min_face_size")],
    # save photos that fail the audit (marked NOT ANONYMIZED) instead of stopping the run
    "allow_unanonymized": [("RevPersAudit", "on_fail")],
    "check_fails": [("RevPersAnonymityCheck", "fail_if_recognizable")],  # set with --allow-unanonymized
    "arcface_threshold": [("RevPersAudit", "arcface_threshold")],
    "dlib_threshold": [("RevPersAudit", "dlib_threshold")],
    "crop_size": [("RevPersDetectAlign", "crop_size")],
    "filename_prefix": [("SaveImage", "filename_prefix")],
}
OUTPUT_CLASS = "SaveImage"
CHECK_CLASSES = ("RevPersAudit", "RevPersAnonymityCheck")

STANDIN_CHECKPOINT = {"sdxl": "revpers-standin-sdxl.safetensors", "sd15": "revpers-standin-sd15.safetensors"}
STANDIN_ADAPTER = {"sdxl": "ip-adapter-faceid_sdxl.bin", "sd15": "ip-adapter-faceid_sd15.bin"}
# Small defaults for the installation check (random weights, CPU): options given explicitly win.
STANDIN_DEFAULTS = {"steps": 3, "crop_size": 128}
# How a local server started for the installation check on a CPU (no CUDA) runs the full-size SDXL
# stand-in: UNet weights in bfloat16 and PyTorch's attention (SDPA). Measured with the quick start
# itself (3 faces, 128 px crops, 3 steps) on the 2-core, 24 GiB CI machine, otherwise idle: bf16 57 s
# end to end, server peak 13.9 GiB; float32 53 s, peak 19.5 GiB (the FaceID LoRA patched into the
# float32 UNet keeps both weight copies). Per UNet call float32 is faster (benchmarks/
# bench_standin_dtype.py, machine shared: 10 s vs 30 s at 256 px, batch 2; 1.6 s vs 4.4 s at 64 px):
# ComfyUI does not compute in bf16 on a CPU, it casts every layer's weights to float32 on each call.
# With few steps that hardly shows, and bf16 keeps the server well under 16 GiB. ComfyUI's default
# CPU attention is 2.3x slower than SDPA (30 s vs 13 s per call at 256 px, batch 6).
STANDIN_CPU_SERVER_ARGS = {"bf16": ["--bf16-unet", "--use-pytorch-cross-attention"],
                           "fp32": ["--use-pytorch-cross-attention"]}

BANNER = """\
################################################################################################
#  STAND-IN WEIGHTS: every model in this run has RANDOM values. This checks that the           #
#  installation works end to end. The output is NOT an anonymization and protects nobody.      #
################################################################################################"""

# --example NAME: photos that ship with an installed package, so the quick start needs no download.
# The stand-in face detector (revpers_core/standins/buffalo_l.py) takes only magenta "marker faces"
# for faces, so with --standin-weights marker faces are drawn over every real face of the photo, at
# the positions dlib's HOG detector finds them (box centre, radius ~0.6 x the box side): the audit
# looks for faces with dlib too, and would rightly fail the run on a real face left visible. With
# real weights the photo is used as it is.
EXAMPLES = {
    "group": {
        "package": "insightface", "path": "data/images/t1.jpg",
        "what": "the group photo that ships with InsightFace (data/images/t1.jpg, six people)",
        # (centre x, centre y), radius, pattern seed: all six people, so that no real face is left for
        # the audit's dlib detector to find (the stand-in detector cannot see real faces)
        "markers": [((121, 337), 54, 11), ((503, 349), 54, 22), ((1172, 337), 54, 33),
                    ((778, 420), 54, 44), ((934, 131), 65, 55), ((312, 213), 45, 66)],
    },
}


class CliError(Exception):
    """A failure with a readable message and an exit code."""

    def __init__(self, message, code=EXIT_FAILED):
        super().__init__(message)
        self.code = code


def _say(*lines):
    for line in lines:
        print(line, file=sys.stderr, flush=True)


# --- the workflow --------------------------------------------------------------------------------

def find_workflow(path=None):
    if path:
        p = Path(path)
        if not p.is_file():
            raise CliError(f"the workflow {p} does not exist", EXIT_USAGE)
        return p
    for rel in WORKFLOW_CANDIDATES:
        if (REPO / rel).is_file():
            return REPO / rel
    raise CliError("no API-format workflow found (looked for "
                   + ", ".join(str(REPO / r) for r in WORKFLOW_CANDIDATES) + "); give one with --workflow FILE",
                   EXIT_USAGE)


def load_workflow(path):
    try:
        graph = json.loads(Path(path).read_text())
    except ValueError as e:
        raise CliError(f"the workflow {path} is not valid JSON: {e}", EXIT_USAGE)
    if isinstance(graph, dict) and "nodes" in graph and "links" in graph:
        raise CliError(f"{path} is a UI-format workflow (for dragging into ComfyUI); give the API-format "
                       "one (File > Export (API) in ComfyUI, or workflows/api/ in this repository)", EXIT_USAGE)
    if not isinstance(graph, dict) or not all(isinstance(n, dict) and "class_type" in n for n in graph.values()):
        raise CliError(f"{path} is not an API-format workflow ({{node id: {{class_type, inputs}}}})", EXIT_USAGE)
    return graph


def nodes_of(graph, class_type):
    return [nid for nid, node in graph.items() if node.get("class_type") == class_type]


def apply_knobs(graph, values, soft=()):
    """A copy of `graph` with every knob in `values` (None = keep the workflow's) set on its nodes.
    Raises CliError naming the knobs the workflow has no place for (except those in `soft`:
    defaults of ours that apply only where the workflow has the input)."""
    graph = json.loads(json.dumps(graph))
    unplaced = []
    for knob, value in values.items():
        if value is None:
            continue
        placed = 0
        for class_type, input_name, *through in KNOBS[knob]:
            for nid in nodes_of(graph, class_type):
                inputs = graph[nid].setdefault("inputs", {})
                if through:
                    link = inputs.get(input_name)
                    if not (isinstance(link, list) and str(link[0]) in graph):
                        continue
                    inputs, input_name = graph[str(link[0])].setdefault("inputs", {}), through[0]
                if isinstance(inputs.get(input_name), list):
                    continue  # wired to another node: not a knob here
                if input_name in inputs or class_type in ("LoadImage", "SaveImage"):
                    inputs[input_name] = value
                    placed += 1
        if not placed and knob not in soft:
            where = " or ".join(f"{k[0]}.{k[1]}" for k in KNOBS[knob])
            unplaced.append(f"--{knob.replace('_', '-')} (the workflow has no {where})")
    if unplaced:
        raise CliError("this workflow cannot take these options: " + "; ".join(unplaced), EXIT_USAGE)
    return graph


def check_against_server(graph, object_info, entries):
    """Before any work: every node type exists on the server, and every file-choice input names a
    file the server has. Returns (unknown node types, [MissingFile-like lines])."""
    unknown = sorted({n["class_type"] for n in graph.values() if n["class_type"] not in object_info})
    by_name = {e.name: e for e in entries}
    missing = []
    for nid, node in graph.items():
        spec = object_info.get(node["class_type"])
        if spec is None:
            continue
        declared = {**spec.get("input", {}).get("required", {}), **spec.get("input", {}).get("optional", {})}
        for name, value in node.get("inputs", {}).items():
            if isinstance(value, list) or name not in declared or node["class_type"] == "LoadImage":
                continue
            choices = declared[name][0] if declared[name] else None
            if isinstance(choices, list) and isinstance(value, str) and value not in choices:
                e = by_name.get(value)
                if e is not None:
                    missing.append(model_registry.MissingFile(
                        e.name, f"the server's {e.folder}/ folder", e.source.url, e.role))
                elif re.search(r"\.(safetensors|bin|ckpt|pt|pth|onnx)$", value):
                    missing.append(model_registry.MissingFile(
                        value, f"the server's folder for {node['class_type']}.{name}", "(not a file this pack knows)"))
    return unknown, missing


# --- progress ------------------------------------------------------------------------------------

class NodeProgress:
    """Turns websocket events into one progress bar per running node (on stderr)."""

    def __init__(self, graph, enabled=True):
        self.graph = graph
        self.enabled = enabled
        self.bar = None
        self.node = None
        self.started = time.time()

    def _label(self, nid):
        node = self.graph.get(str(nid), {})
        title = node.get("_meta", {}).get("title") or node.get("class_type", "?")
        return f"{title} [{nid}]"

    def _close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __call__(self, kind, data):
        if not self.enabled:
            return
        from tqdm import tqdm
        if kind == "execution_start":
            self.started = time.time()
        if kind == "execution_cached" and data.get("nodes"):
            _say(f"  cached: {', '.join(self._label(n) for n in data['nodes'])}")
        elif kind == "executing":
            self._close()
            self.node = data.get("node")
            if self.node is not None:
                _say(f"  running {self._label(self.node)}  (at {time.time() - self.started:.1f} s)")
        elif kind == "progress":
            nid = data.get("node") or self.node
            if self.bar is None or self.bar.desc != self._label(nid):
                self._close()
                self.bar = tqdm(total=data.get("max"), desc=self._label(nid), file=sys.stderr, leave=True,
                                unit="step", dynamic_ncols=True)
            self.bar.total = data.get("max")
            self.bar.n = data.get("value", 0)
            self.bar.refresh()
        elif kind in ("execution_error", "execution_interrupted", "execution_success"):
            self._close()

    def close(self):
        self._close()


# --- model files ---------------------------------------------------------------------------------

def _extra_model_bases(comfyui_dir):
    """Folder lists from the host's own extra_model_paths.yaml: {comfy folder: [dirs]}."""
    path = Path(comfyui_dir) / "extra_model_paths.yaml"
    out = {}
    if not path.is_file():
        return out
    import yaml

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        print(f"warning: {path} could not be read ({error}); only the host's own models folder is used",
              file=sys.stderr)
        return out
    if not isinstance(config, dict):
        return out
    for section in config.values():
        if not isinstance(section, dict):
            continue
        base = Path(section.get("base_path", "") or "")
        if not base.is_absolute():
            base = path.parent / base
        for folder, value in section.items():
            if folder in ("base_path", "is_default") or not isinstance(value, str):
                continue
            out.setdefault(folder, []).extend(base / line.strip() for line in value.splitlines() if line.strip())
    return out


def missing_locally(entries, bases, extra=None):
    """Registry entries found (with the right size, where known) in none of the model base folders
    or the yaml's folders. A file of the wrong size is reported where it was found."""
    extra = extra or {}
    out = []
    for e in entries:
        top, _, rest = e.folder.partition("/")
        candidates = [Path(b) / e.folder / e.name for b in bases]
        candidates += [Path(d) / rest / e.name if rest else Path(d) / e.name for d in extra.get(top, [])]
        found = [c for c in candidates if c.is_file()]
        if any(e.size is None or c.stat().st_size == e.size for c in found):
            continue
        source = e.source.url + (f" (unpacked into {e.source.unpack_to}/)" if e.source.unpack_to else "")
        if found:
            out.append(model_registry.MissingFile(e.name, found[0].parent, source, e.role,
                                                  f"{found[0].stat().st_size} bytes, expected {e.size}"))
        else:
            out.append(model_registry.MissingFile(e.name, candidates[0].parent, source, e.role))
    return out


def generate_standins(cache, arch, comfyui_dir):
    script = REPO / "scripts" / "standins.py"
    if not script.is_file():
        raise CliError(f"--standin-weights needs {script} (run from a checkout of the repository)", EXIT_USAGE)
    cmd = [sys.executable, str(script), "--models", str(cache), f"--{arch}", "--faceid", "--buffalo",
           "--comfyui", str(comfyui_dir)]
    _say(f"generating stand-in weights into {cache} (once; later runs reuse them)")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # relayed line by line (works when stderr is not a real file)
        _say("  | " + line.rstrip())
    proc.wait()
    if proc.returncode != 0:
        raise CliError(f"generating the stand-in weights failed (exit {proc.returncode}); see above", EXIT_FAILED)


# --- anonymize -----------------------------------------------------------------------------------

def example_source(name):
    """The path of an example photo inside its installed package."""
    import importlib.util
    spec = EXAMPLES[name]
    found = importlib.util.find_spec(spec["package"])
    if found is None or not found.submodule_search_locations:
        raise CliError(f"--example {name} needs the {spec['package']} package (pip install {spec['package']})",
                       EXIT_USAGE)
    path = Path(list(found.submodule_search_locations)[0]) / spec["path"]
    if not path.is_file():
        raise CliError(f"--example {name}: {path} is missing from the installed {spec['package']} package",
                       EXIT_USAGE)
    return path


def example_photo(name, standin, workdir):
    """(path of the photo to upload, lines saying what it is). With stand-in weights the photo gets
    marker faces drawn over real faces (the stand-in detector sees nothing else)."""
    spec = EXAMPLES[name]
    source = example_source(name)
    if not standin:
        return source, [f"example '{name}': {spec['what']}: {source}"]
    import numpy as np
    from PIL import Image
    from .standins.buffalo_l import draw_marker_face

    with Image.open(source) as im:
        rgb = np.array(im.convert("RGB"))
    for centre, radius, seed in spec["markers"]:
        draw_marker_face(rgb, centre, radius, seed=seed)
    path = Path(workdir) / f"example-{name}-markers.png"
    Image.fromarray(rgb).save(path)
    places = ", ".join(f"({x}, {y}) r {r}" for (x, y), r, _ in spec["markers"])
    return path, [f"example '{name}': {spec['what']} ({rgb.shape[1]}x{rgb.shape[0]}): {source}",
                  f"  the stand-in face detector sees only magenta marker faces, so {len(spec['markers'])} "
                  f"marker faces are drawn over real faces at {places} (with real weights the photo is used "
                  "as it is)"]


def _photo_for_upload(photo, workdir):
    """(the file to upload, the photo's alpha or None). A photo in a mode ComfyUI would misread goes
    up as the 8-bit RGB PNG `read_photo` makes; an animated one (every frame goes to the server)
    goes up as it is, without alpha handling."""
    try:
        rgb, alpha, mode, frames = read_photo(photo)
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE)
    if frames > 1:
        return Path(photo), None
    if mode in UPLOAD_AS_IS:
        return Path(photo), alpha
    path = Path(workdir) / f"photo-{Path(photo).stem}.png"
    rgb.save(path, format="PNG")
    _say(f"the photo is in mode {mode}: uploading it as an 8-bit RGB PNG"
         + (" (its alpha channel is put back on the output)" if alpha is not None else ""))
    return path, alpha


_OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def _validate(p, a):
    if a.example and a.photo:
        p.error(f"give a photo or --example {a.example}, not both")
    if not a.example and not a.photo:
        p.error("give the photo to anonymize (or --example group for the example photo)")
    if a.photo:
        photo = Path(a.photo)
        if not photo.is_file():
            p.error(f"the photo {photo} does not exist")
        try:
            from PIL import Image
            with Image.open(photo) as im:
                im.verify()
        except Exception as e:
            p.error(f"{photo} is not an image this tool can read ({e.__class__.__name__}: {e})")
    out = Path(a.output)
    if out.is_dir():
        p.error(f"-o {out} is a folder; give a file name")
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        p.error(f"-o {out}: the output must end in .png, .jpg, .jpeg or .webp")
    if a.skip is not None and not 0.0 < a.skip <= 1.0:
        p.error(f"--skip {a.skip}: must be in (0, 1] (the fraction of the diffusion that is skipped)")
    if a.steps is not None and a.steps < 1:
        p.error(f"--steps {a.steps}: must be at least 1")
    if a.seed is not None and a.seed < 0:
        p.error(f"--seed {a.seed}: must be 0 or more")
    if a.crop_size is not None and (a.crop_size < 64 or a.crop_size % 8):
        p.error(f"--crop-size {a.crop_size}: must be a multiple of 8, at least 64")
    if a.faces is not None and not re.fullmatch(r"all|largest|[1-9]\d*", a.faces.strip()):
        p.error(f"--faces {a.faces!r}: use all, largest, or a number N (the N largest faces)")
    if a.standin_weights and a.server:
        p.error("--standin-weights runs its own local ComfyUI on the stand-in files; leave out --server")
    from .faces import recognizers
    for name, value, bounds in (("--arcface-threshold", a.arcface_threshold, recognizers.ARCFACE_BOUNDS),
                                ("--dlib-threshold", a.dlib_threshold, recognizers.DLIB_BOUNDS)):
        if value is not None and not bounds[0] <= value <= bounds[1]:
            p.error(f"{name} {value:g}: must be within {bounds[0]:g} to {bounds[1]:g}, so that the audit cannot "
                    "be switched off by a threshold (leave the audit out of the workflow to run without it)")
    if a.guidance is not None and a.guidance >= 0:
        if not a.force:
            p.error(f"--guidance {a.guidance:g}: anonymization needs a NEGATIVE guidance (the paper uses -10). "
                    "At 0 the sampler only replays the inversion, which gives the input faces back; above 0 it "
                    "pulls each face TOWARD the person's identity. Either way the output shows who they are. "
                    "Add --force to run it anyway (to study the method, never to anonymize)")
        _say(f"warning: --guidance {a.guidance:g} with --force: the faces are NOT pushed away from their "
             "identities; the output does not anonymize anyone")
    if a.photo and out.suffix.lower() in (".jpg", ".jpeg") and photo_has_alpha(a.photo):
        if not a.force:
            p.error(f"-o {out}: the photo {a.photo} has an alpha channel (transparency) and a JPEG cannot hold "
                    "one; write .png or .webp to keep it, or add --force to drop it")
        _say(f"warning: --force: {out.name} is a JPEG, so the photo's alpha channel (transparency) is dropped")


def _knob_values(a):
    values = {k: getattr(a, k, None) for k in KNOBS if k not in ("image", "checkpoint", "adapter",
                                                                   "filename_prefix")}
    if a.faces is not None:
        faces = a.faces.strip()
        values["faces"] = {"all": 0, "largest": 1}.get(faces) if faces in ("all", "largest") else int(faces)
    values["leave_other_faces"] = "leave visible (marked)" if a.leave_other_faces else None
    values["allow_unanonymized"] = values["check_fails"] = None
    soft = set()
    if a.allow_unanonymized:
        # the audit and the crop check each take their own spelling of "report, don't stop"
        values["allow_unanonymized"], values["check_fails"] = "save marked NOT ANONYMIZED", False
        soft |= {"allow_unanonymized", "check_fails"}
    if a.standin_weights:
        for k, v in STANDIN_DEFAULTS.items():
            if values.get(k) is None:
                values[k] = v
                soft.add(k)
    return values, soft


def _host_args(a):
    args = []
    if not a.gpu:
        try:
            import torch
            cuda = torch.cuda.is_available()
        except ImportError:
            cuda = False
        if not cuda:
            args.append("--cpu")
            if a.standin_weights:
                args += STANDIN_CPU_SERVER_ARGS[a.standin_unet]
    return args + shlex.split(a.server_args or "")


def _save_output(data, out, alpha=None):
    """Write the server's picture `data` to `out`, in the format its suffix names. `alpha` (an "L"
    image: the input photo's alpha channel, which ComfyUI's LoadImage splits off) is put back when
    the picture is the photo's size, has no alpha of its own and the format holds one (PNG, WEBP).
    The file is written beside `out` under a temporary name and renamed: it is complete or absent."""
    import io
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = _OUTPUT_FORMATS[out.suffix.lower()]
    part = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            own_alpha = im.has_transparency_data
            if alpha is not None and not own_alpha and fmt != "JPEG":
                if im.size == alpha.size:
                    picture = im.convert("RGB")
                    picture.putalpha(alpha)
                    picture.save(part, format=fmt)
                    os.replace(part, out)
                    return
                _say(f"note: {out.name} is {im.size[0]}x{im.size[1]} but the photo was {alpha.size[0]}x"
                     f"{alpha.size[1]}: its alpha channel is not put back")
            if fmt == "PNG" and im.format == "PNG":
                part.write_bytes(data)
            elif fmt == "JPEG" or not own_alpha:
                im.convert("RGB").save(part, format=fmt)
            else:
                im.convert("RGBA").save(part, format=fmt)
        os.replace(part, out)
    finally:
        if part.exists():
            part.unlink()


def _host_dir(p, a):
    try:
        return default_comfyui_dir(a.comfyui)
    except ValueError as e:
        p.error(str(e))


def run_anonymize(p, a):
    _validate(p, a)
    comfyui_dir = _host_dir(p, a)
    workflow_path = find_workflow(a.workflow)
    graph = load_workflow(workflow_path)

    arch = a.standin_arch
    values, soft = _knob_values(a)
    if a.standin_weights:
        _say(BANNER)
        _say(f"stand-in settings: --steps {values['steps']}, --crop-size {values['crop_size']} (small defaults for a "
             f"CPU where not given: --steps {STANDIN_DEFAULTS['steps']}, --crop-size {STANDIN_DEFAULTS['crop_size']})")
        values["checkpoint"] = a.checkpoint or STANDIN_CHECKPOINT[arch]
        values["adapter"] = STANDIN_ADAPTER[arch]
    else:
        values["checkpoint"] = a.checkpoint
    values["filename_prefix"] = "revpers-cli"
    graph = apply_knobs(graph, values, soft)
    _refuse_weak_settings(graph, workflow_path, a.force)
    in_graph = [graph[n]["inputs"].get("ckpt_name") for n in nodes_of(graph, "CheckpointLoaderSimple")]
    checkpoint = next((c for c in in_graph if isinstance(c, str)), None) or model_registry.DEFAULT_CHECKPOINT
    if not nodes_of(graph, "LoadImage"):
        raise CliError(f"the workflow {workflow_path} has no LoadImage node for the photo", EXIT_USAGE)
    if not nodes_of(graph, OUTPUT_CLASS):
        raise CliError(f"the workflow {workflow_path} has no {OUTPUT_CLASS} node", EXIT_USAGE)
    entries = model_registry.registry(checkpoint)

    models_dir = Path(a.models) if a.models else None
    if a.standin_weights:
        models_dir = Path(a.models or os.environ.get("REVPERS_STANDIN_MODELS") or REPO / ".host" / "standin-models")
        generate_standins(models_dir, arch, comfyui_dir)
    elif not a.server:
        bases = ([models_dir] if models_dir else []) + [comfyui_dir / "models"]
        missing = missing_locally(entries, bases, _extra_model_bases(comfyui_dir))
        if missing:
            raise CliError(model_registry.describe_missing(missing), EXIT_MISSING)

    from .api import ComfyClient, ComfyError, ServerGone
    from .host import ComfyHost, HostError

    host = client = None
    workdir = tempfile.mkdtemp(prefix="revpers-cli-")
    try:
        if a.server:
            url = a.server
        else:
            host = ComfyHost(comfyui_dir, python=a.python, extra_args=_host_args(a), models_dir=models_dir,
                             input_dir=Path(workdir) / "input", output_dir=Path(workdir) / "output",
                             startup_timeout=a.startup_timeout)
            _say(f"starting ComfyUI from {comfyui_dir} {' '.join(host.extra_args)} "
                 f"(log: {host.log_path or 'temporary'})")
            try:
                host.start()
            except (HostError, FileNotFoundError) as e:
                raise CliError(f"could not start ComfyUI: {e}", EXIT_SERVER)
            url = host.url
            _say(f"ComfyUI is up at {url}")
        client = ComfyClient(url)
        try:
            info = client.object_info()
        except Exception as e:
            raise CliError(f"cannot reach a ComfyUI server at {url}: {e}", EXIT_SERVER)
        unknown, missing = check_against_server(graph, info, entries)
        if unknown:
            raise CliError(f"the server at {url} has no node type {', '.join(unknown)}: is the Reverse "
                           "Personalization pack installed in its custom_nodes (and did it load)?", EXIT_SERVER)
        if missing:
            raise CliError(model_registry.describe_missing(missing), EXIT_MISSING)

        if a.example:
            photo, lines = example_photo(a.example, a.standin_weights, workdir)
            _say(*lines)
        else:
            photo = Path(a.photo)
        upload, alpha = _photo_for_upload(photo, workdir)
        name = client.upload_image(upload, name=f"revpers-{uuid.uuid4().hex[:8]}-{upload.name}")
        graph = apply_knobs(graph, {"image": name})
        progress = NodeProgress(graph, enabled=not a.quiet)
        t0 = time.time()
        plan = _guarantee_plan(graph, a)
        if plan is not None:
            # the audit hands its verdicts back instead of stopping: the CLI decides what is written
            graph = apply_knobs(graph, {"allow_unanonymized": "save marked NOT ANONYMIZED"})
            plan.start()
        overrides = {}
        while True:
            result = _run_graph(client, _with_face_guidance(graph, overrides), progress, a, host)
            summary = _audit_summary(result, graph)
            if plan is None or summary is None or summary["passed"]:
                break
            overrides = plan.next(summary["failed_rows"], summary["unfixable"])
            if overrides is None:
                break
            rows = ", ".join(str(r) for r in plan.attempts[-2].failed_rows)
            _say(f"guaranteed mode: face row(s) {rows} still recognizable; sampling only those again "
                 f"(attempt {plan.attempts[-1].number}: face_guidance \"{guarantee.format_face_guidance(overrides)}\", "
                 f"the other faces {plan.base:g}, their pixels unchanged; the inversion is reused)")

        texts = _check_texts(result, graph)
        if texts:
            print("audit:" if nodes_of(graph, CHECK_CLASSES[0]) else "anonymity check:")
            for t in texts:
                print("  " + t.replace("\n", "\n  "))
        elif any(nodes_of(graph, cls) for cls in CHECK_CLASSES):
            print("anonymity check: the check node reported nothing")
        else:
            _say("WARNING: this workflow has no Audit Anonymized Photos (RevPers) nor Anonymity Check "
                 "(RevPers) node: nothing checked that the saved photo is anonymized")
        if plan is not None and len(plan.attempts) > 1:
            print("guaranteed mode, attempts per face:")
            for line in plan.lines():
                print(line)
        failed = (not summary["passed"]) if summary is not None else \
            any("RESULT: FAILED" in t or "at or above the threshold" in t for t in texts)
        if failed and not a.allow_unanonymized:
            raise CliError(_not_anonymized(summary, plan, a.output), EXIT_FAILED)

        save_ids = set(nodes_of(graph, OUTPUT_CLASS))
        images = [img for nid in sorted(save_ids) for img in result.images(nid)]
        if not images:
            raise CliError("the workflow finished without an output image", EXIT_FAILED)
        out = Path(a.output)
        try:  # every picture first: a server that stops now leaves no output at all
            pictures = [client.view(img["filename"], img.get("subfolder", ""), img.get("type", "output"))
                        for img in images]
        except ServerGone as e:
            raise CliError(_server_gone(e, host, a.output), EXIT_SERVER)
        written = []
        for i, data in enumerate(pictures):
            target = out if i == 0 else out.with_name(f"{out.stem}_{i}{out.suffix}")
            _save_output(data, target, alpha)
            written.append(target)
        print(f"wrote {', '.join(str(w) for w in written)} ({time.time() - t0:.1f} s)")
        if a.standin_weights:
            _say(BANNER)
        if failed:
            _say("WARNING: the audit FAILED - a face is still recognizable. The output was written only because "
                 "--allow-unanonymized asked to save it anyway; the audit marks such photos NOT ANONYMIZED. "
                 "Exit code 5.")
            return EXIT_UNANONYMIZED
        return EXIT_OK
    except ServerGone as e:
        raise CliError(_server_gone(e, host, a.output), EXIT_SERVER)
    except ComfyError as e:
        raise CliError(f"the server answered with an error: {e}", EXIT_SERVER)
    finally:
        if client is not None:
            client.close()
        if host is not None:
            host.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _refuse_weak_settings(graph, workflow_path, force):
    """Settings in the workflow that cannot anonymize (guidance 0 or more, identity scale 0) stop the
    run before any work, unless --force."""
    weak = []
    for nid in nodes_of(graph, "RevPersAnonymizedSampler"):
        g = graph[nid]["inputs"].get("guidance")
        if isinstance(g, (int, float)) and g >= 0:
            weak.append(f"node {nid} (Anonymized Sampler) has guidance {g:g}: 0 or more does not push the faces "
                        "away from their identities")
    for nid in nodes_of(graph, "RevPersIdentityConditioning"):
        scale = graph[nid]["inputs"].get("ip_adapter_scale")
        if isinstance(scale, (int, float)) and scale == 0:
            weak.append(f"node {nid} (Identity Conditioning) has ip_adapter_scale 0: the identity branch is empty")
    if not weak:
        return
    if not force:
        raise CliError(f"the workflow {workflow_path} cannot anonymize as set:\n  " + "\n  ".join(weak)
                       + "\nUse a negative guidance (the paper's -10) and a non-zero scale, or add --force to run "
                       "it anyway (to study the method, never to anonymize)", EXIT_USAGE)
    _say(*[f"warning: --force: {w}; the output does not anonymize anyone" for w in weak])


def _guarantee_plan(graph, a):
    """The attempts of guaranteed mode, or None: off (--no-retry), or the workflow has no audit or no
    Anonymized Sampler whose guidance is a number to start from."""
    if a.no_retry or not nodes_of(graph, "RevPersAudit"):
        return None
    samplers = nodes_of(graph, "RevPersAnonymizedSampler")
    bases = {graph[n]["inputs"].get("guidance") for n in samplers}
    if len(bases) != 1 or not isinstance(next(iter(bases)), (int, float)):
        return None
    base = float(next(iter(bases)))
    if base >= 0:
        return None
    try:
        return guarantee.Plan(base, tuple(g for g in a.retry_guidance if g < base))
    except ValueError as e:
        raise CliError(f"--retry-guidance: {e}", EXIT_USAGE)


def _with_face_guidance(graph, overrides):
    if not overrides:
        return graph
    graph = json.loads(json.dumps(graph))
    for nid in nodes_of(graph, "RevPersAnonymizedSampler"):
        graph[nid]["inputs"]["face_guidance"] = guarantee.format_face_guidance(overrides)
    return graph


def _run_graph(client, graph, progress, a, host):
    """Queue the graph and follow it to its end; the run's result (success only)."""
    from .api import PromptRejected, ServerGone
    try:
        prompt_id = client.queue(graph)
        result = client.follow(prompt_id, on_event=progress, timeout=a.timeout)
    except PromptRejected as e:
        raise CliError(f"the server refused the workflow:\n{e}", EXIT_FAILED)
    except KeyboardInterrupt:
        progress.close()
        try:
            client.interrupt()
        except Exception:
            pass
        raise CliError("interrupted; the run was cancelled", EXIT_INTERRUPTED)
    except TimeoutError as e:
        raise CliError(str(e), EXIT_FAILED)
    except ServerGone as e:
        raise CliError(_server_gone(e, host, a.output), EXIT_SERVER)
    finally:
        progress.close()
    if result.status != "success":
        raise CliError(f"the run failed: {result.message or 'no message from the server'}", EXIT_FAILED)
    return result


def _check_texts(result, graph):
    texts = []
    for nid in [nid for cls in CHECK_CLASSES for nid in nodes_of(graph, cls)]:
        for key, value in (result.outputs.get(nid) or {}).items():
            if key != "text":
                continue
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str):
                    texts.append(item)
    for nid in nodes_of(graph, "RevPersAnonymizedSampler"):  # its warning, if any
        texts += [t for t in (result.outputs.get(nid) or {}).get("text", []) if t.startswith("NOT ANONYMIZING")]
    return texts


def _audit_summary(result, graph):
    """The audit node's verdicts as data (merged over its outputs), or None without an audit."""
    summaries = [item for nid in nodes_of(graph, "RevPersAudit")
                 for item in (result.outputs.get(nid) or {}).get("revpers_audit", []) if isinstance(item, dict)]
    if not summaries:
        return None
    return {"passed": all(x["passed"] for x in summaries),
            "failed_rows": sorted({r for x in summaries for r in x.get("failed_rows", [])}),
            "unfixable": [u for x in summaries for u in x.get("unfixable", [])]}


def _not_anonymized(summary, plan, output):
    lines = ["the audit FAILED: a face is still recognizable in the anonymized photo, so nothing was written "
             f"to {output}."]
    if summary is not None:
        for u in summary["unfixable"]:
            lines.append(f"  {u}: not a face Detect and Align anonymized (its detector did not take it for a face, "
                         "or it was covered), so sampling again cannot change it")
        if plan is not None and plan.exhausted_rows:
            lines.append(f"  face row(s) {', '.join(map(str, plan.exhausted_rows))}: still recognizable after the "
                         f"strongest guidance tried ({((plan.base,) + plan.retries)[-1]:g})")
    lines.append("See the audit above. Stronger --retry-guidance values, another --seed or --attribute may help; "
                 "--allow-unanonymized writes the photo marked NOT ANONYMIZED (exit code 5).")
    return "\n".join(lines)


def _server_gone(error, host, output):
    """The message for a server that stopped answering: the client's, then (for the local server this
    command started) how its process ended and its last log lines, and that nothing was written."""
    lines = [str(error)]
    proc = host.process if host is not None else None
    if proc is not None:
        try:
            code = proc.wait(timeout=3)
        except Exception:
            code = proc.poll()
        if code is None:
            lines.append("The local ComfyUI this command started is still running but does not answer.")
        else:
            import signal
            how = f"exit code {code}"
            if code < 0:
                try:
                    how = f"killed by signal {signal.Signals(-code).name}"
                except ValueError:
                    how = f"killed by signal {-code}"
            lines.append(f"The local ComfyUI this command started has ended ({how}); its last log lines:")
            lines += ["  | " + line for line in host.log_tail(12).splitlines()] or ["  | (empty)"]
    lines.append(f"Nothing was written to {output}.")
    return "\n".join(lines)


# --- audit of a set --------------------------------------------------------------------------------

def _buffalo_folder(models):
    base = Path(models)
    for candidate in (base, base / "buffalo_l", base / "models" / "buffalo_l", base / "insightface" / "models" / "buffalo_l"):
        if candidate.is_dir() and list(candidate.glob("*.onnx")):
            return candidate
    raise CliError(f"--models {models}: no buffalo_l folder (with its .onnx files) there, nor under "
                   "insightface/models/buffalo_l", EXIT_USAGE)


def run_audit(p, a):
    from .faces import recognizers, set_audit
    from .photos import read_rgb_float

    for name, value, bounds in (("--arcface-threshold", a.arcface_threshold, recognizers.ARCFACE_BOUNDS),
                                ("--dlib-threshold", a.dlib_threshold, recognizers.DLIB_BOUNDS)):
        if not bounds[0] <= value <= bounds[1]:
            p.error(f"{name} {value:g}: must be within {bounds[0]:g} to {bounds[1]:g}")
    for opt, suffixes in ((a.report, (".csv", ".json")), (a.chart, (".png",))):
        if opt and Path(opt).suffix.lower() not in suffixes:
            p.error(f"{opt}: must end in {' or '.join(suffixes)}")
    if a.no_dlib and not a.models:
        p.error("--no-dlib leaves no recognizer: give --models with a buffalo_l folder for ArcFace")
    try:
        pairs, unmatched = set_audit.photo_pairs(Path(a.originals), Path(a.anonymized))
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE)
    if not pairs:
        raise CliError(f"no photo of {a.anonymized} has a namesake in {a.originals}: the two folders are matched "
                       "by file name (the suffix may differ)", EXIT_USAGE)
    analyser = None
    if a.models:
        from .faces.analysis import load_analyser
        analyser = load_analyser(str(_buffalo_folder(a.models)), provider="CPU", det_size=640)
    try:
        auditor = set_audit.make_offline_auditor(analyser, a.arcface_threshold, a.dlib_threshold, not a.no_dlib)
    except (RuntimeError, ValueError) as e:
        raise CliError(str(e), EXIT_MISSING)
    bar = None
    if not a.quiet:
        from tqdm import tqdm
        bar = tqdm(total=len(pairs), desc="reading photo pairs", unit="pair", file=sys.stderr)

    def on_photo(done, total):
        if bar is not None:
            bar.n = done
            bar.refresh()

    def read(path):
        try:
            return read_rgb_float(path)
        except (OSError, ValueError) as e:
            raise CliError(f"{path}: cannot be read as a photo ({e})", EXIT_FAILED)

    t0 = time.time()
    try:
        result = set_audit.audit_set(auditor, pairs, read, on_photo)
    except ValueError as e:
        raise CliError(str(e), EXIT_USAGE)
    finally:
        if bar is not None:
            bar.close()
    result.unmatched = unmatched
    print(result.text())
    faces = max(len(result.report.faces), 1)
    print(f"({len(pairs)} pairs, {len(result.report.faces)} faces in {time.time() - t0:.1f} s, "
          f"{(time.time() - t0) / faces:.2f} s per face)")
    if a.report:
        set_audit.write_rows(result, Path(a.report))
        print(f"wrote {a.report}")
    if a.chart:
        set_audit.draw_chart(result, Path(a.chart))
        print(f"wrote {a.chart}")
    return EXIT_OK if result.report.passed else EXIT_FAILED


# --- models --------------------------------------------------------------------------------------

def run_models(p, a):
    comfyui_dir = _host_dir(p, a)
    models_dir = Path(a.models or os.environ.get("REVPERS_MODELS") or comfyui_dir / "models")
    entries = model_registry.registry(a.checkpoint)
    if a.only:
        known = {e.name for e in entries} | {e.source.name for e in entries}
        bad = sorted(set(a.only) - known)
        if bad:
            p.error(f"--only {' '.join(bad)}: unknown; choose from {', '.join(sorted(known))}")
        entries = [e for e in entries if e.name in a.only or e.source.name in a.only]
    if a.check:
        missing = model_registry.check(models_dir, entries, verify=True)
        if missing:
            print(model_registry.describe_missing(missing), file=sys.stderr)
            return EXIT_MISSING
        print(f"all {len(entries)} model files are in {models_dir} and match their published sha256")
        return EXIT_OK
    base = a.source_base or os.environ.get("REVPERS_MODEL_SOURCE") or None
    try:
        installed = model_registry.download(models_dir, entries=entries, base_url=base,
                                            progress=not a.quiet, log=lambda s: _say(s))
    except model_registry.DownloadError as e:
        raise CliError(str(e), EXIT_FAILED)
    if not installed:
        print(f"nothing to download: every model file is already in {models_dir}")
    else:
        print(f"installed {len(installed)} file(s) into {models_dir}")
    return EXIT_OK


# --- entry point ---------------------------------------------------------------------------------

def _guidance_list(text):
    """"-12.5,-15" -> (-12.5, -15.0), each a guidance that anonymizes ("" or "none" -> no retries)."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give negative numbers separated by commas, e.g. -12.5,-15")
    try:
        for v in values:
            guarantee.check_face_guidance(v, "a retry guidance")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))
    return values


def build_parser():
    from .faces import recognizers
    p = argparse.ArgumentParser(prog="revpers", description="Reverse Personalization: face anonymization "
                                "by negative identity guidance, run through ComfyUI.",
                                epilog="exit codes: 0 done, 1 the run failed, 2 bad arguments, 3 model files "
                                "missing, 4 no usable server (or it stopped during the run; nothing is written), 5 written although the audit failed (--allow-unanonymized), "
                                "130 interrupted")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    an = sub.add_parser("anonymize", help="anonymize every face in a photo",
                        description="Anonymize every face in a photo with the shipped workflow. Options left "
                        "out keep the workflow's values (the paper's defaults, shown below).")
    an.add_argument("photo", nargs="?", help="the photo (png, jpg, webp...)")
    an.add_argument("--example", choices=sorted(EXAMPLES), help="anonymize an example photo instead: 'group' is "
                    "the group photo that ships with InsightFace (with --standin-weights, marker faces the "
                    "stand-in detector can see are drawn over three of its faces)")
    an.add_argument("-o", "--output", required=True, help="where to write the anonymized photo (.png/.jpg/.webp)")
    an.add_argument("--server", help="URL of a running ComfyUI with the pack (default: start the local one)")
    an.add_argument("--comfyui", help="ComfyUI folder to start (default: $COMFYUI_DIR, or .host/comfyui-$REVPERS_HOST, default 0.3.75)")
    an.add_argument("--models", help="an extra models folder (checkpoints/, ipadapter/, insightface/...) for "
                    "the local server; with --standin-weights, where the stand-ins go")
    an.add_argument("--workflow", help="API-format workflow to run (default: the shipped one)")
    an.add_argument("--guidance", type=float, help="identity guidance scale; negative pushes away (default -10); "
                    "0 or more does not anonymize and is refused without --force")
    an.add_argument("--force", action="store_true", help="run even when a setting defeats the purpose: --guidance "
                    "0 or more (the faces keep or gain their identity), or a .jpg output for a photo with an alpha "
                    "channel (the alpha is dropped)")
    an.add_argument("--skip", type=float, help="fraction of the diffusion skipped by the inversion (default 0.7)")
    an.add_argument("--steps", type=int, help="inversion/sampling steps (default 100)")
    an.add_argument("--seed", type=int, help="seed of the inversion noise (default 0)")
    an.add_argument("--attribute", help="attribute text for the new face, e.g. 'an old man' (default none)")
    an.add_argument("--faces", help="which faces: all, largest, or N for the N largest (default all)")
    an.add_argument("--leave-other-faces", action="store_true", help="with --faces N: leave the faces beyond "
                    "the N largest exactly as they are (outlined, the photo marked and each reported) instead of "
                    "stopping with an error")
    an.add_argument("--min-face-size", type=int, dest="min_face_size", help="faces smaller than this (px) are "
                    "covered with a flat fill instead of anonymized by the model (default 0: every face goes to "
                    "the model)")
    an.add_argument("--allow-unanonymized", action="store_true", help="write the photo even when the audit finds "
                    "a face still recognizable; it is then marked NOT ANONYMIZED (default: fail, write nothing)")
    an.add_argument("--arcface-threshold", type=float, help="the audit's ArcFace cosine similarity at or above which a "
                    f"face counts as still recognizable ({recognizers.ARCFACE_BOUNDS[0]:g} to "
                    f"{recognizers.ARCFACE_BOUNDS[1]:g}; default {recognizers.ARCFACE_DEFAULT:g}; lower is stricter)")
    an.add_argument("--dlib-threshold", type=float, help="the audit's dlib descriptor distance at or below which a "
                    f"face counts as still recognizable ({recognizers.DLIB_BOUNDS[0]:g} to "
                    f"{recognizers.DLIB_BOUNDS[1]:g}; default {recognizers.DLIB_DEFAULT:g}; higher is stricter)")
    an.add_argument("--retry-guidance", type=_guidance_list, default=guarantee.RETRY_GUIDANCE, metavar="G1,G2,...",
                    help="guaranteed mode: faces that fail the audit are sampled again, only those, with these "
                    "stronger guidances in turn (default " + ",".join(f"{g:g}" for g in guarantee.RETRY_GUIDANCE)
                    + "); the other faces stay bit-identical. After the last, the run fails naming the faces")
    an.add_argument("--no-retry", action="store_true", help="no guaranteed mode: a face that fails the audit "
                    "fails the run at once")
    an.add_argument("--crop-size", type=int, dest="crop_size", help="aligned face crop size in px (default 1024)")
    an.add_argument("--checkpoint", help=f"SDXL checkpoint file name in models/checkpoints "
                    f"(default {model_registry.DEFAULT_CHECKPOINT})")
    an.add_argument("--standin-weights", action="store_true", help="installation check: generate random "
                    "stand-in weights and run the same graph on them (output is NOT an anonymization). "
                    f"Defaults then: --steps {STANDIN_DEFAULTS['steps']}, --crop-size {STANDIN_DEFAULTS['crop_size']}"
                    ", and on a CPU a local server with the UNet in bf16 and PyTorch attention (see --standin-unet)")
    an.add_argument("--standin-unet", choices=sorted(STANDIN_CPU_SERVER_ARGS), default="bf16",
                    help="with --standin-weights on a CPU: UNet weights in bf16 (default; the server peaks at ~14 GiB "
                    "for the SDXL stand-in) or fp32 (~20 GiB; faster per step at large sizes)")
    an.add_argument("--standin-arch", choices=("sdxl", "sd15"), default="sdxl",
                    help="architecture of the stand-ins (default sdxl, what the job uses)")
    an.add_argument("--gpu", action="store_true", help="do not pass --cpu to the local server even without CUDA")
    an.add_argument("--server-args", help="more arguments for the local server, e.g. '--bf16-unet'")
    an.add_argument("--python", help="Python to run the local server with (default: this one)")
    an.add_argument("--timeout", type=float, default=24 * 3600.0, help="seconds to wait for the run")
    an.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for the server")
    an.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    mo = sub.add_parser("models", help="download (or check) the real model files",
                        description="Download the model files the job needs from their public sources, "
                        "with progress and sha256 verification; --check only verifies.")
    mo.add_argument("--models", help="models base folder (default: $REVPERS_MODELS, or the ComfyUI's models/)")
    mo.add_argument("--comfyui", help="ComfyUI folder whose models/ to use (default: $COMFYUI_DIR, or .host/comfyui-$REVPERS_HOST, default 0.3.75)")
    mo.add_argument("--check", action="store_true", help="only check: list what is missing, verify sha256")
    mo.add_argument("--only", nargs="+", metavar="NAME", help="only these files (or buffalo_l.zip)")
    mo.add_argument("--checkpoint", help="your own SDXL checkpoint instead of the SDXL base (checked, not downloaded)")
    mo.add_argument("--source-base", help="fetch <URL>/<file name> instead of the public sources (a mirror); "
                    "also $REVPERS_MODEL_SOURCE")
    mo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    au = sub.add_parser("audit", help="audit a folder of anonymized photos against their originals, offline",
                        description="The audit of the saved images over a whole set: the photos of ANONYMIZED "
                        "matched to those of ORIGINALS by file name; every original face against what is at its "
                        "place and against every face of the set, by dlib (and ArcFace with --models). Prints the "
                        "re-identification figures; writes one row per face and recognizer (--report .csv/.json) "
                        "and a chart (--chart .png). Exit code 0 when no face is recognizable, 1 otherwise.")
    au.add_argument("originals", help="folder of the original photos")
    au.add_argument("anonymized", help="folder of the anonymized photos (same file names)")
    au.add_argument("--report", help="write the per-face rows here (.csv or .json)")
    au.add_argument("--chart", help="write a PNG chart of the measures here")
    au.add_argument("--models", help="a models folder holding insightface/models/buffalo_l (or the buffalo_l folder "
                    "itself): adds ArcFace and its detector; without it dlib alone judges")
    au.add_argument("--no-dlib", action="store_true", help="leave dlib out (then --models is needed)")
    au.add_argument("--arcface-threshold", type=float, default=recognizers.ARCFACE_DEFAULT,
                    help=f"same person at or above this cosine similarity (default {recognizers.ARCFACE_DEFAULT:g})")
    au.add_argument("--dlib-threshold", type=float, default=recognizers.DLIB_DEFAULT,
                    help=f"same person at or below this distance (default {recognizers.DLIB_DEFAULT:g})")
    au.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.commands = {"anonymize": an, "models": mo, "audit": au}
    return p


def attach_option_values(argv, options=("--server-args",)):
    """``--server-args --bf16-unet`` → ``--server-args=--bf16-unet``: argparse takes a lone value that
    starts with '-' for another option and stops with "expected one argument"."""
    out, args = [], iter(argv)
    for arg in args:
        if arg in options:
            value = next(args, None)
            if value is not None:
                out.append(f"{arg}={value}")
                continue
        out.append(arg)
    return out


def main(argv=None):
    p = build_parser()
    a = p.parse_args(attach_option_values(sys.argv[1:] if argv is None else list(argv)))
    try:
        if a.command == "anonymize":
            return run_anonymize(p.commands["anonymize"], a)
        if a.command == "audit":
            return run_audit(p.commands["audit"], a)
        return run_models(p.commands["models"], a)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
