"""What a hostile run does to the CLI and the hosts it starts: a server that dies mid-run, a starter
killed with SIGKILL, settings that cannot anonymize, and photos whose mode ComfyUI would misread
(alpha, 16-bit). Real servers, real processes, real signals."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paths import HOST, REPO
from revpers_cli import cli
from test_cli import INVERT, run


def alive(pid):
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_gone(pid, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.2)
    return not alive(pid)


def children(pid):
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(t) for t in text]
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_server_does_not_outlive_a_starter_killed_with_sigkill(tmp_path):
    """The starter is SIGKILLed (no cleanup of ours runs): the kernel's parent-death signal and the
    watchdog end the ComfyUI it started within seconds."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from revpers_cli.host import ComfyHost
        host = ComfyHost({str(HOST)!r}, extra_args=["--cpu"], startup_timeout=240)
        host.start()
        print(host.process.pid, host._watchdog.pid, flush=True)
        time.sleep(600)
    """)
    starter = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        server, watchdog = (int(v) for v in starter.stdout.readline().split())
        assert alive(server) and alive(watchdog)
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait(timeout=10)
        assert wait_gone(server, 20), f"the server {server} outlived its SIGKILLed starter"
        assert wait_gone(watchdog, 20)
    finally:
        if starter.poll() is None:
            starter.kill()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_server_killed_mid_run_gives_a_clear_message_and_no_output(tmp_path):
    """The CLI's own local server is killed (by its PID) while the graph runs: exit code 4, a message
    that says the job was lost and how the server ended, and no output file."""
    out = tmp_path / "never.png"
    cmd = [sys.executable, "-m", "revpers_cli", "anonymize", "--example", "group", "-o", str(out),
           "--standin-weights", "--standin-arch", "sd15", "--models", str(REPO / ".host" / "test-models")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "running" in line and "RevPersInvert" in line:
                break
        else:
            pytest.fail("the run never reached the inversion:\n" + "".join(seen))
        (server,) = [pid for pid in children(proc.pid) if "main.py" in Path(f"/proc/{pid}/cmdline").read_text()]
        os.kill(server, signal.SIGKILL)
        rest = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(seen) + rest
    assert proc.returncode == cli.EXIT_SERVER, err
    assert "stopped answering during the run" in err and "the job was lost" in err
    assert "killed by signal SIGKILL" in err and f"Nothing was written to {out}" in err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".never.png*"))


def test_settings_that_cannot_anonymize_are_refused_unless_forced(tmp_path, capsys):
    photo = tmp_path / "p.png"
    Image.new("RGB", (64, 64), (90, 120, 150)).save(photo)
    with pytest.raises(SystemExit) as e:
        cli.main(["anonymize", str(photo), "-o", str(tmp_path / "o.png"), "--guidance", "0"])
    assert e.value.code == cli.EXIT_USAGE
    assert "needs a NEGATIVE guidance" in capsys.readouterr().err
    # forced: it goes on (here to the model-file check, which fails in an empty models folder)
    code, _, err = run(["anonymize", photo, "-o", tmp_path / "o.png", "--guidance", "2", "--force",
                        "--comfyui", HOST, "--models", tmp_path / "empty"], capsys)
    assert "the faces are NOT pushed away" in err and code == cli.EXIT_MISSING
    # the same settings inside a workflow file
    import json
    graph = json.loads((REPO / "workflows" / "api" / "anonymize_photo.json").read_text())
    for node in graph.values():
        if node["class_type"] == "RevPersIdentityConditioning":
            node["inputs"]["ip_adapter_scale"] = 0.0
    wf = tmp_path / "weak.json"
    wf.write_text(json.dumps(graph))
    code, _, err = run(["anonymize", photo, "-o", tmp_path / "o.png", "--workflow", wf], capsys)
    assert code == cli.EXIT_USAGE and "ip_adapter_scale 0: the identity branch is empty" in err
    # the audit's thresholds are bounded on the command line as on the node
    with pytest.raises(SystemExit):
        cli.main(["anonymize", str(photo), "-o", str(tmp_path / "o.png"), "--arcface-threshold", "1.0"])
    assert "so that the audit cannot be switched off" in capsys.readouterr().err


def test_rgba_keeps_its_alpha_and_16_bit_grey_is_read_correctly(comfy_server, tmp_path, capsys):
    """Through a real server (ComfyUI's LoadImage drops alpha; it clips 16-bit grey to white): the
    output carries the photo's alpha channel bit for bit, and a 16-bit photo arrives scaled to 8 bits."""
    import json
    wf = tmp_path / "invert.json"
    wf.write_text(json.dumps(INVERT))
    rgb = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    alpha = np.tile(np.linspace(0, 255, 128).astype(np.uint8), (96, 1))
    alpha[:, :20] = 0  # a fully transparent band: hidden pixels must stay hidden
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    out = tmp_path / "rgba-out.png"
    code, _, err = run(["anonymize", tmp_path / "rgba.png", "-o", out, "--server", comfy_server.url,
                        "--workflow", wf, "-q"], capsys)
    assert code == cli.EXIT_OK, err
    with Image.open(out) as im:
        assert im.mode == "RGBA"
        got = np.asarray(im)
    assert np.array_equal(got[:, :, 3], alpha)
    assert np.abs(got[:, :, :3].astype(int) - (255 - rgb.astype(int))).max() <= 1
    # a JPEG cannot hold alpha: refused unless forced
    with pytest.raises(SystemExit):
        cli.main(["anonymize", str(tmp_path / "rgba.png"), "-o", str(tmp_path / "o.jpg")])
    assert "has an alpha channel" in capsys.readouterr().err

    grey16 = (np.tile(np.linspace(0, 65535, 128), (96, 1))).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    out = tmp_path / "grey-out.png"
    code, _, err = run(["anonymize", tmp_path / "grey16.png", "-o", out, "--server", comfy_server.url,
                        "--workflow", wf, "-q"], capsys)
    assert code == cli.EXIT_OK, err
    got = np.asarray(Image.open(out).convert("RGB")).astype(int)
    want = 255 - np.rint(grey16 / 257.0).astype(int)
    assert np.abs(got - want[:, :, None]).max() <= 1  # not clipped to white (which would invert to 0)
