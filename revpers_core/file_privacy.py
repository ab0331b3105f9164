"""What a picture the pack writes may carry: its pixels, and nothing else unless the user asks.

A photo's file says more than its pixels: EXIF (camera, owner, time, GPS position, maker notes), XMP,
IPTC, comments, an ICC profile whose description may name a device, text chunks. ComfyUI's own save
nodes add the prompt and the workflow, which name the uploaded file and every setting. An anonymized
face in a file that still says who and where is not anonymized, so every picture the pack writes (the
Save node on the server, the command line on this side) is made here, from the pixels alone: a fresh
image with no info, encoded with pixel parameters only. Embedding ComfyUI's prompt and workflow (so the
file can be dropped back onto the canvas) is an explicit choice (`texts`).

`extra_data` is the check: it walks a PNG's chunks, a WebP's RIFF chunks or a JPEG's segments and names
every one that carries something besides the picture, so a writer can refuse to leave such a file and a
test can read what is really in the bytes.
"""
import io
import json
import struct

import numpy as np

__all__ = ["FORMATS", "to_pixels", "picture_bytes", "animation_bytes", "frames_bytes", "extra_data", "comfy_texts",
           "IF_AUDIT_FAILED", "SAVE_MARKED", "SAVE_NOTHING", "should_save", "METADATA", "NO_METADATA",
           "WITH_WORKFLOW"]

FORMATS = ("PNG", "JPEG", "WEBP")

# The Save node's choices (its widgets), in order; the first is the default.
METADATA = ("none (only the pixels)", "prompt and workflow (they name the uploaded file and every setting)")
NO_METADATA, WITH_WORKFLOW = METADATA
IF_AUDIT_FAILED = ("save them marked NOT ANONYMIZED", "save nothing")
SAVE_MARKED, SAVE_NOTHING = IF_AUDIT_FAILED

# Chunks and segments that hold the picture itself (or how frames follow each other), per format.
_PNG_PICTURE = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"acTL", b"fcTL", b"fdAT"}
_WEBP_PICTURE = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF"}
_VP8X_METADATA_FLAGS = {0x20: "ICC profile", 0x08: "EXIF", 0x04: "XMP"}


def to_pixels(image):
    """A float picture in 0..1 (H×W×C) as uint8, the way ComfyUI's own save nodes quantize (×255,
    clipped, truncated), so a pixel the workflow left untouched keeps its value."""
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array
    return np.clip(255.0 * array, 0, 255).astype(np.uint8)


def _fresh(pixels):
    """A PIL image made from the pixels alone: no info dict, no EXIF, no profile travels with it."""
    from PIL import Image
    array = np.ascontiguousarray(to_pixels(pixels))
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[2] not in (3, 4):
        raise ValueError(f"a picture has 1, 3 or 4 channels, not {array.shape[2]}")
    return Image.fromarray(array)


def _webp_exif(texts):
    """ComfyUI's way of carrying the prompt and workflow in a WebP: EXIF strings "key:json" in the Model
    tag (prompt) and the Make tag downwards (the rest), which its front end reads back."""
    from PIL import Image
    exif = Image.Exif()
    tag = 0x010F
    for key, value in texts.items():
        if key == "prompt":
            exif[0x0110] = f"prompt:{value}"
        else:
            exif[tag] = f"{key}:{value}"
            tag -= 1
    return exif.tobytes()


def picture_bytes(pixels, fmt="PNG", quality=None, lossless=False, texts=None, compress_level=4):
    """One picture file: PNG, JPEG or WEBP from `pixels` (H×W×C, uint8 or float in 0..1) and nothing
    else. `texts` ({key: text}, only by the user's explicit choice) go into PNG text chunks or WebP
    EXIF; a JPEG takes none. `quality` None leaves the encoder's default; `lossless` is WebP's."""
    fmt = fmt.upper()
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    picture = _fresh(pixels)
    options = {}
    if fmt == "PNG":
        options["compress_level"] = compress_level
        if texts:
            from PIL.PngImagePlugin import PngInfo
            info = PngInfo()
            for key, value in texts.items():
                info.add_text(key, value)
            options["pnginfo"] = info
    elif fmt == "JPEG":
        picture = picture.convert("RGB") if picture.mode not in ("RGB", "L") else picture
        if quality is not None:
            options["quality"] = int(quality)
    else:
        options["lossless"] = bool(lossless)
        if quality is not None:
            options["quality"] = int(quality)
        if texts:
            options["exif"] = _webp_exif(texts)
    out = io.BytesIO()
    picture.save(out, format=fmt, **options)
    return out.getvalue()


def animation_bytes(frames, fps, lossless=True, quality=80, method=4, texts=None):
    """One animated WebP of `frames` (each H×W×C) at `fps`, nothing else unless `texts` (see above)."""
    if not len(frames):
        raise ValueError("an animation needs at least one frame")
    pictures = [_fresh(f) for f in frames]
    options = dict(save_all=True, append_images=pictures[1:], duration=max(1, int(1000.0 / float(fps))),
                   loop=0, lossless=bool(lossless), quality=int(quality), method=int(method))
    if texts:
        options["exif"] = _webp_exif(texts)
    out = io.BytesIO()
    pictures[0].save(out, format="WEBP", **options)
    return out.getvalue()


def frames_bytes(frames):
    """Every frame (each H×W×C) as one frame of an animated PNG without frame durations: exact pixels and
    exactly as many frames as given, which both Pillow and FFmpeg (current ComfyUI's Load Image tries PyAV
    first) read back. An animated WebP cannot promise that, nor an APNG with durations: their encoders fold
    a frame identical to the one before into it (a still scene would come back shorter)."""
    if not len(frames):
        raise ValueError("an animation needs at least one frame")
    pictures = [_fresh(f) for f in frames]
    out = io.BytesIO()
    pictures[0].save(out, format="PNG", save_all=True, append_images=pictures[1:], compress_level=4)
    return out.getvalue()


def comfy_texts(prompt=None, extra_pnginfo=None):
    """ComfyUI's metadata of a run as {key: JSON text}: the prompt, and each entry of extra_pnginfo
    (the front end's workflow). What `picture_bytes(texts=...)` embeds when the user asks for it."""
    texts = {}
    if prompt is not None:
        texts["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        texts[key] = json.dumps(value)
    return texts


def should_save(passed, if_audit_failed):
    """Whether the Save node writes images the audit judged: always when it passed (or there was no
    audit: `passed` None); after a failed audit only when the user chose to save them marked."""
    if if_audit_failed not in IF_AUDIT_FAILED:
        raise ValueError(f"if_audit_failed {if_audit_failed!r}: use one of {IF_AUDIT_FAILED}")
    return passed is None or bool(passed) or if_audit_failed == SAVE_MARKED


# --- reading what a file carries -----------------------------------------------------------------

def _png_extra(data):
    found, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind not in _PNG_PICTURE:
            label = kind.decode("latin-1")
            if kind in (b"tEXt", b"zTXt", b"iTXt"):
                key = body.split(b"\0", 1)[0].decode("latin-1")
                label += f" {key!r}"
            found.append(f"PNG chunk {label}")
        pos += 12 + length
        if kind == b"IEND":
            break
    return found


def _webp_extra(data):
    found, pos = [], 12
    while pos + 8 <= len(data):
        kind, length = struct.unpack("<4sI", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind not in _WEBP_PICTURE:
            found.append(f"WebP chunk {kind.decode('latin-1').strip()}")
        elif kind == b"VP8X" and body:
            found += [f"WebP VP8X flag {name}" for bit, name in _VP8X_METADATA_FLAGS.items() if body[0] & bit]
        pos += 8 + length + (length & 1)
    return found


def _jpeg_extra(data):
    found, pos = [], 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker == 0xD9:
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        body = data[pos + 4:pos + 2 + length]
        if marker == 0xFE:
            found.append("JPEG comment (COM)")
        elif 0xE0 <= marker <= 0xEF and not (marker == 0xE0 and body.startswith(b"JFIF\0")):
            name = body.split(b"\0", 1)[0][:20].decode("latin-1")
            found.append(f"JPEG APP{marker - 0xE0} {name!r}")
        pos += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker (not FF00, not RSTn)
            while pos + 1 < len(data) and (data[pos] != 0xFF or data[pos + 1] == 0x00
                                           or 0xD0 <= data[pos + 1] <= 0xD7):
                pos += 1
    return found


# the tags a TIFF page needs to hold its picture; any other (artist, date, software, GPS, EXIF, XMP...) is extra
_TIFF_PICTURE = {256, 257, 258, 259, 262, 273, 277, 278, 279, 282, 283, 284, 296, 317, 338, 339}


def _tiff_extra(data):
    from PIL import Image, ImageSequence
    found = []
    with Image.open(io.BytesIO(data)) as im:
        for page, frame in enumerate(ImageSequence.Iterator(im)):
            found += [f"TIFF page {page} tag {tag}" for tag in sorted(set(frame.tag_v2) - _TIFF_PICTURE)]
    return found


def extra_data(data):
    """What a PNG, WebP, JPEG or TIFF file carries besides its picture, one label per chunk, segment or tag
    ("PNG chunk tEXt 'prompt'", "JPEG APP1 'Exif'", "WebP chunk EXIF", "TIFF page 0 tag 315"); [] for a file
    with only pixels. ValueError for another format."""
    data = bytes(data)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_extra(data)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_extra(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_extra(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_extra(data)
    raise ValueError("not a PNG, WebP, JPEG or TIFF file")
