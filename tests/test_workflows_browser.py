"""The shipped UI workflows in the host's real web UI (headless Chromium): they load with every node
type known and every link intact, and what the front end would queue for them is exactly the
shipped API workflow, but for the documented differences between front-end versions
(webui.FRONTEND_DIFFERENCES). A screenshot of each loaded graph is left in artifacts/browser/, named
after the front end.

Page errors are failures when the pack causes them. The front end's own (some versions throw at
start-up in their settings code) are found by opening the same page of the same host without the
pack: a copy of the host with an empty custom_nodes folder, started beside it (a copy, because
ComfyUI finds its folders from its own real path, and the 2024 floor has no option to disable custom
nodes). Only errors that page shows too are the front end's; they are recorded, not hidden."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from paths import ARTIFACTS, HOST, REPO, UI_SERVER_ARGS, artifact_dir
from webui import broken_links, chromium_available, expected_prompt, fit_view, frontend_version
from webui import graph_to_prompt, has_subgraphs, load_ui_workflow, missing_node_types, normalized_prompt
from webui import page_errors, web_ui, without_subgraph_paths

# The flat UI workflows, each with its API twin; and those built around a subgraph block, which only
# front ends with subgraphs load (scripts/build_block_workflow.py): <name>_block.json queues exactly
# what api/<name>.json holds.
UI_WORKFLOWS = sorted(p for p in (REPO / "workflows").glob("*.json")
                      if not json.loads(p.read_text()).get("definitions", {}).get("subgraphs"))
BLOCK_WORKFLOWS = sorted(set((REPO / "workflows").glob("*.json")) - set(UI_WORKFLOWS))


def flat_api_twin(block):
    return REPO / "workflows" / "api" / (block.stem.removesuffix("_block") + ".json")

needs_chromium = pytest.mark.skipif(not chromium_available(),
                                    reason="Debian's chromium is not installed (apt-get install chromium)")

def test_every_ui_workflow_has_an_api_twin():
    assert len(UI_WORKFLOWS) >= 3
    for ui in UI_WORKFLOWS:
        assert (REPO / "workflows" / "api" / ui.name).is_file(), f"{ui.name} has no API-format twin"
    assert BLOCK_WORKFLOWS, "the photo workflow as one block (anonymize_photo_block.json) is missing"
    for block in BLOCK_WORKFLOWS:
        assert flat_api_twin(block).is_file(), f"{block.name} has no flat API workflow {flat_api_twin(block).name}"


@pytest.fixture(scope="module")
def frontends_own_errors(tmp_path_factory):
    """The page errors of this host's front end without the pack: the same page opened on a copy of
    the host whose custom_nodes folder is empty, after loading its default graph."""
    from revpers_cli.host import ComfyHost

    bare = tmp_path_factory.mktemp("bare-host") / "ComfyUI"
    top_level = {"custom_nodes", "models", "input", "output", "user", "temp", ".git"}
    shutil.copytree(HOST, bare, symlinks=True, ignore=lambda folder, names: [
        n for n in names if n == "__pycache__" or (Path(folder) == HOST and n in top_level)])
    for folder in ("custom_nodes", "input", "output"):
        (bare / folder).mkdir()
    host = ComfyHost(bare, python=sys.executable, extra_args=["--cpu", "--disable-auto-launch"] + UI_SERVER_ARGS,
                     input_dir=bare / "input", output_dir=bare / "output",
                     log_path=ARTIFACTS / "server" / "comfyui-bare.log", startup_timeout=300)
    host.start()
    try:
        with web_ui(host.url) as page:
            page.evaluate("async () => { await app.loadGraphData(); }")
            page.wait_for_timeout(500)
            errors, version = page_errors(page), frontend_version(page)
    finally:
        host.stop()
    text = f"front end {version}, host without the pack: {len(errors)} page error(s)\n" + "".join(
        f"  {e}\n" for e in errors)
    (artifact_dir("browser") / f"frontend-{version}-own-errors.txt").write_text(text)
    print(f"\n[browser] {text}", end="")
    return set(errors)


@pytest.fixture(scope="module")
def page(_server_session, frontends_own_errors):
    # after the bare page has closed: Playwright's sync API runs one browser session at a time
    with web_ui(_server_session.url) as page:
        yield page


def errors_of_the_pack(page, frontends_own_errors):
    return [e for e in page_errors(page) if e not in frontends_own_errors]


@needs_chromium
@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_loads_and_queues_the_api_workflow(page, frontends_own_errors, workflow):
    ui = json.loads(workflow.read_text())
    api = json.loads((REPO / "workflows" / "api" / workflow.name).read_text())

    assert missing_node_types(page, ui) == []
    load_ui_workflow(page, ui)
    assert broken_links(page) == []
    assert errors_of_the_pack(page, frontends_own_errors) == []

    queued = graph_to_prompt(page)
    assert normalized_prompt(queued) == normalized_prompt(expected_prompt(api, queued))

    fit_view(page)
    shot = artifact_dir("browser") / f"{workflow.stem}-frontend-{frontend_version(page)}.png"
    page.screenshot(path=str(shot))
    print(f"\n{workflow.name}: {len(ui['nodes'])} nodes, {len(api)} queued, screenshot {shot}")


@needs_chromium
@pytest.mark.parametrize("workflow", BLOCK_WORKFLOWS, ids=lambda p: p.stem)
def test_block_workflow_loads_opens_and_queues_the_flat_api_workflow(page, frontends_own_errors, workflow):
    """The photo workflow as one node, "Anonymize Faces" (photo, checkpoint, guidance, attribute text
    in; photo, the audit's verdict for the save node and the report out): it loads with its links intact inside and out, opens to show its
    stages, and queues the flat API workflow node for node (ids taken off their subgraph path), so
    ComfyUI's cache sees the same prompt; its one guidance reaches both the inversion and the sampler."""
    if not has_subgraphs(page):
        pytest.skip(f"front end {frontend_version(page)} has no subgraphs (the flat workflows are tested on it)")
    ui = json.loads(workflow.read_text())
    api = json.loads(flat_api_twin(workflow).read_text())
    (definition,) = ui["definitions"]["subgraphs"]
    outside = [n for n in ui["nodes"] if n["type"] != definition["id"]]
    assert missing_node_types(page, {"nodes": outside + definition["nodes"]}) == []

    load_ui_workflow(page, ui)
    assert broken_links(page) == []
    assert broken_links(page, definition["name"]) == []
    assert errors_of_the_pack(page, frontends_own_errors) == []
    block = page.evaluate("""(id) => {
        const n = app.graph._nodes.find(n => n.type === id);
        return {id: n.id, title: n.title, inputs: n.inputs.map(i => i.label ?? i.name),
                outputs: n.outputs.map(o => o.label ?? o.name),
                widgets: Object.fromEntries((n.widgets ?? []).map(w => [w.name, w.value]))};
    }""", definition["id"])
    assert block["title"] == "Anonymize Faces"
    assert block["inputs"] == ["photo", "model", "clip", "vae", "guidance", "attribute text", "seed"]
    assert block["outputs"] == ["photo", "audit", "report"]  # the audit's verdict goes to the save node
    assert block["widgets"]["guidance"] == api["25"]["inputs"]["guidance"] == api["26"]["inputs"]["guidance"]
    assert block["widgets"]["seed"] == api["25"]["inputs"]["seed"]
    # no promoted inner widget: front ends since mid-2026 turn those into links when the file loads
    assert "proxyWidgets" not in next(n for n in ui["nodes"] if n["type"] == definition["id"]).get("properties", {})

    queued = graph_to_prompt(page)
    inside = {str(n["id"]) for n in definition["nodes"]}
    assert {k for k in map(str, queued) if ":" in k} == {f"{block['id']}:{i}" for i in inside}
    flat = without_subgraph_paths(queued)
    assert normalized_prompt(flat) == normalized_prompt(expected_prompt(api, flat))

    # one knob for both runs: the sampler walks back the inversion's schedule only at its guidance
    set_guidance = """([id, value]) => {
        const n = app.graph._nodes.find(n => n.type === id);
        n.widgets.find(w => w.name === 'guidance').value = value;
    }"""
    page.evaluate(set_guidance, [definition["id"], -6.5])
    changed = without_subgraph_paths(graph_to_prompt(page))
    assert changed["25"]["inputs"]["guidance"] == changed["26"]["inputs"]["guidance"] == -6.5
    page.evaluate(set_guidance, [definition["id"], block["widgets"]["guidance"]])

    version = frontend_version(page)
    fit_view(page)
    page.screenshot(path=str(artifact_dir("browser") / f"{workflow.stem}-frontend-{version}.png"))
    opened = page.evaluate("""(id) => {
        const n = app.graph._nodes.find(n => n.type === id);
        app.canvas.openSubgraph(n.subgraph, n);
        return app.canvas.graph._nodes.map(m => m.id).sort((a, b) => a - b);
    }""", definition["id"])
    assert list(map(str, opened)) == sorted(inside, key=int)
    fit_view(page)
    shot = artifact_dir("browser") / f"{workflow.stem}-opened-frontend-{version}.png"
    page.screenshot(path=str(shot))
    page.evaluate("() => app.canvas.setGraph(app.graph)")
    print(f"\n{workflow.name}: {len(outside)} nodes and one block of {len(inside)}, "
          f"{len(queued)} queued, screenshots {shot.parent}")


def test_only_documented_differences_are_accepted():
    """The comparison's allowance: LoadImage's `upload` may be left out by the front end; any other
    missing or changed input still makes the prompts differ."""
    api = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png", "upload": "image"}},
           "2": {"class_type": "RevPersInvert", "inputs": {"steps": 100, "skip": 0.7}}}
    without_upload = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}, "2": api["2"]}
    assert normalized_prompt(without_upload) == normalized_prompt(expected_prompt(api, without_upload))
    assert normalized_prompt(api) == normalized_prompt(expected_prompt(api, api))
    without_steps = {"1": api["1"], "2": {"class_type": "RevPersInvert", "inputs": {"skip": 0.7}}}
    assert normalized_prompt(without_steps) != normalized_prompt(expected_prompt(api, without_steps))
    other_image = {"1": {"class_type": "LoadImage", "inputs": {"image": "b.png"}}, "2": api["2"]}
    assert normalized_prompt(other_image) != normalized_prompt(expected_prompt(api, other_image))


@needs_chromium
def test_a_nodes_report_shows_on_the_node_and_a_failure_paints_it_red(page, frontends_own_errors, comfy_server):
    """web/revpers.js: a run queued from the page; the audit (a photo compared with itself, saved
    marked by choice) puts its report in a text box on the node and turns the node red. The box is
    never part of the prompt."""
    import numpy as np
    from PIL import Image

    from revpers_cli import standins
    from revpers_cli.standins.buffalo_l import draw_marker_face

    standins.generate_buffalo(comfy_server.models_dir, seed=0, log=lambda s: None)
    picture = np.full((192, 192, 3), 90, np.uint8)
    draw_marker_face(picture, (96, 96), 60, seed=1)
    import io
    data = io.BytesIO()
    Image.fromarray(picture).save(data, format="PNG")
    name = comfy_server.upload_image(data.getvalue(), name="browser-report-marker.png")
    api = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name, "upload": "image"}},
        "2": {"class_type": "RevPersFaceAnalysisLoader", "inputs": {
            "model_pack": "buffalo_l", "provider": "CPU", "det_size": 640, "det_thresh": 0.5}},
        "3": {"class_type": "RevPersAudit", "inputs": {
            "analysis": ["2", 0], "original": ["1", 0], "anonymized": ["1", 0], "arcface_threshold": 0.3,
            "dlib_threshold": 0.6, "second_recognizer": "dlib if installed",
            "on_fail": "save marked NOT ANONYMIZED"}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    # the file name: current front ends name the workflow tab after it (and fail without one)
    page.evaluate("(api) => app.loadApiJson(api, 'browser-report.json')", api)
    page.wait_for_timeout(300)
    before = page.evaluate("() => app.graph._nodes.find(n => n.type === 'RevPersAudit').color ?? null")
    page.evaluate("async () => { await app.queuePrompt(0, 1); }")
    page.wait_for_function("""() => {
        const n = app.graph._nodes.find(n => n.type === 'RevPersAudit');
        const w = n?.widgets?.find(w => w.name === 'revpers_report');
        return w && (w.value || '').includes('RESULT');
    }""", timeout=120_000)
    state = page.evaluate("""() => {
        const n = app.graph._nodes.find(n => n.type === 'RevPersAudit');
        const w = n.widgets.find(w => w.name === 'revpers_report');
        return {text: w.value, shown: w.element ? w.element.value : null, color: n.color ?? null,
                alarm: n.revpersAlarm ?? null};
    }""")
    assert "RESULT: FAILED" in state["text"] and state["shown"] == state["text"]
    assert state["alarm"] is True and state["color"] == "#a02020" and before != "#a02020"
    queued = graph_to_prompt(page)
    audit_inputs = next(n["inputs"] for n in queued.values() if n["class_type"] == "RevPersAudit")
    assert "revpers_report" not in audit_inputs
    assert errors_of_the_pack(page, frontends_own_errors) == []
    fit_view(page)
    page.screenshot(path=str(artifact_dir("browser") / f"audit_report_on_the_node-frontend-{frontend_version(page)}.png"))
