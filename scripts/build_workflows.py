#!/usr/bin/env python
"""Build the UI-format workflows (to drag into ComfyUI) from the API-format ones in workflows/api/.

The API files are the source: short, reviewable, and what headless users post. For each, the real
web UI of the local host (headless Chromium) loads it with the front end's own API loader, lays the
nodes out in columns by their depth in the graph, pins every seed to "fixed", adds a note saying
what the workflow does and which model files it needs, and serializes the graph. The browser test
then checks the result the other way round: loading the UI file gives back the API file exactly.

    .venv/bin/python scripts/build_workflows.py            # all of workflows/api/*.json
"""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from paths import HOST  # noqa: E402
from revpers_cli.host import ComfyHost  # noqa: E402
from webui import fit_view, web_ui  # noqa: E402

LAYOUT = """(note) => {
    const nodes = app.graph._nodes;
    const depth = new Map();
    const visit = (node) => {
        if (depth.has(node.id)) return depth.get(node.id);
        depth.set(node.id, 0);
        let d = 0;
        for (const inp of node.inputs ?? []) {
            const link = inp.link != null ? app.graph.links[inp.link] : null;
            if (link) d = Math.max(d, visit(app.graph.getNodeById(link.origin_id)) + 1);
        }
        depth.set(node.id, d);
        return d;
    };
    nodes.forEach(visit);
    const columns = new Map();
    for (const node of [...nodes].sort((a, b) => a.id - b.id)) {
        const d = depth.get(node.id);
        if (!columns.has(d)) columns.set(d, []);
        columns.get(d).push(node);
    }
    let x = 40;
    for (const d of [...columns.keys()].sort((a, b) => a - b)) {
        let y = 40, widest = 0;
        for (const node of columns.get(d)) {
            node.pos = [x, y];
            y += node.size[1] + 70;
            widest = Math.max(widest, node.size[0]);
        }
        x += widest + 60;
    }
    for (const node of nodes) {
        for (const w of node.widgets ?? []) {
            if (w.name === "control_after_generate") w.value = "fixed";
        }
    }
    const text = LiteGraph.createNode("Note");
    text.widgets[0].value = note;
    text.pos = [40, Math.max(...nodes.map(n => n.pos[1] + n.size[1])) + 80];
    text.size = [760, 240];
    app.graph.add(text);
    app.graph.setDirtyCanvas(true, true);
    return JSON.parse(JSON.stringify(app.graph.serialize()));
}"""


def without_unlinked_widget_inputs(ui):
    """Current front ends also list every widget as an input slot; front ends before subgraphs (the 2024
    floor) take such an entry for a widget converted to an input and lose its value. Unlinked widget
    slots are left out: every front end makes them again from the node's definition."""
    for node in ui["nodes"]:
        inputs = [i for i in node.get("inputs", []) if not ("widget" in i and i.get("link") is None)]
        if inputs:
            node["inputs"] = inputs
        else:
            node.pop("inputs", None)
    return ui


def main():
    api_dir = REPO / "workflows" / "api"
    sources = sorted(api_dir.glob("*.json"))
    if not sources:
        sys.exit(f"no API workflows in {api_dir}")
    with ComfyHost(HOST, extra_args=["--cpu", "--disable-auto-launch"]) as host, web_ui(host.url) as page:
        for source in sources:
            api = json.loads(source.read_text())
            note_path = source.with_suffix(".md")
            note = note_path.read_text().strip() if note_path.exists() else source.stem
            # one line per paragraph: the note's text area wraps by itself
            note = "\n\n".join(" ".join(p.split()) for p in note.split("\n\n"))
            page.evaluate("(api) => app.loadApiJson(api)", api)
            ui = without_unlinked_widget_inputs(page.evaluate(LAYOUT, note))
            target = REPO / "workflows" / source.name
            target.write_text(json.dumps(ui, indent=1) + "\n")
            # A thumbnail beside it: ComfyUI's template browser shows <name>.jpg for <name>.json
            # (workflows/ is one of the folder names it reads templates from).
            fit_view(page)
            thumb = target.with_suffix(".jpg")
            page.screenshot(path=str(thumb), type="jpeg", quality=80)
            print(f"{source.relative_to(REPO)} -> {target.relative_to(REPO)} ({len(ui['nodes'])} nodes), "
                  f"{thumb.relative_to(REPO)}")


if __name__ == "__main__":
    main()
