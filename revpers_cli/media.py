"""What goes to the server and what comes back, on this side: photos (read the way the workflows see
them, written in the format the output names, alpha put back) and clips (decoded and encoded with
PyAV, the library current ComfyUI itself uses for video).

A clip travels to the server as one animated PNG without durations (every frame exactly; ComfyUI's
Load Image reads every frame into one IMAGE batch, through Pillow or PyAV) and comes back the same
way from the pack's save node. Not as an animated WebP: its encoder folds a frame identical to the
one before into it, so a still scene would come back shorter. Only then is it encoded, once: H.264 in the clip's own container, every frame
at its original timestamp (frame count, order and timing in = out), the audio streams copied packet
for packet (re-encoded to AAC only where the container cannot hold them as they are).

Nothing of the input's file but its pixels travels: a photo goes to the server as a PNG made here from
its pixels (no EXIF, GPS, XMP, profile or comment of the original), under a name of random letters; the
outputs are made here from the server's pixels alone (revpers_core.file_privacy), and a written clip
carries no tag of its source (title, location, creation time, device, encoder: no metadata is copied)
and only the streams it must: the video we encode, and the audio when the user keeps it (`--audio keep`;
dropped by default: a voice identifies a person as surely as a face, and nothing here anonymizes one).

A clip the tool cannot keep whole is refused with the reason (`MediaError`): a file that is not a
video, no video stream, no frame, a stream that stops before its declared frame count (truncated or
damaged), or a variable frame rate (the frames' timestamps are kept, but the shipped workflows and
most players assume one rate: convert such clips first).
"""
import io
import os
import re
import uuid
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from revpers_core import file_privacy

from .photos import UPLOAD_AS_IS, read_photo

__all__ = ["MediaError", "PHOTO_SUFFIXES", "CLIP_SUFFIXES", "OUTPUT_PHOTO_FORMATS", "OUTPUT_CLIP_SUFFIXES",
           "AUDIO_CHOICES", "AUDIO_DEFAULT", "kind_of", "photo_for_upload", "save_picture", "Clip", "read_clip",
           "clip_for_upload", "frames_of", "write_clip", "audio_choice", "audio_line"]

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
CLIP_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v", ".avi", ".webm", ".mpg", ".mpeg")
OUTPUT_PHOTO_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
OUTPUT_CLIP_SUFFIXES = (".mp4", ".mov", ".mkv")  # containers that hold H.264
# Frame intervals may differ by this much (in seconds) from the clip's typical interval and still count
# as one frame rate: container time bases round each timestamp to a tick.
RATE_TOLERANCE = 2e-3
CRF_DEFAULT = 17  # x264 quality of the encoded clip (0 lossless RGB, 17 visually lossless, 23 x264's default)
# What becomes of a clip's audio. Dropped unless the user keeps it: the tool anonymizes faces, not voices,
# and a voice in the output would undo the anonymization for anyone who knows it.
AUDIO_CHOICES = ("drop", "keep")
AUDIO_DEFAULT = "drop"


class MediaError(ValueError):
    """A photo or clip that cannot be used as it is; the message says why and what to do."""


def kind_of(path):
    """"photo", "clip" or None, by the file's suffix."""
    suffix = Path(path).suffix.lower()
    return "photo" if suffix in PHOTO_SUFFIXES else "clip" if suffix in CLIP_SUFFIXES else None


def _temporary_beside(out):
    return out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.part")


# --- photos --------------------------------------------------------------------------------------

def photo_for_upload(photo, workdir, say=lambda line: None):
    """(the file to upload, the photo's alpha or None). The file is made here from the photo's pixels
    alone, as ComfyUI's LoadImage would read them (EXIF orientation applied; `read_photo`): an 8-bit RGB
    PNG, none of the original's metadata, a random name; the alpha stays on this side and is put back on
    the output. An animated photo goes up as a lossless animated WebP of its frames (every frame of the
    first one's size, as LoadImage takes them), without alpha handling."""
    try:
        rgb, alpha, mode, frames = read_photo(photo)
    except (OSError, ValueError) as e:
        raise MediaError(f"{photo} cannot be read as a photo ({e.__class__.__name__}: {e})") from e
    if frames > 1:
        path = Path(workdir) / f"photo-{uuid.uuid4().hex}.webp"
        path.write_bytes(file_privacy.animation_bytes(_frames_as_loaded(photo), fps=10, lossless=True,
                                                      quality=0, method=0))
        return path, None
    path = Path(workdir) / f"photo-{uuid.uuid4().hex}.png"
    path.write_bytes(file_privacy.picture_bytes(np.asarray(rgb), "PNG", compress_level=1))
    if mode not in UPLOAD_AS_IS:
        say(f"the photo is in mode {mode}: uploading it as an 8-bit RGB PNG"
            + (" (its alpha channel is put back on the output)" if alpha is not None else ""))
    return path, alpha


def _frames_as_loaded(photo):
    """The frames of an animated photo as RGB arrays, the way LoadImage takes them: each EXIF-transposed,
    converted to RGB, those of another size than the first left out."""
    from PIL import Image, ImageOps, ImageSequence
    frames = []
    with Image.open(photo) as im:
        for frame in ImageSequence.Iterator(im):
            array = np.asarray(ImageOps.exif_transpose(frame).convert("RGB"))
            if not frames or array.shape == frames[0].shape:
                frames.append(array)
    return frames


def save_picture(data, out, alpha=None, say=lambda line: None):
    """Write the server's picture `data` to `out`, in the format its suffix names. `alpha` (an "L"
    image: the input photo's alpha channel, which ComfyUI's LoadImage splits off) is put back when
    the picture is the photo's size, has no alpha of its own and the format holds one (PNG, WEBP).
    The file is made from the pixels alone (revpers_core.file_privacy): whatever the server's file
    carried (ComfyUI's Save Image writes the prompt, which names the upload) stays out, and a file that
    would still carry anything besides its pixels is not written. It is written beside `out` under a
    temporary name and renamed: it is complete or absent."""
    from PIL import Image

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = OUTPUT_PHOTO_FORMATS[out.suffix.lower()]
    part = _temporary_beside(out)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            own_alpha = im.has_transparency_data
            if alpha is not None and not own_alpha and fmt != "JPEG" and im.size != alpha.size:
                say(f"note: {out.name} is {im.size[0]}x{im.size[1]} but the photo was {alpha.size[0]}x"
                    f"{alpha.size[1]}: its alpha channel is not put back")
            if alpha is not None and not own_alpha and fmt != "JPEG" and im.size == alpha.size:
                picture = im.convert("RGB")
                picture.putalpha(alpha)
            elif fmt == "JPEG" or not own_alpha:
                picture = im.convert("RGB")
            else:
                picture = im.convert("RGBA")
            encoded = file_privacy.picture_bytes(np.asarray(picture), fmt)
        extra = file_privacy.extra_data(encoded)
        if extra:
            raise MediaError(f"{out} would carry more than its pixels ({', '.join(extra)}); nothing was written")
        part.write_bytes(encoded)
        os.replace(part, out)
    finally:
        if part.exists():
            part.unlink()


# --- clips ---------------------------------------------------------------------------------------

@dataclass
class Clip:
    """A decoded clip: its frames (RGB uint8, H×W×3) with their timestamps, and what its encoding needs."""

    path: Path
    frames: list
    pts: list
    time_base: Fraction
    rate: Fraction
    audio: list = field(default_factory=list)  # descriptions of its audio streams ("aac 44100 Hz stereo")

    @property
    def size(self):
        height, width = self.frames[0].shape[:2]
        return width, height

    @property
    def fps(self):
        return float(self.rate)

    def describe(self):
        width, height = self.size
        audio = ", ".join(self.audio) if self.audio else "no audio"
        return f"{len(self.frames)} frames, {width}x{height}, {self.rate} fps, {audio}"


def _open(path):
    import av
    try:
        return av.open(str(path))
    except av.EOFError as e:
        raise MediaError(f"{path} ends before its first frame (End of file): it is empty or cut short") from e
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise MediaError(f"{path} cannot be decoded as a video ({_ffmpeg_message(e)})") from e


def _ffmpeg_message(error):
    """FFmpeg's own words, without the errno number and the file name PyAV adds."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(error))
    return text.split(": '", 1)[0] if ": '" in text else text


def _video_stream(container, path):
    if not container.streams:
        raise MediaError(f"{path} holds no video or audio stream at all: an empty recording?")
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        raise MediaError(f"{path} has no video stream (streams: {kinds}): nothing to anonymize")
    return container.streams.video[0]


def _decode(container, stream, path):
    import av
    frames, pts = [], []
    try:
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            pts.append(frame.pts)
    except av.FFmpegError as e:
        raise MediaError(f"{path}: decoding stopped after {len(frames)} frame(s) ({_ffmpeg_message(e)}): the file "
                         "is truncated or damaged") from e
    declared = int(stream.frames or 0)
    if not frames:
        raise MediaError(f"{path} has a video stream but no frame could be decoded from it")
    if declared and len(frames) < declared:
        raise MediaError(f"{path}: only {len(frames)} of its {declared} frames could be decoded: the file is "
                         "truncated or damaged (an incomplete download or copy?)")
    if len({f.shape for f in frames}) > 1:
        raise MediaError(f"{path}: the frame size changes within the clip; the workflow needs one size")
    return frames, pts


def _timing(stream, pts, path):
    """(the clip's one frame rate, each frame's timestamp); MediaError for a variable rate. Frames without
    usable timestamps (None, or not increasing, as AVI's often are) are placed at the declared rate, the
    only timing such containers have."""
    time_base = stream.time_base or Fraction(1, 1)
    declared = stream.average_rate or stream.guessed_rate or stream.base_rate
    if any(p is None for p in pts) or any(b <= a for a, b in zip(pts, pts[1:])):
        if not declared:
            raise MediaError(f"{path}: its frames carry no usable timestamps and it declares no frame rate")
        return Fraction(declared), [round(i / (declared * time_base)) for i in range(len(pts))]
    intervals = np.diff(np.array(pts, dtype=np.float64)) * float(time_base)
    if len(intervals) == 0:
        return Fraction(declared or 25), pts
    typical = float(np.median(intervals))
    if np.abs(intervals - typical).max() > max(RATE_TOLERANCE, float(time_base)):
        raise MediaError(
            f"{path} has a variable frame rate (frame intervals from {intervals.min() * 1000:.1f} to "
            f"{intervals.max() * 1000:.1f} ms): convert it to a constant rate first, e.g. "
            f"ffmpeg -i {Path(path).name} -fps_mode cfr -r {round(1 / typical)} constant.mp4")
    return Fraction(declared or round(1 / typical)), pts


def _describe_audio(stream):
    ctx = stream.codec_context
    layout = getattr(getattr(ctx, "layout", None), "name", "")
    return " ".join(x for x in (ctx.name, f"{ctx.sample_rate} Hz" if ctx.sample_rate else "", layout) if x)


def read_clip(path):
    """Decode every frame of a clip; MediaError when it cannot be kept whole (see the module's notes)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"the clip {path} does not exist")
    with _open(path) as container:
        stream = _video_stream(container, path)
        frames, pts = _decode(container, stream, path)
        rate, pts = _timing(stream, pts, path)
        audio = [_describe_audio(s) for s in container.streams.audio]
        return Clip(path, frames, pts, stream.time_base or Fraction(1, 1), rate, audio)


def clip_for_upload(clip, workdir):
    """The clip's frames as one animated PNG (exact pixels, every frame: file_privacy.frames_bytes) in
    `workdir`: what Load Image reads into one IMAGE batch."""
    path = Path(workdir) / f"clip-{uuid.uuid4().hex}.png"
    path.write_bytes(file_privacy.frames_bytes(clip.frames))
    return path


def frames_of(data):
    """Every frame of a picture the server returned (a still, an animated PNG or WebP), RGB
    uint8."""
    from PIL import Image, ImageSequence
    with Image.open(io.BytesIO(data)) as im:
        return [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(im)]


def _video_output_stream(out, clip, crf):
    """H.264: at crf 0 lossless in RGB (libx264rgb: the frames exactly as the workflow made them, for archives;
    fewer players read it), else in YUV 4:2:0 (4:4:4 where a side is odd), what every player reads."""
    width, height = clip.size
    lossless = int(crf) == 0
    stream = out.add_stream("libx264rgb" if lossless else "libx264", rate=clip.rate)
    stream.width, stream.height = width, height
    stream.pix_fmt = "rgb24" if lossless else "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    stream.time_base = stream.codec_context.time_base = clip.time_base  # every frame keeps its own timestamp
    stream.options = {"crf": str(int(crf))}
    return stream


def _encode_video(stream, clip, frames):
    import av
    packets = []
    for array, pts in zip(frames, clip.pts):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
        frame.pts, frame.time_base = pts, clip.time_base
        packets += stream.encode(frame)
    return packets + list(stream.encode(None))


def _audio_packets(source, out, transcode):
    """The audio packets of `source`, for the output container: copied as they are, or (transcode) as AAC."""
    import av
    streams = list(source.streams.audio)
    if not streams:
        return []
    if not transcode:
        targets = {s.index: out.add_stream_from_template(s) for s in streams}
        packets = []
        for packet in source.demux(*streams):
            if packet.dts is not None:
                packet.stream = targets[packet.stream.index]
                packets.append(packet)
        return packets
    packets = []
    for s in streams:
        target = out.add_stream("aac", rate=s.codec_context.sample_rate or 48000)
        resampler = av.AudioResampler(format="fltp", layout=s.codec_context.layout or "stereo",
                                      rate=target.rate)
        for frame in source.decode(s):
            for converted in resampler.resample(frame):
                packets += target.encode(converted)
        packets += target.encode(None)
    return packets


def _mux_clip(target, clip, frames, crf, transcode_audio, audio=True):
    """The output container: our video stream, the source's audio when `audio`, and no tag of the source
    (a new container copies no metadata; the muxer's own encoder tags are left out too)."""
    import av
    with av.open(str(clip.path)) as source, av.open(str(target), "w", format=_container_format(target),
                                                    container_options={"fflags": "+bitexact"}) as out:
        video = _video_output_stream(out, clip, crf)
        audio = _audio_packets(source, out, transcode_audio) if audio else []
        packets = _encode_video(video, clip, frames) + audio
        packets.sort(key=lambda p: float(p.dts * p.time_base) if p.dts is not None else float("-inf"))
        for packet in packets:
            out.mux(packet)


def _container_format(path):
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}[Path(path).suffix.lower()]


def audio_choice(clip, audio):
    """What becomes of the clip's audio in the output: "kept", "dropped", or "none" (the clip has none)."""
    if not clip.audio:
        return "none"
    return "kept" if audio == "keep" else "dropped"


def audio_line(clip, audio, label):
    """The line said for each clip: what its audio becomes, and that voices are not anonymized."""
    choice = audio_choice(clip, audio)
    if choice == "none":
        return f"audio of {label}: none in the clip"
    streams = ", ".join(clip.audio)
    if choice == "kept":
        return (f"audio of {label}: KEPT ({streams}, copied as it is, --audio keep). WARNING: voices are not "
                "anonymized; anyone who knows a voice in it can recognize the person")
    return (f"audio of {label}: dropped ({streams}; the default: voices are not anonymized, and a voice identifies "
            "a person as a face does). --audio keep copies it into the output")


def write_clip(clip, frames, out, crf=CRF_DEFAULT, say=lambda line: None, audio=False):
    """Encode `frames` (one per frame of `clip`, same order) into `out` with the clip's timestamps, and its
    audio when `audio`; no tag of the source (title, location, creation time, device...) goes with them.
    Written under a temporary name and renamed: the file is complete or absent."""
    import av
    out = Path(out)
    if len(frames) != len(clip.frames):
        raise MediaError(f"{clip.path}: the workflow returned {len(frames)} frames for the clip's {len(clip.frames)}; "
                         "nothing was written (an animated WebP folds a frame identical to the one before into it: "
                         "save the frames with Save Anonymized Images, format animated png)")
    if frames and frames[0].shape != clip.frames[0].shape:
        raise MediaError(f"{clip.path}: the workflow returned frames of {frames[0].shape[1]}x{frames[0].shape[0]} for "
                         f"a clip of {clip.size[0]}x{clip.size[1]}; nothing was written")
    out.parent.mkdir(parents=True, exist_ok=True)
    part = _temporary_beside(out).with_suffix(out.suffix)
    try:
        try:
            _mux_clip(part, clip, frames, crf, transcode_audio=False, audio=audio)
        except ValueError as e:  # PyAV's FFmpegError is one; so is "format does not support codec"
            if not (clip.audio and audio):
                raise
            say(f"note: the audio of {clip.path.name} ({', '.join(clip.audio)}) cannot go into a {out.suffix} file "
                f"as it is ({_ffmpeg_message(e)}); it is re-encoded as AAC")
            _mux_clip(part, clip, frames, crf, transcode_audio=True, audio=audio)
        os.replace(part, out)
    except (av.FFmpegError, ValueError) as e:
        if isinstance(e, MediaError):
            raise
        raise MediaError(f"encoding {out} failed ({_ffmpeg_message(e)}); nothing was written") from e
    finally:
        if part.exists():
            part.unlink()
