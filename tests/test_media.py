"""Clips on this side of the server (revpers_cli.media, PyAV): what comes in is decoded whole or refused
with its reason; what goes out keeps frame count, order, timing and the audio stream."""
import numpy as np
import pytest

from clips import read_clip, truncate, write_audio_only, write_clip, write_no_frames
from revpers_cli import media


def frames(n=8, size=(96, 64), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(n)]


def test_a_clip_is_decoded_exactly_and_travels_as_one_page_per_frame(tmp_path):
    original = frames()
    original[3] = original[2].copy()  # a still moment: an animated WebP would fold these two frames together
    clip = media.read_clip(write_clip(tmp_path / "in.mp4", original, fps=12))
    assert len(clip.frames) == 8 and all(np.array_equal(a, b) for a, b in zip(clip.frames, original))
    assert clip.rate == 12 and clip.audio == ["aac 16000 Hz mono"]
    assert clip.describe() == "8 frames, 96x64, 12 fps, aac 16000 Hz mono"
    upload = media.clip_for_upload(clip, tmp_path)
    back = media.frames_of(upload.read_bytes())
    assert len(back) == 8 and all(np.array_equal(a, b) for a, b in zip(back, original))


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov"])
def test_the_written_clip_keeps_frames_timing_and_audio(tmp_path, suffix):
    source = write_clip(tmp_path / f"in{suffix}", frames(), fps=12)
    clip = media.read_clip(source)
    edited = [255 - f for f in clip.frames]
    out = tmp_path / f"out{suffix}"
    media.write_clip(clip, edited, out, crf=0, audio=True)
    got, pts, time_base, rate, audio = read_clip(out)
    want_frames, want_pts, want_base, want_rate, want_audio = read_clip(source)
    assert len(got) == 8 and all(np.array_equal(a, b) for a, b in zip(got, edited))  # crf 0: exact RGB
    assert rate == want_rate == 12
    seconds = [float(p * time_base) for p in pts]
    want_seconds = [float(p * want_base) for p in want_pts]
    assert np.allclose(np.diff(seconds), np.diff(want_seconds), atol=1e-3)  # every frame at its time
    assert [(c, b) for c, b, _ in audio] == [(c, b) for c, b, _ in want_audio] and audio  # packet for packet
    assert not list(tmp_path.glob(".*part*"))


def test_default_quality_is_yuv_and_close(tmp_path):
    clip = media.read_clip(write_clip(tmp_path / "in.mp4", frames(4, seed=1), audio=False))
    smooth = [np.full_like(f, 40 * k) for k, f in enumerate(clip.frames)]
    media.write_clip(clip, smooth, tmp_path / "out.mp4")
    got, *_ , audio = read_clip(tmp_path / "out.mp4")
    assert audio == [] and len(got) == 4  # a clip without audio works
    assert max(np.abs(a.astype(int) - b).max() for a, b in zip(got, smooth)) <= 3


@pytest.mark.parametrize("make, reason", [
    (lambda p: truncate(write_clip(p / "c.mp4", frames()), p / "cut.mp4"), "cannot be decoded as a video"),
    (lambda p: truncate(write_clip(p / "c.mp4", frames(24), faststart=True), p / "cut.mp4", 0.6),
     "the file is truncated or damaged"),
    (lambda p: write_audio_only(p / "sound.mp4"), r"has no video stream \(streams: audio\): nothing to anonymize"),
    (lambda p: write_no_frames(p / "empty.mp4"), "holds no video or audio stream at all: an empty recording"),
    (lambda p: write_no_frames(p / "empty.mkv"), "ends before its first frame"),
    (lambda p: truncate(write_clip(p / "c.mp4", frames(24), faststart=True), p / "cut.mp4", 0.02),
     r"decoding stopped after 0 frame\(s\)"),
    (lambda p: write_clip(p / "vfr.mkv", frames(6), pts=[0, 40, 80, 200, 240, 400]),
     r"has a variable frame rate \(frame intervals from 40.0 to 160.0 ms\): convert it to a constant rate first"),
    (lambda p: p / "text.mp4" if (p / "text.mp4").write_text("not a clip") else None, "cannot be decoded as a video"),
])
def test_clips_that_cannot_be_kept_whole_are_refused_with_the_reason(tmp_path, make, reason):
    with pytest.raises(media.MediaError, match=reason) as e:
        media.read_clip(make(tmp_path))
    assert "Errno" not in str(e.value)


def test_the_written_clip_must_have_every_frame(tmp_path):
    clip = media.read_clip(write_clip(tmp_path / "in.mp4", frames(5)))
    with pytest.raises(media.MediaError, match="returned 4 frames for the clip's 5; nothing was written"):
        media.write_clip(clip, clip.frames[:4], tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


def test_audio_the_container_cannot_hold_is_reencoded(tmp_path):
    """mu-law audio (an AVI's, say) cannot go into MP4 as it is: it is re-encoded as AAC, and said."""
    import av
    source = tmp_path / "in.avi"
    with av.open(str(source), "w") as out:
        video = out.add_stream("libx264", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("pcm_mulaw", rate=8000)
        audio.layout = "mono"
        packets = []
        for i in range(5):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 30 * i, np.uint8), format="rgb24")
            f.pts = i
            packets += video.encode(f)
        packets += video.encode(None)
        samples = (np.sin(np.arange(4000) / 5) * 8000).astype(np.int16)
        a = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
        a.sample_rate, a.pts = 8000, 0
        packets += audio.encode(a) + list(audio.encode(None))
        for p in sorted(packets, key=lambda p: float(p.dts * p.time_base)):
            out.mux(p)
    clip = media.read_clip(source)
    said = []
    media.write_clip(clip, clip.frames, tmp_path / "out.mp4", say=said.append, audio=True)
    got, _, _, _, audio = read_clip(tmp_path / "out.mp4")
    assert len(got) == 5 and audio and audio[0][0] == "aac"
    assert "re-encoded as AAC" in said[0]
