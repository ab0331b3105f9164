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
