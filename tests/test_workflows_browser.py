"""The shipped UI workflows in the host's real web UI (headless Chromium): they load with every node
type known and every link intact, and what the front end would queue for them is exactly the
shipped API workflow. A screenshot of each loaded graph is left in artifacts/browser/."""
import json

import pytest

from paths import REPO, artifact_dir
from webui import broken_links, chromium_available, graph_to_prompt, load_ui_workflow, missing_node_types
from webui import fit_view, normalized_prompt, web_ui

UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))

pytestmark = pytest.mark.skipif(not chromium_available(),
                                reason="Debian's chromium is not installed (apt-get install chromium)")

def test_every_ui_workflow_has_an_api_twin():
    assert len(UI_WORKFLOWS) >= 3
    for ui in UI_WORKFLOWS:
        assert (REPO / "workflows" / "api" / ui.name).is_file(), f"{ui.name} has no API-format twin"


@pytest.fixture(scope="module")
def page(_server_session):
    with web_ui(_server_session.url) as page:
        yield page


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_loads_and_queues_the_api_workflow(page, workflow):
    ui = json.loads(workflow.read_text())
    api = json.loads((REPO / "workflows" / "api" / workflow.name).read_text())

    assert missing_node_types(page, ui) == []
    load_ui_workflow(page, ui)
    assert broken_links(page) == []
    errors = [line for line in page.console_lines if line.startswith("pageerror")]
    assert errors == []

    queued = graph_to_prompt(page)
    assert normalized_prompt(queued) == normalized_prompt(api)

    fit_view(page)
    shot = artifact_dir("browser") / f"{workflow.stem}.png"
    page.screenshot(path=str(shot))
    print(f"\n{workflow.name}: {len(ui['nodes'])} nodes, {len(api)} queued, screenshot {shot}")


def test_a_nodes_report_shows_on_the_node_and_a_failure_paints_it_red(page, comfy_server):
    """web/revpers.js: a run queued from the page; the audit (a photo compared with itself, saved
    marked by choice) puts its report in a text box on the node and turns the node red. The box is
    never part of the prompt."""
    import sys

    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO / "scripts"))
    import standins
    from revpers_core.standins.buffalo_l import draw_marker_face

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
    page.evaluate("(api) => app.loadApiJson(api)", api)
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
    errors = [line for line in page.console_lines if line.startswith("pageerror")]
    assert errors == []
    fit_view(page)
    page.screenshot(path=str(artifact_dir("browser") / "audit_report_on_the_node.png"))
