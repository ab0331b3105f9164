"""The same graph gives the same latents on every ComfyUI host scripts/install_host.sh installed side
by side (.host/comfyui-0.3.75, the default, and .host/comfyui-2024, the floor): the reference case
of the parity test, run in one child process per host (tests/host_latents.py). A host whose model
classes, sampling schedule or attention differ from the other's shows here as a latent difference.
Needs both hosts (`REVPERS_HOST=2024 bash scripts/install_host.sh` adds the floor); CI has both."""
import os
import subprocess
import sys

import pytest

from paths import REPO, artifact_dir
from revpers_core.host import HOST_FLAVOURS

HOSTS = {f: REPO / ".host" / f"comfyui-{f}" for f in HOST_FLAVOURS}
INSTALLED = {f: d for f, d in HOSTS.items() if (d / "main.py").is_file()}


@pytest.mark.skipif(len(INSTALLED) < 2, reason="needs both hosts installed side by side "
                    "(REVPERS_HOST=2024 bash scripts/install_host.sh adds the 2024 floor)")
def test_the_reference_case_gives_identical_latents_on_both_hosts(tmp_path):
    import safetensors.torch

    results = {}
    for flavour, folder in INSTALLED.items():
        out = tmp_path / f"{flavour}.safetensors"
        env = dict(os.environ, COMFYUI_DIR=str(folder))
        run = subprocess.run([sys.executable, str(REPO / "tests" / "host_latents.py"), str(out)], env=env,
                             capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, f"ComfyUI {flavour}: {run.stderr[-3000:]}"
        results[flavour] = safetensors.torch.load_file(str(out))
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
