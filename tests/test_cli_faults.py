"""What must hold when things go wrong, through the `revpers` command against real ComfyUI servers on
loopback with the SD1.5 stand-ins (the shipped workflows at 64-px crops and 2 steps):

- a job of 20 items over two servers, a decompression bomb and an unreadable file among them, one
  server behind a relay the test turns faulty mid-job (tests/faulty_proxy.py: it stalls, or answers
  garbage), once with part of the output folder unwritable: the command ends within a bound, exit code
  not 0, every item in the manifest exactly once with its outcome; run again, an output changed after
  its audit is refused by its sha256;
- --on-fail redact on a face that fails every retry: it is covered, the audit passes again, the report
  and the manifest name it; every other pixel is the one the run without redaction wrote;
- a server whose Python cannot import dlib: refused, unless --single-recognizer, then said everywhere;
- a clip whose person is lost for longer than --max-gap: the gap per track and frame range in the
  report and the manifest, and --fail-on-gaps fails the item.
"""
import json
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clips import write_clip
from faulty_proxy import FaultyProxy
from harness import TEST_MODELS
from paths import ARTIFACTS, HOST, artifact_dir
from revpers_cli import cli, workflow
from revpers_cli.host import ComfyHost
from standin_models import marker_picture
from test_cli_items import (FAST, ON_STANDINS, SERVER_ARGS, SIZE, cli_process, journal, photo_folder,
                            prompts_per_item, run, wait_for)

# How long a job of 20 small items over two CPU servers may take, fault included (it takes about a
# minute on the 2-core CI machine); the test fails, and kills the CLI, beyond it.
BOUND = 600
STALL = ["--server-stall", "15"]


def start_host(name, tmp_path_factory, env=None):
    work = tmp_path_factory.mktemp(name)
    return ComfyHost(HOST, extra_args=SERVER_ARGS, models_dir=TEST_MODELS, input_dir=work / "input",
                     output_dir=work / "output", log_path=ARTIFACTS / "server" / f"{name}.log",
                     startup_timeout=300, env=env).start()


@pytest.fixture(scope="module")
def standins():
    """The SD1.5 stand-ins in the test models folder (the shipped workflows are run with --standin-weights,
    which names them)."""
    cli.generate_standins(TEST_MODELS, "sd15", HOST)
    return TEST_MODELS


@pytest.fixture(scope="module")
def two_servers(standins, tmp_path_factory):
    hosts = [start_host(f"faults-{i}", tmp_path_factory) for i in (1, 2)]
    yield hosts
    for host in hosts:
        host.stop()


def decompression_bomb(path, side=30000):
    """A PNG that says it is side x side pixels (900 megapixels at 30000): PIL refuses it as a bomb."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (side // 8 + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def items_of(out):
    return json.loads((out / "manifest.json").read_text())["items"]


def running_on(out, url):
    """(items done on the server at `url`, whether one is queued there now)."""
    records = journal(out).values()
    done = sum(r.get("server") == url and r.get("status") == "done" for r in records)
    queued = any(r.get("server") == url and r.get("status") == "running" and r.get("token") for r in records)
    return done, queued


def shipped(kind):
    """The options naming the shipped workflow of `kind` (what the CLI runs by default)."""
    option = "--workflow" if kind == "photo" else "--video-workflow"
    return [option, str(workflow.REPO / workflow.SHIPPED[kind])]


def faulty_job(folder, out, direct, proxy, fault, extra=()):
    """Run the CLI over `folder` on `direct` and on `proxy`, turn the proxy faulty while its third item
    runs there; (exit code, stdout, stderr, seconds)."""
    proc = cli_process([folder, "-o", out, "--server", direct.url, "--server", proxy.url, *shipped("photo"),
                        *FAST, *ON_STANDINS, *STALL, "-q", *extra])
    started = time.monotonic()
    try:
        wait_for(lambda: running_on(out, proxy.url)[0] >= 2 and running_on(out, proxy.url)[1], proc, BOUND)
        proxy.fault(fault)
        stdout, err = proc.communicate(timeout=BOUND)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stdout, err, time.monotonic() - started


def test_a_job_ends_when_a_server_stalls_mid_job_and_a_changed_output_is_refused_on_resume(
        two_servers, tmp_path, capsys):
    direct, behind = two_servers
    proxy = FaultyProxy(behind.url)
    folder = photo_folder(tmp_path / "photos", "stall", n=18)
    decompression_bomb(folder / "bomb.png")
    (folder / "empty.png").write_bytes(b"")
    files = sorted(folder.iterdir())
    out = tmp_path / "out"
    try:
        code, stdout, err, seconds = faulty_job(folder, out, direct, proxy, "stall")
    finally:
        proxy.close()
    assert code == cli.EXIT_FAILED, err
    items = {Path(r["input"]).name: r for r in items_of(out)}
    assert sorted(items) == sorted(f.name for f in files) and len(items_of(out)) == 20  # each exactly once
    assert "DecompressionBombError" in items["bomb.png"]["reason"] and items["bomb.png"]["status"] == "failed"
    assert "cannot be read as a photo" in items["empty.png"]["reason"]
    good = {n: r for n, r in items.items() if n.startswith("stall_")}
    assert all(r["status"] == "done" and r["audit"] == "passed" for r in good.values()), good
    assert "goes to another server" in err and f"{proxy.url}: " in stdout and "left the job" in stdout
    assert "no event and no answer for 15 s" in stdout or "did not answer in time" in stdout, stdout
    on_direct = {n for n, r in good.items() if r["server"] == direct.url}
    assert prompts_per_item(direct.url, out) == {n: 1 for n in on_direct}  # none done twice there
    assert len(on_direct) < len(good)  # the relayed server did its share before it stalled
    with capsys.disabled():
        print(f"\n[stall] 20 items in {seconds:.0f} s; {len(good) - len(on_direct)} on the server that stalled")

    # run again on the healthy server: done items are skipped by their recorded sha256; one whose bytes
    # changed after its audit is refused, not trusted, and left as it is
    changed = out / "stall_03.png"
    changed.write_bytes(changed.read_bytes() + b"appended after the audit")
    tampered = changed.read_bytes()
    code, stdout, err = run(["anonymize", folder, "-o", out, "--server", direct.url,
                             *shipped("photo"), *FAST, *ON_STANDINS, "-q"], capsys)
    assert code == cli.EXIT_FAILED
    items = {Path(r["input"]).name: r for r in items_of(out)}
    assert "changed after it was audited" in items["stall_03.png"]["reason"] and "sha256" in err
    assert changed.read_bytes() == tampered
    assert sum(bool(r.get("skipped")) for r in items.values()) == 17
    assert prompts_per_item(direct.url, out) == {n: 1 for n in on_direct}  # nothing queued again


def test_a_job_ends_when_a_server_answers_garbage_and_outputs_cannot_be_written(two_servers, tmp_path, capsys):
    direct, behind = two_servers
    proxy = FaultyProxy(behind.url)
    folder = photo_folder(tmp_path / "photos", "garbage", n=15)
    photo_folder(folder / "sub", "unwritable", n=3)
    decompression_bomb(folder / "bomb.png")
    (folder / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("a file where the outputs of sub/ would go: they cannot be written")
    try:
        code, stdout, err, seconds = faulty_job(folder, out, direct, proxy, "garbage")
    finally:
        proxy.close()
    assert code == cli.EXIT_FAILED, err
    items = items_of(out)
    names = sorted(str(Path(r["input"]).relative_to(folder)) for r in items)
    assert names == sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert len(items) == 20
    by_name = {Path(r["input"]).name: r for r in items}
    assert "DecompressionBombError" in by_name["bomb.png"]["reason"]
    assert "cannot be read as a photo" in by_name["empty.png"]["reason"]
    for i in range(3):
        record = by_name[f"unwritable_{i:02d}.png"]
        assert record["status"] == "failed" and "Error" in record["reason"] and str(out / "sub") in record["reason"]
    good = [r for n, r in by_name.items() if n.startswith("garbage_")]
    assert all(r["status"] == "done" for r in good), [r["reason"] for r in good if r["status"] != "done"]
    assert "goes to another server" in err and f"{proxy.url}: " in stdout and "left the job" in stdout
    assert "what is not JSON" in stdout or "talking to it failed" in stdout or "stopped answering" in stdout
    with capsys.disabled():
        print(f"\n[garbage] 20 items in {seconds:.0f} s")


# --- redaction -----------------------------------------------------------------------------------

def test_redact_covers_the_face_that_fails_every_retry_and_nothing_else(two_servers, tmp_path,
                                                                         capsys):
    """The face of test_cli's partial-marker photo stays recognizable (dlib sees the real face around a small
    marker) at every guidance. Written marked (--allow-unanonymized) it is the run without redaction;
    with --on-fail redact the same last attempt is audited again after the face is covered: it passes,
    the report and the manifest name the face, and the two photos differ only in the covered face
    and the NOT ANONYMIZED mark."""
    pytest.importorskip("dlib")
    from revpers_core.faces.paste import mark_not_anonymized
    from test_cli import partial_marker_photo

    direct = two_servers[0]
    photo = partial_marker_photo(tmp_path / "partial.png")
    common = ["anonymize", photo, "--server", direct.url, *shipped("photo"), *FAST,
              *ON_STANDINS, "-q"]
    marked, redacted = tmp_path / "marked.png", tmp_path / "redacted.png"
    code, stdout, err = run(common + ["-o", marked, "--allow-unanonymized"], capsys)
    assert code == cli.EXIT_UNANONYMIZED and "attempt 3" in err, err
    code, stdout, err = run(common + ["-o", redacted, "--on-fail", "redact", "--manifest", tmp_path / "m.json"],
                            capsys)
    assert code == cli.EXIT_OK, err
    assert "on-fail redact: face(s) still recognizable after the last attempt" in err
    assert "RESULT: passed after redaction" in stdout and "REDACTED: face" in stdout
    (item,) = json.loads((tmp_path / "m.json").read_text())["items"]
    assert item["status"] == "done" and item["audit"].startswith("passed after redacting 1 face")
    (face,) = item["redacted"]
    assert face["row"] == 0 and "dlib" in face["recognized_by"] and face["pixels"] > 0
    assert any(r["status"] == "redacted" and r["verdict"] == "REDACTED" for r in item["rows"])

    a, b = (np.asarray(Image.open(p).convert("RGB")).astype(int) for p in (marked, redacted))
    mark = np.asarray(mark_not_anonymized(np.zeros(a.shape, np.float32))).max(axis=2) > 0  # frame and banner
    differs = (np.abs(a - b).max(axis=2) > 0) & ~mark
    x1, y1, x2, y2 = face["box"]
    ys, xs = np.nonzero(differs)
    assert differs.any() and ((xs.mean() - (x1 + x2) / 2) ** 2 + (ys.mean() - (y1 + y2) / 2) ** 2) < 30 ** 2
    fill = b[differs]
    assert (np.ptp(fill, axis=0) <= 1).all()  # one flat colour where they differ (8-bit rounding aside)
    for (x, y), r in [((378, 380), 54), ((534, 91), 65)]:  # the other faces: bit-identical
        window = (slice(max(0, y - r), y + r), slice(x - r, x + r))
        assert not differs[window].any() and np.array_equal(a[window][~mark[window]], b[window][~mark[window]])
    Image.fromarray(np.concatenate([a, b], axis=1).astype(np.uint8)).save(artifact_dir("cli") / "redacted_face.png")


# --- the second recognizer -----------------------------------------------------------------------

def test_without_dlib_the_job_is_refused_unless_a_single_recognizer_is_allowed(standins,
                                                                               tmp_path_factory, tmp_path, capsys):
    """A server whose Python cannot import dlib (a dlib module that raises ImportError comes first on its
    path): the CLI asks it before any upload and refuses; with --single-recognizer it runs, and the report
    and the manifest say that ArcFace judged alone."""
    fake = tmp_path_factory.mktemp("no-dlib")
    (fake / "dlib.py").write_text("raise ImportError('dlib cannot be imported in this test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(fake), os.environ.get("PYTHONPATH")])))
    host = start_host("no-dlib", tmp_path_factory, env=env)
    try:
        photo = tmp_path / "face.png"
        Image.fromarray(marker_picture(*SIZE, [((120, 80), 28, 11)], seed=3)).save(photo)
        common = ["anonymize", photo, "--server", host.url, *shipped("photo"), *FAST,
                  *ON_STANDINS, "-q"]
        code, stdout, err = run(common + ["-o", tmp_path / "refused.png"], capsys)
        assert code == cli.EXIT_MISSING, err
        assert "dlib, the audit's independent recognizer, is not installed there" in err
        assert "--single-recognizer" in err and not (tmp_path / "refused.png").exists()
        code, stdout, err = run(common + ["-o", tmp_path / "single.png", "--single-recognizer",
                                          "--manifest", tmp_path / "m.json"], capsys)
        assert code == cli.EXIT_OK, err
        assert "judges alone" in err and "judged by ArcFace ALONE (--single-recognizer)" in stdout
        assert "dlib is NOT installed" in stdout  # the audit's own report
        (item,) = json.loads((tmp_path / "m.json").read_text())["items"]
        assert item["single_recognizer"] is True and item["recognizers"] == "ArcFace"
        assert {r["recognizer"] for r in item["rows"]} == {"ArcFace"}
    finally:
        host.stop()


# --- the tracker's long gaps ---------------------------------------------------------------------

def test_a_long_gap_of_a_track_is_reported_and_fails_the_clip_on_request(two_servers, tmp_path,
                                                                        capsys):
    """One person standing, hidden in frames 3 and 4 (found again after them by ArcFace: the same face):
    with --max-gap 1 those frames are not interpolated; the report and the manifest give the gap by track
    and frame range; --fail-on-gaps fails the clip."""
    frames = [marker_picture(*SIZE, [] if t in (3, 4) else [((120, 80), 26, 11)], seed=0) for t in range(8)]
    clip = write_clip(tmp_path / "walk.mp4", frames, fps=12, audio=False)
    common = ["anonymize", clip, "--server", two_servers[0].url, *shipped("clip"), *FAST,
              *ON_STANDINS, "--max-gap", "1", "-q"]
    code, stdout, err = run(common + ["-o", tmp_path / "walk_out.mp4", "--manifest", tmp_path / "m.json"], capsys)
    assert code == cli.EXIT_OK, err
    (item,) = json.loads((tmp_path / "m.json").read_text())["items"]
    assert item["long_gaps"] == [{"track": 0, "first_frame": 3, "last_frame": 4, "frames": 2, "max_gap": 1}]
    assert "long gaps of the tracker" in stdout and "track 0 not detected in frames 3-4 (2 frames > max_gap 1" in stdout
    code, stdout, err = run(common + ["-o", tmp_path / "refused.mp4", "--fail-on-gaps"], capsys)
    assert code == cli.EXIT_FAILED and "--fail-on-gaps: track 0 not detected in frames 3-4" in err
    assert not (tmp_path / "refused.mp4").exists()
