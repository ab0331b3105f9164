"""The host's real web UI in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright;
no browser is downloaded). Used by the browser tests and by scripts/build_workflows.py."""
import contextlib
import json
import os
import shutil

CHROMIUM = os.environ.get("REVPERS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# REVPERS_VUE_NODES=1: the front end renders nodes with Vue ("Nodes 2.0", the default of new Desktop and
# Cloud installs) in every page the tests open, where the front end has that setting
VUE_NODES = os.environ.get("REVPERS_VUE_NODES", "").strip() not in ("", "0")
# Flags that keep Chromium from reaching for the network at start (this machine has none) and let it
# run as root in a container.
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_available():
    return os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)


@contextlib.contextmanager
def web_ui(url, width=2560, height=1280):
    """A Playwright page on the ComfyUI front end at `url`, ready (app.graph exists), with the
    browser console collected in `page.console_lines`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.console_lines = []
            page.on("console", lambda m: page.console_lines.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: page.console_lines.append(f"pageerror: {e}"))
            page.goto(url, wait_until="load")
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph "
                                   "&& Object.keys(LiteGraph.registered_node_types).length > 50",
                                   timeout=60_000)
            if VUE_NODES:
                page.vue_nodes = page.evaluate("""async () => {
                    const settings = app.extensionManager?.setting;
                    if (!settings) return false;
                    await settings.set('Comfy.VueNodes.Enabled', true);
                    return settings.get('Comfy.VueNodes.Enabled') === true;
                }""")
            # a dialog the front end opens on a first visit (the template browser) would cover the graph
            page.keyboard.press("Escape")
            yield page
        finally:
            browser.close()


def missing_node_types(page, ui_workflow):
    """Node types of a UI workflow the front end does not know."""
    types = sorted({n["type"] for n in ui_workflow["nodes"]})
    return page.evaluate("(types) => types.filter(t => !LiteGraph.registered_node_types[t])", types)


def load_ui_workflow(page, ui_workflow):
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", ui_workflow)
    page.wait_for_timeout(300)


def broken_links(page, subgraph=None):
    """Links of the loaded graph (or of the subgraph definition named `subgraph`) whose ends are
    missing or disagree with the slots they join. Inside a subgraph, a link may start at the
    subgraph's input node or end at its output node; those ends are checked against the subgraph's
    own inputs and outputs."""
    return page.evaluate("""(name) => {
        const graph = name == null ? app.graph
            : [...app.graph.subgraphs.values()].find(g => g.name === name);
        if (!graph) return [`no subgraph named ${name}`];
        // node ids are numbers in some front ends and strings in others: compared as strings
        const INPUT_NODE = '-10', OUTPUT_NODE = '-20';
        const links = graph.links instanceof Map ? [...graph.links.values()] : Object.values(graph.links ?? {});
        const linkById = (id) => graph.links instanceof Map ? graph.links.get(id) : graph.links[id];
        const bad = [];
        for (const link of links) {
            if (!link) continue;
            let out, inp;
            if (String(link.origin_id) === INPUT_NODE) {
                const sin = graph.inputs?.[link.origin_slot];
                if (!sin || !sin.linkIds.includes(link.id)) bad.push(`link ${link.id}: subgraph input ${link.origin_slot} does not list it`);
            } else {
                const from = graph.getNodeById(link.origin_id);
                out = from?.outputs?.[link.origin_slot];
                if (!out) { bad.push(`link ${link.id}: missing origin ${link.origin_id}.${link.origin_slot}`); continue; }
                if (!(out.links ?? []).includes(link.id)) bad.push(`link ${link.id}: output ${from.type}.${out.name} does not list it`);
            }
            if (String(link.target_id) === OUTPUT_NODE) {
                const sout = graph.outputs?.[link.target_slot];
                if (!sout || !sout.linkIds.includes(link.id)) bad.push(`link ${link.id}: subgraph output ${link.target_slot} does not list it`);
            } else {
                const to = graph.getNodeById(link.target_id);
                inp = to?.inputs?.[link.target_slot];
                if (!inp) { bad.push(`link ${link.id}: missing target ${link.target_id}.${link.target_slot}`); continue; }
                if (inp.link !== link.id) bad.push(`link ${link.id}: input ${to.type}.${inp.name} points elsewhere`);
            }
        }
        for (const node of graph._nodes) {
            for (const inp of node.inputs ?? []) {
                if (inp.link != null && !linkById(inp.link)) bad.push(`${node.type}.${inp.name}: dangling link ${inp.link}`);
            }
        }
        return bad;
    }""", subgraph)


def has_subgraphs(page):
    """Whether this front end has subgraphs (current ones do; the 2024 one does not)."""
    return page.evaluate("() => typeof app.graph.convertToSubgraph === 'function' && !!app.graph.subgraphs")


def without_subgraph_paths(prompt):
    """A queued prompt with the subgraph paths taken off its node ids ("33:25" -> "25"), in keys and
    in links: the prompt of a workflow built around a subgraph node, as the flat workflow names it.
    Two nodes that would get the same id are an error, not a merge."""
    def bare(node_id):
        return str(node_id).rsplit(":", 1)[-1]

    out = {}
    for node_id, node in prompt.items():
        if bare(node_id) in out:
            raise AssertionError(f"two queued nodes would both be {bare(node_id)}: {node_id} and another")
        inputs = {name: [bare(v[0]), v[1]] if isinstance(v, list) and len(v) == 2 and not isinstance(v[1], str)
                  else v for name, v in node.get("inputs", {}).items()}
        out[bare(node_id)] = {**node, "inputs": inputs}
    return out


def graph_to_prompt(page):
    """What the front end would POST for the loaded graph: the API-format prompt."""
    return page.evaluate("async () => (await app.graphToPrompt()).output")


# What current front ends queue differently from the API files, which the 2024 front end matches
# exactly: since frontend 1.2x, graphToPrompt() no longer emits LoadImage's `upload` widget (the
# button that picks a file; the server ignores it). Nothing else is accepted.
FRONTEND_DIFFERENCES = {("LoadImage", "upload")}


def expected_prompt(api, queued):
    """The API workflow as this front end queues it: each documented difference dropped from the API
    file only where this front end leaves that input out."""
    out = json.loads(json.dumps(api))
    for node_id, node in out.items():
        for class_type, name in FRONTEND_DIFFERENCES:
            there = queued.get(node_id, queued.get(int(node_id) if node_id.isdigit() else node_id, {}))
            if node["class_type"] == class_type and name not in there.get("inputs", {}):
                node["inputs"].pop(name, None)
    return out


def page_errors(page):
    return [line for line in page.console_lines if line.startswith("pageerror")]


def frontend_version(page):
    """The front end's version; "bundled" for the front ends served from the host's own web/ folder
    (the 2024 floor), which do not announce one."""
    return page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? 'bundled'")


def normalized_prompt(prompt):
    """An API prompt with ids as strings and links as [id, slot], for comparing."""
    out = {}
    for node_id, node in prompt.items():
        inputs = {}
        for name, value in node.get("inputs", {}).items():
            if isinstance(value, list) and len(value) == 2 and not isinstance(value[1], str):
                value = [str(value[0]), int(value[1])]
            inputs[name] = value
        out[str(node_id)] = {"class_type": node["class_type"], "inputs": inputs}
    return json.loads(json.dumps(out, sort_keys=True))


def fit_view(page):
    """Zoom and pan the canvas so the whole graph on screen is in view (for screenshots)."""
    page.evaluate(_FIT_VIEW)
    page.wait_for_timeout(300)


_FIT_VIEW = """() => {
    const nodes = (app.canvas.graph ?? app.graph)._nodes;  // the graph on screen: a subgraph once opened
    const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1] - 30));
    const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
    const canvas = app.canvas.canvas;
    // LiteGraph draws no text below a zoom of 0.6; stay at or above it (the view may then crop).
    // 90 px at the left and 130 at the top: current front ends draw their side bar, tab bar and
    // breadcrumb over the canvas.
    const scale = Math.max(0.62, Math.min(canvas.width / (x1 - x0 + 130), canvas.height / (y1 - y0 + 170)));
    app.canvas.ds.scale = scale;
    app.canvas.ds.offset = [90 / scale - x0, 130 / scale - y0];
    (app.canvas.graph ?? app.graph).setDirtyCanvas(true, true);
}"""
