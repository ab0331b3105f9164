"""Nothing around the pixels gives the person away: what the pack and the CLI write, read as bytes.

- Photos named after people (a JPEG with EXIF, GPS, maker note, XMP, ICC profile and a comment; a PNG
  with text chunks, EXIF and XMP; a WebP with EXIF, XMP and a profile) and a clip whose container and
  streams carry a title, an artist, a location, a creation time and handler names, through the shipped
  workflows on a real server given by URL (SD1.5 stand-ins): the outputs, named by number, hold none of
  the names, tags or GPS values in their bytes or decoded metadata, nor anything besides their pixels;
  the uploads and the saved files on the server neither; the manifest names the inputs (it is the
  operator's record) but nothing read from inside them; the clip's audio is dropped, and said.
- What is left on that server is listed exactly, in the CLI's output and in the manifest, and is what
  its folders hold.
- A server the CLI starts keeps nothing of the job: its input, output and temp folders are gone when
  the command ends, whether the run passed, failed, was interrupted with Ctrl-C or killed with SIGKILL.
- The pieces: revpers_core.file_privacy's reading of PNG, WebP and JPEG files, the CLI's side (upload
  files, written photos, written clips), the pack's Save node (no metadata unless switched on, nothing
  saved of a failed audit unless chosen).
"""
import inspect
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageCms
from PIL.PngImagePlugin import PngInfo
from PIL.TiffImagePlugin import IFDRational

from clips import write_clip
from harness import TEST_MODELS
from paths import ARTIFACTS, HOST, REPO
from revpers_cli import batch, cli, media, workflow
from revpers_cli.host import ComfyHost
from revpers_core import file_privacy
from standin_models import marker_picture

FAST = ["--steps", "2", "--crop-size", "64"]
ON_STANDINS = ["--standin-weights", "--standin-arch", "sd15"]  # what the servers given by URL hold
SERVER_ARGS = ["--cpu", "--use-pytorch-cross-attention", "--disable-auto-launch"]
SIZE = (240, 160)

# What the inputs say about the people, inside their files and in their names.
NAMES = ["Anna_Kowalska", "Kowalska", "passport", "Jan_Nowak", "Nowak", "Ewa_Wisniewska", "Wisniewska",
         "Piotr_Zielinski", "Zielinski", "interview"]
EXIF_TEXT = {"make": "Kowalska-Cam", "model": "AK-Phone 9", "artist": "Anna Kowalska",
             "makernote": "KOWALSKA-MAKERNOTE serial 123456", "xmp": "Anna Kowalska (XMP)",
             "comment": "Anna Kowalska passport scan", "png_author": "Jan Nowak", "png_comment": "Jan at home"}
# GPS 52 13' 47.13" N, 21 0' 44.03" E (irreducible rationals, so they are stored exactly as written)
GPS = {2: ((52, 1), (13, 1), (4713, 100)), 4: ((21, 1), (0, 1), (4403, 100))}
CLIP_TAGS = {"title": "Piotr Zielinski interview", "artist": "Piotr Zielinski", "comment": "Krakow, Rynek 1",
             "location": "+50.0614+019.9366/", "creation_time": "2026-05-01T10:00:00.000000Z"}
STREAM_TAGS = {"handler_name": "Piotr's phone", "title": "Piotr's voice"}
ALLOWED_INFO = {"jfif", "jfif_version", "jfif_unit", "jfif_density", "loop", "background", "duration",
                "timestamp", "bbox", "blend", "disposal"}  # the last three: an APNG frame's own fields


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- inputs named after people, with everything a camera and a phone put in a file ------------------

def _exif():
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x013B] = EXIF_TEXT["make"], EXIF_TEXT["model"], EXIF_TEXT["artist"]
    gps = exif.get_ifd(0x8825)
    gps[1], gps[3] = "N", "E"
    for tag, values in GPS.items():
        gps[tag] = tuple(IFDRational(n, d) for n, d in values)
    exif.get_ifd(0x8769)[0x927C] = EXIF_TEXT["makernote"].encode()
    return exif.tobytes()


def _xmp():
    return (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><dc:creator>{EXIF_TEXT["xmp"]}</dc:creator>'
            '</rdf:RDF></x:xmpmeta>').encode()


def _icc():
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def gps_patterns():
    """The GPS rationals as a TIFF/EXIF block stores them, in both byte orders."""
    return [struct.pack(order + "II", n, d) for values in GPS.values() for n, d in values if n > 100
            for order in "<>"]


def person_photo(path, seed=0):
    """A marker-face photo (what the stand-in detector sees) saved with the metadata its format holds."""
    rgb = marker_picture(*SIZE, [((120, 80), 30, 11 + seed)], seed=seed)
    im = Image.fromarray(rgb)
    suffix = path.suffix.lower()
    if suffix == ".jpg":
        im.save(path, format="JPEG", quality=97, exif=_exif(), icc_profile=_icc(), xmp=_xmp(),
                comment=EXIF_TEXT["comment"].encode())
    elif suffix == ".png":
        info = PngInfo()
        info.add_text("Author", EXIF_TEXT["png_author"])
        info.add_text("Comment", EXIF_TEXT["png_comment"])
        info.add_itxt("XML:com.adobe.xmp", _xmp().decode())
        im.save(path, format="PNG", pnginfo=info, exif=_exif(), icc_profile=_icc())
    else:
        im.save(path, format="WEBP", lossless=True, exif=_exif(), icc_profile=_icc(), xmp=_xmp())
    data = path.read_bytes()
    assert file_privacy.extra_data(data)  # the input carries all that
    if suffix != ".png":  # (PNG's iCCP is compressed; its text chunks are not)
        assert any(p in data for p in gps_patterns()), "the GPS values must be in the input as the test scans"
    return path


def person_clip(path, frames=6):
    """A clip (marker faces, a tone) whose container and streams carry tags, as a phone's would."""
    plain = write_clip(path.with_name("plain.mp4"),
                       [marker_picture(*SIZE, [((60 + 20 * t, 80), 28, 11)], seed=t) for t in range(frames)], fps=12)
    with av.open(str(plain)) as source, av.open(str(path), "w", options={"movflags": "use_metadata_tags"}) as out:
        out.metadata.update(CLIP_TAGS)
        streams = {}
        for s in source.streams:
            streams[s.index] = out.add_stream_from_template(s)
            streams[s.index].metadata.update(STREAM_TAGS)
        for packet in source.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    plain.unlink()
    data = path.read_bytes()
    assert all(v.encode() in data for v in list(CLIP_TAGS.values()) + list(STREAM_TAGS.values()))
    return path


def people_folder(folder):
    folder.mkdir(parents=True)
    person_photo(folder / "Anna_Kowalska_passport.jpg", 0)
    person_photo(folder / "Ewa_Wisniewska_visa.webp", 1)
    person_photo(folder / "Jan_Nowak_id.png", 2)
    person_clip(folder / "Piotr_Zielinski_interview.mp4")
    return folder


def leaks(data, extra=()):
    """What of the people's names, the tags and the GPS values is in `data` (bytes)."""
    texts = NAMES + list(EXIF_TEXT.values()) + list(CLIP_TAGS.values()) + list(STREAM_TAGS.values()) + list(extra)
    found = [t for t in texts if t.encode().lower() in data.lower()]
    return found + [f"GPS {p.hex()}" for p in gps_patterns() if p in data]


def picture_metadata(data):
    """What Pillow decodes besides the pixels: info keys beyond the format's own, and EXIF tags."""
    with Image.open(io.BytesIO(data)) as im:
        if im.format == "TIFF":  # its tags are the file's structure; what identifies sits in the EXIF/GPS IFDs
            exif = im.getexif()
            return (sorted(set(im.info) - ALLOWED_INFO - {"compression", "dpi", "resolution"})
                    + [f"EXIF {t}" for ifd in (0x8769, 0x8825) for t in exif.get_ifd(ifd)])
        return sorted(set(im.info) - ALLOWED_INFO) + [f"EXIF {t}" for t in im.getexif()]


def clip_metadata(path):
    """The container's and streams' tags, and the kinds of stream."""
    with av.open(str(path)) as c:
        return dict(c.metadata), [(s.type, dict(s.metadata)) for s in c.streams]


def assert_clean_picture(data, what, extra=()):
    assert leaks(data, extra) == [], what
    assert file_privacy.extra_data(data) == [], what
    assert picture_metadata(data) == [], what


def assert_clean_clip(path, extra=()):
    assert leaks(path.read_bytes(), extra) == [], path
    tags, streams = clip_metadata(path)
    told = " ".join(str(v) for v in list(tags.values()) + [v for _, m in streams for v in m.values()])
    assert leaks(told.encode(), extra) == [], (tags, streams)
    assert "creation_time" not in tags and "location" not in tags and "title" not in tags, tags


# --- the pieces, without a server ------------------------------------------------------------------

def test_what_a_picture_file_carries_is_read_from_its_bytes_and_ours_carry_only_pixels(tmp_path):
    for name in ("Anna_Kowalska_passport.jpg", "Jan_Nowak_id.png", "Ewa_Wisniewska_visa.webp"):
        data = person_photo(tmp_path / name).read_bytes()
        found = file_privacy.extra_data(data)
        kinds = {"jpg": ["APP1 'Exif'", "APP1 'http://ns.adobe.com/", "APP2 'ICC_PROFILE'", "comment"],
                 "png": ["iCCP", "tEXt 'Author'", "tEXt 'Comment'", "iTXt 'XML:com.adobe.xmp'", "eXIf"],
                 "webp": ["chunk ICCP", "chunk EXIF", "chunk XMP"]}[name.rsplit(".", 1)[1]]
        assert all(any(k in f for f in found) for k in kinds), (name, found)
        with Image.open(tmp_path / name) as im:
            pixels = np.asarray(im.convert("RGB"))
        for fmt in file_privacy.FORMATS:
            clean = file_privacy.picture_bytes(pixels, fmt, lossless=True)
            assert_clean_picture(clean, (name, fmt))
    # ComfyUI's metadata only by choice, and then said by the reader
    with_prompt = file_privacy.picture_bytes(pixels, "PNG", texts=file_privacy.comfy_texts({"10": {"inputs": {
        "image": "revpers-0123.png"}}}, {"workflow": {"nodes": []}}))
    assert file_privacy.extra_data(with_prompt) == ["PNG chunk tEXt 'prompt'", "PNG chunk tEXt 'workflow'"]
    animated = file_privacy.animation_bytes([pixels, pixels[::-1]], 8, texts={"prompt": "{}"})
    assert file_privacy.extra_data(animated) == ["WebP VP8X flag EXIF", "WebP chunk EXIF"]
    assert file_privacy.extra_data(file_privacy.animation_bytes([pixels, pixels[::-1]], 8)) == []
    pages = file_privacy.frames_bytes([pixels, pixels, pixels[::-1]])
    assert file_privacy.extra_data(pages) == [] and len(media.frames_of(pages)) == 3  # identical frames kept
    tagged = io.BytesIO()
    Image.fromarray(pixels).save(tagged, "TIFF", tiffinfo={315: "Anna Kowalska", 306: "2026:01:02 10:00:00"})
    assert file_privacy.extra_data(tagged.getvalue()) == ["TIFF page 0 tag 306", "TIFF page 0 tag 315"]
    with pytest.raises(ValueError, match="not a PNG, WebP, JPEG or TIFF"):
        file_privacy.extra_data(b"GIF89a")


def test_the_cli_uploads_and_writes_pixels_only_under_names_of_its_own(tmp_path):
    """The upload file: a PNG of the photo's pixels (as LoadImage reads them), a random name, nothing else;
    the written photo: whatever the server's file carried (Save Image's prompt, naming the upload), only
    the pixels come out, in each output format."""
    from revpers_cli.photos import read_photo
    work = tmp_path / "work"
    work.mkdir()
    for name in ("Anna_Kowalska_passport.jpg", "Jan_Nowak_id.png", "Ewa_Wisniewska_visa.webp"):
        source = person_photo(tmp_path / name)
        upload, alpha = media.photo_for_upload(source, work)
        assert re.fullmatch(r"photo-[0-9a-f]{32}\.png", upload.name) and alpha is None
        assert_clean_picture(upload.read_bytes(), upload)
        with Image.open(upload) as im:
            assert np.array_equal(np.asarray(im), np.asarray(read_photo(source)[0]))
        upload.unlink()
    # what ComfyUI's Save Image gives back: the prompt and workflow in text chunks, naming the upload
    pixels = marker_picture(*SIZE, [((120, 80), 30, 11)])
    info = PngInfo()
    info.add_text("prompt", json.dumps({"10": {"class_type": "LoadImage",
                                               "inputs": {"image": "revpers-1234-Anna_Kowalska_passport.png"}}}))
    info.add_text("workflow", json.dumps({"nodes": [{"widgets_values": ["Anna_Kowalska_passport.png"]}]}))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", pnginfo=info)
    server_file = buf.getvalue()
    assert "Anna_Kowalska" in leaks(server_file)
    for suffix in (".png", ".jpg", ".webp"):
        out = tmp_path / f"out{suffix}"
        media.save_picture(server_file, out)
        assert_clean_picture(out.read_bytes(), out, extra=["revpers-1234"])
        if suffix == ".png":
            with Image.open(out) as im:
                assert np.array_equal(np.asarray(im), pixels)  # the same pixels, nothing else


def test_a_written_clip_carries_no_tag_of_its_source_and_its_audio_only_when_kept(tmp_path):
    source = person_clip(tmp_path / "Piotr_Zielinski_interview.mp4")
    clip = media.read_clip(source)
    assert media.audio_choice(clip, "drop") == "dropped" and media.audio_choice(clip, "keep") == "kept"
    assert "voices are not anonymized" in media.audio_line(clip, "drop", "x")
    assert "WARNING: voices are not anonymized" in media.audio_line(clip, "keep", "x")
    upload = media.clip_for_upload(clip, tmp_path)
    assert re.fullmatch(r"clip-[0-9a-f]{32}\.png", upload.name)
    assert_clean_picture(upload.read_bytes(), upload)
    for suffix in media.OUTPUT_CLIP_SUFFIXES:
        for keep in (False, True):
            out = tmp_path / f"out-{keep}{suffix}"
            media.write_clip(clip, clip.frames, out, crf=0, audio=keep)
            assert_clean_clip(out)
            kinds = [kind for kind, _ in clip_metadata(out)[1]]
            assert kinds == (["video", "audio"] if keep else ["video"]), (out, kinds)


def test_outputs_can_be_named_by_number_with_the_mapping_only_in_the_entries(tmp_path):
    folder = tmp_path / "people"
    (folder / "Kowalska family").mkdir(parents=True)
    for name in ("Anna_Kowalska_passport.jpg", "Kowalska family/Jan.png", "notes.txt", "Piotr.mov"):
        (folder / name).write_bytes(b"")
    mirrored = batch.plan_entries([folder], tmp_path / "out")
    assert [e.key for e in mirrored] == ["Anna_Kowalska_passport.jpg", "Piotr.mov", "notes.txt",
                                         "Kowalska family/Jan.png"]
    numbered = batch.plan_entries([folder], tmp_path / "out", numbered=True)
    assert [(e.key, e.source.name) for e in numbered] == [
        ("00001.jpg", "Anna_Kowalska_passport.jpg"), ("00002.mov", "Piotr.mov"), ("notes.txt", "notes.txt"),
        ("00003.png", "Jan.png")]
    assert all(e.output.parent == tmp_path / "out" for e in numbered)


# --- the pack's Save node, in this process -----------------------------------------------------------

class _Report:
    def __init__(self, passed):
        self.passed = passed


def test_the_save_node_writes_pixels_only_and_nothing_of_a_failed_audit_unless_chosen(comfy_inprocess, tmp_path):
    import folder_paths
    import torch

    node = comfy_inprocess.nodes.BY_ID["RevPersSave"]
    schema = node.define_schema()
    assert schema.display_name == "Save Anonymized Images (RevPers)" and node.CATEGORY == "Reverse Personalization"
    assert node.OUTPUT_NODE is True and len(node.DESCRIPTION) > 100
    for group in (g for kind, g in node.INPUT_TYPES().items() if kind != "hidden"):
        for name, (kind, *opts) in group.items():
            assert opts and opts[0].get("tooltip"), f"{name} has no tooltip"
    saved_before = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    try:
        images = torch.from_numpy(np.stack([marker_picture(*SIZE, [((120, 80), 30, 11)], seed=s)
                                            for s in (0, 1)]).astype(np.float32) / 255)
        args = dict(filename_prefix="revpers/anon", metadata=file_privacy.NO_METADATA, lossless=True, quality=90,
                    fps=8.0)
        out = node.execute(images, format="png", if_audit_failed=file_privacy.SAVE_MARKED, **args)
        files = [tmp_path / r["subfolder"] / r["filename"] for r in out.ui["images"]]
        assert [f.name for f in files] == ["anon_00001_.png", "anon_00002_.png"]
        for f, want in zip(files, images):
            assert_clean_picture(f.read_bytes(), f)
            with Image.open(f) as im:  # the pixels exactly as ComfyUI's Save Image quantizes them
                assert np.array_equal(np.asarray(im), np.clip(255.0 * want.numpy(), 0, 255).astype(np.uint8))
        out = node.execute(images, format="animated webp", if_audit_failed=file_privacy.SAVE_MARKED, **args)
        (record,) = out.ui["images"]
        assert out.ui["animated"] == [True]
        data = (tmp_path / record["subfolder"] / record["filename"]).read_bytes()
        assert_clean_picture(data, record) and len(media.frames_of(data)) == 2
        # a failed audit: nothing written when the user chose so (the CLI always does), said in the ui
        before = sorted(p.name for p in (tmp_path / "revpers").iterdir())
        out = node.execute(images, format="png", if_audit_failed=file_privacy.SAVE_NOTHING, report=_Report(False),
                           **args)
        assert out.ui["images"] == [] and out.ui["revpers_save"][0]["held_back"] == 2
        assert sorted(p.name for p in (tmp_path / "revpers").iterdir()) == before
        out = node.execute(images, format="png", if_audit_failed=file_privacy.SAVE_NOTHING, report=_Report(True),
                           **args)
        assert len(out.ui["images"]) == 2
        # the prompt and workflow only when switched on
        prompt = {"10": {"class_type": "LoadImage", "inputs": {"image": "revpers-abcdef.png"}}}
        hidden = {"PROMPT": prompt, "EXTRA_PNGINFO": {"workflow": {"nodes": []}}}
        # as the host's executor hands hidden inputs over: the dict itself (0.3.75) or inside its v3 data (0.33)
        takes = next(iter(inspect.signature(node.PREPARE_CLASS_CLONE).parameters))
        clone = node.PREPARE_CLASS_CLONE({"hidden_inputs": hidden} if takes == "v3_data" else hidden)
        out = clone.execute(images[:1], format="png", if_audit_failed=file_privacy.SAVE_MARKED,
                            **{**args, "metadata": file_privacy.WITH_WORKFLOW})
        data = (tmp_path / out.ui["images"][0]["subfolder"] / out.ui["images"][0]["filename"]).read_bytes()
        assert b"revpers-abcdef.png" in data and file_privacy.extra_data(data) == [
            "PNG chunk tEXt 'prompt'", "PNG chunk tEXt 'workflow'"]
        out = clone.execute(images[:1], format="png", if_audit_failed=file_privacy.SAVE_MARKED, **args)
        data = (tmp_path / out.ui["images"][0]["subfolder"] / out.ui["images"][0]["filename"]).read_bytes()
        assert_clean_picture(data, "metadata off", extra=["revpers-abcdef"])
    finally:
        folder_paths.set_output_directory(saved_before)


def test_the_shipped_workflows_save_with_the_pack_s_node_without_metadata():
    for path in sorted((REPO / "workflows" / "api").glob("*.json")):
        graph = json.loads(path.read_text())
        assert not workflow.nodes_of(graph, workflow.METADATA_SAVERS), path.name
        (save,) = workflow.nodes_of(graph, "RevPersSave")
        assert graph[save]["inputs"]["metadata"] == file_privacy.NO_METADATA, path.name
        if workflow.nodes_of(graph, "RevPersAudit"):
            assert graph[save]["inputs"]["report"] == [workflow.nodes_of(graph, "RevPersAudit")[0], 1], path.name


# --- through real servers ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def url_server(sd15_workflows, tmp_path_factory):
    """A server this test starts itself and hands to the CLI by URL, with folders the test can read."""
    work = tmp_path_factory.mktemp("url-server")
    host = ComfyHost(HOST, extra_args=SERVER_ARGS, models_dir=TEST_MODELS, input_dir=work / "input",
                     output_dir=work / "output", log_path=ARTIFACTS / "server" / "private-outputs.log",
                     startup_timeout=300).start()
    yield host
    host.stop()


def listing(folder):
    return {p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file()}


@pytest.mark.server
def test_a_folder_of_people_through_a_server_given_by_url_leaves_no_name_tag_or_place(
        url_server, sd15_workflows, tmp_path, capsys):
    folder = people_folder(tmp_path / "people")
    out, private = tmp_path / "out", tmp_path / "private"
    before = {"input": listing(url_server.input_dir), "output": listing(url_server.output_dir)}
    code, stdout, err = run(["anonymize", folder, "-o", out, "--server", url_server.url, "--output-names", "number",
                             "--manifest", private / "manifest.json", "--workflow", sd15_workflows["photo"],
                             "--video-workflow", sd15_workflows["clip"], *FAST, *ON_STANDINS, "-q"], capsys)
    assert code == cli.EXIT_OK, err
    # the outputs: named by number, nothing but their pixels, no name, tag or place in their bytes
    assert listing(out) == {"00001.jpg", "00002.webp", "00003.png", "00004.mp4"}, listing(out)
    for name in ("00001.jpg", "00002.webp", "00003.png"):
        assert_clean_picture((out / name).read_bytes(), name, extra=["revpers-"])
    assert_clean_clip(out / "00004.mp4", extra=["revpers-"])
    assert [kind for kind, _ in clip_metadata(out / "00004.mp4")[1]] == ["video"]  # the audio was dropped
    assert "audio of Piotr_Zielinski_interview.mp4: dropped (aac 16000 Hz mono; the default: voices are not " \
           "anonymized" in err
    # the manifest: the operator's record of which input became which output, nothing from inside the files
    manifest = (private / "manifest.json").read_bytes()
    items = {Path(r["input"]).name: r for r in json.loads(manifest)["items"]}
    assert {n: Path(r["output"]).name for n, r in items.items()} == {
        "Anna_Kowalska_passport.jpg": "00001.jpg", "Ewa_Wisniewska_visa.webp": "00002.webp",
        "Jan_Nowak_id.png": "00003.png", "Piotr_Zielinski_interview.mp4": "00004.mp4"}
    assert all(r["status"] == "done" and r["audit"] == "passed" for r in items.values()), items
    assert items["Piotr_Zielinski_interview.mp4"]["audio_output"] == "dropped"
    inside = [t for t in leaks(manifest) if t not in NAMES]
    assert inside == [], inside
    assert (private / batch.JOURNAL_NAME).is_file()  # beside the manifest, not among the outputs
    # what the server keeps: exactly what the CLI listed, on screen and in the manifest, and nothing else
    after = {"input": listing(url_server.input_dir), "output": listing(url_server.output_dir)}
    on_disk = {(folder_, f) for folder_ in after for f in after[folder_] - before[folder_]}
    in_manifest = {(r["folder"], r["file"]) for item in items.values() for r in item["left_on_server"]}
    on_screen = set(re.findall(rf"^  {re.escape(url_server.url)}: (input|output)/(\S+) \(", stdout, re.M))
    assert on_disk == in_manifest == on_screen and len(on_disk) == 8, (on_disk, in_manifest, on_screen)
    for item in items.values():
        assert [r["folder"] for r in item["left_on_server"]] == ["input", "output"], item["left_on_server"]
    for folder_, name in on_disk:
        path = Path(url_server.input_dir if folder_ == "input" else url_server.output_dir) / name
        assert re.fullmatch(r"(revpers-[0-9a-f]{32}|revpers-cli_\d{5}_)\.(png|webp|tiff)", path.name), path.name
        assert_clean_picture(path.read_bytes(), path)  # the server's copies too: no name, no prompt, no EXIF
    # the clip again on its own, its audio kept by request: there, and said with the warning
    code, stdout, err = run(["anonymize", folder / "Piotr_Zielinski_interview.mp4", "-o", tmp_path / "kept.mp4",
                             "--audio", "keep", "--server", url_server.url, "--video-workflow",
                             sd15_workflows["clip"], *FAST, *ON_STANDINS, "-q"], capsys)
    assert code == cli.EXIT_OK, err
    assert [kind for kind, _ in clip_metadata(tmp_path / "kept.mp4")[1]] == ["video", "audio"]
    assert "KEPT (aac 16000 Hz mono, copied as it is, --audio keep). WARNING: voices are not anonymized" in err
    assert_clean_clip(tmp_path / "kept.mp4", extra=["revpers-"])
    assert len(re.findall(rf"^  {re.escape(url_server.url)}: (input|output)/", stdout, re.M)) == 2


def _job_files_gone(tmp, hosts):
    for host in hosts:
        for folder in (host.input_dir, host.output_dir, host._workdir and Path(host._workdir)):
            assert not (folder and Path(folder).exists()), folder
    assert list(Path(tmp).iterdir()) == []


def _host_holds(names):
    """Files of the host's own folders (input, output, temp, user) named after any of `names`."""
    found = []
    for sub in ("input", "output", "temp", "user"):
        found += [p for p in (HOST / sub).rglob("*") if p.is_file() and any(n in p.name for n in names)]
    return found


@pytest.mark.server
def test_a_server_the_cli_started_keeps_nothing_of_the_job(sd15_workflows, tmp_path, capsys, monkeypatch):
    """Passed, failed: run in this process, the hosts it started and the names it uploaded under recorded
    (the real ones run); afterwards the temporary root holds nothing, so the server's input, output and
    temp folders are gone, and the host's own folders hold nothing named after the job's files."""
    from revpers_cli.api import ComfyClient

    hosts, uploads = [], []
    real_start, real_upload = ComfyHost.start, ComfyClient.upload_image

    def start(self):
        hosts.append(self)
        return real_start(self)

    def upload(self, image, name=None, **kw):
        uploads.append(name)
        return real_upload(self, image, name=name, **kw)

    monkeypatch.setattr(ComfyHost, "start", start)
    monkeypatch.setattr(ComfyClient, "upload_image", upload)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    photo = person_photo(tmp_path / "Anna_Kowalska_passport.png")
    common = ["--standin-weights", "--standin-arch", "sd15", "--models", TEST_MODELS, *FAST, "-q"]
    code, stdout, err = run(["anonymize", photo, "-o", tmp_path / "a.png", *common], capsys)
    assert code == cli.EXIT_OK, err
    assert "left on the server" not in stdout  # nothing to list: the server and its folders are gone
    _job_files_gone(tmp, hosts)
    faceless = tmp_path / "nobody.png"
    Image.fromarray(np.full((SIZE[1], SIZE[0], 3), 90, np.uint8)).save(faceless)
    code, stdout, err = run(["anonymize", faceless, "-o", tmp_path / "b.png", *common], capsys)
    assert code == cli.EXIT_FAILED and "no face" in err.lower(), err
    _job_files_gone(tmp, hosts)
    assert len(hosts) == 2 and len(uploads) == 2
    assert _host_holds([Path(u).stem for u in uploads] + ["revpers-cli_"]) == []


def _cli_in(tmp, args):
    env = dict(os.environ, TMPDIR=str(tmp))
    return subprocess.Popen([sys.executable, "-m", "revpers_cli.cli", "anonymize", *map(str, args)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(condition, proc, timeout):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the CLI ended early ({proc.returncode}): {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.server
@pytest.mark.parametrize("how", ["ctrl-c", "sigkill"])
def test_an_interrupted_or_killed_job_leaves_nothing_of_itself(sd15_workflows, tmp_path, how):
    """The command in its own process, its temporary root its own: once the photo is on the server, Ctrl-C
    (SIGINT) or SIGKILL; when it has ended, however, the root is empty: the CLI's own cleanup (Ctrl-C) or
    the server's watchdog (SIGKILL: no code of the command runs) removed the job's folders."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    photo = person_photo(tmp_path / "Anna_Kowalska_passport.png")
    proc = _cli_in(tmp, [photo, "-o", tmp_path / "out.png", "--standin-weights", "--standin-arch", "sd15",
                         "--models", TEST_MODELS, "--steps", "50", "--crop-size", "64", "-q"])
    uploaded = lambda: any(tmp.glob("revpers-cli-*/input/revpers-*"))  # noqa: E731
    _wait(uploaded, proc, 300)
    proc.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode == (cli.EXIT_INTERRUPTED if how == "ctrl-c" else -signal.SIGKILL)
    deadline = time.monotonic() + 60
    while list(tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(tmp.iterdir()) == [], [p.name for p in tmp.rglob("*")]
    assert not (tmp_path / "out.png").exists()
