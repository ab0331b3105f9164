"""Stand-in weights for the tests that run the shipped workflows, and the server that runs them.

Session fixtures generate (once, from seed 0) into the test models folder that the session's
ComfyUI reads (`comfy_server.models_dir`, .host/test-models): the full-size SDXL checkpoint, the
SDXL and SD1.5 IP-Adapter-FaceID .bin files and the buffalo_l ONNX files. Files already there are
kept; current ones in the quick start's folder (.host/standin-models, where
`revpers anonymize --standin-weights` puts them) are hard-linked instead of generated again.

The SDXL workflows run on a second real ComfyUI started with `--bf16-unet` (fixture `sdxl_server`,
one per test module),
like the quick start's server: the session's server keeps float32 weights, in which the SDXL UNet
with the FaceID LoRA patched in takes ~21 GiB on a CPU, more than a 24 GiB machine can spare.

Also here: marker-face pictures the stand-in detector sees as faces, and reading the websocket
events of a run (which nodes ran, which were cached).
"""
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness import watch_test_log  # noqa: E402
from paths import ARTIFACTS, HOST, REPO

from revpers_cli import standins

SEED = 0
QUICKSTART_MODELS = Path(os.environ.get("REVPERS_STANDIN_MODELS") or REPO / ".host" / "standin-models")
SDXL_CHECKPOINT = Path(standins.CHECKPOINTS["sdxl"]).name
FACEID_SDXL = Path(standins.FACEID["sdxl"]).name
FACEID_SD15 = Path(standins.FACEID["sd15"]).name
# REVPERS_TEST_GPU=1 (on a machine with a CUDA GPU): the SDXL server runs on the GPU instead of the CPU,
# with the UNet still in bf16 (random weights: the same precision as the CPU runs, no float16 overflow),
# and test_workflows_headless.py posts the photo workflows with their shipped sizes.
ON_GPU = os.environ.get("REVPERS_TEST_GPU", "").strip() not in ("", "0")
# What the SDXL server adds to the harness's arguments (see the module docstring).
SDXL_SERVER_ARGS = ([] if ON_GPU else ["--cpu"]) + ["--use-pytorch-cross-attention", "--bf16-unet",
                                                      "--disable-auto-launch"]
WORKFLOWS = REPO / "workflows" / "api"


def _log(line):
    print(f"[standins] {line.strip()}", flush=True)


def _models_dir():
    from harness import TEST_MODELS  # the folder comfy_server.models_dir points at
    TEST_MODELS.mkdir(parents=True, exist_ok=True)
    return TEST_MODELS


@pytest.fixture(scope="session")
def standin_buffalo():
    """The stand-in buffalo_l folder in the test models folder."""
    return standins.generate_buffalo(_models_dir(), seed=SEED, log=_log)


@pytest.fixture(scope="session")
def standin_sdxl(standin_buffalo):
    """The SDXL stand-in checkpoint and its FaceID adapter (and buffalo_l): {"checkpoint": file name,
    "adapter": file name}."""
    models = _models_dir()
    ckpt = standins.generate_checkpoint(models, "sdxl", seed=SEED, log=_log, reuse=[QUICKSTART_MODELS])
    adapter = standins.generate_faceid(models, "sdxl", seed=SEED, log=_log, reuse=[QUICKSTART_MODELS])
    return {"checkpoint": ckpt.name, "adapter": adapter.name}


@pytest.fixture(scope="session")
def standin_sd15_adapter():
    """The SD1.5 FaceID adapter stand-in (to put on the SDXL checkpoint, where it does not fit)."""
    return standins.generate_faceid(_models_dir(), "sd15", seed=SEED, log=_log).name


@pytest.fixture(scope="module")
def _sdxl_server_module(standin_sdxl, tmp_path_factory, request):
    """A real ComfyUI (the harness's host, pack loaded) with the UNet in bf16, reading the test
    models folder, for the tests of one module (stopped after them, so its ~14 GiB are not held
    while other modules run). Before it starts, the session's server is asked to unload its models and drop
    its cache (POST /free), so the two servers do not hold models at once."""
    from harness import TestServer
    from revpers_cli.host import ComfyHost

    session_server = request.getfixturevalue("_server_session")
    session_server.session.post(session_server.url + "/free", json={"unload_models": True, "free_memory": True},
                                timeout=30)
    workdir = tmp_path_factory.mktemp("comfyui-sdxl")
    log_path = ARTIFACTS / "server" / "comfyui-sdxl.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    host = ComfyHost(HOST, python=sys.executable, extra_args=SDXL_SERVER_ARGS, models_dir=_models_dir(),
                     input_dir=workdir / "input", output_dir=workdir / "output", log_path=log_path,
                     startup_timeout=300)
    host.start()
    server = TestServer(host, _models_dir(), workdir / "input", workdir / "output")
    print(f"\n[standins] SDXL server ({' '.join(SDXL_SERVER_ARGS)}) at {server.url} (log: {log_path})", flush=True)
    try:
        yield server
    finally:
        server.close()
        host.stop()


@pytest.fixture
def sdxl_server(_sdxl_server_module, request):
    """The SDXL server for one test; its log lines of a failed test go to artifacts/server/."""
    yield from watch_test_log(_sdxl_server_module, request, label="SDXL server")


# --- workflows -----------------------------------------------------------------------------------

def load_workflow(name):
    """A shipped API-format workflow, as posted to /prompt."""
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def nodes_of(graph, class_type):
    return sorted((nid for nid, n in graph.items() if n["class_type"] == class_type), key=int)


def only(graph, class_type):
    (nid,) = nodes_of(graph, class_type)
    return nid


def with_inputs(graph, class_type, **values):
    """A copy of `graph` with these literal inputs set on every node of `class_type` (which must
    already have each of them, so a renamed input cannot be set silently)."""
    graph = json.loads(json.dumps(graph))
    ids = nodes_of(graph, class_type)
    assert ids, f"the workflow has no {class_type}"
    for nid in ids:
        for name, value in values.items():
            assert name in graph[nid]["inputs"], f"{class_type} [{nid}] has no input {name}"
            graph[nid]["inputs"][name] = value
    return graph


# --- pictures ------------------------------------------------------------------------------------

def png_bytes(rgb):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def background(width, height, seed=0):
    """A textured, face-free RGB picture."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([90 + 40 * np.sin(xs / 17.0 + seed) + 20 * np.cos(ys / 13.0),
                     120 + 50 * np.cos(xs / 23.0 + ys / 19.0),
                     100 + 30 * np.sin(ys / 11.0 + seed)], axis=-1)
    base += rng.normal(0, 6, size=base.shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def marker_picture(width, height, faces, seed=0):
    """`background` with marker faces ((cx, cy), radius, pattern seed) drawn on it."""
    from revpers_cli.standins.buffalo_l import draw_marker_face

    rgb = background(width, height, seed)
    for centre, radius, pattern in faces:
        draw_marker_face(rgb, centre, radius, seed=pattern)
    return rgb


def decode(data):
    """PNG bytes -> RGB uint8 array."""
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"))


def output_images(server, result, node_id):
    """The pictures a SaveImage node wrote, fetched through /view, decoded."""
    records = result.images(node_id)
    assert records, f"node {node_id} saved no image; outputs: {result.outputs}"
    return [decode(server.view(r["filename"], r.get("subfolder", ""), r.get("type", "output"))) for r in records]


# --- websocket events ----------------------------------------------------------------------------

def executed_nodes(result):
    """Node ids the server executed in this run (the `executing` events), in order."""
    return [str(d["node"]) for kind, d in result.events if kind == "executing" and d.get("node") is not None]


def cached_nodes(result):
    """Node ids the server reused from its cache in this run (the `execution_cached` events)."""
    return sorted({str(n) for kind, d in result.events if kind == "execution_cached" for n in d.get("nodes", [])},
                  key=int)
