"""The real model files the main job needs, where ComfyUI keeps them, and where to get them.

    missing = check(models_dir)           # [] when everything is in place
    missing = check([dir_a, dir_b], extra_dirs=yaml_folders)   # the same over several places
    download(models_dir)                  # fetch what is missing, with progress and sha256 checks

Folders follow ComfyUI's layout under a models base folder (ComfyUI/models, or any folder named in
an extra_model_paths.yaml): `checkpoints/`, `ipadapter/`, `insightface/models/buffalo_l/`.

The sha256 values are the published files' own (Hugging Face LFS object ids, and the InsightFace
v0.7 release asset as pinned by many independent projects); a value that could not be confirmed is
None and is then not checked. A download goes to `<name>.part` next to its target, resumes from
there when the server honours Range requests, is verified, and only then renamed into place; a
checksum mismatch deletes the download and raises `ChecksumError`.
"""
import hashlib
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Source", "ModelFile", "MissingFile", "ChecksumError", "DownloadError", "REGISTRY",
           "DEFAULT_CHECKPOINT", "registry", "check", "download", "sha256_of", "describe_missing"]


@dataclass(frozen=True)
class Source:
    """One thing to fetch: a file, or an archive that is unpacked into `unpack_to`."""
    name: str  # file name at the source
    url: str
    sha256: str = None
    size: int = None
    unpack_to: str = None  # for archives: folder under the models base that receives its files

    def url_from(self, base_url=None):
        """The URL to fetch, or `<base_url>/<name>` when a mirror (or test server) is given."""
        return f"{base_url.rstrip('/')}/{self.name}" if base_url else self.url


@dataclass(frozen=True)
class ModelFile:
    """A file the job reads: its name, its folder under the models base, and where it comes from."""
    name: str
    folder: str
    source: Source
    role: str = ""
    sha256: str = None  # of the file itself (for a file fetched directly, the source's)
    size: int = None
    group: str = ""  # files that come together (the buffalo_l pack)

    def path(self, models_dir):
        return Path(models_dir) / self.folder / self.name

    def places(self, models_dirs, extra_dirs=None):
        """Where ComfyUI would look for this file: its folder under each models base folder, then the
        folders an extra_model_paths.yaml gives for its top folder ({"insightface": [dirs], ...})."""
        top, _, rest = self.folder.partition("/")
        out = [self.path(base) for base in models_dirs]
        out += [Path(d) / rest / self.name if rest else Path(d) / self.name for d in (extra_dirs or {}).get(top, [])]
        return out

    @property
    def where_from(self):
        """The source, as a message words it."""
        unpack = self.source.unpack_to
        return self.source.url + (f" (unpacked into {unpack}/)" if unpack else "")

    def problem(self, path, verify=False):
        """Why the file at `path` is not this one (a stand-in; wrong size; with `verify`, wrong sha256), or
        None."""
        from .standins.store import standin_evidence
        evidence = standin_evidence(path)
        if evidence:
            return (f"a STAND-IN with random weights, made for --standin-weights ({evidence}), NOT the real "
                    "model")
        size = path.stat().st_size
        if self.size is not None and size != self.size:
            return f"{size} bytes, expected {self.size}"
        if verify and self.sha256 and sha256_of(path) != self.sha256:
            return "sha256 differs from the published file"
        return None


@dataclass
class MissingFile:
    name: str
    folder: Path
    source: str
    role: str = ""
    reason: str = "missing"

    def __str__(self):
        return f"{self.name} ({self.reason}) in {self.folder} — {self.role}; get it from {self.source}"


class DownloadError(RuntimeError):
    pass


class ChecksumError(DownloadError):
    pass


DEFAULT_CHECKPOINT = "sd_xl_base_1.0.safetensors"

_SDXL = Source(
    "sd_xl_base_1.0.safetensors",
    "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
    sha256="31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b", size=6_938_078_334)
_FACEID_SDXL = Source(
    "ip-adapter-faceid_sdxl.bin",
    "https://huggingface.co/h94/IP-Adapter-FaceID/resolve/main/ip-adapter-faceid_sdxl.bin",
    sha256="f455fed24e207c878ec1e0466b34a969d37bab857c5faa4e8d259a0b4ff63d7e", size=None)
_BUFFALO_L = Source(
    "buffalo_l.zip", "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
    sha256="80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f", size=288_621_354,
    unpack_to="insightface/models/buffalo_l")
_BUFFALO_DIR = "insightface/models/buffalo_l"

REGISTRY = (
    ModelFile(_SDXL.name, "checkpoints", _SDXL, "the SDXL base checkpoint the paper uses",
              _SDXL.sha256, _SDXL.size),
    ModelFile(_FACEID_SDXL.name, "ipadapter", _FACEID_SDXL,
              "IP-Adapter-FaceID for SDXL (identity projection, identity attention and its LoRA)",
              _FACEID_SDXL.sha256, _FACEID_SDXL.size),
    ModelFile("det_10g.onnx", _BUFFALO_DIR, _BUFFALO_L, "InsightFace buffalo_l face detector (SCRFD)",
              "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91", 16_923_827, "buffalo_l"),
    ModelFile("w600k_r50.onnx", _BUFFALO_DIR, _BUFFALO_L, "InsightFace buffalo_l ArcFace recognizer",
              "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43", 174_383_860, "buffalo_l"),
    ModelFile("1k3d68.onnx", _BUFFALO_DIR, _BUFFALO_L, "InsightFace buffalo_l 3D landmarks",
              "df5c06b8a0c12e422b2ed8947b8869faa4105387f199c477af038aa01f9a45cc", None, "buffalo_l"),
    ModelFile("2d106det.onnx", _BUFFALO_DIR, _BUFFALO_L, "InsightFace buffalo_l 2D landmarks",
              "f001b856447c413801ef5c42091ed0cd516fcd21f2d6b79635b1e733a7109dbf", None, "buffalo_l"),
    ModelFile("genderage.onnx", _BUFFALO_DIR, _BUFFALO_L, "InsightFace buffalo_l gender/age",
              "4fde69b1c810857b88c64a335084f1c3fe8f01246c9a191b48c7bb756d6652fb", 1_322_532, "buffalo_l"),
)


def registry(checkpoint=None, entries=REGISTRY):
    """The files the job needs. With `checkpoint` other than the default, that file (the user's own,
    in checkpoints/) replaces the SDXL base entry; it has no known source or checksum."""
    out = list(entries)
    if checkpoint and checkpoint != DEFAULT_CHECKPOINT:
        out = [e for e in out if e.folder != "checkpoints"]
        own = Source(checkpoint, "your own SDXL checkpoint (any SDXL model works; the paper uses "
                     f"{_SDXL.url})")
        out.insert(0, ModelFile(checkpoint, "checkpoints", own, "the SDXL checkpoint given with --checkpoint"))
    return out


def sha256_of(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check(models_dirs, entries=None, verify=False, extra_dirs=None):
    """The files that are not in place, as MissingFile records (empty list when all are).

    `models_dirs`: a models base folder, or several (ComfyUI's own and another); `extra_dirs`: the folders
    of an extra_model_paths.yaml by top folder ({"checkpoints": [dirs], ...}). A file is in place when a
    copy in any of them has the right size (where known) and, with `verify`, the right sha256. One of the
    wrong size is reported where it was found; a file found nowhere, in the first models folder."""
    if isinstance(models_dirs, (str, os.PathLike)):
        models_dirs = [models_dirs]
    if not models_dirs:
        raise ValueError("check needs at least one models folder")
    entries = REGISTRY if entries is None else entries
    missing = []
    for e in entries:
        places = e.places(models_dirs, extra_dirs)
        found = [p for p in places if p.is_file()]
        problems = []
        for path in found:
            problems.append((path, e.problem(path, verify)))
            if problems[-1][1] is None:
                break
        if problems and problems[-1][1] is None:
            continue
        path, reason = problems[0] if problems else (places[0], "missing")
        missing.append(MissingFile(e.name, path.parent, e.where_from, e.role, reason))
    return missing


def describe_missing(missing):
    """A message naming every missing file, its folder and its source."""
    lines = [f"{len(missing)} model file(s) missing:"]
    for m in missing:
        lines.append(f"  - {m.name}{'' if m.reason == 'missing' else f' ({m.reason})'}")
        lines.append(f"      folder: {m.folder}")
        lines.append(f"      source: {m.source}")
    lines.append("Download them with `revpers models` (or put them there yourself), or run with "
                 "--standin-weights to check the installation with random stand-in weights.")
    return "\n".join(lines)


# --- downloading ---------------------------------------------------------------------------------

def _progress(total, desc, enabled):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not enabled, file=sys.stderr, leave=True)


def fetch(source, target, base_url=None, progress=True, timeout=60, chunk=1 << 20):
    """Download `source` to `target` via `target.part` (resumed when the server allows), check its
    size and sha256, then rename. A mismatch deletes the download and raises ChecksumError."""
    import requests

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    url = source.url_from(base_url)
    h = hashlib.sha256()
    have = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        r = requests.get(url, stream=True, timeout=(10, timeout), headers=headers, allow_redirects=True)
    except requests.RequestException as e:
        raise DownloadError(f"could not reach {url}: {e}") from e
    with r:
        if r.status_code == 206 and have:
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(chunk), b""):
                    h.update(block)
            mode = "ab"
        elif r.status_code == 200:
            have, mode = 0, "wb"
        elif r.status_code == 416 and have:  # the part is already whole
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(chunk), b""):
                    h.update(block)
            mode = None
        else:
            raise DownloadError(f"downloading {url} failed: HTTP {r.status_code} {r.reason}")
        if mode is not None:
            length = r.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else source.size
            with open(part, mode) as f, _progress(total, source.name, progress) as bar:
                bar.update(have)
                for block in r.iter_content(chunk_size=chunk):
                    f.write(block)
                    h.update(block)
                    bar.update(len(block))
    size = part.stat().st_size
    digest = h.hexdigest()
    problem = None
    if source.size is not None and size != source.size:
        problem = f"it has {size} bytes, the published file has {source.size}"
    elif source.sha256 and digest != source.sha256:
        problem = f"its sha256 is {digest}, the published file's is {source.sha256}"
    if problem:
        part.unlink()
        raise ChecksumError(f"the download of {source.name} from {url} is not the published file: {problem}. "
                            "It was deleted; nothing was installed. Try again, or fetch the file from its "
                            f"original source ({source.url}).")
    os.replace(part, target)
    return target


def _unpack(archive, models_dir, source, members):
    """Put the archive's files (any folder inside flattened) into `source.unpack_to`, each by a
    rename from a temporary folder beside it; checks the members' own sha256 where known."""
    dest = Path(models_dir) / source.unpack_to
    dest.mkdir(parents=True, exist_ok=True)
    expected = {m.name: m for m in members}
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".unpack-") as tmp, zipfile.ZipFile(archive) as zf:
        extracted = []
        for info in zf.infolist():
            name = Path(info.filename).name
            if info.is_dir() or not name or name.startswith("."):
                continue
            out = Path(tmp) / name
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            m = expected.get(name)
            if m is not None and m.sha256 and sha256_of(out) != m.sha256:
                raise ChecksumError(f"{name} inside {source.name} does not match its published sha256; "
                                    "nothing was installed")
            extracted.append(out)
        absent = sorted(set(expected) - {p.name for p in extracted})
        if absent:
            raise DownloadError(f"{source.name} does not contain {', '.join(absent)}; nothing was installed")
        for out in extracted:
            os.replace(out, dest / out.name)
    return dest


def download(models_dir, only=None, base_url=None, entries=None, progress=True, log=print):
    """Fetch every missing file (or the ones named in `only`, by file or source name) into
    `models_dir`. `base_url` fetches `<base_url>/<source name>` instead of the public URL (a mirror).
    Returns the paths installed. Raises DownloadError / ChecksumError with a readable message."""
    entries = list(REGISTRY if entries is None else entries)
    if only:
        wanted = set(only)
        unknown = wanted - {e.name for e in entries} - {e.source.name for e in entries}
        if unknown:
            raise ValueError(f"unknown model file(s): {', '.join(sorted(unknown))}; known: "
                             f"{', '.join(sorted({e.name for e in entries} | {e.source.name for e in entries}))}")
        entries = [e for e in entries if e.name in wanted or e.source.name in wanted]
    todo = [e for e in entries if check(models_dir, [e])]
    installed, done = [], set()
    for e in todo:
        if e.source in done:
            continue
        done.add(e.source)
        if not e.source.url.startswith(("http://", "https://")) and not base_url:
            raise DownloadError(f"{e.name} has no public source: {e.source.url}")
        if e.source.unpack_to:
            members = [m for m in entries if m.source == e.source] or [e]
            archive = Path(models_dir) / Path(e.source.unpack_to).parent / e.source.name
            log(f"downloading {e.source.name} -> {Path(models_dir) / e.source.unpack_to}/")
            fetch(e.source, archive, base_url, progress)
            try:
                dest = _unpack(archive, models_dir, e.source, members)
            finally:
                archive.unlink(missing_ok=True)
            installed += [dest / m.name for m in members]
        else:
            target = e.path(models_dir)
            log(f"downloading {e.source.name} -> {target}")
            fetch(e.source, target, base_url, progress)
            installed.append(target)
    return installed
