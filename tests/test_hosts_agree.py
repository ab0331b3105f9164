"""The same graph gives the same latents on two ComfyUI hosts: the one the tests use (COMFYUI_DIR, default
the installed 0.3.75) and another named by REVPERS_OTHER_HOST (its folder; REVPERS_OTHER_PYTHON its
Python, default this one). The reference case of the parity test runs in one child process per host
(tests/host_latents.py). A host whose model classes, sampling schedule or attention differ from the
other's shows here as a latent difference. CI installs one host, so this runs where a second one is
set up by hand (how ComfyUI 0.33 was checked: README, "Tests and CI")."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paths import HOST, REPO, artifact_dir

OTHER = os.environ.get("REVPERS_OTHER_HOST")
HOSTS = {"default": (HOST, sys.executable)}
if OTHER:
    HOSTS["other"] = (Path(OTHER), os.environ.get("REVPERS_OTHER_PYTHON") or sys.executable)


def _version(folder):
    text = (folder / "comfyui_version.py").read_text() if (folder / "comfyui_version.py").is_file() else ""
    return next((line.split("=")[1].strip().strip("'\"") for line in text.splitlines()
                 if line.startswith("__version__")), folder.name)


@pytest.mark.skipif(not OTHER, reason="no second host named (REVPERS_OTHER_HOST=/path/to/ComfyUI)")
def test_the_reference_case_gives_identical_latents_on_both_hosts(tmp_path):
    import safetensors.torch

    results = {}
    for name, (folder, python) in HOSTS.items():
        assert (folder / "main.py").is_file(), f"no ComfyUI at {folder}"
        label = f"ComfyUI {_version(folder)}"
        out = tmp_path / f"{name}.safetensors"
        env = dict(os.environ, COMFYUI_DIR=str(folder))
        run = subprocess.run([python, str(REPO / "tests" / "host_latents.py"), str(out)], env=env,
                             capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, f"{label}: {run.stderr[-3000:]}"
        results[label] = safetensors.torch.load_file(str(out))
    (a, ra), (b, rb) = results.items()
    lines = []
    for key in ("x_T", "noise_maps", "final"):
        diff = float((ra[key] - rb[key]).abs().max())
        lines.append(f"{key}: max |{a} - {b}| = {diff:.3g} (max |value| {float(ra[key].abs().max()):.3g})")
    report = "\n".join(lines)
    print(f"\n[hosts] {report}")
    (artifact_dir("hosts") / "latents.txt").write_text(report + "\n")
    for key in ("x_T", "noise_maps", "final"):
        assert ra[key].shape == rb[key].shape
        assert ra[key].dtype == rb[key].dtype
        assert (ra[key] == rb[key]).all(), f"the hosts disagree:\n{report}"
