"""Clips made with PyAV for the tests: frames (RGB uint8) with a generated tone, in the containers and
codecs people send (H.264 + AAC in MP4), lossless (RGB H.264) where a test compares pixels, and the
broken ones a folder of real files holds (truncated, audio only, no frame, variable frame rate)."""
from fractions import Fraction

import av
import numpy as np

TONE_RATE = 16000  # Hz of the generated audio


def tone(seconds, freq=440.0):
    t = np.arange(int(round(TONE_RATE * seconds))) / TONE_RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _add_audio(out, samples):
    stream = out.add_stream("aac", rate=TONE_RATE)
    stream.layout = "mono"
    size = stream.codec_context.frame_size or 1024
    packets = []
    for start in range(0, len(samples), size):
        frame = av.AudioFrame.from_ndarray(samples[None, start:start + size], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = TONE_RATE, start
        packets += stream.encode(frame)
    return packets + list(stream.encode(None))


def write_clip(path, frames, fps=12, audio=True, lossless=True, pts=None, faststart=False):
    """Frames -> an MP4/MKV/MOV clip at `fps` (or at the given timestamps, in 1/1000 s: a variable rate),
    with a tone as long as the clip when `audio`. `lossless`: RGB H.264 at crf 0 (decodes to exactly these
    frames), else YUV 4:2:0 at crf 18."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        video = out.add_stream("libx264rgb" if lossless else "libx264", rate=fps)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "rgb24" if lossless else "yuv420p"
        video.options = {"crf": "0" if lossless else "18"}
        if pts is not None:
            video.codec_context.time_base = Fraction(1, 1000)
        packets = []
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            else:
                frame.pts = i
            packets += video.encode(frame)
        packets += video.encode(None)
        if audio:
            packets += _add_audio(out, tone(len(frames) / fps))
        packets.sort(key=lambda p: float(p.dts * p.time_base))
        for p in packets:
            out.mux(p)
    return path


def write_audio_only(path, seconds=1.0):
    with av.open(str(path), "w") as out:
        for p in _add_audio(out, tone(seconds)):
            out.mux(p)
    return path


def write_no_frames(path, size=(64, 48)):
    """An MP4 with a video stream that holds no frame."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=12)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        out.start_encoding()
        for p in video.encode(None):
            out.mux(p)
    return path


def truncate(path, target, fraction=0.5):
    data = open(path, "rb").read()
    open(target, "wb").write(data[:int(len(data) * fraction)])
    return target


def read_clip(path):
    """(frames RGB uint8, video pts, video time base, average rate, [(codec, packet bytes, pts)] of the audio)."""
    with av.open(str(path)) as c:
        video = c.streams.video[0]
        frames, pts = [], []
        for frame in c.decode(video):
            frames.append(frame.to_ndarray(format="rgb24"))
            pts.append(frame.pts)
        info = (video.time_base, video.average_rate)
    audio = []
    with av.open(str(path)) as c:
        if c.streams.audio:
            stream = c.streams.audio[0]
            audio = [(stream.codec_context.name, bytes(p), p.pts) for p in c.demux(stream) if p.size]
    return frames, pts, info[0], info[1], audio
