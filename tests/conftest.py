import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from inprocess import load_comfy_and_pack  # noqa: E402
from paths import ARTIFACTS, HOST  # noqa: E402
from harness import TEST_MODELS  # noqa: E402
from revpers_cli import cli, workflow  # noqa: E402


@pytest.fixture(scope="session")
def comfy_inprocess():
    """ComfyUI importable in this process (CPU, PyTorch attention) and the pack imported as ComfyUI
    imports it. Returns the pack module: `pack.nodes.<module>.<NodeClass>`."""
    return load_comfy_and_pack()


@pytest.fixture(scope="session")
def pack(comfy_inprocess):
    """The pack as ComfyUI imports it (the same as comfy_inprocess): `pack.nodes.<module>.<NodeClass>`."""
    return comfy_inprocess


@pytest.fixture(scope="module")
def tiny_sdxl(comfy_inprocess):
    """The oracle's tiny SDXL in ComfyUI's own classes with its FaceID adapter (oracle_model.tiny_models):
    base, adapter, node, and the inversion and identity MODELs."""
    import oracle_model

    return oracle_model.tiny_models(comfy_inprocess)


@pytest.fixture(scope="session")
def _server_session(tmp_path_factory):
    from harness import start_server

    server = start_server(tmp_path_factory.mktemp("comfyui"))
    print(f"\n[harness] ComfyUI started at {server.url} (log: {server.host.log_path})", flush=True)
    try:
        yield server
    finally:
        server.close()
        server.host.stop()
        print("\n[harness] ComfyUI stopped", flush=True)


@pytest.fixture
def comfy_server(_server_session, request):
    """The session's real ComfyUI server, with the pack loaded, as a ComfyClient (see harness.py).
    When the test fails, the server's log lines written during it are kept under
    artifacts/server/<test name>.log."""
    from harness import watch_test_log

    yield from watch_test_log(_server_session, request)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def pytest_collection_modifyitems(items):
    # Tests that use the server are marked, so `-m "not server"` runs the rest without starting it.
    for item in items:
        if "comfy_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)


# --- the SD1.5 stand-ins and the shipped workflows naming them, for the CLI's tests ------------------

@pytest.fixture(scope="session")
def sd15_models():
    cli.generate_standins(TEST_MODELS, "sd15", HOST)
    return TEST_MODELS


@pytest.fixture(scope="session")
def sd15_workflows(sd15_models, tmp_path_factory):
    """The shipped photo and video workflows naming the SD1.5 stand-ins (for servers given by URL)."""
    folder = tmp_path_factory.mktemp("workflows")
    names = {"checkpoint": cli.STANDIN_CHECKPOINT["sd15"], "adapter": cli.STANDIN_ADAPTER["sd15"]}
    out = {}
    for kind in ("photo", "clip"):
        graph = workflow.apply_knobs(workflow.load_workflow(workflow.find_workflow(None, kind)), names)
        out[kind] = folder / f"{kind}.json"
        out[kind].write_text(json.dumps(graph))
    return out

