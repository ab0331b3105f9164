"""The CLI over clips and over many items, against real ComfyUI servers on loopback with the SD1.5
stand-ins (the shipped photo and video workflows at 64-px crops and 2 steps):

- a clip made with PyAV (two marker faces crossing, one missed by the detector for a frame, the other
  hidden behind it for five, a last frame with nobody, a tone): every frame comes back at its time, the
  audio packet for packet, the faceless frame unchanged, the missed faces anonymized and reported along
  their own tracks;
- a folder of 20 photos: the job killed midway and run again does nothing twice, in-flight prompt
  included; two servers, one stopped mid-job: every item is done exactly once; bad files among them
  are reported with their reason and the others finish, the exit code says so.
"""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clips import read_clip, truncate, write_audio_only, write_clip
from harness import TEST_MODELS
from paths import ARTIFACTS, HOST, REPO, artifact_dir
from revpers_cli import cli
from revpers_cli.host import ComfyHost
from standin_models import marker_picture

FAST = ["--steps", "2", "--crop-size", "64"]
# servers given by URL hold the SD1.5 stand-ins: said, so that the run does not refuse them as a real run would
ON_STANDINS = ["--standin-weights", "--standin-arch", "sd15"]
# float32 weights: faster per call on a CPU than bf16 (cast on every call), and two SD1.5 servers fit
SERVER_ARGS = ["--cpu", "--use-pytorch-cross-attention", "--disable-auto-launch"]
SIZE = (240, 160)
PHOTOS = 20


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def servers(sd15_models, tmp_path_factory):
    hosts = [start_server(f"items-{i}", tmp_path_factory) for i in (1, 2)]
    yield hosts
    for host in hosts:
        host.stop()


def photo_folder(folder, tag, n=PHOTOS):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(tag))
    for i in range(n):
        x, y = int(rng.integers(60, 180)), int(rng.integers(55, 105))
        Image.fromarray(marker_picture(*SIZE, [((x, y), 28, 11 + i)], seed=i)).save(folder / f"{tag}_{i:02d}.png")
    return folder


def start_server(name, tmp_path_factory):
    work = tmp_path_factory.mktemp(name)
    return ComfyHost(HOST, extra_args=SERVER_ARGS, models_dir=TEST_MODELS, input_dir=work / "input",
                     output_dir=work / "output", log_path=ARTIFACTS / "server" / f"{name}.log",
                     startup_timeout=300).start()


def prompts_per_item(host_url, out):
    """How many prompts the server ran for each item of the job writing into `out`, by the item's output
    name. Uploads go under random names; the job's journal records which upload was whose (the CLI lists
    what it leaves on a server given by URL); prompts of other jobs on the same server are not counted."""
    from revpers_cli.api import ComfyClient
    owner = {left["file"]: Path(key).name for key, record in journal(out).items()
             for left in record.get("left_on_server", []) if left["folder"] == "input"}
    with ComfyClient(host_url) as client:
        history = client.history()
    count = {}
    for entry in history.values():
        graph = entry["prompt"][2]
        for node in graph.values():
            name = node["inputs"].get("image") if node["class_type"] == "LoadImage" else None
            if isinstance(name, str) and name in owner:
                count[owner[name]] = count.get(owner[name], 0) + 1
    return count


def journal(out):
    path = out / ".revpers-journal.json"
    try:
        return json.loads(path.read_text())["items"]
    except (OSError, ValueError, KeyError):
        return {}


def cli_process(args):
    return subprocess.Popen([sys.executable, "-m", "revpers_cli.cli", "anonymize", *map(str, args)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc, timeout=600):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the CLI ended early ({proc.returncode}): {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


# --- a clip --------------------------------------------------------------------------------------

CLIP_FRAMES = 14  # people in frames 0..12, nobody in frame 13
MISSED_A = (3, 10)  # A not drawn here (the detector misses it: motion blur), before and after the crossing
HIDDEN_B = (6, 7)  # B not drawn here (turned away)


def crossing_clip():
    """Two marker faces walking past each other (A left to right above, B right to left below: they swap
    sides at frame 8), each missed by the detector for a while, and a last frame with nobody."""
    frames = []
    for t in range(CLIP_FRAMES):
        faces = []
        if t < CLIP_FRAMES - 1:
            if t not in MISSED_A:
                faces.append(((40 + 10 * t, 42), 24, 11))
            if t not in HIDDEN_B:
                faces.append(((200 - 10 * t, 122), 24, 22))
        frames.append(marker_picture(*SIZE, faces, seed=t))
    return frames


def test_a_clip_keeps_frames_timing_and_audio_and_missed_faces_are_anonymized_on_their_tracks(
        sd15_models, tmp_path, capsys):
    frames = crossing_clip()
    source = write_clip(tmp_path / "crossing.mp4", frames, fps=12)  # lossless RGB H.264, AAC tone
    out = tmp_path / "anonymized.mp4"
    code, stdout, err = run(["anonymize", source, "-o", out, "--standin-weights", "--standin-arch", "sd15",
                             "--models", sd15_models, *FAST, "--crf", "0", "--manifest", tmp_path / "clip.json",
                             "--audio", "keep", "-q"], capsys)
    assert code == cli.EXIT_OK, err
    (item,) = json.loads((tmp_path / "clip.json").read_text())["items"]
    assert (item["kind"], item["status"], item["audit"], item["frames"], item["fps"], item["audio"]) == \
        ("clip", "done", "passed", CLIP_FRAMES, "12", "aac 16000 Hz mono")
    interpolated = {(r["image"], r["face"]) for r in item["rows"] if "interpolated" in r["status"]}
    assert len(interpolated) == len(MISSED_A) + len(HIDDEN_B) and item["faces"] == 2 * (CLIP_FRAMES - 1)
    got, pts, time_base, rate, audio = read_clip(out)
    want, want_pts, want_base, want_rate, want_audio = read_clip(source)
    assert len(got) == CLIP_FRAMES and rate == want_rate == 12
    assert [float(p * time_base) for p in pts] == pytest.approx([float(p * want_base) for p in want_pts], abs=1e-3)
    assert audio and [(c, b) for c, b, _ in audio] == [(c, b) for c, b, _ in want_audio]
    assert np.array_equal(got[-1], want[-1])  # nobody there: unchanged, bit for bit (--crf 0)
    for t in range(CLIP_FRAMES - 1):
        assert np.abs(got[t].astype(int) - want[t]).max() > 50, f"frame {t} was not anonymized"
    # the audit of every saved frame names the faces tracking put back, each on its person's track, which
    # it kept through the crossing (A: track 0, the left one at first; B: track 1)
    lines = [line for line in stdout.splitlines() if "interpolated along track" in line]
    assert len(lines) == len(MISSED_A) + len(HIDDEN_B), stdout
    assert all(any(f"(image {t}," in line and "track 0" in line for line in lines) for t in MISSED_A), stdout
    assert all(any(f"(image {t}," in line and "track 1" in line for line in lines) for t in HIDDEN_B), stdout
    assert "RESULT: passed" in stdout and f"wrote {out}" in stdout
    strip = np.concatenate([np.concatenate(want[::2], axis=1), np.concatenate(got[::2], axis=1)])
    Image.fromarray(strip).save(artifact_dir("cli") / "clip_crossing_in_over_out.png")
    # the same command again: the output exists, so nothing is done without --overwrite
    with pytest.raises(SystemExit) as e:
        cli.main(["anonymize", str(source), "-o", str(out)])
    assert e.value.code == cli.EXIT_USAGE and "already exists; add --overwrite" in capsys.readouterr().err


# --- many items ----------------------------------------------------------------------------------

def test_a_folder_killed_midway_resumes_without_doing_anything_twice(servers, sd15_workflows, tmp_path, capsys):
    host = servers[0]
    photos = photo_folder(tmp_path / "photos", "resume")
    out = tmp_path / "out"
    args = [photos, "-o", out, "--server", host.url, "--workflow", sd15_workflows["photo"], *FAST, *ON_STANDINS, "-q"]
    proc = cli_process(args)
    wait_for(lambda: sum(r.get("status") == "done" for r in journal(out).values()) >= 6, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {k for k, r in journal(out).items() if r.get("status") == "done"}
    in_flight = {k for k, r in journal(out).items() if r.get("status") == "running" and r.get("token")}

    code, stdout, err = run(["anonymize", *args], capsys)
    assert code == cli.EXIT_OK, err
    manifest = json.loads((out / "manifest.json").read_text())["items"]
    assert len(manifest) == PHOTOS and all(r["status"] == "done" and r["audit"] == "passed" for r in manifest)
    resumed = {Path(r["output"]).name for r in manifest if r.get("skipped")}
    assert resumed == before and f"{PHOTOS} done ({len(before)} of them by an earlier run)" in stdout
    assert err.count("resuming prompt") <= len(in_flight)  # read back from the server, not queued again
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in photos.glob("*.png"))
    runs = prompts_per_item(host.url, out)
    assert runs == {p.name: 1 for p in photos.glob("*.png")}, "an item was queued twice (or never)"
    print(f"\n[resume] killed after {len(before)} done ({len(in_flight)} in flight); second run: "
          f"{PHOTOS - len(before)} items, each prompt run once")


def test_items_spread_over_two_servers_are_each_done_once_when_one_stops(servers, sd15_workflows, tmp_path):
    first, second = servers
    photos = photo_folder(tmp_path / "photos", "spread")
    out = tmp_path / "out"
    proc = cli_process([photos, "-o", out, "--server", first.url, "--server", second.url,
                        "--workflow", sd15_workflows["photo"], "--manifest", out / "faces.csv", *FAST, *ON_STANDINS,
                        "-q"])
    wait_for(lambda: sum(r.get("server") == second.url and r.get("status") == "done"
                         for r in journal(out).values()) >= 2, proc)
    second.stop()  # mid-job: its current item, if any, is lost there
    stdout, err = proc.communicate(timeout=900)
    assert proc.returncode == cli.EXIT_OK, err
    assert "goes to another server" in err and f"{second.url}: " in stdout and "left the job" in stdout
    records = json.loads((out / ".revpers-journal.json").read_text())["items"]
    assert len(records) == PHOTOS and all(r["status"] == "done" for r in records.values())
    on_first = {k for k, r in records.items() if r["outcome"]["server"] == first.url}
    on_second = {k for k, r in records.items() if r["outcome"]["server"] == second.url}
    assert len(on_second) >= 2 and on_first | on_second == set(records) and not on_first & on_second
    assert prompts_per_item(first.url, out) == {k: 1 for k in on_first}  # none done twice there
    rows = (out / "faces.csv").read_text().splitlines()
    assert rows[0].startswith("input,output,kind,status,reason,server")
    assert sum(",done," in r for r in rows[1:]) >= PHOTOS  # one line per face and recognizer
    print(f"\n[two servers] {len(on_first)} items on the first, {len(on_second)} on the second before it stopped")


def test_bad_items_are_reported_with_their_reason_and_the_others_finish(servers, sd15_workflows, tmp_path, capsys):
    host = servers[0]
    folder = photo_folder(tmp_path / "mixed", "mixed", n=3)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    clip = write_clip(tmp_path / "c.mp4", crossing_clip())
    truncate(clip, folder / "truncated.mp4")
    write_audio_only(folder / "interview.mp4")
    write_clip(folder / "phone.mkv", crossing_clip()[:6], pts=[0, 40, 80, 200, 240, 400], audio=False)
    (folder / "notes.txt").write_text("who is who")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mixed_01.png").write_bytes(b"made earlier")  # an existing output is not overwritten
    argv = ["anonymize", folder, "-o", out, "--server", host.url, "--workflow", sd15_workflows["photo"],
            "--video-workflow", sd15_workflows["clip"], *FAST, *ON_STANDINS, "-q"]
    code, stdout, err = run(argv, capsys)
    assert code == cli.EXIT_FAILED, err
    items = {Path(r["input"]).name: r for r in json.loads((out / "manifest.json").read_text())["items"]}
    assert items["mixed_00.png"]["status"] == items["mixed_02.png"]["status"] == "done"
    reasons = {
        "corrupt.jpg": "cannot be read as a photo",
        "truncated.mp4": "cannot be decoded as a video",
        "interview.mp4": "has no video stream (streams: audio)",
        "phone.mkv": "has a variable frame rate",
        "mixed_01.png": "already exists and was not made by this job",
        "notes.txt": "not a photo or clip this tool reads",
    }
    for name, reason in reasons.items():
        assert reason in items[name]["reason"], (name, items[name])
        assert name in err and reason in err  # said on screen as it happens
    assert items["notes.txt"]["status"] == "skipped"
    assert sum(f"NOT ANONYMIZED: {folder}" in line for line in stdout.splitlines()) == 5
    assert (out / "mixed_01.png").read_bytes() == b"made earlier"
    # run again: what was done is skipped, the bad items are reported again; --overwrite redoes the old output
    code, stdout, err = run(argv + ["--overwrite"], capsys)
    assert code == cli.EXIT_FAILED and "3 done (2 of them by an earlier run)" in stdout
    assert Image.open(out / "mixed_01.png").size == SIZE
